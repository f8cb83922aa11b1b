"""Jobs: results-dir layout, job.json, parent-job artifact resolution, resume discovery, `segformer jobs`.

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

log = logging.getLogger("segformer_tao")
JOB_FILE = "job.json"
LATEST_CHECKPOINT = "segformer_model_latest.pth"
MONITORED_METRIC = "val_miou"
HISTORY_KEPT = 20  # earlier attempts remembered in job.json
_HELD: dict[str, joblock.JobLock] = {}  # results dirs this process holds the lock of
# What each action takes from a parent job (TAO's parent_model mapping), as (key, artifact kind).
PARENT_KEYS = {
    "evaluate": {"checkpoint": "evaluate.checkpoint", "onnx": "evaluate.onnx_file", "engine": "evaluate.trt_engine"},
    "inference": {"checkpoint": "inference.checkpoint", "onnx": "inference.onnx_file",
                  "engine": "inference.trt_engine"},
    "export": {"checkpoint": "export.checkpoint"},
    "quantize": {"checkpoint": "quantize.model_path", "onnx": "quantize.model_path"},
    "gen_trt_engine": {"onnx": "gen_trt_engine.onnx_file"},
    "train": {},
}
# Which artifact a parent of a given action offers first.
PARENT_PREFERENCE = {"train": "checkpoint", "automl": "checkpoint", "export": "onnx", "quantize": "onnx",
                     "gen_trt_engine": "engine"}


def is_primary() -> bool:
    """False in the extra processes of a multi-process (DDP) run: only global rank 0 writes job files."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


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
            _HELD[out] = joblock.JobLock.acquire(out, action, _redacted_argv(), JOB_FILE)
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


class _RedactSecrets(logging.Filter):
    """Every log line through :func:`redact.redact` (registered secrets, cloud credentials, URL passwords)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


class _LogFileHandler(logging.FileHandler):
    """A FileHandler that opens log.txt through :func:`segformer_tao.io.open_append` (no symlinks, FILE_MODE)."""

    def _open(self):
        return sio.open_append(self.baseFilename, encoding=self.encoding, errors=self.errors)


def install_redaction(handlers: list[logging.Handler] | None = None) -> None:
    """Add the redacting filter to the root logger's handlers (once each)."""
    for h in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, _RedactSecrets) for f in h.filters):
            h.addFilter(_RedactSecrets())


