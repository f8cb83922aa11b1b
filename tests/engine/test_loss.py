"""The fused upsample + cross-entropy loss against PyTorch's plain interpolate + cross_entropy (HF/TAO's loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segformer_tao.engine.loss import segmentation_loss

IGNORE = 255


def _reference(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, mask.long(), ignore_index=IGNORE)


def _loss_and_grad(fn, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, mask)
    (loss * 3.0).backward()  # a non-unit upstream gradient must be applied too
    return loss.detach(), x.grad


@pytest.mark.parametrize(
    ("low", "full", "classes", "channels_last"),
    [((16, 16), (64, 64), 7, True), ((16, 16), (64, 64), 7, False), ((13, 17), (50, 67), 3, True),
     ((24, 24), (24, 24), 5, True), ((8, 12), (32, 48), 150, False)],
)
def test_matches_interpolate_then_cross_entropy(low, full, classes, channels_last):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, classes, *low, generator=g) * 3
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    mask = torch.randint(0, classes, (2, *full), generator=g)
    mask[0, : full[0] // 3] = IGNORE  # a band of ignored pixels
    mask[1, :, -3:] = IGNORE

    ours, ours_grad = _loss_and_grad(lambda x, m: segmentation_loss(x, m, IGNORE), logits, mask)
    ref, ref_grad = _loss_and_grad(_reference, logits, mask)

    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-5, atol=1e-9)
    assert ours_grad.shape == logits.shape and ours_grad.dtype == logits.dtype


def test_bf16_logits_get_a_bf16_gradient_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 8, 8, generator=g).bfloat16()
    mask = torch.randint(0, 4, (1, 32, 32), generator=g)
    ours, ours_grad = _loss_and_grad(lambda x, m: segmentation_loss(x, m, IGNORE), logits, mask)
    ref, ref_grad = _loss_and_grad(_reference, logits, mask)
    assert ours.dtype == torch.float32 and ours_grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_grad, ref_grad)


def test_all_ignored_batch_has_zero_loss_and_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 16, 16), IGNORE), IGNORE)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_no_grad_validation_loss_works():
    logits = torch.randn(1, 3, 4, 4)
    mask = torch.randint(0, 3, (1, 16, 16))
    with torch.no_grad():
        torch.testing.assert_close(segmentation_loss(logits, mask, IGNORE), _reference(logits, mask))
