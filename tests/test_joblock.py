"""One writer per results dir (flock + holder record) and liveness of jobs: in-process, no training."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from segformer_tao import joblock
from segformer_tao.commands.jobs import show_job
from segformer_tao.errors import UserError
from segformer_tao.jobs import Job, read_job
from tests.conftest import REPO

OTHER = "build-node-17.example"  # a host name that is not this machine


def _ago(seconds: float) -> str:
    return time.strftime(joblock.TIME_FORMAT, time.localtime(time.time() - seconds))


def _listing(d) -> dict[str, bytes]:
    return {p: open(os.path.join(d, p), "rb").read() for p in sorted(os.listdir(d))}


def test_second_holder_refused_and_writes_nothing(tmp_path):
    first = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train", "x=1"])
    before = _listing(tmp_path)
    with pytest.raises(UserError) as e:
        joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train", "x=2"])
    msg = str(e.value)
    for needle in (str(tmp_path), socket.gethostname(), f"pid {os.getpid()}", first.info["start"],
                   "segformer train x=1", "Wait for that job", "results_dir"):
        assert needle in msg, (needle, msg)
    assert _listing(tmp_path) == before  # the refused attempt changed nothing, not even the lock record
    first.release()
    assert os.listdir(tmp_path) == []  # released: the lock file is gone
    again = joblock.JobLock.acquire(str(tmp_path), "evaluate", ["segformer", "evaluate"])
    assert again.note is None
    again.release()
    again.release()  # twice is harmless


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    code = ("import sys, time; from segformer_tao.joblock import JobLock; "
            "JobLock.acquire(sys.argv[1], 'train', ['segformer', 'train']); print('locked', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"pid {proc.pid}"):  # held while it lives
        joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / joblock.LOCK_FILE).read_text())["pid"] == proc.pid  # left behind
    lock = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    assert lock.note and f"pid {proc.pid}" in lock.note and "no longer exists" in lock.note
    assert json.loads((tmp_path / joblock.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def _other_host_job(tmp_path, heartbeat: str) -> None:
    holder = {"host": OTHER, "pid": 4242, "action": "train", "start": _ago(7200), "command": ["segformer", "train"]}
    (tmp_path / joblock.LOCK_FILE).write_text(json.dumps(holder))
    (tmp_path / "job.json").write_text(json.dumps({**holder, "status": "running", "heartbeat": heartbeat}))


def test_lock_from_another_host_is_honoured_until_its_heartbeat_is_stale(tmp_path):
    _other_host_job(tmp_path, heartbeat=_ago(5))
    before = _listing(tmp_path)
    with pytest.raises(UserError) as e:
        joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    assert OTHER in str(e.value) and "pid 4242" in str(e.value) and "last heartbeat" in str(e.value)
    assert _listing(tmp_path) == before
    assert show_job(str(tmp_path))["status"] == "running"

    _other_host_job(tmp_path, heartbeat=_ago(joblock.stale_after_s() + 60))
    shown = show_job(str(tmp_path))
    assert shown["status"] == "killed" and OTHER in shown["killed"]
    lock = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    assert lock.note and OTHER in lock.note and "older than" in lock.note
    lock.release()


def test_liveness_of_running_records():
    me = joblock.identity()
    assert joblock.liveness({"status": "done", **me}) == ("done", None)
    assert joblock.liveness({"status": "running", **me})[0] == "running"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    status, why = joblock.liveness({"status": "running", "host": me["host"], "pid": proc.pid, "heartbeat": "T1"})
    assert status == "killed" and str(proc.pid) in why and "T1" in why
    # the pid now belongs to another process (reused): not the job's process
    assert joblock.liveness({"status": "running", **me, "proc_start": me["proc_start"] + 1})[0] == "killed"
    assert joblock.liveness({"status": "running", "host": OTHER, "pid": 1, "heartbeat": _ago(1)})[0] == "running"
    assert joblock.liveness({"status": "running", "host": OTHER, "pid": 1, "heartbeat": _ago(3600)})[0] == "killed"


def test_heartbeat_refreshes_and_previous_attempt_is_kept(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setenv("SEGFORMER_HEARTBEAT_S", "0.2")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = {"action": "train", "status": "running", "start": _ago(100), "heartbeat": _ago(40),
            "host": socket.gethostname(), "pid": proc.pid, "command": ["segformer", "train"]}
    (tmp_path / "job.json").write_text(json.dumps({**dead, "history": [{"status": "done"}]}))
    cfg = OmegaConf.create({"parent_job": None, "encryption_key": None})
    job = Job.start("train", cfg, str(tmp_path))
    first = read_job(str(tmp_path))
    assert [h["status"] for h in first["history"]] == ["done", "killed"]
    assert first["history"][-1]["end"] == dead["heartbeat"] and str(proc.pid) in first["history"][-1]["killed"]
    deadline = time.time() + 10
    while read_job(str(tmp_path))["heartbeat"] == first["heartbeat"] and time.time() < deadline:
        time.sleep(0.1)
    assert joblock.parse_time(read_job(str(tmp_path))["heartbeat"]) > joblock.parse_time(first["heartbeat"])
    job.finish("done")
    assert not job._beat.is_alive()
    final = read_job(str(tmp_path))
    assert final["status"] == "done" and final["history"] == first["history"]


def test_without_flock_the_holder_record_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(joblock.fcntl, "flock", no_flock)  # e.g. an NFS mount without lockd
    first = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):  # its holder (this process) is alive
        joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    first.release()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (tmp_path / joblock.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": proc.pid,
                                                          "action": "train", "start": _ago(60)}))
    lock = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    assert lock.note and f"pid {proc.pid}" in lock.note
    lock.release()


def test_prepare_results_dir_locks_until_the_job_finishes(tmp_path):
    from omegaconf import OmegaConf

    from segformer_tao.jobs import prepare_results_dir

    cfg = OmegaConf.create({"results_dir": str(tmp_path), "parent_job": None, "encryption_key": None,
                            "evaluate": {"results_dir": None}})
    out = prepare_results_dir("evaluate", cfg)
    assert prepare_results_dir("evaluate", cfg) == out  # re-entrant in the process that holds it
    code = ("import sys; from omegaconf import OmegaConf; from segformer_tao.jobs import prepare_results_dir; "
            "prepare_results_dir('evaluate', OmegaConf.create({'results_dir': sys.argv[1], 'parent_job': None, "
            "'encryption_key': None, 'evaluate': {'results_dir': None}}))")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": REPO})
    assert other.returncode != 0 and "is in use by a running evaluate" in other.stderr
    job = Job.start("evaluate", cfg, out)
    assert os.path.exists(os.path.join(out, joblock.LOCK_FILE))
    job.finish("done")
    assert not os.path.exists(os.path.join(out, joblock.LOCK_FILE))  # released with the job
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": REPO})
    assert again.returncode == 0, again.stderr
    assert not os.path.exists(os.path.join(out, joblock.LOCK_FILE))  # released at exit without a Job
