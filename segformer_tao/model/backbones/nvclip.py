"""NVCLIP SigLIP vision towers from open_clip (the optional ``nvclip`` extra: ``pip install segformer_tao[nvclip]``).

``ViT-B-16-SigLIP`` is open_clip's own config (a timm ``vit_base_patch16_siglip_224`` trunk). NVIDIA's
``ViT-H-14-SigLIP-CLIPA-224`` is not shipped with open_clip; its vision settings below are the ones TAO 7.3
registers with open_clip (patch 14, width 1280, 32 layers, head width 80, no pre-norm, 2-D sin-cos positions).
Only the vision tower is built: segmentation never runs CLIP's text tower.
"""

from __future__ import annotations

from torch import nn

from segformer_tao.errors import UserError

__all__ = ["build_vision_tower"]

_NVCLIP_H14 = dict(embed_dim=1024, vision_cfg=dict(
    image_size=224, layers=32, width=1280, head_width=80, patch_size=14, no_ln_pre=True, pool_type="avg",
    final_ln_after_pool=True, pos_embed_type="sin_cos_2d", patch_dropout=0.0))


def build_vision_tower(clip_name: str, overrides: dict) -> tuple[nn.Module, bool]:
    """open_clip's vision tower for ``clip_name`` -> (module, whether it is a timm trunk).

    ``overrides`` replace vision settings; ``layers`` keeps only the first blocks (tests shrink models this way).
    """
    try:
        import open_clip
        from open_clip.model import _build_vision_tower
    except ImportError as e:
        raise UserError(
            f"The NVCLIP backbones (model.backbone.type=vit_*_nvclip_*) need open_clip: install the extra with "
            f"`pip install 'segformer_tao[nvclip]'` (or `pip install open_clip_torch`). ({e})") from e
    cfg = _NVCLIP_H14 if clip_name == "ViT-H-14-SigLIP-CLIPA-224" else open_clip.get_model_config(clip_name)
    vision_cfg = dict(cfg["vision_cfg"])
    layers = overrides.pop("layers", None)
    vision_cfg.update(overrides)
    is_timm = bool(vision_cfg.get("timm_model_name"))
    if layers is not None and not is_timm:
        vision_cfg["layers"] = layers
    visual = _build_vision_tower(cfg["embed_dim"], vision_cfg)
    if is_timm:
        visual.trunk.patch_embed.strict_img_size = False  # positions are resized to the input in embed()
        if layers is not None:
            visual.trunk.blocks = visual.trunk.blocks[:layers]
    return visual, is_timm
