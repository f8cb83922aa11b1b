"""evaluate and validation score each mask at its own resolution (logits resized back, never the mask).

The model is replaced by a stub whose logits say "class 1 on the left half, class 2 on the right half" at any
resolution, so the reference confusion matrix is computed in numpy from the mask files alone.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from segformer_tao.config import compose_config
from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.engine.metrics import scores_from_confusion
from segformer_tao.model.meta import ModelMeta

NUM_CLASSES, IMG = 3, 32


def _halves_logits(n: int, side: int) -> torch.Tensor:
    """(n, 3, side, side) logits: class 1 on columns < side/2, class 2 on the rest (class 0 never)."""
    logits = torch.full((n, NUM_CLASSES, side, side), -10.0)
    logits[:, 1, :, : side // 2] = 10.0
    logits[:, 2, :, side // 2 :] = 10.0
    return logits


def _reference_confusion(masks: list[np.ndarray]) -> np.ndarray:
    """cm[target, pred] with pred = 1 on the left half, 2 on the right half of each mask (even widths)."""
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for mask in masks:
        w = mask.shape[1]
        pred = np.where(np.arange(w)[None, :] < w // 2, 1, 2) * np.ones_like(mask)
        cm += np.bincount(mask.ravel() * NUM_CLASSES + pred.ravel(), minlength=NUM_CLASSES**2).reshape(3, 3)
    return cm


def _dataset(tmp_path):
    """Validation masks at 48x48 and 56x40 (W x H): neither is img_size (32)."""
    root = make_demo_dataset(tmp_path / "data", num_classes=NUM_CLASSES, size=48, train=2, val=3, test=1)
    image = Image.open(root / "images" / "val" / "0000.png").resize((56, 40), Image.BILINEAR)
    image.save(root / "images" / "val" / "0000.png")
    mask = Image.open(root / "masks" / "val" / "0000.png").resize((56, 40), Image.NEAREST)
    mask.save(root / "masks" / "val" / "0000.png")
    masks = [np.asarray(Image.open(p)).astype(np.int64) for p in sorted((root / "masks" / "val").glob("*.png"))]
    assert {m.shape for m in masks} == {(48, 48), (40, 56)}
    return root, masks


class _HalvesRuntime:
    name = "stub"
    meta = ModelMeta(num_classes=NUM_CLASSES, class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3, img_size=IMG,
                     mean=[0.5] * 3, std=[0.5] * 3)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[-2:] == (IMG, IMG)
        return _halves_logits(images.shape[0], IMG // 4)


def test_metrics_are_computed_at_each_masks_own_resolution(tmp_path):
    from segformer_tao.actions.evaluate import evaluate_runtime

    root, masks = _dataset(tmp_path)
    cfg = compose_config("evaluate", [f"dataset.segment.root_dir={root}", f"dataset.segment.num_classes={NUM_CLASSES}",
                                      "dataset.segment.label_transform=None", f"dataset.segment.img_size={IMG}",
                                      "dataset.segment.workers=0", "dataset.segment.test_split=val"])
    scores = evaluate_runtime(cfg, _HalvesRuntime(), None, batch_size=2)
    expected = _reference_confusion(masks)
    assert scores["images"] == 3 and scores["num_pixels"] == 48 * 48 * 2 + 56 * 40
    np.testing.assert_array_equal(np.array(scores["confusion_matrix"]), expected)
    assert scores["mIoU"] == scores_from_confusion(torch.from_numpy(expected))["mIoU"]


class _HalvesModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _halves_logits(x.shape[0], x.shape[-1] // 4)


def test_validation_miou_is_computed_at_each_masks_own_resolution(tmp_path):
    from segformer_tao.data import build_dataloader
    from segformer_tao.engine.module import SegFormerModule

    root, masks = _dataset(tmp_path)
    cfg = compose_config("train", [f"dataset.segment.root_dir={root}", f"dataset.segment.num_classes={NUM_CLASSES}",
                                   "dataset.segment.label_transform=None", f"dataset.segment.img_size={IMG}",
                                   "dataset.segment.workers=0", "model.backbone.type=mit_b0"])
    module = SegFormerModule(cfg, _HalvesModel())
    module.on_validation_epoch_start()
    for i, batch in enumerate(build_dataloader(cfg, "val", "eval", batch_size=2)):
        module.validation_step(batch, i)
    np.testing.assert_array_equal(module.val_metrics.cm.numpy(), _reference_confusion(masks))
