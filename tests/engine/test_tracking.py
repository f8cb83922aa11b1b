"""W&B (offline) and MLflow (local SQLite) really log a training run: the values status.json records, the config
without secrets, the final checkpoint; a tracker that cannot start is a note, never a failed run."""

from __future__ import annotations

import glob
import json
import logging
import os
import struct
import time

import pytest
import torch

from segformer_tao.engine import tracking
from segformer_tao.engine.datamodule import SegDataModule
from segformer_tao.engine.trainer import train_model
from tests.status_records import epoch_records

KEY = "Enc-K3y-tracking-9182"
API_KEY = "wandb-Ap1-k3y-0000000000000000000000000000000000000"


def _train(tiny, tmp_path, results, *overrides):
    net_cls, ds_cls, make_cfg = tiny
    cfg = make_cfg(tmp_path, f"encryption_key={KEY}", *overrides)
    torch.manual_seed(0)
    dm = SegDataModule(cfg, ds_cls(8, mode="train"), ds_cls(4, mode="eval", seed=1))
    return cfg, train_model(cfg, str(results), net_cls(), dm)


def _files_containing(root, needles: list[str]) -> list[str]:
    hits = []
    for path in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        if os.path.isfile(path):
            data = open(path, "rb").read()
            hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


def _read_wandb_run(path: str) -> tuple[dict, list[dict], dict, bool]:
    """(summary, history rows, config, finished) of an offline run file: W&B's LevelDB-style log (a 7-byte header,
    32 KiB blocks of [crc32 u32, length u16, type u8] chunks: 1 full, 2 first, 3 middle, 4 last) of protobuf
    Records; finished when its exit record is there."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, records, pending = open(path, "rb").read(), 32768, 7, [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            records.append(pending + data)
            pending = b""
        elif kind in (2, 3):
            pending += data
    summary, history, config, finished = {}, [], {}, False

    def items(update):
        return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in update}
    for data in records:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            summary.update(items(record.summary.update))
        elif kind == "history":
            history.append(items(record.history.item))
        elif kind == "config":
            config.update(items(record.config.update))
        finished |= kind == "exit"
    return summary, history, config, finished


def test_wandb_offline_run_holds_the_final_val_miou_and_no_secret(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = tmp_path / "train"
    _, out = _train(tiny, tmp_path, results, "wandb.enable=true", "wandb.name=tiny", "wandb.tags=[a,b]")
    runs = glob.glob(str(results / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1, os.listdir(results)
    for _ in range(300):  # W&B's service process may still be writing the file after run.finish() returns
        summary, history, config, finished = _read_wandb_run(runs[0])
        if finished:
            break
        time.sleep(0.1)
    epochs = epoch_records(results)
    assert summary["val_miou"] == pytest.approx(epochs[-1]["val_miou"])
    assert [h["val_miou"] for h in history if "val_miou" in h] == pytest.approx([e["val_miou"] for e in epochs])
    assert [h["lr"] for h in history if "lr" in h] == pytest.approx([e["lr"] for e in epochs])
    assert summary["latest_checkpoint"] == out["artifacts"]["latest_checkpoint"]
    assert config["dataset"]["segment"]["num_classes"] == 2 and "encryption_key" not in config
    assert _files_containing(str(results), [KEY, API_KEY]) == []


def test_mlflow_metric_history_equals_status_json(tiny, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    results = tmp_path / "train"
    keys = ["mlflow.enable=true", f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=habits",
            "mlflow.run_name=tiny", "+mlflow.tags.team=seg"]
    _train(tiny, tmp_path, results, *keys, "train.num_epochs=2")
    _, out = _train(tiny, tmp_path, results, *keys, "train.num_epochs=3")  # resumes: continues the same run
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("habits").experiment_id])
    assert run.info.run_name == "tiny" and run.data.tags["team"] == "seg" and run.info.status == "FINISHED"
    epochs = epoch_records(results)
    for ours, theirs in (("val_miou", "val_miou"), ("val_loss", "val_loss"), ("train_loss_epoch", "train_loss"),
                         ("lr", "lr")):
        history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, ours), key=lambda m: m.step)]
        assert history == pytest.approx([e[theirs] for e in epochs], rel=1e-6), ours
    assert run.data.tags["latest_checkpoint"] == out["artifacts"]["latest_checkpoint"]
    assert run.data.params["dataset/segment/num_classes"] == "2"
    assert not any(KEY in v for v in run.data.params.values()) and "encryption_key" not in run.data.params
    assert _files_containing(str(tmp_path), [KEY]) == []  # the SQLite file included


def test_a_tracker_that_cannot_start_is_one_note_and_training_goes_on(tiny, tmp_path, monkeypatch, caplog):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    _, make_cfg = tiny[0], tiny[2]
    cfg = make_cfg(tmp_path, "wandb.enable=true", "mlflow.enable=true", "mlflow.tracking_uri=bogus://nowhere")
    monkeypatch.setattr(tracking, "_NOTED", set())  # notes are printed once per process
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        assert tracking.tracking_loggers(cfg, str(tmp_path / "r")) == []
    notes = [r.getMessage() for r in caplog.records]
    assert any("no W&B credentials" in n and "WANDB_MODE=offline" in n for n in notes), notes
    assert any("cannot log to MLflow at bogus://nowhere" in n for n in notes), notes
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        tracking.tracking_loggers(cfg, str(tmp_path / "r"))
    assert not caplog.records  # a second training in the same process (an AutoML trial) is not told again
    real_find_spec = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real_find_spec(n))
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        assert tracking.wandb_logger(cfg, str(tmp_path / "r")) is None
    assert "`wandb` package is not installed" in caplog.text
    # ... and a real run with both trackers failing trains to the end.
    monkeypatch.undo()
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    _, out = _train(tiny, tmp_path, tmp_path / "train", "mlflow.enable=true", "mlflow.tracking_uri=bogus://x",
                    "train.num_epochs=1")
    assert os.path.exists(out["artifacts"]["latest_checkpoint"]) and not (tmp_path / "train" / "wandb").exists()


def test_automl_trials_are_runs_of_one_group_and_experiment(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # MLflow exports the URI of the last run it opened
    cfg = tiny[2](tmp_path, "wandb.run_id=abc", "mlflow.enable=true")
    tracking.trial_tracking(cfg, 3, str(tmp_path / "search"))
    assert cfg.wandb.group == f"automl {tmp_path / 'search'}" and cfg.wandb.name == "TAO Toolkit Training trial 3"
    assert cfg.wandb.run_id == "abc-trial-3" and cfg.mlflow.run_name == "trial_3"
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'search' / 'mlflow.db'}"
    assert cfg.mlflow.experiment_name == "segformer_tao"
