"""FAN hybrid backbones (Fully Attentional Networks, NVlabs), as TAO's SegFormer ships them, on timm layers.

A two-stage ConvNeXt (stride 4 and 8) feeds a 2x2 patch projection (stride 16), Fourier positional encoding,
FAN blocks (token self-attention + channel attention) and two class-attention blocks. The four outputs are
the ConvNeXt stages (128 ch @4, 256 ch @8), the token map after block ``out_idx`` and the final token map
(embed_dim @16, or 768 ch @32 with ``feat_downsample``), matching TAO's ``channels_map``.

Parameter names follow TAO/NVlabs checkpoints (``patch_embed.backbone.stem/stages``, ``patch_embed.proj``,
``pos_embed.token_projection``, ``blocks.{i}.attn.{q,kv,proj}``, ``blocks.{i}.mlp.{q,temperature,mlp_v,norm_v}``,
``cls_attn_blocks.{i}.attn.{q,k,v,proj}``, ``learnable_downsample``) so their weights load unchanged.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXtStage
from torch import nn

from segformer_tao.model.backbones.features import FeatureMaps
from segformer_tao.model.backbones.mit import map_to_tokens, tokens_to_map

__all__ = ["FANHybrid", "FAN_ARCHS", "LayerNorm2dUnbiased"]

# TAO's SegFormer variants: ConvNeXt depths, FAN embed dim / depth / heads, block whose output is stage 3.
FAN_ARCHS: dict[str, dict] = {
    "fan_tiny_8_p4_hybrid": dict(convnext_depths=(3, 3), embed_dim=192, depth=8, num_heads=8, out_idx=7),
    "fan_small_12_p4_hybrid": dict(convnext_depths=(3, 3), embed_dim=384, depth=10, num_heads=8, out_idx=9),
    "fan_base_16_p4_hybrid": dict(convnext_depths=(3, 3), embed_dim=448, depth=16, num_heads=8, out_idx=15),
    "fan_large_16_p4_hybrid": dict(convnext_depths=(3, 5), embed_dim=480, depth=22, num_heads=10, out_idx=18),
}
_CONVNEXT_DIMS = (128, 256)
_DOWNSAMPLE_DIM = 768  # TAO's learnable_downsample output width (feat_downsample=True)


class LayerNorm2dUnbiased(LayerNorm2d):
    """LayerNorm over the channels of NCHW maps with the unbiased variance (sum of squares / (C - 1)).

    TAO's (and NVlabs') ConvNeXt LayerNorm2d calls ``F.layer_norm`` only for contiguous inputs and otherwise
    ``torch.var_mean`` (unbiased); its stem hands every later norm a channels-last-strided map, so TAO-trained
    FAN weights expect this function. Computed as the identical biased LayerNorm with ``eps`` and the scale
    multiplied by (C - 1) / C and its square root, so it is one ``LayerNormalization`` in ONNX (kept FP32 by
    the TensorRT builders) and the same for every memory layout and device.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs):
        if num_channels < 2:
            raise ValueError(f"an unbiased variance needs at least 2 channels, got {num_channels}")
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shrink = (self.normalized_shape[0] - 1) / self.normalized_shape[0]
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight * math.sqrt(shrink), self.bias,
                         self.eps * shrink)
        return x.permute(0, 3, 1, 2)


