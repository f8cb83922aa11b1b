"""Real Lightning training on a tiny conv net: outputs, LR schedule, exact resume."""

from __future__ import annotations

import json
import os

import pytest
import torch

from segformer_tao.engine.checkpoint import load_checkpoint
from segformer_tao.engine.datamodule import SegDataModule
from segformer_tao.engine.module import lr_factor
from segformer_tao.engine.trainer import train_model
from tests.conftest import status_epochs


def _status_epochs(results) -> list[int]:
    """The epochs (1-based) that status.json says were trained, in order, over every run in ``results``."""
    return status_epochs(results)[1]


def _run(tiny, tmp_path, results, *overrides):
    net_cls, ds_cls, make_cfg = tiny
    cfg = make_cfg(tmp_path, *overrides)
    torch.manual_seed(0)
    dm = SegDataModule(cfg, ds_cls(12, mode="train"), ds_cls(6, mode="eval", seed=1))
    return cfg, train_model(cfg, str(results), net_cls(), dm)


def test_lr_schedule_follows_tao():
    kw = {"total_steps": 1000, "steps_per_epoch": 100, "num_epochs": 10}
    assert lr_factor(0, policy="linear", warmup_iters=0, **kw) == pytest.approx(1e-6)
    assert lr_factor(10, policy="linear", warmup_iters=0, **kw) == pytest.approx(1 - 0 / 991)
    assert lr_factor(999, policy="linear", warmup_iters=0, **kw) == pytest.approx(1 - 989 / 991)
    assert lr_factor(50, policy="linear", warmup_iters=100, **kw) == pytest.approx(1 - (1 - 1e-6) * 0.5)
    assert lr_factor(299, policy="step", warmup_iters=0, **kw) == 1.0
    assert lr_factor(300, policy="step", warmup_iters=0, **kw) == pytest.approx(0.1)
    assert lr_factor(950, policy="step", warmup_iters=0, **kw) == pytest.approx(1e-3)


def test_training_writes_checkpoints_status_and_curves(tiny, tmp_path):
    results = tmp_path / "train"
    cfg, out = _run(tiny, tmp_path, results, "train.num_epochs=3")
    names = sorted(os.listdir(results))
    assert "model_epoch_003_step_00009.pth" in names and "segformer_model_latest.pth" in names, names
    assert "segformer_model_best.pth" in names and "training_curves.png" in names
    assert os.path.exists(results / "logs" / "csv" / "metrics.csv")
    lines = [json.loads(s) for s in (results / "status.json").read_text().splitlines()]
    assert {ln["status"] for ln in lines} == {"RUNNING"}  # STARTED/SUCCESS come from the action around it
    assert lines[-1]["message"] == "Training loop complete."
    epochs = [ln for ln in lines if "graphical" in ln]
    assert [ln["epoch"] for ln in epochs] == [1, 2, 3]
    assert all(ln["kpi"]["val_miou"] is not None and ln["eta_s"] >= 0 and ln["graphical"]["lr"] > 0
               for ln in epochs)
    assert out["metrics"]["val_miou"] == pytest.approx(epochs[-1]["kpi"]["val_miou"])
    ckpt = torch.load(results / "segformer_model_latest.pth", weights_only=True)
    assert ckpt["meta"]["num_classes"] == 2 and ckpt["meta"]["img_size"] == 32
    assert ckpt["meta"]["class_names"] == ["foreground", "background"]
    assert "encryption_key" not in ckpt["config"] and ckpt["optimizer_states"] and ckpt["rng_states"]
    # decoder groups get 10x the backbone LR
    lrs = sorted({g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]})
    assert lrs[-1] == pytest.approx(10 * lrs[0])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    _, full = _run(tiny, tmp_path, tmp_path / "full", "train.num_epochs=4")
    _, part = _run(tiny, tmp_path, tmp_path / "part", "train.num_epochs=4")  # same run; keep its epoch-2 ckpt
    mid = tmp_path / "part" / "model_epoch_002_step_00006.pth"
    import segformer_tao.engine.callbacks as callbacks
    import segformer_tao.engine.checkpoint as checkpoint

    reads = []

    def counting(load):
        return lambda path, *a, **k: reads.append(path) or load(path, *a, **k)

    for module in (callbacks, checkpoint):
        monkeypatch.setattr(module, "load_checkpoint", counting(module.load_checkpoint))
    _, resumed = _run(tiny, tmp_path, tmp_path / "resumed", "train.num_epochs=4",
                      f"train.resume_training_checkpoint_path={mid}")
    assert reads == [str(mid)]  # read once: the resume check's payload is handed to Lightning
    monkeypatch.undo()
    # Only epochs 3-4 were trained (a restart from scratch reaches the same seeded weights, so check the work done)
    assert _status_epochs(tmp_path / "resumed") == [3, 4]
    assert sorted(p.name for p in (tmp_path / "resumed").glob("model_epoch_*.pth")) == [
        "model_epoch_003_step_00009.pth", "model_epoch_004_step_00012.pth"]
    a = load_checkpoint(str(tmp_path / "full" / "segformer_model_latest.pth"))["state_dict"]
    b = load_checkpoint(str(tmp_path / "resumed" / "segformer_model_latest.pth"))["state_dict"]
    assert resumed["metrics"]["global_step"] == full["metrics"]["global_step"] == 12
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _float_dtypes(checkpoint: dict) -> set[torch.dtype]:
    """dtypes of the floating-point weights and optimizer moments in a training checkpoint."""
    tensors = list(checkpoint["state_dict"].values())
    for opt in checkpoint["optimizer_states"]:
        tensors += [v for state in opt["state"].values() for v in state.values() if isinstance(v, torch.Tensor)]
    return {t.dtype for t in tensors if t.is_floating_point()}


