"""Cross-entropy of SegFormer's 1/4-resolution logits against full-resolution masks, upsampling fused in.

The result is the same as ``F.cross_entropy(F.interpolate(logits, mask_size, bilinear), mask)`` (HF and TAO's
loss) to float rounding, with the same gradient; only the work is arranged differently:

- the upsampled logits are kept channels-last, so the softmax runs over contiguous class vectors (PyTorch's
  ``log_softmax(dim=1)`` on NCHW memory strides by H*W per class and, on channels-last input, copies first);
- backward writes ``softmax - one_hot`` once into the saved log-probabilities instead of allocating and
  filling an NLL gradient and then a log-softmax gradient, each as large as the upsampled logits.

With 150 classes at 512x512 this is ~2x less loss time than HF's order and ~3.5x less than calling
``F.interpolate`` on our channels-last logits (bench/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class _UpsampledCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
        low = logits.float().contiguous(memory_format=torch.channels_last)
        size = tuple(mask.shape[-2:])
        up = low if tuple(low.shape[-2:]) == size else F.interpolate(low, size=size, mode="bilinear",
                                                                      align_corners=False)
        logp = torch.log_softmax(up.permute(0, 2, 3, 1), dim=-1)  # (N, H, W, C), contiguous
        del up
        valid = mask != ignore_index
        count = valid.sum().clamp_min(1)  # an all-ignored batch: loss 0, gradient 0 (masked by valid)
        target = mask.masked_fill(~valid, 0).long().unsqueeze(-1)
        loss = -(logp.gather(-1, target).squeeze(-1) * valid).sum() / count
        ctx.save_for_backward(logp, target, valid, count)
        ctx.logits_shape, ctx.logits_dtype = tuple(logits.shape), logits.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logp, target, valid, count = ctx.saved_tensors
        grad = logp.exp_()  # softmax, written over the saved log-probabilities (not needed again)
        grad.scatter_add_(-1, target, torch.full_like(target, -1, dtype=grad.dtype))
        grad.mul_((valid.unsqueeze(-1) * (grad_loss / count)).to(grad.dtype))
        grad = grad.permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        if tuple(grad.shape) != ctx.logits_shape:
            grad = torch.ops.aten.upsample_bilinear2d_backward(grad, list(grad.shape[-2:]),
                                                                list(ctx.logits_shape), False)
        return grad.to(ctx.logits_dtype), None, None


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels.

    ``logits``: (N, C, h, w), any float dtype and memory format, upsampled bilinearly (align_corners=False) to
    the mask size; ``mask``: (N, H, W) integer class ids, ``ignore_index`` pixels skipped. An all-ignored batch
    has loss 0 with zero gradient (plain cross-entropy would give NaN), without a host sync to find out.
    """
    return _UpsampledCrossEntropy.apply(logits, mask, ignore_index)
