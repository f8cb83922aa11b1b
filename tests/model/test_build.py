"""build_model from the experiment config: shapes, spec checks, freezing, timm registration."""

from __future__ import annotations

import pytest
import timm
import torch

from segformer_tao.errors import UserError
from segformer_tao.model import build_model
from segformer_tao.model.backbones import BACKBONES
from tests.model.helpers import make_cfg


def test_logits_at_quarter_resolution_and_channels_last():
    model = build_model(make_cfg("mit_b0", num_classes=3)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        out_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert out.shape == (2, 3, 16, 24)
    assert torch.allclose(out, out_cl, atol=1e-5)


def test_tao_default_in_channels_do_not_break_b0(recwarn):
    cfg = make_cfg("mit_b0", **{"model.decode_head.in_channels": [64, 128, 320, 512],
                                "model.decode_head.feature_strides": [4, 8, 16, 32]})
    assert build_model(cfg).decode_head.in_channels == [32, 64, 160, 256]
    assert not recwarn.list  # TAO's defaults are replaced silently, as TAO does
    cfg = make_cfg("mit_b0", **{"model.decode_head.in_channels": [64, 128, 320, 320]})
    with pytest.warns(UserWarning, match=r"in_channels=\[64, 128, 320, 320\] does not match backbone mit_b0"):
        assert build_model(cfg).decode_head.in_channels == [32, 64, 160, 256]


def test_unknown_backbone_and_bad_in_index():
    with pytest.raises(UserError, match="model.backbone.type='mit_b9' is not supported"):
        build_model(make_cfg("mit_b9"))
    with pytest.raises(UserError, match="in_index"):
        build_model(make_cfg("mit_b0", **{"model.decode_head.in_index": [0, 1, 2]}))


def test_freeze_backbone_needs_weights_and_freezes(tmp_path):
    with pytest.raises(UserError, match="freeze_backbone"):
        build_model(make_cfg("mit_b0", **{"model.backbone.freeze_backbone": True}))
    src = build_model(make_cfg("mit_b0"))
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    overrides = {"model.backbone.freeze_backbone": True,
                 "model.backbone.pretrained_backbone_path": str(tmp_path / "w.pth")}
    model = build_model(make_cfg("mit_b0", **overrides))
    model.train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.decode_head.parameters())
    assert not model.backbone.training and model.decode_head.training


def test_backbones_are_timm_models_with_feature_getter():
    assert set(BACKBONES) <= set(timm.list_models())
    features = timm.create_model("mit_b0", features_only=True)
    maps = features(torch.randn(1, 3, 64, 64))
    assert features.feature_info.channels() == [m.shape[1] for m in maps] == [32, 64, 160, 256]
    assert features.feature_info.reduction() == [4, 8, 16, 32]


def test_align_corners_true_is_applied_and_warns_that_tao_ignores_it(recwarn):
    x = torch.randn(1, 3, 64, 64)
    plain = build_model(make_cfg("mit_b0")).eval()
    assert not [w for w in recwarn.list if "align_corners" in str(w.message)]
    with pytest.warns(UserWarning, match=r"align_corners=true.*TAO's head ignores the key"):
        aligned = build_model(make_cfg("mit_b0", **{"model.decode_head.align_corners": True})).eval()
    aligned.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(x), aligned(x), atol=1e-6)  # the key does what it says
