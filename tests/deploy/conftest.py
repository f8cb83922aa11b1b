"""Tiny SegFormer checkpoints (mit_b0, img_size 64) for the deploy tests."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from segformer_tao.config import compose_config

IMG = 64
NUM_CLASSES = 3


def deploy_cfg(action: str, tmp_path, *overrides: str):
    """A composed config for ``action`` with the tiny dataset geometry and results_dir under tmp_path."""
    cfg = compose_config(action, [
        f"dataset.segment.root_dir={tmp_path}/data", f"dataset.segment.img_size={IMG}",
        f"dataset.segment.num_classes={NUM_CLASSES}", "dataset.segment.batch_size=2", "dataset.segment.workers=0",
        "model.backbone.type=mit_b0", f"results_dir={tmp_path}/results", *overrides,
    ])
    OmegaConf.update(cfg, f"{action}.results_dir", f"{tmp_path}/results/{action}", force_add=True)
    return cfg


def save_tiny_checkpoint(path: str, cfg, seed: int = 0, model=None) -> str:
    """Random-init (or given) mit_b0 SegFormer saved in our checkpoint format."""
    from segformer_tao.engine.checkpoint import save_checkpoint
    from segformer_tao.model import build_model

    torch.manual_seed(seed)
    model = model if model is not None else build_model(cfg, load_weights=False).eval()
    seg = cfg.dataset.segment
    meta = {"class_names": [f"c{i}" for i in range(seg.num_classes)], "palette": None, "img_size": seg.img_size,
            "mean": list(seg.augmentation.mean), "std": list(seg.augmentation.std), "backbone": "mit_b0",
            "num_classes": seg.num_classes}
    payload = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "meta": meta,
               "config": OmegaConf.to_container(cfg, resolve=True)}
    save_checkpoint(path, payload)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.set_num_threads(1)
    cfg = deploy_cfg("export", tmp_path)
    return save_tiny_checkpoint(str(tmp_path / "tiny.pth"), cfg)
