"""Fixtures for data tests: tiny demo datasets, configs, and a real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import pytest
import s3fs
from omegaconf import OmegaConf

from segformer_tao.config import compose_config
from segformer_tao.data.synthetic import make_demo_dataset


def make_cfg(root, **segment) -> OmegaConf:
    """Composed config for a dataset root with dataset.segment overrides (values as Python objects)."""
    cfg = compose_config("train", [f"dataset.segment.root_dir={root}", "dataset.segment.workers=0",
                                   "dataset.segment.batch_size=2"])
    for key, value in segment.items():
        OmegaConf.update(cfg, f"dataset.segment.{key}", value, merge=False)
    return cfg


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """4-class class-id demo dataset, 48 px, 6/4/2 images (read-only: copy before modifying)."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "ids", num_classes=4, size=48, train=6, val=4,
                             test=2)


@pytest.fixture
def demo_cfg(demo_root):
    return make_cfg(demo_root, num_classes=4, label_transform="None", img_size=32)


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    """Point AWS env vars at the moto server (fake credentials) and drop cached s3fs instances."""
    for key, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    yield moto_endpoint
    s3fs.S3FileSystem.clear_instance_cache()
