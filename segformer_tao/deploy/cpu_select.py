"""Which CPU runtime runs an ONNX model: ONNX Runtime, OpenVINO, or the faster of the two, measured.

``<action>.onnx_engine``: onnxruntime | openvino | auto (default). auto times both on this machine (batch 1,
alternating rounds, median) and keeps the faster one, because which one wins depends on the CPU (AVX2 vs
AVX-512 VNNI/BF16/AMX), the model and the load, and a fixed choice would be wrong on some machines.
``<action>.cpu_precision``: f32 | bf16, OpenVINO's float precision (bf16 only where native).
"""

from __future__ import annotations

import importlib.util
import statistics
import time

import torch

from segformer_tao.deploy.base import Runtime
from segformer_tao.errors import UserError

ENGINES = ("auto", "onnxruntime", "openvino")


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def images_per_s(runtimes: list[Runtime], images: torch.Tensor, rounds: int = 3,
                 min_seconds: float = 0.1) -> list[list[float]]:
    """Images/s of each runtime on ``images`` (NCHW), per round; rounds alternate between runtimes so a change
    of machine load hits all of them alike. Each runtime runs once untimed first (lazy initialisation)."""
    for rt in runtimes:
        rt.predict(images)
    speeds: list[list[float]] = [[] for _ in runtimes]
    for _ in range(rounds):
        for i, rt in enumerate(runtimes):
            calls, start = 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - start < min_seconds:
                rt.predict(images)
                calls += 1
            speeds[i].append(calls * images.shape[0] / (time.perf_counter() - start))
    return speeds


def open_onnx_runtime(path: str, cfg, action: str) -> Runtime:
    """The runtime for ``cfg[action].onnx_file`` (an ONNX, or an OpenVINO IR .xml which only OpenVINO reads)."""
    from segformer_tao.deploy.onnxruntime import OrtRuntime

    section = cfg[action]
    engine = str(section.get("onnx_engine") or "auto")
    precision = str(section.get("cpu_precision") or "f32")
    key = f"{action}.onnx_file"
    if engine not in ENGINES:
        raise UserError(f"{action}.onnx_engine={engine} is unknown; use one of {list(ENGINES)}.")
    if str(path).endswith(".xml"):
        if engine == "onnxruntime":
            raise UserError(f"{key}='{path}' is an OpenVINO IR, which ONNX Runtime cannot read. Set "
                            f"{action}.onnx_engine=openvino (or auto), or point {key} at the .onnx export.")
        engine = "openvino"
    if engine == "openvino":
        from segformer_tao.deploy.openvino import OpenVinoRuntime

        return OpenVinoRuntime(path, precision=precision, key=key, precision_key=f"{action}.cpu_precision")
    if engine == "onnxruntime" or not openvino_installed():
        if precision != "f32":
            why = "onnxruntime was chosen" if engine == "onnxruntime" else "OpenVINO is not installed"
            print(f"Note: {action}.cpu_precision={precision} applies to OpenVINO only and {why}; running ONNX "
                  "Runtime in f32.")
        return OrtRuntime(path)
    return _fastest(path, cfg, action, precision)


def _fastest(path: str, cfg, action: str, precision: str) -> Runtime:
    """onnx_engine=auto: time ONNX Runtime (f32) and OpenVINO (at cpu_precision) and keep the faster one."""
    from segformer_tao.deploy.onnxruntime import OrtRuntime
    from segformer_tao.deploy.openvino import OpenVinoRuntime

    candidates: list[Runtime] = [OrtRuntime(path)]  # checks the model's I/O with the clearest messages first
    candidates.append(OpenVinoRuntime(path, precision=precision, key=f"{action}.onnx_file",
                                      precision_key=f"{action}.cpu_precision"))
    io = candidates[0].io
    size = int(candidates[0].meta.img_size or cfg.dataset.segment.img_size)
    x = torch.randn(io["batch"] or 1, 3, io["height"] or size, io["width"] or size)
    medians = [statistics.median(s) for s in images_per_s(candidates, x)]
    best = max(range(len(candidates)), key=lambda i: medians[i])
    table = ", ".join(f"{rt.label} {m:.1f} img/s" for rt, m in zip(candidates, medians))
    print(f"{action}.onnx_engine=auto: {table} (batch {x.shape[0]}, median of 3 alternating rounds) -> "
          f"{candidates[best].label}")
    return candidates[best]
