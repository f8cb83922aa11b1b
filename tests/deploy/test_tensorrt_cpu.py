"""TensorRT paths that need no GPU: config -> builder settings, profile shapes; the rest skips with a reason."""

from __future__ import annotations

import pytest
import torch

from segformer_tao.deploy import tensorrt, tensorrt_build
from segformer_tao.errors import NotAvailableError, UserError
from tests.deploy.conftest import deploy_cfg


def test_settings_from_config_dynamic_batch_and_hw(tmp_path):
    cfg = deploy_cfg("gen_trt_engine", tmp_path, "gen_trt_engine.onnx_file=m.onnx",
                     "gen_trt_engine.tensorrt.min_batch_size=1", "gen_trt_engine.tensorrt.opt_batch_size=4",
                     "gen_trt_engine.tensorrt.max_batch_size=8", "gen_trt_engine.tensorrt.data_type=fp16",
                     "gen_trt_engine.tensorrt.workspace_size=2048",
                     "gen_trt_engine.tensorrt.layers_precision=[head*:fp32]")
    s = tensorrt_build.settings_from_config(cfg.gen_trt_engine, ["batch", 3, "height", "width"], img_size=64)
    assert (s.profile.min, s.profile.opt, s.profile.max) == ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert s.data_type == "fp16" and s.workspace_mib == 2048 and s.layers_precision == [("head*", "fp32")]
    rules = tensorrt_build._layer_precision_rules(s)  # fp16 pins LayerNorm/Softmax/Reduce to fp32
    assert ("type:NORMALIZATION", "fp32") in rules and ("type:SOFTMAX", "fp32") in rules


def test_profile_fixed_batch_and_static_onnx():
    p = tensorrt_build.profile_shapes(["batch", 3, 64, 64], min_batch=1, opt_batch=2, max_batch=4, fixed_batch=2)
    assert p.min == p.opt == p.max == (2, 3, 64, 64)
    p = tensorrt_build.profile_shapes([1, 3, 32, 48], min_batch=1, opt_batch=2, max_batch=4)
    assert p.max == (1, 3, 32, 48)
    with pytest.raises(UserError, match="min_batch_size"):
        tensorrt_build.profile_shapes(["b", 3, 64, 64], min_batch=4, opt_batch=2, max_batch=8)


def test_bad_layers_precision():
    with pytest.raises(UserError, match="layers_precision"):
        tensorrt_build.parse_layers_precision(["LayerNorm"])


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


def test_pad_to_profile_pads_below_min_batch_and_splits_above_max():
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.float32).reshape(5, 3, 2, 2)
    chunks = tensorrt.pad_to_profile(images, min_batch=4, max_batch=4)
    assert [(tuple(c.shape), real) for c, real in chunks] == [((4, 3, 2, 2), 4), ((4, 3, 2, 2), 1)]
    assert torch.equal(chunks[1][0][0], images[4]) and not chunks[1][0][1:].any()  # real first, zeros after
    assert [real for _, real in tensorrt.pad_to_profile(images, 1, 2)] == [2, 2, 1]


def test_int8_keeps_layernorm_softmax_reduce_fp32():
    profile = tensorrt_build.Profile(*[(1, 3, 8, 8)] * 3)
    settings = tensorrt_build.BuildSettings(data_type="int8", workspace_mib=1, profile=profile)
    rules = tensorrt_build._layer_precision_rules(settings)
    assert {("type:NORMALIZATION", "fp32"), ("type:SOFTMAX", "fp32"), ("type:REDUCE", "fp32")} <= set(rules)


def test_calibration_shape_is_what_tensorrt_reads():
    dynamic = tensorrt_build.Profile((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert tensorrt_build.calibration_shape(dynamic, cal_batch_size=2) == (2, 3, 64, 64)
    fixed = tensorrt_build.Profile(*[(4, 3, 32, 32)] * 3)
    assert tensorrt_build.calibration_shape(fixed, cal_batch_size=2) == (4, 3, 32, 32)  # the engine's fixed batch
    with pytest.raises(UserError, match="non-square"):
        tensorrt_build.calibration_shape(tensorrt_build.Profile(*[(1, 3, 32, 48)] * 3), cal_batch_size=1)


def test_too_few_calibration_images(tmp_path):
    from PIL import Image

    from segformer_tao.deploy.calibration import calibration_batches

    for i in range(3):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / f"{i}.png")
    kw = {"img_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3,
          "key": "gen_trt_engine.tensorrt.calibration.cal_image_dir"}
    assert len(calibration_batches([str(tmp_path)], batch_size=1, max_batches=3, require_all=True, **kw)) == 3
    with pytest.raises(UserError, match=r"fewer calibration images than the 4 needed.*found 2"):
        calibration_batches([str(tmp_path)], batch_size=2, max_batches=2, require_all=True, **kw)


def test_engine_json_dtype_names_are_numpy_names():
    class DataType:  # what str() of the bindings' enum gives
        def __init__(self, name):
            self.name = name

        def __str__(self):
            return f"DataType.{self.name}"

    assert [tensorrt.dtype_name(DataType(n)) for n in ("FLOAT", "HALF", "BF16", "INT8", "INT32")] == [
        "float32", "float16", "bfloat16", "int8", "int32"]
