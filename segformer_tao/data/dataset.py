"""TAO ``unet``-layout segmentation dataset (local or s3://) and its data loaders.

Layout: ``root_dir/images/<split>/*.{png,jpg,jpeg,bmp,tif,tiff}`` and ``root_dir/masks/<split>/*.{png,...}``;
an image and its mask share a file stem (``0001.jpg`` <-> ``0001.png``), never a sort position.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segformer_tao import io
from segformer_tao.data import storage
from segformer_tao.data.decode import MaskDecoder, decode_image
from segformer_tao.data.transforms import TrainPipeline, preprocess_image
from segformer_tao.errors import UserError

MODES = ("train", "eval", "predict")
_MAX_LISTED = 10


@dataclass(frozen=True)
class Sample:
    """One dataset entry: the image path/URL and (except in predict mode) its mask."""

    stem: str
    image: str
    mask: str | None


def split_name(cfg: Any, split: str) -> str:
    """Folder name of a split role: 'train'|'val'|'test'|'predict' resolve through dataset.segment.*_split keys.

    Callers pass the role, never the folder: mapping a folder name again would send the default
    ``predict_split: test`` to ``test_split``'s folder (``val``). Any other string is taken as a folder name.
    """
    seg = cfg.dataset.segment
    keys = {"train": seg.train_split, "val": seg.validation_split, "validation": seg.validation_split,
            "test": seg.test_split, "predict": seg.predict_split}
    return str(keys.get(split, split))


def check_root(root: Any) -> str:
    """Validate dataset.segment.root_dir (set, exists, not empty) and return it as a string without trailing /."""
    if root in (None, "", "???"):
        raise UserError("dataset.segment.root_dir is not set. Point it at a dataset in unet layout "
                        "(root/images/<split>/, root/masks/<split>/), e.g. dataset.segment.root_dir=/data/seg "
                        "(or make one with `segformer dataset demo ./demo`).")
    root = str(root).rstrip("/")
    if not io.is_remote(root):
        root = os.path.expanduser(root)
        if not os.path.isdir(root):
            raise UserError(f"dataset.segment.root_dir='{root}' does not exist or is not a folder. Check the path.")
        if not os.listdir(root):
            raise UserError(f"dataset.segment.root_dir='{root}' is empty: expected images/<split>/ and "
                            "masks/<split>/ folders inside (unet layout).")
    elif not storage.is_dir(root):
        raise UserError(f"dataset.segment.root_dir='{root}' is empty or does not exist: expected images/<split>/ "
                        "and masks/<split>/ under this prefix (unet layout).")
    return root


def _list_split(root: str, kind: str, split: str, exts: tuple[str, ...]) -> dict[str, str]:
    folder = f"{root}/{kind}/{split}"
    try:
        files = storage.list_files(folder, exts)
    except FileNotFoundError as e:
        raise UserError(f"Split folder '{folder}' does not exist (split '{split}' of dataset.segment.root_dir="
                        f"'{root}'). Create it or set the split name key (dataset.segment.train_split / "
                        "validation_split / test_split / predict_split).") from e
    if not files:
        raise UserError(f"Split folder '{folder}' holds no {'/'.join(e.lstrip('.') for e in exts)} files. Add "
                        "data or point the split key at another folder.")
    return files


def index_split(root: str, split: str, with_masks: bool) -> list[Sample]:
    """List a split once and pair images with masks by stem; unpaired files -> UserError listing up to 10."""
    samples, unpaired = pair_split(root, split, with_masks)
    if unpaired is not None:
        raise unpaired
    return samples


def pair_split(root: str, split: str, with_masks: bool) -> tuple[list[Sample], UserError | None]:
    """(the pairs matched by file stem, an error naming the unpaired files or None)."""
    images = _list_split(root, "images", split, storage.IMAGE_EXTS)
    if not with_masks:
        return [Sample(stem, path, None) for stem, path in sorted(images.items())], None
    masks = _list_split(root, "masks", split, storage.MASK_EXTS)
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    problem = None
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            names = [os.path.basename(images[s]) for s in lonely_images[:_MAX_LISTED]]
            parts.append(f"{len(lonely_images)} image(s) without a mask in masks/{split}: {', '.join(names)}")
        if lonely_masks:
            names = [os.path.basename(masks[s]) for s in lonely_masks[:_MAX_LISTED]]
            parts.append(f"{len(lonely_masks)} mask(s) without an image in images/{split}: {', '.join(names)}")
        problem = UserError(f"Unpaired files in split '{split}' of '{root}' (pairs are matched by file stem): "
                            f"{'; '.join(parts)}. Add the missing files or remove the extra ones.")
    return [Sample(stem, images[stem], masks[stem]) for stem in sorted(set(images) & set(masks))], problem


def mask_decoder(cfg: Any) -> MaskDecoder:
    """The MaskDecoder for dataset.segment (num_classes, ignore_index, label_transform, palette)."""
    seg = cfg.dataset.segment
    palette = [dict(p) for p in seg.palette] if seg.get("palette") else None
    return MaskDecoder(int(seg.num_classes), int(seg.get("ignore_index", 255)), seg.label_transform, palette,
                       seg.get("max_image_pixels"))


class UnetSegmentationDataset(Dataset):
    """unet-layout dataset; items are dicts.

    * train: ``image`` float32 (3,S,S) normalised and augmented, ``mask`` int64 (S,S), ``path``.
    * eval: ``image`` (3,S,S), ``mask`` int64 at the image's original resolution, ``orig_size`` (H, W), ``path``.
    * predict: ``image``, ``orig_size``, ``path`` (images only).

    S is dataset.segment.img_size; mask values are class ids or dataset.segment.ignore_index.
    """

    def __init__(self, cfg: Any, split: str, mode: str = "train") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        seg = cfg.dataset.segment
        self.mode = mode
        self.root = check_root(seg.root_dir)
        self.split = split_name(cfg, split)
        self.samples = index_split(self.root, self.split, with_masks=mode != "predict")
        self.img_size = int(seg.img_size)
        self.mean, self.std = list(seg.augmentation.mean), list(seg.augmentation.std)
        self.decode_mask = mask_decoder(cfg)
        self.train_pipeline = (TrainPipeline(seg.augmentation, self.img_size, int(seg.get("ignore_index", 255)))
                               if mode == "train" else None)
        cache_dir = seg.get("cache_dir")
        self._local = self._cache(cache_dir) if cache_dir and io.is_remote(self.root) else None

    def _cache(self, cache_dir: str) -> list[Sample]:
        """Download the split once into cache_dir (concurrently, only missing files); samples with local paths."""
        urls = [s.image for s in self.samples] + [s.mask for s in self.samples if s.mask]
        local = dict(zip(urls, storage.cache_files(urls, cache_dir)))
        return [Sample(s.stem, local[s.image], local[s.mask] if s.mask else None) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = (self._local or self.samples)[index]
        name = self.samples[index].image
        img = decode_image(storage.read_bytes(sample.image), name, self.decode_mask.max_pixels)
        if self.mode == "predict":
            return {"image": preprocess_image(img, self.img_size, self.mean, self.std),
                    "orig_size": tuple(img.shape[:2]), "path": name}
        mask = self.decode_mask(storage.read_bytes(sample.mask), self.samples[index].mask)
        if mask.shape != img.shape[:2]:
            raise UserError(f"Image '{name}' is {img.shape[1]}x{img.shape[0]} (WxH) but its mask "
                            f"'{self.samples[index].mask}' is {mask.shape[1]}x{mask.shape[0]}. Masks must match "
                            "their image's size.")
        if self.mode == "train":
            image, target = self.train_pipeline(img, mask)
            return {"image": image, "mask": target, "path": name}
        return {"image": preprocess_image(img, self.img_size, self.mean, self.std),
                "mask": torch.from_numpy(mask.astype(np.int64)), "orig_size": tuple(img.shape[:2]), "path": name}


def build_dataloader(cfg: Any, split: str, mode: str, *, batch_size: int | None = None) -> DataLoader:
    """The loader the actions use over :class:`UnetSegmentationDataset` for ``split`` in ``mode``: training's
    (:func:`segformer_tao.data.loader.train_loader`) in train mode, evaluation's otherwise (``batch_size`` default
    dataset.segment.batch_size)."""
    from segformer_tao.data.loader import eval_loader, train_loader

    dataset = UnetSegmentationDataset(cfg, split, mode)
    if mode == "train":
        return train_loader(cfg, dataset)
    return eval_loader(cfg, dataset, int(batch_size or cfg.dataset.segment.batch_size))
