"""Optional quantization backends: modelopt.onnx, modelopt.pytorch (TAO 7's names) and nncf (OpenVINO); torchao
is in :mod:`segformer_tao.model.torchao_int8` (its checkpoints are loaded by the model loader).

Each needs its package; without it a NotAvailableError (exit 2) names what to install. The default backend,
onnxruntime, lives in :mod:`segformer_tao.deploy.quantization` and needs nothing extra.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch

from segformer_tao import io
from segformer_tao.errors import NotAvailableError, UserError

INSTALL = {
    "modelopt.onnx": "pip install 'segformer_tao[modelopt]'",
    "modelopt.pytorch": "pip install 'segformer_tao[modelopt]'",
    "torchao": "pip install 'segformer_tao[torchao]'",
    "nncf": "pip install 'segformer_tao[openvino]'",
}
PACKAGE = {"modelopt.onnx": "nvidia-modelopt", "modelopt.pytorch": "nvidia-modelopt", "torchao": "torchao",
           "nncf": "NNCF and OpenVINO"}


def _missing(backend: str, e: ImportError) -> NotAvailableError:
    return NotAvailableError(f"quantize.backend={backend} needs {PACKAGE[backend]}, which is not installed "
                             f"(no module {e.name}): `{INSTALL[backend]}`, or use quantize.backend=onnxruntime "
                             "(built in, runs on CPU).")


def modelopt_onnx(model_bytes: bytes, batches: Sequence[torch.Tensor], *, algorithm: str, exclude: list[str],
                  device: str) -> bytes:
    """INT8 Q/DQ with ModelOpt's ONNX PTQ (calibration on CPU, CUDA or TensorRT execution providers)."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise _missing("modelopt.onnx", e) from e
    if algorithm not in ("minmax", "max", "entropy"):
        raise UserError(f"quantize.algorithm={algorithm} is not an INT8 calibration method of modelopt.onnx; use "
                        "max or entropy.")
    eps = {"cpu": ["cpu"], "trt": ["trt", "cuda:0", "cpu"]}.get(device, [device if ":" in device else "cuda:0",
                                                                       "cpu"])
    with tempfile.TemporaryDirectory(prefix="segformer_modelopt_") as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        io.write_bytes(src, model_bytes)
        quantize(onnx_path=src, quantize_mode="int8", calibration_data={"input": np.concatenate(
                 [b.numpy() for b in batches])}, calibration_method="entropy" if algorithm == "entropy" else "max",
                 nodes_to_exclude=[f"^{name}$" for name in exclude], output_path=dst, calibration_eps=eps)
        return io.read_bytes(dst)


def modelopt_pytorch(model: torch.nn.Module, batches: Sequence[torch.Tensor], *, algorithm: str,
                     skip_names: list[str], device: str) -> torch.nn.Module:
    """Fake-quantized INT8 model (ModelOpt PyTorch PTQ); export it to get Q/DQ ONNX for TensorRT."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise _missing("modelopt.pytorch", e) from e
    dev = torch.device(device if torch.cuda.is_available() and device.startswith("cuda") else "cpu")
    model = model.to(dev).eval()
    config = dict(mtq.INT8_DEFAULT_CFG)
    if algorithm in ("entropy", "percentile"):
        config["algorithm"] = algorithm

    def forward_loop(m):
        with torch.no_grad():
            for batch in batches:
                m(batch.to(dev))

    model = mtq.quantize(model, config, forward_loop)
    for name in skip_names:
        mtq.disable_quantizer(model, f"*{name}*")
    return model.cpu().eval()


def _ov_compute(op) -> bool:
    return op.get_type_name() in ("Convolution", "MatMul")


def _ov_is_weight(port) -> bool:
    """True when an input comes from a constant (possibly through Convert/Reshape/Transpose of one)."""
    node = port.get_source_output().get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze") and node.get_input_size():
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def openvino_float_ops(model, *, classifier: bool, attention: bool, skip_names: Sequence[str]) -> list[str]:
    """Friendly names of OpenVINO ops to keep float: the classifier (the last Convolution/MatMul before each
    output), attention's activation x activation MatMuls, and ops matching skip_names (exact, glob or substring
    of the ONNX node name, which OpenVINO keeps as the op's friendly name)."""
    import fnmatch

    ops = list(model.get_ordered_ops())
    kept: set[str] = set()
    if classifier:
        for result in model.get_results():
            stack = [result.input_value(0).get_node()]
            while stack:
                node = stack.pop()
                if _ov_compute(node):
                    kept.add(node.get_friendly_name())
                else:
                    stack.extend(v.get_node() for v in node.input_values())
    if attention:
        kept |= {op.get_friendly_name() for op in ops if op.get_type_name() == "MatMul"
                 and not any(_ov_is_weight(p) for p in op.inputs())}
    names = [op.get_friendly_name() for op in ops if _ov_compute(op)]
    for pattern in skip_names:
        matched = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern) or pattern in n]
        if not matched:
            raise UserError(f"quantize.skip_names entry '{pattern}' matches no Convolution/MatMul of the model. Use "
                            "ONNX node names (or glob patterns such as '*decode_head*') as shown by Netron.")
        kept |= set(matched)
    return sorted(kept)


def nncf_int8(model, batches: Sequence[torch.Tensor], *, ignored: list[str], fast: bool = True):
    """INT8 post-training quantization of an ``openvino.Model`` with NNCF; returns the quantized model.

    NNCF's transformer model type keeps LayerNorm, Softmax, GELU and residual Adds float, applies SmoothQuant to
    the MatMuls and uses its mixed preset (symmetric per-channel weights, asymmetric per-tensor activations);
    ``ignored`` (friendly names) stay float too; ``fast`` uses NNCF's fast bias correction. batches: NCHW float32
    normalized calibration images.
    """
    try:
        import nncf
    except ImportError as e:
        raise _missing("nncf", e) from e
    # One image per item: NNCF counts subset_size in items, and some of its statistics assume batch 1.
    data = [np.ascontiguousarray(img[None], dtype=np.float32) for b in batches
            for img in (b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b))]
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))  # NNCF logs one INFO line per op it leaves float
    from segformer_tao.deploy.openvino import core, keep_signal_stack

    core()  # the CPU plugin loaded once, by the Core that stays (see openvino.core)
    try:
        with keep_signal_stack():  # NNCF compiles with Cores of its own
            return nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=len(data), fast_bias_correction=fast,
                                 ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    finally:
        logger.setLevel(level)


# Module each optional backend imports; checked before export and calibration so a missing package fails fast.
_BACKEND_MODULES = {"modelopt.onnx": "modelopt.onnx", "modelopt.pytorch": "modelopt.torch", "torchao": "torchao",
                    "nncf": "nncf"}


def require_backend(backend: str) -> None:
    """Raise NotAvailableError now when quantize.backend needs a package that is not installed."""
    modules = [_BACKEND_MODULES[backend]] if backend in _BACKEND_MODULES else []
    if backend == "nncf":
        modules.append("openvino")
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package (modelopt) is missing
            found = False
        if not found:
            raise _missing(backend, ModuleNotFoundError(f"No module named '{module}'", name=module))
