"""DeepStream on CPU: nvinfer's value checks accept our config, and nvinfer's segmentation parsing rule applied to
the DeepStream ONNX (in ONNX Runtime) gives `segformer inference`'s masks on the demo set."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image

from segformer_tao.actions import export, inference
from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.deploy import deepstream
from segformer_tao.deploy.onnxruntime import make_session
from segformer_tao.errors import UserError
from tests.deploy import nvinfer_model
from tests.deploy.conftest import IMG, NUM_CLASSES, deploy_cfg, save_tiny_checkpoint

# Per-channel std: nvinfer has a single net-scale-factor, so this checks the in-graph normalization.
IMAGENET = ["dataset.segment.augmentation.mean=[0.485,0.456,0.406]",
            "dataset.segment.augmentation.std=[0.229,0.224,0.225]"]


def _sharpened_checkpoint(path: str, cfg) -> str:
    """A random mit_b0 whose classifier is scaled up so that its class maps are varied, not one class."""
    from segformer_tao.engine.checkpoint import load_checkpoint, save_checkpoint
    from segformer_tao.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == NUM_CLASSES][-1]
    with torch.no_grad():
        head.weight.mul_(20.0)
    save_tiny_checkpoint(path, cfg, model=model)
    payload = load_checkpoint(path)
    payload["meta"]["palette"] = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]  # inference draws overlays with it
    save_checkpoint(path, payload)
    return path


def test_nvinfer_parsing_of_deepstream_onnx_equals_inference(tmp_path):
    torch.set_num_threads(1)
    data = make_demo_dataset(tmp_path / "data", num_classes=NUM_CLASSES, size=IMG, train=1, val=1, test=8)
    common = [f"dataset.segment.root_dir={data}", "dataset.segment.label_transform=None", *IMAGENET]
    cfg = deploy_cfg("export", tmp_path, *common)
    ckpt = _sharpened_checkpoint(str(tmp_path / "tiny.pth"), cfg)
    result = export.run(deploy_cfg("export", tmp_path, *common, f"export.checkpoint={ckpt}",
                                   "export.serialize_nvdsinfer=true", "export.simplify=false"))
    config_path = result["artifacts"]["nvdsinfer_config"]
    prop = nvinfer_model.check_property_group(config_path)
    assert prop["network-type"] == 2 and prop["num-detected-classes"] == NUM_CLASSES
    assert prop["network-mode"] == 2  # gen_trt_engine.tensorrt.data_type's default fp16
    folder = os.path.dirname(config_path)
    labels = open(os.path.join(folder, prop["labelfile-path"])).read().splitlines()
    assert labels == ["c0", "c1", "c2"]
    ds_onnx = os.path.join(folder, prop["onnx-file"])
    pinned = {item.split(":")[0] for item in prop["layer-device-precision"].split(";")}
    ops = {n.name: n.op_type for n in onnx.load(ds_onnx).graph.node}
    assert pinned <= set(ops) and {ops[n] for n in pinned} >= {"LayerNormalization", "Softmax"}

    inferred = inference.run(deploy_cfg("inference", tmp_path, *common, f"inference.checkpoint={ckpt}"))
    masks = inferred["artifacts"]["masks"]
    session = make_session(ds_onnx)
    (input_name,), (output_name,) = [i.name for i in session.get_inputs()], prop["output-blob-names"].split(";")
    equal = total = 0
    seen: set[int] = set()
    for name in sorted(os.listdir(data / "images" / "test")):
        rgb = np.asarray(Image.open(data / "images" / "test" / name).convert("RGB"))
        output = session.run([output_name], {input_name: nvinfer_model.preprocess(rgb, prop)})[0][0]
        class_map = nvinfer_model.fill_segmentation_output(output, prop["segmentation-threshold"],
                                                           prop["segmentation-output-order"])
        ours = np.asarray(Image.open(os.path.join(masks, f"{os.path.splitext(name)[0]}.png")))
        assert class_map.shape == ours.shape  # the class map is at the image's resolution, not 1/4
        equal += int((class_map == ours).sum())
        total += ours.size
        seen |= set(np.unique(class_map).tolist())
    assert -1 not in seen and len(seen) == NUM_CLASSES, seen  # varied masks, no unassigned pixels
    assert equal / total >= 0.999, f"{equal}/{total} pixels equal"


def test_precision_follows_the_engine_and_fp32_needs_no_pins():
    fp32 = deepstream.nvinfer_config(onnx_name="m.onnx", labels_name="l.txt", num_classes=2, height=64, width=32,
                                     precision=deepstream.precision_for_deepstream("fp32"))["property"]
    assert fp32["network-mode"] == 0 and "layer-device-precision" not in fp32
    assert fp32["infer-dims"] == "3;64;32"
    # nvinfer has no bf16, and its own INT8 build lacks a calibration file for this graph: FP16 + FP32 pins
    assert deepstream.precision_for_deepstream("bf16") == deepstream.precision_for_deepstream("int8") == "fp16"


def test_value_checks_reject_what_nvinfer_rejects(tmp_path):
    # The model of nvinfer's checks is itself checked: the config we used to write must fail it.
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "l.txt").write_text("a\nb\n")
    good = deepstream.nvinfer_config(onnx_name="m.onnx", labels_name="l.txt", num_classes=2, height=64, width=64,
                                     fp32_layers=["fp32_Softmax_1"])
    for change, message in [({"segmentation-threshold": -1.0e4}, "Negative value"),
                            ({"batch-size": 2000}, "batch-size"),
                            ({"layer-device-precision": "x" * 60 + ":fp32:gpu"}, "only the first 64"),
                            ({"layer-device-precision": "a:fp64:gpu"}, "precisionType"),
                            ({"network-mode": 3}, "network-mode"), ({"bogus-key": 1}, "Unknown")]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"property": {**good["property"], **change}}))
        with pytest.raises(nvinfer_model.NvinferConfigError, match=message):
            nvinfer_model.check_property_group(str(path))
    path.write_text(yaml.safe_dump(good))
    nvinfer_model.check_property_group(str(path))


def test_batch_size_nvinfer_cannot_take(tmp_path, tiny_checkpoint):
    cfg = deploy_cfg("export", tmp_path, f"export.checkpoint={tiny_checkpoint}", "export.serialize_nvdsinfer=true",
                     "export.batch_size=2048")
    with pytest.raises(UserError, match=r"export.batch_size=2048.*batch-size 1\.\.1024"):
        export.run(cfg)
