"""How every benchmark compares two sides and judges a goal, written once.

A side is a list of per-round figures (images/s, MiB, ...) measured in alternating rounds, so a change of machine
load hits both sides alike. A side is reported as its median with the min-max spread; the ratio of two sides is
the ratio of their medians. A goal on that ratio is judged on the spread, not on the medians alone:

- "pass" only when even the worst pairing of rounds clears the goal (throughput ``>= g``:
  min(ours) / max(ref) >= g; memory ``<= g``: max(ours) / min(ref) <= g);
- "FAIL" only when even the best pairing misses it (max(ours) / min(ref) < g, resp. min(ours) / max(ref) > g);
- "inconclusive" otherwise (the spread crosses the goal line), with the figures;
- never judged in ``--quick`` smoke runs or with fewer than MIN_ROUNDS rounds per side ("not judged").
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence

MIN_ROUNDS = 3


def spread(values: Sequence[float]) -> dict:
    """{"median", "min", "max", "rounds": [...]} of one side's per-round figures."""
    if not values:
        raise ValueError("a side needs at least one round")
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "rounds": [float(v) for v in values]}


def verdict(ours: Sequence[float], ref: Sequence[float], goal: float, higher_is_better: bool = True,
            quick: bool = False) -> dict:
    """Judge ``ours / ref`` against ``goal`` (``>= goal`` when higher_is_better, else ``<= goal``).

    Returns {"ratio" (of medians), "worst", "best" (ratio bounds over the spreads), "goal" (e.g. ">= 3x"),
    "status": "pass" | "FAIL" | "inconclusive" | "not judged", "why"}.
    """
    o, r = spread(ours), spread(ref)
    ratio = o["median"] / r["median"]
    if higher_is_better:
        worst, best = o["min"] / r["max"], o["max"] / r["min"]
        ok, bad = worst >= goal, best < goal
    else:
        worst, best = o["max"] / r["min"], o["min"] / r["max"]
        ok, bad = worst <= goal, best > goal
    out = {"ratio": ratio, "worst": worst, "best": best, "goal": f"{'>=' if higher_is_better else '<='} {goal:g}x"}
    rounds = min(len(ours), len(ref))
    if quick:
        return {**out, "status": "not judged", "why": "--quick smoke run"}
    if rounds < MIN_ROUNDS:
        return {**out, "status": "not judged", "why": f"{rounds} round(s) per side, need {MIN_ROUNDS}"}
    if ok:
        return {**out, "status": "pass", "why": f"worst pairing {worst:.2f}x clears the goal"}
    if bad:
        return {**out, "status": "FAIL", "why": f"best pairing {best:.2f}x misses the goal"}
    low, high = sorted((worst, best))
    return {**out, "status": "inconclusive",
            "why": f"spread crosses the goal: ratio {ratio:.2f}x, bounds {low:.2f}-{high:.2f}x"}


def fmt_side(s: dict, digits: int = 2) -> str:
    """"median (min-max)" of a spread."""
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def machine() -> dict:
    """CPU model, cores usable by this process, CPU flags (AVX2, AVX-512, VNNI, BF16, AMX), GPU (name or None)."""
    from segformer_tao.hardware import cpu_flags  # the product's list of flags that matter

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    info = {"cpu": name, "cores": cores, "flags": cpu_flags(), "gpu": None, "torch": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def machine_line(info: dict) -> str:
    """One printable line of :func:`machine`."""
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["flags"].items())
    load = info.get("load_average")
    return (f"CPU: {info['cpu']}, {info['cores']} cores; flags: {flags}; GPU: {info['gpu'] or 'none'}"
            + (f"; load average {load[0]:.1f}" if load else ""))
