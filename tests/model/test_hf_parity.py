"""Same weights, same logits as Hugging Face transformers' SegformerForSemanticSegmentation (eval, fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from segformer_tao.model import SegFormer, build_model, create_backbone
from segformer_tao.model.backbones.mit import MIT_ARCHS
from segformer_tao.model.head import SegFormerHead
from segformer_tao.model.weights import load_pretrained
from tests.model.helpers import make_cfg

NUM_CLASSES = 7


def random_hf(arch: str, depths, embed_dim: int, num_labels: int = NUM_CLASSES, seed: int = 0):
    """A randomly initialised HF SegFormer with published widths, random BN statistics and biases."""
    torch.manual_seed(seed)
    spec = MIT_ARCHS[arch]
    config = SegformerConfig(hidden_sizes=list(spec["embed_dims"]), depths=list(depths),
                             num_attention_heads=list(spec["num_heads"]), decoder_hidden_size=embed_dim,
                             num_labels=num_labels)
    model = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("running_mean", "bias")):
                t.normal_(0, 0.1)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
    return model


def assert_parity(hf, ours, size: int = 64) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        got = ours.eval()(x)
    assert got.shape == expected.shape == (2, hf.config.num_labels, size // 4, size // 4)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-5, f"max abs logits diff {diff}"


def test_hf_parity_b0_full_through_build_model(tmp_path):
    hf = random_hf("mit_b0", MIT_ARCHS["mit_b0"]["depths"], 256)
    hf.save_pretrained(tmp_path)
    cfg = make_cfg("mit_b0", num_classes=NUM_CLASSES, embed_dim=256,
                   **{"train.pretrained_model_path": str(tmp_path)})
    assert_parity(hf, build_model(cfg))


@pytest.mark.parametrize("arch", [f"mit_b{i}" for i in range(1, 6)])
def test_hf_parity_cut_depth(tmp_path, arch):
    depths = (1, 1, 2, 1)  # published widths/heads/ratios, fewer blocks to stay fast
    hf = random_hf(arch, depths, 128)
    hf.save_pretrained(tmp_path)
    backbone = create_backbone(arch, depths=depths)
    ours = SegFormer(backbone, SegFormerHead(backbone.out_channels, 128, NUM_CLASSES), backbone_name=arch)
    report = load_pretrained(ours, str(tmp_path), part="full")
    assert report.layout == "hf" and not report.missing and not report.unexpected, report
    assert_parity(hf, ours)
