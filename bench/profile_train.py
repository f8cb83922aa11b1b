"""Where a training step's time goes: ours vs the Hugging Face loop, per phase and per op, in one process.

    PYTHONPATH=. python bench/profile_train.py [--num-classes 2] [--size 512] [--rounds 3] [--ops 25]

Same weights on both sides (bench/model.py's build_pair), batch 2, AdamW. Per phase (forward, loss, backward,
optimizer) the process CPU time of one step, sides alternating for --rounds rounds (median), with --threads
torch threads (default 1: CPU time then hardly moves with other processes' load). Then one profiled step per side
(torch.profiler, ops sorted by self CPU time, grouped by input shape with --shapes). ``--reuse-freed-memory``
applies segformer_tao.engine.allocator to this process first, as training does (it then helps both sides).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import compare  # noqa: E402
from bench.model import build_pair  # noqa: E402
from segformer_tao.engine.allocator import reuse_freed_memory  # noqa: E402
from segformer_tao.engine.loss import segmentation_loss  # noqa: E402

PHASES = ("forward", "loss", "backward", "optimizer", "step")


def make_step(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> list[float]:
        t0 = time.process_time()
        if name == "hf":
            loss = model(pixel_values=x, labels=y).loss  # HF upsamples and takes the loss inside its forward
            t1 = t2 = time.process_time()
        else:
            logits = model(x)
            t1 = time.process_time()
            loss = segmentation_loss(logits, y, 255)
            t2 = time.process_time()
        loss.backward()
        t3 = time.process_time()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.process_time()
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="mit_b0")
    p.add_argument("--num-classes", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops", type=int, default=25, help="rows of the per-op table (0: no profile)")
    p.add_argument("--shapes", action="store_true", help="group the per-op table by input shapes")
    p.add_argument("--reuse-freed-memory", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.reuse_freed_memory:
        reuse_freed_memory()
    torch.manual_seed(0)
    hf, ours = build_pair(args.backbone, 256 if args.backbone == "mit_b0" else 768, args.num_classes)
    x = torch.randn(2, 3, args.size, args.size)
    y = torch.randint(0, args.num_classes, (2, args.size, args.size))
    steps = {"ours": make_step("ours", ours.train(), x, y), "hf": make_step("hf", hf.train(), x, y)}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[list[float]]] = {k: [] for k in steps}
    for r in range(args.rounds):
        for name in steps if r % 2 == 0 else list(steps)[::-1]:
            times[name].append(steps[name]())
    print(compare.machine_line(compare.machine()))
    print(f"{args.backbone} {args.size}px batch 2, {args.num_classes} classes, {args.threads} thread(s), CPU ms per "
          f"step (median of {args.rounds} alternating rounds)")
    print(f"{'':6}" + "".join(f"{ph:>11}" for ph in PHASES))
    med = {k: [statistics.median(c) * 1000 for c in zip(*v)] for k, v in times.items()}
    for name, row in med.items():
        print(f"{name:6}" + "".join(f"{v:>11.0f}" for v in row))
    print(f"hf / ours step CPU time: {med['hf'][-1] / med['ours'][-1]:.2f}x")
    if not args.ops:
        return
    from torch.profiler import ProfilerActivity, profile

    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
            step()
        print(f"\n{name}: one step, ops by self CPU time")
        print(prof.key_averages(group_by_input_shape=args.shapes).table(
            sort_by="self_cpu_time_total", row_limit=args.ops, max_name_column_width=40, max_shapes_column_width=60))


if __name__ == "__main__":
    main()
