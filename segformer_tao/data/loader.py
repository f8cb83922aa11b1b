"""The one DataLoader builder: training, validation, evaluate, inference, calibration and bench/data.py.

Every loader of the package comes from :func:`make_loader`, so worker count, pinning, collation and seeding are
decided once. :func:`train_loader` and :func:`eval_loader` add the two sampling rules (sharded shuffled training,
unpadded sharded evaluation); :class:`ImageFiles` is the images-only dataset (calibration and inference sources).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler, Subset
from torch.utils.data.dataloader import default_collate

from segformer_tao.data import storage
from segformer_tao.data.decode import decode_image
from segformer_tao.data.transforms import preprocess_image


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``image`` (all img_size); keep every other field (masks at original sizes, sizes, paths) as lists."""
    out: dict[str, Any] = {"image": torch.stack([b["image"] for b in batch])}
    for key in batch[0]:
        if key != "image":
            out[key] = [b[key] for b in batch]
    return out


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a loader worker from torch's per-worker seed (itself from the global RNG)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, *, batch_size: int, workers: int, train: bool = False,
                sampler: torch.utils.data.Sampler | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader over ``dataset``: ``train`` collates fixed-size (image, mask) pairs, otherwise
    :func:`collate_eval`; workers are seeded from the global RNG (which checkpoints restore, so a resumed run draws
    the same augmentations), started fresh per epoch, and pin memory when CUDA is available."""
    return DataLoader(dataset, batch_size=max(1, int(batch_size)), sampler=sampler, shuffle=False,
                      num_workers=int(workers), persistent_workers=False, pin_memory=torch.cuda.is_available(),
                      drop_last=drop_last, worker_init_fn=seed_worker,
                      collate_fn=default_collate if train else collate_eval)


def train_loader(cfg: Any, dataset: Dataset, rank: int = 0, world: int = 1) -> DataLoader:
    """Training batches of dataset.segment.batch_size; sharded across ``world`` ranks (``DistributedSampler`` seeded
    with train.seed) or, in one process, shuffled by dataset.segment.shuffle."""
    seg = cfg.dataset.segment
    if world > 1:
        seed = int(cfg.train.seed) if int(cfg.train.seed) >= 0 else 0
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=bool(seg.shuffle), seed=seed)
    else:
        sampler = RandomSampler(dataset) if seg.shuffle else SequentialSampler(dataset)
    return make_loader(dataset, batch_size=int(seg.batch_size), workers=int(seg.workers), train=True,
                       sampler=sampler)


def eval_loader(cfg: Any, dataset: Dataset, batch_size: int, rank: int = 0, world: int = 1) -> DataLoader:
    """Evaluation/inference batches in dataset order; rank r of ``world`` gets samples r, r+world, ... without
    padding, so a confusion matrix summed over ranks counts every image exactly once."""
    if world > 1:
        dataset = Subset(dataset, list(range(rank, len(dataset), world)))
    return make_loader(dataset, batch_size=batch_size, workers=int(cfg.dataset.segment.workers))


class ImageFiles(Dataset):
    """Images without masks, preprocessed like every runtime's input (resize to ``img_size``, mean/std in 0-1 units).

    Items: ``image`` float32 (3, S, S), ``orig_size`` (H, W) in pixels, ``path`` (the file or URL) and ``name`` (the
    output name for it, default the file name). ``max_pixels``: larger images are refused before decoding
    (dataset.segment.max_image_pixels; None: PIL's limit).
    """

    def __init__(self, files: Sequence[str], img_size: int, mean: Sequence[float], std: Sequence[float],
                 names: Sequence[str] | None = None, max_pixels: int | None = None) -> None:
        self.files, self.max_pixels = list(files), max_pixels
        self.names = list(names) if names is not None else [str(f).rsplit("/", 1)[-1] for f in self.files]
        self.img_size, self.mean, self.std = int(img_size), list(mean), list(std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        rgb = decode_image(storage.read_bytes(path), path, self.max_pixels)
        return {"image": preprocess_image(rgb, self.img_size, self.mean, self.std), "orig_size": tuple(rgb.shape[:2]),
                "path": path, "name": self.names[index]}
