"""labels_at (resize to the original size + argmax, channel by channel with a running maximum) gives exactly the
labels of the plain path, resize_logits(...).argmax(1), including ties, at the benchmark sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segformer_tao.deploy import runtime
from segformer_tao.deploy.runtime import labels_at, resize_logits


def _logits(classes: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Smooth random logits (like a network's, at 1/4 resolution) with exact ties planted in a block."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(2, classes, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w), mode="bilinear")
    x[:, :, : h // 4, : w // 4] = 0.5  # every class equal: argmax takes the first
    x[:, -1, h // 2 :, w // 2 :] = x[:, 0, h // 2 :, w // 2 :]  # first and last tied
    return x


@pytest.mark.parametrize("classes, size", [(2, (1080, 1920)), (19, (1024, 2048)), (19, (97, 61)), (3, (32, 32))])
def test_labels_equal_the_resize_then_argmax_path(classes, size):
    logits = _logits(classes, 128, 128, seed=classes)
    old = resize_logits(logits, size).argmax(1)
    new = labels_at(logits, size)
    assert new.shape == old.shape and new.dtype == torch.uint8
    assert torch.equal(new.long(), old)
    assert len(torch.unique(old)) == classes  # every class occurs: the comparison covers all of them


def test_small_resize_budget_processes_channels_in_chunks_with_the_same_labels(monkeypatch):
    logits = _logits(19, 64, 48, seed=3)
    old = resize_logits(logits, (300, 200)).argmax(1)
    monkeypatch.setattr(runtime, "_RESIZE_CHUNK", 300 * 200 * 4)  # 4 channels at a time
    assert torch.equal(labels_at(logits, (300, 200)).long(), old)


def test_more_than_256_classes_give_int64_labels():
    logits = _logits(300, 16, 16, seed=4)
    new = labels_at(logits, (40, 24))
    assert new.dtype == torch.int64 and torch.equal(new, resize_logits(logits, (40, 24)).argmax(1))
