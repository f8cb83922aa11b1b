"""Backbones, registered with timm's model registry on import (``timm.create_model("mit_b0")``)."""

from __future__ import annotations

import re

import torch

from segformer_tao.model.backbones.fan import FAN_ARCHS
from segformer_tao.model.backbones.mit import MIT_ARCHS
from segformer_tao.model.backbones.vit import VIT_ARCHS

BACKBONES: tuple[str, ...] = tuple(MIT_ARCHS) + tuple(FAN_ARCHS) + tuple(VIT_ARCHS)

__all__ = ["BACKBONES", "infer_backbone"]


def infer_backbone(sd: dict[str, torch.Tensor]) -> str | None:
    """Name the supported backbone whose architecture matches a backbone state dict (bare keys), or None."""
    if "patch_embed1.proj.weight" in sd:
        width = sd["patch_embed1.proj.weight"].shape[0]
        depths = tuple(
            len({m[1] for k in sd if (m := re.match(rf"block{i}\.(\d+)\.", k))}) for i in range(1, 5))
        for name, arch in MIT_ARCHS.items():
            if arch["embed_dims"][0] == width and arch["depths"] == depths:
                return name
    if "patch_embed.proj.weight" in sd:
        width = sd["patch_embed.proj.weight"].shape[0]
        depth = len({m[1] for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
        convnext = len({m[1] for k in sd if (m := re.match(r"patch_embed\.backbone\.stages\.1\.blocks\.(\d+)\.", k))})
        for name, arch in FAN_ARCHS.items():
            if (arch["embed_dim"], arch["depth"], arch["convnext_depths"][1]) == (width, depth, convnext):
                return name
    return None
