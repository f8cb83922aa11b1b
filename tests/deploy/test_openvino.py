"""OpenVINO runtime: parity with ONNX Runtime and PyTorch, IR export, bf16 only where native, engine choice,
bad inputs (IR without .bin, IR of another size)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from segformer_tao import hardware
from segformer_tao.actions import evaluate, export
from segformer_tao.deploy import cpu_select, openvino
from segformer_tao.deploy.onnxruntime import OrtRuntime
from segformer_tao.errors import UserError
from tests.deploy.conftest import IMG, NUM_CLASSES, deploy_cfg, save_tiny_checkpoint

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install '.[openvino]')")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ov_ckpt")
    return save_tiny_checkpoint(str(tmp / "tiny.pth"), deploy_cfg("export", tmp))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint exported with export.format=openvino: (onnx path, xml path, export result)."""
    tmp = tmp_path_factory.mktemp("ov_export")
    cfg = deploy_cfg("export", tmp, f"export.checkpoint={tiny_checkpoint}", "export.format=openvino",
                     f"export.onnx_file={tmp}/m/model.onnx")
    result = export.run(cfg)
    return result["artifacts"]["onnx_file"], result["artifacts"]["openvino_xml"], result


def _torch_logits(checkpoint, x):
    from segformer_tao.engine.checkpoint import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(checkpoint)
    with torch.no_grad():
        return model.eval()(x)


