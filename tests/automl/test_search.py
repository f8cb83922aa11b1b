"""Real AutoML studies on the demo dataset: Hyperband pruning, trial jobs, reports, resume after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from segformer_tao.automl import search, storage
from segformer_tao.config import compose_config
from segformer_tao.jobs import prepare_results_dir
from segformer_tao.parent import resolve_parent
from segformer_tao.status import read_status
from tests.automl.conftest import tiny_overrides
from tests.conftest import REPO, run_cli, status_epochs

pytestmark = pytest.mark.slow


def _load_study(out_dir) -> optuna.Study:
    return optuna.load_study(study_name=search.STUDY_NAME, storage=storage.open_storage(None, str(out_dir), 60))


def test_hyperband_study_prunes_and_leaves_trial_jobs_reports_and_best_model(demo_root, tmp_path):
    torch.set_num_threads(1)
    cfg = compose_config("train", tiny_overrides(
        demo_root, tmp_path / "res", "automl.num_trials=3", "automl.max_epochs=2", "automl.algorithm=hyperband",
        "train.num_epochs=7", "train.seed=7"), spec_file=str(demo_root / "spec.yaml"))
    out = prepare_results_dir("train", cfg)
    result = search.run(cfg)

    study = _load_study(out)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 3 and TrialState.PRUNED in states and TrialState.COMPLETE in states, states
    for t in trials:  # the pruner saw val_miou after every validation, step = epoch
        assert sorted(t.intermediate_values) == ([1, 2] if t.state == TrialState.COMPLETE else [1])
        tdir = os.path.join(out, "trials", str(t.number))
        job = json.load(open(os.path.join(tdir, "job.json")))
        assert job["action"] == "train" and job["status"] == ("done" if t.state == TrialState.COMPLETE else "pruned")
        lines = read_status(tdir)  # a trial's status.json reads like any train job's (TAO's schema)
        assert (lines[0]["status"], lines[-1]["status"]) == ("STARTED", "SUCCESS")
        assert [ln["epoch"] for ln in lines if "kpi" in ln] == sorted(t.intermediate_values)
        assert ("pruned" in lines[-1]["message"]) == (t.state == TrialState.PRUNED)
        spec = yaml.safe_load(open(os.path.join(tdir, "experiment.yaml")))
        # every user override kept, epochs from automl.max_epochs, the trial's own values applied
        assert spec["dataset"]["segment"]["root_dir"] == str(demo_root) and spec["train"]["seed"] == 7
        assert spec["dataset"]["segment"]["img_size"] == 64 and spec["model"]["backbone"]["type"] == "mit_b0"
        assert spec["train"]["num_epochs"] == 2 and spec["train"]["results_dir"] == tdir
        assert spec["train"]["optim"]["lr"] == pytest.approx(t.user_attrs["config"]["train.optim.lr"])
        assert spec["automl_policy"] == "off"
    best = study.best_trial
    assert result["metrics"]["val_miou"] == pytest.approx(best.value) and result["metrics"]["trials_pruned"] >= 1
    ckpt = result["artifacts"]["best_checkpoint"]
    assert ckpt == os.path.join(out, "best_model", "segformer_model_best.pth")
    src = os.path.join(out, "trials", str(best.number), "segformer_model_best.pth")
    assert open(ckpt, "rb").read() == open(src, "rb").read()
    assert os.path.isfile(os.path.join(out, "best_model", "experiment.yaml"))
    report = json.load(open(os.path.join(out, "automl_results.json")))
    assert report["best_trial"] == best.number and len(report["trials"]) == 3
    assert {r["state"] for r in report["trials"]} == {"complete", "pruned"}
    assert open(os.path.join(out, "automl_results.csv")).read().count("\n") == 4
    for png in ("automl_val_miou.png", "automl_importances.png"):
        assert open(os.path.join(out, png), "rb").read(4) == b"\x89PNG"
    assert resolve_parent("evaluate", out)[:2] == ("evaluate.checkpoint", ckpt)  # parent_job -> best_model


def _cli_args(demo_root, results) -> list[str]:
    return ["train", "-e", str(demo_root / "spec.yaml"), *tiny_overrides(demo_root, results),
            "automl.num_trials=3", "automl.max_epochs=2", "automl.algorithm=bayesian"]


def _kill_when(proc: subprocess.Popen, path: str, limit_s: float = 300) -> None:
    deadline = time.time() + limit_s
    while not os.path.exists(path):
        assert proc.poll() is None, f"finished before {path} appeared:\n{proc.stdout.read()}"
        assert time.time() < deadline, f"{path} did not appear in {limit_s} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_rerun_after_a_crash_keeps_finished_trials_and_resumes_the_interrupted_one(demo_root, tmp_path):
    results = tmp_path / "res"
    out = results / "train"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "segformer_tao.cli", *_cli_args(demo_root, results)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _kill_when(proc, str(out / "trials" / "1" / "segformer_model_latest.pth"))  # dies inside trial 1
    first_job = (out / "trials" / "0" / "job.json").read_text()
    assert json.loads(first_job)["status"] == "done"

    again = run_cli(*_cli_args(demo_root, results), env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.output[-3000:]
    assert "train path: AutoML search" in again.output and "trial 1 was interrupted" in again.output
    assert f"Resuming training from {out / 'trials' / '1' / 'segformer_model_latest.pth'}" in again.output
    assert (out / "trials" / "0" / "job.json").read_text() == first_job  # trial 0 was not run again
    # trial 1 went on from its checkpoint (a restart from scratch prints the same "Resuming" line first)
    starts, trained = status_epochs(out / "trials" / "1")
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 1, starts
    assert trained == sorted(set(trained)), trained  # no epoch trained twice
    trials = _load_study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL] + [TrialState.COMPLETE] * 2
    retry = trials[2]  # the retry of trial 1: same parameters, trial 1's directory and checkpoints
    assert retry.params == trials[1].params and retry.user_attrs["trial_dir"] == str(out / "trials" / "1")
    assert sorted(os.listdir(out / "trials")) == ["0", "1", "3"]
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "done" and job["artifacts"]["best_checkpoint"]["path"].endswith(
        "best_model/segformer_model_best.pth")
    report = json.loads((out / "automl_results.json").read_text())
    assert report["counts"]["complete"] == 3 and set(report["importances"]) <= set(trials[0].params)
    assert report["importances"]
