"""`segformer model info|list` (in-process, tiny input)."""

from __future__ import annotations

import json

import pytest

from segformer_tao.commands.model import main
from segformer_tao.model.backbones import BACKBONES


@pytest.mark.parametrize("backbone", ["mit_b0", "fan_tiny_8_p4_hybrid"])
def test_model_info_json(capsys, backbone):
    rc = main(["info", f"model.backbone.type={backbone}", "dataset.segment.img_size=64",
               "dataset.segment.num_classes=3", "model.decode_head.decoder_params.embed_dim=32", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert rc == 0 and info["backbone"] == backbone and info["logits"] == [3, 16, 16]
    assert info["gflops"] > 0 and info["params_total_m"] > info["params_backbone_m"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_model_info_every_backbone(capsys, backbone):
    if "nvclip" in backbone:
        pytest.importorskip("open_clip", reason="NVCLIP backbones need the nvclip extra (open_clip_torch)")
    size = 224 if backbone.startswith("vit_") else 64  # 224: a multiple of every ViT's patch size and of 32
    assert main(["info", f"model.backbone.type={backbone}", f"dataset.segment.img_size={size}",
                 "dataset.segment.num_classes=3"]) == 0
    assert "GFLOPs" in capsys.readouterr().out


def test_model_info_vit_giant_real_size_counts_without_allocating(capsys):
    assert main(["info", "model.backbone.type=vit_giant_nvdinov2", "dataset.segment.img_size=224",
                 "dataset.segment.num_classes=3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["feature_maps"] == [[1536, 56, 56], [1536, 28, 28], [1536, 14, 14], [1536, 7, 7]]
    assert 1180 < info["params_backbone_m"] < 1185 and info["gflops"] > 100


def test_model_list(capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == list(BACKBONES)
