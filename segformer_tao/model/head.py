"""SegFormer's all-MLP decoder: per-stage linear projection, upsample to 1/4, fuse, classify.

Parameter names follow NVlabs SegFormer (``linear_c1..4.proj``, ``linear_fuse.{conv,bn}``, ``linear_pred``).

The published head computes ``fuse(concat(up(proj_i(c_i))))`` with a 1x1 conv over 4*E channels at 1/4
resolution. Because projection, bilinear upsampling and the 1x1 fuse conv are all linear, we compute the
identical function as ``sum_i up((W_i @ P_i) c_i + W_i b_i)``: each stage is mapped straight to E channels at
its own resolution and only E (not 4E) channels are upsampled and summed. Same parameters, same outputs (up to
float rounding), several times fewer FLOPs; training sees the same gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, trunc_normal_
from torch import nn

__all__ = ["SegFormerHead"]


class LinearEmbed(nn.Module):
    """Per-stage projection to the decoder width; a Linear so the weights match every published layout."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)


class SegFormerHead(nn.Module):
    """All-MLP decoder.

    forward(features: 4 NCHW maps, finest first) -> logits (N, num_classes, H1, W1) at the resolution of
    the first map (1/4 of the input for MiT and FAN).
    """

    def __init__(self, in_channels: Sequence[int], embed_dim: int, num_classes: int,
                 align_corners: bool = False, dropout: float = 0.1):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"SegFormerHead needs 4 input feature maps, got in_channels={list(in_channels)}")
        self.in_channels = list(in_channels)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.align_corners = align_corners
        for i, c in enumerate(in_channels):
            setattr(self, f"linear_c{i + 1}", LinearEmbed(c, embed_dim))
        # The published fuse conv has no bias: BatchNorm's shift makes it redundant.
        self.linear_fuse = ConvNormAct(embed_dim * 4, embed_dim, 1, bias=False, norm_layer=nn.BatchNorm2d,
                                       act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        self.apply(_init_weights)
        nn.init.kaiming_normal_(self.linear_fuse.conv.weight, mode="fan_out", nonlinearity="relu")

    def stage_weights(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """1x1 conv (weight (E, C_i, 1, 1), bias (E,)) taking stage ``i`` (0 = finest) into fuse space."""
        e = self.embed_dim
        # The fuse conv's input is concat(c4, c3, c2, c1), so stage i owns input slice 3 - i.
        w_fuse = self.linear_fuse.conv.weight.reshape(e, 4, e)[:, 3 - i]
        proj = getattr(self, f"linear_c{i + 1}").proj
        return (w_fuse @ proj.weight)[:, :, None, None], w_fuse @ proj.bias

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        fused = None
        for i, feat in enumerate(features):
            y = F.conv2d(feat, *self.stage_weights(i))
            if i > 0:  # by index, not shape, so a traced/exported graph resizes at any input size
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners)
            fused = y if fused is None else fused + y
        x = self.dropout(self.linear_fuse.bn(fused))
        return self.linear_pred(x)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``linear_pred`` with a freshly initialised classifier for ``num_classes`` classes."""
        self.num_classes = num_classes
        pred = nn.Conv2d(self.embed_dim, num_classes, kernel_size=1).to(self.linear_pred.weight)
        _init_weights(pred)
        self.linear_pred = pred


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
