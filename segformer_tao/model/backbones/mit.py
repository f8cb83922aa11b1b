"""Mix Transformer (MiT b0-b5), the SegFormer encoder, built from timm layers and registered with timm.

Parameter names follow the original NVlabs SegFormer backbone (``patch_embed1..4``, ``block1..4``,
``norm1..4``, ``attn.{q,kv,sr,norm,proj}``, ``mlp.{fc1,dwconv.dwconv,fc2}``) so NVlabs/TAO checkpoints
load without renaming and the other layouts convert with a short, explicit key map (see ``weights.py``).

Token tensors are (B, N, C) with N = H*W in row-major order; feature maps handed between stages are
NCHW views of NHWC memory (channels_last), so no stage pays for a layout copy.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from segformer_tao.model.backbones.features import FeatureMaps

__all__ = ["MixVisionTransformer", "MIT_ARCHS"]

# Published SegFormer encoders: widths, heads, spatial-reduction ratios are shared by b1-b5; depth grows.
_WIDE = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8))
MIT_ARCHS: dict[str, dict] = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2)),
    "mit_b1": dict(_WIDE, depths=(2, 2, 2, 2)),
    "mit_b2": dict(_WIDE, depths=(3, 4, 6, 3)),
    "mit_b3": dict(_WIDE, depths=(3, 4, 18, 3)),
    "mit_b4": dict(_WIDE, depths=(3, 8, 27, 3)),
    "mit_b5": dict(_WIDE, depths=(3, 6, 40, 3)),
}


def tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map sharing the same (channels_last) memory."""
    return x.reshape(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H*W, C) tokens; free when ``x`` is channels_last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv (kernel > stride) + LayerNorm over channels."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(map_to_tokens(x)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a ``sr_ratio``-strided conv of the input."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)  # rows [0, dim) are keys, [dim, 2*dim) values
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        head_dim = c // self.num_heads
        q = self.q(x).reshape(b, n, self.num_heads, head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(map_to_tokens(self.sr(tokens_to_map(x, h, w))))
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class DWConv(nn.Module):
    """3x3 depth-wise conv over the token grid (Mix-FFN's implicit positional encoding)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, h, w)))


class MixFFN(nn.Module):
    """fc1 -> depth-wise conv -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), h, w)))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), both with DropPath."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop: float,
                 attn_drop: float, drop_path: float, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(FeatureMaps, nn.Module):
    """MiT encoder: four stages of (overlapping patch embed, transformer blocks, LayerNorm).

    forward(x: float NCHW) -> list of 4 NCHW maps at strides 4, 8, 16, 32 with ``embed_dims`` channels.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (4, 4, 4, 4),
        depths: tuple[int, ...] = (3, 4, 6, 3),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
        **kwargs,
    ):
        super().__init__()
        kwargs.pop("num_classes", None)  # timm passes classifier args; the encoder has no classifier
        if kwargs:
            raise TypeError(f"unexpected MixVisionTransformer arguments: {sorted(kwargs)}")
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth grows with depth
        self.feature_info = []
        for i, dim in enumerate(embed_dims):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            in_dim = in_chans if i == 0 else embed_dims[i - 1]
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(patch, stride, in_dim, dim))
            first = sum(depths[:i])
            blocks = [
                Block(dim, num_heads[i], mlp_ratios[i], sr_ratios[i], drop_rate, attn_drop_rate,
                      rates[first + j], norm_layer)
                for j in range(depths[i])
            ]
            setattr(self, f"block{i + 1}", nn.ModuleList(blocks))
            setattr(self, f"norm{i + 1}", norm_layer(dim))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**i, module=f"norm{i + 1}"))
        self.num_features = embed_dims[-1]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(1, len(self.embed_dims) + 1):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = tokens_to_map(getattr(self, f"norm{i}")(x), h, w)
            outs.append(x)
        return outs

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = True, **kwargs):
        """timm's feature-getter hook (``features_only=True``): the selected stage maps, NCHW."""
        outs = self.forward(x)
        take = range(len(outs)) if indices is None else indices
        take = range(len(outs) - take, len(outs)) if isinstance(take, int) else take
        return [outs[i] for i in take]


def _init_weights(m: nn.Module) -> None:
    """NVlabs initialisation: trunc-normal linears, unit LayerNorms, He-normal (fan-out) convs."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _create_mit(variant: str, pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    args = dict(MIT_ARCHS[variant], **kwargs)
    return build_model_with_cfg(
        MixVisionTransformer, variant, pretrained,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **args,
    )


# No download URLs: weights are loaded from local files by ``segformer_tao.model.weights``.
default_cfgs = generate_default_cfgs({
    name: dict(url="", num_classes=0, input_size=(3, 512, 512), first_conv="patch_embed1.proj",
               mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    for name in MIT_ARCHS
})


@register_model
def mit_b0(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _create_mit("mit_b0", pretrained, **kwargs)


@register_model
def mit_b1(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _create_mit("mit_b1", pretrained, **kwargs)


@register_model
def mit_b2(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _create_mit("mit_b2", pretrained, **kwargs)


@register_model
def mit_b3(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _create_mit("mit_b3", pretrained, **kwargs)


@register_model
def mit_b4(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _create_mit("mit_b4", pretrained, **kwargs)


@register_model
def mit_b5(pretrained: bool = False, **kwargs) -> MixVisionTransformer:
    return _create_mit("mit_b5", pretrained, **kwargs)
