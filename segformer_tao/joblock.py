"""One writer per job folder, and whether a job recorded as running is still alive.

A job takes an exclusive ``flock`` on ``<results_dir>/.segformer.lock`` before it writes anything there; the file
names the holder (host, pid, process start, start time, command) so that a refused command can say who holds it.
The kernel drops a flock when its process dies, even by SIGKILL, so a lock left by a dead process on this host is
simply taken over (with a note). flock may not reach across hosts (NFS without lockd, some FUSE mounts), so a lock
file naming another host is honoured for as long as that job's heartbeat in job.json is fresh.

filelock's ``FileLock`` is not used: it truncates the lock file on every attempt (the refused command would erase
the holder's name) and knows nothing of hosts or heartbeats.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from segformer_tao import io as sio
from segformer_tao import lifeline
from segformer_tao.errors import UserError

LOCK_FILE = ".segformer.lock"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
STALE_BEATS = 4  # a job silent for this many heartbeat intervals is taken as dead (another host only)
HEARTBEAT_RANGE = (0.1, 7 * 86400)  # seconds: below, job.json is rewritten and fsynced in a busy loop
_OPEN_FDS: set[int] = set()  # lock files this process holds: closed in its forked children


def heartbeat_s() -> float:
    """Seconds between heartbeats in job.json (env SEGFORMER_HEARTBEAT_S, default 30). UserError when the variable
    is not a number of seconds within HEARTBEAT_RANGE."""
    raw = os.environ.get("SEGFORMER_HEARTBEAT_S", "")
    if not raw.strip():
        return 30.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    lo, hi = HEARTBEAT_RANGE
    if not lo <= value <= hi:  # also NaN and inf
        raise UserError(f"SEGFORMER_HEARTBEAT_S='{raw}' is not a usable heartbeat interval: give a number of seconds "
                        f"from {lo:g} to {hi:g} (default 30; jobs on other hosts are taken as dead after "
                        f"{STALE_BEATS} silent intervals), or unset it.")
    return value


def stale_after_s() -> float:
    """A job on another host whose last heartbeat is older than this is reported (and treated) as killed."""
    return STALE_BEATS * heartbeat_s()


def now_str() -> str:
    return time.strftime(TIME_FORMAT)


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of a TIME_FORMAT string (job.json's start/heartbeat), None when unreadable."""
    try:
        return datetime.strptime(str(text), TIME_FORMAT).timestamp()
    except (TypeError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot; Linux), which tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces
    except (OSError, IndexError, ValueError):
        return None


def identity() -> dict[str, Any]:
    """Who this process is: host, pid and its start (kernel ticks) to compare with later."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": process_start(os.getpid())}


def pid_alive(pid: int, proc_start: int | None = None) -> bool:
    """True when process ``pid`` runs on this host (and, when known, is the same process, not a reused pid)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    except (TypeError, ValueError, OverflowError):
        return False
    if proc_start is not None:
        current = process_start(int(pid))
        return current is None or current == proc_start
    return True


def liveness(record: dict[str, Any]) -> tuple[str, str | None]:
    """(status, why) of a job.json record: a ``running`` job whose process is gone (this host) or whose heartbeat
    is older than :func:`stale_after_s` (another host) is ``killed``; other statuses are returned as they are."""
    status = record.get("status")
    if status != "running":
        return status, None
    beat = record.get("heartbeat") or record.get("start")
    if record.get("host") == socket.gethostname():
        if pid_alive(record.get("pid", -1), record.get("proc_start")):
            return "running", None
        return "killed", f"process {record.get('pid')} on {record.get('host')} is gone; last heartbeat {beat}"
    last = parse_time(beat)
    age = None if last is None else time.time() - last
    if fresh(age):
        return "running", None
    silent = "no heartbeat recorded" if age is None else f"no heartbeat for {age:.0f} s" if age >= 0 else (
        f"a heartbeat {-age:.0f} s in the future (clock skew or a planted file)")
    return "killed", f"{silent} from {record.get('host')} (stale after {stale_after_s():.0f} s); last heartbeat {beat}"


def fresh(age: float | None) -> bool:
    """A heartbeat ``age`` seconds old shows a live job: no older than stale_after_s(), and no further in the
    future than that either (clock skew between hosts is tolerated; a date in the future is not a hold forever)."""
    return age is not None and -stale_after_s() <= age <= stale_after_s()


