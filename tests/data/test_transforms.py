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
    """Training's loader draws shuffling and augmentation (workers included) from the global RNG, which the trainer
    seeds from train.seed (pl.seed_everything(seed, workers=True)) and checkpoints restore."""
    import pytorch_lightning as pl

    demo_cfg.dataset.segment.workers = 1
    demo_cfg.train.seed = 7

    def first_batch():
        pl.seed_everything(int(demo_cfg.train.seed), workers=True, verbose=False)
        batch = next(iter(build_dataloader(demo_cfg, "train", "train")))
        return batch["image"], batch["mask"], batch["path"]

    a, b = first_batch(), first_batch()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    demo_cfg.train.seed = 8
    c = first_batch()
    assert not torch.equal(a[0], c[0])


def _only(**enabled):
    """Augmentation config with every step off except those given (merged over the off state)."""
    off = {"random_flip": {"enable": False}, "random_rotate": {"enable": False},
           "random_color": {"enable": False}, "with_scale_random_crop": {"enable": False},
           "with_random_blur": False, "with_random_crop": False}
    return OmegaConf.merge(_aug(**off), enabled)


def _grid(n=15):
    """An n x n image whose channels are 16 * (row, col, 0) and a mask holding each pixel's id row * n + col
    (n <= 15 keeps the ids below the ignore index 255 that pads crops)."""
    rows, cols = np.mgrid[0:n, 0:n]
    img = np.stack([rows * 16, cols * 16, np.zeros_like(rows)], axis=2).astype(np.uint8)
    return img, (rows * n + cols).astype(np.uint8)


def _outcome(image, target, img, mask) -> str:
    """Which exact flip/turn of (img, mask) the pipeline produced; the mask must have had the same one."""
    src = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    m = torch.from_numpy(mask.astype(np.int64))
    for name, fn in [("none", lambda t: t), ("h", lambda t: t.flip(-1)), ("v", lambda t: t.flip(-2)),
                     ("hv", lambda t: t.flip(-1).flip(-2)), ("rot90", lambda t: torch.rot90(t, 1, (-2, -1)))]:
        if torch.allclose(image, fn(src), atol=1e-6):
            assert torch.equal(target, fn(m)), f"mask did not follow the image's {name}"
            return name
    raise AssertionError("output is no flip or quarter turn of the input")


def test_flips_and_rotations_happen_at_their_configured_rates():
    img, mask = _grid()
    n = 400
    flips = TrainPipeline(_only(random_flip={"enable": True, "hflip_probability": 0.3, "vflip_probability": 0.7}), 15)
    torch.manual_seed(0)
    seen = [_outcome(*flips(img, mask), img, mask) for _ in range(n)]
    hflip = sum(s in ("h", "hv") for s in seen) / n
    vflip = sum(s in ("v", "hv") for s in seen) / n
    # 3.5 binomial standard deviations (~0.08 at n=400): a broken rate fails, seeded draws do not flake
    assert abs(hflip - 0.3) < 0.08 and abs(vflip - 0.7) < 0.08, (hflip, vflip)
    turns = TrainPipeline(_only(random_rotate={"enable": True, "rotate_probability": 0.4, "angle_list": [90]}), 15)
    seen = [_outcome(*turns(img, mask), img, mask) for _ in range(n)]
    assert set(seen) <= {"none", "rot90"} and abs(seen.count("rot90") / n - 0.4) < 0.09


def test_colour_jitter_at_probability_one_changes_pixels_not_the_mask():
    img = np.random.default_rng(2).integers(30, 220, (16, 16, 3), dtype=np.uint8)
    mask = np.random.default_rng(3).integers(0, 3, (16, 16), dtype=np.uint8)
    src = torch.from_numpy(img).permute(2, 0, 1).float() / 255

    def changed_fraction(p, n):
        pipe = TrainPipeline(_only(random_color={"enable": True, "color_probability": p}), 16)
        changed = 0
        for _ in range(n):
            image, target = pipe(img, mask)
            assert torch.equal(target, torch.from_numpy(mask.astype(np.int64)))  # colour never touches the mask
            changed += not torch.allclose(image, src, atol=1e-6)
        return changed / n

    torch.manual_seed(0)
    assert changed_fraction(1.0, 30) == 1.0
    assert abs(changed_fraction(0.5, 200) - 0.5) < 0.13


def _check_follows(image, target, n=15) -> bool:
    """Assert the mask is the nearest-exact resampling of the same geometry as the bilinear image; return
    whether the geometry differs from the identity (a crop or scale happened)."""
    ids = target
    valid = ids != 255  # padding of the scale + crop step
    assert (ids[valid] < n * n).all()
    src_row, src_col = (ids // n).float(), (ids % n).float()
    # the image holds 16 * (source row, col) sampled bilinearly at the same positions: nearest-exact picks the
    # source pixel whose centre is within half a pixel of that position (+ uint8 rounding)
    img_row, img_col = image[0] * 255 / 16, image[1] * 255 / 16
    assert ((img_row - src_row).abs()[valid] <= 0.5 + 1 / 16).all()
    assert ((img_col - src_col).abs()[valid] <= 0.5 + 1 / 16).all()
    identity = torch.arange(n * n).view(n, n)
    return not torch.equal(ids, identity)


def test_crops_change_geometry_and_the_mask_follows_exactly():
    img, mask = _grid()
    torch.manual_seed(0)
    for aug in (_only(with_random_crop=True), _only(with_scale_random_crop={"enable": True, "scale_range": [1, 1.5]})):
        pipe = TrainPipeline(aug, 15)
        changed = [_check_follows(*pipe(img, mask)) for _ in range(40)]
        assert sum(changed) >= 20, sum(changed)  # most draws crop or scale (a full-size draw is possible)
