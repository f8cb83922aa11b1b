"""C-RADIO ViT-Adapters: what TAO's own code computes, TAO's names, RADIO's published weights, CPE, sizes.

``tests/model/golden/radio/`` comes from ``scripts/make_radio_golden.py`` run on TAO's published source
(NVIDIA/tao_pytorch_backend, commit in ``recipe.json``): the outputs of TAO's SegFormer around its RADIOAdapter at a
small width (v2 form and v3 form), and the state-dict keys and shapes of TAO's four C-RADIO SegFormers as TAO's
builder makes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from segformer_tao.errors import UserError
from segformer_tao.model import build_model
from segformer_tao.model.backbones.radio import RADIO_ARCHS
from segformer_tao.model.head import SegFormerHead
from segformer_tao.model.segformer import SegFormer
from segformer_tao.model.weights import convert_state_dict, load_pretrained
from tests.model.golden_recipe import seeded_input, seeded_state_dict
from tests.model.helpers import make_cfg

GOLDEN = Path(__file__).parent / "golden" / "radio"
RECIPE = json.loads((GOLDEN / "recipe.json").read_text())
TAO_KEYS = json.loads((GOLDEN / "radio_keys.json").read_text())["models"]
TOL = 1e-5  # float32, activations of order 1-10
STAGES = ("feat0", "feat1", "feat2", "feat3")


def tiny_segformer(variant: str) -> SegFormer:
    """Ours at the golden recipe's small width, for the TAO name the variant stands for."""
    v = RECIPE["variants"][variant]
    vit = v["vit"]
    backbone = timm.create_model(v["stands_for"], img_size=RECIPE["img_size"][0], embed_dim=vit["embed_dim"],
                                 depth=vit["depth"], num_heads=vit["num_heads"], cpe_max_size=RECIPE["cpe_max_size"],
                                 interaction_indexes=RECIPE["interaction_indexes"])
    head = SegFormerHead(backbone.out_channels, RECIPE["decoder_embed_dim"], RECIPE["num_classes"])
    return SegFormer(backbone, head, backbone_name=v["stands_for"])


def tao_weighted(variant: str) -> SegFormer:
    v = RECIPE["variants"][variant]
    model = tiny_segformer(variant)
    tao_sd = seeded_state_dict({**RECIPE, "seed": v["seed"]}, v["state_dict"])
    model.load_state_dict(convert_state_dict(tao_sd, "tao"), strict=True)  # every TAO key, nothing else
    return model.eval()


@pytest.mark.parametrize("variant", list(RECIPE["variants"]))
def test_radio_matches_tao_golden_outputs(variant):
    model = tao_weighted(variant)
    golden = np.load(GOLDEN / RECIPE["variants"][variant]["file"])
    for layout in (torch.contiguous_format, torch.channels_last):
        x = seeded_input(RECIPE).contiguous(memory_format=layout)
        with torch.no_grad():
            feats = model.backbone(x)
            ours = {**{s: f.numpy() for s, f in zip(STAGES, feats)}, "logits": model.decode_head(feats).numpy()}
        assert {k: v.shape for k, v in ours.items()} == {k: golden[k].shape for k in ours}
        diffs = {k: float(np.abs(ours[k] - golden[k]).max()) for k in ours}
        assert max(diffs.values()) <= TOL, f"{variant} {layout}: max |ours - TAO| per output {diffs}"


@pytest.mark.parametrize("variant", list(RECIPE["variants"]))
def test_training_mode_positions_match_tao(variant):
    """Training mode, same global RNG stream: TAO's random position crops and position dropout, call for call."""
    gen = tao_weighted(variant).backbone.radio.radio.model.patch_generator.train()
    golden = np.load(GOLDEN / RECIPE["variants"][variant]["file"])["train_tokens"]
    x = seeded_input(RECIPE)
    torch.manual_seed(RECIPE["train_rng_seed"])
    with torch.no_grad():
        ours = torch.cat([gen(x) for _ in range(4)]).numpy()
    assert ours.shape == golden.shape
    assert float(np.abs(ours - golden).max()) <= TOL


