"""Our FAN-hybrid SegFormer computes what TAO's computes: golden outputs from TAO's own code.

``tests/model/golden/`` holds, per FAN variant, the four backbone maps and the logits of TAO's SegFormer
(NVIDIA/tao_pytorch_backend at the commit in ``recipe.json``, run by ``scripts/make_fan_golden.py``) and the seed
recipe its weights were drawn from. Here the same recipe fills a TAO-layout state dict, which goes through our
TAO key conversion into our model (strictly: every key of TAO's model, none else); our outputs must match TAO's
to 1e-5 per stage in float32, whatever the input's memory layout, and in the exported ONNX graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segformer_tao.model import build_model
from segformer_tao.model.weights import convert_state_dict
from tests.model.golden_recipe import seeded_input, seeded_state_dict, seeded_tensor
from tests.model.helpers import make_cfg

GOLDEN = Path(__file__).parent / "golden"
RECIPE = json.loads((GOLDEN / "recipe.json").read_text())
TOL = 1e-5  # float32, activations of order 1-10
STAGES = ("feat0", "feat1", "feat2", "feat3")


def tao_weighted_model(name: str):
    """Our SegFormer for ``name`` holding the recipe's weights, loaded through our TAO-layout conversion."""
    v = RECIPE["variants"][name]
    tao_sd = seeded_state_dict({**RECIPE, "seed": v["seed"]}, v["state_dict"])
    model = build_model(make_cfg(name, num_classes=RECIPE["num_classes"], embed_dim=RECIPE["decoder_embed_dim"]),
                        load_weights=False)
    model.load_state_dict(convert_state_dict(tao_sd, "tao"), strict=True)  # nothing missing, nothing left over
    return model.eval()


def outputs(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.decode_head(feats)
    return {**{s: f.numpy() for s, f in zip(STAGES, feats)}, "logits": logits.numpy()}


def max_diffs(ours: dict[str, np.ndarray], golden) -> dict[str, float]:
    return {k: float(np.abs(ours[k] - golden[k]).max()) for k in (*STAGES, "logits")}


@pytest.mark.parametrize("name", list(RECIPE["variants"]))
def test_fan_matches_tao_golden_outputs(name):
    model = tao_weighted_model(name)
    golden = np.load(GOLDEN / RECIPE["variants"][name]["file"])
    x = seeded_input(RECIPE)
    for layout in (torch.contiguous_format, torch.channels_last):
        ours = outputs(model, x.contiguous(memory_format=layout))
        assert {k: v.shape for k, v in ours.items()} == {k: golden[k].shape for k in ours}
        diffs = max_diffs(ours, golden)
        assert max(diffs.values()) <= TOL, f"{name} {layout}: max |ours - TAO| per output {diffs}"


@pytest.mark.gpu
def test_fan_matches_tao_golden_outputs_on_cuda():
    """Same weights on the GPU (cuDNN convs, CUDA LayerNorm), both memory layouts; TF32 off for float32 maths."""
    name = "fan_small_12_p4_hybrid"
    model = tao_weighted_model(name).cuda()
    golden = np.load(GOLDEN / RECIPE["variants"][name]["file"])
    x = seeded_input(RECIPE).cuda()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for layout in (torch.contiguous_format, torch.channels_last):
            with torch.no_grad():
                feats = model.backbone(x.contiguous(memory_format=layout))
                ours = {**{s: f.cpu().numpy() for s, f in zip(STAGES, feats)},
                        "logits": model.decode_head(feats).cpu().numpy()}
            diffs = max_diffs(ours, golden)
            assert max(diffs.values()) <= 1e-4, f"{name} cuda {layout}: {diffs}"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def test_fan_tao_norms_are_the_ones_tao_runs():
    """Our ConvNeXt norms use the variance TAO's run used (recorded by the generator from TAO's own forward)."""
    from segformer_tao.model.backbones.fan import LayerNorm2dUnbiased

    name = "fan_tiny_8_p4_hybrid"
    model = tao_weighted_model(name)
    branches = RECIPE["variants"][name]["layernorm2d_branch"]
    ours = {n: type(m) for n, m in model.named_modules() if n in branches}
    assert set(ours) == set(branches)
    for n, branch in branches.items():  # TAO's var_mean branch divides by C - 1
        assert (ours[n] is LayerNorm2dUnbiased) == (branch == "var_mean"), (n, branch, ours[n])


def test_fan_onnx_export_matches_pytorch_and_tao():
    """The exported graph has no memory layout: TAO's unbiased variance must be written out in it."""
    ort = pytest.importorskip("onnxruntime")
    from segformer_tao.deploy.onnx_export import ExportSettings, export_onnx_bytes

    name = "fan_tiny_8_p4_hybrid"
    model = tao_weighted_model(name)
    x = seeded_input(RECIPE)
    h, w = x.shape[-2:]
    session = ort.InferenceSession(export_onnx_bytes(model, ExportSettings(height=h, width=w)),
                                   providers=["CPUExecutionProvider"])
    batch = torch.cat([x, x.flip(-1)])  # dynamic batch of 2
    onnx_logits = session.run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        torch_logits = model(batch).numpy()
    assert np.abs(onnx_logits - torch_logits).max() <= 1e-4
    golden = np.load(GOLDEN / RECIPE["variants"][name]["file"])["logits"]
    assert np.abs(onnx_logits[:1] - golden).max() <= 1e-4


def test_fan_feat_downsample_runs_on_taos_stage_maps():
    """feat_downsample=True (TAO's own forward fails: its head expects embed_dim): our stage 4 is TAO's final token
    map through the learnable 3x3 stride-2 conv (768 ch @32), stages 1-3 stay TAO's, and the head runs on it."""
    name = "fan_tiny_8_p4_hybrid"
    v = RECIPE["variants"][name]
    recipe = {**RECIPE, "seed": v["seed"]}
    shapes = {**v["state_dict"], "backbone.learnable_downsample.weight": [768, 192, 3, 3],
              "backbone.learnable_downsample.bias": [768]}
    tao_sd = seeded_state_dict(recipe, shapes)
    model = build_model(make_cfg(name, num_classes=RECIPE["num_classes"], embed_dim=RECIPE["decoder_embed_dim"],
                                 **{"model.backbone.feat_downsample": True}), load_weights=False)
    tao_sd["decoder.linear_c4.proj.weight"] = seeded_tensor(recipe, "decoder.linear_c4.proj.weight", (64, 768))
    model.load_state_dict(convert_state_dict(tao_sd, "tao"), strict=True)
    golden = np.load(GOLDEN / v["file"])
    ours = outputs(model.eval(), seeded_input(RECIPE))
    for stage in STAGES[:3]:
        assert np.abs(ours[stage] - golden[stage]).max() <= TOL
    down = "backbone.learnable_downsample."
    expected = torch.nn.functional.conv2d(torch.from_numpy(golden["feat3"]), tao_sd[down + "weight"],
                                          tao_sd[down + "bias"], stride=2, padding=1)
    assert ours["feat3"].shape == (1, 768, 2, 3) and np.abs(ours["feat3"] - expected.numpy()).max() <= 1e-4
    assert ours["logits"].shape == golden["logits"].shape and np.isfinite(ours["logits"]).all()
