"""One writer per results dir and killed-job detection, through the real CLI (subprocesses, tiny training)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.engine.checkpoint import load_checkpoint, model_state_dict
from segformer_tao.joblock import LOCK_FILE, JobLock
from tests.conftest import REPO, assert_user_error, run_cli

TINY = ["model=mit_b0", "dataset.segment.num_classes=3", "dataset.segment.img_size=32",
        "dataset.segment.label_transform=None", "dataset.segment.batch_size=2", "dataset.segment.workers=0",
        "train.num_epochs=2", "automl_policy=off", "train.seed=7", "dataset.segment.check=off"]


def _cmd(data: str, results: str) -> list[str]:
    return [sys.executable, "-m", "segformer_tao.cli", "train", f"dataset.segment.root_dir={data}",
            f"results_dir={results}", *TINY]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **extra}


def _wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _job(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "job.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _files(folder: str) -> set[str]:
    return {os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs}


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return model_state_dict(load_checkpoint(os.path.join(folder, "segformer_model_latest.pth")))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return str(make_demo_dataset(tmp_path_factory.mktemp("ow") / "data", num_classes=3, size=32, train=4, val=2,
                                 test=2))


@pytest.mark.slow
def test_second_train_into_the_same_folder_exits_2_and_the_first_equals_a_single_run(tmp_path, data):
    reference = str(tmp_path / "reference")
    subprocess.run(_cmd(data, reference), env=_env(), check=True, capture_output=True)

    shared = str(tmp_path / "shared")
    first = subprocess.Popen(_cmd(data, shared), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    _wait_for(lambda: os.path.exists(os.path.join(shared, "train", LOCK_FILE)), what="the first job's lock")
    time.sleep(2)  # the first job is writing by now (config, logs, job.json)
    second = run_cli("train", f"dataset.segment.root_dir={data}", f"results_dir={shared}", *TINY)
    assert_user_error(second, f"{shared}/train", "is in use by a running train", f"pid {first.pid}",
                      "segformer train", "wrote nothing", "another results_dir")
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]

    ref, got = f"{reference}/train", f"{shared}/train"
    assert _files(got) == _files(ref)  # no lock left, nothing extra, nothing missing
    assert "history" not in _job(got) and _job(got)["status"] == "done"
    expected, weights = _weights(ref), _weights(got)
    assert all(torch.equal(expected[k], weights[k]) for k in expected)
    for name in ("status.json", "logs/csv/metrics.csv"):  # one writer: the same number of lines as a single run
        with open(os.path.join(ref, name)) as a, open(os.path.join(got, name)) as b:
            assert len(a.read().splitlines()) == len(b.read().splitlines()), name


@pytest.mark.slow
def test_sigkilled_train_is_listed_killed_and_the_next_run_records_it(tmp_path, data):
    results = str(tmp_path / "results")
    folder = f"{results}/train"
    proc = subprocess.Popen(_cmd(data, results), env=_env(SEGFORMER_HEARTBEAT_S="0.5"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for(lambda: (_job(folder) or {}).get("status") == "running", what="job.json running")
    first_beat = _job(folder)["heartbeat"]
    _wait_for(lambda: _job(folder)["heartbeat"] != first_beat, what="a heartbeat refresh")
    listed = run_cli("jobs", "list", results)
    assert listed.returncode == 0 and " running " in listed.stdout, listed.output
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last_beat = _job(folder)["heartbeat"]

    listed = run_cli("jobs", "list", results)
    assert listed.returncode == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if folder in line)
    assert " killed " in row and last_beat in row, listed.stdout
    shown = run_cli("jobs", "show", folder)
    job = json.loads(shown.stdout)
    assert job["status"] == "killed" and f"process {proc.pid}" in job["killed"] and last_beat in job["killed"]
    assert _job(folder)["status"] == "running"  # `jobs` only reads

    again = run_cli("train", f"dataset.segment.root_dir={data}", f"results_dir={results}", *TINY)
    assert again.returncode == 0, again.output[-3000:]
    assert f"pid {proc.pid}" in again.output and "no longer exists" in again.output  # the lock takeover note
    job = _job(folder)
    assert job["status"] == "done" and job["pid"] != proc.pid
    previous = job["history"][-1]
    assert previous["status"] == "killed" and previous["pid"] == proc.pid and previous["end"] == last_beat


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigkill_of_the_job_alone_frees_the_folder_and_its_loader_workers_die(tmp_path, data):
    """kill -9 of the main process only (not its group): its forked loader workers neither keep the results-dir
    lock nor live on (issue 34, finding 11)."""
    results = str(tmp_path / "results")
    folder = f"{results}/train"
    cmd = [*_cmd(data, results), "dataset.segment.workers=2", "train.num_epochs=50"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for(lambda: (_job(folder) or {}).get("status") == "running" and len(_children(proc.pid)) >= 2,
                  what="the job and its loader workers")
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_for(lambda: not any(_alive(w) for w in workers), timeout=3, what="the workers to die with the job")
        lock = JobLock.acquire(folder, "train", ["segformer", "train"])  # what a re-run does first: not refused
        assert f"pid {proc.pid}" in lock.note and "no longer exists" in lock.note
        lock.release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_releases_the_lock_and_records_the_failure(tmp_path, data):
    results = str(tmp_path / "results")
    folder = f"{results}/train"
    proc = subprocess.Popen(_cmd(data, results) + ["train.num_epochs=50"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(lambda: os.path.exists(f"{folder}/status.json"), what="training to start")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) != 0
    assert not os.path.exists(os.path.join(folder, LOCK_FILE))
    assert _job(folder)["status"] == "failed"
