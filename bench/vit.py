"""ViT-Adapter cost on CPU: vit_small_dinov3 vs mit_b0 and fan_tiny_8_p4_hybrid, and deformable attention's cost.

    PYTHONPATH=. python bench/vit.py [--size 224] [--batch 2] [--rounds 5]

Prints params, GFLOPs, forward and training-step images/s (medians of alternating rounds with min-max spread) and
the peak memory of one training step (fresh process per model) side by side, then the deformable-attention core
(grid_sample and the precise gather sampler) against a naive per-point loop. Writes bench/results/vit.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time

import torch
from omegaconf import OmegaConf

from bench import compare
from segformer_tao.commands.model import model_info
from segformer_tao.model import build_model
from segformer_tao.model.backbones.msda import ms_deform_attn_core
from tests.model.test_msda import _naive

BACKBONES = ("mit_b0", "fan_tiny_8_p4_hybrid", "vit_small_dinov3")


def _cfg(name: str, size: int):
    return OmegaConf.create({"model": {"backbone": {"type": name},
                                       "decode_head": {"decoder_params": {"embed_dim": 256}}},
                             "dataset": {"segment": {"num_classes": 2, "img_size": size}}})


def _train_step_peak_mb(name: str, size: int, batch: int) -> float:
    """Peak resident memory (MiB) of a process that builds ``name`` and runs one training step."""
    model = build_model(_cfg(name, size), load_weights=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(batch, size // 4, size // 4, dtype=torch.long)).backward()
    opt.step()
    # VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report the parent's peak
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _peak_mb(name: str, size: int, batch: int) -> float:
    # a fresh process per model: the high-water mark is a lifetime peak, one process would mix the models
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_train_step_peak_mb, (name, size, batch))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {n: build_model(_cfg(n, args.size), load_weights=False) for n in BACKBONES}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 2, (args.batch, args.size // 4, args.size // 4))
    fwd = {n: [] for n in BACKBONES}
    step = {n: [] for n in BACKBONES}
    for _ in range(args.rounds):  # alternate models each round so machine load hits all alike
        for n, m in models.items():
            m.eval()
            t = time.perf_counter()
            with torch.no_grad():
                m(x)
            fwd[n].append(args.batch / (time.perf_counter() - t))
            m.train()
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opts[n].step()
            opts[n].zero_grad()
            step[n].append(args.batch / (time.perf_counter() - t))
    rows = {}
    print(f"{compare.machine_line(compare.machine())}; threads={torch.get_num_threads()}  size={args.size} "
          f"batch={args.batch} rounds={args.rounds}")
    print(f"{'backbone':<22}{'params M':>9}{'GFLOPs':>8}{'fwd img/s':>18}{'train img/s':>18}{'peak MiB':>10}")
    for n in BACKBONES:
        info = model_info(_cfg(n, args.size))
        f, s = fwd[n], step[n]
        peak = _peak_mb(n, args.size, args.batch)
        rows[n] = dict(params_m=info["params_total_m"], gflops=info["gflops"], fwd_median=statistics.median(f),
                       fwd_range=[min(f), max(f)], train_median=statistics.median(s), train_range=[min(s), max(s)],
                       train_step_peak_mib=peak)
        print(f"{n:<22}{info['params_total_m']:>9.2f}{info['gflops']:>8.2f}"
              f"{statistics.median(f):>9.2f} ({min(f):.2f}-{max(f):.2f}){statistics.median(s):>9.2f} "
              f"({min(s):.2f}-{max(s):.2f}){peak:>10.0f}")
    base = rows["mit_b0"]
    vit = rows["vit_small_dinov3"]
    print(f"vit_small_dinov3 / mit_b0: forward x{base['fwd_median'] / vit['fwd_median']:.2f} slower, "
          f"training x{base['train_median'] / vit['train_median']:.2f} slower")

    g = torch.Generator().manual_seed(0)
    shapes = [(8, 8), (4, 4), (2, 2)]
    value = torch.randn(1, sum(h * w for h, w in shapes), 4, 8, generator=g)
    loc = torch.rand(1, 16, 4, 3, 4, 2, generator=g)
    w = torch.rand(1, 16, 4, 3, 4, generator=g)
    timings = {}
    for label, fn in (("grid_sample", lambda: ms_deform_attn_core(value, shapes, loc, w)),
                      ("precise", lambda: ms_deform_attn_core(value, shapes, loc, w, precise=True)),
                      ("naive loop", lambda: _naive(value, shapes, loc, w))):
        ts = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        timings[label] = statistics.median(ts)
    ratio = timings["naive loop"] / timings["grid_sample"]
    print("MSDA core, 16 queries x 4 heads x 3 levels x 4 points (ms, median): "
          + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()) + f"; naive / grid_sample = x{ratio:.0f}")
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/vit.json", "w") as f:
        json.dump({"models": rows, "msda_ms": timings, "machine": compare.machine(), "size": args.size}, f, indent=2)


if __name__ == "__main__":
    main()
