"""Lightning callback that reports val_miou to an Optuna trial after every validation and stops pruned trials."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger("segformer_tao")
METRIC = "val_miou"


class PruningCallback(pl.Callback):
    """Reports ``val_miou`` at step = completed epochs (1-based) and asks the study's pruner.

    A pruned trial is not killed mid-epoch: ``trainer.should_stop`` ends it after this epoch, so its checkpoints
    and status.json stay consistent; the caller checks :attr:`pruned` and raises ``optuna.TrialPruned``.
    """

    def __init__(self, trial):
        self.trial = trial
        self.pruned = False
        self.reported: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(METRIC)
        if value is None:
            return
        step = trainer.current_epoch + 1
        self.reported[step] = float(value)
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            log.info("AutoML: trial %d pruned after epoch %d (val_miou=%.4f)", self.trial.number, step, float(value))
            self.pruned = True
            trainer.should_stop = True
