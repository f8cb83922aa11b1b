"""End to end through the CLI on the demo dataset: train (tiny) -> export -> evaluate torch vs ONNX -> quantize."""

from __future__ import annotations

import json

import pytest

from segformer_tao.data.synthetic import make_demo_dataset
from tests.conftest import assert_user_error, run_cli

COMMON = ["dataset.segment.img_size=64", "dataset.segment.num_classes=3", "dataset.segment.batch_size=4",
          "dataset.segment.workers=0", "model.backbone.type=mit_b0", "automl_policy=off",
          "dataset.segment.label_transform=None"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_demo_dataset(root / "data", num_classes=3, size=64, train=8, val=4, test=4)
    args = [f"dataset.segment.root_dir={data}", f"results_dir={root}/results", *COMMON]
    result = run_cli("train", *args, "train.num_epochs=2", "train.optim.lr=0.001")
    assert result.returncode == 0, result.output
    return root, data, args


def _results(root, action):
    return json.load(open(f"{root}/results/{action}/results.json"))


@pytest.mark.slow
def test_export_evaluate_onnx_equals_torch_and_quantize(trained):
    root, data, args = trained
    ckpt = f"{root}/results/train/segformer_model_latest.pth"
    exported = run_cli("export", *args, f"export.checkpoint={ckpt}", "export.input_height=64", "export.input_width=64")
    assert exported.returncode == 0, exported.output
    assert "max abs logit difference" in exported.output
    onnx_file = f"{root}/results/export/segformer_model_latest.onnx"
    torch_eval = run_cli("evaluate", *args, f"evaluate.checkpoint={ckpt}", f"results_dir={root}/results/t")
    ort_eval = run_cli("evaluate", *args, f"evaluate.onnx_file={onnx_file}", f"results_dir={root}/results/o")
    assert torch_eval.returncode == 0 and ort_eval.returncode == 0, torch_eval.output + ort_eval.output
    m_torch = json.load(open(f"{root}/results/t/evaluate/results.json"))["mIoU"]
    m_ort = json.load(open(f"{root}/results/o/evaluate/results.json"))["mIoU"]
    assert abs(m_torch - m_ort) <= 1e-4
    calib = f"dataset.segment.quant_calibration_dataset.images_dir={data}/images/train"
    quant = run_cli("quantize", *args, calib, f"quantize.model_path={ckpt}")
    assert quant.returncode == 0, quant.output
    report = json.load(open(f"{root}/results/quantize/quantize_report.json"))
    assert report["int8"]["mIoU"] is not None and report["fp32"]["images_per_s"] > 0
    assert abs(report["fp32"]["mIoU"] - m_torch) <= 1e-4  # the FP32 ONNX scores like the checkpoint
    assert report["qdq"]["quantized_nodes"] > 10
    int8_file = f"{root}/results/quantize/segformer_model_latest_int8.onnx"
    int8_eval = run_cli("evaluate", *args, f"evaluate.onnx_file={int8_file}", f"results_dir={root}/results/q")
    assert int8_eval.returncode == 0, int8_eval.output


@pytest.mark.slow
def test_onnx_of_another_model_and_tensorrt_missing(trained, tmp_path):
    root, data, args = trained
    onnx_file = f"{root}/results/export/segformer_model_latest.onnx"
    if not (tmp_path / "x").exists():
        other = run_cli("export", *[a for a in args if "num_classes" not in a], "dataset.segment.num_classes=3",
                        f"export.checkpoint={root}/results/train/segformer_model_latest.pth",
                        f"export.onnx_file={onnx_file}", "export.input_height=64", "export.input_width=64")
        assert other.returncode == 0, other.output
    wrong = run_cli("evaluate", *[a for a in args if "num_classes" not in a], "dataset.segment.num_classes=5",
                    f"evaluate.onnx_file={onnx_file}", f"results_dir={tmp_path}/r")
    assert_user_error(wrong, "num_classes=5")
    trt = run_cli("gen_trt_engine", *args, f"gen_trt_engine.onnx_file={onnx_file}", f"results_dir={tmp_path}/g")
    try:
        import tensorrt  # noqa: F401
        import torch

        has_trt = torch.cuda.is_available()
    except ImportError:
        has_trt = False
    if not has_trt:
        assert_user_error(trt, "TensorRT")


@pytest.mark.slow
def test_openvino_ir_export_evaluate_and_nncf_int8(trained):
    pytest.importorskip("nncf", reason="NNCF/OpenVINO are not installed (pip install '.[openvino]')")
    root, data, args = trained
    ckpt = f"{root}/results/train/segformer_model_latest.pth"
    torch_eval = run_cli("evaluate", *args, f"evaluate.checkpoint={ckpt}", f"results_dir={root}/results/vt")
    exported = run_cli("export", *args, f"export.checkpoint={ckpt}", "export.format=openvino",
                       f"results_dir={root}/results/vx")
    assert torch_eval.returncode == 0 and exported.returncode == 0, torch_eval.output + exported.output
    m_torch = json.load(open(f"{root}/results/vt/evaluate/results.json"))["mIoU"]
    ir_eval = run_cli("evaluate", *args, f"parent_job={root}/results/vx/export", "evaluate.onnx_engine=openvino",
                      f"results_dir={root}/results/vi")
    assert ir_eval.returncode == 0, ir_eval.output
    ir_results = json.load(open(f"{root}/results/vi/evaluate/results.json"))
    assert ir_results["runtime_label"] == "openvino f32" and abs(ir_results["mIoU"] - m_torch) <= 1e-4
    calib = f"dataset.segment.quant_calibration_dataset.images_dir={data}/images/train"
    quant = run_cli("quantize", *args, calib, f"quantize.model_path={ckpt}", "quantize.backend=nncf",
                    f"results_dir={root}/results/vq")
    assert quant.returncode == 0, quant.output
    report = json.load(open(f"{root}/results/vq/quantize/quantize_report.json"))
    assert abs(report["fp32"]["mIoU"] - m_torch) <= 1e-4  # the FP32 side is the checkpoint's model
    assert report["fake_quantize_ops"] > 10 and report["miou_drop_points"] <= 1.0
    # parent_job picks the INT8 IR (not the FP32 ONNX beside it), which scores as the report says.
    int8_eval = run_cli("evaluate", *args, f"parent_job={root}/results/vq/quantize", f"results_dir={root}/results/v8")
    assert int8_eval.returncode == 0, int8_eval.output
    int8_results = json.load(open(f"{root}/results/v8/evaluate/results.json"))
    assert int8_results["runtime_label"] == "openvino int8+f32"
    assert abs(int8_results["mIoU"] - report["int8"]["mIoU"]) <= 1e-4
