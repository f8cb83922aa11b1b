"""SegFormer = timm-registered backbone + all-MLP head, and ``build_model(cfg)`` from the experiment spec."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import timm
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from segformer_tao.errors import UserError
from segformer_tao.model.backbones import BACKBONES
from segformer_tao.model.backbones.vit import VIT_ARCHS, img_size_problem
from segformer_tao.model.head import SegFormerHead

__all__ = ["SegFormer", "build_model", "create_backbone"]

log = logging.getLogger(__name__)


class SegFormer(nn.Module):
    """Backbone + decode head.

    forward(x: float32 (N, 3, H, W), normalized) -> logits (N, num_classes, H/4, W/4).
    ``in_index`` picks which backbone outputs feed the head (finest first).
    """

    def __init__(self, backbone: nn.Module, decode_head: SegFormerHead,
                 in_index: Sequence[int] = (0, 1, 2, 3), backbone_name: str = "",
                 freeze_backbone: bool = False):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.in_index = list(in_index)
        self.backbone_name = backbone_name
        self.freeze_backbone = freeze_backbone
        # ViT-Adapters freeze only their ViT (TAO's meaning); the adapter and head keep training
        self._freeze_whole_backbone = freeze_backbone and not hasattr(backbone, "freeze_vit")
        if self._freeze_whole_backbone:
            self.backbone.requires_grad_(False)
        elif freeze_backbone:
            self.backbone.freeze_vit()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return self.decode_head([feats[i] for i in self.in_index])

    def train(self, mode: bool = True) -> SegFormer:
        super().train(mode)
        if self._freeze_whole_backbone:
            self.backbone.eval()  # a frozen backbone keeps dropout/stochastic depth/BN statistics off
        return self

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a supported backbone by name (``mit_b*``, ``fan_*_hybrid``, TAO's ``vit_*``); unknown -> UserError."""
    if name not in BACKBONES:
        raise UserError(
            f"model.backbone.type='{name}' is not supported. Choose one of: {', '.join(BACKBONES)}."
        )
    return timm.create_model(name, **kwargs)


def _get(cfg: DictConfig, key: str):
    """``key`` from the config, or the schema's default where a partial config (a test, an old checkpoint) lacks it."""
    from segformer_tao.config.provenance import default_of

    value = OmegaConf.select(cfg, key, default=None)
    value = default_of(key) if value is None else value
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


# TAO's spec defaults; TAO itself silently replaces them with the backbone's values, so they only get a log line.
_TAO_DEFAULTS = {"in_channels": [64, 128, 320, 512], "feature_strides": [4, 8, 16, 32]}


def _check_head_spec(cfg: DictConfig, backbone: nn.Module, name: str, in_index: list[int]) -> None:
    """Warn when TAO's in_channels/feature_strides keys disagree with the backbone (we use the backbone's)."""
    actual = {"in_channels": [backbone.out_channels[i] for i in in_index],
              "feature_strides": [backbone.out_strides[i] for i in in_index]}
    for key, value in actual.items():
        spec = _get(cfg, f"model.decode_head.{key}")
        if spec is None or list(spec) == value:
            continue
        msg = (f"model.decode_head.{key}={list(spec)} does not match backbone {name} ({value}); "
               "using the backbone's values.")
        if list(spec) == _TAO_DEFAULTS[key]:  # TAO's default, left as is: nothing the user needs to hear about
            log.debug(msg)
        else:
            warnings.warn(msg, stacklevel=3)


def build_model(cfg: DictConfig, *, load_weights: bool = True) -> SegFormer:
    """Build SegFormer from the experiment config.

    Reads ``model.backbone.{type,freeze_backbone,pretrained_backbone_path,feat_downsample}``,
    ``model.decode_head.{in_index,align_corners,decoder_params.embed_dim}`` (``in_channels`` and
    ``feature_strides`` are derived from the backbone), ``dataset.segment.num_classes`` and, when
    ``load_weights``, ``train.pretrained_model_path`` (full model) then the backbone path. Pass
    ``load_weights=False`` when the caller restores a checkpoint itself.
    """
    name = _get(cfg, "model.backbone.type")
    num_classes = _get(cfg, "dataset.segment.num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"dataset.segment.num_classes={num_classes!r} must be a positive integer.")
    kwargs = {}
    if name.startswith("fan_"):
        kwargs["feat_downsample"] = bool(_get(cfg, "model.backbone.feat_downsample"))
    elif _get(cfg, "model.backbone.feat_downsample"):
        warnings.warn(f"model.backbone.feat_downsample only applies to FAN backbones; ignored for {name}.",
                      stacklevel=2)
    precise = bool(_get(cfg, "model.precise_msda"))
    if name in VIT_ARCHS:
        img_size = int(_get(cfg, "dataset.segment.img_size"))
        problem = img_size_problem(name, img_size)
        if problem:
            raise UserError(f"dataset.segment.img_size={img_size} does not fit model.backbone.type={name}: "
                            f"{problem}. Set dataset.segment.img_size accordingly.")
        kwargs.update(img_size=img_size, precise_msda=precise)
    elif precise:
        warnings.warn(f"model.precise_msda only applies to ViT backbones (deformable attention); ignored for "
                      f"{name}.", stacklevel=2)
    backbone = create_backbone(name, **kwargs)

    in_index = list(_get(cfg, "model.decode_head.in_index"))
    n_out = len(backbone.out_channels)
    if len(in_index) != 4 or any(not 0 <= i < n_out for i in in_index):
        raise UserError(
            f"model.decode_head.in_index={in_index} must list 4 backbone outputs in 0..{n_out - 1} "
            "(default [0, 1, 2, 3]).")
    _check_head_spec(cfg, backbone, name, in_index)
    embed_dim = int(_get(cfg, "model.decode_head.decoder_params.embed_dim"))
    align_corners = bool(_get(cfg, "model.decode_head.align_corners"))
    if align_corners:
        # TAO's head hard-codes align_corners=False (the key reaches only its unused resize_concat path).
        warnings.warn("model.decode_head.align_corners=true: our decoder resizes with align_corners=True as the key "
                      "says, but TAO's head ignores the key and always uses False, so weights trained by TAO give "
                      "slightly different logits here; set it to false for TAO checkpoints.", stacklevel=2)
    head = SegFormerHead([backbone.out_channels[i] for i in in_index], embed_dim, num_classes,
                         align_corners=align_corners)
    freeze = bool(_get(cfg, "model.backbone.freeze_backbone"))
    model = SegFormer(backbone, head, in_index, backbone_name=name, freeze_backbone=freeze)
    if load_weights:
        _load_configured_weights(cfg, model, freeze)
    return model


def _load_configured_weights(cfg: DictConfig, model: SegFormer, freeze: bool) -> None:
    from segformer_tao.model.weights import load_pretrained

    full_path = _get(cfg, "train.pretrained_model_path")
    backbone_path = _get(cfg, "model.backbone.pretrained_backbone_path")
    if freeze and not (full_path or backbone_path):
        raise UserError(
            "model.backbone.freeze_backbone=True needs pretrained weights: set "
            "model.backbone.pretrained_backbone_path (or train.pretrained_model_path), or set "
            "model.backbone.freeze_backbone=False.")
    # Backbone first, then the full model, so a full checkpoint overrides the backbone (as in TAO).
    if backbone_path:
        log.info("%s", load_pretrained(model, backbone_path, part="backbone"))
    if full_path:
        log.info("%s", load_pretrained(model, full_path, part="full"))
