"""TAO 7.3's nine ViT and four C-RADIO backbones for SegFormer, each a :class:`ViTAdapter` around a ViT (timm).

Families (their state-dict layouts are TAO's, so TAO checkpoints load key for key):

- NV-DINOv2 (``vit_large_nvdinov2``, ``vit_giant_nvdinov2``): NVIDIA's DINOv2 sizes, a timm ``VisionTransformer``
  with a packed SwiGLU MLP (hidden 5472 / 8192) and no LayerScale. As in TAO the adapter *is* the ViT, so its
  keys are top level (``patch_embed.proj``, ``pos_embed``, ``blocks.N``, ``norm``); the class token is dropped
  (only patch tokens enter the blocks) but its slot stays in ``pos_embed`` (1 + (img_size / patch)^2 rows).
  TAO quirk kept: the giant model's interactions cover blocks 0-23 only, so blocks 24-39 exist but never run.
- DINOv3 (``vit_{small,small_plus,base,large,huge_plus}_dinov3``): timm's ``vit_*_patch16_dinov3`` (``Eva``, RoPE,
  cls + 4 register tokens kept through the blocks) under ``vit.``.
- NVCLIP SigLIP (``vit_base_nvclip_16_siglip``, ``vit_huge_nvclip_14_siglip``): open_clip's vision tower under
  ``model.visual.`` (optional extra ``segformer_tao[nvclip]``). TAO also builds the text tower, which segmentation
  never runs; we do not, and loading a TAO checkpoint lists its ``model.text``/``model.transformer`` keys as
  ignored.

- C-RADIO (``c_radio_v2_vit_{base,large,huge}_patch16_224``, ``c_radio_v3_vit_large_patch16_reg4_dinov2``): see
  ``radio.py``; the ViT under ``radio.radio.model.``, summary-token fusion after the adapter.

Image sides must be multiples of 32 (the adapter's pyramid) and of the patch size: multiples of 224 for the two
patch-14 models.
"""

from __future__ import annotations

import math
from functools import partial

import timm
import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, SwiGLUPacked
from timm.models import VisionTransformer, build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from segformer_tao.model.backbones.radio import RADIO_ARCHS, RadioAdapter
from segformer_tao.model.backbones.vit_adapter import ViTAdapter

__all__ = ["VIT_ARCHS", "NVDinoV2Adapter", "DinoV3Adapter", "NVClipAdapter", "img_size_problem"]

_QUARTERS_12 = ((0, 2), (3, 5), (6, 8), (9, 11))
_QUARTERS_24 = ((0, 5), (6, 11), (12, 17), (18, 23))
_QUARTERS_32 = ((0, 7), (8, 15), (16, 23), (24, 31))

VIT_ARCHS: dict[str, dict] = {
    "vit_large_nvdinov2": dict(family="nvdinov2", patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                               mlp_ratio=5472 / 1024, interaction_indexes=_QUARTERS_24),
    "vit_giant_nvdinov2": dict(family="nvdinov2", patch_size=14, embed_dim=1536, depth=40, num_heads=24,
                               mlp_ratio=8192 / 1536, interaction_indexes=_QUARTERS_24),
    "vit_small_dinov3": dict(family="dinov3", patch_size=16, embed_dim=384, depth=12,
                             timm_name="vit_small_patch16_dinov3", interaction_indexes=_QUARTERS_12),
    "vit_small_plus_dinov3": dict(family="dinov3", patch_size=16, embed_dim=384, depth=12,
                                  timm_name="vit_small_plus_patch16_dinov3", interaction_indexes=_QUARTERS_12),
    "vit_base_dinov3": dict(family="dinov3", patch_size=16, embed_dim=768, depth=12,
                            timm_name="vit_base_patch16_dinov3", interaction_indexes=_QUARTERS_12),
    "vit_large_dinov3": dict(family="dinov3", patch_size=16, embed_dim=1024, depth=24,
                             timm_name="vit_large_patch16_dinov3", interaction_indexes=_QUARTERS_24),
    "vit_huge_plus_dinov3": dict(family="dinov3", patch_size=16, embed_dim=1280, depth=32,
                                 timm_name="vit_huge_plus_patch16_dinov3", interaction_indexes=_QUARTERS_32),
    "vit_base_nvclip_16_siglip": dict(family="nvclip", patch_size=16, embed_dim=768, depth=12,
                                      clip_name="ViT-B-16-SigLIP", interaction_indexes=_QUARTERS_12),
    "vit_huge_nvclip_14_siglip": dict(family="nvclip", patch_size=14, embed_dim=1280, depth=32,
                                      clip_name="ViT-H-14-SigLIP-CLIPA-224", interaction_indexes=_QUARTERS_32),
    **RADIO_ARCHS,  # C-RADIO: see radio.py
}


