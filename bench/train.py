"""Training throughput and peak memory: our Lightning SegFormer vs a plain Hugging Face training loop.

Both train MiT-b0 + all-MLP decoder (embed 256) with AdamW on the same in-memory synthetic batches (images
at img_size, 3 classes), same batch size, fp32. Throughput = batch / median step time after warmup.
Each side runs in its own subprocess so peak RSS (CPU) or peak CUDA memory is its own.
Prints a side-by-side table and writes bench/results/train.json.

    python bench/train.py [--img-size 128] [--batch-size 8] [--steps 12] [--warmup 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batches(n: int, batch: int, size: int, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, size, size, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
        out.append((x, y.clamp_(max=classes - 1)))
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _summary(times: list[float], args, device) -> dict:
    """Throughput from the median step time after warmup (first CPU steps pay one-off oneDNN/allocator costs)."""
    steady = sorted(times[args.warmup :])
    median = steady[len(steady) // 2]
    return {"images_per_s": args.batch_size / median, "median_step_s": median,
            "peak_memory_mb": _peak_memory_mb(device)}


def run_ours(args, device) -> dict:
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, Dataset

    sys.path.insert(0, ROOT)
    from segformer_tao.config import compose_config
    from segformer_tao.engine.module import SegFormerModule

    cfg = compose_config("train", [
        "dataset.segment.root_dir=unused", f"dataset.segment.num_classes={args.num_classes}",
        f"dataset.segment.img_size={args.img_size}",
        "model.backbone.type=mit_b0", "model.decode_head.decoder_params.embed_dim=256", "train.optim.lr=0.0006"])
    batches = make_batches(args.warmup + args.steps, args.batch_size, args.img_size, args.num_classes)

    class Batches(Dataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            return {"image": batches[i][0], "mask": batches[i][1]}

    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *a):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, *a):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    module = SegFormerModule(cfg)
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                         callbacks=[Timer()], enable_model_summary=False)
    loader = DataLoader(Batches(), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return _summary(times, args, device)


def run_hf(args, device) -> dict:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_labels=args.num_classes, hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256,
                             depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8], semantic_loss_ignore_index=255)
    model = SegformerForSemanticSegmentation(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4)
    times = []
    for x, y in make_batches(args.warmup + args.steps, args.batch_size, args.img_size, args.num_classes):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(pixel_values=x.to(device), labels=y.to(device)).loss  # logits upsampled to labels inside
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return _summary(times, args, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/train.json)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2, help="alternate the two sides; best of N (shared machines)")
    p.add_argument("--impl", choices=["ours", "hf"], help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.impl:
        torch.manual_seed(0)
        result = run_ours(args, device) if args.impl == "ours" else run_hf(args, device)
        print("RESULT " + json.dumps(result))
        return
    rows: dict[str, dict] = {}
    for impl in ("ours", "hf") * args.repeats:
        cmd = [sys.executable, __file__, "--impl", impl, "--img-size", str(args.img_size), "--batch-size",
               str(args.batch_size), "--num-classes", str(args.num_classes), "--steps", str(args.steps),
               "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{impl} failed:\n{proc.stderr[-3000:]}")
        got = json.loads(line[0][7:])
        best = rows.setdefault(impl, got)
        best["images_per_s"] = max(best["images_per_s"], got["images_per_s"])
        best["peak_memory_mb"] = min(best["peak_memory_mb"], got["peak_memory_mb"])
    ratio = rows["ours"]["images_per_s"] / rows["hf"]["images_per_s"]
    mem_ratio = rows["ours"]["peak_memory_mb"] / rows["hf"]["peak_memory_mb"]
    print(f"\ntrain, mit_b0, img {args.img_size}, batch {args.batch_size}, {args.steps} timed steps on {device.type}")
    print(f"{'':22}{'segformer_tao':>15}{'HF transformers':>18}{'ratio':>8}")
    print(f"{'images/s':22}{rows['ours']['images_per_s']:>15.2f}{rows['hf']['images_per_s']:>18.2f}{ratio:>8.2f}")
    print(f"{'peak memory (MiB)':22}{rows['ours']['peak_memory_mb']:>15.0f}{rows['hf']['peak_memory_mb']:>18.0f}"
          f"{mem_ratio:>8.2f}")
    out = {"benchmark": "train", "device": device.type, "torch": torch.__version__, "img_size": args.img_size,
           "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
           "peak_memory_kind": "max CUDA allocated" if device.type == "cuda" else "process max RSS",
           "segformer_tao": rows["ours"], "hf_transformers": rows["hf"], "speedup": ratio, "memory_ratio": mem_ratio}
    sys.path.insert(0, ROOT)
    from segformer_tao import io

    out["num_classes"] = args.num_classes
    io.write_json(args.out or os.path.join(ROOT, "bench", "results", "train.json"), out)


if __name__ == "__main__":
    main()
