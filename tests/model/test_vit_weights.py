"""TAO ViT SegFormer checkpoints load key for key; ViT weights in their own layouts load as backbones.

The expected TAO key names and shapes are written out here from TAO 7.3's source (``adapter_modules.py``,
``dino_v2.py``, ``dino_v3.py``, ``open_clip.py``, ``segformer_head.py``): the ViT part is the model TAO wraps
(timm's ViT or open_clip's CLIP) built with TAO's arguments, the adapter and head parts are listed by hand.
"""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from omegaconf import OmegaConf
from timm.layers import PatchEmbed, SwiGLUPacked
from timm.models import VisionTransformer
from torch import nn

from segformer_tao.model import build_model
from segformer_tao.model.head import SegFormerHead
from segformer_tao.model.segformer import SegFormer
from segformer_tao.model.weights import load_pretrained

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _msda(prefix: str, d: int, levels: int) -> dict[str, tuple]:
    heads, points, v = 16, 4, d // 2  # deform_num_heads=16, n_points=4, deform_ratio=0.5
    out = {}
    for name, (o, i) in {"sampling_offsets": (heads * levels * points * 2, d),
                         "attention_weights": (heads * levels * points, d),
                         "value_proj": (v, d), "output_proj": (d, v)}.items():
        out[f"{prefix}.{name}.weight"], out[f"{prefix}.{name}.bias"] = (o, i), (o,)
    return out


def _ln(prefix: str, d: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def _extractor(p: str, d: int) -> dict[str, tuple]:
    h = d // 4  # cffn_ratio=0.25
    return {**_ln(f"{p}.query_norm", d), **_ln(f"{p}.feat_norm", d), **_msda(f"{p}.attn", d, 1),
            f"{p}.ffn.fc1.weight": (h, d), f"{p}.ffn.fc1.bias": (h,), f"{p}.ffn.dwconv.dwconv.weight": (h, 1, 3, 3),
            f"{p}.ffn.dwconv.dwconv.bias": (h,), f"{p}.ffn.fc2.weight": (d, h), f"{p}.ffn.fc2.bias": (d,),
            **_ln(f"{p}.ffn_norm", d)}


def tao_adapter_keys(d: int) -> dict[str, tuple]:
    """ViT-Adapter keys of TAO's DINOV2Adapter/DINOV3Adapter/OpenCLIPAdapter (conv_inplane=56), with shapes."""
    c = 56
    keys = {"level_embed": (3, d), "up.weight": (d, d, 2, 2), "up.bias": (d,)}
    convs = {"spm.stem.0": (c, 3), "spm.stem.3": (c, c), "spm.stem.6": (c, c), "spm.conv2.0": (2 * c, c),
             "spm.conv3.0": (4 * c, 2 * c), "spm.conv4.0": (4 * c, 4 * c)}
    for name, (o, i) in convs.items():
        keys[f"{name}.weight"] = (o, i, 3, 3)
        bn = name[:-1] + str(int(name[-1]) + 1)
        keys.update({f"{bn}.{s}": (() if s == "num_batches_tracked" else (o,)) for s in BN})
    for j, cin in enumerate((c, 2 * c, 4 * c, 4 * c), start=1):
        keys[f"spm.fc{j}.weight"], keys[f"spm.fc{j}.bias"] = (d, cin, 1, 1), (d,)
    for j in range(1, 5):
        keys.update({f"norm{j}.{s}": (() if s == "num_batches_tracked" else (d,)) for s in BN})
    for i in range(4):
        p = f"interactions.{i}"
        keys.update({**_ln(f"{p}.injector.query_norm", d), **_ln(f"{p}.injector.feat_norm", d),
                     **_msda(f"{p}.injector.attn", d, 3), f"{p}.injector.ls.gamma": (d,),
                     **_extractor(f"{p}.extractor", d)})
    for k in range(2):
        keys.update(_extractor(f"interactions.3.extra_extractors.{k}", d))
    return keys


def tao_head_keys(d: int, embed: int, classes: int) -> dict[str, tuple]:
    keys = {}
    for i in range(1, 5):
        keys[f"decoder.linear_c{i}.proj.weight"], keys[f"decoder.linear_c{i}.proj.bias"] = (embed, d), (embed,)
    keys["decoder.linear_fuse.0.weight"], keys["decoder.linear_fuse.0.bias"] = (embed, 4 * embed, 1, 1), (embed,)
    keys.update({f"decoder.linear_fuse.1.{s}": (() if s == "num_batches_tracked" else (embed,)) for s in BN})
    keys["decoder.linear_pred.weight"], keys["decoder.linear_pred.bias"] = (classes, embed, 1, 1), (classes,)
    return keys


def _shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _write_tao_checkpoint(path, backbone_keys: dict[str, tuple], head_keys: dict[str, tuple]) -> dict:
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape in backbone_keys.items():
        sd[f"model.backbone.{k}"] = (torch.tensor(3) if k.endswith("num_batches_tracked")
                                     else torch.randn(shape, generator=g))
    for k, shape in head_keys.items():
        sd[f"model.{k}"] = torch.tensor(3) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g)
    torch.save({"state_dict": sd, "epoch": 3}, path)
    return sd


