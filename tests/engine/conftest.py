"""Tiny stand-ins for engine tests: a small conv segmenter and random, learnable datasets."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segformer_tao.config import compose_config


class TinySegmenter(nn.Module):
    """backbone (stride 4) + decode head: (N, 3, H, W) -> (N, C, H/4, W/4), like the real model."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.decode_head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x):
        return self.decode_head(self.backbone(x))


class RandomSegDataset(Dataset):
    """Images whose class is where channel 0 > 0; eval masks at a different original size than img_size."""

    def __init__(self, n: int, size: int = 32, mode: str = "train", seed: int = 0, orig=(40, 28)):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.mode, self.orig = mode, orig

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        mask = (img[0] > 0).long()
        if self.mode == "train":
            # A little randomness, drawn from the global RNG, so resume must restore RNG state exactly.
            if torch.rand(()) < 0.5:
                img, mask = img.flip(-1), mask.flip(-1)
            return {"image": img, "mask": mask}
        big = torch.nn.functional.interpolate(mask[None, None].float(), size=self.orig, mode="nearest")[0, 0].long()
        return {"image": img, "mask": big, "orig_size": self.orig, "path": f"img_{i}.png"}


def tiny_cfg(tmp_path, *overrides: str):
    return compose_config("train", [
        f"dataset.segment.root_dir={tmp_path}", "dataset.segment.img_size=32", "dataset.segment.batch_size=4",
        "dataset.segment.workers=0", "model.backbone.type=mit_b0", "train.num_epochs=2", "train.optim.lr=0.01",
        f"results_dir={tmp_path}/results", *overrides,
    ])


@pytest.fixture
def tiny():
    return TinySegmenter, RandomSegDataset, tiny_cfg
