"""Jobs: results-dir layout and lock, job.json, the checkpoints a results dir holds.

Parent-job resolution is in :mod:`segformer_tao.parent`, log setup in :mod:`segformer_tao.logs`, rank detection in
:mod:`segformer_tao.ranks`, the `segformer jobs` tool in :mod:`segformer_tao.commands.jobs`.

A job is one action run in one results dir. ``job.json`` records what ran, its status, parent, artifacts
(with sizes and sha256) and its metrics summary; it is rewritten atomically at start, at every heartbeat and at
the end (also on failure). The results dir is locked from prepare_results_dir to Job.finish (see joblock.py).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segformer_tao import __version__, joblock, redact
from segformer_tao import io as sio
from segformer_tao.errors import UserError
from segformer_tao.ranks import is_primary

log = logging.getLogger("segformer_tao")
JOB_FILE = "job.json"
LATEST_CHECKPOINT = "segformer_model_latest.pth"
BEST_CHECKPOINT = "segformer_model_best.pth"
MONITORED_METRIC = "val_miou"
HISTORY_KEPT = 20  # earlier attempts remembered in job.json
_HELD: dict[str, joblock.JobLock] = {}  # results dirs this process holds the lock of
_RUNNING: list[Job] = []  # jobs of this process between Job.start and Job.finish


def action_results_dir(action: str, cfg: DictConfig) -> str:
    """``<action>.results_dir`` if set, else ``<results_dir or ./results>/<action>``."""
    own = OmegaConf.select(cfg, f"{action}.results_dir")
    if own:
        return str(own)
    return os.path.join(cfg.results_dir or "results", action)


def lock_results_dir(action: str, out: str) -> joblock.JobLock | None:
    """Take the one-writer lock on results dir ``out`` (rank 0 only: the other processes of a DDP run write no job
    files). Re-entrant within a process; released by :meth:`Job.finish` or at exit. UserError naming the running
    job when another process holds it."""
    if not is_primary() or sio.is_remote(out):
        return None
    if out not in _HELD:
        try:
            _HELD[out] = joblock.JobLock.acquire(out, action, redacted_argv(), JOB_FILE)
        except (PermissionError, NotADirectoryError, FileExistsError) as e:
            raise UserError(f"Results dir '{out}' cannot be created or locked ({e.strerror}). Set results_dir (or "
                            f"{action}.results_dir) to a writable directory.") from e
    return _HELD[out]


def release_results_dir(out: str) -> None:
    lock = _HELD.pop(out, None)
    if lock is not None:
        lock.release()


@atexit.register
def _release_all() -> None:  # a job that failed before Job.start (or never called finish) frees its folder too
    for out in list(_HELD):
        release_results_dir(out)


def prepare_results_dir(action: str, cfg: DictConfig) -> str:
    """Lock the action's results dir (one writer per folder, before anything is written there), create it, store
    it in cfg[action].results_dir, write experiment.yaml."""
    from segformer_tao.config import to_yaml_without_secrets

    out = os.path.abspath(action_results_dir(action, cfg))
    lock_results_dir(action, out)
    sio.makedirs(out)
    if not os.access(out, os.W_OK):
        raise UserError(f"Results dir '{out}' is not writable. Set results_dir (or {action}.results_dir) to a "
                        "writable directory.")
    OmegaConf.update(cfg, f"{action}.results_dir", out)
    if is_primary():
        sio.write_text(os.path.join(out, "experiment.yaml"), to_yaml_without_secrets(cfg))
    return out


def record_model(cfg: DictConfig, facts: dict[str, Any]) -> None:
    """Record the model facts an action decided to run with (value and source of each, see
    :func:`segformer_tao.model.meta.decide`) in the running job's job.json (``model``), and rewrite its
    experiment.yaml from ``cfg``, which now holds them: a job records what it used."""
    from segformer_tao.config import to_yaml_without_secrets

    if not is_primary():
        return
    for job in _RUNNING:
        job.record["model"] = facts
        job.write()
        sio.write_text(os.path.join(job.record["results_dir"], "experiment.yaml"), to_yaml_without_secrets(cfg))


def file_digest(path: str) -> dict[str, Any]:
    """Size and sha256 of a local file (what job.json records per artifact)."""
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": sio.sha256(path)}


# Artifacts that hold weights, by extension (an OpenVINO IR's weights are its .bin).
WEIGHT_FILES = (".pth", ".pt", ".ckpt", ".safetensors", ".onnx", ".engine", ".trt", ".plan", ".bin")


def unencrypted_weights(artifacts: dict[str, Any]) -> list[str]:
    """The local artifact files that hold weights and are not encrypted."""
    from segformer_tao.crypto import is_encrypted

    found = []
    for path in artifacts.values():
        if isinstance(path, str) and path.lower().endswith(WEIGHT_FILES) and os.path.isfile(path):
            with open(path, "rb") as f:
                if not is_encrypted(f.read(32)):
                    found.append(path)
    return found


def note_unencrypted(cfg: DictConfig, artifacts: dict[str, Any]) -> None:
    """With encryption_key set, say in one line which written files hold weights but are not encrypted, and why."""
    plain = unencrypted_weights(artifacts) if cfg.get("encryption_key") and is_primary() else []
    if plain:
        log.warning("note: encryption_key is set, but these files hold weights and are NOT encrypted: %s. ONNX "
                    "Runtime, OpenVINO, TensorRT, DeepStream and Hugging Face transformers must read them as they "
                    "are, so protect them with file permissions (temporary copies under $TMPDIR were deleted when "
                    "this step ended).",
                    ", ".join(plain))


def redacted_argv() -> list[str]:
    # encryption_key=..., and every other secret (automl.storage=postgresql://u:pw@h/db)
    return [redact.redact(re.sub(r"(encryption_key=).*", r"\1***", a)) for a in sys.argv]


@dataclass
class Job:
    """The job.json of one action run, with a heartbeat refreshed while it runs (see :mod:`joblock`)."""

    path: str
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, action: str, cfg: DictConfig, out_dir: str) -> Job:
        """Write job.json as ``running`` and start its heartbeat. An earlier attempt in the folder is kept in
        ``history`` (one still marked running died: this process holds the folder's lock (prepare_results_dir),
        so it is recorded killed)."""
        interval = joblock.heartbeat_s()  # a bad SEGFORMER_HEARTBEAT_S is refused here, not in the thread
        started = joblock.now_str()
        record = {
            "action": action, "status": "running", "start": started, "end": None, "duration_s": None,
            "parent": cfg.parent_job or None, "results_dir": out_dir, "command": redacted_argv(),
            **joblock.identity(), "heartbeat": started, "segformer_tao_version": __version__, "artifacts": {},
            "metrics": {}, "error": None, "encrypted": bool(cfg.encryption_key),
        }
        previous = read_job(out_dir) if is_primary() else None
        if previous:
            record["history"] = (previous.get("history") or [])[-(HISTORY_KEPT - 1):] + [_attempt(previous)]
        lock = _HELD.get(os.path.abspath(out_dir))
        if lock is not None and lock.note:  # logged here, where log.txt already receives it
            log.warning("%s", lock.note)
            lock.note = None
        job = cls(os.path.join(out_dir, JOB_FILE), record)
        job._t0 = time.time()
        job._interval = interval
        job._mutex = threading.Lock()
        job._stop = threading.Event()
        job.write()
        _RUNNING.append(job)
        if is_primary():
            job._beat = threading.Thread(target=job._heartbeat, name="segformer-heartbeat", daemon=True)
            job._beat.start()
        return job

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._interval):
            with self._mutex:
                if self._stop.is_set():
                    return
                self.record["heartbeat"] = joblock.now_str()
                try:
                    sio.write_json(self.path, self.record)
                except OSError as e:  # a full disk must not kill the run from this thread; the job reports it
                    log.warning("could not refresh the heartbeat in %s: %s", self.path, e)

    def write(self) -> None:
        if is_primary():
            with getattr(self, "_mutex", contextlib.nullcontext()):
                sio.write_json(self.path, self.record)

    def finish(self, status: str, *, metrics: dict | None = None, artifacts: dict | None = None,
               error: str | None = None) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
            if getattr(self, "_beat", None) is not None:
                self._beat.join(timeout=10)
        now = joblock.now_str()
        self.record.update(status=status, end=now, heartbeat=now, error=redact.redact(error) if error else error,
                           duration_s=round(time.time() - getattr(self, "_t0", time.time()), 2))
        if metrics:
            self.record["metrics"] = metrics
        for name, path in (artifacts or {}).items():
            if isinstance(path, str) and os.path.isfile(path):
                self.record["artifacts"][name] = file_digest(path)
        self.write()
        _RUNNING[:] = [job for job in _RUNNING if job is not self]
        release_results_dir(os.path.abspath(self.record["results_dir"]))  # the job is over: the folder is free


def _attempt(previous: dict[str, Any]) -> dict[str, Any]:
    """What job.json keeps of an earlier attempt. Its end, when it died while running, is its last heartbeat."""
    status, why = joblock.liveness(previous)
    if status == "running":  # we hold the lock, so whatever it says, that process no longer writes here
        status, why = "killed", f"superseded; last heartbeat {previous.get('heartbeat') or previous.get('start')}"
    end = previous.get("heartbeat") or previous.get("start") if status == "killed" else previous.get("end")
    keep = ("action", "start", "host", "pid", "command", "error", "duration_s")
    return {**{k: previous.get(k) for k in keep}, "status": status, "end": end,
            **({"killed": why} if why else {})}


def read_job(directory: str) -> dict[str, Any] | None:
    """The job.json of ``directory``; None when it is missing or unreadable (not a JSON object: damaged, or not
    written by segformer_tao)."""
    path = os.path.join(directory, JOB_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


# ------------------------------------------------------------------------------------- checkpoints in a folder
def _epoch_step(path: str) -> tuple[int, int]:
    m = re.search(r"epoch_(\d+)_step_(\d+)", os.path.basename(path))
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def find_checkpoints(directory: str) -> dict[str, str]:
    """Checkpoints in a results dir: 'best' (by val_miou), 'latest', sorted 'periodic' not included."""
    found: dict[str, str] = {}
    best = sorted(glob.glob(os.path.join(directory, "**", "*best*.pth"), recursive=True), key=os.path.getmtime)
    if best:
        found["best"] = best[-1]
    latest = os.path.join(directory, LATEST_CHECKPOINT)
    periodic = sorted(glob.glob(os.path.join(directory, "model_epoch_*_step_*.pth")), key=_epoch_step)
    if os.path.isfile(latest):
        found["latest"] = latest
    elif periodic:
        found["latest"] = periodic[-1]
    return found