def test_openvino_f32_matches_onnxruntime_and_torch(exported, tiny_checkpoint):
    onnx_file, xml, result = exported
    assert os.path.exists(os.path.splitext(xml)[0] + ".bin") and result["metrics"]["openvino_max_abs_diff"] <= 1e-4
    x = torch.randn(3, 3, IMG, IMG)  # batch 3: the export is dynamic-batch
    ort = OrtRuntime(onnx_file, num_classes=NUM_CLASSES, img_size=IMG).predict(x)
    ref = _torch_logits(tiny_checkpoint, x)
    for path in (onnx_file, xml):
        rt = openvino.OpenVinoRuntime(path, num_classes=NUM_CLASSES, img_size=IMG, precision="f32")
        got = rt.predict(x)
        assert got.shape == (3, NUM_CLASSES, IMG // 4, IMG // 4) and rt.label == "openvino f32"
        assert (got - ort).abs().max() <= 1e-4 and (got - ref).abs().max() <= 1e-4
    ir = openvino.OpenVinoRuntime(xml, num_classes=NUM_CLASSES)
    assert ir.meta.class_names == ["c0", "c1", "c2"] and ir.meta.img_size == IMG  # meta travels in the IR


def test_bf16_without_native_support_notes_and_runs_f32(exported, monkeypatch, capsys):
    onnx_file, _, _ = exported
    monkeypatch.setattr(hardware, "cpu_flags", lambda: dict.fromkeys(hardware.CPU_FLAGS, False))
    rt = openvino.OpenVinoRuntime(onnx_file, num_classes=NUM_CLASSES, precision="bf16",
                                  precision_key="evaluate.cpu_precision")
    assert rt.precision == "f32" and rt.label == "openvino f32"
    out = capsys.readouterr().out
    assert "evaluate.cpu_precision=bf16" in out and "Running f32" in out
    x = torch.randn(1, 3, IMG, IMG)
    f32 = openvino.OpenVinoRuntime(onnx_file, num_classes=NUM_CLASSES, precision="f32").predict(x)
    assert torch.equal(rt.predict(x), f32)  # really compiled in f32, not OpenVINO's bf16 default


@pytest.mark.skipif(not openvino.native_bf16(), reason="this CPU has no native BF16 (AVX-512 BF16 or AMX)")
def test_bf16_where_native_is_close_to_f32(exported, capsys):
    onnx_file, _, _ = exported
    x = torch.randn(2, 3, IMG, IMG)
    bf16 = openvino.OpenVinoRuntime(onnx_file, num_classes=NUM_CLASSES, precision="bf16")
    f32 = openvino.OpenVinoRuntime(onnx_file, num_classes=NUM_CLASSES, precision="f32").predict(x)
    got = bf16.predict(x)
    assert bf16.precision == "bf16" and "Running f32" not in capsys.readouterr().out
    diff = (got - f32).abs().max()
    assert 0 < diff <= 0.05 * f32.abs().max()  # bf16 rounding: not bit-equal to f32, but close


def test_ir_without_bin_and_ir_of_another_size(exported, tmp_path):
    _, xml, _ = exported
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(open(xml, "rb").read())
    with pytest.raises(UserError, match="lonely.bin"):
        openvino.OpenVinoRuntime(str(lonely), num_classes=NUM_CLASSES)
    with pytest.raises(UserError, match="fixed input size 64x64, not 128x128"):
        openvino.OpenVinoRuntime(xml, num_classes=NUM_CLASSES, img_size=128)
    with pytest.raises(UserError, match="outputs 3 classes but 5 were expected"):
        openvino.OpenVinoRuntime(xml, num_classes=5)


def test_engine_choice(exported, tmp_path, capsys):
    onnx_file, xml, _ = exported
    cfg = deploy_cfg("evaluate", tmp_path, f"evaluate.onnx_file={onnx_file}")
    auto = cpu_select.open_onnx_runtime(onnx_file, cfg, "evaluate")
    out = capsys.readouterr().out
    assert "evaluate.onnx_engine=auto" in out and "onnxruntime" in out and "openvino f32" in out
    assert out.strip().endswith(auto.label)  # the printed choice is the runtime returned
    cfg.evaluate.onnx_engine = "onnxruntime"
    cfg.evaluate.cpu_precision = "bf16"
    assert cpu_select.open_onnx_runtime(onnx_file, cfg, "evaluate").name == "onnxruntime"
    assert "applies to OpenVINO only" in capsys.readouterr().out
    with pytest.raises(UserError, match="ONNX Runtime cannot read"):
        cpu_select.open_onnx_runtime(xml, cfg, "evaluate")
    cfg.evaluate.onnx_engine = "openvino"
    cfg.evaluate.cpu_precision = "f32"
    assert cpu_select.open_onnx_runtime(onnx_file, cfg, "evaluate").label == "openvino f32"


def test_evaluate_through_openvino_equals_torch(exported, tmp_path, tiny_checkpoint):
    from segformer_tao.data.synthetic import make_demo_dataset
    from segformer_tao.deploy.runtime import open_runtime

    onnx_file, xml, _ = exported
    make_demo_dataset(tmp_path / "data", num_classes=NUM_CLASSES, size=IMG, train=1, val=6, test=6)
    scores = {}
    for name, key in (("torch", f"evaluate.checkpoint={tiny_checkpoint}"), ("ir", f"evaluate.onnx_file={xml}"),
                      ("ov_onnx", f"evaluate.onnx_file={onnx_file}")):
        cfg = deploy_cfg("evaluate", tmp_path, key, "evaluate.onnx_engine=openvino",
                         "dataset.segment.label_transform=None")
        runtime = open_runtime(cfg, "evaluate")
        assert runtime.name == ("torch" if name == "torch" else "openvino")
        scores[name] = evaluate.evaluate_runtime(cfg, runtime, None, batch_size=4)
    assert scores["torch"]["images"] == scores["ir"]["images"] == 6
    for name in ("ir", "ov_onnx"):
        assert abs(scores[name]["mIoU"] - scores["torch"]["mIoU"]) <= 1e-4
        assert scores[name]["confusion_matrix"] == scores["torch"]["confusion_matrix"]
    assert np.isfinite(scores["torch"]["mIoU"])


def test_missing_extra_names_it(exported, tmp_path, monkeypatch):
    import sys

    from segformer_tao.deploy import quant_backends
    from segformer_tao.errors import NotAvailableError

    onnx_file, _, _ = exported
    cfg = deploy_cfg("evaluate", tmp_path, f"evaluate.onnx_file={onnx_file}", "evaluate.onnx_engine=openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(NotAvailableError, match=r"evaluate.onnx_file needs OpenVINO.*segformer_tao\[openvino\]"):
        cpu_select.open_onnx_runtime(onnx_file, cfg, "evaluate")
    monkeypatch.setattr(quant_backends.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NotAvailableError, match=r"quantize.backend=nncf.*segformer_tao\[openvino\]"):
        quant_backends.require_backend("nncf")


def test_nncf_keeps_classifier_and_attention_float(exported):
    from segformer_tao.deploy import quant_backends

    _, xml, _ = exported
    model, _ = openvino.read_model(xml, "x")
    kept = quant_backends.openvino_float_ops(model, classifier=True, attention=True,
                                             skip_names=["*decode_head/Conv_1*"])
    assert [n for n in kept if "linear_pred" in n] == ["/model/decode_head/linear_pred/Conv/WithoutBiases"]
    attention = [n for n in kept if "/attn/MatMul" in n]
    assert len(attention) == 16  # mit_b0: 8 blocks x (Q.K^T, softmax.V); q/kv/proj MatMuls have weights
    assert "/model/decode_head/Conv_1/WithoutBiases" in kept
    with pytest.raises(UserError, match="'nope' matches no"):
        quant_backends.openvino_float_ops(model, classifier=False, attention=False, skip_names=["nope"])
