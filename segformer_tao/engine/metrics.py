"""Segmentation metrics from one confusion matrix: mIoU, per-class IoU/accuracy/precision/recall/F1/Dice.

Rows of the confusion matrix are ground-truth classes, columns predicted classes. Pixels whose target is
``ignore_index`` (or outside ``[0, num_classes)``) are not counted. A class that never occurs in the target
nor in the prediction has no defined IoU (0/0): it is reported as ``None`` and left out of the means,
like mmseg's ``nanmean``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Count (target, pred) pairs.

    Args:
        pred: predicted class ids, any integer shape.
        target: ground-truth class ids, same shape as ``pred``.
    Returns:
        int64 tensor (num_classes, num_classes) on ``pred``'s device; ``cm[t, p]`` = pixels of class t
        predicted as p.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    # A prediction outside the class range can only come from a broken runtime; count it as class 0 miss.
    pred = pred[keep].clamp_(0, num_classes - 1)
    index = target[keep] * num_classes + pred
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _nanmean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def scores_from_confusion(cm: torch.Tensor, class_names: Sequence[str] | None = None) -> dict:
    """Turn a confusion matrix into metrics.

    Returns a JSON-ready dict: ``mIoU``, ``mAcc``, ``mPrecision``, ``mRecall``, ``mF1``, ``mDice``,
    ``overall_accuracy`` (all 0-1 floats or None), ``num_pixels`` and ``per_class``, a list of dicts
    (``class_id``, ``class_name``, ``iou``, ``acc``, ``precision``, ``recall``, ``f1``, ``dice``,
    ``support`` = target pixels of the class).
    """
    cm64 = cm.detach().to("cpu", torch.float64)
    n = cm64.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    tp = cm64.diag()
    fn = cm64.sum(1) - tp
    fp = cm64.sum(0) - tp
    per_class = []
    for c in range(n):
        t, f_n, f_p = float(tp[c]), float(fn[c]), float(fp[c])
        absent = t + f_n + f_p == 0
        precision = _ratio(t, t + f_p)
        recall = _ratio(t, t + f_n)
        per_class.append({
            "class_id": c,
            "class_name": names[c] if c < len(names) else str(c),
            "iou": None if absent else t / (t + f_n + f_p),
            "acc": recall,
            "precision": precision,
            "recall": recall,
            "f1": None if absent else 2 * t / (2 * t + f_p + f_n),
            "dice": None if absent else 2 * t / (2 * t + f_p + f_n),
            "support": int(t + f_n),
        })
    total = float(cm64.sum())
    return {
        "mIoU": _nanmean([p["iou"] for p in per_class]),
        "mAcc": _nanmean([p["acc"] for p in per_class]),
        "mPrecision": _nanmean([p["precision"] for p in per_class]),
        "mRecall": _nanmean([p["recall"] for p in per_class]),
        "mF1": _nanmean([p["f1"] for p in per_class]),
        "mDice": _nanmean([p["dice"] for p in per_class]),
        "overall_accuracy": _ratio(float(tp.sum()), total),
        "num_pixels": int(total),
        "per_class": per_class,
    }


class SegmentationMetrics:
    """Accumulates a confusion matrix over batches (and DDP ranks) and computes the scores.

    ``update`` takes predicted ids or logits; ``sync`` sums the matrix over all ranks of the default
    process group (call it once, on every rank, before ``compute``).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names is not None else None
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.cm = torch.zeros_like(self.cm)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one prediction/target pair: ``pred`` (…, H, W) ids or (N, C, H, W) / (C, H, W) logits."""
        if pred.is_floating_point():
            pred = pred.argmax(dim=-3)
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.cm = self.cm.to(cm.device) + cm

    def sync(self) -> None:
        """Sum the confusion matrix across DDP ranks (no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # gloo has no int64 all_reduce on some builds; float64 is exact for counts below 2**53.
            buf = self.cm.to(torch.float64)
            if dist.get_backend() == "nccl":
                buf = buf.cuda()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            self.cm = buf.round().to(torch.int64).to(self.cm.device)

    def compute(self) -> dict:
        return scores_from_confusion(self.cm, self.class_names)

    @property
    def miou(self) -> float:
        value = self.compute()["mIoU"]
        return 0.0 if value is None or math.isnan(value) else float(value)
