"""Job folders an unlucky user or an attacker left odd (issue 34, findings 8-11 and 15): lock and job files that
are valid JSON but not an object, a heartbeat in the future, a symlinked action folder, children that outlive or
out-hold their parent, and a bad SEGFORMER_HEARTBEAT_S."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from segformer_tao import joblock
from segformer_tao.commands.jobs import main as jobs_main
from segformer_tao.commands.jobs import show_job
from segformer_tao.errors import UserError
from segformer_tao.jobs import Job, lock_results_dir, prepare_results_dir, release_results_dir
from tests.conftest import REPO

OTHER = "build-node-17.example"
NOT_OBJECTS = ["[1, 2]", '"x"', "42", "null", "true"]
YEAR = 365 * 86400


def _when(offset_s: float) -> str:
    return time.strftime(joblock.TIME_FORMAT, time.localtime(time.time() + offset_s))


def _cfg(tmp_path) -> OmegaConf:
    return OmegaConf.create({"results_dir": str(tmp_path), "parent_job": None, "encryption_key": None,
                             "evaluate": {"results_dir": None}})


# ---- 8: valid JSON that is not an object
@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_lock_file_that_is_not_an_object_is_taken_over_with_a_note(tmp_path, text):
    (tmp_path / joblock.LOCK_FILE).write_text(text)
    lock = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    assert lock.note and "unreadable" in lock.note and joblock.LOCK_FILE in lock.note
    assert json.loads((tmp_path / joblock.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_job_file_that_is_not_an_object_is_reported_unreadable(tmp_path, capsys, text):
    job_dir = tmp_path / "evaluate"
    job_dir.mkdir()
    (job_dir / "job.json").write_text(text)
    assert jobs_main(["list", str(tmp_path)]) == 0
    assert "unreadable" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a JSON object"):
        jobs_main(["show", str(job_dir)])
    job = Job.start("evaluate", _cfg(tmp_path), str(job_dir))  # a new job in that folder starts afresh
    job.finish("done")
    assert show_job(str(job_dir))["status"] == "done"


@pytest.mark.parametrize("text", NOT_OBJECTS)
def test_other_host_lock_with_a_job_file_that_is_not_an_object(tmp_path, text):
    holder = {"host": OTHER, "pid": 4242, "action": "train", "start": _when(-7200), "command": ["segformer"]}
    (tmp_path / joblock.LOCK_FILE).write_text(json.dumps(holder))
    (tmp_path / "job.json").write_text(text)
    lock = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    assert lock.note and OTHER in lock.note
    lock.release()


# ---- 9: a heartbeat in the future
def test_heartbeat_far_in_the_future_does_not_lock_the_folder_forever(tmp_path):
    future = _when(YEAR)
    record = {"status": "running", "host": OTHER, "pid": 1, "start": _when(-60), "heartbeat": future}
    status, why = joblock.liveness(record)
    assert status == "killed" and "in the future" in why
    holder = {"host": OTHER, "pid": 4242, "action": "train", "start": future, "command": ["segformer", "train"]}
    (tmp_path / joblock.LOCK_FILE).write_text(json.dumps(holder))
    (tmp_path / "job.json").write_text(json.dumps({**holder, "status": "running", "heartbeat": future}))
    lock = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
    assert lock.note and "in the future" in lock.note
    lock.release()


def test_small_clock_skew_still_reads_as_alive():
    record = {"status": "running", "host": OTHER, "pid": 1, "start": _when(-60), "heartbeat": _when(20)}
    assert joblock.liveness(record)[0] == "running"


# ---- 10: a symlinked action folder
def test_symlinked_action_folder_is_refused(tmp_path):
    real = tmp_path / "someone_elses_job"
    real.mkdir()
    (real / "log.txt").write_text("their log\n")
    (tmp_path / "evaluate").symlink_to(real)
    with pytest.raises(UserError) as e:
        prepare_results_dir("evaluate", _cfg(tmp_path))
    message = str(e.value)
    assert "symbolic link" in message and str(real) in message and "evaluate.results_dir" in message, message
    assert sorted(os.listdir(real)) == ["log.txt"] and (real / "log.txt").read_text() == "their log\n"


def test_symlinked_parent_folder_is_fine(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    out = str(tmp_path / "link" / "evaluate")
    assert lock_results_dir("evaluate", out) is not None
    release_results_dir(out)


# ---- 11: children must neither hold the lock nor outlive their parent
HOLDER = """
import os, sys, time
from segformer_tao.joblock import JobLock
lock = JobLock.acquire(sys.argv[1], 'train', ['segformer', 'train'])
pid = os.fork()
if pid == 0:  # the fork handlers have run by now
    os.write(1, b'child ready\\n')  # one write each: the two lines never interleave
    time.sleep(60)
    os._exit(0)
