"""ONNX Runtime as a first-class CPU runtime: tuned session, model validation, batched predict."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from segformer_tao import io
from segformer_tao.deploy.runtime import Runtime
from segformer_tao.errors import NotAvailableError, UserError

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Key of the ONNX metadata_props entry where export stores class names, mean/std, img_size, backbone.
META_KEY = "segformer_tao"


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


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
    # Idle intra-op threads sleep instead of spinning: after each run they would take the cores from the resize,
    # argmax, decoding and PNG writing that follow (bench/pipeline.py: +21% inference images/s, model not slower).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    data = model if isinstance(model, bytes) else io.read_bytes(model)
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        where = f" '{source or model}'" if source or not isinstance(model, bytes) else ""
        raise UserError(f"ONNX Runtime cannot load the ONNX model{where}: {str(e).splitlines()[0]}. Check that the "
                        "file is a complete ONNX export of this tool (re-run `segformer export`).") from e


def read_embedded_meta(session) -> dict[str, Any]:
    """The metadata export stored in the ONNX (class names, mean, std, img_size, ...), or {}."""
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    return json.loads(raw) if raw else {}


def _dims(io_arg) -> list[int | str | None]:
    return list(io_arg.shape)


def validate_io(session, *, num_classes: int, img_size: int | None, source: str) -> dict[str, Any]:
    """Check the ONNX's I/O against the dataset config; return {"batch", "height", "width", "num_classes"}.

    Raises UserError for another model's ONNX: wrong tensor names, channels, class count or static size.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
    if names_in != [INPUT_NAME] or names_out[:1] != [OUTPUT_NAME]:
        raise UserError(f"{source} has inputs {names_in} and outputs {names_out}; a SegFormer export has one "
                        f"input '{INPUT_NAME}' and an output '{OUTPUT_NAME}'. Export the model with "
                        "`segformer export` and point the key at that file.")
    shape_in, shape_out = _dims(inputs[0]), _dims(outputs[0])
    if len(shape_in) != 4 or shape_in[1] != 3:
        raise UserError(f"{source} expects input shape {shape_in}; SegFormer takes (N, 3, H, W) RGB images. "
                        "Export the model with export.input_channel=3.")
    if len(shape_out) != 4 or shape_out[1] != num_classes:
        raise UserError(f"{source} outputs {shape_out[1] if len(shape_out) > 1 else shape_out} classes but "
                        f"dataset.segment.num_classes={num_classes}. Use the ONNX exported from a model trained "
                        "on this dataset, or set dataset.segment.num_classes to match it.")
    static = [d if isinstance(d, int) else None for d in shape_in]
    if img_size is not None and static[2] is not None and (static[2], static[3]) != (img_size, img_size):
        raise UserError(f"{source} has a fixed input size {static[2]}x{static[3]} but dataset.segment.img_size="
                        f"{img_size}. Set dataset.segment.img_size={static[2]} or re-export with "
                        f"export.input_height/input_width={img_size} (or export.dynamic_hw=true).")
    return {"batch": static[0], "height": static[2], "width": static[3], "num_classes": num_classes}


def runtime_meta(cfg, embedded: dict[str, Any]) -> dict[str, Any]:
    """Runtime meta: the experiment config's description, overridden by what the model file carries."""
    from segformer_tao.deploy.runtime import meta_from_config

    return {**meta_from_config(cfg), **{k: v for k, v in embedded.items() if v is not None}}


def run_in_fixed_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, fixed: int | None) -> np.ndarray:
    """``run(x)``, or for a model with a static batch size ``fixed``: ``run`` over chunks of ``fixed`` images
    (the last chunk padded by repeating its last image), outputs concatenated and trimmed to len(x)."""
    if fixed is None or fixed == x.shape[0]:
        return run(x)
    outs = []
    for start in range(0, x.shape[0], fixed):
        chunk = x[start:start + fixed]
        n = chunk.shape[0]
        if n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        outs.append(run(chunk)[:n])
    return np.concatenate(outs)


class OrtRuntime(Runtime):
    """Runs an exported SegFormer ONNX with ONNX Runtime on the CPU.

    ``predict(images)`` takes normalized float32 NCHW images and returns logits (N, C, h, w) on the CPU,
    like the torch runtime. A static-batch ONNX is fed in chunks of its batch size (last chunk padded).
    With ``cfg`` (what ``open_runtime`` passes) the class count and img_size are checked against
    dataset.segment; without it pass ``num_classes`` (and optionally ``img_size``) explicitly.
    """

    name = "onnxruntime"

    def __init__(self, onnx_file: str, cfg=None, *, num_classes: int | None = None, img_size: int | None = None,
                 threads: int | None = None):
        self.path = onnx_file
        if not io.exists(onnx_file):
            raise UserError(f"ONNX file '{onnx_file}' does not exist. Check evaluate.onnx_file / "
                            "inference.onnx_file, or run `segformer export` first.")
        if cfg is not None:
            num_classes = int(cfg.dataset.segment.num_classes)
            img_size = int(cfg.dataset.segment.img_size)
        self.session = make_session(onnx_file, threads=threads)
        self.io = validate_io(self.session, num_classes=num_classes, img_size=img_size, source=f"'{onnx_file}'")
        embedded = read_embedded_meta(self.session)
        self.meta = runtime_meta(cfg, embedded) if cfg is not None else {"num_classes": num_classes, **embedded}

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) float32 normalized -> logits (N, C, h, w) float32 on the CPU."""
        x = images.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(run_in_fixed_batches(self._run, x, self.io["batch"]))

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
