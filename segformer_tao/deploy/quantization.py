"""INT8 post-training quantization of an exported SegFormer ONNX with ONNX Runtime (static Q/DQ).

The output is a Q/DQ ONNX: QuantizeLinear/DequantizeLinear pairs on the inputs of Conv/MatMul/Gemm, weights
per-channel, scales from calibration images. With ``target="tensorrt"`` (default) activations and weights are
symmetric signed INT8 (zero point 0) and biases stay float, the form TensorRT's explicit quantization accepts;
``target="cpu"`` uses unsigned activations, 7-bit weights and INT32 biases, which ONNX Runtime runs fastest
on x86 CPUs without VNNI.

Kept in float by default, because quantizing them costs the most accuracy for the least speed:
the final classifier (the last Conv/MatMul before ``output``) and the activation x activation MatMuls of
attention (Q.K^T feeding Softmax and Softmax.V). LayerNorm, Softmax, GELU and Resize are never quantized
(only Conv/MatMul/Gemm are). ``skip_names`` adds nodes by name or glob pattern.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from segformer_tao.errors import UserError

log = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = {"minmax": "MinMax", "max": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
TARGETS = ("tensorrt", "cpu")


@dataclass
class QuantizeSettings:
    """How to quantize: calibration algorithm, nodes kept float, numeric target."""

    algorithm: str = "minmax"
    skip_names: Sequence[str] = ()
    target: str = "tensorrt"
    keep_classifier_float: bool = True
    keep_attention_float: bool = True
    percentile: float = 99.999
    extra: dict = field(default_factory=dict)


class _Reader:
    """onnxruntime CalibrationDataReader over NCHW float batches (torch tensors or numpy arrays)."""

    def __init__(self, batches: Iterable, input_name: str = "input"):
        self._batches = iter(batches)
        self._name = input_name
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += int(batch.shape[0])
        x = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        return {self._name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self) -> None:  # the calibrators read the data once
        raise NotImplementedError


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def classifier_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the last Conv/MatMul/Gemm nodes on the way back from each graph output (the classifier)."""
    producers, found = _producers(model.graph), []
    for output in model.graph.output:
        stack, seen = [output.name], set()
        while stack:
            node = producers.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in QUANTIZED_OP_TYPES:
                found.append(node.name)
                continue
            stack.extend(node.input)
    return found


def attention_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose two inputs are both activations (attention scores and the Softmax x V product)."""
    weights = {init.name for init in model.graph.initializer}
    weights |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def nodes_to_exclude(model: onnx.ModelProto, settings: QuantizeSettings) -> list[str]:
    """All node names kept float: defaults (classifier, attention) plus skip_names (exact names or globs)."""
    names = [n.name for n in model.graph.node]
    excluded: list[str] = []
    if settings.keep_classifier_float:
        excluded += classifier_nodes(model)
    if settings.keep_attention_float:
        excluded += attention_matmuls(model)
    for pattern in settings.skip_names:
        matched = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern) or pattern in n]
        if not matched:
            raise UserError(f"quantize.skip_names entry '{pattern}' matches no node of the ONNX graph. Use node "
                            "names (or glob patterns such as '*decode_head*') as shown by Netron or "
                            "`python -c \"import onnx; print([n.name for n in onnx.load('m.onnx').graph.node])\"`.")
        excluded += matched
    return sorted(set(excluded))


def _ort_options(settings: QuantizeSettings) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantType

    if settings.algorithm not in CALIBRATION_METHODS:
        raise UserError(f"quantize.algorithm={settings.algorithm} is not available with quantize.backend=onnxruntime;"
                        f" use one of {sorted(CALIBRATION_METHODS)} (awq_* and rtn_dq are modelopt weight-only "
                        "algorithms for language models).")
    if settings.target not in TARGETS:
        raise UserError(f"quantize.backend_kwargs.target={settings.target} is unknown; use one of {list(TARGETS)}.")
    trt = settings.target == "tensorrt"
    extra = {
        "ActivationSymmetric": trt,
        "WeightSymmetric": True,
        "QuantizeBias": not trt,  # TensorRT takes float biases (no INT32 DequantizeLinear); ORT's CPU kernels fuse them
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        "CalibPercentile": settings.percentile,
        **settings.extra,
    }
    return {
        "activation_type": QuantType.QInt8 if trt else QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "reduce_range": not trt,
        "calibrate_method": getattr(CalibrationMethod, CALIBRATION_METHODS[settings.algorithm]),
        "extra_options": extra,
    }


def quantize_onnx(model_bytes: bytes, calibration_batches: Iterable, settings: QuantizeSettings) -> bytes:
    """Static Q/DQ INT8 quantization of a float ONNX; returns the quantized model's bytes.

    calibration_batches: NCHW float32 normalized images (torch or numpy), read once. Runs on the CPU.
    """
    from onnxruntime.quantization import QuantFormat, quantize_static

    model = onnx.load_from_string(model_bytes)
    excluded = nodes_to_exclude(model, settings)
    options = _ort_options(settings)
    batches = list(calibration_batches)
    if not batches:
        raise UserError("No calibration images were read from dataset.segment.quant_calibration_dataset."
                        "images_dir; put a few hundred representative images there.")
    reader = _Reader(batches)
    log.info("Quantizing %s to INT8 (Q/DQ, per-channel weights, %s calibration); %d nodes kept float (the "
             "classifier, attention MatMuls and skip_names)", "/".join(QUANTIZED_OP_TYPES), settings.algorithm,
             len(excluded))
    log.debug("kept float: %s", excluded)
    with tempfile.TemporaryDirectory(prefix="segformer_quant_") as tmp, _without_preprocessing_hint():
        out = os.path.join(tmp, "int8.onnx")
        quantize_static(model, out, calibration_data_reader=reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OP_TYPES), per_channel=True, nodes_to_exclude=excluded,
                        calibration_providers=["CPUExecutionProvider"], **options)
        quantized = onnx.load(out)
    _copy_metadata(model, quantized)
    return quantized.SerializeToString()


@contextlib.contextmanager
def _without_preprocessing_hint():
    """ORT's quantizer logs "Please consider to run pre-processing before quantization" on the root logger; its
    pre-processing (shape inference + graph optimisation) is what our export already did."""

    def drop(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    existing = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in existing:
            dst.metadata_props.add(key=prop.key, value=prop.value)


def qdq_summary(model_bytes: bytes) -> dict:
    """Counts of QuantizeLinear/DequantizeLinear nodes and quantized compute nodes (for reports and tests)."""
    model = onnx.load_from_string(model_bytes)
    producers = _producers(model.graph)
    ops = [n.op_type for n in model.graph.node]
    quantized = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES
                 and any(getattr(producers.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)]
    return {"quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "quantized_nodes": len(quantized), "float_compute_nodes":
                sum(op in QUANTIZED_OP_TYPES for op in ops) - len(quantized)}


def float_compute_nodes(model_bytes: bytes) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes of a Q/DQ ONNX that run in float (no DequantizeLinear input): the
    layers quantization left float, read from the quantized model itself."""
    model = onnx.load_from_string(model_bytes)
    producers = _producers(model.graph)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES
            and not any(getattr(producers.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)]
