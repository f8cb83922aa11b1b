"""TAO's minimax IoU loss (``train.segment.loss=mmiou``): minus the smallest soft IoU minus the mean soft IoU.

As TAO computes it (tao-pytorch 7.0.1 ``cv/segformer/utils/loss.py`` ``mmIoULoss``, logits resized to the mask
first since 6.26.3): the logits are upsampled bilinearly (align_corners=False) to the mask size and softmaxed
over classes; for every image n and class c, soft IoU = sum(p * t) / (sum(p + t - p * t) + 1e-8) over the pixels
(t the one-hot mask); the loss is ``-min over (n, c) - mean over (n, c)``. A class absent from an image has IoU 0
there (its intersection is 0), as in TAO, so it counts in the mean and sets the minimum to 0.

TAO has no ignore index here (an ignore-valued pixel cannot be one-hot encoded and fails); ours leaves
``ignore_index`` pixels out of every sum, as the cross-entropy loss does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8  # TAO's


def soft_iou(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """(N, C) soft IoU of each image's class probabilities against its mask.

    ``logits``: (N, C, h, w) at any resolution (resized to the mask's); ``mask``: (N, H, W) class ids.
    """
    if logits.shape[-2:] != mask.shape[-2:]:
        logits = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
    n, c = logits.shape[:2]
    valid = (mask != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(dim=1) * valid
    target = F.one_hot(torch.where(valid[:, 0], mask, 0).long(), c).permute(0, 3, 1, 2).float() * valid
    inter = (probs * target).reshape(n, c, -1).sum(2)
    union = (probs + target - probs * target).reshape(n, c, -1).sum(2)
    return inter / (union + EPS)


def mmiou_loss(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``-min(IoU) - mean(IoU)`` over all (image, class) pairs of the batch; a scalar in [-2, 0]."""
    iou = soft_iou(logits, mask, ignore_index)
    return -iou.min() - iou.mean()
