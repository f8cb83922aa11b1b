"""Export a SegFormer to ONNX, check it and compare ONNX Runtime with PyTorch.

The graph has one input ``input`` (N, C, H, W) float32, normalized like the training data, and one output
``output``: logits (N, num_classes, H/4, W/4) by default, exactly what TAO's SegFormer export produces
(its decode head stops at 1/4 resolution and TAO Deploy / DeepStream resize afterwards), or
(N, num_classes, H, W) with ``export.full_resolution_output=true`` (a bilinear resize inside the graph).
"""

from __future__ import annotations

import io as _io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from segformer_tao import io
from segformer_tao.errors import UserError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Parity budget between ONNX Runtime and PyTorch in fp32 (max abs logit difference).
PARITY_ATOL = 1e-4
# Resize with half-pixel coordinates (torch's align_corners=False) first exists in opset 11.
MIN_OPSET = 11


class ExportWrapper(nn.Module):
    """The exported graph: the model plus, optionally, a resize of the logits to the input size."""

    def __init__(self, model: nn.Module, full_resolution_output: bool = False, align_corners: bool = False):
        super().__init__()
        self.model = model
        self.full_resolution_output = full_resolution_output
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.full_resolution_output:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return logits


@dataclass
class ExportSettings:
    """What to export: input geometry, dynamic axes, opset. Pixels for height/width."""

    height: int
    width: int
    channels: int = 3
    batch_size: int = -1  # -1 = dynamic batch
    dynamic_hw: bool = False
    opset: int = 17
    full_resolution_output: bool = False
    verbose: bool = False

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {INPUT_NAME: {}, OUTPUT_NAME: {}}
        if self.batch_size == -1:
            axes[INPUT_NAME][0] = axes[OUTPUT_NAME][0] = "batch"
        if self.dynamic_hw:
            axes[INPUT_NAME].update({2: "height", 3: "width"})
            axes[OUTPUT_NAME].update({2: "out_height", 3: "out_width"})
        return {k: v for k, v in axes.items() if v}

    def trace_batch(self) -> int:
        # Tracing with batch 1 lets the exporter fold the batch into constants (Reshape targets): trace
        # with 2 so the dimension stays symbolic all the way through the graph.
        return 2 if self.batch_size == -1 else self.batch_size


def export_onnx_bytes(model: nn.Module, settings: ExportSettings) -> bytes:
    """Trace ``model`` (eval mode, CPU) to an ONNX ModelProto and return its serialized bytes.

    Raises UserError when the opset is too low for an operator of the graph.
    """
    if settings.opset < MIN_OPSET:
        raise UserError(
            f"export.opset_version={settings.opset} is below {MIN_OPSET}, the lowest opset that expresses "
            "SegFormer's bilinear Resize exactly. Use export.opset_version=17 (the default; TensorRT 10 and "
            "DeepStream accept it)."
        )
    wrapper = ExportWrapper(model, settings.full_resolution_output).eval()
    dummy = torch.randn(settings.trace_batch(), settings.channels, settings.height, settings.width)
    buf = _io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (dummy,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=settings.opset, dynamic_axes=settings.dynamic_axes() or None,
                do_constant_folding=True, verbose=settings.verbose,
            )
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"ONNX export failed with export.opset_version={settings.opset}: {first}. An operator of the model "
            "needs a newer opset; use export.opset_version=17 (the default)."
        ) from e
    with torch.no_grad():
        out_shape = tuple(wrapper(dummy[:1]).shape)
    return _pin_output_shape(buf.getvalue(), out_shape, settings)


def _pin_output_shape(model_bytes: bytes, out_shape: tuple[int, ...], settings: ExportSettings) -> bytes:
    """Give ``output`` its true shape (the exporter leaves Resize outputs with generated symbolic names)."""
    proto = onnx.load_from_string(model_bytes)
    axes = settings.dynamic_axes().get(OUTPUT_NAME, {})
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for i, dim in enumerate(dims):
        if i in axes:
            dim.dim_param = axes[i]
        else:
            dim.dim_value = settings.batch_size if i == 0 else out_shape[i]
    return proto.SerializeToString()


def simplify(model_bytes: bytes) -> bytes:
    """Fold constants and fuse trivial ops with onnxslim; returns the input unchanged when it is missing."""
    try:
        import onnxslim
    except ImportError:
        log.warning("export.simplify=true but onnxslim is not installed; keeping the graph as exported.")
        return model_bytes
    slim = onnxslim.slim(onnx.load_from_string(model_bytes))
    return slim.SerializeToString()


def check_model(model_bytes: bytes) -> onnx.ModelProto:
    """Run onnx.checker (full check with shape inference); raises UserError with the checker's message."""
    proto = onnx.load_from_string(model_bytes)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"The exported ONNX graph is invalid: {str(e).splitlines()[0]}") from e
    return proto


def max_abs_diff_vs_torch(model: nn.Module, model_bytes: bytes, inputs: list[torch.Tensor],
                          full_resolution_output: bool = False) -> float:
    """Run ONNX Runtime (CPU) and PyTorch on the same NCHW float inputs; return the largest |logit diff|."""
    from segformer_tao.deploy.onnxruntime import make_session

    session = make_session(model_bytes)
    wrapper = ExportWrapper(model, full_resolution_output).eval()
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            ref = wrapper(x).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            if got.shape != ref.shape:
                raise UserError(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape} for input "
                                f"{tuple(x.shape)}; the export is not usable.")
            worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def parity_inputs(settings: ExportSettings, seed: int = 0) -> list[torch.Tensor]:
    """Test inputs covering what the ONNX promises: batch 1 and 3 when dynamic, a second size when dynamic H/W."""
    g = torch.Generator().manual_seed(seed)
    batches = [1, 3] if settings.batch_size == -1 else [settings.batch_size]
    sizes = [(settings.height, settings.width)]
    if settings.dynamic_hw:
        sizes.append((settings.height + 32, settings.width + 64))
    return [torch.randn(b, settings.channels, h, w, generator=g) for b in batches for h, w in sizes]


def save(path: str, model_bytes: bytes) -> None:
    """Write the ONNX file atomically (local or s3://)."""
    io.write_bytes(path, model_bytes)
