"""Jobs end to end through the real CLI: parent_job chaining, job.json, `segformer jobs`, no secret in outputs."""

from __future__ import annotations

import json
import os

import pytest

from segformer_tao.data.synthetic import make_demo_dataset
from tests.conftest import assert_user_error, run_cli

SECRET = "s3cr3t-Key-9431"
COMMON = ["dataset.segment.num_classes=3", "dataset.segment.img_size=64", "dataset.segment.label_transform=None",
          "dataset.segment.batch_size=4", "dataset.segment.workers=0", "model=mit_b0", f"encryption_key={SECRET}"]


def _ok(result):
    assert result.returncode == 0, result.output[-4000:]
    return result


def _job(path):
    with open(os.path.join(path, "job.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_chain_train_evaluate_export_ort_quantize(tmp_path):
    data = str(make_demo_dataset(tmp_path / "data", num_classes=3, size=64, train=8, val=4, test=4))
    res = str(tmp_path / "results")
    d = [f"dataset.segment.root_dir={data}", f"results_dir={res}", *COMMON]
    train = _ok(run_cli("train", *d, "train.num_epochs=2", "automl_policy=off"))
    assert f"{SECRET}" not in train.output
    job = _job(f"{res}/train")
    assert job["status"] == "done" and job["encrypted"] is True
    from segformer_tao.engine.checkpoint import is_encrypted

    checkpoints = [f for f in os.listdir(f"{res}/train") if f.endswith(".pth")]
    assert "segformer_model_latest.pth" in checkpoints
    for name in checkpoints:  # the flag is true of the files: every checkpoint is sealed on disk
        with open(f"{res}/train/{name}", "rb") as f:
            assert is_encrypted(f.read()), name
    assert set(job["artifacts"]) >= {"latest_checkpoint"}
    assert all(len(a["sha256"]) == 64 and a["bytes"] > 0 for a in job["artifacts"].values())

    ev = _ok(run_cli("evaluate", *d, f"parent_job={res}/train"))
    assert "best-by-val_miou" in ev.output or "latest checkpoint" in ev.output
    torch_miou = _job(f"{res}/evaluate")["metrics"]["mIoU"]

    _ok(run_cli("export", *d, f"parent_job={res}/train"))
    onnx_files = [f for f in os.listdir(f"{res}/export") if f.endswith(".onnx")]
    assert onnx_files, os.listdir(f"{res}/export")

    ort_dir = f"{res}/ort"
    _ok(run_cli("evaluate", *d, f"parent_job={res}/export", f"evaluate.results_dir={ort_dir}"))
    assert _job(ort_dir)["parent"] == f"{res}/export"
    assert _job(ort_dir)["metrics"]["mIoU"] == pytest.approx(torch_miou, abs=1e-4)

    _ok(run_cli("quantize", *d, f"parent_job={res}/export",
                f"dataset.segment.quant_calibration_dataset.images_dir={data}/images/train"))
    assert _job(f"{res}/quantize")["status"] == "done"

    listing = _ok(run_cli("jobs", "list", res))
    for action in ("train", "evaluate", "export", "quantize"):
        assert action in listing.stdout

    # the key never reaches any file we wrote (configs, logs, job.json, status.json, TensorBoard, checkpoints)
    for root, _, files in os.walk(res):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert SECRET.encode() not in f.read(), os.path.join(root, name)


def test_failed_job_is_recorded(tmp_path):
    data = str(make_demo_dataset(tmp_path / "data", num_classes=3, size=64, train=2, val=2, test=2))
    res = str(tmp_path / "results")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")  # fails inside the job, after it started
    r = run_cli("evaluate", f"dataset.segment.root_dir={data}", f"results_dir={res}",
                f"evaluate.checkpoint={tmp_path}/broken.pth", *COMMON)
    assert_user_error(r, "broken.pth")
    job = _job(f"{res}/evaluate")
    assert job["status"] == "failed" and "broken.pth" in job["error"]
    assert not os.path.exists(f"{res}/evaluate/.segformer.lock")  # released on errors too
    assert SECRET not in json.dumps(job) and SECRET not in open(f"{res}/evaluate/experiment.yaml").read()
    shown = run_cli("jobs", "show", f"{res}/evaluate")
    assert shown.returncode == 0 and '"status": "failed"' in shown.stdout


def test_parent_job_picks_the_best_checkpoint_over_the_latest(tmp_path):
    from segformer_tao.parent import resolve_parent

    train = tmp_path / "train"
    train.mkdir()
    for i, name in enumerate(["segformer_model_best.pth", "model_epoch_002_step_00010.pth",
                              "segformer_model_latest.pth"]):
        (train / name).write_bytes(b"weights")
        os.utime(train / name, (1_000_000 + i, 1_000_000 + i))  # the best checkpoint is the oldest file
    for action, key in [("evaluate", "evaluate.checkpoint"), ("export", "export.checkpoint")]:
        got_key, path, reason = resolve_parent(action, str(train))
        assert (got_key, path) == (key, str(train / "segformer_model_best.pth")) and "best" in reason
    (train / "segformer_model_best.pth").unlink()  # no validation ran: the latest checkpoint is next
    assert resolve_parent("evaluate", str(train))[1] == str(train / "segformer_model_latest.pth")