def test_checkpoints_hold_fp32_and_a_run_resumed_under_another_precision_continues(tiny, tmp_path):
    results = tmp_path / "mixed"
    latest = results / "segformer_model_latest.pth"
    _run(tiny, tmp_path, results, "train.num_epochs=1", "train.precision=bf16-mixed")
    first = load_checkpoint(str(latest))
    assert _float_dtypes(first) == {torch.float32}  # bf16 autocast computes in bf16 but keeps fp32 weights
    _run(tiny, tmp_path, results, "train.num_epochs=2", "train.precision=32")
    _, out = _run(tiny, tmp_path, results, "train.num_epochs=3", "train.precision=bf16-mixed")
    assert _status_epochs(results) == [1, 2, 3] and out["metrics"]["global_step"] == 9  # each run went on
    last = load_checkpoint(str(latest))
    assert _float_dtypes(last) == {torch.float32} and last["global_step"] == 9
    assert torch.isfinite(torch.tensor(out["metrics"]["train_loss"]))
    assert any(not torch.equal(first["state_dict"][k], v) for k, v in last["state_dict"].items())


def test_encrypted_training_checkpoints(tiny, tmp_path):
    results = tmp_path / "enc"
    _run(tiny, tmp_path, results, "train.num_epochs=1", "encryption_key=topsecret")
    from segformer_tao.engine.checkpoint import is_encrypted
    from segformer_tao.errors import UserError

    written = sorted(results.glob("*.pth"))
    assert {p.name for p in written} >= {"segformer_model_latest.pth", "segformer_model_best.pth",
                                         "model_epoch_001_step_00003.pth"}
    for path in written:  # every checkpoint is sealed on disk and refuses to open without the key
        blob = path.read_bytes()
        assert is_encrypted(blob) and b"topsecret" not in blob, path.name
        with pytest.raises(UserError, match="no encryption_key was given"):
            load_checkpoint(str(path))
    assert load_checkpoint(str(results / "segformer_model_latest.pth"), "topsecret")["meta"]["backbone"] == "mit_b0"
    _run(tiny, tmp_path, results, "train.num_epochs=2", "encryption_key=topsecret")  # resumes through the key
    assert _status_epochs(results) == [1, 2] and is_encrypted((results / "segformer_model_latest.pth").read_bytes())


def test_out_of_memory_is_explained_and_keeps_the_last_checkpoint(tiny, tmp_path, monkeypatch):
    from segformer_tao.engine.module import SegFormerModule
    from segformer_tao.errors import UserError

    results = tmp_path / "oom"
    _run(tiny, tmp_path, results, "train.num_epochs=1")
    before = (results / "segformer_model_latest.pth").read_bytes()

    started_at = []

    def boom(self, batch, batch_idx):
        started_at.append((self.current_epoch, self.global_step))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SegFormerModule, "training_step", boom)
    with pytest.raises(UserError, match="Lower dataset.segment.batch_size or dataset.segment.img_size"):
        _run(tiny, tmp_path, results, "train.num_epochs=3")  # resumes from latest, then runs out of memory
    assert started_at == [(1, 3)]  # resumed after epoch 1 (3 steps), not restarted from scratch
    assert (results / "segformer_model_latest.pth").read_bytes() == before


def _csv_epochs(results) -> set[int]:
    import csv

    with open(results / "logs" / "csv" / "metrics.csv", newline="") as f:
        return {int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("epoch")}


def test_rerunning_a_finished_training_changes_nothing(tiny, tmp_path):
    results = tmp_path / "done"
    _, first = _run(tiny, tmp_path, results, "train.num_epochs=1")
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    _, again = _run(tiny, tmp_path, results, "train.num_epochs=1")
    assert again["metrics"]["already_finished"] and again["metrics"]["epochs"] == 1
    assert again["metrics"]["val_miou"] == pytest.approx(first["metrics"]["val_miou"])
    assert again["metrics"]["best_val_miou"] == pytest.approx(first["metrics"]["best_val_miou"])
    after = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    assert after == before  # logs, status, curves and checkpoints untouched


def test_extending_a_finished_training_keeps_its_csv_history(tiny, tmp_path):
    results = tmp_path / "extend"
    _run(tiny, tmp_path, results, "train.num_epochs=1")
    assert _csv_epochs(results) == {0}
    _, out = _run(tiny, tmp_path, results, "train.num_epochs=2")
    assert out["metrics"]["global_step"] == 6 and not out["metrics"].get("already_finished")
    assert _csv_epochs(results) == {0, 1}
    assert _status_epochs(results) == [1, 2]  # the second run trained epoch 2 only


def test_resuming_a_results_dir_of_another_model_is_a_user_error(tiny, tmp_path):
    from segformer_tao.errors import UserError

    net_cls, ds_cls, make_cfg = tiny
    results = tmp_path / "shared"
    _run(tiny, tmp_path, results, "train.num_epochs=1")
    cfg = make_cfg(tmp_path, "train.num_epochs=2", "dataset.segment.num_classes=3")
    dm = SegDataModule(cfg, ds_cls(12, mode="train"), ds_cls(6, mode="eval", seed=1))
    with pytest.raises(UserError, match=r"already holds a training checkpoint of another model.*new results_dir"):
        train_model(cfg, str(results), net_cls(num_classes=3), dm)
