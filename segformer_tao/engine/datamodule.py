"""The Lightning DataModule: the train and val loaders of :mod:`segformer_tao.data.loader` for this rank."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from segformer_tao.data.loader import eval_loader, train_loader
from segformer_tao.engine.resumable import resumable


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

    def train_dataloader(self) -> DataLoader:
        # Resumable mid-epoch: a preemption checkpoint continues at its step with the same samples and RNG draws.
        return resumable(train_loader(self.cfg, self.train_dataset, *self._rank_world()))

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.cfg, self.val_dataset, int(self.cfg.dataset.segment.batch_size), *self._rank_world())
