"""S3 reads survive a misbehaving server within the retry budget and fail clearly beyond it.

A fault-injecting proxy (tests/faultproxy.py) on 127.0.0.1 sits in front of the moto server: it drops
connections, answers 500/503 and stalls, for scripted requests or a seeded fraction of them. The proxy's own log
is the reference for how often each object was requested.
"""

from __future__ import annotations

import os

import pytest
import s3fs

from segformer_tao.data import storage
from segformer_tao.errors import UserError
from tests.faultproxy import FaultProxy

BUCKET = "fault-bucket"


@pytest.fixture(scope="module")
def proxy(moto_endpoint):
    p = FaultProxy(moto_endpoint).start()
    yield p
    p.stop()


@pytest.fixture
def faulty_s3(s3_env, demo_root, proxy, monkeypatch):
    """The demo dataset in s3://fault-bucket/demo (uploaded directly to moto); reads go through the proxy."""
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env})
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
        fs.put(str(demo_root), f"{BUCKET}/demo", recursive=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("SEGFORMER_S3_TIMEOUT_S", "0.5")
    monkeypatch.setattr(storage, "_BACKOFF_S", 0.01)  # keep the waits short; the number of tries is what counts
    s3fs.S3FileSystem.clear_instance_cache()
    proxy.set()
    return f"s3://{BUCKET}/demo"


def _requests_for(proxy: FaultProxy, key: str) -> list[str]:
    """What the proxy did with each request for ``key`` (any method: one try must be one request)."""
    return [what for _, path, what in proxy.log if path.split("?")[0].endswith(key)]


def test_each_kind_of_fault_is_retried_until_the_read_succeeds(faulty_s3, demo_root, proxy):
    key = "images/train/0001.png"
    proxy.set(script=["drop", "500", "503", "stall"], stall_s=2.0)
    data = storage.read_bytes(f"{faulty_s3}/{key}")
    assert data == (demo_root / key).read_bytes()
    assert _requests_for(proxy, key) == ["drop", "500", "503", "stall", "forwarded"]


def test_beyond_the_budget_the_error_names_the_object_and_the_tries(faulty_s3, proxy, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    key = "masks/val/0002.png"
    proxy.set(rate=1.0, kinds=("503",))
    with pytest.raises(UserError) as e:
        storage.read_bytes(f"{faulty_s3}/{key}")
    msg = str(e.value)
    assert f"'{faulty_s3}/{key}'" in msg and "failed 3 times" in msg and "AWS_MAX_ATTEMPTS" in msg, msg
    assert _requests_for(proxy, key) == ["503"] * 3  # exactly the budget: no hidden retry layer underneath


def test_a_missing_object_is_not_retried(faulty_s3, proxy):
    with pytest.raises(UserError, match="nope.png"):
        storage.read_bytes(f"{faulty_s3}/images/train/nope.png")
    assert len(_requests_for(proxy, "nope.png")) == 1


def test_listing_and_concurrent_reads_under_a_fault_rate(faulty_s3, demo_root, proxy):
    proxy.set(script=["503", "drop"])  # the listing's first two tries
    files = storage.list_files(f"{faulty_s3}/images/train", storage.IMAGE_EXTS)
    assert sorted(files) == sorted(p.stem for p in (demo_root / "images" / "train").iterdir())
    proxy.set(rate=0.4, kinds=("drop", "500", "503"), seed=3)
    urls = [f"{faulty_s3}/{split}/{name}" for split in ("images/train", "masks/train")
            for name in sorted(p.name for p in (demo_root / "images" / "train").iterdir())]
    got = dict(storage.read_many(urls))
    assert all(got[u] == (demo_root / u.split("/demo/")[1]).read_bytes() for u in urls)
    assert sum(proxy.counts[k] for k in ("drop", "500", "503")) >= 3, proxy.counts


# ------------------------------------------------------------------ training through the proxy (real CLI)
TRAIN = ["model=mit_b0", "dataset.segment.num_classes=4", "dataset.segment.img_size=32",
         "dataset.segment.label_transform=None", "dataset.segment.batch_size=2", "dataset.segment.workers=0",
         "train.num_epochs=2", "automl_policy=off", "train.seed=7", "dataset.segment.check=off"]


def _train(root: str, results: str, endpoint: str, attempts: int):
    from tests.conftest import run_cli

    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": str(attempts), "SEGFORMER_S3_TIMEOUT_S": "1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    return run_cli("train", f"dataset.segment.root_dir={root}", f"results_dir={results}", *TRAIN, env=env)


def _miou(results: str) -> float:
    import json

    with open(f"{results}/train/job.json") as f:
        return json.load(f)["metrics"]["val_miou"]


@pytest.mark.slow
def test_training_through_faults_matches_a_clean_run_and_an_outage_stops_resumably(faulty_s3, proxy, tmp_path):
    """Clean run (reference); a run under faults that meets an outage in its second epoch (clear error, intact
    checkpoints); the same command again, still under faults, resumes and ends with the clean run's val_miou."""
    from segformer_tao.engine.checkpoint import load_checkpoint
    from tests.conftest import assert_user_error

    clean = _train(faulty_s3, str(tmp_path / "clean"), proxy.url, 5)
    assert clean.returncode == 0, clean.output[-3000:]
    gets_per_run = proxy.object_gets  # 2 epochs x (6 train + 4 val) x (image + mask), each read once
    assert gets_per_run == 2 * (6 + 4) * 2, gets_per_run

    run = str(tmp_path / "faulty")
    # drops, 500s, 503s and stalls on a fifth of all requests; after the first epoch's reads every GET fails
    proxy.set(rate=0.2, seed=11, stall_s=3.0, outage_after=gets_per_run // 2 + 3)
    failed = _train(faulty_s3, run, proxy.url, 5)
    assert_user_error(failed, "s3://fault-bucket/demo/", "failed 5 times", "AWS_MAX_ATTEMPTS", "resumes")
    ckpts = sorted(p for p in os.listdir(f"{run}/train") if p.endswith(".pth"))
    assert "model_epoch_001_step_00003.pth" in ckpts, ckpts
    for name in ckpts:
        load_checkpoint(f"{run}/train/{name}")  # every checkpoint written is intact

    seen = proxy.counts.copy()
    proxy.set(rate=0.2, seed=12, stall_s=3.0)
    resumed = _train(faulty_s3, run, proxy.url, 5)
    assert resumed.returncode == 0 and "Resuming training from" in resumed.output, resumed.output[-3000:]
    seen.update(proxy.counts)
    assert all(seen[k] > 0 for k in ("drop", "500", "503", "stall")), seen  # every kind of fault was survived
    assert _miou(run) == _miou(str(tmp_path / "clean"))