if sys.argv[2] == 'drop':
    os.close(lock.fd)  # the parent lets go of its lock, but stays alive (no parent-death signal)
os.write(1, f'parent {pid}\\n'.encode())
time.sleep(60)
"""


def _holder(tmp_path, mode: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), mode], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    lines = [proc.stdout.readline().split(), proc.stdout.readline().split()]  # both ready, in either order
    assert ["child", "ready"] in lines, lines
    return proc, int(next(line for line in lines if line[0] == "parent")[1])


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_forked_child_does_not_hold_the_lock(tmp_path):
    proc, child = _holder(tmp_path, "drop")
    try:
        fd = os.open(tmp_path / joblock.LOCK_FILE, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child still holds it
        finally:
            os.close(fd)
    finally:
        for pid in (child, proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_forked_child_dies_with_its_parent_and_the_folder_is_free(tmp_path):
    proc, child = _holder(tmp_path, "keep")
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _gone(child, 3), f"child {child} outlived its killed parent"
        lock = joblock.JobLock.acquire(str(tmp_path), "train", ["segformer", "train"])
        assert lock.note and "no longer exists" in lock.note
        lock.release()
    finally:
        if not _gone(child, 0.1):
            os.kill(child, signal.SIGKILL)


def test_started_process_dies_with_the_segformer_process_that_started_it(tmp_path):
    """A DDP rank or AutoML trial started by a segformer process (not forked: a new interpreter)."""
    code = ("import os, subprocess, sys, time; from segformer_tao import lifeline; lifeline.mark_children(); "
            "p = subprocess.Popen([sys.executable, '-c', 'from segformer_tao import lifeline; "
            "lifeline.die_with_parent(); import time; print(1, flush=True); time.sleep(60)'], stdout=sys.stdout); "
            "print(p.pid, flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})
    child = int(proc.stdout.readline())
    assert proc.stdout.readline().strip() == "1"  # the child is running
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        assert _gone(child, 3), f"child {child} outlived its killed parent"
    finally:
        if not _gone(child, 0.1):
            os.kill(child, signal.SIGKILL)


def test_the_cli_wires_its_lifeline():
    """`segformer` started by a segformer process that is already gone stops at once (what a DDP rank does when rank
    0 was killed before the rank got going); started by anything else it runs."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    env = {**os.environ, "PYTHONPATH": REPO}
    orphan = subprocess.run([sys.executable, "-m", "segformer_tao.cli", "--help"], capture_output=True,
                            env={**env, "SEGFORMER_PARENT_PID": str(dead.pid)})
    assert orphan.returncode == -signal.SIGKILL, orphan
    normal = subprocess.run([sys.executable, "-m", "segformer_tao.cli", "--help"], capture_output=True, env=env)
    assert normal.returncode == 0, normal


# ---- 15: SEGFORMER_HEARTBEAT_S
@pytest.mark.parametrize("value", ["0", "abc", "-5", "nan", "inf", "0.01", "1e9"])
def test_bad_heartbeat_interval_is_a_user_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv("SEGFORMER_HEARTBEAT_S", value)
    with pytest.raises(UserError, match=f"SEGFORMER_HEARTBEAT_S='{value}'"):
        joblock.heartbeat_s()
    with pytest.raises(UserError, match="SEGFORMER_HEARTBEAT_S"):  # before any thread starts
        Job.start("evaluate", _cfg(tmp_path), str(tmp_path))
    assert not (tmp_path / "job.json").exists()


@pytest.mark.parametrize("value, seconds", [("", 30.0), ("0.2", 0.2), ("86400", 86400.0), (" 5 ", 5.0)])
def test_good_heartbeat_intervals(monkeypatch, value, seconds):
    monkeypatch.setenv("SEGFORMER_HEARTBEAT_S", value)
    assert joblock.heartbeat_s() == seconds


def test_host_name_is_this_machine():
    assert OTHER != socket.gethostname()
