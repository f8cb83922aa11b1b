"""TensorRT 10/11 engine builder: a SegFormer ONNX -> a serialized engine + its engine.json facts.

Precision: TensorRT 10 is weakly typed (builder flags FP16/BF16/INT8 + per-layer constraints keep
LayerNorm/Softmax/Reduce in FP32, also in int8 engines whose other layers run in fp16). TensorRT 11 only builds
strongly typed networks: precision comes from the ONNX (a Q/DQ ONNX from ``segformer quantize`` for int8; fp16/bf16
are converted with ModelOpt AutoCast, keeping LayerNormalization/Softmax in FP32). The legacy INT8 entropy
calibrator is used only where the installed TensorRT still has it and the ONNX carries no Q/DQ nodes.
Running engines: ``segformer_tao.deploy.tensorrt``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from segformer_tao import io
from segformer_tao.deploy import tensorrt as trt_runtime
from segformer_tao.errors import NotAvailableError, UserError

log = logging.getLogger(__name__)

DATA_TYPES = ("fp32", "fp16", "bf16", "int8")
# Ops that overflow or lose accuracy in half precision (variance sums, exp): kept FP32 for fp16/bf16 and for
# int8, whose non-quantized layers run in fp16.
FP32_OP_TYPES = ("LayerNormalization", "Softmax")
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")


@dataclass
class Profile:
    """One optimization profile for the input tensor: (N, C, H, W) for min, opt and max."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]


@dataclass
class BuildSettings:
    """Everything the builder needs, resolved from gen_trt_engine.* (sizes in pixels, workspace in MiB)."""

    data_type: str
    workspace_mib: int
    profile: Profile
    layers_precision: list[tuple[str, str]] = field(default_factory=list)
    timing_cache: str | None = None
    verbose: bool = False
    cal_image_dirs: list[str] = field(default_factory=list)
    cal_cache_file: str | None = None
    cal_batch_size: int = 1
    cal_batches: int = 1


def parse_layers_precision(entries: Sequence[str] | None) -> list[tuple[str, str]]:
    """'layer_name_or_glob:fp32' strings -> [(pattern, precision)]; bad entries are a UserError."""
    parsed = []
    for entry in entries or []:
        pattern, sep, precision = str(entry).rpartition(":")
        if not sep or not pattern or precision not in ("fp32", "fp16", "bf16", "int8"):
            raise UserError(f"gen_trt_engine.tensorrt.layers_precision entry '{entry}' must look like "
                            "'<layer name or glob>:<fp32|fp16|bf16|int8>', e.g. '*LayerNorm*:fp32'.")
        parsed.append((pattern, precision))
    return parsed


def profile_shapes(onnx_input_shape: Sequence[Any], *, min_batch: int, opt_batch: int, max_batch: int,
                   fixed_batch: int = -1, img_size: int | None = None) -> Profile:
    """The optimization profile for an ONNX input shape whose dims are ints or symbolic names.

    Dynamic batch uses min/opt/max_batch_size (or fixed_batch when > 0, i.e. gen_trt_engine.batch_size).
    Dynamic H/W (an ``export.dynamic_hw`` ONNX) is pinned to img_size: TensorRT's Resize and attention
    reshapes are tuned per shape, and evaluate/inference feed img_size x img_size images.
    """
    if len(onnx_input_shape) != 4:
        raise UserError(f"The ONNX input has shape {list(onnx_input_shape)}; expected (N, C, H, W).")
    n, c, h, w = (d if isinstance(d, int) and d > 0 else None for d in onnx_input_shape)
    if c is None:
        raise UserError("The ONNX input has a dynamic channel dimension; re-export with export.input_channel=3.")
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise UserError(f"gen_trt_engine.tensorrt batch sizes must satisfy 1 <= min_batch_size ({min_batch}) <= "
                        f"opt_batch_size ({opt_batch}) <= max_batch_size ({max_batch}).")
    if (h is None or w is None) and not img_size:
        raise UserError("The ONNX has dynamic height/width; set dataset.segment.img_size to the size to build for.")
    h, w = h or img_size, w or img_size
    if n is not None:
        batches = (n, n, n)
    elif fixed_batch > 0:
        batches = (fixed_batch,) * 3
    else:
        batches = (min_batch, opt_batch, max_batch)
    return Profile(*[(b, c, h, w) for b in batches])


