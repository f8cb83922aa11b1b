"""Fast checks of how trials are placed (GPU slices, CPU thread shares) and how storage URLs are shown."""

from __future__ import annotations

import json

import pytest
import torch

from segformer_tao.automl import storage, workers
from segformer_tao.config import compose_config, to_yaml_without_secrets
from segformer_tao.engine.checkpoint import strip_secrets
from segformer_tao.errors import UserError


def _cfg(*overrides: str):
    return compose_config("train", ["dataset.segment.root_dir=/data", *overrides])


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``n`` CUDA devices (only counted, never used)."""
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return set_count


def test_one_trial_on_one_device_trains_in_process():
    assert workers.plan_slots(_cfg()) is None


def test_gpu_slots_split_the_visible_gpus_or_the_listed_ids(gpus, monkeypatch):
    gpus(8)
    slots = workers.plan_slots(_cfg("automl.parallel_trials=4", "train.num_gpus=2"))
    assert [s.gpus for s in slots] == [(0, 1), (2, 3), (4, 5), (6, 7)] and slots[1].describe() == "gpu 2,3"
    slots = workers.plan_slots(_cfg("automl.parallel_trials=2", "train.gpu_ids=[1,3,5,7]", "train.num_gpus=2"))
    assert [s.gpus for s in slots] == [(1, 3), (5, 7)]
    slots = workers.plan_slots(_cfg("automl.parallel_trials=2", "train.gpu_ids=[5,7]"))
    assert [s.gpus for s in slots] == [(5,), (7,)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4,6,9,10,11,12,13")  # ids are relative to what we see
    assert [s.gpus for s in workers.plan_slots(_cfg("automl.parallel_trials=2"))] == [(3,), (4,)]
    with pytest.raises(UserError, match="needs 16 GPUs but this machine has 8"):
        workers.plan_slots(_cfg("automl.parallel_trials=8", "train.num_gpus=2"))
    with pytest.raises(UserError, match=r"train.gpu_ids=\[1, 2\] lists 2"):
        workers.plan_slots(_cfg("automl.parallel_trials=3", "train.gpu_ids=[1,2]"))


def test_cpu_slots_share_the_cores(gpus, monkeypatch):
    gpus(0)
    monkeypatch.setattr(workers, "_cpu_count", lambda: 16)
    assert [s.threads for s in workers.plan_slots(_cfg("automl.parallel_trials=4"))] == [4] * 4
    assert workers.plan_slots(_cfg("automl.parallel_trials=32"))[0].describe() == "cpu x1 threads"
    with pytest.raises(UserError, match="train.num_nodes=2"):
        workers.plan_slots(_cfg("train.num_nodes=2"))


def test_child_env_gives_the_slot_and_the_trial(monkeypatch):
    import optuna

    monkeypatch.setenv("LOCAL_RANK", "1")
    trial = optuna.create_study().ask()
    env = workers.child_env(workers.Slot(0, gpus=(2, 3)), trial, {"url": None, "out_dir": "/r", "heartbeat_s": 60})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and "LOCAL_RANK" not in env
    assert json.loads(env[workers.TRIAL_ENV])["trial_id"] == trial._trial_id
    env = workers.child_env(workers.Slot(0, threads=3), trial, {"url": None, "out_dir": "/r", "heartbeat_s": 60})
    assert env["OMP_NUM_THREADS"] == "3"


URL = "postgresql://bob:pa:ss@w0rd@db.example:5432/automl"


def test_storage_passwords_are_masked_everywhere_they_could_be_written():
    masked = "postgresql://bob:***@db.example:5432/automl"
    assert storage.mask_url(f"cannot open {URL} now") == f"cannot open {masked} now"
    assert storage.url_password(URL) == "pa:ss@w0rd"
    assert storage.mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    cfg = _cfg(f"automl.storage={URL}")
    assert masked in to_yaml_without_secrets(cfg) and "w0rd" not in to_yaml_without_secrets(cfg)
    assert strip_secrets({"automl": {"storage": URL}, "encryption_key": "k"}) == {"automl": {"storage": masked}}


def test_plain_driver_names_pick_the_installed_drivers():
    assert storage.rdb_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage.rdb_url("mysql://u@h/db") == "mysql+pymysql://u@h/db"
    assert storage.rdb_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
