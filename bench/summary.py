"""One table of every benchmark goal from bench/results/*.json (written by the individual benches).

Columns: metric, ours and reference (median with min-max over alternating rounds), ratio of medians, goal and
verdict as bench/compare.py judges it: pass / FAIL only when the whole spread is on one side of the goal,
"inconclusive" when it crosses it, "not judged" for --quick runs. Accuracy rows (mIoU drops) are deterministic and
judged on their value. A missing result prints as "not run" (never as a pass). The machine (CPU model, cores,
flags, GPU) heads the table. Writes bench/results/summary.json. Usage: python bench/summary.py [--results DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from bench import compare  # noqa: E402


def _load(results: str, name: str) -> dict | None:
    path = os.path.join(results, f"{name}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _row(metric: str, ours, ref, ratio: float | None, goal: str, status: str, why: str = "") -> dict:
    """ours/ref: a compare.spread dict, a plain number, or None."""
    return {"metric": metric, "ours": ours, "reference": ref, "ratio": ratio, "goal": goal, "status": status,
            "why": why, "pass": {"pass": True, "FAIL": False}.get(status)}


def _judged(metric: str, ours: dict, ref: dict, v: dict) -> dict:
    return _row(metric, ours, ref, v["ratio"], v["goal"], v["status"], v["why"])


def _train_rows(results: str) -> list[dict]:
    rows = []
    found = sorted(glob.glob(os.path.join(results, "train_*.json")))
    for classes in (2, 150):  # the goal rows print even when not run
        if os.path.join(results, f"train_{classes}.json") not in found:
            rows.append(_row(f"train img/s mit_b0 512px, {classes} classes (vs HF loop)", None, None, None,
                             f">= {3.0:g}x", "not run"))
    for path in found:
        with open(path) as f:
            r = json.load(f)
        if "speed" not in r:
            continue  # written by an older bench/train.py (no rounds)
        o, h = r["segformer_tao"], r["hf_transformers"]
        what = f"{r['backbone']} {r['img_size']}px, {r['num_classes']} classes"
        rows.append(_judged(f"train img/s {what} (vs HF loop)", o["images_per_s"], h["images_per_s"], r["speed"]))
        rows.append(_judged(f"train images per CPU-second {what} (vs HF loop)", o["images_per_cpu_s"],
                            h["images_per_cpu_s"], r["cpu_time"]))
        rows.append(_judged(f"train peak memory MiB {what} ({r['peak_memory_kind']})", o["peak_memory_mb"],
                            h["peak_memory_mb"], r["memory"]))
    return rows


def _model_rows(results: str) -> list[dict]:
    r = _load(results, "model")
    name = "PyTorch inference img/s (vs HF eager)"
    if r is None or "inference_goal" not in r:
        return [_row(name, None, None, None, ">= 1.3x", "not run")]
    res = r["results"]
    return [_judged(f"{name}, batch {r['batch']}", res["ours"]["forward"]["images_per_s"],
                    res["huggingface"]["forward"]["images_per_s"], r["inference_goal"])]


def _deploy_rows(results: str) -> list[dict]:
    r = _load(results, "deploy")
    if r is None:
        return [_row("ORT FP32 img/s (vs machine limit)", None, None, None, ">= 0.8x", "not run"),
                _row("ORT INT8 img/s (vs ORT FP32)", None, None, None, ">= 1.5x", "not run")]
    key = next(iter(r["settings"]))
    s = r["settings"][key]
    rounds, limit, quick = s["rounds"], r["limit_images_per_s"], r.get("quick", False)
    fp32 = rounds["ort_fp32"]
    int8_name = max((k for k in rounds if k.startswith("ort_") and "int8" in k), key=lambda k: s["median"][k])
    # the limit is one measurement (matmul GFLOP/s), taken as a fixed line
    limit_v = compare.verdict(fp32, [limit] * len(fp32), 0.8, quick=quick)
    return [_judged(f"ORT FP32 img/s, {key} (vs limit {r['model_gflops']:.1f} GFLOP / "
                    f"{r['matmul_fp32_gflops']:.0f} GFLOP/s)", compare.spread(fp32), limit, limit_v),
            _judged(f"ORT INT8 img/s, {key}, best form {int8_name} (vs ORT FP32)", compare.spread(rounds[int8_name]),
                    compare.spread(fp32), compare.verdict(rounds[int8_name], fp32, 1.5, quick=quick))]


def _cpu_runtime_rows(results: str) -> list[dict]:
    """Issue 18's goals as judged by bench/deploy.py on this CPU, plus the demo-set accuracy of BF16 and NNCF."""
    r = _load(results, "deploy")
    rows = []
    for g in (r or {}).get("goals", []):
        s = r["settings"][g["setting"]]
        rows.append(_row(f"{g['goal']}, {g['setting']} ({g['runtime']} vs {g['reference']})",
                         compare.spread(s["rounds"][g["runtime"]]), compare.spread(s["rounds"][g["reference"]]),
                         g["ratio"], g["target"], g.get("status", "not judged"), g.get("why", "")))
    for name, title in (("quantize_openvino", "NNCF INT8 (OpenVINO IR)"), ("openvino_bf16", "OpenVINO BF16")):
        q = _load(results, name)
        metric = f"{title} mIoU on the demo set (vs f32, drop in points)"
        if q is None:
            rows.append(_row(metric, None, None, None, "<= 1 point", "not run"))
            continue
        low, ref = (q["int8"], q["fp32"]) if "int8" in q else (q["bf16"], q["f32"])
        ok = q["miou_drop_points"] <= 1.0
        rows.append(_row(metric, low["mIoU"], ref["mIoU"], q["miou_drop_points"], "<= 1 point",
                         "pass" if ok else "FAIL", "deterministic"))
    return rows