def img_size_problem(name: str, img_size: int) -> str | None:
    """Why backbone ``name`` cannot take square images of ``img_size`` pixels, or None when it can."""
    patch = VIT_ARCHS[name]["patch_size"]
    step = math.lcm(32, patch)
    if img_size % step == 0:
        return None
    lower, upper = max(step, img_size // step * step), (img_size // step + 1) * step
    why = "32 for the ViT-Adapter's stride-32 level" + ("" if step == 32 else f" and {patch} for its patch size")
    return f"{name} needs an image size that is a multiple of {step} ({why}), e.g. {lower} or {upper}"


def _resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(1, gh*gw, D) learned positions -> (1, h*w, D), bicubic (TAO resizes this way, without antialiasing)."""
    if tuple(grid) == tuple(size):
        return pos
    pos = pos.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=size, mode="bicubic", align_corners=False)
    return pos.flatten(2).transpose(1, 2)


class NVDinoV2Adapter(ViTAdapter):
    """NV-DINOv2 ViT-Adapter; the ViT's modules live at the top level, as in TAO (see module docstring)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 5472 / 1024, interaction_indexes=_QUARTERS_24,
                 drop_path_rate: float = 0.4, precise_msda: bool = False, **adapter_kwargs):
        super().__init__()
        vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, drop_path_rate=drop_path_rate,
            embed_layer=partial(PatchEmbed, strict_img_size=False), global_pool="", num_classes=0, reg_tokens=0)
        # ``norm`` is never run (the adapter has its own output norms) but is part of TAO's checkpoints
        self.patch_embed, self.pos_embed, self.blocks, self.norm = vit.patch_embed, vit.pos_embed, vit.blocks, vit.norm
        self._build_adapter(embed_dim, patch_size, interaction_indexes, drop_path_rate=drop_path_rate,
                            precise_msda=precise_msda, **adapter_kwargs)

    def convert_pretrained(self, sd):
        """NV-DINOv2 / timm-layout ViT weights: positions resized to this model's grid (bicubic, class row kept),
        patch kernel resized to this patch size (e.g. 14 -> 16, as TAO does). Class/register/mask tokens and
        LayerScale gammas have no place in TAO's architecture and are dropped (TAO drops them too)."""
        drop = [k for k in sd if k in ("cls_token", "reg_token", "register_tokens", "mask_token")
                or ".ls1." in k or ".ls2." in k or k.startswith("head.")]
        sd = {k: v for k, v in sd.items() if k not in drop}
        kernel = sd.get("patch_embed.proj.weight")
        if kernel is not None and kernel.shape[-1] != self.patch_size:
            sd["patch_embed.proj.weight"] = F.interpolate(kernel.float(), size=(self.patch_size,) * 2,
                                                          mode="bicubic", align_corners=False)
        pos = sd.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape:
            n = pos.shape[1] - 1  # row 0 is the class token's; an odd count means registers share the table
            side = int(n ** 0.5)
            if side * side != n:
                raise ValueError(f"pos_embed with {pos.shape[1]} rows is not 1 + a square grid")
            grid = _resize_pos_embed(pos[:, 1:].float(), (side, side), self.patch_embed.grid_size)
            sd["pos_embed"] = torch.cat([pos[:, :1].float(), grid], dim=1)
        return sd, drop

    def embed(self, x: torch.Tensor):
        tokens = self.patch_embed(x)
        size = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        # row 0 of pos_embed belongs to the class token, which this model does not use
        return tokens + _resize_pos_embed(self.pos_embed[:, 1:], self.patch_embed.grid_size, size), 0, size, None

    def run_blocks(self, x: torch.Tensor, start: int, end: int, context: object) -> torch.Tensor:
        for blk in self.blocks[start:end + 1]:
            x = blk(x)
        return x


