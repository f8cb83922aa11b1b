"""export.format=huggingface: the folder transformers loads as is, checked against transformers itself.

References are independent of the export code: transformers' own from_pretrained/SegformerImageProcessor/
post_process_semantic_segmentation, the safetensors file transformers' save_pretrained writes, our checkpoint
loader and `segformer inference`/`evaluate` run through the CLI on the source checkpoint.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

from segformer_tao.actions import export
from segformer_tao.config import compose_config
from segformer_tao.data.synthetic import make_demo_dataset, make_sample
from segformer_tao.data.transforms import preprocess_image
from segformer_tao.deploy.hf_runtime import read_hf_folder
from segformer_tao.engine.checkpoint import load_model_from_checkpoint
from segformer_tao.errors import UserError
from segformer_tao.model.backbones.mit import MIT_ARCHS
from segformer_tao.model.hf_format import check_exportable, to_hf_state_dict
from segformer_tao.model.weights import convert_state_dict
from tests.conftest import run_cli
from tests.deploy.conftest import IMG, deploy_cfg, save_tiny_checkpoint
from tests.model.test_hf_parity import random_hf

KEY = "hf-export-test-key"
ENV = {"SEGFORMER_KEY": KEY}
KEY_ARG = "encryption_key=${oc.env:SEGFORMER_KEY}"  # the recommended form: no literal key on the command line
COMMON = ["dataset.segment.batch_size=4", "dataset.segment.workers=0", "model.backbone.type=mit_b0",
          "model.decode_head.decoder_params.embed_dim=64", "automl_policy=off"]
SIZES = [(64, 64), (97, 53), (150, 200), (40, 120)]  # (height, width): several sizes and aspect ratios


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """mit_b0 trained 4 epochs on the demo data with an encryption key, exported through the CLI."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    data = make_demo_dataset(root / "data", num_classes=3, size=64, train=16, val=4, test=4)
    args = ["-e", f"{data}/spec.yaml", f"results_dir={root}/results", *COMMON, KEY_ARG]
    train = run_cli("train", *args, "train.num_epochs=4", "train.optim.lr=0.006", env=ENV)
    assert train.returncode == 0, train.output
    exported = run_cli("export", *args, f"parent_job={root}/results/train", "export.format=huggingface", env=ENV)
    assert exported.returncode == 0, exported.output
    job = json.load(open(f"{root}/results/export/job.json"))
    folder = os.path.dirname(job["artifacts"]["huggingface_weights"]["path"])
    ckpt = f"{root}/results/train/segformer_model_best.pth"
    return types.SimpleNamespace(root=root, data=data, args=args, folder=folder, ckpt=ckpt, output=exported.output)


@pytest.mark.slow
def test_export_says_the_folder_is_plain_and_what_the_processor_cannot_express(trained):
    assert trained.folder == f"{trained.root}/results/export/segformer_model_best_hf"
    assert sorted(os.listdir(trained.folder)) == ["README.md", "config.json", "model.safetensors",
                                                  "preprocessor_config.json"]
    assert f"NOT encrypted: {trained.folder}/model.safetensors" in trained.output  # the key is set: named as plain
    assert "plain files, not encrypted" in trained.output
    assert sum("cannot express" in line for line in trained.output.splitlines()) == 1
    assert KEY not in trained.output
    load_file(f"{trained.folder}/model.safetensors")  # plain: readable without the key
    card = open(f"{trained.folder}/README.md").read()
    assert "export.format=huggingface" in card and "val_miou" in card and "16 images" in card
    assert "encryption_key=***" in card and KEY not in card


