"""Image preprocessing shared by every runtime, and TAO's training augmentations (image + mask jointly).

Images stay uint8 (3, H, W) tensors through every geometric and colour step; they become float32 only in the
final scale + normalise. Randomness comes from torch's RNG, which the data loader seeds per worker from
train.seed, so a run is reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# One interpolation for images everywhere (train, eval, predict, export checks): uint8 bilinear with
# antialiasing has a fast SIMD path in torch and matches PIL's resize closely.
IMAGE_INTERPOLATION = v2.InterpolationMode.BILINEAR


def image_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array -> (3, H, W) uint8 tensor sharing its memory (no copy; channels-last strides)."""
    with warnings.catch_warnings():  # PIL arrays are read-only; nothing here writes into them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(img).permute(2, 0, 1)


def resize_image(img: torch.Tensor, img_size: int) -> torch.Tensor:
    """(…, 3, H, W) uint8 -> (…, 3, S, S) uint8 (bilinear, antialiased); returned as is when already S x S."""
    if tuple(img.shape[-2:]) == (img_size, img_size):
        return img
    return F.resize(img, [img_size, img_size], interpolation=IMAGE_INTERPOLATION, antialias=True)


def normalize(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (…, 3, H, W) in 0-255 -> float32 ((x / 255) - mean) / std; mean/std are in 0-1 units."""
    out = img.to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return out.sub_(m).div_(s).contiguous()


def preprocess_image(img: np.ndarray, img_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """THE preprocessing of every runtime: HxWx3 uint8 RGB -> float32 (3, S, S) resized and normalised.

    Args:
        img: RGB image, uint8 0-255, shape (H, W, 3).
        img_size: output side S in pixels.
        mean, std: per-channel statistics in 0-1 units (TAO's dataset.segment.augmentation.mean/std).
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"preprocess_image expects an HxWx3 uint8 RGB array, got {img.dtype} {img.shape}")
    return normalize(resize_image(image_tensor(img), img_size), mean, std)


class Rot90(v2.Transform):
    """Rotate image and mask by a multiple of 90 degrees (exact, no interpolation)."""

    def __init__(self, quarter_turns: int) -> None:
        super().__init__()
        self.k = quarter_turns % 4

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), self.k, dims=(-2, -1)), like=inpt)


def _resize_mask(mask: tv_tensors.Mask, size: list[int]) -> tv_tensors.Mask:
    # nearest-exact samples pixel centres like bilinear does; torchvision's mask default (legacy nearest)
    # drifts up to a pixel per resize, which accumulates over the resize/crop/scale chain
    t = mask.as_subclass(torch.Tensor)
    out = F.resize_image(t[None] if t.ndim == 2 else t, size, interpolation=v2.InterpolationMode.NEAREST_EXACT)
    return tv_tensors.wrap(out[0] if t.ndim == 2 else out, like=mask)


class Resize(v2.Resize):
    """v2.Resize whose masks are resampled with nearest-exact (aligned with the bilinear image)."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _resize_mask(inpt, list(self.size))
        return super().transform(inpt, params)


class RandomResizedCrop(v2.RandomResizedCrop):
    """v2.RandomResizedCrop with nearest-exact masks."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            crop = F.crop(inpt, params["top"], params["left"], params["height"], params["width"])
            return _resize_mask(crop, list(self.size))
        return super().transform(inpt, params)


