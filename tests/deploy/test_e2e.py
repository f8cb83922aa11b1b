"""End to end through the CLI on the demo dataset: train (tiny) -> export -> evaluate torch vs ONNX -> quantize."""

from __future__ import annotations

import json
import os

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


REPORT_FIELDS = {"format", "backend", "mode", "algorithm", "runtime", "split", "calibration_images",
                 "quantized_layers", "kept_float", "fp32", "int8", "miou_drop_points", "speedup", "size_ratio"}
SIDE_FIELDS = {"mIoU", "overall_accuracy", "images", "images_per_s", "split", "file", "bytes"}


def check_report(report: dict, backend: str) -> None:
    """quantize_report.json's shared fields, consistent with each other and with the files on disk."""
    assert REPORT_FIELDS <= set(report), REPORT_FIELDS - set(report)
    assert report["backend"] == backend and report["format"] == "segformer_tao.quantize_report/2"
    for side in ("fp32", "int8"):
        assert SIDE_FIELDS <= set(report[side]), SIDE_FIELDS - set(report[side])
        assert report[side]["images_per_s"] > 0 and report[side]["images"] > 0 and report[side]["bytes"] > 0
    assert report["int8"]["bytes"] == sum(os.path.getsize(p) for p in _with_bin(report["int8"]["file"]))
    assert report["size_ratio"] == pytest.approx(report["int8"]["bytes"] / report["fp32"]["bytes"])
    assert report["miou_drop_points"] == pytest.approx(100 * (report["fp32"]["mIoU"] - report["int8"]["mIoU"]))
    assert report["quantized_layers"] > 10 and report["kept_float"]


def _with_bin(path: str) -> list[str]:
    return [path, path[:-4] + ".bin"] if path.endswith(".xml") else [path]


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
    check_report(report, "onnxruntime")
    # INT8 scores close to FP32 on the same split (a wrong scale collapses it); the drop is reported as measured
    assert abs(report["int8"]["mIoU"] - report["fp32"]["mIoU"]) <= 0.05, report
    assert report["miou_drop_points"] == pytest.approx(100 * (report["fp32"]["mIoU"] - report["int8"]["mIoU"]))
    assert abs(report["fp32"]["mIoU"] - m_torch) <= 1e-4  # the FP32 ONNX scores like the checkpoint
    assert report["qdq"]["quantized_nodes"] > 10
    int8_file = f"{root}/results/quantize/segformer_model_latest_int8.onnx"
    # ONNX Runtime, as the report's (onnx_engine=auto may pick OpenVINO, whose INT8 kernels round differently)
    int8_eval = run_cli("evaluate", *args, f"evaluate.onnx_file={int8_file}", "evaluate.onnx_engine=onnxruntime",
                        f"results_dir={root}/results/q")
    assert int8_eval.returncode == 0, int8_eval.output
    m_int8 = json.load(open(f"{root}/results/q/evaluate/results.json"))["mIoU"]
    assert m_int8 == pytest.approx(report["int8"]["mIoU"], abs=1e-6)  # the report measured this very file


@pytest.mark.slow
def test_onnx_of_another_model_and_tensorrt_missing(trained, tmp_path):
    root, data, args = trained
    onnx_file = f"{tmp_path}/three_classes.onnx"  # a 3-class model, evaluated with a spec saying 5 classes
    exported = run_cli("export", *args, f"export.checkpoint={root}/results/train/segformer_model_latest.pth",
                       f"export.onnx_file={onnx_file}", "export.input_height=64", "export.input_width=64")
    assert exported.returncode == 0, exported.output
    wrong = run_cli("evaluate", *[a for a in args if "num_classes" not in a], "dataset.segment.num_classes=5",
                    f"evaluate.onnx_file={onnx_file}", f"results_dir={tmp_path}/r")
    # as for a checkpoint: the file's 3 classes are used, and the spec's 5 named in a warning
    assert wrong.returncode == 0, wrong.output
    assert "was trained with class count 3" in wrong.output and "dataset.segment.num_classes=5" in wrong.output
    engine = f"{tmp_path}/g/model.engine"
    trt = run_cli("gen_trt_engine", *args, f"gen_trt_engine.onnx_file={onnx_file}",
                  f"gen_trt_engine.trt_engine={engine}", f"results_dir={tmp_path}/g")
    if _tensorrt_usable():  # the TensorRT path itself: an engine is built
        assert trt.returncode == 0, trt.output[-3000:]
        assert os.path.getsize(engine) > 0
    else:
        assert_user_error(trt, "TensorRT")