class DinoV3Adapter(ViTAdapter):
    """DINOv3 ViT-Adapter around timm's ``Eva`` (under ``vit.``); RoPE is recomputed for each input size."""

    def __init__(self, timm_name: str = "vit_small_patch16_dinov3", img_size: int = 224,
                 interaction_indexes=_QUARTERS_12, precise_msda: bool = False, vit_kwargs: dict | None = None,
                 **adapter_kwargs):
        super().__init__()
        self.vit = timm.create_model(timm_name, pretrained=False, img_size=img_size, **(vit_kwargs or {}))
        self._build_adapter(self.vit.embed_dim, self.vit.patch_embed.patch_size[0], interaction_indexes,
                            precise_msda=precise_msda, **adapter_kwargs)

    def convert_pretrained(self, sd):
        """timm (``vit_*_patch16_dinov3``) or Meta's original DINOv3 weights -> ``vit.*`` (timm's own converter)."""
        if any(k.startswith("vit.") for k in sd):
            return sd, []
        from timm.models.eva import checkpoint_filter_fn

        hf_dropped = []
        if any(k.startswith("embeddings.") for k in sd):
            sd, hf_dropped = _dinov3_from_hf(sd)

        converted = checkpoint_filter_fn(sd, self.vit)
        drop = [k for k in converted if k.startswith("head.")]
        return {f"vit.{k}": v for k, v in converted.items() if k not in drop}, drop + hf_dropped

    def embed(self, x: torch.Tensor):
        feat = self.vit.patch_embed(x)  # (B, h, w, D): timm builds DINOv3 with a dynamic image size
        tokens, rope = self.vit._pos_embed(feat)  # prepends cls + register tokens, RoPE for this grid
        return self.vit.norm_pre(tokens), self.vit.num_prefix_tokens, tuple(feat.shape[1:3]), rope

    def run_blocks(self, x: torch.Tensor, start: int, end: int, context: object) -> torch.Tensor:
        for blk in self.vit.blocks[start:end + 1]:
            x = blk(x, rope=context)
        return x


_HF_DINOV3_RENAMES = (
    ("embeddings.cls_token", "cls_token"), ("embeddings.register_tokens", "reg_token"),
    ("embeddings.patch_embeddings.", "patch_embed.proj."), ("layer.", "blocks."), (".attention.o_proj.", ".attn.proj."),
    (".layer_scale1.lambda1", ".gamma_1"), (".layer_scale2.lambda1", ".gamma_2"), (".mlp.down_proj.", ".mlp.fc2."),
)


