"""`segformer train`: train (or resume) a SegFormer with PyTorch Lightning; see segformer_tao.engine."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from segformer_tao.engine.trainer import train_model


def run(cfg: DictConfig) -> dict:
    """Train into cfg.train.results_dir. Returns {"metrics": {val_miou, best_val_miou, ...}, "artifacts": {...}}."""
    callbacks = []
    if os.environ.get("SEGFORMER_AUTOML_TRIAL"):  # a trial started by an AutoML search (automl.parallel_trials)
        from segformer_tao.automl.search import trial_callbacks

        callbacks = trial_callbacks(cfg)
    result = train_model(cfg, str(cfg.train.results_dir), callbacks=callbacks)
    result.pop("is_global_zero", None)
    return result