class ConvNeXtEmbedBackbone(nn.Module):
    """ConvNeXt stem (4x4/4 conv + LayerNorm2d) and two stages; returns both stage maps."""

    def __init__(self, depths: tuple[int, int], in_chans: int = 3):
        super().__init__()
        d0, d1 = _CONVNEXT_DIMS
        # TAO's stem norm sees the stem conv's contiguous output (F.layer_norm, biased); every later one does not.
        self.stem = nn.Sequential(nn.Conv2d(in_chans, d0, 4, 4), LayerNorm2d(d0, eps=1e-6))
        self.stages = nn.Sequential(
            ConvNeXtStage(d0, d0, stride=1, depth=depths[0], ls_init_value=1e-6, conv_mlp=True,
                          norm_layer=LayerNorm2dUnbiased),
            ConvNeXtStage(d0, d1, stride=2, depth=depths[1], ls_init_value=1e-6, conv_mlp=True,
                          norm_layer=LayerNorm2dUnbiased),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class HybridEmbed(nn.Module):
    """ConvNeXt features -> 2x2 stride-2 conv -> tokens at stride 16."""

    def __init__(self, depths: tuple[int, int], embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.backbone = ConvNeXtEmbedBackbone(depths, in_chans)
        self.proj = nn.Conv2d(_CONVNEXT_DIMS[1], embed_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, list[torch.Tensor]]:
        feats = self.backbone(x)
        x = self.proj(feats[-1])
        return map_to_tokens(x), x.shape[-2], x.shape[-1], feats


class PositionalEncodingFourier(nn.Module):
    """Sine/cosine encoding of normalised (y, x) positions projected to ``dim`` by a 1x1 conv."""

    def __init__(self, hidden_dim: int = 32, dim: int = 768, temperature: float = 10000.0):
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.hidden_dim = hidden_dim
        self.temperature = temperature

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, dim) encoding (float32 maths, then the projection's dtype)."""
        dev = self.token_projection.weight.device
        scale, eps = 2 * math.pi, 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=dev) / (h + eps) * scale
        x = torch.arange(1, w + 1, dtype=torch.float32, device=dev) / (w + eps) * scale
        i = torch.arange(self.hidden_dim, dtype=torch.float32, device=dev)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.hidden_dim)

        def encode(p: torch.Tensor) -> torch.Tensor:  # interleave sin(even), cos(odd) frequencies
            p = p[:, None] / dim_t
            return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=2).flatten(1)

        pos = torch.cat([encode(y)[:, None, :].expand(h, w, -1), encode(x)[None, :, :].expand(h, w, -1)], -1)
        pos = pos.permute(2, 0, 1)[None].to(self.token_projection.weight.dtype)
        return map_to_tokens(self.token_projection(pos))


class TokenMixing(nn.Module):
    """Multi-head self-attention over all tokens (q and packed kv projections)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class DWConv(nn.Module):
    """depth-wise 3x3 -> GELU -> BatchNorm -> depth-wise 3x3, over the token grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return map_to_tokens(self.conv2(self.bn(self.act(self.conv1(tokens_to_map(x, h, w))))))


class ChannelMlp(nn.Module):
    """FAN's value MLP: fc1 -> x + gamma * DWConv(x) -> fc2 (no activation outside the DWConv)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.gamma = nn.Parameter(torch.ones(hidden_dim))
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        x = self.drop(self.gamma * self.dwconv(x, h, w)) + x
        return self.drop(self.fc2(x))


class ChannelProcessing(nn.Module):
    """Channel attention: per-head sigmoid(softmax(q)^T pooled softmax(k)) gates an MLP of the values."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = ChannelMlp(dim, mlp_hidden_dim, drop)
        self.norm_v = nn.LayerNorm(dim, eps=1e-5)  # TAO's block does not pass its eps-1e-6 norm layer down here
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)  # (B, heads, N, d)
        k = x.reshape(b, n, self.num_heads, -1).transpose(1, 2)
        # softmax over tokens; k is then averaged over its channels -> (B, heads, N, 1)
        k = k.softmax(-2).mean(-1, keepdim=True)
        attn = torch.sigmoid(q.softmax(-2).transpose(-1, -2) @ k) * self.temperature  # (B, heads, d, 1)
        attn = self.attn_drop(attn)
        v = self.norm_v(self.mlp_v(x, h, w)).reshape(b, n, self.num_heads, -1)  # (B, N, heads, d)
        return (v * attn.squeeze(-1)[:, None]).reshape(b, n, c)


class FANBlock(nn.Module):
    """x + gamma1 * TokenMixing(norm1(x)), then x + gamma2 * ChannelProcessing(norm2(x)), with DropPath."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, attn_drop: float,
                 drop_path: float, norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = TokenMixing(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ChannelProcessing(dim, num_heads, int(dim * mlp_ratio), attn_drop=attn_drop, drop=drop)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), h, w))


class ClassAttn(nn.Module):
    """Class attention (CaiT): only the class token queries; keys/values are all tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x[:, :1]).reshape(b, 1, self.num_heads, -1).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, 1, c)))


