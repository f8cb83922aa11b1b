"""Deploy benchmark: images/s at 512x512 batch 1 for torch eager, ORT FP32, ORT INT8 vs this machine's limit.

The limit is model GFLOPs / measured fp32 matmul GFLOP/s (all cores): what a runtime would reach if every
FLOP ran at peak GEMM speed. Writes bench/results/deploy.json. Usage: python bench/deploy.py [--size 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segformer_tao import io  # noqa: E402
from segformer_tao.deploy import onnx_export  # noqa: E402
from segformer_tao.deploy.onnxruntime import available_cores, make_session  # noqa: E402
from segformer_tao.deploy.quantization import QuantizeSettings, quantize_onnx  # noqa: E402
from segformer_tao.model import build_model  # noqa: E402


def matmul_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def model_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 1e9


def images_per_s(fn, x, seconds: float) -> float:
    fn(x)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        fn(x)
        count += 1
    return count * x.shape[0] / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--backbone", default="mit_b0")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    threads = available_cores()
    torch.set_num_threads(threads)
    cfg = OmegaConf.create({"model": {"backbone": {"type": args.backbone}},
                            "dataset": {"segment": {"num_classes": 19}}})
    model = build_model(cfg, load_weights=False).eval()
    x = torch.randn(1, 3, args.size, args.size)
    gflops, peak = model_gflops(model, x), matmul_gflops()
    limit = peak / gflops
    fp32 = onnx_export.simplify(onnx_export.export_onnx_bytes(
        model, onnx_export.ExportSettings(height=args.size, width=args.size)))
    calib = [torch.randn(1, 3, args.size, args.size) for _ in range(4)]
    int8 = {t: quantize_onnx(fp32, calib, QuantizeSettings(target=t)) for t in ("cpu", "tensorrt")}
    runs = {}
    with torch.inference_mode():
        runs["torch_eager_fp32"] = images_per_s(model, x, args.seconds)
    for name, data in (("ort_fp32", fp32), ("ort_int8_cpu", int8["cpu"]), ("ort_int8_tensorrt_qdq", int8["tensorrt"])):
        session = make_session(data, threads=threads)
        runs[name] = images_per_s(lambda t, s=session: s.run(None, {"input": t.numpy()}), x, args.seconds)
    result = {"backbone": args.backbone, "size": args.size, "batch": 1, "threads": threads,
              "model_gflops": gflops, "matmul_fp32_gflops": peak, "limit_images_per_s": limit,
              "images_per_s": runs, "fraction_of_limit": {k: v / limit for k, v in runs.items()},
              "int8_speedup_vs_ort_fp32": {k: runs[k] / runs["ort_fp32"] for k in runs if "int8" in k}}
    print(f"{args.backbone} {args.size}x{args.size} batch 1, {threads} threads: {gflops:.2f} GFLOP/image, "
          f"fp32 matmul {peak:.1f} GFLOP/s -> limit {limit:.2f} img/s")
    print(f"{'runtime':<24}{'img/s':>8}{'of limit':>10}")
    for name, ips in runs.items():
        print(f"{name:<24}{ips:>8.2f}{ips / limit:>9.0%}")
    io.write_json(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "deploy.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
