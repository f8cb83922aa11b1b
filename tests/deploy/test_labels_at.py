"""labels_at (resize to the original size, then a running maximum over the class planes) gives exactly the labels
of the path before it, resize_logits(logits[i : i + 1], size).argmax(1) per image, ties included, at the benchmark
sizes and on 1 or more threads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segformer_tao.deploy.base import labels_at, resize_logits


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
    old = _old_path(logits, size)
    new = labels_at(logits, size)
    assert new.shape == old.shape and new.dtype == torch.uint8
    assert torch.equal(new.long(), old)
    assert len(torch.unique(old)) == classes  # every class occurs: the comparison covers all of them


def _old_path(logits: torch.Tensor, size) -> torch.Tensor:
    """What evaluate and inference did per image before labels_at."""
    return torch.cat([resize_logits(logits[i : i + 1], size).argmax(1) for i in range(len(logits))])


@pytest.mark.parametrize("threads", [1, 2])
def test_same_labels_whatever_the_thread_count(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        logits = _logits(19, 97, 61, seed=3)
        assert torch.equal(labels_at(logits, (300, 200)).long(), _old_path(logits, (300, 200)))
    finally:
        torch.set_num_threads(before)


def test_more_than_256_classes_give_int64_labels():
    logits = _logits(300, 16, 16, seed=4)
    new = labels_at(logits, (40, 24))
    assert new.dtype == torch.int64 and torch.equal(new, _old_path(logits, (40, 24)))
