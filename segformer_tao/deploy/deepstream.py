"""DeepStream Gst-nvinfer: a DeepStream-form ONNX, its config (YAML, ``property:`` group) and labels file.

nvinfer's built-in segmentation parser (``SegmentPostprocessor::fillSegmentationOutput`` in DeepStream's
``sources/libs/nvdsinfer/nvdsinfer_context_impl_output_parsing.cpp``) starts every pixel at class -1 and takes
class c only where its value is above both the running maximum (which starts at -1) and
``segmentation-threshold`` (which nvinfer's parsers require to be >= 0); it writes the class map at the
output tensor's H x W. Raw 1/4-resolution logits therefore give coarse masks with -1 wherever the best logit
is <= 0. So DeepStream gets its own graph, ``<stem>.nvdsinfer.onnx``:

  input ``image``: (N, 3, H, W) float RGB pixels 0-255 (nvinfer with net-scale-factor 1, offsets 0);
  normalization by mean/std per channel happens inside the graph (exact, unlike nvinfer's one scale factor);
  output ``probabilities``: (N, C, H, W) per-class softmax of the logits resized bilinearly to H x W, the
  resize ``segformer inference`` applies. Every pixel's top probability is >= 1/C > 0 = the threshold, so
  nvinfer's class map equals inference's argmax; a threshold > 0 turns it into a confidence cut (-1 below).

nvinfer builds the engine itself from ``onnx-file``; its precision (``network-mode``) follows
gen_trt_engine.tensorrt.data_type, and for fp16 the LayerNorm/Softmax/Reduce nodes are renamed to short names
and pinned to FP32 with ``layer-device-precision`` (nvinfer copies each entry into a 64-byte buffer).
"""

from __future__ import annotations

import io as _io
import logging
import os
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from segformer_tao import io
from segformer_tao.errors import UserError

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
NETWORK_TYPE_SEGMENTATION = 2
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
MODEL_COLOR_FORMAT_RGB = 0
SCALING_FILTER_BILINEAR = 1  # NvBufSurfTransformInter_Bilinear: inference resizes bilinearly too
MAX_BATCH_SIZE = 1024  # NVDSINFER_MAX_BATCH_SIZE in nvdsinfer_context.h; nvinfer rejects larger batch-size
# Half-precision-sensitive ops (variance sums, exp) pinned to FP32 in fp16 engines; ReduceMean covers the
# LayerNorm decomposition of opsets < 17.
FP32_OP_TYPES = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum")
PARITY_ATOL = 1e-4  # max |probability| difference ONNX Runtime vs PyTorch


