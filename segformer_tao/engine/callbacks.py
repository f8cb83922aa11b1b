"""Training callbacks: TAO-named checkpoints (every N, latest, best by val_miou), status.json, training curves."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins import CheckpointIO

from segformer_tao import io, status
from segformer_tao.engine.checkpoint import load_checkpoint, save_checkpoint
from segformer_tao.jobs import BEST_CHECKPOINT as BEST
from segformer_tao.jobs import LATEST_CHECKPOINT as LATEST


def validated_this_epoch(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
    """True when validation ran during the current training epoch (not every epoch validates)."""
    return getattr(pl_module, "last_val", {}).get("epoch") == trainer.current_epoch


def epoch_checkpoint_name(epoch: int, step: int) -> str:
    """``model_epoch_XXX_step_YYYYY.pth`` with the 1-based number of completed epochs."""
    return f"model_epoch_{epoch:03d}_step_{step:05d}.pth"


class EncryptedCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O through :mod:`segformer_tao.engine.checkpoint` (atomic, optional AES-GCM)."""

    def __init__(self, encryption_key: str | None = None, preloaded: tuple[str, dict] | None = None,
                 strict: bool = False):
        """``preloaded``: (path, payload) of a checkpoint already read (and decrypted) on CPU, e.g. by the resume
        check; its first load returns that payload instead of reading the file again."""
        self.encryption_key = encryption_key or None
        self._preloaded = preloaded
        self.strict = strict  # encryption_strict: a plaintext checkpoint to resume from is refused

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any = None) -> None:
        save_checkpoint(str(path), checkpoint, self.encryption_key)

    def load_checkpoint(self, path: str, map_location: Any = None, weights_only: bool | None = None) -> dict:
        if self._preloaded is not None and self._preloaded[0] == str(path) and map_location in (None, "cpu"):
            payload, self._preloaded = self._preloaded[1], None  # once: later loads read the file as usual
            return payload
        return load_checkpoint(str(path), self.encryption_key, map_location=map_location or "cpu", own=True,
                               strict=self.strict)

    def remove_checkpoint(self, path: str) -> None:
        fs, p = io.filesystem(str(path))
        if fs.exists(p):
            fs.rm(p)