def _cfg(name: str, img_size: int = 64, **backbone):
    return OmegaConf.create({"model": {"backbone": {"type": name, **backbone},
                                       "decode_head": {"decoder_params": {"embed_dim": 32}}},
                             "dataset": {"segment": {"num_classes": 3, "img_size": img_size}}})


def _small_model(name: str, d: int) -> SegFormer:
    """``name`` with 2 ViT blocks (TAO's adapter, real width) + a 32-wide head for 3 classes."""
    backbone = timm.create_model(name, img_size=64, depth=2, interaction_indexes=[[0, 0], [0, 0], [1, 1], [1, 1]])
    return SegFormer(backbone, SegFormerHead([d] * 4, 32, 3), backbone_name=name)


def _check_full_load(model, path, sd, ignored_prefix=None):
    report = load_pretrained(model, str(path), part="full")
    assert report.layout == "tao" and not report.missing and not report.unexpected, report
    assert all(k.startswith(ignored_prefix) for k in report.ignored) if ignored_prefix else not report.ignored
    ours = model.state_dict()
    probe = [k for k in sd if "interactions.3.extra_extractors.1.attn.value_proj.weight" in k][0]
    assert torch.equal(ours[probe.replace("model.", "", 1)], sd[probe])
    assert torch.equal(ours["decode_head.linear_c1.proj.weight"], sd["model.decoder.linear_c1.proj.weight"])


def test_tao_dinov3_checkpoint_loads_key_for_key(tmp_path):
    with torch.device("meta"):  # TAO: timm.create_model("vit_small_patch16_dinov3.lvd1689m") wrapped as ``vit``
        vit = _shapes(timm.create_model("vit_small_patch16_dinov3"), "vit.")
    sd = _write_tao_checkpoint(tmp_path / "tao.pth", {**vit, **tao_adapter_keys(384)}, tao_head_keys(384, 32, 3))
    model = build_model(_cfg("vit_small_dinov3"), load_weights=False)
    _check_full_load(model, tmp_path / "tao.pth", sd)
    assert torch.equal(model.backbone.vit.reg_token, sd["model.backbone.vit.reg_token"])


def test_tao_nvdinov2_checkpoint_loads_key_for_key(tmp_path):
    """vit_large_nvdinov2 at its real width with 2 blocks (on both sides) to keep the test small."""
    with torch.device("meta"):  # TAO's DINOV2 kwargs; its adapter sets cls_token = None after building
        vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=1024, depth=2, num_heads=16,
                                mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=5472 / 1024,
                                embed_layer=partial(PatchEmbed, strict_img_size=False), global_pool="",
                                num_classes=0, reg_tokens=0)
    vit_keys = {k: v for k, v in _shapes(vit).items() if k != "cls_token"}
    assert vit_keys["pos_embed"] == (1, 1 + 16, 1024) and "norm.weight" in vit_keys
    sd = _write_tao_checkpoint(tmp_path / "tao.pth", {**vit_keys, **tao_adapter_keys(1024)},
                               tao_head_keys(1024, 32, 3))
    model = _small_model("vit_large_nvdinov2", 1024)
    _check_full_load(model, tmp_path / "tao.pth", sd)
    assert torch.equal(model.backbone.pos_embed, sd["model.backbone.pos_embed"])


def test_tao_nvclip_checkpoint_loads_key_for_key_without_the_text_tower(tmp_path):
    open_clip = pytest.importorskip("open_clip", reason="NVCLIP backbones need the nvclip extra (open_clip_torch)")
    with torch.device("meta"):  # TAO: OpenCLIPAdapter.model = open_clip.create_model("ViT-B-16-SigLIP")
        clip = _shapes(open_clip.create_model("ViT-B-16-SigLIP", device="meta"), "model.")
    text = {k for k in clip if not k.startswith("model.visual.")}
    assert any(k.startswith("model.text.") for k in text)
    # two ViT blocks on both sides keep it small; text-tower tensors are placeholders (their names matter)
    keys = {k: ((1,) if k in text else v) for k, v in clip.items()
            if not (k.startswith("model.visual.trunk.blocks.") and int(k.split(".")[4]) >= 2)}
    sd = _write_tao_checkpoint(tmp_path / "tao.pth", {**keys, **tao_adapter_keys(768)}, tao_head_keys(768, 32, 3))
    model = _small_model("vit_base_nvclip_16_siglip", 768)
    _check_full_load(model, tmp_path / "tao.pth", sd, ignored_prefix="backbone.model.")


# ---- pretrained ViTs in their own layouts (model.backbone.pretrained_backbone_path)
def _check_backbone_load(model, path):
    report = load_pretrained(model, str(path), part="backbone")
    assert report.layout == "native" and not report.missing and not report.unexpected, report
    assert report.fresh and all(model.backbone.is_adapter_key(k[len("backbone."):]) for k in report.fresh)
    return report


