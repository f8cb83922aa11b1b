"""What the ONNX Runtime, OpenVINO and TensorRT runtimes share: the exported graph's I/O contract, the cores to use,
running a static-batch model in chunks, and the model meta a graph file yields."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from segformer_tao.errors import UserError
from segformer_tao.model.meta import ModelMeta

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def validate_io(session, *, source: str, num_classes: int | None = None, img_size: int | None = None
                ) -> dict[str, Any]:
    """Check a graph's I/O (anything with ONNX Runtime's ``get_inputs``/``get_outputs``); return {"batch", "height",
    "width", "num_classes"} (None where a dimension is dynamic).

    Raises UserError for another model's file: wrong tensor names or channels; and, where the caller expects them,
    another class count or a static size other than ``img_size``.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
    if names_in != [INPUT_NAME] or names_out[:1] != [OUTPUT_NAME]:
        raise UserError(f"{source} has inputs {names_in} and outputs {names_out}; a SegFormer export has one "
                        f"input '{INPUT_NAME}' and an output '{OUTPUT_NAME}'. Export the model with "
                        "`segformer export` and point the key at that file.")
    shape_in, shape_out = list(inputs[0].shape), list(outputs[0].shape)
    if len(shape_in) != 4 or shape_in[1] != 3:
        raise UserError(f"{source} expects input shape {shape_in}; SegFormer takes (N, 3, H, W) RGB images. "
                        "Export the model with export.input_channel=3.")
    classes = shape_out[1] if len(shape_out) == 4 and isinstance(shape_out[1], int) else None
    if len(shape_out) != 4 or (num_classes is not None and classes not in (None, num_classes)):
        raise UserError(f"{source} outputs {shape_out[1] if len(shape_out) > 1 else shape_out} classes but "
                        f"{num_classes} were expected. Use the ONNX exported from a model trained on these classes.")
    static = [d if isinstance(d, int) else None for d in shape_in]
    if img_size is not None and static[2] is not None and (static[2], static[3]) != (img_size, img_size):
        raise UserError(f"{source} has a fixed input size {static[2]}x{static[3]}, not {img_size}x{img_size}. "
                        f"Re-export with export.input_height/input_width={img_size} (or export.dynamic_hw=true).")
    return {"batch": static[0], "height": static[2], "width": static[3], "num_classes": classes}


def graph_meta(embedded: dict[str, Any], io: dict[str, Any], source: str) -> ModelMeta:
    """The :class:`ModelMeta` of an exported graph: what export embedded, its class count checked against the
    output, its fixed input size (None for dynamic H/W)."""
    if io["num_classes"] is None and not embedded.get("num_classes"):
        raise UserError(f"{source} has a dynamic class dimension and no segformer_tao metadata, so its class count "
                        "is unknown. Export it with `segformer export`.")
    fixed = (io["height"], io["width"]) if io["height"] is not None and io["width"] is not None else None
    return ModelMeta.from_dict(embedded, num_classes=io["num_classes"], input_size=fixed)


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