@dataclass
class JobLock:
    """An exclusive hold on one results dir; :meth:`release` (or process exit, however it ends) frees it."""

    path: str
    fd: int
    info: dict[str, Any]
    note: str | None = None  # set when the lock of a dead job was taken over

    @classmethod
    def acquire(cls, directory: str, action: str, command: list[str], job_file: str = "job.json") -> JobLock:
        """Lock ``directory`` (created if missing) for ``action``; UserError naming the holder when it is held, or
        when ``directory`` is a symbolic link (its job files would land in the folder it points at)."""
        if os.path.islink(directory):
            raise UserError(f"Results dir '{directory}' is a symbolic link to '{os.path.realpath(directory)}': this "
                            f"`segformer {action}` would write its log.txt, status.json and job.json into that folder, "
                            "possibly another job's. Give a real folder (results_dir=... or "
                            f"{action}.results_dir=...), e.g. {action}.results_dir={os.path.realpath(directory)} if "
                            "that folder is meant.")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, LOCK_FILE)
        fd, locked = _flock(path, action, directory)
        previous = _read(fd)
        note = None
        if previous is _UNREADABLE:
            note = (f"note: took over the lock of '{directory}': its {LOCK_FILE} was unreadable (not a JSON object "
                    "naming its holder), and no running process holds it.")
            if not locked:
                note = note.replace("no running process holds it", "this filesystem cannot tell whether one does")
        elif previous:
            note = _check_previous(previous, directory, action, job_file, fd, locked)
        info = {**identity(), "action": action, "start": now_str(), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        _OPEN_FDS.add(fd)
        return cls(path, fd, info, note)

    def release(self) -> None:
        """Remove the lock file (only if it is still ours) and drop the lock. Safe to call twice; a no-op in a
        forked child (a data-loader worker), which shares the parent's lock and must not end it."""
        if self.fd < 0 or self.info.get("pid") != os.getpid():
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # unlinked while still locked: a waiter on this inode re-opens the path
        _OPEN_FDS.discard(self.fd)
        os.close(self.fd)
        self.fd = -1


_FORKING_PID = 0


def _before_fork() -> None:
    global _FORKING_PID
    _FORKING_PID = os.getpid()


def _in_forked_child() -> None:
    """A forked child (a data-loader worker) must not keep its parent's results dir locked once the parent is gone,
    nor outlive it: close its copies of the lock files (the flock stays with the parent's descriptor) and ask for
    SIGKILL when the parent dies."""
    if not _OPEN_FDS:
        return
    for fd in _OPEN_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _OPEN_FDS.clear()
    lifeline.set_parent_death_signal(_FORKING_PID)


os.register_at_fork(before=_before_fork, after_in_child=_in_forked_child)


def _flock(path: str, action: str, directory: str) -> tuple[int, bool]:
    """Open ``path`` and flock it; retried when the file was replaced between open and lock. Returns (fd, locked):
    locked is False on a filesystem without flock (the holder record alone then decides, see _check_previous)."""
    for _ in range(10):
        try:  # never through a link planted at the lock's name: the lock file is rewritten in place
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, sio.FILE_MODE)
        except OSError as e:
            refused = sio.symlink_error(path, e)
            if refused is not None:
                raise refused from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_path(path)
            os.close(fd)
            raise UserError(busy_message(directory, action, holder)) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            return fd, False
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, True
        os.close(fd)  # the holder released (and unlinked) it after we opened: lock the new file instead
    raise UserError(f"Could not lock results dir '{directory}': its lock file {LOCK_FILE} keeps changing. Another "
                    "job is starting there; wait for it, or use another results_dir.")


def _check_previous(previous: dict, directory: str, action: str, job_file: str, fd: int, locked: bool) -> str:
    """The lock file still names an earlier holder. Same host: it is dead (we got its flock; without flock, its
    pid is checked). Another host: it may still run where our flock cannot see it, so refuse while its heartbeat
    is fresh."""
    host, pid = previous.get("host"), previous.get("pid")
    if host == socket.gethostname():
        if not locked and pid_alive(pid or -1, previous.get("proc_start")):
            os.close(fd)
            raise UserError(busy_message(directory, action, previous))
        return (f"note: took over the lock of a previous {previous.get('action', 'job')} in '{directory}' (pid "
                f"{pid}, started {previous.get('start')}): that process no longer exists.")
    beat = previous.get("start")
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(directory, job_file), encoding="utf-8") as f:
            job = json.load(f)
        if isinstance(job, dict) and job.get("host") == host and job.get("pid") == pid:
            beat = job.get("heartbeat") or job.get("start") or beat
    last = parse_time(beat)
    age = None if last is None else time.time() - last
    if fresh(age):
        os.close(fd)
        raise UserError(busy_message(directory, action, previous, heartbeat=beat))
    why = f"is older than {stale_after_s():.0f} s" if age is None or age >= 0 else (
        f"is {-age:.0f} s in the future (clock skew or a planted file), which proves nothing")
    return (f"note: took over the lock of a {previous.get('action', 'job')} on host {host} (pid {pid}, started "
            f"{previous.get('start')}) in '{directory}': its last heartbeat ({beat}) {why}.")


def busy_message(directory: str, action: str, holder: dict | None, heartbeat: str | None = None) -> str:
    """The refusal: who holds the folder and what to do."""
    holder = holder or {}
    job, host, pid, since = (holder.get(k, "?") for k in ("action", "host", "pid", "start"))
    beat = f", last heartbeat {heartbeat}" if heartbeat else ""
    command = " ".join(["segformer", *(holder.get("command") or [])[1:]]) if holder.get("command") else "?"
    return (f"Results dir '{directory}' is in use by a running {job} (host {host}, pid {pid}, since {since}{beat}; "
            f"its command: {command}). Only one job may write into a results dir at a time, so this `segformer "
            f"{action}` wrote nothing. Wait for that job to finish (see `segformer jobs show {directory}`), or give "
            f"this one another results_dir (results_dir=... or {action}.results_dir=...).")


_UNREADABLE = object()


def _read(fd: int) -> dict | object | None:
    """The lock file's holder record; None when empty; _UNREADABLE when it holds anything but a JSON object."""
    try:
        data = os.pread(fd, 64 * 1024, 0)
    except OSError:
        return _UNREADABLE
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return _UNREADABLE
    return record if isinstance(record, dict) else _UNREADABLE


def _read_path(path: str) -> dict | None:
    """The holder's record; a holder that has just locked may not have written it yet, so look a few times."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.strip():
                record = json.loads(text)
                return record if isinstance(record, dict) else None
        time.sleep(0.05)
    return None
