"""The one interface every way of running the network implements, and the post-processing they share.

``Runtime.predict`` takes normalized float32 NCHW images at img_size and returns logits (N, C, h, w) on the CPU
(h, w = img_size / 4 for our models). ``Runtime.meta`` is the model file's
:class:`~segformer_tao.model.meta.ModelMeta` (after :func:`segformer_tao.deploy.runtime.open_for_action`, what the
action decided to run with). Post-processing (resize to original size, argmax, flip TTA, sliding window) is written
once here and shared by evaluate, inference and quantize's report.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from segformer_tao.model.meta import ModelMeta


class Runtime(ABC):
    """A loaded model: ``meta`` (what its file says about it), ``path`` (the file), ``predict``."""

    name = "runtime"
    meta: ModelMeta
    path: str

    @property
    def label(self) -> str:
        """The runtime and, where it has a choice, its precision (e.g. "openvino bf16"), for logs and reports."""
        return self.name

    def size_problem(self, size: int) -> str | None:
        """Why this model cannot run at ``size`` x ``size`` pixels (None: it can). A file fixed to one size says so
        through ``meta.input_size`` instead."""
        return None

    @abstractmethod
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float32 normalized -> (N, C, h, w) float32 logits on the CPU."""


def predict_logits(runtime: Runtime, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """Logits for a batch; with ``flip_tta`` the mean of the image's and its horizontal mirror's softmax."""
    logits = runtime.predict(images)
    if not flip_tta:
        return logits
    flipped = runtime.predict(images.flip(-1)).flip(-1)
    return (logits.softmax(1) + flipped.softmax(1)) / 2  # probabilities: argmax is what callers use


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) bilinear (align_corners=False), the same resize training used."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def sliding_window_logits(runtime: Runtime, image: np.ndarray, preprocess: Callable[[np.ndarray], torch.Tensor],
                          window: int, flip_tta: bool = False, overlap: float = 1 / 3) -> torch.Tensor:
    """Logits (1, C, H, W) for an RGB uint8 image larger than ``window`` px, from overlapping window crops.

    Each crop (``window`` x ``window``, or the whole side when smaller) goes through ``preprocess`` (the shared
    resize + normalize), its logits are resized back to the crop and averaged where crops overlap.
    """
    h, w = image.shape[:2]
    ch, cw = min(window, h), min(window, w)
    stride = max(1, int(window * (1 - overlap)))
    ys = _starts(h, ch, stride)
    xs = _starts(w, cw, stride)
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w)
    for y in ys:
        for x in xs:
            crop = np.ascontiguousarray(image[y : y + ch, x : x + cw])
            logits = resize_logits(predict_logits(runtime, preprocess(crop)[None], flip_tta), (ch, cw))
            if total is None:
                total = torch.zeros(1, logits.shape[1], h, w)
            total[:, :, y : y + ch, x : x + cw] += logits
            count[:, :, y : y + ch, x : x + cw] += 1
    return total / count


def _starts(length: int, crop: int, stride: int) -> list[int]:
    n = max(1, math.ceil((length - crop) / stride) + 1)
    return sorted({min(i * stride, length - crop) for i in range(n)})
