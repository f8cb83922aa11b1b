"""Helpers for the model tests: experiment configs with the keys build_model reads."""

from __future__ import annotations

from omegaconf import OmegaConf


def make_cfg(backbone: str = "mit_b0", num_classes: int = 5, embed_dim: int = 64, **model_overrides):
    """An experiment config with the keys build_model reads (same paths as the TAO spec)."""
    cfg = {
        "model": {
            "backbone": {"type": backbone, "freeze_backbone": False, "pretrained_backbone_path": None,
                         "feat_downsample": False},
            "decode_head": {"in_channels": None, "in_index": [0, 1, 2, 3], "feature_strides": None,
                            "align_corners": False, "decoder_params": {"embed_dim": embed_dim}},
        },
        "dataset": {"segment": {"num_classes": num_classes, "img_size": 64}},
        "train": {"pretrained_model_path": None},
    }
    cfg = OmegaConf.create(cfg)
    for key, value in model_overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg
