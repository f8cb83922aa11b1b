"""`segformer train`: train (or resume) a SegFormer with PyTorch Lightning; see segformer_tao.engine."""

from __future__ import annotations

from omegaconf import DictConfig

from segformer_tao.engine.trainer import train_model


def run(cfg: DictConfig) -> dict:
    """Train into cfg.train.results_dir. Returns {"metrics": {val_miou, best_val_miou, ...}, "artifacts": {...}}."""
    result = train_model(cfg, str(cfg.train.results_dir))
    result.pop("is_global_zero", None)
    return result
