"""AutoML wall time: a 4-trial search with automl.parallel_trials=P vs 1 (same trials, same data).

CPU: P=2, each parallel trial gets half the cores' threads (the sequential search gets them all). GPU: P = the
number of visible GPUs, one trial per GPU. Trials: mit_b0 on the synthetic demo set, --epochs epochs each at
--img-size. Runs `segformer train` as a user would (fresh process each), alternating the two settings
--repeats times; prints median wall times with min-max and the speed-up ratio, and writes
bench/results/automl_parallel.json.

    python bench/automl_parallel.py [--trials 4] [--epochs 2] [--img-size 64] [--images 16] [--repeats 2]

Short trials measure mostly process start-up (each parallel trial is a fresh `segformer train`, ~10-20 s of
imports on a loaded 2-core machine); real trials last minutes to hours, so use trials of a realistic length.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import compare  # noqa: E402


def search(root: str, results: str, trials: int, epochs: int, img: int, parallel: int, threads: int) -> float:
    """Wall seconds of one `segformer train` AutoML search (fails loudly if the search fails)."""
    cmd = [sys.executable, "-m", "segformer_tao.cli", "train", "-e", os.path.join(root, "spec.yaml"),
           f"dataset.segment.root_dir={root}", f"dataset.segment.img_size={img}", "dataset.segment.batch_size=2",
           "dataset.segment.workers=0", "model.backbone.type=mit_b0", f"results_dir={results}",
           "automl_policy=on", "automl.sampler=tpe", f"automl.num_trials={trials}", f"automl.max_epochs={epochs}",
           f"automl.parallel_trials={parallel}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"search failed (parallel_trials={parallel}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--images", type=int, default=16, help="training images (validation: a quarter)")
    args = ap.parse_args()
    import torch

    from segformer_tao.data.synthetic import make_demo_dataset

    gpus = torch.cuda.device_count()
    cores = len(os.sched_getaffinity(0))
    if gpus == 1:
        sys.exit("one GPU: nothing to compare (parallel trials take one GPU each); run this on a multi-GPU machine")
    parallel = gpus if gpus > 1 else 2
    tmp = tempfile.mkdtemp(prefix="bench-automl-")
    try:
        root = str(make_demo_dataset(os.path.join(tmp, "demo"), train=args.images, val=max(2, args.images // 4),
                                           test=1))
        # untimed warm-up: the first search on a fresh dataset ran 2-5x slower than every later one here
        search(root, os.path.join(tmp, "warmup"), 1, 1, args.img_size, 1, cores)
        times: dict[int, list[float]] = {1: [], parallel: []}
        for r in range(args.repeats):
            for p in (1, parallel):  # alternate, so load changes on a shared machine hit both alike
                threads = cores if gpus else max(1, cores // p)
                times[p].append(search(root, os.path.join(tmp, f"res{p}_{r}"), args.trials, args.epochs,
                                       args.img_size, p, threads))
                print(f"  parallel_trials={p}: {times[p][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {p: statistics.median(v) for p, v in times.items()}
    ratio = med[1] / med[parallel]
    device = f"{gpus} GPU(s) {torch.cuda.get_device_name(0)}" if gpus else compare.machine_line(compare.machine())
    print(f"\nAutoML {args.trials} trials x {args.epochs} epochs, mit_b0 {args.img_size}px, {args.images} images, "
          f"{device}")
    for p, v in times.items():
        print(f"  parallel_trials={p}: median {med[p]:.1f} s (min {min(v):.1f}, max {max(v):.1f}, n={len(v)})")
    print(f"  speed-up parallel_trials={parallel} vs 1: {ratio:.2f}x (goal >= 1.5x)")
    out = {"device": device, "trials": args.trials, "epochs": args.epochs, "img_size": args.img_size,
           "images": args.images,
           "wall_s": {str(p): v for p, v in times.items()}, "median_s": {str(p): m for p, m in med.items()},
           "speedup": ratio, "parallel_trials": parallel}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "automl_parallel.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