def setup_logging(out_dir: str, secrets: list[str] | None = None) -> None:
    """Log to stdout and <out_dir>/log.txt; known secrets are replaced by *** in both."""
    redact.register(*(secrets or []))
    root = logging.getLogger()
    handler = _LogFileHandler(os.path.join(out_dir, "log.txt"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    install_redaction()


def redact_in_logs(secrets: list[str]) -> None:
    """Replace these secrets by *** in every log line and message from now on (e.g. a storage URL's password)."""
    redact.register(*secrets)
    install_redaction()


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
                    "Runtime, OpenVINO, TensorRT and DeepStream must read them as they are, so protect them with file "
                    "permissions (temporary copies under $TMPDIR were deleted when this step ended).",
                    ", ".join(plain))


def _redacted_argv() -> list[str]:
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
        started = joblock.now_str()
        record = {
            "action": action, "status": "running", "start": started, "end": None, "duration_s": None,
            "parent": cfg.parent_job or None, "results_dir": out_dir, "command": _redacted_argv(),
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
        job._mutex = threading.Lock()
        job._stop = threading.Event()
        job.write()
        if is_primary():
            job._beat = threading.Thread(target=job._heartbeat, name="segformer-heartbeat", daemon=True)
            job._beat.start()
        return job

    def _heartbeat(self) -> None:
        while not self._stop.wait(joblock.heartbeat_s()):
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
    path = os.path.join(directory, JOB_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------ parent jobs
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


def find_resume_checkpoint(directory: str) -> str | None:
    """The checkpoint a train run in ``directory`` resumes from (`resume_model`), or None."""
    return find_checkpoints(directory).get("latest") if os.path.isdir(directory) else None


def resolve_parent(action: str, parent_dir: str) -> tuple[str, str, str]:
    """Pick the artifact an action needs from a parent job's results dir.

    Returns (config key, path, reason). Raises UserError when the parent holds nothing usable.
    """
    if not os.path.isdir(parent_dir):
        raise UserError(f"parent_job '{parent_dir}' is not a directory. Give the results dir of a finished "
                        "train, export, quantize or gen_trt_engine job.")
    wanted = PARENT_KEYS[action]
    job = read_job(parent_dir) or {}
    best_model = os.path.join(parent_dir, "best_model")
    if os.path.isdir(best_model):  # an AutoML run: its best trial is the parent
        parent_dir, job = best_model, {"action": "automl"}
    parent_action = job.get("action")
    candidates: list[tuple[str, str, str]] = []
    recorded_files = [a["path"] for a in job.get("artifacts", {}).values() if isinstance(a, dict) and a.get("path")]
    # A quantize job's folder also holds its FP32 ONNX: only the files it recorded as artifacts are its output.
    int8_pth = [p for p in recorded_files if p.endswith(".pth")]
    ckpts = ({"quantized": int8_pth[-1]} if int8_pth else {}) if parent_action == "quantize" else \
        find_checkpoints(parent_dir)
    if "quantized" in ckpts and "checkpoint" in wanted:
        candidates.append(("checkpoint", ckpts["quantized"], "INT8 checkpoint of the quantize job (torchao)"))
    if "checkpoint" in wanted:
        if "best" in ckpts:
            candidates.append(("checkpoint", ckpts["best"], f"best-by-{MONITORED_METRIC} checkpoint"))
        if "latest" in ckpts:
            candidates.append(("checkpoint", ckpts["latest"], "latest checkpoint (no best-by-val_miou one)"))
    # evaluate/inference also run OpenVINO IRs (.xml) through their onnx_file key (quantize.backend=nncf writes one).
    onnx_exts = (".onnx", ".xml") if action in ("evaluate", "inference") else (".onnx",)
    for kind, exts in (("onnx", onnx_exts), ("engine", (".engine",))):
        if kind in wanted:
            files = sorted((f for ext in exts for f in glob.glob(os.path.join(parent_dir, "*" + ext))),
                           key=os.path.getmtime)
            # A quantize job also holds intermediate ONNX files; prefer the one it recorded as its artifact.
            recorded = [p for p in recorded_files if p.endswith(exts)]
            for path in (recorded or ([] if parent_action == "quantize" else files[-1:])):
                candidates.append((kind, path, f"{kind} file of the {parent_action or 'parent'} job"))
    if not candidates and parent_action == "quantize" and "quantized" in ckpts:
        raise UserError(f"parent_job '{parent_dir}' is a torchao quantize job: its output is a PyTorch INT8 "
                        f"checkpoint ({ckpts['quantized']}), and `segformer {action}` needs an ONNX. Run `segformer "
                        f"export parent_job={parent_dir}` first and use that export job, or quantize with "
                        "quantize.backend=onnxruntime, modelopt.onnx or modelopt.pytorch for a Q/DQ ONNX that "
                        "TensorRT builds in INT8.")
    if not candidates:
        looked = ", ".join(wanted) or "nothing: train takes no parent"
        raise UserError(f"parent_job '{parent_dir}' holds no artifact `segformer {action}` can use (looked for "
                        f"{looked}). Point parent_job at the results dir of a finished train/export/quantize job, "
                        "or set the model key explicitly.")
    preferred = PARENT_PREFERENCE.get(parent_action or "", "checkpoint")
    candidates.sort(key=lambda c: c[0] != preferred)
    kind, path, reason = candidates[0]
    return wanted[kind], path, reason


def apply_parent_job(action: str, cfg: DictConfig, command_line_keys: set[str] | frozenset[str] = frozenset()
                     ) -> None:
    """Fill the model key of ``action`` from cfg.parent_job unless the user set one explicitly.

    A key given on the command line (``command_line_keys``) always wins. A key that comes from the spec file and
    names a local file that does not exist (TAO's tutorial specs hard-code ``/results/.../model.pth``) yields to
    parent_job, with a note naming both.
    """
    if not cfg.parent_job or action == "train":
        return
    keys = sorted(set(PARENT_KEYS[action].values()))
    explicit = [k for k in keys if OmegaConf.select(cfg, k) not in (None, "")]
    stale = [k for k in explicit if k not in command_line_keys and _missing_local_file(OmegaConf.select(cfg, k))]
    if explicit and len(stale) < len(explicit):
        log.info("parent_job ignored for %s: %s is set explicitly", action,
                 next(k for k in explicit if k not in stale))
        return
    key, path, reason = resolve_parent(action, str(cfg.parent_job))
    for k in stale:
        log.info("note: %s='%s' from the spec file does not exist; using parent_job '%s' instead: %s = %s",
                 k, OmegaConf.select(cfg, k), cfg.parent_job, key, path)
        OmegaConf.update(cfg, k, None)
    OmegaConf.update(cfg, key, path)
    log.info("parent_job: %s = %s (%s)", key, path, reason)


def _missing_local_file(path: object) -> bool:
    return isinstance(path, str) and not sio.is_remote(path) and not os.path.exists(path)


# --------------------------------------------------------------------------------------------- CLI tool
def _job_rows(root: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "**", JOB_FILE), recursive=True)):
        job = read_job(os.path.dirname(path))
        if job:
            metrics = job.get("metrics") or {}
            metric = metrics.get(MONITORED_METRIC, metrics.get("mIoU"))
            status, _ = joblock.liveness(job)
            rows.append({"dir": os.path.dirname(path), "action": job.get("action"), "status": status,
                         "parent": job.get("parent") or "-", "metric": metric, "start": job.get("start"),
                         "heartbeat": job.get("heartbeat") or "-"})
    return rows


def show_job(directory: str) -> dict[str, Any] | None:
    """job.json of ``directory`` as `jobs show` prints it: a running job that died says ``killed`` and why."""
    job = read_job(directory)
    if job is not None:
        status, why = joblock.liveness(job)
        if why:
            job.update(status=status, killed=why)
    return job


def main(argv: list[str]) -> int:
    """`segformer jobs list [DIR]` and `segformer jobs show DIR`."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("list", "show"):
        print("usage: segformer jobs list [DIR]   (table of jobs under DIR, default ./results)\n"
              "       segformer jobs show DIR     (the job.json of one results dir)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "show":
        job = show_job(argv[1]) if len(argv) > 1 else None
        if job is None:
            raise UserError(f"No job.json in '{argv[1] if len(argv) > 1 else ''}'. Usage: segformer jobs show DIR "
                            "with DIR the results dir of a job.")
        print(json.dumps(job, indent=2))
        return 0
    root = argv[1] if len(argv) > 1 else "results"
    if not sio.is_remote(root) and not os.path.isdir(root):
        raise UserError(f"'{root}' is not a folder. Usage: segformer jobs list [DIR] with DIR a results dir or a "
                        "folder of them (default ./results).")
    rows = _job_rows(root)
    if not rows:
        print(f"no jobs under {root}")
        return 0
    print(f"{'action':<15} {'status':<8} {'val_miou':>8}  {'start':<25} {'last heartbeat':<25} {'dir':<40} parent")
    for r in rows:
        metric = f"{r['metric']:.4f}" if isinstance(r["metric"], (int, float)) else "-"
        print(f"{r['action'] or '?':<15} {r['status'] or '?':<8} {metric:>8}  {r['start'] or '':<25} "
              f"{r['heartbeat']:<25} {r['dir']:<40} {r['parent']}")
    return 0
