"""TensorRT paths that need no GPU: config -> builder settings, profile shapes; the rest skips with a reason."""

from __future__ import annotations

import pytest
import torch

from segformer_tao.deploy import tensorrt
from segformer_tao.errors import NotAvailableError, UserError
from tests.deploy.conftest import deploy_cfg


def test_settings_from_config_dynamic_batch_and_hw(tmp_path):
    cfg = deploy_cfg("gen_trt_engine", tmp_path, "gen_trt_engine.onnx_file=m.onnx",
                     "gen_trt_engine.tensorrt.min_batch_size=1", "gen_trt_engine.tensorrt.opt_batch_size=4",
                     "gen_trt_engine.tensorrt.max_batch_size=8", "gen_trt_engine.tensorrt.data_type=fp16",
                     "gen_trt_engine.tensorrt.workspace_size=2048",
                     "gen_trt_engine.tensorrt.layers_precision=[head*:fp32]")
    s = tensorrt.settings_from_config(cfg.gen_trt_engine, ["batch", 3, "height", "width"], img_size=64)
    assert (s.profile.min, s.profile.opt, s.profile.max) == ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert s.data_type == "fp16" and s.workspace_mib == 2048 and s.layers_precision == [("head*", "fp32")]
    rules = tensorrt._layer_precision_rules(s)  # fp16 pins LayerNorm/Softmax/Reduce to fp32
    assert ("type:NORMALIZATION", "fp32") in rules and ("type:SOFTMAX", "fp32") in rules


def test_profile_fixed_batch_and_static_onnx():
    p = tensorrt.profile_shapes(["batch", 3, 64, 64], min_batch=1, opt_batch=2, max_batch=4, fixed_batch=2)
    assert p.min == p.opt == p.max == (2, 3, 64, 64)
    p = tensorrt.profile_shapes([1, 3, 32, 48], min_batch=1, opt_batch=2, max_batch=4)
    assert p.max == (1, 3, 32, 48)
    with pytest.raises(UserError, match="min_batch_size"):
        tensorrt.profile_shapes(["b", 3, 64, 64], min_batch=4, opt_batch=2, max_batch=8)


def test_bad_layers_precision():
    with pytest.raises(UserError, match="layers_precision"):
        tensorrt.parse_layers_precision(["LayerNorm"])


def _has_trt() -> str | None:
    try:
        import tensorrt as _  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU"


def test_without_tensorrt_or_gpu_is_not_available():
    if _has_trt() is None:
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(NotAvailableError):
        tensorrt.require_tensorrt()


@pytest.mark.tensorrt
@pytest.mark.skipif(_has_trt() is not None, reason=f"TensorRT engine build: {_has_trt()}")
def test_build_and_run_engine(tmp_path, tiny_checkpoint):
    from segformer_tao.actions import export, gen_trt_engine
    from segformer_tao.deploy.onnxruntime import OrtRuntime

    onnx_file = export.run(deploy_cfg("export", tmp_path, f"export.checkpoint={tiny_checkpoint}",
                                      "export.input_height=64", "export.input_width=64"))["artifacts"]["onnx_file"]
    cfg = deploy_cfg("gen_trt_engine", tmp_path, f"gen_trt_engine.onnx_file={onnx_file}",
                     "gen_trt_engine.tensorrt.data_type=fp32", "gen_trt_engine.tensorrt.max_batch_size=4")
    engine = gen_trt_engine.run(cfg)["artifacts"]["trt_engine"]
    x = torch.randn(3, 3, 64, 64)
    got = tensorrt.TrtRuntime(engine, num_classes=3).predict(x)
    ref = OrtRuntime(onnx_file, num_classes=3).predict(x)
    assert (got - ref).abs().max() < 1e-2