@pytest.mark.slow
def test_transformers_loads_the_folder_with_no_missing_keys_and_our_logits(trained):
    hf, info = SegformerForSemanticSegmentation.from_pretrained(trained.folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ours, meta = load_model_from_checkpoint(trained.ckpt, KEY)
    config = hf.config
    assert config.id2label == dict(enumerate(meta.class_names)) and len(set(meta.class_names)) == 3
    assert config.label2id == {n: i for i, n in enumerate(meta.class_names)}
    assert config.semantic_loss_ignore_index == 255 and config.decoder_hidden_size == 64
    assert list(config.depths) == list(MIT_ARCHS["mit_b0"]["depths"])
    assert list(config.hidden_sizes) == list(MIT_ARCHS["mit_b0"]["embed_dims"])
    torch.manual_seed(1)
    for shape in [(2, 3, IMG, IMG), (1, 3, 96, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            diff = (hf.eval()(pixel_values=x).logits - ours.eval()(x)).abs().max().item()
        assert diff <= 1e-4, (shape, diff)


def _images_of_several_sizes(folder) -> list[str]:
    rng = np.random.default_rng(7)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        img, _ = make_sample(rng, 3, max(h, w))  # shapes at the scale of the image, as in training
        path = f"{folder}/images/test/{i:04d}.png"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(img[:h, :w]).save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_transformers_pipeline_gives_segformer_inference_masks(trained, tmp_path):
    paths = _images_of_several_sizes(tmp_path / "pred")
    inferred = run_cli("inference", *trained.args, f"dataset.segment.root_dir={tmp_path}/pred",
                       f"inference.checkpoint={trained.ckpt}", f"results_dir={tmp_path}/out", env=ENV)
    assert inferred.returncode == 0, inferred.output
    processor = SegformerImageProcessor.from_pretrained(trained.folder)
    hf = SegformerForSemanticSegmentation.from_pretrained(trained.folder).eval()
    pixels = np.zeros(3)  # predicted pixels per class
    for path, (h, w) in zip(paths, SIZES):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            outputs = hf(**processor(images=image, return_tensors="pt"))
        mask = processor.post_process_semantic_segmentation(outputs, target_sizes=[(h, w)])[0].numpy()
        ours = np.asarray(Image.open(f"{tmp_path}/out/inference/masks/{os.path.basename(path)}"))
        assert mask.shape == ours.shape == (h, w)
        agree = float((mask == ours).mean())
        assert agree >= 0.999, (path, agree)
        pixels += np.bincount(ours.flatten(), minlength=3)
    # a model predicting one class nearly everywhere would prove nothing: the 0.1% allowed must be far below this
    assert (pixels / pixels.sum() >= 0.05).sum() >= 2, pixels / pixels.sum()


@pytest.mark.slow
def test_evaluate_with_the_folder_scores_like_the_source_checkpoint(trained):
    root = trained.root
    source = run_cli("evaluate", *trained.args, f"evaluate.checkpoint={trained.ckpt}",
                     f"evaluate.results_dir={root}/eval_ckpt", env=ENV)
    folder = run_cli("evaluate", *trained.args, f"parent_job={root}/results/export",
                     f"evaluate.results_dir={root}/eval_hf", env=ENV)
    assert source.returncode == 0 and folder.returncode == 0, source.output + folder.output
    assert f"evaluate.checkpoint = {trained.folder} (Hugging Face folder" in folder.output
    a, b = (json.load(open(f"{root}/{d}/results.json")) for d in ("eval_ckpt", "eval_hf"))
    assert b["runtime_label"] == "torch (Hugging Face folder)"
    assert b["class_names"] == a["class_names"] and b["images"] == a["images"] == 4
    assert abs(a["mIoU"] - b["mIoU"]) <= 1e-9 and a["confusion_matrix"] == b["confusion_matrix"]


@pytest.mark.slow
def test_encrypted_checkpoint_needs_its_key(trained, tmp_path):
    out = tmp_path / "hf_out"
    cfg = compose_config("export", [f"dataset.segment.root_dir={trained.data}", f"results_dir={tmp_path}",
                                    f"export.checkpoint={trained.ckpt}", "export.format=huggingface",
                                    f"export.huggingface_dir={out}"])
    with pytest.raises(UserError, match="is encrypted but no encryption_key was given"):
        export.run(cfg)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".hf_out")]


# ----------------------------------------------------------------------------------------- fast, on a tiny model
def _hf_export_cfg(tmp_path, checkpoint, *overrides):
    return deploy_cfg("export", tmp_path, f"export.checkpoint={checkpoint}", "export.format=huggingface", *overrides)


@pytest.fixture
def tiny_folder(tmp_path, tiny_checkpoint, caplog):
    out = tmp_path / "exported"
    out.mkdir()  # an empty folder is taken
    result = export.run(_hf_export_cfg(tmp_path, tiny_checkpoint, f"export.huggingface_dir={out}",
                                       "export.dynamic_hw=true"))
    assert result["metrics"]["hf_max_abs_diff"] <= 1e-4
    assert "export.dynamic_hw=True shape the ONNX export only" in caplog.text  # named, not silently dropped
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".exported")]  # no temp folder left
    return str(out)


def test_image_processor_from_the_folder_preprocesses_like_us(tiny_folder):
    processor = SegformerImageProcessor.from_pretrained(tiny_folder)
    seg = deploy_cfg("export", "/unused").dataset.segment  # the tiny checkpoint's mean/std/img_size
    rng = np.random.default_rng(3)
    for h, w in SIZES:
        img = make_sample(rng, 3, 200)[0][:h, :w]
        theirs = processor(images=Image.fromarray(img), return_tensors="pt")["pixel_values"][0]
        ours = preprocess_image(img, IMG, list(seg.augmentation.mean), list(seg.augmentation.std))
        assert theirs.shape == ours.shape == (3, IMG, IMG)
        assert (theirs - ours).abs().max().item() <= 1e-5