def test_timm_dinov3_weights_load_into_vit(tmp_path):
    torch.manual_seed(1)
    timm_sd = timm.create_model("vit_small_patch16_dinov3").state_dict()  # timm's own layout, bare keys
    torch.save(timm_sd, tmp_path / "dinov3.pth")
    model = build_model(_cfg("vit_small_dinov3"), load_weights=False)
    report = _check_backbone_load(model, tmp_path / "dinov3.pth")
    assert report.loaded == len(timm_sd)
    for k in ("cls_token", "reg_token", "blocks.11.mlp.fc2.weight", "blocks.3.gamma_1"):
        assert torch.equal(model.backbone.vit.state_dict()[k], timm_sd[k])
    assert any(k.startswith("backbone.interactions.") for k in report.fresh)


def test_nvdinov2_ssl_weights_resize_positions_and_patch_kernel(tmp_path):
    """An NV-DINOv2 checkpoint (patch 14 at 224 px, class/register tokens, LayerScale) into L/16 at 64 px."""
    g = torch.Generator().manual_seed(0)
    model = _small_model("vit_large_nvdinov2", 1024)
    ours = model.backbone.state_dict()
    src = {k: torch.randn(v.shape, generator=g) for k, v in ours.items()
           if not model.backbone.is_adapter_key(k) and k not in ("pos_embed", "patch_embed.proj.weight")}
    src["pos_embed"] = torch.randn(1, 1 + 16 * 16, 1024, generator=g)
    src["patch_embed.proj.weight"] = torch.randn(1024, 3, 14, 14, generator=g)
    src.update({"cls_token": torch.zeros(1, 1, 1024), "register_tokens": torch.zeros(1, 4, 1024),
                "mask_token": torch.zeros(1, 1024), "blocks.0.ls1.gamma": torch.ones(1024)})
    torch.save({"model": src}, tmp_path / "nvdinov2.pth")
    report = _check_backbone_load(model, tmp_path / "nvdinov2.pth")
    assert {"backbone.cls_token", "backbone.register_tokens", "backbone.blocks.0.ls1.gamma"} <= set(report.ignored)
    pos = model.backbone.pos_embed
    grid = src["pos_embed"][:, 1:].reshape(1, 16, 16, 1024).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.equal(pos[:, :1], src["pos_embed"][:, :1])
    assert (pos[:, 1:] - want.flatten(2).transpose(1, 2)).abs().max() < 1e-6
    assert model.backbone.patch_embed.proj.weight.shape == (1024, 3, 16, 16)
    assert torch.equal(model.backbone.blocks[1].mlp.fc1.weight, src["blocks.1.mlp.fc1.weight"])


def test_open_clip_weights_load_into_nvclip_without_text_tower(tmp_path):
    pytest.importorskip("open_clip", reason="NVCLIP backbones need the nvclip extra (open_clip_torch)")
    model = _small_model("vit_base_nvclip_16_siglip", 768)
    visual = {k[len("model."):]: torch.randn(v.shape) for k, v in model.backbone.state_dict().items()
              if k.startswith("model.visual.")}
    src = {**visual, "text.token_embedding.weight": torch.zeros(8, 4), "logit_scale": torch.zeros(1)}
    torch.save(src, tmp_path / "clip.pth")  # open_clip's layout: visual.* next to the text tower
    report = _check_backbone_load(model, tmp_path / "clip.pth")
    assert {"backbone.text.token_embedding.weight", "backbone.logit_scale"} <= set(report.ignored)
    assert torch.equal(model.backbone.model.visual.trunk.pos_embed, visual["visual.trunk.pos_embed"])


@pytest.mark.parametrize("name,gated", [("vit_small_dinov3", False), ("vit_small_plus_dinov3", True)])
def test_hugging_face_dinov3_loads_and_matches_transformers(tmp_path, name, gated):
    """A random transformers DINOv3ViTModel (2 layers, 4 registers), saved with save_pretrained, loaded as the
    backbone: the converted timm ViT computes the same tokens as transformers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DINOv3ViTConfig(
        hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1536, num_register_tokens=4,
        query_bias=False, value_bias=False, use_gated_mlp=gated, hidden_act="silu" if gated else "gelu",
        layerscale_value=0.5)
    hf = transformers.DINOv3ViTModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = _small_model(name, 384)
    report = _check_backbone_load(model, tmp_path / "hf")
    assert "backbone.embeddings.mask_token" in report.ignored
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state
        got = model.backbone.vit.forward_features(x)
    assert (got - want).abs().max().item() <= 1e-5


def test_vit_weights_that_cannot_convert_are_a_user_error(tmp_path):
    from segformer_tao.errors import UserError

    model = _small_model("vit_large_nvdinov2", 1024)
    src = {k: v for k, v in model.backbone.state_dict().items() if not model.backbone.is_adapter_key(k)}
    src["pos_embed"] = torch.zeros(1, 1 + 15, 1024)  # 15 positions: no square grid
    torch.save(src, tmp_path / "odd.pth")
    with pytest.raises(UserError, match=r"odd.pth.*vit_large_nvdinov2.*not 1 \+ a square grid"):
        load_pretrained(model, str(tmp_path / "odd.pth"), part="backbone")
