"""preprocess_image and TAO's joint augmentations."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as F

from segformer_tao.data import build_dataloader, preprocess_image
from segformer_tao.data.transforms import TrainPipeline


def test_preprocess_image_resizes_and_normalises():
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = preprocess_image(img, 16, [0.5, 0.4, 0.3], [0.2, 0.25, 0.5])
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    ref = F.resize(torch.from_numpy(img.copy()).permute(2, 0, 1), [16, 16], antialias=True).float() / 255
    ref = (ref - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1)
    assert torch.allclose(out, ref, atol=1e-5)
    same = preprocess_image(img[:16, :16].copy(), 16, [0, 0, 0], [1, 1, 1])
    assert torch.allclose(same * 255, torch.from_numpy(img[:16, :16].copy()).permute(2, 0, 1).float())


def _aug(**changes):
    aug = OmegaConf.create({
        "random_flip": {"enable": True, "hflip_probability": 0.5, "vflip_probability": 0.5},
        "random_rotate": {"enable": True, "rotate_probability": 0.5, "angle_list": [90, 180, 270]},
        "random_color": {"enable": False, "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.3,
                         "color_probability": 0.5},
        "with_scale_random_crop": {"enable": True, "scale_range": [1, 1.2]},
        "with_random_blur": False, "with_random_crop": True, "mean": [0, 0, 0], "std": [1, 1, 1]})
    return OmegaConf.merge(aug, changes)


def test_image_and_mask_stay_aligned():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 8:20] = 1
    mask[28:38, 22:39] = 2
    img = np.repeat((mask * 100)[..., None], 3, axis=2).astype(np.uint8)  # colour encodes the class
    pipe = TrainPipeline(_aug(), 32)
    torch.manual_seed(0)
    for _ in range(20):
        image, target = pipe(img, mask)
        assert image.shape == (3, 32, 32) and target.shape == (32, 32) and target.dtype == torch.int64
        # compare away from edges (resampling blurs them): pixels whose 5x5 neighbourhood has one class
        t = target.float()[None, None]
        interior = (torch.nn.functional.max_pool2d(t, 5, 1, 2) == -torch.nn.functional.max_pool2d(-t, 5, 1, 2))[0, 0]
        interior &= target != 255
        agree = (torch.round(image[0] * 255 / 100).long() == target)[interior].float().mean()
        assert interior.sum() > 300 and agree > 0.99


def test_augmentation_with_colour_and_blur_runs():
    img = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    pipe = TrainPipeline(_aug(random_color={"enable": True, "color_probability": 1.0}, with_random_blur=True,
                              random_rotate={"angle_list": [45]}, mean=[0.5] * 3, std=[0.5] * 3), 16, 255)
    image, target = pipe(img, np.zeros((24, 24), np.uint8))
    assert image.shape == (3, 16, 16) and -1.001 <= float(image.min()) and float(image.max()) <= 1.001
    assert set(target.unique().tolist()) <= {0, 255}


def test_train_loader_is_deterministic_under_seed(demo_cfg):
    demo_cfg.dataset.segment.workers = 1
    demo_cfg.train.seed = 7

    def first_batch():
        batch = next(iter(build_dataloader(demo_cfg, "train", "train")))
        return batch["image"], batch["mask"], batch["path"]

    a, b = first_batch(), first_batch()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    demo_cfg.train.seed = 8
    c = first_batch()
    assert not torch.equal(a[0], c[0])
