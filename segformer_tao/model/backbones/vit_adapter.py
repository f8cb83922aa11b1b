"""ViT-Adapter (Chen et al. 2022, arXiv 2205.08534): a plain ViT turned into a 4-level pyramid for SegFormer.

A convolutional spatial prior (SPM) gives maps at strides 4/8/16/32. Four interaction blocks each inject the
SPM tokens into the ViT tokens (3-level deformable attention), run a slice of the ViT's blocks, then extract ViT
information back into the SPM tokens (1-level deformable attention + ConvFFN). The ViT maps of the four
interactions are resized onto the pyramid and added; each level ends in a BatchNorm. All four outputs have the
ViT's width D.

Module and parameter names are TAO 7.3's (``spm.stem.0``, ``interactions.3.extra_extractors.1.ffn.dwconv.dwconv``,
``level_embed``, ``up``, ``norm1..4``), so TAO's ViT SegFormer checkpoints load key for key. A family (NV-DINOv2,
DINOv3, NVCLIP; see ``vit.py``) subclasses :class:`ViTAdapter` and says how its ViT embeds patches and runs its
blocks; everything else is shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, trunc_normal_
from torch import nn

from segformer_tao.model.backbones.features import FeatureMaps
from segformer_tao.model.backbones.msda import MSDeformAttn

__all__ = ["ViTAdapter", "SpatialPriorModule", "InteractionBlock", "reference_points"]

_ADAPTER_PREFIXES = ("spm.", "interactions.", "up.", "norm1.", "norm2.", "norm3.", "norm4.")


def reference_points(shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of each map in row-major order, as (x, y) in [0, 1]: (1, sum(H*W), 1, 2)."""
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                              torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
        points.append(torch.stack([(x.flatten() + 0.5) / w, (y.flatten() + 0.5) / h], -1))
    return torch.cat(points)[None, :, None]


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatialPriorModule(nn.Module):
    """ResNet-style conv stem: maps at strides 4, 8, 16, 32 projected to ``embed_dim`` by 1x1 convs.

    forward(x (B, 3, H, W)) -> c1 (B, D, H/4, W/4) map, c2/c3/c4 (B, HW/64|256|1024, D) tokens.
    """

    def __init__(self, embed_dim: int, inplanes: int = 64):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(3, inplanes, 2), *_conv_bn_relu(inplanes, inplanes, 1),
                                  *_conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*_conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*_conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        tokens = [fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        return (self.fc1(c1), *tokens)


class DWConv(nn.Module):
    """3x3 depth-wise conv applied to each of the three SPM levels packed in one token sequence."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        b, _, c = x.shape
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([self.dwconv(p.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
                          for p, (h, w) in zip(parts, shapes)], dim=1)


class ConvFFN(nn.Module):
    """Linear -> depth-wise conv -> GELU -> Linear over the packed SPM tokens."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), shapes)))
        return self.drop(self.fc2(x))


class Extractor(nn.Module):
    """SPM tokens (query) attend to the ViT map (1 level), then a ConvFFN."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, cffn_ratio: float,
                 drop_path: float, precise: bool, norm_eps: float = 1e-6):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, 1, num_heads, n_points, deform_ratio, precise)
        self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor,
                feat_shapes: Sequence[tuple[int, int]], query_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), ref, self.feat_norm(feat), feat_shapes)
        return query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))


class Injector(nn.Module):
    """ViT tokens (query) attend to the three SPM levels; the result is added through a LayerScale."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, init_values: float,
                 precise: bool, norm_eps: float = 1e-6):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MSDeformAttn(dim, 3, num_heads, n_points, deform_ratio, precise)
        self.ls = LayerScale(dim, init_values=init_values)

    def forward(self, query: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor,
                feat_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        return query + self.ls(self.attn(self.query_norm(query), ref, self.feat_norm(feat), feat_shapes))


class InteractionBlock(nn.Module):
    """Inject -> run a slice of ViT blocks -> extract (twice more in the last block: ``extra_extractors``)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, deform_ratio: float, init_values: float,
                 cffn_ratio: float, drop_path: float, extra_extractor: bool, precise: bool,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, deform_ratio, init_values, precise, norm_eps)
        self.extractor = Extractor(dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path, precise, norm_eps)
        self.extra_extractors = nn.Sequential(*[
            Extractor(dim, num_heads, n_points, deform_ratio, cffn_ratio, drop_path, precise, norm_eps)
            for _ in range(2)
        ]) if extra_extractor else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, run_blocks: Callable[[torch.Tensor], torch.Tensor],
                num_prefix: int, vit_shape: tuple[int, int], spm_shapes: Sequence[tuple[int, int]],
                vit_ref: torch.Tensor, spm_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, P + h*w, D) ViT tokens with P prefix (cls/register) tokens that only the ViT blocks see;
        c: (B, sum of SPM level sizes, D). Returns both updated."""
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
        patches = self.injector(patches, vit_ref, c, spm_shapes)
        x = run_blocks(torch.cat([prefix, patches], dim=1) if num_prefix else patches)
        patches = x[:, num_prefix:]
        extractors = [self.extractor, *(self.extra_extractors or [])]
        for extractor in extractors:
            c = extractor(c, spm_ref, patches, [vit_shape], spm_shapes)
        return x, c


class ViTAdapter(FeatureMaps, nn.Module):
    """The adapter around a ViT. Subclasses set the ViT up and implement :meth:`embed` and :meth:`run_blocks`.

    forward(x (B, 3, H, W), H and W multiples of 32 and of the patch size) ->
    4 maps (B, D, H/4, W/4), (B, D, H/8, W/8), (B, D, H/16, W/16), (B, D, H/32, W/32).
    """

    def _build_adapter(self, embed_dim: int, patch_size: int, interaction_indexes: Sequence[Sequence[int]], *,
                       conv_inplane: int = 56, n_points: int = 4, deform_num_heads: int = 16,
                       init_values: float = 1e-5, cffn_ratio: float = 0.25, deform_ratio: float = 0.5,
                       drop_path_rate: float = 0.4, precise_msda: bool = False, norm_eps: float = 1e-6,
                       in_chans: int = 3, num_classes: int = 0) -> None:
        """Create the adapter modules (TAO's hyper-parameters are the defaults). Call after the ViT exists.

        ``in_chans``/``num_classes`` come from timm's model factory: a feature backbone takes RGB, has no head.
        """
        if in_chans != 3 or num_classes:
            raise ValueError(f"ViT-Adapter backbones take 3 channels and have no classifier "
                             f"(got in_chans={in_chans}, num_classes={num_classes})")
        self.embed_dim, self.patch_size = embed_dim, patch_size
        self.interaction_indexes = [list(i) for i in interaction_indexes]
        self.level_embed = nn.Parameter(torch.zeros(3, embed_dim))
        self.spm = SpatialPriorModule(embed_dim, conv_inplane)
        n = len(self.interaction_indexes)
        self.interactions = nn.Sequential(*[
            InteractionBlock(embed_dim, deform_num_heads, n_points, deform_ratio, init_values, cffn_ratio,
                             drop_path_rate, extra_extractor=i == n - 1, precise=precise_msda, norm_eps=norm_eps)
            for i in range(n)])
        self.up = nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.BatchNorm2d(embed_dim) for _ in range(4))
        self.feature_info = [dict(num_chs=embed_dim, reduction=r, module=f"norm{i + 1}")
                             for i, r in enumerate((4, 8, 16, 32))]
        self._vit_frozen = False
        nn.init.normal_(self.level_embed)
        for m in (self.spm, self.interactions, self.up, self.norm1, self.norm2, self.norm3, self.norm4):
            m.apply(_init_adapter_weights)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    # ---- what a ViT family provides
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int, tuple[int, int], object]:
        """Image -> (tokens (B, P + h*w, D), P prefix tokens, (h, w) patch grid, context for run_blocks)."""
        raise NotImplementedError

    def run_blocks(self, x: torch.Tensor, start: int, end: int, context: object) -> torch.Tensor:
        """Run ViT blocks ``start..end`` (inclusive) on the tokens."""
        raise NotImplementedError

    def convert_pretrained(self, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """A ViT checkpoint in its own layout (bare keys) -> (our backbone keys, keys dropped by design)."""
        return sd, []

    def fuse(self, levels: list[torch.Tensor], tokens: torch.Tensor) -> list[torch.Tensor]:
        """The four pyramid levels before their norms, given the last block's tokens (C-RADIO fuses its summary
        tokens here); plain ViT-Adapters use the levels as they are."""
        return levels

    @staticmethod
    def is_adapter_key(key: str) -> bool:
        """Whether a backbone state-dict key belongs to the adapter (not to the ViT)."""
        return key == "level_embed" or key.startswith(_ADAPTER_PREFIXES)

    def vit_parameters(self) -> list[nn.Parameter]:
        """The ViT's own parameters (what ``freeze_backbone`` freezes); the adapter's are the rest."""
        adapter = {id(p) for m in self._adapter_modules() for p in m.parameters()} | {id(self.level_embed)}
        return [p for p in self.parameters() if id(p) not in adapter]

    def _adapter_modules(self) -> list[nn.Module]:
        return [self.spm, self.interactions, self.up, self.norm1, self.norm2, self.norm3, self.norm4]

    # ---- shared
    def freeze_vit(self) -> None:
        """TAO's freeze_backbone for ViT-Adapters: the ViT is frozen (no grad, eval mode); the adapter trains."""
        self._vit_frozen = True
        for p in self.vit_parameters():
            p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ViTAdapter:
        super().train(mode)
        if self._vit_frozen:  # keep the frozen ViT's dropout/stochastic depth off
            adapter = {id(m) for a in self._adapter_modules() for m in a.modules()}
            for m in self.modules():
                if m is not self and id(m) not in adapter:
                    m.training = False
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        spm_shapes = [(height // s, width // s) for s in (8, 16, 32)]
        c1, c2, c3, c4 = self.spm(x)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        tokens, num_prefix, vit_shape, context = self.embed(x)
        vit_ref = reference_points([vit_shape], x.device)
        spm_ref = reference_points(spm_shapes, x.device)
        b, d = x.shape[0], self.embed_dim
        vit_maps = []
        for (start, end), layer in zip(self.interaction_indexes, self.interactions):
            tokens, c = layer(tokens, c, partial(self.run_blocks, start=start, end=end, context=context),
                              num_prefix, vit_shape, spm_shapes, vit_ref, spm_ref)
            vit_maps.append(tokens[:, num_prefix:].transpose(1, 2).reshape(b, d, *vit_shape))
        c2, c3, c4 = (t.transpose(1, 2).reshape(b, d, h, w)
                      for t, (h, w) in zip(c.split([h * w for h, w in spm_shapes], dim=1), spm_shapes))
        c1 = self.up(c2) + c1
        levels = [cmap + F.interpolate(vmap, size=cmap.shape[-2:], mode="bilinear", align_corners=False)
                  for cmap, vmap in zip((c1, c2, c3, c4), vit_maps)]
        levels = self.fuse(levels, tokens)
        return [norm(lvl) for norm, lvl in zip((self.norm1, self.norm2, self.norm3, self.norm4), levels)]

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = True, **kwargs) -> list[torch.Tensor]:
        """timm's feature-getter hook (``features_only=True``): the selected pyramid levels, NCHW."""
        outs = self.forward(x)
        take = range(4) if indices is None else indices
        take = range(4 - take, 4) if isinstance(take, int) else take
        return [outs[i] for i in take]


def _init_adapter_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
