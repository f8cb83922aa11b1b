"""Processes a job starts die with it (Linux: the parent-death signal, ``prctl(PR_SET_PDEATHSIG)``).

A ``kill -9`` of a job would otherwise leave its data-loader workers (forked) and its DDP ranks (new interpreters
that Lightning starts from ``sys.argv``) running: they keep training or waiting on a dead peer, and a forked worker
would keep the results-dir lock (see :mod:`segformer_tao.joblock`, which closes it in forked children and calls
:func:`set_parent_death_signal` there). A process started by a segformer process finds its parent's pid in
:data:`CHILD_ENV` (:func:`mark_children`) and asks for the signal at start-up (:func:`die_with_parent`). AutoML trial
children get it through ``preexec_fn`` (automl/workers.py). Elsewhere than Linux this is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

CHILD_ENV = "SEGFORMER_PARENT_PID"
_PR_SET_PDEATHSIG = 1

try:  # resolved at import: a forked child must not load libraries (another thread may hold the loader's lock)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None


def set_parent_death_signal(parent_pid: int) -> bool:
    """Ask the kernel for SIGKILL when the parent dies; if ``parent_pid`` is already gone (we were re-parented
    between start and now), die at once. Returns False where the platform has no parent-death signal."""
    if _PRCTL is None or _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def mark_children() -> None:
    """Processes started from now on (DDP ranks re-run from sys.argv) know this process as their parent job."""
    os.environ[CHILD_ENV] = str(os.getpid())


def die_with_parent() -> None:
    """At start-up of a process a segformer process started: die with that process. A process started through an
    intermediate (a shell, torchrun, srun) is left to that intermediate, which owns its life."""
    value = os.environ.get(CHILD_ENV, "")
    if not value.isdigit() or int(value) == os.getpid():
        return
    parent = int(value)
    if os.getppid() == parent:
        set_parent_death_signal(parent)
        return
    try:
        os.kill(parent, 0)
    except ProcessLookupError:  # the parent died before we got here: nothing is left to serve
        os.kill(os.getpid(), signal.SIGKILL)
    except PermissionError:
        pass
