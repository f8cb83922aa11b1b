"""Every quantize backend's artifact side by side on the same data, ONNX Runtime FP32 as the reference.

Runs `segformer quantize` once per backend (onnxruntime, modelopt.onnx, modelopt.pytorch, nncf, torchao
weight_only_ptq and static_ptq; a backend whose package is missing is listed as skipped, with the extra to
install) on one trained checkpoint and the demo set, then times every artifact in one process: images/s at
img_size, batch --batch, each round times every runtime once in turn (alternating, so a change of machine load hits
all alike), median and min-max over rounds. mIoU (demo test split) and sizes come from each quantize_report.json
(measured by evaluate's code on that split). Prints the CPU's flags; writes bench/results/quant_backends.json.
Usage: python bench/quant_backends.py [--checkpoint PTH --root DATASET] [--rounds 5] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from segformer_tao.errors import NotAvailableError  # noqa: E402

OUT = "bench/results/quant_backends"
# name -> (quantize overrides, runtime kind of the artifact)
BACKENDS = {
    "onnxruntime": (["quantize.backend=onnxruntime"], "ort"),
    "modelopt.onnx": (["quantize.backend=modelopt.onnx"], "ort"),
    "modelopt.pytorch": (["quantize.backend=modelopt.pytorch"], "ort"),
    "nncf": (["quantize.backend=nncf"], "openvino"),
    "torchao weight_only": (["quantize.backend=torchao", "quantize.mode=weight_only_ptq"], "torch"),
    "torchao dyn-act": (["quantize.backend=torchao", "quantize.mode=static_ptq"], "torch"),
}


def _cli(py: str, *args: str, log: str) -> int:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    with open(log, "w") as f:
        return subprocess.run([py, "-m", "segformer_tao.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env).returncode


def demo_inputs(py: str) -> tuple[str, str]:
    """(dataset spec, trained checkpoint): `make demo`'s when present, else bench/quantize_demo.sh's, else a short
    training run of its own."""
    spec = "demo_data/dataset/spec.yaml"  # calibration images: its images/train
    if not os.path.isfile(spec):
        _cli(py, "dataset", "demo", "demo_data/dataset", "--classes", "3", "--size", "128", "--train", "48",
             "--val", "8", "--test", "4", log=f"{OUT}.data.log")
    for ckpt in ("demo_data/results/train/segformer_model_best.pth",
                 "bench/results/quantize_demo/train/segformer_model_best.pth", f"{OUT}/train/segformer_model_best.pth"):
        if os.path.isfile(ckpt):
            return spec, ckpt
    _cli(py, "train", "-e", spec, f"results_dir={OUT}", "model=mit_b0", "dataset.segment.workers=0",
         "automl_policy=off", "train.num_epochs=8", "train.optim.lr=0.0015", log=f"{OUT}.train.log")
    return spec, f"{OUT}/train/segformer_model_best.pth"


def quantize_all(py: str, spec: str, ckpt: str, reuse: bool) -> dict[str, dict]:
    from segformer_tao.deploy.quant_backends import INSTALL, require_backend

    reports: dict[str, dict] = {}
    for name, (overrides, _) in BACKENDS.items():
        backend = overrides[0].split("=", 1)[1]
        try:
            require_backend(backend)
        except NotAvailableError:
            reports[name] = {"skipped": f"not installed: {INSTALL[backend]}"}
            continue
        out = f"{OUT}/{name.replace(' ', '_')}"
        if reuse and os.path.isfile(f"{out}/quantize_report.json"):
            reports[name] = json.load(open(f"{out}/quantize_report.json"))
            continue
        rc = _cli(py, "quantize", "-e", spec, f"quantize.model_path={ckpt}", f"quantize.results_dir={out}",
                  "model=mit_b0", "dataset.segment.workers=0", "quantize.device=cpu",
                  "dataset.segment.quant_calibration_dataset.images_dir=demo_data/dataset/images/train", *overrides,
                  log=f"{out}.log")
        reports[name] = json.load(open(f"{out}/quantize_report.json")) if rc == 0 else {"failed": f"see {out}.log"}
    return reports


def open_runtimes(reports: dict[str, dict], ckpt: str) -> dict[str, object]:
    """name -> runtime: ORT FP32 (reference), torch FP32 (torchao's reference), and each backend's artifact."""
    from segformer_tao.deploy.onnxruntime import OrtRuntime
    from segformer_tao.deploy.openvino import OpenVinoRuntime
    from segformer_tao.deploy.torch_runtime import TorchRuntime

    torch_fp32 = TorchRuntime(ckpt, device="cpu")
    geometry = {"num_classes": int(torch_fp32.meta.num_classes), "img_size": int(torch_fp32.meta.img_size)}
    runtimes: dict[str, object] = {}
    ort = reports.get("onnxruntime", {})
    if "fp32" in ort:
        runtimes["ORT FP32 (reference)"] = OrtRuntime(ort["fp32"]["file"], **geometry)
    runtimes["torch FP32"] = torch_fp32
    for name, report in reports.items():
        if "int8" not in report:
            continue
        kind, path = BACKENDS[name][1], report["int8"]["file"]
        runtimes[name] = (OrtRuntime(path, **geometry) if kind == "ort" else OpenVinoRuntime(path, **geometry)
                          if kind == "openvino" else TorchRuntime(path, device="cpu"))
    return runtimes


def _fp32_bytes(name: str, reports: dict[str, dict]) -> int | None:
    """Size of a reference row: the FP32 ONNX (ORT), or the float checkpoint layout torchao's report compares."""
    source = "onnxruntime" if name.startswith("ORT") else "torchao weight_only"
    return (reports.get(source) or {}).get("fp32", {}).get("bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum seconds per runtime per round")
    parser.add_argument("--out", default="bench/results/quant_backends.json")
    parser.add_argument("--reuse", action="store_true", help="reuse the quantize results of an earlier run")
    args = parser.parse_args()
    from bench.compare import machine, machine_line
    from segformer_tao.deploy.cpu_select import images_per_s

    os.makedirs(OUT, exist_ok=True)
    py = sys.executable
    spec, ckpt = demo_inputs(py)
    reports = quantize_all(py, spec, ckpt, args.reuse)
    runtimes = open_runtimes(reports, ckpt)
    size = int(next(iter(runtimes.values())).meta.img_size)
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    speeds = dict(zip(runtimes, images_per_s(list(runtimes.values()), x, args.rounds, args.seconds)))
    cpu = machine()
    ref = statistics.median(speeds.get("ORT FP32 (reference)") or speeds["torch FP32"])
    fp32_miou = next((r["fp32"]["mIoU"] for r in reports.values() if "fp32" in r), None)
    rows = []
    for name, s in speeds.items():
        report = reports.get(name, {})
        side = report.get("int8") or {}
        rows.append({"artifact": name, "runtime": report.get("runtime") or name.split()[0].lower(),
                     "images_per_s": statistics.median(s), "min": min(s), "max": max(s),
                     "vs_ort_fp32": statistics.median(s) / ref, "mIoU": side.get("mIoU", fp32_miou),
                     "bytes": side.get("bytes") or _fp32_bytes(name, reports)})
    print(f"{machine_line(cpu)}; img_size {size}, batch {args.batch}, "
          f"{args.rounds} alternated rounds, torch {torch.__version__}")
    print(f"{'artifact':<22}{'img/s median':>13}{'min-max':>17}{'vs ORT FP32':>13}{'mIoU':>9}{'MB':>8}")
    for r in rows:
        mb = f"{r['bytes'] / 1e6:.1f}" if r["bytes"] else "-"
        miou = f"{r['mIoU']:.4f}" if r["mIoU"] is not None else "-"
        print(f"{r['artifact']:<22}{r['images_per_s']:>13.1f}{r['min']:>8.1f}-{r['max']:<8.1f}"
              f"{r['vs_ort_fp32']:>12.2f}x{miou:>9}{mb:>8}")
    for name, report in reports.items():
        if "int8" not in report:
            print(f"{name:<22}{report.get('skipped') or report.get('failed')}")
    with open(args.out, "w") as f:
        json.dump({"cpu": cpu, "img_size": size, "batch": args.batch, "rounds": args.rounds, "rows": rows,
                   "reports": {k: {kk: v.get(kk) for kk in ("backend", "mode", "runtime", "fp32", "int8",
                                                             "miou_drop_points", "size_ratio", "quantized_layers",
                                                             "skipped", "failed")}
                               for k, v in reports.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