class ClassAttentionBlock(nn.Module):
    """FAN's class-attention block with ``tokens_norm=True`` (as TAO builds it).

    Patch tokens become 2 * norm2(x + gamma1 * norm1(x)); the class token gets attention and an MLP.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, attn_drop: float,
                 norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ClassAttn(dim, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm1 = self.norm1(x)
        x = x + self.gamma1 * torch.cat([self.attn(x_norm1), x_norm1[:, 1:]], dim=1)
        x = self.norm2(x)
        cls = self.gamma2 * self.mlp(x[:, :1])
        return x + torch.cat([cls, x[:, 1:]], dim=1)


class FANHybrid(FeatureMaps, nn.Module):
    """FAN hybrid encoder.

    forward(x: float NCHW) -> 4 NCHW maps: 128 ch @4, 256 ch @8, embed_dim @16, embed_dim @16 (or 768 @32
    with ``feat_downsample``).
    """

    def __init__(self, convnext_depths: tuple[int, int] = (3, 3), embed_dim: int = 384, depth: int = 10,
                 num_heads: int = 8, out_idx: int = 9, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, cls_attn_layers: int = 2,
                 feat_downsample: bool = False, in_chans: int = 3, **kwargs):
        super().__init__()
        kwargs.pop("num_classes", None)  # timm passes classifier args; the encoder has no classifier
        if kwargs:
            raise TypeError(f"unexpected FANHybrid arguments: {sorted(kwargs)}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.out_idx = out_idx
        self.feat_downsample = feat_downsample
        self.patch_embed = HybridEmbed(convnext_depths, embed_dim, in_chans)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = PositionalEncodingFourier(dim=embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            FANBlock(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate, norm_layer)
            for _ in range(depth))
        self.cls_attn_blocks = nn.ModuleList(
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, norm_layer)
            for _ in range(cls_attn_layers))
        last_dim, last_stride = embed_dim, 16
        if feat_downsample:
            self.learnable_downsample = nn.Conv2d(embed_dim, _DOWNSAMPLE_DIM, 3, stride=2, padding=1)
            last_dim, last_stride = _DOWNSAMPLE_DIM, 32
        self.feature_info = [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(
            (*_CONVNEXT_DIMS, embed_dim, last_dim), (4, 8, 16, last_stride),
            ("patch_embed.backbone.stages.0", "patch_embed.backbone.stages.1", f"blocks.{out_idx}",
             "cls_attn_blocks"))]
        self.num_features = last_dim
        self.apply(_init_weights)
        trunc_normal_(self.cls_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        x, h, w, outs = self.patch_embed(x)
        x = self.pos_drop(x + self.pos_embed(h, w))
        for i, blk in enumerate(self.blocks):
            x = blk(x, h, w)
            if i == self.out_idx:
                outs.append(tokens_to_map(x, h, w))
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        last = tokens_to_map(x[:, 1:], h, w)
        outs.append(self.learnable_downsample(last) if self.feat_downsample else last)
        return outs

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = True, **kwargs):
        """timm's feature-getter hook (``features_only=True``): the selected output maps, NCHW."""
        outs = self.forward(x)
        take = range(len(outs)) if indices is None else indices
        take = range(len(outs) - take, len(outs)) if isinstance(take, int) else take
        return [outs[i] for i in take]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear | nn.Conv2d):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _create_fan(variant: str, pretrained: bool = False, **kwargs) -> FANHybrid:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(FANHybrid, variant, pretrained,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
                                **dict(FAN_ARCHS[variant], **kwargs))


# No download URLs: weights are loaded from local files by ``segformer_tao.model.weights``.
default_cfgs = generate_default_cfgs({
    name: dict(url="", num_classes=0, input_size=(3, 512, 512), first_conv="patch_embed.backbone.stem.0",
               mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    for name in FAN_ARCHS
})


@register_model
def fan_tiny_8_p4_hybrid(pretrained: bool = False, **kwargs) -> FANHybrid:
    return _create_fan("fan_tiny_8_p4_hybrid", pretrained, **kwargs)


@register_model
def fan_small_12_p4_hybrid(pretrained: bool = False, **kwargs) -> FANHybrid:
    return _create_fan("fan_small_12_p4_hybrid", pretrained, **kwargs)


@register_model
def fan_base_16_p4_hybrid(pretrained: bool = False, **kwargs) -> FANHybrid:
    return _create_fan("fan_base_16_p4_hybrid", pretrained, **kwargs)


@register_model
def fan_large_16_p4_hybrid(pretrained: bool = False, **kwargs) -> FANHybrid:
    return _create_fan("fan_large_16_p4_hybrid", pretrained, **kwargs)
