"""Lightning callback that reports val_miou to an Optuna trial after every validation and stops pruned trials."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger("segformer_tao")
METRIC = "val_miou"
PRUNED_ATTR = "pruned_at_epoch"


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
        if trainer.sanity_checking:
            return
        prune = False
        value = trainer.callback_metrics.get(METRIC)
        if trainer.is_global_zero and value is not None:
            step = trainer.current_epoch + 1
            self.reported[step] = float(value)
            self.trial.report(float(value), step)
            prune = self.trial.should_prune()
            if prune:
                log.info("AutoML: trial %d pruned after epoch %d (val_miou=%.4f)", self.trial.number, step,
                         float(value))
                self.trial.set_user_attr(PRUNED_ATTR, step)  # how a trial's parent process learns it
        # DDP inside a trial (train.num_gpus > 1): every rank must stop after the same epoch, as rank 0 decides
        prune = bool(trainer.strategy.broadcast(prune, src=0)) if trainer.world_size > 1 else prune
        if prune:
            self.pruned = True
            trainer.should_stop = True
