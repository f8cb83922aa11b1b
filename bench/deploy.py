"""CPU deploy benchmark: images/s at 512x512 batch 1 of every CPU runtime side by side, in one process.

Rows: PyTorch eager, ONNX Runtime FP32 and INT8 (Q/DQ, CPU form), OpenVINO FP32, BF16 (only where the CPU has
native BF16) and INT8 (NNCF), for decoder width 768 (19 classes) and 256 (150 classes), mit_b0, random weights
(speed does not depend on them). Each round times every runtime once in turn (alternating, so a change of machine
load hits all alike); the table shows the median and the min-max spread over rounds. Also the machine limit (model
GFLOPs / measured fp32 matmul GFLOP/s), the CPU's flags and which goal of issue 18 holds on this CPU.
Writes bench/results/deploy.json. Usage: python bench/deploy.py [--size 512] [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import compare  # noqa: E402
from segformer_tao import io  # noqa: E402
from segformer_tao.deploy import onnx_export  # noqa: E402
from segformer_tao.deploy.onnxruntime import available_cores, make_session  # noqa: E402
from segformer_tao.deploy.quantization import QuantizeSettings, quantize_onnx  # noqa: E402
from segformer_tao.model import build_model  # noqa: E402

SETTINGS = ((768, 19), (256, 150))  # (decoder width, classes): SegFormer's Cityscapes and ADE20K heads


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


def alternating(fns: dict, x, rounds: int, seconds: float) -> dict[str, list[float]]:
    """images/s of each fn per round; rounds alternate between fns, each fn runs once untimed first."""
    speeds: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn(x)
    for _ in range(rounds):
        for name, fn in fns.items():
            count, start = 0, time.perf_counter()
            while count < 2 or time.perf_counter() - start < seconds:
                fn(x)
                count += 1
            speeds[name].append(count * x.shape[0] / (time.perf_counter() - start))
    return speeds


def runtimes(width: int, classes: int, size: int, threads: int, tmp: str) -> tuple[dict, torch.nn.Module]:
    """{row name: callable(NCHW tensor)} for one decoder setting, plus the torch model."""
    cfg = OmegaConf.create({"model": {"backbone": {"type": "mit_b0"}, "decode_head": {
        "decoder_params": {"embed_dim": width}}}, "dataset": {"segment": {"num_classes": classes}}})
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    fp32 = onnx_export.simplify(onnx_export.export_onnx_bytes(
        model, onnx_export.ExportSettings(height=size, width=size)))
    calib = [torch.randn(1, 3, size, size) for _ in range(4)]  # speed only: accuracy is quantize_demo.sh's job
    int8 = quantize_onnx(fp32, calib, QuantizeSettings(target="cpu"))

    def ort(data: bytes):
        session = make_session(data, threads=threads)
        return lambda t: session.run(None, {"input": t.numpy()})

    def torch_eager(n: int):
        def run(t):
            torch.set_num_threads(n)  # per call: the rows differ only in this
            try:
                return model(t)
            finally:
                torch.set_num_threads(threads)
        return run

    # PyTorch's OpenMP pool collapses when the cores are oversubscribed (4-15x slower with 2 threads than with 1
    # on a loaded 2-core machine), so its 1-thread figure is measured too and the better one is the reference.
    fns = {"torch_eager_fp32": torch_eager(threads), "torch_eager_fp32_1thread": torch_eager(1),
           "ort_fp32": ort(fp32), "ort_int8_cpu": ort(int8)}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        from segformer_tao.deploy import quant_backends
        from segformer_tao.deploy.openvino import compile_model, core, native_bf16

        path = os.path.join(tmp, f"fp32_{width}.onnx")
        io.write_bytes(path, fp32)
        ov_model = core().read_model(path)  # the one Core (see segformer_tao.deploy.openvino.core)
        kept = quant_backends.openvino_float_ops(ov_model, classifier=True, attention=True, skip_names=[])
        ov_int8 = quant_backends.nncf_int8(core().read_model(path), calib, ignored=kept)
        precisions = ["f32", "bf16"] if native_bf16() else ["f32"]
        for name, m in (("fp32", ov_model), ("int8", ov_int8)):
            for p in precisions:
                compiled = compile_model(m, p, threads)
                row = f"openvino_{name}" if p == "f32" else f"openvino_{name}_bf16"
                row = "openvino_bf16" if row == "openvino_fp32_bf16" else row
                fns[row] = lambda t, c=compiled: c({0: t.numpy()})
    return fns, model


def goals(cpu: dict, settings: dict, quick: bool = False) -> list[dict]:
    """Issue 18's three goals, judged per benchmarked setting on this CPU (bench/compare.py's rule)."""
    flags = cpu["flags"]
    vnni = flags["avx512_vnni"] or flags["avx_vnni"] or flags["amx_int8"]
    out = []

    def judge(key, goal, runtime, reference, target, **extra):
        rounds = settings[key]["rounds"]
        v = compare.verdict(rounds[runtime], rounds[reference], target, quick=quick)
        out.append({"setting": key, "goal": goal, "runtime": runtime, "reference": reference,
                    "target": v["goal"], "ratio": v["ratio"], "status": v["status"], "why": v["why"],
                    "pass": {"pass": True, "FAIL": False}.get(v["status"]), **extra})

    for key, s in settings.items():
        med = s["median"]
        torch_ref = max((k for k in med if k.startswith("torch")), key=med.get)
        best = max((k for k in med if not k.startswith("torch")), key=med.get)
        default = max(("ort_fp32", "openvino_fp32"), key=lambda k: med.get(k, 0.0))  # onnx_engine=auto, f32
        judge(key, "best CPU runtime >= 2.0x ORT FP32", best, "ort_fp32", 2.0,
              accuracy="see bench/results/quantize_openvino.json (demo set mIoU drop)")
        judge(key, "default CPU runtime (onnx_engine=auto) >= PyTorch eager", default, torch_ref, 1.0)
        if "openvino_int8" in med:
            judge(key, "INT8 >= 1.5x FP32 on CPUs with VNNI", "openvino_int8", "openvino_fp32", 1.5,
                  applies=bool(vnni))
            if not vnni:
                out[-1].update(status="n/a (no VNNI)", why="this CPU has no VNNI", **{"pass": None})
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per runtime per round")
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s: a smoke run, never judged")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 0.5
    import tempfile

    threads = available_cores()
    torch.set_num_threads(threads)
    cpu = compare.machine()
    print(compare.machine_line(cpu))
    peak = matmul_gflops()
    x = torch.randn(1, 3, args.size, args.size)
    settings, result = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp, torch.inference_mode():
        for width, classes in SETTINGS:
            fns, model = runtimes(width, classes, args.size, threads, tmp)
            gflops = model_gflops(model, x)
            speeds = alternating(fns, x, args.rounds, args.seconds)
            med = {k: statistics.median(v) for k, v in speeds.items()}
            key = f"width{width}_classes{classes}"
            settings[key] = {"model_gflops": gflops, "limit_images_per_s": peak / gflops, "median": med,
                             "min": {k: min(v) for k, v in speeds.items()},
                             "max": {k: max(v) for k, v in speeds.items()},
                             "rounds": speeds}
            print(f"\nmit_b0 {args.size}x{args.size} batch 1, decoder width {width}, {classes} classes: "
                  f"{gflops:.2f} GFLOP/image, limit {peak / gflops:.1f} img/s ({args.rounds} alternating rounds)")
            torch_best = max(v for k, v in med.items() if k.startswith("torch"))
            print(f"{'runtime':<26}{'median img/s':>13}{'min-max':>15}{'vs ORT FP32':>13}{'vs best torch':>15}")
            for name, v in speeds.items():
                print(f"{name:<26}{med[name]:>13.2f}{f'{min(v):.2f}-{max(v):.2f}':>15}"
                      f"{med[name] / med['ort_fp32']:>12.2f}x{med[name] / torch_best:>14.2f}x")
            if "openvino_fp32" in med and "openvino_bf16" not in med:
                print("openvino_bf16: not run (this CPU has no native BF16: AVX-512 BF16 or AMX)")
    judged = goals(cpu, settings, quick=args.quick)
    print("\nGoals on this CPU (ratio of medians; pass/FAIL only when the min-max spread clears the goal):")
    for g in judged:
        print(f"  {g['setting']:<21}{g['goal']:<58}{g['runtime']:<20}{g['ratio']:>6.2f}x  {g['status']} "
              f"({g['why']})")
    first = settings[f"width{SETTINGS[0][0]}_classes{SETTINGS[0][1]}"]
    result = {"backbone": "mit_b0", "size": args.size, "batch": 1, "threads": threads, "cpu": cpu,
              "matmul_fp32_gflops": peak, "rounds": args.rounds,
              "quick": args.quick, "settings": settings, "goals": judged,
              # the default setting's figures at top level, as bench/summary.py reads them
              "model_gflops": first["model_gflops"], "limit_images_per_s": first["limit_images_per_s"],
              "images_per_s": first["median"]}
    io.write_json(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "deploy.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