def settings_from_config(gen_cfg, onnx_input_shape: Sequence[Any], img_size: int | None) -> BuildSettings:
    """Map gen_trt_engine.* to BuildSettings (no TensorRT needed: unit-testable on CPU)."""
    trt_cfg = gen_cfg.tensorrt
    data_type = str(trt_cfg.data_type).lower()
    if data_type not in DATA_TYPES:
        raise UserError(f"gen_trt_engine.tensorrt.data_type={trt_cfg.data_type} is not one of {list(DATA_TYPES)}.")
    profile = profile_shapes(onnx_input_shape, min_batch=trt_cfg.min_batch_size, opt_batch=trt_cfg.opt_batch_size,
                             max_batch=trt_cfg.max_batch_size, fixed_batch=gen_cfg.batch_size, img_size=img_size)
    cal = trt_cfg.calibration
    return BuildSettings(
        data_type=data_type, workspace_mib=int(trt_cfg.workspace_size), profile=profile,
        layers_precision=parse_layers_precision(trt_cfg.layers_precision), timing_cache=gen_cfg.timing_cache,
        verbose=bool(gen_cfg.verbose), cal_image_dirs=list(cal.cal_image_dir or []), cal_cache_file=cal.cal_cache_file,
        cal_batch_size=int(cal.cal_batch_size), cal_batches=int(cal.cal_batches),
    )


def has_qdq(onnx_bytes: bytes) -> bool:
    import onnx

    nodes = onnx.load_from_string(onnx_bytes).graph.node
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes)


def _layer_precision_rules(settings: BuildSettings) -> list[tuple[str, str]]:
    rules = list(settings.layers_precision)
    if settings.data_type in ("fp16", "bf16", "int8"):
        rules += [(f"type:{t}", "fp32") for t in FP32_LAYER_TYPES]
    return rules


def _apply_layer_precisions(trt, network, rules: list[tuple[str, str]]) -> int:
    """Pin matching layers (by name glob, or 'type:<LayerType>') to a precision; returns how many matched."""
    dtypes = {"fp32": trt.float32, "fp16": trt.float16, "bf16": trt.bfloat16, "int8": trt.int8}
    hits = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for pattern, precision in rules:
            if pattern.startswith("type:"):
                match = layer.type == getattr(trt.LayerType, pattern[5:], None)
            else:
                match = fnmatch.fnmatchcase(layer.name, pattern) or pattern == layer.name
            if match:
                layer.precision = dtypes[precision]
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.float32, trt.float16, trt.bfloat16):
                        layer.set_output_type(j, dtypes[precision])
                hits += 1
                break
    return hits


def autocast_onnx(onnx_bytes: bytes, data_type: str) -> bytes:
    """TensorRT 11: convert a float ONNX to fp16/bf16 with ModelOpt AutoCast, LayerNorm/Softmax kept FP32."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as e:
        raise NotAvailableError(f"TensorRT 11 builds {data_type} engines from a mixed-precision ONNX made by ModelOpt"
                                " AutoCast: `pip install nvidia-modelopt[onnx]`, or build with data_type=fp32 or "
                                "an INT8 Q/DQ ONNX from `segformer quantize`.") from e
    import os
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        io.write_bytes(path, onnx_bytes)
        converted = convert_to_mixed_precision(onnx_path=path, low_precision_type=data_type, keep_io_types=True,
                                               op_types_to_exclude=list(FP32_OP_TYPES))
    return converted.SerializeToString() if isinstance(converted, onnx.ModelProto) else bytes(converted)


def _entropy_calibrator(trt, batches: list[torch.Tensor], cache_file: str | None, batch_size: int):
    """Legacy IInt8EntropyCalibrator2 feeding CUDA tensors (TensorRT 10 only)."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self._iter = iter(batches)
            self._current = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):
            batch = next(self._iter, None)
            if batch is None:
                return None
            self._current = batch.to(torch.device("cuda"), torch.float32).contiguous()
            return [int(self._current.data_ptr())]

        def read_calibration_cache(self):
            return io.read_bytes(cache_file) if cache_file and io.exists(cache_file) else None

        def write_calibration_cache(self, cache):
            if cache_file:
                io.write_bytes(cache_file, bytes(cache))

    return EntropyCalibrator()


def calibration_shape(profile: Profile, cal_batch_size: int) -> tuple[int, int, int, int]:
    """The (N, C, H, W) the legacy calibrator feeds: cal_batch_size images (the ONNX's batch when it is fixed,
    i.e. min == max) at the profile's H x W. TensorRT calibrates at the calibration profile's opt shape, so this
    shape is that profile's min = opt = max and every device buffer handed to TensorRT has exactly this size."""
    n, c, h, w = profile.opt
    fixed = profile.min[0] == profile.max[0]
    if fixed and cal_batch_size != n:
        log.warning("The engine's batch is fixed at %d: calibrating with batches of %d images, not "
                    "gen_trt_engine.tensorrt.calibration.cal_batch_size=%d.", n, n, cal_batch_size)
    if h != w:
        raise UserError(f"INT8 calibration of a {h}x{w} (non-square) input is not supported: calibration images "
                        "are resized to a square like every runtime's input. Export with "
                        "export.input_height == export.input_width, or use a Q/DQ ONNX from `segformer quantize`.")
    return (n if fixed else cal_batch_size, c, h, w)


