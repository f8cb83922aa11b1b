"""Shared post-processing: flip TTA maps the mirrored prediction back onto the image before averaging."""

from __future__ import annotations

import torch

from segformer_tao.deploy.base import predict_logits


class _PixelwiseRuntime:
    """A per-pixel linear classifier (a 1x1 conv): its logits mirror exactly when the image is mirrored."""

    def __init__(self):
        self.weight = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,nchw->nohw", self.weight, images)


def test_flip_tta_of_a_mirror_equivariant_model_equals_its_plain_softmax():
    runtime = _PixelwiseRuntime()
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(1))  # not mirror-symmetric
    plain = runtime.predict(x).softmax(1)
    assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)
    assert torch.allclose(predict_logits(runtime, x, flip_tta=True), plain, atol=1e-6)
    assert torch.equal(predict_logits(runtime, x), runtime.predict(x))
