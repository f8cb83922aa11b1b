"""Leaks over long runs: resident memory, open file descriptors and threads of a real `segformer` process.

    PYTHONPATH=. python bench/leaks.py [--epochs 60] [--images 600] [--out bench/results/leaks.json]

A tiny training (mit_b0, 32 px, 4 train / 2 val images, validation and status.json every epoch, a checkpoint every
3 epochs, heartbeat every 0.2 s) runs as a CLI subprocess, then `segformer inference` over many images. This
process samples the child's /proc (Linux) every 50 ms and keeps, per epoch (from status.json) or per output
mask written, the minimum of each figure: a leak raises the floor, while a transient (a checkpoint's temp file, a
growing-then-freed buffer) does not. Prints growth after warm-up (absolute, per 10 epochs / 100 images, spread of
the per-step floors) and writes JSON. tests/test_leaks.py runs the same with modest counts and bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import compare  # noqa: E402

TINY = ["model=mit_b0", "dataset.segment.num_classes=3", "dataset.segment.img_size=32",
        "dataset.segment.label_transform=None", "dataset.segment.batch_size=2", "dataset.segment.workers=0",
        "automl_policy=off", "train.seed=7", "dataset.segment.check=off", "train.validation_interval=1",
        "train.checkpoint_interval=3", "train.tensorboard.enabled=true"]


def proc_figures(pid: int) -> dict[str, int] | None:
    """{"rss_kb", "fds", "threads"} of a live process (Linux /proc), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {"rss_kb": int(fields["VmRSS"].split()[0]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": int(fields["Threads"])}
    except (OSError, KeyError, ValueError):
        return None


def _last_epoch(status_path: str) -> int | None:
    try:
        with open(status_path, "rb") as f:
            lines = f.read().splitlines()
        return int(json.loads(lines[-1]).get("epoch", -1)) if lines else None
    except (OSError, ValueError, IndexError):
        return None  # not written yet, or a line being appended


def _masks_written(folder: str) -> int | None:
    try:
        return len(os.listdir(os.path.join(folder, "masks")))
    except FileNotFoundError:
        return None


def watch(cmd: list[str], progress, env: dict | None = None, period_s: float = 0.05) -> dict[int, dict[str, int]]:
    """Run ``cmd``; per value of ``progress()`` (epoch, image count) the floor of each figure. Raises on failure."""
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    floors: dict[int, dict[str, int]] = {}
    while proc.poll() is None:
        step, figures = progress(), proc_figures(proc.pid)
        if step is not None and figures is not None:
            floor = floors.setdefault(step, dict(figures))
            for key, value in figures.items():
                floor[key] = min(floor[key], value)
        time.sleep(period_s)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[3]} failed ({proc.returncode}): {err[-2000:]}")
    return floors


def growth(floors: dict[int, dict[str, int]], warmup: int) -> dict[str, float]:
    """Growth of each floor from the first step at/after ``warmup`` to the highest, and the steps between. The
    final step is left out: its samples include the process tearing down (files closed, threads ended)."""
    steps = sorted(s for s in floors if s >= warmup)[:-1]
    first = floors[steps[0]]
    out: dict[str, float] = {"steps": steps[-1] - steps[0]}
    for key in first:
        out[key] = max(floors[s][key] for s in steps) - first[key]
        diffs = [floors[b][key] - floors[a][key] for a, b in zip(steps, steps[1:])]
        out[f"{key}_step_median"] = statistics.median(diffs) if diffs else 0
        out[f"{key}_step_spread"] = (max(diffs) - min(diffs)) if diffs else 0
    return out


def run(work: str, epochs: int, images: int) -> dict:
    """Train then infer in ``work``; returns {"train": {...}, "inference": {...}} with floors and growth."""
    from segformer_tao.data.synthetic import make_demo_dataset

    data = str(make_demo_dataset(os.path.join(work, "data"), num_classes=3, size=32, train=4, val=2, test=images))
    results = os.path.join(work, "results")
    cli = [sys.executable, "-m", "segformer_tao.cli"]
    train = watch([*cli, "train", f"dataset.segment.root_dir={data}", f"results_dir={results}", *TINY,
                   f"train.num_epochs={epochs}"], lambda: _last_epoch(f"{results}/train/status.json"),
                  env={"SEGFORMER_HEARTBEAT_S": "0.2"})
    out = os.path.join(results, "inference")
    infer = watch([*cli, "inference", f"dataset.segment.root_dir={data}", f"results_dir={results}", *TINY,
                   f"parent_job={results}/train", "dataset.segment.predict_split=test"],
                  lambda: _masks_written(out))
    return {"train": {"floors": train, "growth": growth(train, warmup=3)},
            "inference": {"floors": infer, "growth": growth(infer, warmup=max(8, images // 4))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "leaks.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segformer_leaks_") as work:
        result = run(work, args.epochs, args.images)
    machine = compare.machine()
    print(compare.machine_line(machine))
    for phase, unit, per in (("train", "epochs", 10), ("inference", "images", 100)):
        g = result[phase]["growth"]
        scale = per / max(1, g["steps"])
        print(f"{phase}: over {g['steps']} {unit} after warm-up: RSS {g['rss_kb'] / 1024:+.1f} MiB "
              f"({g['rss_kb'] / 1024 * scale:+.2f} MiB per {per} {unit}; per-step median "
              f"{g['rss_kb_step_median']:+.0f} KiB, spread {g['rss_kb_step_spread']:.0f} KiB), fds {g['fds']:+d}, "
              f"threads {g['threads']:+d}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "epochs": args.epochs,
                   "images": args.images, **{k: v["growth"] for k, v in result.items()}}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
