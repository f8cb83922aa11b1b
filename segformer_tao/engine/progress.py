"""Training progress on stdout: a tqdm bar on a terminal, plain log lines everywhere else (cluster logs, CI).

A bar redraws itself with carriage returns, which a file or a log collector keeps as one endless line. When stdout
is not a terminal, :class:`LineProgress` writes a line every ~10% of an epoch (``PROGRESS_LINES`` lines per epoch at
most) and one line per finished epoch, each with the time left (ETA), through the ``segformer_tao`` logger (so
they also land in the results dir's log.txt).
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from segformer_tao.engine.callbacks import validated_this_epoch

log = logging.getLogger("segformer_tao.progress")
PROGRESS_LINES = 10  # step lines per epoch when stdout is not a terminal (every ceil(batches / 10) steps)
UNSIZED_INTERVAL = 50  # steps between lines when the epoch's length is unknown (an iterable dataset)


def progress_bar() -> ProgressBar:
    """The bar on a terminal (refreshed every 10 steps), :class:`LineProgress` when stdout is not one."""
    isatty = getattr(sys.stdout, "isatty", None)
    if isatty is not None and isatty():
        return TQDMProgressBar(refresh_rate=10)
    return LineProgress()


def duration(seconds: float) -> str:
    """``H:MM:SS`` (whole seconds)."""
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


def _fmt(value: Any) -> str:
    value = float(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


class LineProgress(ProgressBar):
    """One log line every ``interval`` training steps (default: ~10% of an epoch) and one per finished epoch, with
    the ETA of the epoch and of the whole run (from the average time per step so far, validation included)."""

    def __init__(self, interval: int | None = None) -> None:
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._start = time.monotonic()
        self._epoch_start = self._start
        self._steps = 0  # training steps run by this process (a resumed run counts from its resume point)

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _interval(self) -> int:
        if self.interval:
            return self.interval
        total = self.total_train_batches
        return UNSIZED_INTERVAL if not math.isfinite(total) else max(1, math.ceil(total / PROGRESS_LINES))

    def _eta(self, trainer: pl.Trainer, batches_left_in_epoch: float) -> tuple[float, float]:
        """(seconds left in this epoch, seconds left in the run); inf when the epoch's length is unknown."""
        per_step = (time.monotonic() - self._start) / max(1, self._steps)
        total = self.total_train_batches
        epochs_after = max(0, (trainer.max_epochs or trainer.current_epoch + 1) - trainer.current_epoch - 1)
        return per_step * batches_left_in_epoch, per_step * (batches_left_in_epoch + epochs_after * total)

    def _metrics(self, trainer: pl.Trainer, keys: tuple[str, ...]) -> str:
        m = trainer.callback_metrics
        return ", ".join(f"{k} {_fmt(m[k])}" for k in keys if m.get(k) is not None)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._steps = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._steps += 1
        done, total = batch_idx + 1, self.total_train_batches
        if not self._enabled or done % self._interval() or done >= total:  # the epoch line reports the last one
            return
        epoch_eta, run_eta = self._eta(trainer, total - done)
        where = f"{done}/{total} ({100 * done / total:.0f}%)" if math.isfinite(total) else str(done)
        loss = self._metrics(trainer, ("train_loss_step",)).replace("train_loss_step", "loss")
        log.info("Epoch %d/%d step %s%s | %.2f s/step | epoch ETA %s | ETA %s", trainer.current_epoch + 1,
                 trainer.max_epochs, where, f" {loss}" if loss else "",
                 (time.monotonic() - self._epoch_start) / done, duration(epoch_eta),
                 duration(run_eta) if math.isfinite(run_eta) else "?")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        _, run_eta = self._eta(trainer, 0)
        validated = validated_this_epoch(trainer, pl_module)  # val_* of an earlier epoch are not this epoch's
        metrics = self._metrics(trainer, ("train_loss_epoch", "val_loss", "val_miou") if validated
                                else ("train_loss_epoch",)).replace("train_loss_epoch", "train_loss")
        log.info("Epoch %d/%d done in %s%s | elapsed %s | ETA %s", trainer.current_epoch + 1, trainer.max_epochs,
                 duration(time.monotonic() - self._epoch_start), f": {metrics}" if metrics else "",
                 duration(time.monotonic() - self._start), duration(run_eta) if math.isfinite(run_eta) else "?")
