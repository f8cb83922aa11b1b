"""Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2020) in plain PyTorch.

No custom CUDA op: sampling is ``grid_sample`` (bilinear, zero padding, ``align_corners=False``), which runs on
CPU and GPU, exports to ONNX opset >= 16 (``GridSample``) and builds in TensorRT. ``precise=True`` (the
``model.precise_msda`` key) swaps ``grid_sample`` for a gather-based bilinear sampler with the same result whose
CUDA backward is deterministic (``grid_sample``'s backward uses atomic adds). Sampling always runs in float32,
also under autocast, so the attention is as precise in AMP training as in FP32.

Parameter names (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) and their
initialisation follow Deformable-DETR, as TAO's ViT-Adapter checkpoints expect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformAttn", "ms_deform_attn_core"]


def _bilinear_gather(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(value, grid, 'bilinear', 'zeros', align_corners=False)`` written as four gathers.

    value: (N, C, H, W); grid: (N, Hg, Wg, 2) in [-1, 1] (x, y). Returns (N, C, Hg, Wg).
    """
    n, c, h, w = value.shape
    _, hg, wg, _ = grid.shape
    x = (grid[..., 0] + 1) * w / 2 - 0.5  # pixel coordinates, pixel centres at integers
    y = (grid[..., 1] + 1) * h / 2 - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    flat = value.reshape(n, c, h * w)
    out = value.new_zeros(n, c, hg * wg)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)  # zero padding outside the map
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long().reshape(n, 1, -1).expand(n, c, -1)
        out = out + flat.gather(2, index) * (weight * inside).reshape(n, 1, -1)
    return out.reshape(n, c, hg, wg)


def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                        sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                        precise: bool = False) -> torch.Tensor:
    """Weighted sum of bilinear samples from several feature maps.

    value: (B, sum(H_l * W_l), heads, C) flattened maps, level after level;
    spatial_shapes: [(H_l, W_l)] per level;
    sampling_locations: (B, Lq, heads, levels, points, 2) as (x, y) in [0, 1] of each map (outside = zeros);
    attention_weights: (B, Lq, heads, levels, points).
    Returns (B, Lq, heads * C).
    """
    b, _, heads, c = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(b * heads, c, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B * heads, Lq, points, 2)
        if precise:
            sampled.append(_bilinear_gather(v, g))
        else:
            sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, lq, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B * heads, C, Lq)
    return out.reshape(b, heads * c, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query attends to ``n_points`` learned offsets per head and level.

    ``ratio`` scales the value width (ViT-Adapter uses 0.5). ``precise`` selects the deterministic sampler.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 ratio: float = 1.0, precise: bool = False):
        super().__init__()
        if d_model % n_heads or int(d_model * ratio) % n_heads:
            raise ValueError(f"d_model={d_model} (x ratio {ratio}) must be divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.ratio = ratio
        self.precise = precise
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, int(d_model * ratio))
        self.output_proj = nn.Linear(int(d_model * ratio), d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR's init: offsets start on a ring of directions (one per head), uniform attention."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """query: (B, Lq, D); reference_points: (B or 1, Lq, levels, 2) as (x, y) in [0, 1];
        input_flatten: (B, sum(H_l * W_l), D); spatial_shapes: [(H_l, W_l)]. Returns (B, Lq, D)."""
        b, lq, _ = query.shape
        value = self.value_proj(input_flatten)
        value = value.reshape(b, value.shape[1], self.n_heads, -1)
        offsets = self.sampling_offsets(query).reshape(b, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).reshape(b, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).reshape(b, lq, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level: normalise by that level's (W, H)
        normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn_core(value.float(), spatial_shapes, locations.float(), weights.float(), self.precise)
        return self.output_proj(out.to(value.dtype))
