"""train.segment.loss=mmiou: TAO's minimax IoU loss against a per-image, per-class loop; and it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from segformer_tao.engine.datamodule import SegDataModule
from segformer_tao.engine.mmiou import mmiou_loss
from segformer_tao.engine.trainer import train_model

IGNORE = 255


def _reference(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Loops in float64 numpy: resize, softmax, then each image's and class's soft IoU over the kept pixels."""
    up = F.interpolate(logits.double(), size=mask.shape[-2:], mode="bilinear", align_corners=False).numpy()
    m = mask.numpy()
    ious = []
    for n in range(up.shape[0]):
        e = np.exp(up[n] - up[n].max(0))
        p = e / e.sum(0)
        keep = m[n] != IGNORE
        for c in range(up.shape[1]):
            pc, tc = p[c][keep], (m[n][keep] == c).astype(np.float64)
            inter, union = (pc * tc).sum(), (pc + tc - pc * tc).sum()
            ious.append(inter / (union + 1e-8))
    return -min(ious) - float(np.mean(ious))


@pytest.mark.parametrize("low,full,classes", [((4, 4), (16, 16), 3), ((5, 7), (20, 28), 4), ((8, 8), (8, 8), 2)])
def test_mmiou_equals_a_per_image_per_class_loop(low, full, classes):
    g = torch.Generator().manual_seed(sum(full) + classes)
    logits = torch.randn(2, classes, *low, generator=g) * 3
    mask = torch.randint(0, classes, (2, *full), generator=g)
    mask[0, :3] = IGNORE  # ignored pixels leave every sum
    mask[1][mask[1] == classes - 1] = 0  # a class absent from image 1: IoU 0 there, so the minimum is 0
    got = mmiou_loss(logits, mask, IGNORE)
    want = _reference(logits, mask)
    assert abs(float(got) - want) <= 1e-5
    assert want > -1.0  # min IoU is 0 (the absent class) and the mean is below 1


def test_mmiou_without_absent_classes_uses_the_minimum_and_has_a_gradient():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 2, 4, 4, generator=g, requires_grad=True)
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[:, :, 8:] = 1
    loss = mmiou_loss(logits, mask, IGNORE)
    assert abs(float(loss) - _reference(logits.detach(), mask)) <= 1e-5 and float(loss) < -0.3
    loss.backward()
    assert logits.grad.abs().max() > 0
    perfect = torch.zeros(1, 2, 16, 16)
    perfect[:, 0] = (mask == 0) * 50.0
    perfect[:, 1] = (mask == 1) * 50.0
    assert float(mmiou_loss(perfect, mask, IGNORE)) == pytest.approx(-2.0, abs=1e-5)


class HalvesDataset(Dataset):
    """Learnable at 1/4 resolution: a vertical boundary at a random column; class 1 right of it, where channel 0
    is bright (plus noise). Eval masks at the image size."""

    def __init__(self, n: int, seed: int, size: int = 32):
        g = torch.Generator().manual_seed(seed)
        cols = torch.randint(8, size - 8, (n,), generator=g)
        self.masks = (torch.arange(size)[None, None, :] >= cols[:, None, None]).long().expand(n, size, size)
        self.images = torch.randn(n, 3, size, size, generator=g) * 0.5
        self.images[:, 0] += self.masks * 2.0 - 1.0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i].clone(), "orig_size": (32, 32), "path": f"{i}.png"}


def test_mmiou_trains_as_well_as_cross_entropy(tiny, tmp_path):
    """The same tiny net and data, 6 epochs each: mmIoU's val mIoU is within 0.05 of cross-entropy's (or above)."""
    net_cls, _, make_cfg = tiny
    miou = {}
    for loss in ("ce", "mmiou"):
        cfg = make_cfg(tmp_path / loss, "train.num_epochs=6", f"train.segment.loss={loss}")
        torch.manual_seed(0)
        dm = SegDataModule(cfg, HalvesDataset(16, seed=0), HalvesDataset(8, seed=1))
        metrics = train_model(cfg, str(tmp_path / loss / "train"), net_cls(), dm)["metrics"]
        miou[loss] = metrics["val_miou"]
        assert (metrics["val_loss"] < -1.5) == (loss == "mmiou"), metrics  # the loss trained is the one asked
    assert miou["ce"] > 0.8, miou  # the task is learnable in this budget
    assert miou["mmiou"] >= miou["ce"] - 0.05, miou