def _calibration_profile(builder, profile: Profile, batches: list[torch.Tensor]) -> tuple[int, Any]:
    """(batch size, a profile whose min = opt = max is the calibration batches' shape, checked against the build
    profile); without batches (a calibration cache only) the shape TensorRT would calibrate at."""
    shape = tuple(int(d) for d in batches[0].shape) if batches else profile.opt
    expected = calibration_shape(profile, shape[0])
    if any(tuple(b.shape) != expected for b in batches):
        raise UserError(f"INT8 calibration batches have shapes {sorted({tuple(b.shape) for b in batches})}; "
                        f"TensorRT reads {expected} per batch. Check gen_trt_engine.tensorrt.calibration.")
    cal_profile = builder.create_optimization_profile()
    cal_profile.set_shape("input", expected, expected, expected)
    return expected[0], cal_profile


def weakly_typed_api(trt) -> bool:
    """TensorRT 10's builder takes precision flags (weakly typed networks); TensorRT 11 removed them (and FP16 with
    them): networks are strongly typed and precision comes from the ONNX."""
    return hasattr(trt.BuilderFlag, "FP16")


def build_engine(onnx_bytes: bytes, settings: BuildSettings, calibration: list[torch.Tensor] | None = None
                 ) -> tuple[bytes, dict]:
    """Parse the ONNX and build a serialized engine; returns (engine bytes, engine.json dict)."""
    trt = trt_runtime.require_tensorrt()
    logger = trt.Logger(trt.Logger.VERBOSE if settings.verbose else trt.Logger.WARNING)
    weakly_typed = weakly_typed_api(trt)
    qdq = has_qdq(onnx_bytes)
    if settings.data_type == "int8" and not qdq and not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise UserError("gen_trt_engine.tensorrt.data_type=int8 needs a Q/DQ ONNX with this TensorRT (no implicit "
                        "INT8 calibration any more): run `segformer quantize` and point gen_trt_engine.onnx_file at "
                        "its output.")
    if not weakly_typed and settings.data_type in ("fp16", "bf16") and not qdq:
        onnx_bytes = autocast_onnx(onnx_bytes, settings.data_type)
    builder = trt.Builder(logger)
    flags = 0 if weakly_typed else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse the ONNX: {errors}. Re-export with export.opset_version=17.")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", settings.profile.min, settings.profile.opt, settings.profile.max)
    config.add_optimization_profile(profile)
    pinned = 0
    if weakly_typed:
        if settings.data_type in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8 engines run non-quantized layers in fp16
        if settings.data_type == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        if settings.data_type == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if not qdq:
                cal = list(calibration or [])
                if not cal and not (settings.cal_cache_file and io.exists(settings.cal_cache_file)):
                    raise UserError("data_type=int8 without a Q/DQ ONNX needs calibration images: set "
                                    "gen_trt_engine.tensorrt.calibration.cal_image_dir (or a cal_cache_file).")
                cal_batch, cal_profile = _calibration_profile(builder, settings.profile, cal)
                config.int8_calibrator = _entropy_calibrator(trt, cal, settings.cal_cache_file, cal_batch)
                config.set_calibration_profile(cal_profile)
        rules = _layer_precision_rules(settings)
        if rules:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            pinned = _apply_layer_precisions(trt, network, rules)
    cache, cache_report = None, None
    if settings.timing_cache:
        cache = config.create_timing_cache(io.read_bytes(settings.timing_cache) if io.exists(settings.timing_cache)
                                           else b"")
        attached = cache is not None and bool(config.set_timing_cache(cache, ignore_mismatch=True))
        cache_report = {"path": settings.timing_cache, "attached": attached}
        if not attached:
            log.warning("TensorRT could not attach the timing cache %s (unreadable or from another TensorRT): "
                        "building without it, and it is not rewritten. Delete the file to start a new cache.",
                        settings.timing_cache)
            cache = None
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT failed to build the engine (see the log above). Try a larger "
                        "gen_trt_engine.tensorrt.workspace_size or smaller max_batch_size.")
    if cache is not None:
        io.write_bytes(settings.timing_cache, bytes(config.get_timing_cache().serialize()))
    engine_bytes = bytes(serialized)
    info = {"tensorrt_version": trt.__version__, "strongly_typed": not weakly_typed, "qdq_onnx": qdq,
            "layers_pinned": pinned, "timing_cache": cache_report, "build_settings": asdict(settings),
            "io": trt_runtime.engine_io(trt, engine_bytes, logger)}
    return engine_bytes, info