def test_folder_reads_back_with_the_checkpoints_metadata_and_logits(tiny_folder, tiny_checkpoint):
    model, meta = read_hf_folder(tiny_folder)
    ours, source = load_model_from_checkpoint(tiny_checkpoint)
    for key in ("class_names", "palette", "img_size", "num_classes", "backbone", "embed_dim", "ignore_index"):
        assert getattr(meta, key) == getattr(source, key), key
    assert meta.mean == pytest.approx(source.mean) and meta.std == pytest.approx(source.std)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(model(x), ours(x))  # the same network with the same tensors


def test_a_hub_folder_with_its_own_processor_runs_like_transformers(tmp_path):
    """A folder written by transformers itself (as from the Hub): our reader computes what transformers computes,
    and converts a processor with do_rescale=false (0-255 mean/std) to our 0-1 units."""
    hf = random_hf("mit_b0", (1, 1, 1, 1), 32, num_labels=4)
    hf.save_pretrained(tmp_path)
    processor = SegformerImageProcessor(size={"height": 64, "width": 64}, do_rescale=False,
                                        image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375])
    processor.save_pretrained(tmp_path)
    model, meta = read_hf_folder(str(tmp_path))
    assert meta.img_size == 64 and meta.num_classes == 4 and meta.class_names[0] == "LABEL_0"
    img = make_sample(np.random.default_rng(0), 3, 90)[0]
    ours = preprocess_image(img, meta.img_size, meta.mean, meta.std)[None]
    theirs = processor(images=Image.fromarray(img), return_tensors="pt")["pixel_values"]
    assert (ours - theirs).abs().max().item() <= 1e-4
    with torch.no_grad():
        assert (model(ours) - hf(pixel_values=theirs).logits).abs().max().item() <= 1e-4


def test_our_tensors_in_the_names_transformers_writes(tmp_path):
    """transformers' own save_pretrained file -> our model -> to_hf_state_dict gives the same names and tensors."""
    hf = random_hf("mit_b0", (1, 2, 1, 1), 32, num_labels=3)
    hf.save_pretrained(tmp_path)
    reference = load_file(f"{tmp_path}/model.safetensors")
    ours = convert_state_dict(reference)
    back = to_hf_state_dict(ours)
    assert sorted(back) == sorted(reference)
    for name, tensor in reference.items():
        assert torch.equal(back[name], tensor), name
    with pytest.raises(ValueError, match="backbone.extra.weight"):
        to_hf_state_dict({**ours, "backbone.extra.weight": torch.zeros(1)})


def test_existing_non_empty_output_folder_is_refused(tmp_path, tiny_checkpoint):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=f"export.huggingface_dir='{out}' already exists and is not empty"):
        export.run(_hf_export_cfg(tmp_path, tiny_checkpoint, f"export.huggingface_dir={out}"))
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_fan_backbone_is_refused_with_the_reason(tmp_path):
    cfg = _hf_export_cfg(tmp_path, f"{tmp_path}/fan.pth", "model.backbone.type=fan_tiny_8_p4_hybrid",
                         "model.decode_head.decoder_params.embed_dim=32")
    save_tiny_checkpoint(f"{tmp_path}/fan.pth", cfg)
    with pytest.raises(UserError, match="backbone is fan_tiny_8_p4_hybrid .*transformers has no such architecture"):
        export.run(cfg)
    assert not os.path.exists(f"{tmp_path}/results/export/fan_hf")


@pytest.mark.parametrize("backbone,family", [("vit_large_nvdinov2", "ViT-Adapter"),
                                             ("vit_base_nvclip_16_siglip", "ViT-Adapter"), ("c_radio_v3_b", "C-RADIO")])
def test_vit_and_radio_backbones_are_refused_with_the_reason(backbone, family):
    model = types.SimpleNamespace(backbone_name=backbone)  # the check reads the name only: no 300M-weight ViT here
    with pytest.raises(UserError, match=f"{backbone} \\({family}\\).*transformers has no such architecture"):
        check_exportable(model, "vit.pth")


def test_a_failed_check_leaves_neither_folder_nor_temp_files(tmp_path, tiny_checkpoint, monkeypatch):
    from segformer_tao.deploy import huggingface

    monkeypatch.setattr(huggingface, "_check_with_transformers", lambda *a: 0.5)  # as if transformers disagreed
    with pytest.raises(UserError, match="computes logits 0.5 away .*nothing was written"):
        export.run(_hf_export_cfg(tmp_path, tiny_checkpoint))
    export_dir = tmp_path / "results" / "export"
    assert not export_dir.exists() or not os.listdir(export_dir)  # no tiny_hf, no .tiny_hf.tmp-*
