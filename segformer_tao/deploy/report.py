"""Accuracy and speed of a runtime on the eval split (quantize's INT8 vs FP32 report, bench)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def logits_to_masks(logits: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-image class ids at each original (H, W): bilinear resize of the logits, then argmax."""
    return [F.interpolate(logits[i:i + 1].float(), size=tuple(int(s) for s in size), mode="bilinear",
                          align_corners=False)[0].argmax(0) for i, size in enumerate(sizes)]


def evaluate_runtime(runtime, cfg, split: str | None = None) -> dict:
    """Run ``runtime.predict`` over the eval split; returns mIoU (0-1), images/s (model time only), counts.

    Masks are compared at their original resolution, as `segformer evaluate` does.
    """
    from segformer_tao.data import build_dataloader
    from segformer_tao.engine.metrics import SegmentationMetrics

    seg = cfg.dataset.segment
    split = split or seg.test_split
    loader = build_dataloader(cfg, split, "eval", shuffle=False)
    metrics = SegmentationMetrics(seg.num_classes, seg.ignore_index)
    seconds, images = 0.0, 0
    for batch in loader:
        start = time.perf_counter()
        logits = runtime.predict(batch["image"])
        seconds += time.perf_counter() - start
        images += len(batch["mask"])
        sizes = [tuple(m.shape[-2:]) for m in batch["mask"]]
        for pred, mask in zip(logits_to_masks(logits, sizes), batch["mask"]):
            metrics.update(pred, mask)
    scores = metrics.compute()
    return {"mIoU": scores["mIoU"], "overall_accuracy": scores["overall_accuracy"], "images": images,
            "images_per_s": images / seconds if seconds else None, "split": split}