@pytest.mark.parametrize("name", list(RADIO_ARCHS))
def test_tao_checkpoint_keys_load_key_for_key(name):
    """TAO's SegFormer state dict for each name (its builder, img_size 512) maps onto ours: no key missing or left
    over, every shape equal."""
    tao = {k: torch.empty(s, device="meta") for k, s in TAO_KEYS[name].items()}
    with torch.device("meta"):
        model = build_model(make_cfg(name, num_classes=3, embed_dim=256, **{"dataset.segment.img_size": 512}),
                            load_weights=False)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in convert_state_dict(tao, "tao").items()}
    assert set(converted) == set(ours), (sorted(set(ours) - set(converted))[:5], sorted(set(converted) - set(ours))[:5])
    assert converted == ours
    result = model.load_state_dict(convert_state_dict(tao, "tao"), strict=False, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def _radio_release(model: SegFormer, grandma: bool) -> dict[str, torch.Tensor]:
    """A checkpoint in RADIO's published layout (Hugging Face ``nvidia/C-RADIO*``: ``radio_model.model.*``) with
    what it ships beside the ViT, a position table on another grid and (v3 files) the ``grandma`` typo."""
    vit = {k[len("backbone.radio.radio.model."):]: torch.randn(v.shape)
           for k, v in model.state_dict().items() if k.startswith("backbone.radio.radio.model.")}
    d = vit["patch_generator.pos_embed"].shape[-1]
    vit["patch_generator.pos_embed"] = torch.randn(1, 4 * 4, d)
    sd = {f"radio_model.model.{k.replace('.gamma', '.grandma') if grandma else k}": v for k, v in vit.items()}
    sd.update({"radio_model.input_conditioner.norm_mean": torch.zeros(3, 1, 1),
               "radio_model.summary_idxs": torch.tensor([0, 1, 2]),
               "radio_model.model.norm.weight": torch.ones(d),
               "radio_model.adaptors.clip.feat_mlp.fc1.weight": torch.randn(4, d)})
    return sd


@pytest.mark.parametrize("variant", list(RECIPE["variants"]))
def test_radio_release_checkpoint_loads_with_report(tmp_path, variant):
    model = tiny_segformer(variant)
    sd = _radio_release(model, grandma="v3" in variant)
    path = tmp_path / "radio.pth"
    torch.save({"state_dict": sd}, path)
    report = load_pretrained(model, str(path), part="backbone")
    vit_keys = [k for k in model.state_dict() if k.startswith("backbone.radio.radio.model.")]
    assert not report.missing and not report.unexpected and not set(report.fresh) & set(vit_keys)
    assert report.fresh and all(model.backbone.is_adapter_key(k[len("backbone."):]) for k in report.fresh)
    assert "backbone.fc_summary.weight" in report.fresh and "backbone.conv4.weight" in report.fresh
    assert sorted(report.ignored) == sorted(f"backbone.{k}" for k in sd if not k.startswith(
        ("radio_model.model.blocks.", "radio_model.model.patch_generator.")))
    got = model.state_dict()
    if "v3" in variant:
        assert torch.equal(got["backbone.radio.radio.model.blocks.1.ls2.gamma"],
                           sd["radio_model.model.blocks.1.ls2.grandma"])
    assert torch.equal(got["backbone.radio.radio.model.blocks.3.attn.qkv.weight"],
                       sd["radio_model.model.blocks.3.attn.qkv.weight"])
    # 4 x 4 table -> the model's 8 x 8 (cpe_max_size 128 / patch 16): bicubic, corners aligned, so corners are kept
    pos = got["backbone.radio.radio.model.patch_generator.pos_embed"].reshape(8, 8, -1)
    src = sd["radio_model.model.patch_generator.pos_embed"].reshape(4, 4, -1)
    assert torch.allclose(pos[0, 0], src[0, 0], atol=1e-5) and torch.allclose(pos[-1, -1], src[-1, -1], atol=1e-5)


def test_cpe_eval_positions_are_the_resized_tables_top_left_window():
    """Independent of the module: resize the 8 x 8 table to the larger grid side, take the top-left window."""
    model = tiny_segformer("c_radio_v2_tiny").backbone.eval()
    gen = model.radio.radio.model.patch_generator
    table = gen.pos_embed.detach().reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    side = torch.nn.functional.interpolate(table, size=(6, 6), mode="bilinear", align_corners=True)
    want = side[..., :4, :6].flatten(2).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(gen.positions(2, (4, 6)), want, atol=1e-6)
        assert torch.equal(gen.positions(2, (8, 8)), gen.pos_embed)  # the table's own grid: used as it is


def test_cpe_training_crops_each_image_and_drops_positions():
    gen = tiny_segformer("c_radio_v2_tiny").backbone.radio.radio.model.patch_generator.train()
    torch.manual_seed(0)
    pos = gen.positions(64, (4, 6))
    assert pos.shape == (64, 24, gen.pos_embed.shape[-1])
    assert not torch.allclose(pos[0], pos[1])  # a random window per image
    lo, hi = gen.pos_embed.min(), gen.pos_embed.max()
    assert pos.min() >= lo - 1e-5 and pos.max() <= hi + 1e-5  # bilinear samples inside the table
    gen.pos_dropout = 1.0
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = gen(x)
        assert torch.allclose(tokens[:, gen.num_prefix:], gen.embedder(gen.patches(x)))
    gen.eval()
    with torch.no_grad():
        assert torch.equal(gen(x), gen(x))


def test_summary_fusion_uses_all_eight_prefix_tokens():
    model = tao_weighted("c_radio_v2_tiny").backbone
    assert model.num_summary == 8 and model.fc_summary.in_features == 8 * 64
    x = seeded_input(RECIPE)
    with torch.no_grad():
        before = model(x)
        model.radio.radio.model.patch_generator.cls_token.token[7] += 1.0  # the last register token
        after = model(x)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(before, after))


