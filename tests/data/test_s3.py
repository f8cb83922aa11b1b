"""Round trip over a real S3-compatible server (moto on 127.0.0.1): loading, cache, calibration, errors."""

from __future__ import annotations

import os

import pytest
import s3fs
import torch

from segformer_tao.data import UnetSegmentationDataset, build_dataloader
from segformer_tao.deploy.calibration import calibration_batches
from segformer_tao.errors import UserError
from tests.data.conftest import make_cfg


@pytest.fixture
def s3_root(s3_env, demo_root):
    """The demo dataset uploaded to s3://seg-bucket/demo (recreated for each test)."""
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env})
    if not fs.exists("seg-bucket"):
        fs.mkdir("seg-bucket")
    fs.put(str(demo_root), "seg-bucket/demo", recursive=True)
    return "s3://seg-bucket/demo"


def test_train_and_eval_loading_from_s3(s3_root, demo_root):
    cfg = make_cfg(s3_root, num_classes=4, label_transform="None", img_size=32)
    batch = next(iter(build_dataloader(cfg, "train", "train")))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert batch["path"][0].startswith("s3://seg-bucket/demo/images/train/")
    remote = UnetSegmentationDataset(cfg, "val", "eval")
    local = UnetSegmentationDataset(make_cfg(demo_root, num_classes=4, label_transform="None", img_size=32),
                                    "val", "eval")
    assert len(remote) == len(local) == 4
    assert torch.equal(remote[3]["image"], local[3]["image"]) and torch.equal(remote[3]["mask"], local[3]["mask"])


def test_cache_dir_downloads_once(s3_root, tmp_path):
    cfg = make_cfg(s3_root, num_classes=4, label_transform="None", img_size=32, cache_dir=str(tmp_path / "cache"))
    first = UnetSegmentationDataset(cfg, "train", "train")
    cached = sorted(str(p) for p in (tmp_path / "cache").rglob("*.png"))
    assert len(cached) == 12 and all(p.startswith(str(tmp_path)) for p in cached)
    mtimes = [os.stat(p).st_mtime_ns for p in cached]
    second = UnetSegmentationDataset(cfg, "train", "train")
    assert [os.stat(p).st_mtime_ns for p in cached] == mtimes  # nothing re-downloaded
    assert first[0]["image"].shape == (3, 32, 32)
    assert second._local[0].image.startswith(str(tmp_path))


def test_calibration_images_local_and_s3(s3_root, demo_root):
    kw = dict(img_size=16, mean=[0.5] * 3, std=[0.5] * 3, batch_size=4, max_batches=4, key="k",
              drop_remainder=False)
    rb = calibration_batches(f"{s3_root}/images/train", **kw)
    lb = calibration_batches(str(demo_root / "images" / "train"), **kw)
    assert [b.shape for b in rb] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert all(torch.equal(a, b) for a, b in zip(rb, lb))


KW = dict(img_size=16, mean=[0.5] * 3, std=[0.5] * 3, batch_size=4, max_batches=4,
          key="dataset.segment.quant_calibration_dataset.images_dir")


def test_calibration_dir_missing(s3_root, tmp_path):
    with pytest.raises(UserError, match="quant_calibration_dataset.images_dir='.*nope' does not exist"):
        calibration_batches(str(tmp_path / "nope"), **KW)
    with pytest.raises(UserError, match="does not exist"):
        calibration_batches(f"{s3_root}/nope", **KW)


def test_missing_bucket(s3_env):
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        UnetSegmentationDataset(make_cfg("s3://no-such-bucket/data"), "train")


def test_missing_split_on_s3(s3_root):
    with pytest.raises(UserError, match=r"Split folder 's3://seg-bucket/demo/images/nope' does not exist"):
        UnetSegmentationDataset(make_cfg(s3_root, train_split="nope"), "train")


def test_unreachable_endpoint(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(UserError, match=r"Cannot reach the S3 endpoint http://127.0.0.1:9"):
        UnetSegmentationDataset(make_cfg("s3://seg-bucket/demo"), "train")


def test_no_credentials(s3_env, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(UserError, match="No S3 credentials"):
        UnetSegmentationDataset(make_cfg("s3://seg-bucket/demo"), "train")