def _tensorrt_usable() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


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
    check_report(report, "nncf")
    # parent_job picks the INT8 IR (not the FP32 ONNX beside it), which scores as the report says.
    int8_eval = run_cli("evaluate", *args, f"parent_job={root}/results/vq/quantize", f"results_dir={root}/results/v8")
    assert int8_eval.returncode == 0, int8_eval.output
    int8_results = json.load(open(f"{root}/results/v8/evaluate/results.json"))
    assert int8_results["runtime_label"] == "openvino int8+f32"
    assert abs(int8_results["mIoU"] - report["int8"]["mIoU"]) <= 1e-4


# backend, mode, (module, extra) it needs, the runtime evaluate runs its output with
CHAIN = [("torchao", "weight_only_ptq", ("torchao", "torchao"), "torch"),
         ("torchao", "static_ptq", ("torchao", "torchao"), "torch"),
         ("modelopt.onnx", "static_ptq", ("modelopt.onnx", "modelopt"), "onnxruntime"),
         ("modelopt.pytorch", "static_ptq", ("modelopt.torch", "modelopt"), "onnxruntime")]


@pytest.mark.slow
@pytest.mark.parametrize("backend, mode, needs, runtime", CHAIN, ids=[f"{b}-{m}" for b, m, _, _ in CHAIN])
def test_quantize_backend_chain(trained, backend, mode, needs, runtime):
    """quantize -> evaluate via parent_job (the report's INT8 file, within 1 mIoU point of FP32) -> the file that
    export and gen_trt_engine take from the quantize job."""
    from segformer_tao.errors import UserError
    from segformer_tao.parent import resolve_parent

    pytest.importorskip(needs[0], reason=f"{backend} needs `pip install 'segformer_tao[{needs[1]}]'`")
    root, data, args = trained
    out = f"{root}/results/chain_{backend}_{mode}"
    calib = f"dataset.segment.quant_calibration_dataset.images_dir={data}/images/train"
    quant = run_cli("quantize", *args, calib, f"parent_job={root}/results/train", f"quantize.backend={backend}",
                    f"quantize.mode={mode}", "quantize.device=cpu", f"results_dir={out}")
    assert quant.returncode == 0, quant.output[-3000:]
    # torchao's static_ptq is its dynamic-activation form: said, not silently different
    assert ("torchao's dynamic form" in quant.output) == (backend == "torchao" and mode == "static_ptq")
    report = json.load(open(f"{out}/quantize/quantize_report.json"))
    check_report(report, backend)
    assert abs(report["miou_drop_points"]) <= 1.0, report
    evaluated = run_cli("evaluate", *args, f"parent_job={out}/quantize", "evaluate.onnx_engine=onnxruntime",
                        f"results_dir={out}/eval")
    assert evaluated.returncode == 0, evaluated.output[-3000:]
    results = json.load(open(f"{out}/eval/evaluate/results.json"))
    assert results["runtime"] == runtime
    assert results["mIoU"] == pytest.approx(report["int8"]["mIoU"], abs=1e-6)  # the report measured this file
    int8 = report["int8"]["file"]
    if backend == "torchao":
        assert resolve_parent("export", f"{out}/quantize")[:2] == ("export.checkpoint", int8)
        with pytest.raises(UserError, match="torchao quantize job"):
            resolve_parent("gen_trt_engine", f"{out}/quantize")
    else:
        assert resolve_parent("gen_trt_engine", f"{out}/quantize")[:2] == ("gen_trt_engine.onnx_file", int8)
        assert int8.endswith("_int8.onnx") and report["qdq"]["quantized_nodes"] == report["quantized_layers"]
