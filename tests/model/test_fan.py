"""FAN hybrids: TAO/NVlabs checkpoint key names load with zero missing/unexpected keys.

The expected keys are written out from the TAO/NVlabs module structure (ConvNeXt stem/stages inside
``patch_embed.backbone``, FAN blocks with TokenMixing + ChannelProcessing, CaiT class-attention blocks), not
read from our model.
"""

from __future__ import annotations

import pytest
import torch

from segformer_tao.model import build_model, create_backbone
from segformer_tao.model.weights import load_pretrained
from tests.model.helpers import make_cfg

# (embed_dim, depth, heads, convnext depths) per TAO's fan_*_p4_hybrid constructors
TAO_FAN = {
    "fan_tiny_8_p4_hybrid": (192, 8, 8, (3, 3)),
    "fan_small_12_p4_hybrid": (384, 10, 8, (3, 3)),
    "fan_base_16_p4_hybrid": (448, 16, 8, (3, 3)),
    "fan_large_16_p4_hybrid": (480, 22, 10, (3, 5)),
}


def _linear(keys, name, out_f, in_f):
    keys[f"{name}.weight"], keys[f"{name}.bias"] = (out_f, in_f), (out_f,)


def _norm(keys, name, dim):
    keys[f"{name}.weight"], keys[f"{name}.bias"] = (dim,), (dim,)


def tao_fan_backbone_shapes(name: str, feat_downsample: bool = False) -> dict[str, tuple]:
    """Key -> shape of a TAO SegFormer FAN hybrid backbone state dict."""
    e, depth, heads, (d0, d1) = TAO_FAN[name]
    k: dict[str, tuple] = {}
    cnx = "patch_embed.backbone"
    k[f"{cnx}.stem.0.weight"], k[f"{cnx}.stem.0.bias"] = (128, 3, 4, 4), (128,)
    _norm(k, f"{cnx}.stem.1", 128)
    _norm(k, f"{cnx}.stages.1.downsample.0", 128)
    k[f"{cnx}.stages.1.downsample.1.weight"], k[f"{cnx}.stages.1.downsample.1.bias"] = (256, 128, 2, 2), (256,)
    for s, (c, n) in enumerate([(128, d0), (256, d1)]):
        for j in range(n):
            p = f"{cnx}.stages.{s}.blocks.{j}"
            k[f"{p}.conv_dw.weight"], k[f"{p}.conv_dw.bias"], k[f"{p}.gamma"] = (c, 1, 7, 7), (c,), (c,)
            _norm(k, f"{p}.norm", c)
            k[f"{p}.mlp.fc1.weight"], k[f"{p}.mlp.fc1.bias"] = (4 * c, c, 1, 1), (4 * c,)
            k[f"{p}.mlp.fc2.weight"], k[f"{p}.mlp.fc2.bias"] = (c, 4 * c, 1, 1), (c,)
    k["patch_embed.proj.weight"], k["patch_embed.proj.bias"] = (e, 256, 2, 2), (e,)
    k["cls_token"] = (1, 1, e)
    k["pos_embed.token_projection.weight"], k["pos_embed.token_projection.bias"] = (e, 64, 1, 1), (e,)
    for i in range(depth):
        p = f"blocks.{i}"
        k[f"{p}.gamma1"], k[f"{p}.gamma2"] = (e,), (e,)
        _norm(k, f"{p}.norm1", e)
        _norm(k, f"{p}.norm2", e)
        _linear(k, f"{p}.attn.q", e, e)
        _linear(k, f"{p}.attn.kv", 2 * e, e)
        _linear(k, f"{p}.attn.proj", e, e)
        k[f"{p}.mlp.temperature"] = (heads, 1, 1)
        _linear(k, f"{p}.mlp.q", e, e)
        _norm(k, f"{p}.mlp.norm_v", e)
        v = f"{p}.mlp.mlp_v"
        _linear(k, f"{v}.fc1", 4 * e, e)
        _linear(k, f"{v}.fc2", e, 4 * e)
        k[f"{v}.gamma"] = (4 * e,)
        for conv in ("conv1", "conv2"):
            k[f"{v}.dwconv.{conv}.weight"], k[f"{v}.dwconv.{conv}.bias"] = (4 * e, 1, 3, 3), (4 * e,)
        _norm(k, f"{v}.dwconv.bn", 4 * e)
        k[f"{v}.dwconv.bn.running_mean"], k[f"{v}.dwconv.bn.running_var"] = (4 * e,), (4 * e,)
        k[f"{v}.dwconv.bn.num_batches_tracked"] = ()
    for i in range(2):
        p = f"cls_attn_blocks.{i}"
        k[f"{p}.gamma1"], k[f"{p}.gamma2"] = (e,), (e,)
        _norm(k, f"{p}.norm1", e)
        _norm(k, f"{p}.norm2", e)
        for lin in "qkv":
            _linear(k, f"{p}.attn.{lin}", e, e)
        _linear(k, f"{p}.attn.proj", e, e)
        _linear(k, f"{p}.mlp.fc1", 4 * e, e)
        _linear(k, f"{p}.mlp.fc2", e, 4 * e)
    if feat_downsample:
        k["learnable_downsample.weight"], k["learnable_downsample.bias"] = (768, e, 3, 3), (768,)
    return k


def _tensors(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.rand(s))
            for k, s in shapes.items()}


