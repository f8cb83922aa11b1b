"""One table of every issue-12 goal from bench/results/*.json (written by the individual benches).

Columns: metric, ours, reference, ratio, goal, pass/fail. A missing result prints as "not run" (never as a pass).
Writes bench/results/summary.json. Usage: python bench/summary.py [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(results: str, name: str) -> dict | None:
    path = os.path.join(results, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _row(metric: str, ours: float | None, ref: float | None, ratio: float | None, goal: str,
         ok: bool | None) -> dict:
    return {"metric": metric, "ours": ours, "reference": ref, "ratio": ratio, "goal": goal,
            "pass": ok, "status": "not run" if ok is None else ("pass" if ok else "FAIL")}


def _train_rows(results: str) -> list[dict]:
    rows = []
    for classes in (2, 150):
        r = _load(results, f"train_{classes}")
        name = f"train img/s mit_b0, {classes} classes (vs HF loop)"
        if r is None:
            rows += [_row(name, None, None, None, ">= 1.5x", None),
                     _row(f"train peak memory MiB, {classes} classes", None, None, None, "<= 1.0x", None)]
            continue
        o, h = r["segformer_tao"], r["hf_transformers"]
        rows.append(_row(name, o["images_per_s"], h["images_per_s"], r["speedup"], ">= 1.5x", r["speedup"] >= 1.5))
        rows.append(_row(f"train peak memory MiB, {classes} classes ({r['peak_memory_kind']})", o["peak_memory_mb"],
                         h["peak_memory_mb"], r["memory_ratio"], "<= 1.0x", r["memory_ratio"] <= 1.0))
    return rows


def _model_rows(results: str) -> list[dict]:
    r = _load(results, "model")
    name = "PyTorch inference img/s, batch 1 (vs HF eager)"
    if r is None:
        return [_row(name, None, None, None, ">= 1.3x", None)]
    o, h = r["results"]["ours"]["forward"]["images_per_s"], r["results"]["huggingface"]["forward"]["images_per_s"]
    return [_row(name, o, h, o / h, ">= 1.3x", o / h >= 1.3)]


def _deploy_rows(results: str) -> list[dict]:
    r = _load(results, "deploy")
    if r is None:
        return [_row("ORT FP32 img/s (vs machine limit)", None, None, None, ">= 0.8x", None),
                _row("ORT INT8 img/s (vs ORT FP32)", None, None, None, ">= 1.5x", None)]
    ips, limit = r["images_per_s"], r["limit_images_per_s"]
    fp32 = ips["ort_fp32"]
    int8_name = max((k for k in ips if k.startswith("ort_") and "int8" in k), key=lambda k: ips[k])
    return [_row(f"ORT FP32 img/s (vs limit {r['model_gflops']:.1f} GFLOP / {r['matmul_fp32_gflops']:.0f} GFLOP/s)",
                 fp32, limit, fp32 / limit, ">= 0.8x", fp32 / limit >= 0.8),
            _row(f"ORT INT8 img/s, best form {int8_name} (vs ORT FP32)", ips[int8_name], fp32, ips[int8_name] / fp32,
                 ">= 1.5x", ips[int8_name] / fp32 >= 1.5)]


def _cpu_runtime_rows(results: str) -> list[dict]:
    """Issue 18's goals as judged by bench/deploy.py on this CPU, plus the demo-set accuracy of BF16 and NNCF."""
    r = _load(results, "deploy")
    rows = []
    for g in (r or {}).get("goals", []):
        med = r["settings"][g["setting"]]["median"]
        rows.append(_row(f"{g['goal']}, {g['setting']} ({g['runtime']} vs {g['reference']})", med[g["runtime"]],
                         med[g["reference"]], g["ratio"], g["target"], g["pass"]))
    for name, title in (("quantize_openvino", "NNCF INT8 (OpenVINO IR)"), ("openvino_bf16", "OpenVINO BF16")):
        q = _load(results, name)
        metric = f"{title} mIoU on the demo set (vs f32, drop in points)"
        if q is None:
            rows.append(_row(metric, None, None, None, "<= 1 point", None))
            continue
        low, ref = (q["int8"], q["fp32"]) if "int8" in q else (q["bf16"], q["f32"])
        rows.append(_row(metric, low["mIoU"], ref["mIoU"], q["miou_drop_points"], "<= 1 point",
                         q["miou_drop_points"] <= 1.0))
    return rows


def _quantize_rows(results: str) -> list[dict]:
    r = _load(results, "quantize")
    name = "INT8 mIoU on the demo set (vs FP32, drop in points)"
    if r is None:
        return [_row(name, None, None, None, "<= 1 point", None)]
    drop = r["miou_drop_points"]
    return [_row(name, r["int8"]["mIoU"], r["fp32"]["mIoU"], drop, "<= 1 point", drop <= 1.0)]


def _data_rows(results: str) -> list[dict]:
    r = _load(results, "data")
    name = "data pipeline img/s (vs model training img/s)"
    if r is None or not r.get("loader_over_model"):
        return [_row(name, None, None, None, ">= 3x", None)]
    ratio = r["loader_over_model"]
    return [_row(name, r["loader_images_per_s"], r["model_train_images_per_s"], ratio, ">= 3x", ratio >= 3)]


def _trt_rows(results: str) -> list[dict]:
    """GPU rows (no goal in issue 12, so they are reported as measured, never as pass/fail)."""
    r = _load(results, "trt")
    if r is None or "skipped" in r:
        return []
    ips = r["images_per_s"]
    rows = [_row(f"TensorRT {k[4:]} img/s on {r['gpu']} (vs PyTorch fp32 eager)", v, ips["torch_fp32"],
                 v / ips["torch_fp32"], "-", None) for k, v in ips.items() if k.startswith("trt_")]
    for row in rows:
        row["status"] = "measured"
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    rows = (_train_rows(args.results) + _model_rows(args.results) + _deploy_rows(args.results)
            + _cpu_runtime_rows(args.results) + _quantize_rows(args.results) + _data_rows(args.results)
            + _trt_rows(args.results))
    width = max(len(r["metric"]) for r in rows)
    print(f"\n{'metric':<{width}}  {'ours':>9}  {'reference':>9}  {'ratio':>7}  {'goal':>10}  result")
    for r in rows:
        print(f"{r['metric']:<{width}}  {_fmt(r['ours']):>9}  {_fmt(r['reference']):>9}  {_fmt(r['ratio']):>7}  "
              f"{r['goal']:>10}  {r['status']}")
    trt = _load(args.results, "trt")
    if trt and "skipped" in trt:
        print(f"TensorRT rows: skipped ({trt['skipped']})")
    with open(os.path.join(args.results, "summary.json"), "w") as f:
        json.dump({"rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
