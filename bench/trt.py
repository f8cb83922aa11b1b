"""TensorRT benchmark (GPU machines only): engines fp32 / fp16 / int8 against PyTorch on the same GPU.

Builds engines with the product's builder (segformer_tao.deploy.tensorrt_build) from the same exported ONNX
(int8 from the TensorRT-form Q/DQ ONNX that `segformer quantize` writes) and times them with the product's
TrtRuntime against PyTorch eager fp32 and fp16 autocast, batch 1 at 512x512 by default. Every side is timed
host tensor in -> host logits out, as evaluate and inference use them. Without tensorrt or a CUDA GPU it writes
bench/results/trt.json with the reason and exits 0, so `make bench` still runs on CPU machines.
Usage: python bench/trt.py [--size 512] [--batch 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segformer_tao import io  # noqa: E402
from segformer_tao.deploy import onnx_export  # noqa: E402
from segformer_tao.errors import NotAvailableError  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "trt.json")
NUM_CLASSES = 19


def images_per_s(fn, x: torch.Tensor, seconds: float) -> float:
    fn(x)
    torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 5:
        fn(x)
        count += 1
    torch.cuda.synchronize()
    return count * x.shape[0] / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backbone", default="mit_b0")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workspace-mib", type=int, default=4096)
    args = parser.parse_args()
    try:
        from segformer_tao.deploy import tensorrt as trt_deploy
        from segformer_tao.deploy import tensorrt_build

        trt = trt_deploy.require_tensorrt()
    except NotAvailableError as e:
        print(f"TensorRT rows skipped: {e}")
        io.write_json(OUT, {"skipped": str(e)})
        return 0

    from segformer_tao.deploy.quantization import QuantizeSettings, quantize_onnx
    from segformer_tao.model import build_model

    cfg = OmegaConf.create({"model": {"backbone": {"type": args.backbone}},
                            "dataset": {"segment": {"num_classes": NUM_CLASSES}}})
    model = build_model(cfg, load_weights=False).eval()
    shape = (args.batch, 3, args.size, args.size)
    fp32_onnx = onnx_export.export_onnx_bytes(model, onnx_export.ExportSettings(height=args.size, width=args.size))
    calib = [torch.randn(1, 3, args.size, args.size) for _ in range(8)]
    qdq_onnx = quantize_onnx(fp32_onnx, calib, QuantizeSettings(target="tensorrt"))

    runs: dict[str, float] = {}
    build_s: dict[str, float] = {}
    x = torch.randn(*shape)
    gpu_model = model.cuda()
    with torch.inference_mode():
        runs["torch_fp32"] = images_per_s(lambda t: gpu_model(t.cuda()).float().cpu(), x, args.seconds)
        with torch.autocast("cuda", dtype=torch.float16):
            runs["torch_fp16_autocast"] = images_per_s(lambda t: gpu_model(t.cuda()).float().cpu(), x, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data_type, onnx_bytes in (("trt_fp32", "fp32", fp32_onnx), ("trt_fp16", "fp16", fp32_onnx),
                                            ("trt_int8_qdq", "int8", qdq_onnx)):
            settings = tensorrt_build.BuildSettings(data_type=data_type, workspace_mib=args.workspace_mib,
                                                    profile=tensorrt_build.Profile(min=shape, opt=shape, max=shape))
            start = time.perf_counter()
            try:
                engine, info = tensorrt_build.build_engine(onnx_bytes, settings)
            except NotAvailableError as e:  # e.g. TensorRT 11 fp16 without ModelOpt
                print(f"{name} skipped: {e}")
                continue
            build_s[name] = time.perf_counter() - start
            path = os.path.join(tmp, f"{name}.engine")
            trt_deploy.write_engine(path, engine, info)
            runtime = trt_deploy.TrtRuntime(path, num_classes=NUM_CLASSES)
            runs[name] = images_per_s(runtime.predict, x, args.seconds)
    result = {"backbone": args.backbone, "size": args.size, "batch": args.batch, "tensorrt": trt.__version__,
              "gpu": torch.cuda.get_device_name(), "images_per_s": runs, "engine_build_s": build_s,
              "trt_fp16_vs_torch_fp32": runs["trt_fp16"] / runs["torch_fp32"] if "trt_fp16" in runs else None,
              "trt_int8_vs_trt_fp16": (runs["trt_int8_qdq"] / runs["trt_fp16"]
                                       if {"trt_int8_qdq", "trt_fp16"} <= set(runs) else None)}
    print(f"{args.backbone} {args.size}x{args.size} batch {args.batch} on {result['gpu']}, TensorRT {trt.__version__}")
    print(f"{'runtime':<22}{'img/s':>9}{'vs torch fp32':>15}{'build s':>9}")
    for name, ips in runs.items():
        built = f"{build_s[name]:.0f}" if name in build_s else "-"
        print(f"{name:<22}{ips:>9.1f}{ips / runs['torch_fp32']:>14.2f}x{built:>9}")
    io.write_json(OUT, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
