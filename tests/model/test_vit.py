"""ViT-Adapter backbones: ViT stream vs timm, output pyramid of all nine names, image-size errors, freezing.

The big models (hundreds of millions to >1B parameters) are checked at their real configuration on the ``meta``
device (shapes only, nothing allocated); numerical checks use the real widths with fewer blocks.
"""

from __future__ import annotations

import sys
from functools import partial

import pytest
import timm
import torch
from omegaconf import OmegaConf
from timm.layers import PatchEmbed, SwiGLUPacked
from timm.models import VisionTransformer
from torch import nn

from segformer_tao.errors import UserError
from segformer_tao.model import build_model
from segformer_tao.model.backbones.vit import VIT_ARCHS

NVCLIP = ("vit_base_nvclip_16_siglip", "vit_huge_nvclip_14_siglip")


def _vit_maps(model, x):
    """Run the adapter's forward and capture the ViT tokens each interaction block hands on, as NCHW maps."""
    maps = []
    hooks = [blk.register_forward_hook(lambda m, i, o: maps.append(o[0])) for blk in model.interactions]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return maps


def _injection_off(model):
    with torch.no_grad():
        for blk in model.interactions:
            blk.injector.ls.gamma.zero_()


def test_dinov3_vit_stream_equals_timm_forward_intermediates():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_dinov3", img_size=64).eval()
    _injection_off(model)
    reference = timm.create_model("vit_small_patch16_dinov3").eval()
    vit_sd = {k[len("vit."):]: v for k, v in model.state_dict().items() if k.startswith("vit.")}
    reference.load_state_dict(vit_sd)  # strict: our ``vit.`` is timm's model, key for key
    x = torch.randn(2, 3, 64, 96)  # non-square: 4 x 6 patches
    ours = _vit_maps(model, x)
    with torch.no_grad():
        want = reference.forward_intermediates(x, indices=[2, 5, 8, 11], norm=False, intermediates_only=True)
    for got, ref in zip(ours, want, strict=True):
        got = got[:, 5:].transpose(1, 2).reshape(ref.shape)  # drop cls + 4 register tokens
        assert (got - ref).abs().max().item() <= 1e-6


def test_nvdinov2_vit_stream_equals_timm_forward_intermediates():
    """NV-DINOv2-L's real width, MLP and patch size with 4 blocks; reference: timm's ViT without a class token."""
    torch.manual_seed(0)
    model = timm.create_model("vit_large_nvdinov2", img_size=64, depth=4,
                              interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]).eval()
    _injection_off(model)
    reference = VisionTransformer(
        img_size=64, patch_size=16, embed_dim=1024, depth=4, num_heads=16, mlp_ratio=5472 / 1024,
        mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, embed_layer=partial(PatchEmbed, strict_img_size=False),
        global_pool="", num_classes=0, class_token=False).eval()
    sd = {k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed.", "blocks.", "norm."))}
    sd["pos_embed"] = model.pos_embed[:, 1:]  # TAO's model keeps the class-token row but never uses it
    reference.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    ours = _vit_maps(model, x)
    with torch.no_grad():
        want = reference.forward_intermediates(x, indices=[0, 1, 2, 3], norm=False, intermediates_only=True)
    assert model.blocks[0].mlp.fc1.out_features == 5472 and model.blocks[0].ls1.__class__ is nn.Identity
    for got, ref in zip(ours, want, strict=True):
        assert (got.transpose(1, 2).reshape(ref.shape) - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", list(VIT_ARCHS))
def test_pyramid_shapes_and_strides_at_real_size(name):
    if name in NVCLIP:
        pytest.importorskip("open_clip", reason="NVCLIP backbones need the nvclip extra (open_clip_torch)")
    arch = VIT_ARCHS[name]
    sizes = (224, 448) if arch["patch_size"] == 14 else (128, 192)
    for size in sizes:
        with torch.device("meta"):  # real configuration, no memory: the giant model has 1.2B parameters
            model = timm.create_model(name, img_size=size)
            outs = model(torch.empty(2, 3, size, size))
        d = arch["embed_dim"]
        assert model.out_channels == [d] * 4 and model.out_strides == [4, 8, 16, 32]
        assert [tuple(o.shape) for o in outs] == [(2, d, size // s, size // s) for s in (4, 8, 16, 32)]
        assert model.patch_size == arch["patch_size"]
        assert model.interaction_indexes == [list(i) for i in arch["interaction_indexes"]]
        assert len(model.interactions[3].extra_extractors) == 2 and model.interactions[0].extra_extractors is None


def _cfg(name: str, img_size: int, **model):
    return OmegaConf.create({"model": {"backbone": {"type": name, **model}},
                             "dataset": {"segment": {"num_classes": 3, "img_size": img_size}}})


@pytest.mark.parametrize("name,size,step", [("vit_small_dinov3", 200, "32"), ("vit_giant_nvdinov2", 256, "224")])
def test_image_size_the_backbone_cannot_take_is_a_user_error(name, size, step):
    with pytest.raises(UserError, match=rf"img_size={size}.*{name}.*multiple of {step}"):
        build_model(_cfg(name, size), load_weights=False)


def test_giant_runs_only_blocks_0_to_23_like_tao():
    with torch.device("meta"):
        model = timm.create_model("vit_giant_nvdinov2", img_size=224)
    assert len(model.blocks) == 40 and model.interaction_indexes[-1] == [18, 23]
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 1536)


def test_freeze_backbone_freezes_the_vit_and_trains_the_adapter():
    model = build_model(_cfg("vit_small_dinov3", 64, freeze_backbone=True), load_weights=False)
    model.train()
    vit = {id(p) for p in model.backbone.vit.parameters()}
    assert vit and all(not p.requires_grad for p in model.backbone.vit.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "backbone.level_embed" in trainable and "backbone.spm.stem.0.weight" in trainable
    assert any(n.startswith("backbone.interactions.") for n in trainable)
    assert any(n.startswith("decode_head.") for n in trainable)
    assert not any(id(p) in vit for _, p in model.named_parameters() if p.requires_grad)
    assert not model.backbone.vit.training and model.backbone.spm.training and model.backbone.norm1.training


def test_precise_msda_reaches_every_deformable_attention():
    from segformer_tao.model.backbones.msda import MSDeformAttn

    model = build_model(_cfg("vit_small_dinov3", 64), load_weights=False)

    assert not any(m.precise for m in model.modules() if isinstance(m, MSDeformAttn))
    cfg = _cfg("vit_small_dinov3", 64)
    cfg.model.precise_msda = True
    precise = build_model(cfg, load_weights=False)
    attns = [m for m in precise.modules() if isinstance(m, MSDeformAttn)]
    assert len(attns) == 4 + 4 + 2 and all(m.precise for m in attns)


def test_nvclip_without_open_clip_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what an environment without the extra looks like
    with pytest.raises(UserError, match=r"segformer_tao\[nvclip\]"):
        build_model(_cfg("vit_base_nvclip_16_siglip", 224), load_weights=False)
