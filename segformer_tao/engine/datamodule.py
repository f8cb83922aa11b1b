"""The Lightning DataModule: train loader (sharded across DDP ranks) and an unpadded, sharded val loader."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler, Subset
from torch.utils.data.dataloader import default_collate

from segformer_tao.engine.resumable import ResumableDataLoader


def collate_eval(samples: list[dict]) -> dict:
    """Stack ``image`` (all img_size); keep ``mask`` (original sizes differ), ``orig_size``, ``path`` as lists."""
    out: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
    for key in samples[0]:
        if key != "image":
            out[key] = [s[key] for s in samples]
    return out


class SegDataModule(pl.LightningDataModule):
    """Builds loaders from ``cfg.dataset.segment``; datasets can be injected (tests, benchmarks).

    DDP: the train split is always sharded (``DistributedSampler``, seeded with ``train.seed``); validation
    gives rank r the samples r, r+world, ... without padding, so the confusion matrix summed over ranks counts
    every image exactly once and every rank reports the same val_miou.
    """

    def __init__(self, cfg: DictConfig, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None):
        super().__init__()
        self.cfg = cfg
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None or self.val_dataset is None:
            from segformer_tao.data import UnetSegmentationDataset

            if self.train_dataset is None:
                self.train_dataset = UnetSegmentationDataset(self.cfg, "train", "train")
            if self.val_dataset is None:
                self.val_dataset = UnetSegmentationDataset(self.cfg, "val", "eval")

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader_kwargs(self) -> dict:
        workers = int(self.cfg.dataset.segment.workers)
        # Fresh workers each epoch take their seeds from the global RNG, which checkpoints restore (exact resume).
        return {"num_workers": workers, "persistent_workers": False, "pin_memory": torch.cuda.is_available()}

    def train_dataloader(self) -> DataLoader:
        seg = self.cfg.dataset.segment
        rank, world = self._rank_world()
        if world > 1:
            seed = int(self.cfg.train.seed) if int(self.cfg.train.seed) >= 0 else 0
            sampler = DistributedSampler(self.train_dataset, num_replicas=world, rank=rank, shuffle=bool(seg.shuffle),
                                         seed=seed)
        elif seg.shuffle:
            sampler = RandomSampler(self.train_dataset)
        else:
            sampler = SequentialSampler(self.train_dataset)
        # Resumable mid-epoch (a preemption checkpoint continues at its step with the same samples and RNG draws).
        return ResumableDataLoader(self.train_dataset, batch_size=int(seg.batch_size), sampler=sampler,
                                   collate_fn=default_collate, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        dataset = self.val_dataset
        if world > 1:
            dataset = Subset(dataset, list(range(rank, len(dataset), world)))
        return DataLoader(dataset, batch_size=int(self.cfg.dataset.segment.batch_size), shuffle=False,
                          collate_fn=collate_eval, **self._loader_kwargs())
