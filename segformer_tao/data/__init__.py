"""unet-format segmentation data (local or s3://): dataset, loaders, transforms, checks, demo data, converters.

The loaders need torch; they are imported on first use so that torch-free tools (``segformer dataset formats``,
``convert``, ``demo``) start in a fraction of a second.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"UnetSegmentationDataset": "dataset", "build_dataloader": "dataset", "collate_eval": "loader",
         "preprocess_image": "transforms"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"segformer_tao.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'segformer_tao.data' has no attribute {name!r}")