class DeepStreamGraph(nn.Module):
    """0-255 RGB (N, 3, H, W) -> softmax probabilities (N, C, H, W) of the logits resized to H x W."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("offset", torch.tensor([255.0 * m for m in mean]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model((x - self.offset) * self.scale)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(1)


def precision_for_deepstream(data_type: str) -> str:
    """nvinfer's network-mode name for gen_trt_engine.tensorrt.data_type (nvinfer has no bf16; its own INT8
    build needs a calibration file for this graph, which only TensorRT on a GPU can write)."""
    if data_type in ("fp32", "fp16"):
        return data_type
    log.warning("gen_trt_engine.tensorrt.data_type=%s: the DeepStream config uses network-mode FP16 (nvinfer has "
                "%s). Pinned layers stay FP32.", data_type,
                "no BF16 mode" if data_type == "bf16" else "no INT8 calibration file for its own engine build "
                "and would fall back to FP16 itself")
    return "fp16"


def export_deepstream_onnx(model: nn.Module, *, height: int, width: int, mean: Sequence[float],
                           std: Sequence[float], opset: int, precision: str) -> tuple[bytes, list[str], float]:
    """Trace the DeepStream graph (dynamic batch, fixed H x W pixels) on the CPU.

    Returns (onnx bytes, names of the nodes to pin to FP32, max |probability diff| ONNX Runtime vs PyTorch).
    """
    from segformer_tao.deploy.onnx_export import check_model
    from segformer_tao.deploy.onnxruntime import make_session

    graph = DeepStreamGraph(model, mean, std).eval()
    g = torch.Generator().manual_seed(0)
    dummy = torch.rand(2, 3, height, width, generator=g) * 255  # batch 2 keeps the batch dim symbolic
    buf = _io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (dummy,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
        ref = graph(dummy[:1]).numpy()
    proto = onnx.load_from_string(buf.getvalue())
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    for i, dim in enumerate(out_dims):
        if i == 0:
            dim.dim_param = "batch"
        else:
            dim.dim_value = ref.shape[i]
    pinned = _rename_fp32_nodes(proto) if precision != "fp32" else []
    model_bytes = proto.SerializeToString()
    check_model(model_bytes)
    got = make_session(model_bytes).run([OUTPUT_NAME], {INPUT_NAME: dummy[:1].numpy()})[0]
    return model_bytes, pinned, float(np.abs(got - ref).max())


def _rename_fp32_nodes(proto: onnx.ModelProto) -> list[str]:
    """Give FP32_OP_TYPES nodes short unique names (TensorRT's ONNX parser names layers after nodes)."""
    names = []
    for i, node in enumerate(proto.graph.node):
        if node.op_type in FP32_OP_TYPES:
            node.name = f"fp32_{node.op_type}_{i}"
            names.append(node.name)
    return names


def check_batch_size(batch_size: int) -> None:
    """nvinfer's batch-size range; UserError naming export.batch_size otherwise."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise UserError(f"export.batch_size={batch_size} with export.serialize_nvdsinfer=true: nvinfer accepts "
                        f"batch-size 1..{MAX_BATCH_SIZE}. Set export.batch_size to -1 (dynamic) or at most "
                        f"{MAX_BATCH_SIZE}.")


def nvinfer_config(*, onnx_name: str, labels_name: str, num_classes: int, height: int, width: int,
                   batch_size: int = 1, precision: str = "fp16", fp32_layers: Sequence[str] = (),
                   gpu_id: int = 0) -> dict:
    """The ``property`` group of a Gst-nvinfer config for ``export_deepstream_onnx``'s graph."""
    check_batch_size(batch_size)
    prop = {
        "gpu-id": gpu_id,
        "net-scale-factor": 1.0,  # the graph normalizes: nvinfer hands it 0-255 RGB pixels
        "offsets": "0;0;0",
        "model-color-format": MODEL_COLOR_FORMAT_RGB,
        "onnx-file": onnx_name,
        "labelfile-path": labels_name,
        "infer-dims": f"3;{height};{width}",
        "batch-size": batch_size,
        "network-mode": NETWORK_MODE[precision],
        "network-type": NETWORK_TYPE_SEGMENTATION,
        "num-detected-classes": num_classes,
        "output-blob-names": OUTPUT_NAME,
        "segmentation-threshold": 0.0,
        "segmentation-output-order": 0,  # NCHW
        "output-tensor-meta": 0,
        "maintain-aspect-ratio": 0,  # inference stretches to img_size too
        "scaling-filter": SCALING_FILTER_BILINEAR,
        "gie-unique-id": 1,
        "process-mode": 1,
    }
    if fp32_layers:
        prop["layer-device-precision"] = ";".join(f"{name}:fp32:gpu" for name in fp32_layers)
    return {"property": prop}


def write_deepstream_files(onnx_path: str, model: nn.Module, *, class_names: Sequence[str], height: int,
                           width: int, mean: Sequence[float], std: Sequence[float], batch_size: int, opset: int,
                           data_type: str, gpu_id: int = 0) -> dict[str, str]:
    """Write ``<stem>.nvdsinfer.onnx``, ``nvdsinfer_config.yaml`` and ``labels.txt`` next to ``onnx_path``.

    Paths inside the config are relative (nvinfer resolves them against the config's directory), so the
    folder can be copied to a DeepStream machine as it is. labels.txt has one class name per line.
    """
    precision = precision_for_deepstream(data_type)
    folder = os.path.dirname(onnx_path) or "."
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    ds_onnx = f"{folder}/{stem}.nvdsinfer.onnx"
    labels_path = f"{folder}/labels.txt"
    config_path = f"{folder}/nvdsinfer_config.yaml"
    check_batch_size(batch_size)
    model_bytes, pinned, diff = export_deepstream_onnx(model, height=height, width=width, mean=mean, std=std,
                                                       opset=opset, precision=precision)
    if diff > PARITY_ATOL:
        raise UserError(f"The DeepStream ONNX differs from PyTorch by {diff:.3g} (> {PARITY_ATOL:g}) in "
                        "probabilities. Retry with export.opset_version=17.")
    config = nvinfer_config(onnx_name=os.path.basename(ds_onnx), labels_name="labels.txt",
                            num_classes=len(class_names), height=height, width=width, batch_size=batch_size,
                            precision=precision, fp32_layers=pinned, gpu_id=gpu_id)
    io.write_bytes(ds_onnx, model_bytes)
    io.write_text(labels_path, "".join(f"{name}\n" for name in class_names))
    header = ("# Gst-nvinfer config written by `segformer export` (serialize_nvdsinfer=true).\n"
              f"# {os.path.basename(ds_onnx)}: input 'image' = RGB pixels 0-255, output 'probabilities' = per-class\n"
              "# softmax at the input resolution; nvinfer's segmentation parser gives `segformer inference`'s masks.\n")
    io.write_text(config_path, header + yaml.safe_dump(config, sort_keys=False, width=1 << 20))
    log.info("DeepStream files: %s, %s, %s (network-mode %s, %d layers pinned to FP32)", ds_onnx, config_path,
             labels_path, precision, len(pinned))
    return {"nvdsinfer_onnx": ds_onnx, "nvdsinfer_config": config_path, "labels": labels_path}
