"""Ours vs Hugging Face SegFormer, same weights: forward and forward+backward images/s, peak memory.

    PYTHONPATH=. python bench/model.py [--backbone mit_b0] [--size 512] [--batch 2] [--iters 5] [--rounds 3]

Builds a random HF ``SegformerForSemanticSegmentation`` with the published widths/depths, saves it, loads it
into ours through ``load_pretrained`` (so both run identical weights; max logits difference is reported),
then times both in eval (no_grad) and train (logits.mean().backward()) mode, the sides alternating for
``--rounds`` rounds (median and min-max per side; the inference goal judged by bench/compare.py). Peak memory is
CUDA's max_memory_allocated on GPU and is not measured on CPU. Writes bench/results/model.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from bench import compare
from segformer_tao import io as sio
from segformer_tao.model import SegFormer, create_backbone
from segformer_tao.model.backbones.mit import MIT_ARCHS
from segformer_tao.model.head import SegFormerHead
from segformer_tao.model.weights import load_pretrained

INFERENCE_GOAL = 1.3  # issue 12: PyTorch inference >= 1.3x HF eager


def build_pair(backbone: str, embed_dim: int, num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    arch = MIT_ARCHS[backbone]
    hf = SegformerForSemanticSegmentation(SegformerConfig(
        hidden_sizes=list(arch["embed_dims"]), depths=list(arch["depths"]),
        num_attention_heads=list(arch["num_heads"]), decoder_hidden_size=embed_dim, num_labels=num_classes))
    bb = create_backbone(backbone)
    ours = SegFormer(bb, SegFormerHead(bb.out_channels, embed_dim, num_classes), backbone_name=backbone)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        load_pretrained(ours, tmp, part="full")
    return hf, ours


def timed(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Seconds per call (median of ``iters`` after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def bench_one(name: str, model: torch.nn.Module, x: torch.Tensor, args) -> dict:
    device = x.device
    logits = (lambda: model(pixel_values=x).logits) if name == "huggingface" else (lambda: model(x))
    result = {}
    for mode in ("forward", "forward_backward"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if mode == "forward":
            model.eval()

            def step():
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
                    logits()
        else:
            model.train()

            def step():
                with torch.autocast(device.type, torch.bfloat16, enabled=args.bf16):
                    out = logits()
                out.float().mean().backward()
                model.zero_grad(set_to_none=True)
        sec = timed(step, args.iters, args.warmup, device)
        result[mode] = {"images_per_s": x.shape[0] / sec,
                        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="mit_b0", choices=list(MIT_ARCHS))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=None, help="decoder width (NVlabs: 256 for b0, else 768)")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    p.add_argument("--channels-last", action="store_true", help="run ours in channels_last memory format")
    p.add_argument("--rounds", type=int, default=compare.MIN_ROUNDS, help="alternating rounds per side")
    p.add_argument("--quick", action="store_true", help="1 round of 1 iteration: a smoke run, never judged")
    p.add_argument("--out", default="bench/results/model.json")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.iters, args.warmup = 1, 1, 1
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    embed_dim = args.embed_dim or (256 if args.backbone == "mit_b0" else 768)
    torch.manual_seed(0)
    hf, ours = (m.to(device) for m in build_pair(args.backbone, embed_dim, args.num_classes))
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        diff = (ours.eval()(x) - hf.eval()(pixel_values=x).logits).abs().max().item()
    x_ours = x
    if args.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
        x_ours = x.contiguous(memory_format=torch.channels_last)
    sides = {"huggingface": (hf, x), "ours": (ours, x_ours)}
    per_round: dict[str, list[dict]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in (sides if r % 2 == 0 else reversed(list(sides))):  # alternate who runs first
            per_round[name].append(bench_one(name, *sides[name], args))
    results = {name: {mode: {"images_per_s": compare.spread([g[mode]["images_per_s"] for g in got]),
                             "peak_mem_mib": got[-1][mode]["peak_mem_mib"]}
                      for mode in ("forward", "forward_backward")} for name, got in per_round.items()}
    inference = compare.verdict([g["forward"]["images_per_s"] for g in per_round["ours"]],
                                [g["forward"]["images_per_s"] for g in per_round["huggingface"]], INFERENCE_GOAL,
                                quick=args.quick)
    report = {"backbone": args.backbone, "size": args.size, "batch": args.batch, "decoder_embed_dim": embed_dim,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({args.threads} threads)",
              "machine": compare.machine(), "rounds": args.rounds, "quick": args.quick,
              "bf16": args.bf16, "channels_last": args.channels_last, "max_abs_logits_diff": diff,
              "results": results, "inference_goal": inference}
    print(f"{args.backbone} {args.size}x{args.size} batch {args.batch} on {report['device']}; "
          f"same weights, max |logits diff| = {diff:.2e}; {args.rounds} alternating rounds")
    print(compare.machine_line(report["machine"]))
    print(f"{'median (min-max)':<22}{'huggingface':>22}{'ours':>22}{'ours/hf':>10}")
    for mode in ("forward", "forward_backward"):
        h, o = results["huggingface"][mode], results["ours"][mode]
        print(f"{mode + ' img/s':<22}{compare.fmt_side(h['images_per_s']):>22}"
              f"{compare.fmt_side(o['images_per_s']):>22}"
              f"{o['images_per_s']['median'] / h['images_per_s']['median']:>9.2f}x")
        if h["peak_mem_mib"] is not None:
            print(f"{mode + ' peak MiB':<22}{h['peak_mem_mib']:>22.0f}{o['peak_mem_mib']:>22.0f}"
                  f"{o['peak_mem_mib'] / h['peak_mem_mib']:>9.2f}x")
    print(f"inference goal {inference['goal']}: {inference['status']} ({inference['why']})")
    sio.write_json(args.out, report)


if __name__ == "__main__":
    main()
