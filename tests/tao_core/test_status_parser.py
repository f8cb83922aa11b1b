"""Our status.json, read by TAO Core's own StatusParser (what TAO's services, UI and AutoML controller see)."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import time

import pytest

from segformer_tao.data.synthetic import make_demo_dataset
from tests.bad_inputs.runner import preload, run_cli_forked
from tests.conftest import REPO, assert_user_error

PARSE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parse_status.py")
COMMON = ["dataset.segment.num_classes=3", "dataset.segment.img_size=32", "dataset.segment.label_transform=None",
          "dataset.segment.batch_size=2", "dataset.segment.workers=0", "model=mit_b0",
          "model.decode_head.decoder_params.embed_dim=32", "dataset.segment.check=off"]


def tao_parse(tao_core_path: str, *status_files: str) -> dict:
    """{status.json path: TAO's parsed view} from tests/tao_core/parse_status.py in its own process."""
    env = {**os.environ, "PYTHONPATH": tao_core_path}
    proc = subprocess.run([sys.executable, PARSE, *status_files], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _lines(results_dir: str) -> list[dict]:
    with open(os.path.join(results_dir, "status.json")) as f:
        return [json.loads(line) for line in f]


def _metrics_csv(results_dir: str) -> dict[str, dict[int, float]]:
    """{column: {1-based epoch: value}} of the epoch-level values Lightning's CSVLogger wrote."""
    out: dict[str, dict[int, float]] = {}
    with open(os.path.join(results_dir, "logs", "csv", "metrics.csv")) as f:
        for row in csv.DictReader(f):
            for key in ("val_miou", "train_loss_epoch", "val_loss"):
                if row.get(key):
                    out.setdefault(key, {})[int(row["epoch"]) + 1] = float(row[key])
    return out


def _by_metric(entries: list[dict]) -> dict[str, dict]:
    return {e["metric"]: e for e in entries}


@pytest.mark.slow
def test_tao_status_parser_reads_train_evaluate_inference_and_failure(tmp_path, tao_core_path):
    preload()  # each CLI run below is a fresh forked process of the real `segformer` main(), started warm
    data = str(make_demo_dataset(tmp_path / "data", num_classes=3, size=32, train=4, val=2, test=2))
    res = str(tmp_path / "results")
    d = [f"dataset.segment.root_dir={data}", f"results_dir={res}", *COMMON]
    # 4 epochs, validation every 2nd: epochs 2 and 4 have val_miou, 1 and 3 must have none.
    for args in (["train", "train.num_epochs=4", "train.validation_interval=2", "train.checkpoint_interval=2",
                  "automl_policy=off"],
                 ["evaluate", f"parent_job={res}/train"], ["inference", f"parent_job={res}/train"]):
        r = run_cli_forked(*args, *d)
        assert r.returncode == 0, r.output[-4000:]
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")  # a user error inside the job
    failed = run_cli_forked("evaluate", *d, f"evaluate.checkpoint={tmp_path}/broken.pth",
                            f"evaluate.results_dir={res}/failed")
    assert_user_error(failed, "broken.pth")

    dirs = {name: os.path.join(res, name) for name in ("train", "evaluate", "inference", "failed")}
    seen = tao_parse(tao_core_path, *(os.path.join(p, "status.json") for p in dirs.values()))
    tao = {name: seen[os.path.join(p, "status.json")] for name, p in dirs.items()}

    # --- train: kpi per validated epoch, equal to metrics.csv (Lightning's CSVLogger) and to status.json
    train, csv_values = tao["train"], _metrics_csv(dirs["train"])
    lines = _lines(dirs["train"])
    assert lines[0]["status"] == "STARTED" and lines[-1]["status"] == "SUCCESS"
    assert train["detailed_status"]["status"] == "SUCCESS"
    assert (train["epoch"], train["max_epoch"]) == (4, 4)
    kpi, graphical = _by_metric(train["kpi"]), _by_metric(train["graphical"])
    assert sorted(csv_values["val_miou"]) == [2, 4]
    assert kpi["val_miou"]["values"] == {str(e): pytest.approx(v, abs=1e-6) for e, v in csv_values["val_miou"].items()}
    ours = {ln["epoch"]: ln["kpi"]["val_miou"] for ln in lines if "kpi" in ln}
    assert kpi["val_miou"]["values"] == {str(e): v for e, v in ours.items()}
    assert {"val_acc", "val_mAcc", "val_mf1", "val_mprecision", "val_mrecall"} <= set(kpi)
    # losses and lr are curves: every epoch for train_loss and lr, validated epochs for val_loss
    assert graphical["train_loss"]["values"] == {
        str(e): pytest.approx(v, rel=1e-5) for e, v in csv_values["train_loss_epoch"].items()}
    assert sorted(graphical["lr"]["values"]) == ["1", "2", "3", "4"]
    assert graphical["val_loss"]["values"] == {
        str(e): pytest.approx(v, rel=1e-5) for e, v in csv_values["val_loss"].items()}
    assert "loss" not in str(sorted(kpi))  # no loss among the scores
    # TAO's AutoML controller parses time_per_epoch like this and ranks trials by val_miou at the best epoch,
    # whose checkpoint it then takes: model_epoch_<epoch>_step_*.pth
    time.strptime(train["time_per_epoch"].split(".")[0], "%H:%M:%S")
    best_epoch = max(csv_values["val_miou"], key=lambda e: (csv_values["val_miou"][e], e))
    assert train["automl_metric"]["value"] == pytest.approx(csv_values["val_miou"][best_epoch], abs=1e-6)
    assert train["automl_metric"]["best_epoch"] == best_epoch
    assert glob.glob(os.path.join(dirs["train"], f"model_epoch_{best_epoch:03d}_step_*.pth"))

    # --- evaluate: TAO's test_* kpi equal to results.json; per-class values under categorical
    ev = tao["evaluate"]
    with open(os.path.join(dirs["evaluate"], "results.json")) as f:
        results = json.load(f)
    assert ev["detailed_status"]["status"] == "SUCCESS"
    ev_kpi = {k: v["values"]["0"] for k, v in _by_metric(ev["kpi"]).items()}
    assert ev_kpi["test_miou"] == pytest.approx(results["mIoU"])
    assert ev_kpi["test_acc"] == pytest.approx(results["overall_accuracy"])
    assert ev_kpi["test_mAcc"] == pytest.approx(results["mAcc"])
    cat = {c["metric"]: {v["category"]: v["value"] for v in c["category_wise_values"]} for c in ev["categorical"]}
    for row in results["per_class"]:
        if row["iou"] is not None:
            assert cat["iou"][row["class_name"]] == pytest.approx(row["iou"])
        assert cat["pixels"][row["class_name"]] == row["support"]

    # --- inference: image count and predicted pixels per class
    inf = tao["inference"]
    masks = sorted(os.listdir(os.path.join(dirs["inference"], "masks")))
    assert inf["detailed_status"]["status"] == "SUCCESS"
    assert _by_metric(inf["kpi"])["images"]["values"]["0"] == len(masks) == 2
    pixels = {v["category"]: v["value"] for v in inf["categorical"][0]["category_wise_values"]}
    assert sum(pixels.values()) == 2 * 32 * 32  # both demo test images are 32x32

    # --- a user error: FAILURE with the paragraph the CLI printed
    fail_lines = _lines(dirs["failed"])
    assert [ln["status"] for ln in fail_lines] == ["STARTED", "FAILURE"]
    assert tao["failed"]["detailed_status"]["status"] == "FAILURE"
    assert tao["failed"]["detailed_status"]["message"] == failed.stderr.strip().removeprefix("error: ")