@pytest.mark.parametrize("name,feat_downsample", [
    ("fan_tiny_8_p4_hybrid", False), ("fan_tiny_8_p4_hybrid", True), ("fan_small_12_p4_hybrid", False),
    pytest.param("fan_base_16_p4_hybrid", False, marks=pytest.mark.slow),
    pytest.param("fan_large_16_p4_hybrid", False, marks=pytest.mark.slow),
])
def test_tao_fan_backbone_keys_load_strictly(name, feat_downsample):
    model = create_backbone(name, feat_downsample=feat_downsample)
    expected = _tensors(tao_fan_backbone_shapes(name, feat_downsample))
    result = model.load_state_dict(expected, strict=True)  # raises on any missing/unexpected/shape mismatch
    assert not result.missing_keys and not result.unexpected_keys


def test_tao_fan_full_checkpoint_through_build_model(tmp_path):
    name, embed_dim, classes = "fan_tiny_8_p4_hybrid", 32, 4
    sd = {f"model.backbone.{k}": v for k, v in _tensors(tao_fan_backbone_shapes(name)).items()}
    for i, c in enumerate([128, 256, 192, 192]):
        sd[f"model.decoder.linear_c{i + 1}.proj.weight"] = torch.rand(embed_dim, c)
        sd[f"model.decoder.linear_c{i + 1}.proj.bias"] = torch.rand(embed_dim)
    sd["model.decoder.linear_fuse.0.weight"] = torch.rand(embed_dim, 4 * embed_dim, 1, 1)
    sd["model.decoder.linear_fuse.0.bias"] = torch.rand(embed_dim)
    for stat in ("weight", "bias", "running_mean", "running_var"):
        sd[f"model.decoder.linear_fuse.1.{stat}"] = torch.rand(embed_dim)
    sd["model.decoder.linear_fuse.1.num_batches_tracked"] = torch.tensor(0)
    sd["model.decoder.linear_pred.weight"] = torch.rand(classes, embed_dim, 1, 1)
    sd["model.decoder.linear_pred.bias"] = torch.rand(classes)
    torch.save({"state_dict": sd}, tmp_path / "tao_fan.pth")
    cfg = make_cfg(name, num_classes=classes, embed_dim=embed_dim,
                   **{"train.pretrained_model_path": str(tmp_path / "tao_fan.pth")})
    model = build_model(cfg, load_weights=False)
    report = load_pretrained(model, str(tmp_path / "tao_fan.pth"), part="full")
    assert report.layout == "tao" and not report.missing and not report.unexpected, report
    assert report.loaded == len(sd) - 1  # the fuse-conv bias is folded into the BN running mean
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, classes, 16, 16)


def test_fan_in_build_model_and_wrong_variant_error(tmp_path):
    torch.save({"state_dict": _tensors(tao_fan_backbone_shapes("fan_tiny_8_p4_hybrid"))}, tmp_path / "t.pth")
    cfg = make_cfg("fan_small_12_p4_hybrid", **{"model.backbone.pretrained_backbone_path": str(tmp_path / "t.pth")})
    from segformer_tao.errors import UserError

    with pytest.raises(UserError, match="look like 'fan_tiny_8_p4_hybrid'"):
        build_model(cfg)


def test_stage4_width_mismatch_names_the_head_module_and_both_widths(tmp_path):
    """TAO builds its head for embed_dim even with feat_downsample=True (768-wide stage 4): say so, not embed_dim."""
    name, embed_dim, classes = "fan_tiny_8_p4_hybrid", 32, 4
    sd = {f"model.backbone.{k}": v for k, v in _tensors(tao_fan_backbone_shapes(name, feat_downsample=True)).items()}
    for i, c in enumerate([128, 256, 192, 192]):  # TAO's channels_map: stage 4 = embed_dim
        sd[f"model.decoder.linear_c{i + 1}.proj.weight"] = torch.rand(embed_dim, c)
        sd[f"model.decoder.linear_c{i + 1}.proj.bias"] = torch.rand(embed_dim)
    torch.save({"state_dict": sd}, tmp_path / "tao_fan_ds.pth")
    model = build_model(make_cfg(name, num_classes=classes, embed_dim=embed_dim,
                                 **{"model.backbone.feat_downsample": True}), load_weights=False)
    from segformer_tao.errors import UserError

    with pytest.raises(UserError) as err:
        load_pretrained(model, str(tmp_path / "tao_fan_ds.pth"), part="full")
    msg = str(err.value)
    assert "decode_head.linear_c4.proj takes 192 input channels in the checkpoint but 768 in this model" in msg
    assert "feat_downsample=True" in msg and "embed_dim" not in msg


def test_decoder_width_mismatch_names_the_tensor_and_embed_dim(tmp_path):
    name = "fan_tiny_8_p4_hybrid"
    sd = {f"model.backbone.{k}": v for k, v in _tensors(tao_fan_backbone_shapes(name)).items()}
    sd["model.decoder.linear_c1.proj.weight"] = torch.rand(48, 128)
    torch.save({"state_dict": sd}, tmp_path / "tao_fan_48.pth")
    model = build_model(make_cfg(name, embed_dim=32), load_weights=False)
    from segformer_tao.errors import UserError

    with pytest.raises(UserError, match=r"linear_c1\.proj\.weight is \(48, 128\) in the checkpoint but \(32, 128\) "
                                        r"in this model \(decoder width 32\)\. Set model\.decode_head\.decoder_params"):
        load_pretrained(model, str(tmp_path / "tao_fan_48.pth"), part="full")
