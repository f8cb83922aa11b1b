"""Our confusion-matrix metrics against an independent numpy implementation (per-class boolean masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segformer_tao.engine.metrics import SegmentationMetrics, confusion_matrix, scores_from_confusion


def _numpy_reference(preds, targets, num_classes, ignore_index):
    tp = np.zeros(num_classes)
    fp = np.zeros(num_classes)
    fn = np.zeros(num_classes)
    correct = total = 0
    for p, t in zip(preds, targets):
        valid = t != ignore_index
        p, t = p[valid], t[valid]
        correct += int((p == t).sum())
        total += t.size
        for c in range(num_classes):
            tp[c] += np.sum((p == c) & (t == c))
            fp[c] += np.sum((p == c) & (t != c))
            fn[c] += np.sum((p != c) & (t == c))
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        prec = tp / (tp + fp)
        rec = tp / (tp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    return {"iou": iou, "precision": prec, "recall": rec, "dice": dice, "miou": np.nanmean(iou),
            "oacc": correct / total}


def _as_array(per_class, key):
    return np.array([np.nan if p[key] is None else p[key] for p in per_class], dtype=np.float64)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_metrics_match_numpy_on_random_predictions(num_classes):
    rng = np.random.default_rng(num_classes)
    metric = SegmentationMetrics(num_classes, ignore_index=255)
    preds, targets = [], []
    for h, w in [(17, 23), (40, 31), (8, 8)]:  # masks of different original sizes
        t = rng.integers(0, num_classes, size=(h, w))
        t[rng.random((h, w)) < 0.1] = 255
        p = rng.integers(0, num_classes, size=(h, w))
        preds.append(p)
        targets.append(t)
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    ref = _numpy_reference(preds, targets, num_classes, 255)
    got = metric.compute()
    np.testing.assert_allclose(_as_array(got["per_class"], "iou"), ref["iou"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(_as_array(got["per_class"], "precision"), ref["precision"], atol=1e-12)
    np.testing.assert_allclose(_as_array(got["per_class"], "recall"), ref["recall"], atol=1e-12)
    np.testing.assert_allclose(_as_array(got["per_class"], "acc"), ref["recall"], atol=1e-12)
    np.testing.assert_allclose(_as_array(got["per_class"], "dice"), ref["dice"], atol=1e-12)
    np.testing.assert_allclose(_as_array(got["per_class"], "f1"), ref["dice"], atol=1e-12)
    assert got["mIoU"] == pytest.approx(ref["miou"], abs=1e-12)
    assert got["overall_accuracy"] == pytest.approx(ref["oacc"], abs=1e-12)
    assert got["num_pixels"] == sum(int((t != 255).sum()) for t in targets)


def test_logits_are_argmaxed_and_absent_class_is_excluded():
    target = torch.tensor([[0, 0], [1, 255]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = 1.0  # predicts class 0 everywhere; class 2 never appears anywhere
    metric = SegmentationMetrics(3)
    metric.update(logits, target[None])
    s = metric.compute()
    assert s["per_class"][2]["iou"] is None
    assert s["per_class"][0]["iou"] == pytest.approx(2 / 3)
    assert s["per_class"][1]["iou"] == 0.0
    assert s["mIoU"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert s["overall_accuracy"] == pytest.approx(2 / 3)


def test_confusion_matrix_layout_rows_are_targets():
    cm = confusion_matrix(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 0]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]
    assert scores_from_confusion(cm, ["bg", "fg"])["per_class"][1]["class_name"] == "fg"
