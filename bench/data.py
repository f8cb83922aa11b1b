"""Training data pipeline throughput (decode + augment + collate) at img_size 512 with 2 workers.

    PYTHONPATH=. python bench/data.py [--images 48] [--batches 12] [--workers 2] [--rounds 3]

Prints a table (per-stage cost in one process, loader images/s and the model's training images/s, alternating
for --rounds rounds: median and min-max) and writes bench/results/data.json. Goal: the loader >= 3x the model's
training, judged by bench/compare.py.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import compare
from segformer_tao import io
from segformer_tao.config import compose_config
from segformer_tao.data import UnetSegmentationDataset, build_dataloader
from segformer_tao.data.decode import decode_image
from segformer_tao.data.storage import read_bytes
from segformer_tao.data.synthetic import make_demo_dataset


def _stage_ms(ds: UnetSegmentationDataset, n: int) -> dict[str, float]:
    """Per-image milliseconds of each stage, in this process."""
    t = {"read": 0.0, "decode": 0.0, "augment": 0.0}
    for i in range(n):
        s = ds.samples[i % len(ds)]
        t0 = time.perf_counter()
        img_b, mask_b = read_bytes(s.image), read_bytes(s.mask)
        t1 = time.perf_counter()
        img, mask = decode_image(img_b, s.image), ds.decode_mask(mask_b, s.mask)
        t2 = time.perf_counter()
        ds.train_pipeline(img, mask)
        t3 = time.perf_counter()
        t["read"] += t1 - t0
        t["decode"] += t2 - t1
        t["augment"] += t3 - t2
    return {k: 1000 * v / n for k, v in t.items()}


def _loader_ips(cfg, batches: int) -> float:
    loader = build_dataloader(cfg, "train", "train")
    it = iter(loader)
    next(it)  # workers started and warm
    start, seen = time.perf_counter(), 0
    while seen < batches * loader.batch_size:
        try:
            seen += next(it)["image"].shape[0]
        except StopIteration:
            it = iter(loader)
    return seen / (time.perf_counter() - start)


def _model_ips(cfg, batch: int = 2, steps: int = 2) -> float:
    """Training images/s of the configured model (forward + backward + AdamW)."""
    from segformer_tao.model import build_model

    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, cfg.dataset.segment.img_size, cfg.dataset.segment.img_size)
    y = torch.randint(0, cfg.dataset.segment.num_classes, (batch, x.shape[2], x.shape[3]))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        logits = torch.nn.functional.interpolate(model(x), size=x.shape[2:], mode="bilinear")
        torch.nn.functional.cross_entropy(logits, y).backward()
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=compare.MIN_ROUNDS)
    ap.add_argument("--quick", action="store_true", help="1 round: a smoke run, never judged")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = ap.parse_args()
    if args.quick:
        args.rounds = 1
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_dataset(Path(tmp) / "demo", num_classes=4, size=args.img_size, train=args.images, val=1,
                                 test=1)
        cfg = compose_config("train", [
            f"dataset.segment.root_dir={root}", "dataset.segment.num_classes=4", "dataset.segment.label_transform=None",
            f"dataset.segment.img_size={args.img_size}", f"dataset.segment.workers={args.workers}",
            "dataset.segment.batch_size=8", "model=mit_b0"])
        stages = _stage_ms(UnetSegmentationDataset(cfg, "train", "train"), min(args.images, 16))
        loader, model = [], []
        for _ in range(args.rounds):
            loader.append(_loader_ips(cfg, args.batches))
            model.append(_model_ips(cfg))
    goal = compare.verdict(loader, model, 3.0, quick=args.quick)
    machine = compare.machine()
    print(compare.machine_line(machine))
    rows = [("read ms/img", f"{stages['read']:.2f}"), ("decode ms/img", f"{stages['decode']:.2f}"),
            ("augment ms/img", f"{stages['augment']:.2f}"),
            (f"loader img/s ({args.workers} workers)", compare.fmt_side(compare.spread(loader))),
            ("model train img/s (mit_b0, CPU, 1 thread)", compare.fmt_side(compare.spread(model))),
            ("loader / model (ratio of medians)", f"{goal['ratio']:.2f}x, goal {goal['goal']}: {goal['status']}")]
    print(f"{'metric':44s} value   (img_size {args.img_size}, {args.rounds} alternating rounds)")
    for name, value in rows:
        print(f"{name:44s} {value}")
    io.write_json(args.out, {"img_size": args.img_size, "workers": args.workers, "batch_size": 8,
                             "rounds": args.rounds, "quick": args.quick, "machine": machine,
                             "stage_ms_per_image": stages, "loader_images_per_s": compare.spread(loader),
                             "model_train_images_per_s": compare.spread(model), "goal": goal,
                             "cpu_count": os.cpu_count(), "torch": torch.__version__,
                             "numpy": np.__version__})


if __name__ == "__main__":
    main()
