"""C-RADIO (NVIDIA's agglomerative ViTs, NVlabs/RADIO) in a ViT-Adapter with summary-token fusion, as TAO builds it.

TAO's SegFormer builder accepts four names: ``c_radio_v2_vit_{base,large,huge}_patch16_224`` and
``c_radio_v3_vit_large_patch16_reg4_dinov2``. Each is a timm ViT (patch 16; v3 adds LayerScale) whose patch
embedding, class token and positions are replaced by RADIO's cropped-position-embedding patch generator:

- patches are flattened (channel, row, column) and embedded by one bias-free Linear (``embedder``);
- a learned position table covers ``cpe_max_size`` pixels (2048: a 128 x 128 grid). In eval mode it is resized
  (bilinear, corners aligned) to a square of the larger grid side and its top-left ``h x w`` window is used;
  in training mode each image gets a random crop of it (scale 0.1-1, aspect 3/4-4/3, ``grid_sample``) and, with
  probability 0.1, no positions at all (TAO's ``pos_dropout``);
- ``num_teacher`` = 4 summary tokens plus registers up to a multiple of 8 (4 more) are prepended: 8 prefix tokens
  that run through every block.

The adapter is the shared :class:`ViTAdapter` (its LayerNorms use PyTorch's default eps 1e-5 here, as TAO's
RADIO adapter does). Before the output norms, the 8 prefix tokens of the last block are flattened, projected by
``fc_summary`` and concatenated to every level, and a 1x1 conv (``conv1..4``) brings each level back to D
channels.

State-dict names are TAO's: the ViT lives under ``radio.radio.model.`` (``patch_generator.embedder``,
``patch_generator.pos_embed``, ``patch_generator.cls_token.token``, ``blocks.N``), the adapter at the top level.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models import VisionTransformer
from torch import nn

from segformer_tao.model.backbones.vit_adapter import ViTAdapter, _init_adapter_weights

__all__ = ["RADIO_ARCHS", "RadioAdapter", "CPEPatchGenerator"]

_VIT_PREFIX = "radio.radio.model."
_SUMMARY_PREFIXES = ("fc_summary.", "conv1.", "conv2.", "conv3.", "conv4.")

RADIO_ARCHS: dict[str, dict] = {
    "c_radio_v2_vit_base_patch16_224": dict(
        family="radio", patch_size=16, embed_dim=768, depth=12, num_heads=12,
        interaction_indexes=((0, 2), (3, 5), (6, 8), (9, 11))),
    "c_radio_v2_vit_large_patch16_224": dict(
        family="radio", patch_size=16, embed_dim=1024, depth=24, num_heads=16,
        interaction_indexes=((0, 5), (6, 11), (12, 17), (18, 23))),
    "c_radio_v2_vit_huge_patch16_224": dict(
        family="radio", patch_size=16, embed_dim=1280, depth=32, num_heads=16,
        interaction_indexes=((0, 7), (8, 15), (16, 23), (24, 31))),
    "c_radio_v3_vit_large_patch16_reg4_dinov2": dict(
        family="radio", patch_size=16, embed_dim=1024, depth=24, num_heads=16, layer_scale=1e-5,
        interaction_indexes=((0, 5), (6, 11), (12, 17), (18, 23))),
}


class SummaryTokens(nn.Module):
    """``num_tokens`` summary (teacher) tokens plus registers up to a multiple of ``register_multiple``."""

    def __init__(self, dim: int, num_tokens: int = 4, register_multiple: int = 8):
        super().__init__()
        self.num_tokens = num_tokens
        self.num_registers = register_multiple - num_tokens % register_multiple if register_multiple else 0
        self.token = nn.Parameter(torch.randn(num_tokens + self.num_registers, dim) * dim ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.unsqueeze(0).expand(x.shape[0], -1, -1), x], dim=1)


class CPEPatchGenerator(nn.Module):
    """Image (B, 3, H, W) -> tokens (B, prefix + (H/p)(W/p), D): RADIO's patch embedding with cropped positions.

    ``img_size`` is the size the model is configured for: the position table is used as-is when the table's grid
    equals it (no CPE), else cropped as described in the module docstring.
    """

    def __init__(self, patch_size: int, embed_dim: int, img_size: int, cpe_max_size: int = 2048,
                 num_summary: int = 4, register_multiple: int = 8, pos_dropout: float = 0.1):
        super().__init__()
        max_size = int(round(cpe_max_size / patch_size) * patch_size)
        self.patch_size, self.pos_dropout = patch_size, pos_dropout
        self.num_rows = self.num_cols = max_size // patch_size
        self.cpe_mode = max_size != img_size
        self.embedder = nn.Linear(3 * patch_size ** 2, embed_dim, bias=False)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_rows * self.num_cols, embed_dim) * embed_dim ** -0.5)
        self.cls_token = SummaryTokens(embed_dim, num_summary, register_multiple)
        self.num_prefix = num_summary + self.cls_token.num_registers

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, (H/p)(W/p), C*p*p), each patch flattened channel, then row, then column."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def positions(self, batch: int, grid: tuple[int, int]) -> torch.Tensor:
        """The position encodings for an ``grid`` = (h, w) patch grid: (1 or B, h*w, D)."""
        if (self.num_rows, self.num_cols) == grid:
            return self.pos_embed
        table = self.pos_embed.reshape(1, self.num_rows, self.num_cols, -1).permute(0, 3, 1, 2)
        if self.cpe_mode and self.training:
            table = self._random_crop(table, batch, grid)
        else:
            if self.cpe_mode:
                side = max(grid)
                table = F.interpolate(table.float(), size=(side, side), mode="bilinear",
                                      align_corners=True).to(table.dtype)
            table = table[..., :grid[0], :grid[1]]
        if tuple(table.shape[-2:]) != grid:  # the table is smaller than the grid
            table = F.interpolate(table.float(), size=grid, mode="bilinear", align_corners=True).to(table.dtype)
        return table.flatten(2).transpose(1, 2)

    def _random_crop(self, table: torch.Tensor, batch: int, grid: tuple[int, int]) -> torch.Tensor:
        """A random window of the table per image (RADIO's training-time CPE): area 10-100 %, aspect 3/4-4/3."""
        dev = table.device
        min_scale = math.sqrt(0.1)
        scale = torch.rand(batch, 1, 1, device=dev) * (1 - min_scale) + min_scale
        log_aspect = math.log(4 / 3)
        aspect = torch.exp(torch.rand(batch, 1, 1, device=dev) * 2 * log_aspect - log_aspect)
        scale_xy = torch.stack([scale * aspect, scale / aspect], dim=-1).clamp(0, 1)
        offset = torch.rand(batch, 1, 1, 2, device=dev) * (1 - scale_xy)
        ys, xs = torch.meshgrid(torch.linspace(0, 1, grid[0], device=dev), torch.linspace(0, 1, grid[1], device=dev),
                                indexing="ij")
        unit = torch.stack([xs, ys], dim=-1)[None].expand(batch, -1, -1, -1)
        coords = (unit * scale_xy + offset) * 2 - 1
        return F.grid_sample(table.float().expand(batch, -1, -1, -1), coords, mode="bilinear",
                             padding_mode="zeros", align_corners=True).to(table.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.embedder(self.patches(x))
        pos = self.positions(x.shape[0], grid)
        if self.training and self.pos_dropout > 0:
            keep = torch.rand(x.shape[0], 1, 1, device=x.device) > self.pos_dropout
            pos = torch.where(keep, pos, torch.zeros((), dtype=pos.dtype, device=pos.device))
        return self.cls_token(tokens + pos)


class _RadioViT(nn.Module):
    """The ViT: the patch generator and timm's blocks (TAO replaces timm's final norm and head by identities)."""

    def __init__(self, patch_generator: CPEPatchGenerator, blocks: nn.Sequential):
        super().__init__()
        self.patch_generator, self.blocks = patch_generator, blocks


class RadioAdapter(ViTAdapter):
    """C-RADIO ViT-Adapter: ``radio.radio.model`` (the ViT) + the shared adapter + summary fusion."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, layer_scale: float | None = None,
                 interaction_indexes=((0, 2), (3, 5), (6, 8), (9, 11)), cpe_max_size: int = 2048,
                 num_summary: int = 4, register_multiple: int = 8, add_summary: bool = True,
                 precise_msda: bool = False, **adapter_kwargs):
        super().__init__()
        timm_vit = VisionTransformer(img_size=224, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                     num_heads=num_heads, init_values=layer_scale, class_token=False,
                                     global_pool="", num_classes=0, weight_init="skip")
        generator = CPEPatchGenerator(patch_size, embed_dim, img_size, cpe_max_size, num_summary, register_multiple)
        self.radio = nn.Module()
        self.radio.radio = nn.Module()
        self.radio.radio.model = _RadioViT(generator, timm_vit.blocks)
        self.num_summary = generator.num_prefix
        self.add_summary = add_summary
        # TAO's RADIO adapter: no stochastic depth, PyTorch's LayerNorm eps (1e-5)
        self._build_adapter(embed_dim, patch_size, interaction_indexes, drop_path_rate=0.0, norm_eps=1e-5,
                            precise_msda=precise_msda, **adapter_kwargs)
        if add_summary:
            self.fc_summary = nn.Linear(self.num_summary * embed_dim, embed_dim)
            self.conv1, self.conv2, self.conv3, self.conv4 = (nn.Conv2d(2 * embed_dim, embed_dim, 1)
                                                              for _ in range(4))
            for m in (self.conv1, self.conv2, self.conv3, self.conv4):
                m.apply(_init_adapter_weights)

    @property
    def vit(self) -> _RadioViT:
        return self.radio.radio.model

    def embed(self, x: torch.Tensor):
        tokens = self.vit.patch_generator(x)
        return tokens, self.num_summary, (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size), None

    def run_blocks(self, x: torch.Tensor, start: int, end: int, context: object) -> torch.Tensor:
        for blk in self.vit.blocks[start:end + 1]:
            x = blk(x)
        return x

    def fuse(self, levels: list[torch.Tensor], tokens: torch.Tensor) -> list[torch.Tensor]:
        """Summary fusion: the last block's prefix tokens, flattened and projected, joined to every level."""
        if not self.add_summary:
            return levels
        summary = self.fc_summary(tokens[:, :self.num_summary].flatten(1))[:, :, None, None]
        return [conv(torch.cat([summary.expand(-1, -1, *lvl.shape[-2:]), lvl], dim=1))
                for conv, lvl in zip((self.conv1, self.conv2, self.conv3, self.conv4), levels)]

    def is_adapter_key(self, key: str) -> bool:
        return ViTAdapter.is_adapter_key(key) or key.startswith(_SUMMARY_PREFIXES)

    def _adapter_modules(self) -> list[nn.Module]:
        summary = [self.fc_summary, self.conv1, self.conv2, self.conv3, self.conv4] if self.add_summary else []
        return super()._adapter_modules() + summary

    def convert_pretrained(self, sd):
        """RADIO's published weights -> ``radio.radio.model.*``.

        Accepts NVlabs/RADIO's torch.hub checkpoints (``base_model.*``), Hugging Face's ``nvidia/C-RADIO*``
        safetensors (``radio_model.model.*``), TAO's RADIO classifier (``radio.radio.model.*``) and bare timm-style
        keys. The v3 files' ``grandma`` typo is read as ``gamma``. A position table of another grid is resized
        (bicubic, corners aligned) and a patch kernel of another size likewise. Everything else RADIO ships
        (input conditioner, summary indexes, teacher adaptors, the final norm, heads) has no place in the
        SegFormer backbone and is returned as dropped. A TAO SegFormer backbone (adapter keys present) passes as-is.
        """
        if any(self.is_adapter_key(k) for k in sd):
            return sd, []
        out, dropped = {}, []
        for key, value in sd.items():
            bare = key
            for prefix in ("radio_model.model.", "base_model.", _VIT_PREFIX, "model."):
                if bare.startswith(prefix):
                    bare = bare[len(prefix):]
                    break
            if not bare.startswith(("patch_generator.", "blocks.")):
                dropped.append(key)
                continue
            out[_VIT_PREFIX + bare.replace(".grandma", ".gamma")] = value
        gen = self.vit.patch_generator
        pos = out.get(_VIT_PREFIX + "patch_generator.pos_embed")
        if pos is not None and pos.shape != gen.pos_embed.shape:
            side = math.isqrt(pos.shape[1])
            if side * side != pos.shape[1] or pos.shape[-1] != gen.pos_embed.shape[-1]:
                raise ValueError(f"patch_generator.pos_embed {tuple(pos.shape)} is not a square grid of width "
                                 f"{gen.pos_embed.shape[-1]}")
            grid = pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gen.num_rows, gen.num_cols), mode="bicubic", align_corners=True)
            out[_VIT_PREFIX + "patch_generator.pos_embed"] = grid.flatten(2).transpose(1, 2)
        kernel = out.get(_VIT_PREFIX + "patch_generator.embedder.weight")
        if kernel is not None and kernel.shape != gen.embedder.weight.shape:
            src = math.isqrt(kernel.shape[1] // 3)
            if 3 * src * src != kernel.shape[1]:
                raise ValueError(f"patch_generator.embedder.weight {tuple(kernel.shape)} is not a square patch")
            kernel = F.interpolate(kernel.float().reshape(-1, 3, src, src), size=(self.patch_size,) * 2,
                                   mode="bicubic", align_corners=True)
            out[_VIT_PREFIX + "patch_generator.embedder.weight"] = kernel.flatten(1)
        return out, dropped
