"""Jobs: results-dir layout, job.json, parent-job artifact resolution, resume discovery, `segformer jobs`.

A job is one action run in one results dir. ``job.json`` records what ran, its status, parent, artifacts
(with sizes and sha256) and its metrics summary; it is rewritten atomically at start and end (also on failure).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segformer_tao import __version__
from segformer_tao import io as sio
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")
JOB_FILE = "job.json"
LATEST_CHECKPOINT = "segformer_model_latest.pth"
MONITORED_METRIC = "val_miou"
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


def prepare_results_dir(action: str, cfg: DictConfig) -> str:
    """Create the action's results dir, store it in cfg[action].results_dir, write experiment.yaml."""
    from segformer_tao.config import to_yaml_without_secrets

    out = os.path.abspath(action_results_dir(action, cfg))
    sio.makedirs(out)
    if not os.access(out, os.W_OK):
        raise UserError(f"Results dir '{out}' is not writable. Set results_dir (or {action}.results_dir) to a "
                        "writable directory.")
    OmegaConf.update(cfg, f"{action}.results_dir", out)
    if is_primary():
        sio.write_text(os.path.join(out, "experiment.yaml"), to_yaml_without_secrets(cfg))
    return out


class _RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            for s in self.secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, ()
        return True


def setup_logging(out_dir: str, secrets: list[str] | None = None) -> None:
    """Log to stdout and <out_dir>/log.txt; known secrets are replaced by *** in both."""
    root = logging.getLogger()
    handler = logging.FileHandler(os.path.join(out_dir, "log.txt"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    redact = _RedactSecrets(list(secrets or []) + _env_secrets())
    for h in root.handlers:
        h.addFilter(redact)


def redact_in_logs(secrets: list[str]) -> None:
    """Replace these secrets by *** in every log line from now on (e.g. a storage URL's password)."""
    secrets = [s for s in secrets if s]
    if secrets:
        for h in logging.getLogger().handlers:
            h.addFilter(_RedactSecrets(secrets))


def _env_secrets() -> list[str]:
    names = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY")
    return [os.environ[n] for n in names if os.environ.get(n)]


def file_digest(path: str) -> dict[str, Any]:
    """Size and sha256 of a local file (what job.json records per artifact)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def _redacted_argv() -> list[str]:
    # encryption_key=..., and the password of any URL with credentials (automl.storage=postgresql://u:pw@h/db)
    from segformer_tao.config.compose import mask_url_passwords

    return [mask_url_passwords(re.sub(r"(encryption_key=).*", r"\1***", a)) for a in sys.argv]


@dataclass
class Job:
    """The job.json of one action run."""

    path: str
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, action: str, cfg: DictConfig, out_dir: str) -> Job:
        record = {
            "action": action, "status": "running", "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "end": None, "duration_s": None, "parent": cfg.parent_job or None, "results_dir": out_dir,
            "command": _redacted_argv(), "host": socket.gethostname(), "pid": os.getpid(),
            "segformer_tao_version": __version__, "artifacts": {}, "metrics": {}, "error": None,
            "encrypted": bool(cfg.encryption_key),
        }
        job = cls(os.path.join(out_dir, JOB_FILE), record)
        job._t0 = time.time()
        job.write()
        return job

    def write(self) -> None:
        if is_primary():
            sio.write_json(self.path, self.record)

    def finish(self, status: str, *, metrics: dict | None = None, artifacts: dict | None = None,
               error: str | None = None) -> None:
        self.record.update(status=status, end=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           duration_s=round(time.time() - getattr(self, "_t0", time.time()), 2), error=error)
        if metrics:
            self.record["metrics"] = metrics
        for name, path in (artifacts or {}).items():
            if isinstance(path, str) and os.path.isfile(path):
                self.record["artifacts"][name] = file_digest(path)
        self.write()


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
    ckpts = find_checkpoints(parent_dir)
    if "checkpoint" in wanted:
        if "best" in ckpts:
            candidates.append(("checkpoint", ckpts["best"], f"best-by-{MONITORED_METRIC} checkpoint"))
        if "latest" in ckpts:
            candidates.append(("checkpoint", ckpts["latest"], "latest checkpoint (no best-by-val_miou one)"))
    for kind, pattern in (("onnx", "*.onnx"), ("engine", "*.engine")):
        if kind in wanted:
            files = sorted(glob.glob(os.path.join(parent_dir, pattern)), key=os.path.getmtime)
            # A quantize job also holds intermediate ONNX files; prefer the one it recorded as its artifact.
            recorded = [a["path"] for a in job.get("artifacts", {}).values() if a.get("path", "").endswith(pattern[1:])]
            for path in (recorded or files[-1:]):
                candidates.append((kind, path, f"{kind} file of the {parent_action or 'parent'} job"))
    if not candidates:
        looked = ", ".join(wanted) or "nothing: train takes no parent"
        raise UserError(f"parent_job '{parent_dir}' holds no artifact `segformer {action}` can use (looked for "
                        f"{looked}). Point parent_job at the results dir of a finished train/export/quantize job, "
                        "or set the model key explicitly.")
    preferred = PARENT_PREFERENCE.get(parent_action or "", "checkpoint")
    candidates.sort(key=lambda c: c[0] != preferred)
    kind, path, reason = candidates[0]
    return wanted[kind], path, reason


def apply_parent_job(action: str, cfg: DictConfig) -> None:
    """Fill the model key of ``action`` from cfg.parent_job unless the user set one explicitly."""
    if not cfg.parent_job or action == "train":
        return
    keys = set(PARENT_KEYS[action].values())
    explicit = [k for k in keys if OmegaConf.select(cfg, k) not in (None, "")]
    if explicit:
        log.info("parent_job ignored for %s: %s is set explicitly", action, explicit[0])
        return
    key, path, reason = resolve_parent(action, str(cfg.parent_job))
    OmegaConf.update(cfg, key, path)
    log.info("parent_job: %s = %s (%s)", key, path, reason)


# --------------------------------------------------------------------------------------------- CLI tool
def _job_rows(root: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "**", JOB_FILE), recursive=True)):
        job = read_job(os.path.dirname(path))
        if job:
            metrics = job.get("metrics") or {}
            metric = metrics.get(MONITORED_METRIC, metrics.get("mIoU"))
            rows.append({"dir": os.path.dirname(path), "action": job.get("action"), "status": job.get("status"),
                         "parent": job.get("parent") or "-", "metric": metric, "start": job.get("start")})
    return rows


def main(argv: list[str]) -> int:
    """`segformer jobs list [DIR]` and `segformer jobs show DIR`."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("list", "show"):
        print("usage: segformer jobs list [DIR]   (table of jobs under DIR, default ./results)\n"
              "       segformer jobs show DIR     (the job.json of one results dir)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "show":
        if len(argv) < 2 or read_job(argv[1]) is None:
            raise UserError(f"No job.json in '{argv[1] if len(argv) > 1 else ''}'. Usage: segformer jobs show DIR "
                            "with DIR the results dir of a job.")
        print(json.dumps(read_job(argv[1]), indent=2))
        return 0
    root = argv[1] if len(argv) > 1 else "results"
    if not sio.is_remote(root) and not os.path.isdir(root):
        raise UserError(f"'{root}' is not a folder. Usage: segformer jobs list [DIR] with DIR a results dir or a "
                        "folder of them (default ./results).")
    rows = _job_rows(root)
    if not rows:
        print(f"no jobs under {root}")
        return 0
    print(f"{'action':<15} {'status':<8} {'val_miou':>8}  {'start':<25} {'dir':<40} parent")
    for r in rows:
        metric = f"{r['metric']:.4f}" if isinstance(r["metric"], (int, float)) else "-"
        print(f"{r['action'] or '?':<15} {r['status'] or '?':<8} {metric:>8}  {r['start'] or '':<25} "
              f"{r['dir']:<40} {r['parent']}")
    return 0
