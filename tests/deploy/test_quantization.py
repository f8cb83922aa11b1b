"""ORT static Q/DQ quantization: valid Q/DQ ONNX for TensorRT, float nodes kept, close to FP32 in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from segformer_tao.deploy import onnx_export
from segformer_tao.deploy.calibration import rebatch
from segformer_tao.deploy.onnxruntime import make_session
from segformer_tao.deploy.quantization import (
    QuantizeSettings,
    attention_matmuls,
    classifier_nodes,
    nodes_to_exclude,
    qdq_summary,
    quantize_onnx,
)
from segformer_tao.errors import UserError
from tests.deploy.conftest import IMG, NUM_CLASSES, deploy_cfg


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    from segformer_tao.model import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = deploy_cfg("export", tmp_path_factory.mktemp("q"))
    model = build_model(cfg, load_weights=False).eval()
    settings = onnx_export.ExportSettings(height=IMG, width=IMG)
    return onnx_export.simplify(onnx_export.export_onnx_bytes(model, settings))


def _calib(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, IMG, IMG, generator=g) for _ in range(n)]


@pytest.mark.parametrize("algorithm", ["minmax", "entropy", "percentile"])
def test_qdq_onnx_is_valid_symmetric_and_runs(fp32_onnx, algorithm):
    int8 = quantize_onnx(fp32_onnx, _calib(), QuantizeSettings(algorithm=algorithm))
    proto = onnx.load_from_string(int8)
    onnx.checker.check_model(proto, full_check=True)
    summary = qdq_summary(int8)
    assert summary["quantized_nodes"] > 10 and summary["quantize_linear"] > 0
    # TensorRT explicit quantization: signed int8 with zero point 0 everywhere.
    zero_points = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if "zero_point" in i.name}
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points.values())
    x = np.random.default_rng(0).standard_normal((3, 3, IMG, IMG)).astype(np.float32)  # batch stays dynamic
    ref = make_session(fp32_onnx).run(None, {"input": x})[0]
    got = make_session(int8).run(None, {"input": x})[0]
    assert got.shape == ref.shape == (3, NUM_CLASSES, IMG // 4, IMG // 4)
    # Bounded relative error (a wrong scale or offset fails it, unlike a correlation) and the same classes.
    # Measured on this random-init mit_b0: ~0.025 relative error, ~98.8% argmax agreement for every algorithm.
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    agree = (got.argmax(1) == ref.argmax(1)).mean()
    assert rel < 0.08 and agree > 0.95, (rel, agree)


def test_classifier_and_attention_stay_float(fp32_onnx):
    model = onnx.load_from_string(fp32_onnx)
    classifier = classifier_nodes(model)
    attention = attention_matmuls(model)
    assert len(classifier) == 1 and len(attention) == 2 * 8  # mit_b0: 8 blocks, Q.K^T and attn.V each
    int8 = onnx.load_from_string(quantize_onnx(fp32_onnx, _calib(2), QuantizeSettings()))
    producers = {o: n for n in int8.graph.node for o in n.output}
    by_name = {n.name: n for n in int8.graph.node}
    missing = [name for name in classifier + attention if name not in by_name]
    assert not missing, f"the quantizer renamed nodes that must stay float: {missing}"
    for name in classifier + attention:
        node = by_name[name]
        assert all(getattr(producers.get(i), "op_type", "") != "DequantizeLinear" for i in node.input), name
    assert qdq_summary(int8.SerializeToString())["quantized_nodes"] > 10  # while the rest is quantized


def test_skip_names_globs_and_unknown_names(fp32_onnx):
    model = onnx.load_from_string(fp32_onnx)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    excluded = nodes_to_exclude(model, QuantizeSettings(skip_names=[convs[0], "*block4.1/mlp*"]))
    assert convs[0] in excluded and any("block4.1/mlp/fc2" in n for n in excluded)
    with pytest.raises(UserError, match="matches no node"):
        nodes_to_exclude(model, QuantizeSettings(skip_names=["no_such_layer"]))


def test_unsupported_algorithm_and_empty_calibration(fp32_onnx):
    with pytest.raises(UserError, match="awq_lite"):
        quantize_onnx(fp32_onnx, _calib(1), QuantizeSettings(algorithm="awq_lite"))
    with pytest.raises(UserError, match="No calibration images"):
        quantize_onnx(fp32_onnx, [], QuantizeSettings())


def test_rebatch_fixed_batches():
    batches = [torch.zeros(3, 1, 2, 2), torch.ones(4, 1, 2, 2), torch.ones(1, 1, 2, 2)]
    out = list(rebatch(batches, batch_size=2, max_batches=10))
    assert [b.shape[0] for b in out] == [2, 2, 2, 2]
    assert len(list(rebatch(batches, batch_size=2, max_batches=3))) == 3


@pytest.mark.parametrize("backend, module, extra", [
    ("modelopt.onnx", "modelopt", "modelopt"), ("modelopt.pytorch", "modelopt", "modelopt"),
    ("torchao", "torchao", "torchao"), ("nncf", "nncf", "openvino")])
def test_missing_backend_package_names_the_extra(monkeypatch, backend, module, extra):
    """Where a backend's package is absent (an import that fails), quantize stops first with the extra to install."""
    import sys

    from segformer_tao.deploy.quant_backends import require_backend
    from segformer_tao.errors import NotAvailableError

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)
    expected = rf"quantize.backend={backend} needs .*pip install 'segformer_tao\[{extra}\]'"
    with pytest.raises(NotAvailableError, match=expected):
        require_backend(backend)
