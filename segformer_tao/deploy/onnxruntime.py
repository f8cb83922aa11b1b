"""ONNX Runtime as a first-class CPU runtime: tuned session, model validation, batched predict."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from segformer_tao import io
from segformer_tao.deploy.base import Runtime
from segformer_tao.deploy.onnx_external import FOLDER_OPTION, external_data_folder
from segformer_tao.deploy.onnx_io import (
    INPUT_NAME,
    OUTPUT_NAME,
    available_cores,
    graph_meta,
    run_in_fixed_batches,
    validate_io,
)
from segformer_tao.errors import NotAvailableError, UserError
from segformer_tao.model.meta import META_KEY, from_json


def make_session(model: bytes | str, threads: int | None = None, providers: list[str] | None = None,
                 source: str | None = None):
    """An ``onnxruntime.InferenceSession`` tuned for throughput on this machine.

    model: serialized ONNX bytes or a path (local or s3://). threads: intra-op threads (default: all
    available cores). source: the file the bytes came from, named in errors. Sequential execution
    (SegFormer is one chain: parallel branches buy nothing) and every graph optimisation (constant folding,
    LayerNorm/GELU/attention fusions, Q/DQ fusion into int8 kernels).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise NotAvailableError("onnxruntime is not installed: `pip install onnxruntime` to run ONNX models.") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or available_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    data = model if isinstance(model, bytes) else io.read_bytes(model)
    folder = external_data_folder(data, model, source)  # external data from the model's own folder only
    if folder is not None:
        opts.add_session_config_entry(FOLDER_OPTION, folder)
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        where = f" '{source or model}'" if source or not isinstance(model, bytes) else ""
        raise UserError(f"ONNX Runtime cannot load the ONNX model{where}: {str(e).splitlines()[0]}. Check that the "
                        "file is a complete ONNX export of this tool (re-run `segformer export`).") from e


def read_embedded_meta(session) -> dict[str, Any]:
    """The metadata export stored in the ONNX (class names, mean, std, img_size, ...), or {}."""
    return from_json(session.get_modelmeta().custom_metadata_map.get(META_KEY))


class OrtRuntime(Runtime):
    """Runs an exported SegFormer ONNX with ONNX Runtime on the CPU.

    ``predict(images)`` takes normalized float32 NCHW images and returns logits (N, C, h, w) on the CPU, like the
    torch runtime. A static-batch ONNX is fed in chunks of its batch size (last chunk padded). ``meta`` is what
    the file says (embedded by export, class count and fixed size from its I/O); ``num_classes`` and ``img_size``,
    when given, are checked against the file.
    """

    name = "onnxruntime"

    def __init__(self, onnx_file: str, *, num_classes: int | None = None, img_size: int | None = None,
                 threads: int | None = None):
        self.path = onnx_file
        if not io.exists(onnx_file):
            raise UserError(f"ONNX file '{onnx_file}' does not exist. Check evaluate.onnx_file / "
                            "inference.onnx_file, or run `segformer export` first.")
        self.session = make_session(onnx_file, threads=threads)
        self.io = validate_io(self.session, source=f"'{onnx_file}'", num_classes=num_classes, img_size=img_size)
        self.meta = graph_meta(read_embedded_meta(self.session), self.io, f"'{onnx_file}'")

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) float32 normalized -> logits (N, C, h, w) float32 on the CPU."""
        x = images.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(run_in_fixed_batches(self._run, x, self.io["batch"]))

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
