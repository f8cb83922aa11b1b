"""segformer_tao.model: timm-registered backbones, the SegFormer head, ``build_model``, weight loading, and
``meta`` (what a trained model says about itself).

The network names are imported on first use, so that reading a model's metadata (ONNX Runtime, OpenVINO and
TensorRT runs) does not import timm and the backbones.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SegFormer", "build_model", "create_backbone"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from segformer_tao.model import segformer

        return getattr(segformer, name)
    raise AttributeError(f"module 'segformer_tao.model' has no attribute {name!r}")
