"""`segformer model info|list` (in-process, tiny input)."""

from __future__ import annotations

import json

import pytest

from segformer_tao.model.backbones import BACKBONES
from segformer_tao.model.cli import main


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
    assert main(["info", f"model.backbone.type={backbone}", "dataset.segment.img_size=64",
                 "dataset.segment.num_classes=3"]) == 0
    assert "GFLOPs" in capsys.readouterr().out


def test_model_list(capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == list(BACKBONES)