def _dinov3_from_hf(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Hugging Face ``DINOv3ViTModel`` keys -> timm ``Eva`` keys (q/k/v fused; gated MLPs as fc1_g/fc1_x).

    timm's DINOv3 models have no q/v biases (``*_qkvb`` variants do): biases that are not all zero cannot be
    represented and raise ValueError.
    """
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    gated = any(".mlp.gate_proj." in k for k in sd)
    out, dropped = {}, [k for k in sd if k == "embeddings.mask_token"]
    for k, v in sd.items():
        if k in dropped or ".attention.q_proj." in k or ".attention.k_proj." in k or ".attention.v_proj." in k:
            continue
        for old, new in _HF_DINOV3_RENAMES:
            k = k.replace(old, new) if old.startswith(".") else (new + k[len(old):] if k.startswith(old) else k)
        k = k.replace(".mlp.up_proj.", ".mlp.fc1_x." if gated else ".mlp.fc1.")
        k = k.replace(".mlp.gate_proj.", ".mlp.fc1_g.")
        out[k] = v
    for q in [k for k in sd if k.endswith(".attention.q_proj.weight")]:
        base = q[:-len("q_proj.weight")]
        block = "blocks." + base[len("layer."):-len("attention.")]
        out[f"{block}attn.qkv.weight"] = torch.cat([sd[f"{base}{n}_proj.weight"] for n in "qkv"])
        for n in "qkv":
            bias = sd.get(f"{base}{n}_proj.bias")
            if bias is not None and bias.abs().max() > 0:
                raise ValueError(f"{base}{n}_proj.bias is not zero, but timm's DINOv3 has no attention biases")
            if bias is not None:
                dropped.append(f"{base}{n}_proj.bias")
    return out, dropped


class NVClipAdapter(ViTAdapter):
    """NVCLIP SigLIP ViT-Adapter around open_clip's vision tower (under ``model.visual.``)."""

    def __init__(self, clip_name: str = "ViT-B-16-SigLIP", img_size: int = 224, interaction_indexes=_QUARTERS_12,
                 precise_msda: bool = False, vision_overrides: dict | None = None, **adapter_kwargs):
        super().__init__()
        from segformer_tao.model.backbones.nvclip import build_vision_tower

        self.model = nn.Module()
        self.model.visual, self._timm = build_vision_tower(clip_name, vision_overrides or {})
        if self._timm:
            trunk = self.model.visual.trunk
            embed_dim, patch_size = trunk.embed_dim, trunk.patch_embed.patch_size[0]
        else:
            embed_dim, patch_size = self.model.visual.transformer.width, self.model.visual.patch_size[0]
        self._build_adapter(embed_dim, patch_size, interaction_indexes, precise_msda=precise_msda, **adapter_kwargs)

    def convert_pretrained(self, sd):
        """open_clip CLIP weights (``visual.*`` + text tower) -> ``model.visual.*``; the text tower is dropped."""
        if any(k.startswith("model.") for k in sd):
            return sd, []
        drop = [k for k in sd if not k.startswith("visual.")]
        return {f"model.{k}": v for k, v in sd.items() if k not in drop}, drop

    def embed(self, x: torch.Tensor):
        size = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        visual = self.model.visual
        if self._timm:
            trunk = visual.trunk
            tokens = trunk.patch_embed(x)
            pos = _resize_pos_embed(trunk.pos_embed[:, trunk.num_prefix_tokens:], trunk.patch_embed.grid_size, size)
            return tokens + pos, 0, size, None
        tokens = visual.conv1(x).flatten(2).transpose(1, 2)
        pos = _resize_pos_embed(visual.positional_embedding[None, 1:], visual.grid_size, size)
        return visual.ln_pre(tokens + pos), 0, size, None

    def run_blocks(self, x: torch.Tensor, start: int, end: int, context: object) -> torch.Tensor:
        visual = self.model.visual
        blocks = visual.trunk.blocks if self._timm else visual.transformer.resblocks
        for blk in blocks[start:end + 1]:
            x = blk(x)
        return x


_FAMILIES = {"nvdinov2": NVDinoV2Adapter, "dinov3": DinoV3Adapter, "nvclip": NVClipAdapter, "radio": RadioAdapter}
# arch-table keys that describe a variant but are not constructor arguments
_INFO_ONLY = {"nvdinov2": ("family",), "dinov3": ("family", "patch_size", "embed_dim", "depth"),
              "nvclip": ("family", "patch_size", "embed_dim", "depth"), "radio": ("family",)}


def _create_vit(variant: str, pretrained: bool = False, **kwargs) -> ViTAdapter:
    """Build ``variant``; keyword arguments override the arch table (tests shrink ``depth`` this way)."""
    arch = dict(VIT_ARCHS[variant])
    family = arch["family"]
    args = {k: v for k, v in arch.items() if k not in _INFO_ONLY[family]}
    if family == "dinov3" and "depth" in kwargs:
        kwargs.setdefault("vit_kwargs", {})["depth"] = kwargs.pop("depth")
    if family == "nvclip" and "depth" in kwargs:
        kwargs.setdefault("vision_overrides", {})["layers"] = kwargs.pop("depth")
    kwargs.pop("out_indices", None)
    return build_model_with_cfg(_FAMILIES[family], variant, pretrained,
                                feature_cfg=dict(feature_cls="getter"), **dict(args, **kwargs))


# No download URLs: weights are loaded from local files by ``segformer_tao.model.weights``.
default_cfgs = generate_default_cfgs({
    name: dict(url="", num_classes=0, input_size=(3, 224, 224), first_conv="spm.stem.0") for name in VIT_ARCHS
})


@register_model
def vit_large_nvdinov2(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_large_nvdinov2", pretrained, **kwargs)


@register_model
def vit_giant_nvdinov2(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_giant_nvdinov2", pretrained, **kwargs)


@register_model
def vit_small_dinov3(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_small_dinov3", pretrained, **kwargs)


@register_model
def vit_small_plus_dinov3(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_small_plus_dinov3", pretrained, **kwargs)


@register_model
def vit_base_dinov3(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_base_dinov3", pretrained, **kwargs)


@register_model
def vit_large_dinov3(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_large_dinov3", pretrained, **kwargs)


@register_model
def vit_huge_plus_dinov3(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_huge_plus_dinov3", pretrained, **kwargs)


@register_model
def vit_base_nvclip_16_siglip(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_base_nvclip_16_siglip", pretrained, **kwargs)


@register_model
def vit_huge_nvclip_14_siglip(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("vit_huge_nvclip_14_siglip", pretrained, **kwargs)


@register_model
def c_radio_v2_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("c_radio_v2_vit_base_patch16_224", pretrained, **kwargs)


@register_model
def c_radio_v2_vit_large_patch16_224(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("c_radio_v2_vit_large_patch16_224", pretrained, **kwargs)


@register_model
def c_radio_v2_vit_huge_patch16_224(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("c_radio_v2_vit_huge_patch16_224", pretrained, **kwargs)


@register_model
def c_radio_v3_vit_large_patch16_reg4_dinov2(pretrained: bool = False, **kwargs) -> ViTAdapter:
    return _create_vit("c_radio_v3_vit_large_patch16_reg4_dinov2", pretrained, **kwargs)