class SegformerCheckpoint(pl.Callback):
    """Saves ``model_epoch_XXX_step_YYYYY.pth`` every ``interval`` epochs (or steps), ``segformer_model_latest.pth``
    alongside, and ``segformer_model_best.pth`` whenever ``val_miou`` improves.

    Saving happens at the end of the train epoch, after that epoch's validation, so the stored RNG state is the
    one the next epoch starts from (exact resume).
    """

    def __init__(self, dirpath: str, interval: int = 1, unit: str = "epoch"):
        self.dirpath = dirpath
        self.interval = max(1, int(interval))
        self.unit = unit
        self.best_miou = -math.inf
        self.best_path: str | None = None
        self.last_path: str | None = None

    def _save(self, trainer: pl.Trainer, name: str) -> str:
        path = os.path.join(self.dirpath, name) if not io.is_remote(self.dirpath) else f"{self.dirpath}/{name}"
        trainer.save_checkpoint(path, weights_only=False)  # full state (optimizer, loops, RNG): exact resume
        return path

    def _save_periodic(self, trainer: pl.Trainer, epochs_done: int) -> None:
        self.last_path = self._save(trainer, epoch_checkpoint_name(epochs_done, trainer.global_step))
        self._save(trainer, LATEST)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.unit == "step" and trainer.global_step % self.interval == 0:
            self._save_periodic(trainer, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        miou = trainer.callback_metrics.get("val_miou")
        # current_epoch is still the epoch that just ran here; the stored epoch counts finished epochs.
        if miou is not None and validated_this_epoch(trainer, pl_module) and float(miou) > self.best_miou:
            self.best_miou = float(miou)
            self.best_path = self._save(trainer, BEST)
        epochs_done = trainer.current_epoch + 1
        last_epoch = epochs_done >= (trainer.max_epochs or epochs_done)
        if self.unit == "epoch" and (epochs_done % self.interval == 0 or last_epoch):
            self._save_periodic(trainer, epochs_done)
        elif self.unit == "step" and last_epoch:
            self._save(trainer, LATEST)

    def state_dict(self) -> dict[str, Any]:
        return {"best_miou": self.best_miou, "best_path": self.best_path, "last_path": self.last_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_miou = float(state_dict.get("best_miou", -math.inf))
        self.best_path = state_dict.get("best_path")
        self.last_path = state_dict.get("last_path")


def _scalar(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


# Validation results (SegFormerModule.last_val) that are scores (kpi); val_loss is a curve (graphical).
VAL_KPI = ("val_miou", "val_acc", "val_mAcc", "val_mf1", "val_mprecision", "val_mrecall")


class StatusLogger(pl.Callback):
    """Training progress in ``status.json`` (TAO's StatusLogger schema, see :mod:`segformer_tao.status`; rank 0
    only) and ``training_curves.png`` at the end.

    One RUNNING line when the loop starts, one per finished epoch (epoch = epochs done, 1-based; ``graphical``:
    train_loss, lr (first param group) and val_loss; ``kpi`` on epochs that validated: val_miou, val_acc, ...),
    and one when the loop ends. STARTED/SUCCESS/FAILURE are written around the whole action by
    :func:`segformer_tao.status.action_status`.
    """

    def __init__(self, results_dir: str):
        self.results_dir = results_dir
        self.history: list[dict] = []
        self._start = time.monotonic()
        self._epoch_start = self._start
        self._start_epoch = 0

    def _write(self, trainer: pl.Trainer, message: str, **fields: Any) -> dict:
        record = status.status_line(status.RUNNING, message, **fields)
        if trainer.is_global_zero:
            io.append_line(os.path.join(self.results_dir, status.STATUS_FILE), json.dumps(record))
        return record

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._start_epoch = trainer.current_epoch
        self._write(trainer, f"Training loop started ({trainer.current_epoch} of {trainer.max_epochs} epochs "
                    "done).", epoch=trainer.current_epoch, max_epoch=trainer.max_epochs, step=trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        m = trainer.callback_metrics
        epochs_done = trainer.current_epoch + 1
        now = time.monotonic()
        per_epoch = (now - self._start) / max(1, epochs_done - self._start_epoch)
        eta = per_epoch * max(0, (trainer.max_epochs or epochs_done) - epochs_done)
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        val = getattr(pl_module, "last_val", {}) if validated_this_epoch(trainer, pl_module) else {}
        record = self._write(
            trainer, f"Epoch {epochs_done}/{trainer.max_epochs} done.", epoch=epochs_done,
            max_epoch=trainer.max_epochs, step=trainer.global_step,
            time_per_epoch=status.duration(now - self._epoch_start), eta=status.duration(eta),
            eta_s=round(eta, 2), elapsed_s=round(now - self._start, 2),
            graphical={"train_loss": _scalar(m, "train_loss_epoch"), "lr": lrs[0] if lrs else None,
                       "val_loss": val.get("val_loss")},
            kpi={k: val.get(k) for k in VAL_KPI})
        self.history.append(record)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "Training loop complete.", epoch=trainer.current_epoch, max_epoch=trainer.max_epochs,
                    step=trainer.global_step, elapsed_s=round(time.monotonic() - self._start, 2))
        if trainer.is_global_zero and self.history:
            plot_training_curves(self.history, os.path.join(self.results_dir, "training_curves.png"))

    def state_dict(self) -> dict[str, Any]:
        return {"history": json.dumps(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = json.loads(state_dict.get("history", "[]"))


def _curve(history: list[dict], group: str, key: str) -> list[tuple[int, float]]:
    """(epoch, value) points of status records; records of older checkpoints (resumed runs) hold flat keys."""
    points = []
    for h in history:
        value = h.get(group, h).get(key)
        if isinstance(value, int | float):  # "nan"/"inf" strings are not plotted
            points.append((h["epoch"], float(value)))
    return points


def plot_training_curves(history: list[dict], path: str) -> None:
    """Train loss (``graphical``) and val_miou (``kpi``) per epoch of the status records, side by side, as a
    PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 4))
    loss = _curve(history, "graphical", "train_loss")
    miou = _curve(history, "kpi", "val_miou")
    if loss:
        ax_loss.plot(*zip(*loss), marker="o")
    ax_loss.set(title="train loss", xlabel="epoch", ylabel="cross-entropy")
    if miou:
        ax_miou.plot(*zip(*miou), marker="o", color="tab:green")
    ax_miou.set(title="val mIoU", xlabel="epoch", ylabel="mIoU", ylim=(0, 1))
    fig.tight_layout()
    with io.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