@pytest.mark.parametrize("size", [200, 48])
def test_image_size_a_radio_model_cannot_take_is_a_user_error(size):
    with pytest.raises(UserError, match=rf"img_size={size}.*c_radio_v2_vit_base_patch16_224.*multiple of 32"):
        build_model(make_cfg("c_radio_v2_vit_base_patch16_224", **{"dataset.segment.img_size": size}),
                    load_weights=False)


def test_freeze_backbone_freezes_radio_and_trains_adapter_and_summary_fusion():
    model = tiny_segformer("c_radio_v3_tiny").backbone
    model.freeze_vit()
    model.train()
    vit = model.radio.radio.model
    assert all(not p.requires_grad for p in vit.parameters()) and not vit.training
    assert model.fc_summary.weight.requires_grad and model.conv4.weight.requires_grad and model.conv1.training


@pytest.mark.parametrize("name", list(RADIO_ARCHS))
def test_model_info_counts_tao_parameters(name):
    from segformer_tao.commands.model import model_info

    cfg = make_cfg(name, num_classes=3, embed_dim=256, **{"dataset.segment.img_size": 512})
    info = model_info(cfg)
    # TAO's fuse conv has a bias that our conversion folds into the BatchNorm that follows it
    tao_params = sum(int(np.prod(s)) for k, s in TAO_KEYS[name].items()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked", "linear_fuse.0.bias")))
    assert info["params_total_m"] == pytest.approx(tao_params / 1e6, abs=1e-6)
    assert info["feature_maps"][0] == [RADIO_ARCHS[name]["embed_dim"], 128, 128] and info["gflops"] > 100


def test_onnx_export_matches_torch_in_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = tao_weighted("c_radio_v3_tiny")
    x = seeded_input(RECIPE)
    path = tmp_path / "radio.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], opset_version=17,
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xb = torch.randn(batch, 3, *RECIPE["img_size"])
        with torch.no_grad():
            want = model(xb).numpy()
        got = session.run(["output"], {"input": xb.numpy()})[0]
        assert np.abs(got - want).max() <= 1e-4


def test_openvino_and_onnxruntime_int8_run_the_exported_graph(tmp_path):
    """The exported C-RADIO graph compiles in OpenVINO (same logits as PyTorch) and quantizes to a Q/DQ INT8 graph
    with ONNX Runtime's static PTQ that stays close to float (calibrated on the inputs it is checked on)."""
    onnxruntime = pytest.importorskip("onnxruntime")
    ov = pytest.importorskip("openvino")
    from segformer_tao.deploy.quantization import QuantizeSettings, qdq_summary, quantize_onnx

    model = tao_weighted("c_radio_v2_tiny")
    x = seeded_input(RECIPE)
    path = tmp_path / "radio.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], opset_version=17,
                      dynamo=False)
    with torch.no_grad():
        want = model(x).numpy()
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # fp32 maths
    assert np.abs(compiled([x.numpy()])[0] - want).max() <= 1e-3
    int8 = quantize_onnx(path.read_bytes(), [x], QuantizeSettings())
    assert sum(qdq_summary(int8).values()) > 0
    session = onnxruntime.InferenceSession(int8, providers=["CPUExecutionProvider"])
    got = session.run(["output"], {"input": x.numpy()})[0]
    assert got.shape == want.shape and np.abs(got - want).mean() <= 0.2 * want.std(), (np.abs(got - want).mean(),
                                                                                       want.std())
