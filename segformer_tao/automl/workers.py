"""Trials as child processes: ``automl.parallel_trials`` slots, each with its own GPUs or CPU threads.

A slot runs one trial at a time as ``segformer train -e trials/<n>/trial_spec.yaml`` (a plain train job:
``automl_policy=off``) with its own log (``trials/<n>/train.log``). On a GPU machine a slot owns
``train.num_gpus`` devices through ``CUDA_VISIBLE_DEVICES`` (DDP inside the child when more than one); on a CPU
machine it owns ``cores // parallel_trials`` torch threads. The child reports val_miou to the study through the
storage named by the ``SEGFORMER_AUTOML_TRIAL`` environment variable (never a file), so pruning works as in
process.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig

from segformer_tao.automl.pruning import PRUNED_ATTR
from segformer_tao.config import encryption_key as ek
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")
TRIAL_ENV = "SEGFORMER_AUTOML_TRIAL"
TRIAL_SPEC, TRIAL_LOG = "trial_spec.yaml", "train.log"


@dataclass(frozen=True)
class Slot:
    """Where one trial at a time runs: ``gpus`` (physical ids for CUDA_VISIBLE_DEVICES) or ``threads`` on CPU."""

    index: int
    gpus: tuple[int, ...] = ()
    threads: int | None = None

    def describe(self) -> str:
        return f"gpu {','.join(map(str, self.gpus))}" if self.gpus else f"cpu x{self.threads} threads"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_slots(cfg: DictConfig) -> list[Slot] | None:
    """The slots for this search, or None to train each trial in this process (1 slot, 1 device)."""
    parallel, per_trial = int(cfg.automl.parallel_trials), max(1, int(cfg.train.num_gpus))
    if int(cfg.train.num_nodes) > 1:
        raise UserError(f"train.num_nodes={cfg.train.num_nodes}: AutoML trials train on one node each. Set "
                        "train.num_nodes=1 and start the same command on every node with a shared automl.storage "
                        "(see scripts/automl_multi_host.sh) to use several machines.")
    if parallel == 1 and per_trial == 1:
        return None
    import torch

    if not torch.cuda.is_available():
        threads = max(1, _cpu_count() // parallel)
        return [Slot(i, threads=threads) for i in range(parallel)]
    ids = [int(g) for g in cfg.train.gpu_ids or []]
    need = parallel * per_trial
    if len(ids) < need:
        if ids not in ([], [0]):
            raise UserError(f"automl.parallel_trials={parallel} x train.num_gpus={per_trial} needs {need} GPUs but "
                            f"train.gpu_ids={ids} lists {len(ids)}. List {need} ids, or lower "
                            "automl.parallel_trials.")
        ids = list(range(torch.cuda.device_count()))  # the default gpu_ids=[0]: every visible GPU
    if len(ids) < need:
        raise UserError(f"automl.parallel_trials={parallel} x train.num_gpus={per_trial} needs {need} GPUs but "
                        f"this machine has {len(ids)}. Lower automl.parallel_trials or train.num_gpus.")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = [int(v) for v in visible.split(",")] if visible else None  # ids are relative to what we see
    ids = [physical[i] for i in ids] if physical else ids
    return [Slot(i, gpus=tuple(ids[i * per_trial:(i + 1) * per_trial])) for i in range(parallel)]


try:  # resolved here: a forked child must not load libraries (another thread may hold the loader's lock)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the worker dies, so a killed worker leaves no orphan trial running."""
    if _PRCTL is not None:  # elsewhere the orphan finishes its trial and the heartbeat still retries it
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_env(slot: Slot, trial: optuna.Trial, where: dict, encryption_key: str | None = None) -> dict[str, str]:
    """The environment of a trial's child: its devices or threads, how to reach the trial in the study, and the
    encryption key (never on its command line or in its spec file)."""
    env = dict(os.environ)
    if encryption_key:
        env[ek.INHERITED_ENV] = encryption_key
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT"):  # a fresh job, not our DDP rank
        env.pop(var, None)
    if slot.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot.gpus))
    else:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(slot.threads)
    env[TRIAL_ENV] = json.dumps({**where, "study": trial.study.study_name, "trial_id": trial._trial_id})
    return env


def run_child(trial: optuna.Trial, tcfg: DictConfig, trial_dir: str, slot: Slot, where: dict) -> float:
    """Train ``tcfg`` in a ``segformer train`` child on ``slot``; return its best val_miou.

    ``where``: {"url", "out_dir", "heartbeat_s"}, how the child opens the study (see storage.open_storage).

    Raises ``optuna.TrialPruned`` when the child stopped because the pruner said so, UserError when it failed.
    """
    from segformer_tao import io
    from segformer_tao.config import to_yaml_without_secrets
    from segformer_tao.jobs import read_job

    if slot.gpus:
        tcfg.train.gpu_ids = list(range(len(slot.gpus)))  # numbered inside the child's CUDA_VISIBLE_DEVICES
    spec = os.path.join(trial_dir, TRIAL_SPEC)
    io.write_text(spec, to_yaml_without_secrets(tcfg))
    cmd = [sys.executable, "-m", "segformer_tao.cli", "train", "-e", spec]
    if tcfg.get("encryption_key"):  # the spec holds no key: the child reads it from its environment
        cmd.append(ek.INHERITED_OVERRIDE)
    log.info("AutoML trial %d on %s: %s (log: %s)", trial.number, slot.describe(), trial_dir,
             os.path.join(trial_dir, TRIAL_LOG))
    with io.open_append(os.path.join(trial_dir, TRIAL_LOG), binary=True) as out:
        env = child_env(slot, trial, where, tcfg.get("encryption_key"))
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - only a prctl, no locks taken
        rc = proc.wait()
    job = read_job(trial_dir) or {}
    if rc != 0:
        why = (f"AutoML trial {trial.number} failed (exit code {rc}{': ' + job['error'] if job.get('error') else ''}"
               f"); see {os.path.join(trial_dir, TRIAL_LOG)}.")
        raise UserError(why) if rc == 2 else RuntimeError(why)  # 2: the trial's spec was refused (user input)
    frozen = trial.study._storage.get_trial(trial._trial_id)
    metrics = job.get("metrics", {})
    if PRUNED_ATTR in frozen.user_attrs:
        job["status"] = "pruned"  # the same job.json as an in-process pruned trial
        io.write_json(os.path.join(trial_dir, "job.json"), job)
        raise optuna.TrialPruned(f"pruned at epoch {frozen.user_attrs[PRUNED_ATTR]}")
    if job.get("artifacts", {}).get("best_checkpoint"):
        trial.set_user_attr("best_checkpoint", job["artifacts"]["best_checkpoint"]["path"])
    best = metrics.get("best_val_miou")
    return float(best if best is not None else metrics["val_miou"])


def child_trial(pruner: optuna.pruners.BasePruner) -> optuna.Trial | None:
    """In a trial's child process: its Optuna trial (from SEGFORMER_AUTOML_TRIAL), else None."""
    raw = os.environ.get(TRIAL_ENV)
    if not raw:
        return None
    from segformer_tao.automl.storage import open_storage

    info = json.loads(raw)
    storage = open_storage(info["url"], info["out_dir"], heartbeat_s=info["heartbeat_s"])
    study = optuna.load_study(study_name=info["study"], storage=storage, pruner=pruner)
    return optuna.Trial(study, int(info["trial_id"]))


def host_id() -> str:
    """``host:pid`` of this worker (what each trial records as where it ran)."""
    return f"{socket.gethostname()}:{os.getpid()}"