class RandomResize(v2.RandomResize):
    """v2.RandomResize with nearest-exact masks."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _resize_mask(inpt, list(params["size"]))
        return super().transform(inpt, params)


def _to_pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.as_subclass(torch.Tensor).permute(1, 2, 0).contiguous().numpy())


def _from_pil(im: Image.Image, like: tv_tensors.Image) -> tv_tensors.Image:
    return tv_tensors.wrap(image_tensor(np.asarray(im)), like=like)


def adjust_hue_uint8(img: tv_tensors.Image, hue_factor: float) -> tv_tensors.Image:
    """Rotate hue by hue_factor (fraction of the circle, -0.5..0.5) in uint8 HSV via PIL (~10x faster than
    torchvision's float HSV round trip at 512 px)."""
    hsv = np.array(_to_pil(img).convert("HSV"))
    hsv[..., 0] += np.uint8(round(hue_factor * 256) % 256)  # uint8 wrap-around = rotation on the circle
    return _from_pil(Image.fromarray(hsv, "HSV").convert("RGB"), img)


class ColorJitter(v2.ColorJitter):
    """v2.ColorJitter (same parameters and random order) with the fast uint8 hue shift."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        out = inpt
        for fn_id in params["fn_idx"].tolist():
            if fn_id == 3 and params["hue_factor"] is not None:
                out = adjust_hue_uint8(out, params["hue_factor"])
            elif fn_id != 3:
                out = super().transform(out, dict(params, fn_idx=torch.tensor([fn_id])))
        return out


class RandomBlur(v2.Transform):
    """TAO's blur: PIL Gaussian blur of the image with a radius drawn uniformly from [0, 1) pixels."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"radius": float(torch.rand(()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image) or params["radius"] < 0.05:
            return inpt
        return _from_pil(_to_pil(inpt).filter(ImageFilter.GaussianBlur(radius=params["radius"])), inpt)


def _rotation(angle: float, ignore_index: int) -> v2.Transform:
    # TAO rotates counter-clockwise (torchvision convention); quarter turns are exact permutations
    if float(angle) % 90 == 0:
        return Rot90(int(float(angle) // 90))
    return v2.RandomRotation((float(angle), float(angle)), fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})


def train_transform(aug: Any, img_size: int, ignore_index: int = 255) -> v2.Compose:
    """TAO's augmentation chain from dataset.segment.augmentation, on (Image uint8, Mask) pairs.

    Order as in TAO: resize to S, flips, rotation, random resized crop, random scale + crop (padding the mask
    with the ignore index), Gaussian blur (sigma 0-1), colour jitter (with color_probability), normalise.
    """
    S = int(img_size)
    steps: list[v2.Transform] = [Resize([S, S], interpolation=IMAGE_INTERPOLATION, antialias=True)]
    flip = aug.random_flip
    if flip.enable:
        steps += [v2.RandomHorizontalFlip(float(flip.hflip_probability)),
                  v2.RandomVerticalFlip(float(flip.vflip_probability))]
    rot = aug.random_rotate
    if rot.enable and len(rot.angle_list) and float(rot.rotate_probability) > 0:
        choice = v2.RandomChoice([_rotation(a, ignore_index) for a in rot.angle_list])
        steps.append(v2.RandomApply([choice], p=float(rot.rotate_probability)))
    if aug.with_random_crop:
        steps.append(RandomResizedCrop([S, S], scale=(0.8, 1.0), ratio=(1.0, 1.0),
                                          interpolation=IMAGE_INTERPOLATION, antialias=True))
    scale = aug.with_scale_random_crop
    if scale.enable:
        lo, hi = (float(v) for v in scale.scale_range)
        steps += [RandomResize(round(S * lo), round(S * hi) + 1, interpolation=IMAGE_INTERPOLATION,
                                  antialias=True),
                  v2.RandomCrop([S, S], pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index})]
    if aug.with_random_blur:
        steps.append(RandomBlur())
    color = aug.random_color
    if color.enable and float(color.color_probability) > 0:
        jitter = ColorJitter(float(color.brightness), float(color.contrast), float(color.saturation),
                                float(color.hue))
        steps.append(v2.RandomApply([jitter], p=float(color.color_probability)))
    return v2.Compose(steps)


class TrainPipeline:
    """Callable (image HxWx3 uint8, mask HxW) -> (image float32 (3,S,S) normalised, mask int64 (S,S))."""

    def __init__(self, aug: Any, img_size: int, ignore_index: int = 255) -> None:
        self.joint = train_transform(aug, img_size, ignore_index)
        self.mean = list(aug.mean)
        self.std = list(aug.std)

    def __call__(self, img: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image = tv_tensors.Image(image_tensor(img))
        target = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        image, target = self.joint(image, target)
        return normalize(image.as_subclass(torch.Tensor), self.mean, self.std), target.as_subclass(torch.Tensor).long()
