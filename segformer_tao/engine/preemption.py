"""Preemption-safe training: on SIGTERM, SIGUSR1 or train.preemption_signal, finish the step, write a full-state
checkpoint (mid-epoch; the run resumes at that step), then stop with :class:`segformer_tao.errors.Preempted`
(status PREEMPTED, exit code 75). Also the wall-clock checkpoint interval (train.checkpoint_interval_minutes) and
the SLURM requeue (train.slurm_requeue).

Every rank decides together (one all-reduce of two flags per step): a signal seen by any rank preempts all of them,
and rank 0's clock decides the timed checkpoints, so no rank waits for a collective the others skipped. The
decision is not taken on an epoch's last batch but at its end, after validation and the periodic checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import Any

import pytorch_lightning as pl
import torch

from segformer_tao.engine.callbacks import SegformerCheckpoint, epoch_checkpoint_name
from segformer_tao.engine.resumable import loader_state, mark_trained, restore_loader
from segformer_tao.errors import Preempted, UserError

log = logging.getLogger("segformer_tao")
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
LOADER_KEY = "segformer_train_loader"  # the train loader's position in a checkpoint (mid-epoch resume)


def preemption_signals(extra: str | None) -> list[signal.Signals]:
    """SIGTERM, SIGUSR1 and the signal train.preemption_signal names (``SIGUSR2``, ``USR2`` or a number)."""
    names = list(DEFAULT_SIGNALS)
    if extra not in (None, ""):
        text = str(extra).strip().upper()
        try:
            sig = signal.Signals(int(text)) if text.isdigit() else signal.Signals[text if text.startswith("SIG")
                                                                                   else f"SIG{text}"]
        except (KeyError, ValueError) as e:
            raise UserError(f"train.preemption_signal='{extra}' is not a signal name. Use one such as SIGUSR2, "
                            "SIGINT or SIGHUP (SIGTERM and SIGUSR1 always preempt).") from e
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise UserError(f"train.preemption_signal={sig.name} cannot be caught by any process. Use SIGUSR2 "
                            "(e.g. `#SBATCH --signal=USR2@120`) or leave it unset.")
        names.append(sig.name)
    return [signal.Signals[n] for n in dict.fromkeys(names)]


class Preemption(pl.Callback):
    """Listens for the preemption signals while training; writes the mid-epoch checkpoints through ``checkpoints``
    (the run's :class:`SegformerCheckpoint`, so names and files are the periodic ones). Put it after the
    checkpoint and status callbacks: at an epoch's end they run first."""

    def __init__(self, checkpoints: SegformerCheckpoint, extra_signal: str | None = None,
                 interval_minutes: float = 0.0):
        self.checkpoints = checkpoints
        self.signals = preemption_signals(extra_signal)
        self.interval_s = float(interval_minutes or 0) * 60.0
        self.received: str | None = None
        self._last_save = time.monotonic()
        self._loader_state: dict | None = None

    # ----------------------------------------------------------------------------------------- signals
    def install(self) -> None:
        """Take over the preemption signals (main thread only; Lightning registers its own at fit start)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            log.warning("%s received: finishing the current step, then writing a checkpoint and stopping.",
                        self.received)

    # ----------------------------------------------------------------------------------------- decisions
    def _decide(self, trainer: pl.Trainer) -> tuple[bool, bool]:
        """(preempt, checkpoint now for the wall-clock interval), the same on every rank."""
        timed = self.interval_s > 0 and time.monotonic() - self._last_save >= self.interval_s
        flags = torch.tensor([float(self.received is not None), float(timed and trainer.is_global_zero)])
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flags = flags.to(trainer.strategy.root_device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        preempt, timed = bool(flags[0].item()), bool(flags[1].item())
        if preempt and self.received is None:
            self.received = "a signal to another rank"
        return preempt, timed

    def _checkpoint(self, trainer: pl.Trainer, epochs_done: int) -> str:
        name = epoch_checkpoint_name(epochs_done, trainer.global_step)
        last = self.checkpoints.last_path
        if last is None or os.path.basename(last) != name:  # not already written at this step (periodic)
            self.checkpoints._save_periodic(trainer, epochs_done)
        self._last_save = time.monotonic()
        return self.checkpoints.last_path

    def _stop(self, trainer: pl.Trainer, path: str, epochs_done: int) -> None:
        raise Preempted(self.received or "a signal", path, epochs_done, trainer.global_step)

    # ----------------------------------------------------------------------------------------- hooks
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = loader_state(trainer)
        if state is not None:
            checkpoint[LOADER_KEY] = state

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._loader_state = checkpoint.get(LOADER_KEY)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.install()  # again: Lightning's signal connector replaced the handlers when fit started
        self._last_save = time.monotonic()
        restore_loader(trainer, self._loader_state)  # mid-epoch: continue at the checkpoint's batch
        self._loader_state = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        mark_trained(trainer, batch_idx)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:  # decided at the epoch's end, after validation
            return
        preempt, timed = self._decide(trainer)
        if preempt or timed:
            path = self._checkpoint(trainer, trainer.current_epoch)
            if preempt:
                self._stop(trainer, path, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs_done = trainer.current_epoch + 1
        if epochs_done >= (trainer.max_epochs or epochs_done):
            return  # the run is complete: nothing left to preempt
        preempt, timed = self._decide(trainer)
        if preempt or timed:
            path = self._checkpoint(trainer, epochs_done)
            if preempt:
                self._stop(trainer, path, epochs_done)


def requeue(enabled: bool) -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` when train.slurm_requeue is on and this is a SLURM job (rank 0 calls
    it after job.json says preempted); the requeued job starts the same command, which resumes by itself."""
    job = os.environ.get("SLURM_JOB_ID")
    if not enabled or not job:
        if enabled:
            log.warning("train.slurm_requeue=true but this is not a SLURM job (no SLURM_JOB_ID): not requeued.")
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not requeue SLURM job %s: %s", job, e)
        return False
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (%s): %s", job, done.returncode, done.stderr.strip())
        return False
    log.warning("SLURM job %s requeued: it resumes from its last checkpoint when it starts again.", job)
    return True
