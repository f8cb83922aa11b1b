"""segformer_tao.model: timm-registered backbones, the SegFormer head, ``build_model``, weight loading."""

from segformer_tao.model.segformer import SegFormer, build_model, create_backbone

__all__ = ["SegFormer", "build_model", "create_backbone"]