def _quantize_rows(results: str) -> list[dict]:
    r = _load(results, "quantize")
    name = "INT8 mIoU on the demo set (vs FP32, drop in points)"
    if r is None:
        return [_row(name, None, None, None, "<= 1 point", "not run")]
    drop = r["miou_drop_points"]
    return [_row(name, r["int8"]["mIoU"], r["fp32"]["mIoU"], drop, "<= 1 point", "pass" if drop <= 1.0 else "FAIL",
                 "deterministic")]


def _data_rows(results: str) -> list[dict]:
    r = _load(results, "data")
    name = "data pipeline img/s (vs model training img/s)"
    if r is None or "goal" not in r:
        return [_row(name, None, None, None, ">= 3x", "not run")]
    return [_judged(name, r["loader_images_per_s"], r["model_train_images_per_s"], r["goal"])]


def _trt_rows(results: str) -> list[dict]:
    """GPU rows (no goal in issue 12, so they are reported as measured, never as pass/fail)."""
    r = _load(results, "trt")
    if r is None or "skipped" in r:
        return []
    ips = r["images_per_s"]
    return [_row(f"TensorRT {k[4:]} img/s on {r['gpu']} (vs PyTorch fp32 eager)", v, ips["torch_fp32"],
                 v / ips["torch_fp32"], "-", "measured") for k, v in ips.items() if k.startswith("trt_")]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return f"{_fmt(v['median'])} ({_fmt(v['min'])}-{_fmt(v['max'])})"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    rows = (_train_rows(args.results) + _model_rows(args.results) + _deploy_rows(args.results)
            + _cpu_runtime_rows(args.results) + _quantize_rows(args.results) + _data_rows(args.results)
            + _trt_rows(args.results))
    machine = compare.machine()
    width = max(len(r["metric"]) for r in rows)
    print("\n" + compare.machine_line(machine))
    print("ours / reference: median (min-max) over alternating rounds; ratio of medians; pass/FAIL only when the "
          "spread clears the goal")
    print(f"{'metric':<{width}}  {'ours':>22}  {'reference':>22}  {'ratio':>7}  {'goal':>10}  result")
    for r in rows:
        print(f"{r['metric']:<{width}}  {_fmt(r['ours']):>22}  {_fmt(r['reference']):>22}  {_fmt(r['ratio']):>7}  "
              f"{r['goal']:>10}  {r['status']}")
    trt = _load(args.results, "trt")
    if trt and "skipped" in trt:
        print(f"TensorRT rows: skipped ({trt['skipped']})")
    with open(os.path.join(args.results, "summary.json"), "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
