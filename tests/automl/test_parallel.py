"""automl.parallel_trials: trials as `segformer train` child processes, each on its own share of the CPU."""

from __future__ import annotations

import json
import os
from datetime import datetime

import optuna
import pytest

from segformer_tao.automl import storage, workers
from tests.automl.conftest import tiny_overrides
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def _when(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def test_two_parallel_trials_run_as_children_with_their_own_threads_logs_and_dirs(demo_root, tmp_path):
    results = tmp_path / "res"
    out = results / "train"
    res = run_cli("train", "-e", str(demo_root / "spec.yaml"), *tiny_overrides(demo_root, results),
                  "dataset.segment.img_size=32", "automl.num_trials=4", "automl.max_epochs=2",
                  "automl.algorithm=hyperband", "automl.parallel_trials=2",
                  env={"OMP_NUM_THREADS": "2"})
    assert res.returncode == 0, res.output[-3000:]
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"2 trials at a time (cpu x{threads} threads, cpu x{threads} threads)" in res.output
    assert (out / storage.JOURNAL_FILE).is_file() and not (out / storage.LEGACY_DB).exists()

    report = json.loads((out / "automl_results.json").read_text())
    counts = report["counts"]
    assert counts["complete"] + counts["pruned"] == 4 and counts["complete"] >= 1 and len(report["trials"]) == 4
    study = optuna.load_study(study_name=storage.STUDY_NAME, storage=storage.open_storage(None, str(out), 60))
    assert sorted(r["trial"] for r in report["trials"]) == [0, 1, 2, 3]
    assert {r["devices"] for r in report["trials"]} == {f"cpu x{threads} threads"}
    assert sorted(os.listdir(out / "trials")) == ["0", "1", "2", "3"]
    spans = []
    for r in report["trials"]:
        tdir = out / "trials" / str(r["trial"])
        assert r["trial_dir"] == str(tdir)
        # the same train job as a trial trained in process, plus the child's spec and its own log
        names = set(os.listdir(tdir))
        assert {"experiment.yaml", "job.json", "status.json", "segformer_model_best.pth", workers.TRIAL_SPEC,
                workers.TRIAL_LOG} <= names, names
        job = json.loads((tdir / "job.json").read_text())
        assert job["pid"] != json.loads((out / "job.json").read_text())["pid"]  # trained in a child process
        # the child reported val_miou after each epoch to the study; a pruned one stopped after epoch 1
        t = study.trials[r["trial"]]
        pruned = t.state == optuna.trial.TrialState.PRUNED
        assert sorted(t.intermediate_values) == ([1] if pruned else [1, 2]) and r["state"] == t.state.name.lower()
        assert job["status"] == ("pruned" if pruned else "done")
        assert t.intermediate_values[max(t.intermediate_values)] == pytest.approx(job["metrics"]["val_miou"])
        assert "train finished" in (tdir / workers.TRIAL_LOG).read_text()
        spans.append((_when(job["start"]), _when(job["end"])))
    # two at a time: some trials overlap in time, never more than two
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, spans
    best = max((r for r in report["trials"] if r["state"] == "complete"), key=lambda r: r["val_miou"])
    assert report["best_trial"] == best["trial"]
    assert (out / "best_model" / "segformer_model_best.pth").read_bytes() == \
        (out / "trials" / str(best["trial"]) / "segformer_model_best.pth").read_bytes()


def test_a_killed_search_leaves_no_trial_process_running(demo_root, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out = tmp_path / "res" / "train"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "segformer_tao.cli", "train", "-e", str(demo_root / "spec.yaml"),
                             *tiny_overrides(demo_root, tmp_path / "res"), "dataset.segment.img_size=32",
                             "automl.num_trials=2", "automl.max_epochs=50", "automl.parallel_trials=2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = [out / "trials" / str(n) / "job.json" for n in (0, 1)]
    deadline = time.time() + 300
    while not all(j.is_file() for j in jobs):  # both children are training
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    pids = [json.loads(j.read_text())["pid"] for j in jobs]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while any(os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split(")")[1][:3]
              for p in pids):
        assert time.time() < deadline, f"trial processes {pids} outlived their search"
        time.sleep(0.2)
