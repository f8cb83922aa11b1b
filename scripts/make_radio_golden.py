"""Write golden outputs of TAO's own C-RADIO SegFormer for tests/model/test_radio_golden.py, and TAO's key list.

TAO's code is not part of this repository: pass a checkout of NVIDIA/tao_pytorch_backend at the pinned commit,
e.g. ``git --git-dir=<mirror> archive 3a8a971 nvidia_tao_pytorch/cv/backbone_v2 nvidia_tao_pytorch/cv/segformer
nvidia_tao_pytorch/cv/deformable_detr/model/ops | tar -x -C /tmp/tao_src``. TAO's RADIO files import ``einops``
(not a dependency of ours): put it on the path for this script only (``pip install --target /tmp/einops einops``,
``--extra-path /tmp/einops``). Stand-ins replace only what a CPU forward pass does not use: the backbone registry
and the other backbone families' packages, logging and the rank helper, the pretrained-weights loader and the
loader of the deformable-attention CUDA library (TAO runs its pure-PyTorch ``multi_scale_deformable_attn_pytorch``
on CPU). ``cv/backbone_v2/radio.py``, ``backbone_base.py``, ``cv/segformer/model/backbones/radio.py``,
``adapter_modules.py``, ``cv/deformable_detr/model/ops/modules.py``, ``cv/segformer/model/segformer.py`` and its
head run as TAO ships them.

1. Key list (``radio_keys.json``): each of the four names built exactly as TAO's SegFormer builds it
   (``SegFormer(model=<name>, img_size=512)``) on the meta device; every state-dict key and shape.
2. Golden outputs (``<variant>.npz``): TAO's RADIOAdapter is built at a small width so the files stay small: a
   ViT of width 64, 4 blocks, 4 heads (an extra entry in TAO's own ``radio_model_cfg`` table, in the v2 form and
   in the v3 form with LayerScale, 4 timm registers and ``no_embed_class``), ``cpe_max_size=128`` (an 8 x 8
   position grid, so the eval-mode CPE resize-and-crop runs), one block per interaction, everything else as in
   TAO's ``c_radio_*`` functions (4 summary tokens + 4 registers, conv_inplane 56, 16 deformable heads, ratios
   0.5 / 0.25, summary fusion on). It sits in TAO's ``SegFormer`` with its head, eval mode, at a non-square
   64 x 96 input; every tensor comes from the recipe (``tests/model/golden_recipe.py``) and the four backbone
   maps and the logits are saved, and the tokens of the patch generator in training mode (four calls after
   ``torch.manual_seed(train_rng_seed)``: random position crops and position dropout).

Usage: PYTHONPATH=. python scripts/make_radio_golden.py --tao-src /tmp/tao_src --extra-path /tmp/einops
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import types

import numpy as np
import timm
import torch

TAO_REPO = "NVIDIA/tao_pytorch_backend"
NAMES = ("c_radio_v2_vit_base_patch16_224", "c_radio_v2_vit_large_patch16_224", "c_radio_v2_vit_huge_patch16_224",
         "c_radio_v3_vit_large_patch16_reg4_dinov2")
EMBED = {"c_radio_v2_vit_base_patch16_224": 768, "c_radio_v2_vit_large_patch16_224": 1024,
         "c_radio_v2_vit_huge_patch16_224": 1280, "c_radio_v3_vit_large_patch16_reg4_dinov2": 1024}
TINY = {  # golden variant -> (the TAO name it stands for, the extra radio_model_cfg entry)
    "c_radio_v2_tiny": ("c_radio_v2_vit_base_patch16_224",
                        dict(img_size=224, patch_size=16, embed_dim=64, depth=4, num_heads=4)),
    "c_radio_v3_tiny": ("c_radio_v3_vit_large_patch16_reg4_dinov2",
                        dict(img_size=224, patch_size=16, embed_dim=64, depth=4, num_heads=4, init_values=1e-5,
                             reg_tokens=4, no_embed_class=True)),
}
RULES = [
    {"match": r"running_var$", "dist": "uniform", "low": 0.5, "high": 1.5},
    {"match": r"running_mean$", "dist": "normal", "mean": 0.0, "std": 0.1},
    # LayerScales of order one (TAO starts them at 1e-5), so injection and every v3 block shape the output
    {"match": r"(\.gamma|\.ls\d?\.gamma)$", "dist": "uniform", "low": 0.25, "high": 0.5},
    {"match": r"(pos_embed|cls_token\.token|level_embed)$", "dist": "normal", "mean": 0.0, "std": 1.0},
    # sampling offsets of a few pixels, so deformable attention samples off the reference points
    {"match": r"sampling_offsets\.bias$", "dist": "normal", "mean": 0.0, "std": 2.0},
    {"match": r"\.weight$", "ndim": 1, "dist": "normal", "mean": 1.0, "std": 0.1},
    {"match": r"\.bias$", "dist": "normal", "mean": 0.0, "std": 0.1},
    {"match": r".", "dist": "fan_in_normal", "gain": 1.0},
]


def _package(name: str, path: str | None = None) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [path] if path else []
    sys.modules[name] = mod
    return mod


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


class _Registry:
    def register(self, obj=None):
        return obj if obj is not None else (lambda fn: fn)


def import_tao(src: str):
    """TAO's SegFormer module and its RADIO backbone module, from the checkout at ``src``."""
    import logging

    root = os.path.join(src, "nvidia_tao_pytorch")
    for name in ("", ".cv", ".cv.segformer", ".cv.segformer.model", ".cv.segformer.model.decode_heads",
                 ".cv.deformable_detr", ".cv.deformable_detr.model", ".cv.deformable_detr.model.ops",
                 ".cv.backbone_v2.nn"):
        _package("nvidia_tao_pytorch" + name, os.path.join(root, *name.split(".")[1:]))
    _package("nvidia_tao_pytorch.cv.backbone_v2", os.path.join(root, "cv", "backbone_v2")).BACKBONE_REGISTRY = \
        _Registry()
    for name in ("core", "core.distributed", "core.utils"):
        _package(f"nvidia_tao_pytorch.{name}")
    _module("nvidia_tao_pytorch.core.distributed.comm", get_global_rank=lambda: 0)
    _module("nvidia_tao_pytorch.core.tlt_logging", logging=logging)

    def no_pretrained(*args, **kwargs):
        raise RuntimeError("golden outputs use seeded weights, not pretrained files")

    _module("nvidia_tao_pytorch.core.utils.ptm_utils", load_pretrained_weights=no_pretrained)
    # the CUDA kernel's loader and autograd function: never called on CPU tensors
    _module("nvidia_tao_pytorch.cv.deformable_detr.model.ops.functions", MSDeformAttnFunction=None,
            load_ops=lambda ops_dir, lib_name: None)
    backbones = _package("nvidia_tao_pytorch.cv.segformer.model.backbones",
                         os.path.join(root, "cv", "segformer", "model", "backbones"))
    radio = importlib.import_module("nvidia_tao_pytorch.cv.segformer.model.backbones.radio")
    backbones.cradio_vit_adapter_model_dict = {n: getattr(radio, n) for n in NAMES}
    for other in ("mit_model_dict", "vit_adapter_model_dict", "fan_model_dict"):
        setattr(backbones, other, {})
    segformer = importlib.import_module("nvidia_tao_pytorch.cv.segformer.model.segformer")
    return segformer, radio, importlib.import_module("nvidia_tao_pytorch.cv.backbone_v2.radio")


def key_list(segformer) -> dict:
    """Each TAO name as TAO's SegFormer builds it (img_size 512), on the meta device: key -> shape."""
    out = {}
    for name in NAMES:
        e = EMBED[name]
        with torch.device("meta"):
            model = segformer.SegFormer(input_nc=3, output_nc=3, embed_dim=256, model=name, img_size=512,
                                        in_channels=[e] * 4, feature_strides=[4, 8, 16, 32], in_index=[0, 1, 2, 3])
        out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
        print(name, len(out[name]), "keys", sum(v.numel() for v in model.parameters()) / 1e6, "M parameters")
    return out


def main() -> None:
    from tests.model.golden_recipe import seeded_input, seeded_state_dict

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tao-src", required=True)
    ap.add_argument("--tao-git", help="its git dir, to record the exact commit hash")
    ap.add_argument("--commit", default="3a8a971")
    ap.add_argument("--extra-path", action="append", default=[], help="where einops is installed")
    ap.add_argument("--out", default="tests/model/golden/radio")
    args = ap.parse_args()
    sys.path[:0] = args.extra_path
    commit = args.commit
    if args.tao_git:
        commit = subprocess.check_output(["git", "--git-dir", args.tao_git, "rev-parse", args.commit],
                                         text=True).strip()
    segformer, radio, radio_base = import_tao(args.tao_src)
    os.makedirs(args.out, exist_ok=True)
    keys = {"source": f"github.com/{TAO_REPO} @ {commit}: cv/segformer/model/segformer.py SegFormer(model=<name>, "
                      "img_size=512), state_dict() on the meta device", "tao_commit": commit,
            "torch": torch.__version__, "timm": timm.__version__, "models": key_list(segformer)}
    with open(os.path.join(args.out, "radio_keys.json"), "w") as f:
        json.dump(keys, f, separators=(",", ":"))
        f.write("\n")

    recipe = {"source": f"github.com/{TAO_REPO} @ {commit}: cv/segformer/model/segformer.py SegFormer around "
                        "cv/segformer/model/backbones/radio.py RADIOAdapter (cv/backbone_v2/radio.py RADIO, "
                        "adapter_modules.py, deformable_detr ops MSDeformAttn on CPU) at a small width",
              "tao_commit": commit, "torch": torch.__version__, "timm": timm.__version__, "dtype": "float32",
              "seed": 3036, "input_seed": 11, "train_rng_seed": 5, "batch": 2, "img_size": [64, 96],
              "cpe_max_size": 128,
              "interaction_indexes": [[0, 0], [1, 1], [2, 2], [3, 3]], "decoder_embed_dim": 32, "num_classes": 3,
              "rules": RULES, "variants": {}}
    x = seeded_input(recipe)
    for seed, (variant, (stands_for, vit_cfg)) in enumerate(TINY.items(), start=recipe["seed"]):
        radio_base.radio_model_cfg[variant] = vit_cfg

        def tiny_adapter(return_idx, resolution, freeze_at, activation_checkpoint, variant=variant):
            return radio.RADIOAdapter(
                resolution=tuple(recipe["img_size"]), backbone=variant, summary_idxs=[0, 1, 2], window_size=None,
                num_teacher=4, cpe_max_size=recipe["cpe_max_size"], register_multiple=8, drop_path_rate=0,
                conv_inplane=56, n_points=4, deform_num_heads=16, init_values=1e-5,
                interaction_indexes=recipe["interaction_indexes"], cffn_ratio=0.25, deform_ratio=0.5,
                add_summary=True, return_idx=return_idx, freeze_at=freeze_at,
                activation_checkpoint=activation_checkpoint)

        segformer.cradio_vit_adapter_model_dict[stands_for] = tiny_adapter
        torch.manual_seed(0)
        d = vit_cfg["embed_dim"]
        model = segformer.SegFormer(input_nc=3, output_nc=recipe["num_classes"], embed_dim=recipe["decoder_embed_dim"],
                                    model=stands_for, img_size=recipe["img_size"][0], in_channels=[d] * 4,
                                    feature_strides=[4, 8, 16, 32], in_index=[0, 1, 2, 3]).eval()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(seeded_state_dict({**recipe, "seed": seed}, shapes), strict=True)
        with torch.no_grad():
            feats = model.backbone.forward_feature_pyramid(x)
            logits = model.decoder(feats)
        arrays = {f"feat{i}": f.numpy() for i, f in enumerate(feats)}
        arrays["logits"] = logits.numpy()
        # training-mode patch generator: random position crop per image and position dropout, from the global RNG
        generator = model.backbone.radio.radio.model.patch_generator.train()
        torch.manual_seed(recipe["train_rng_seed"])
        with torch.no_grad():
            arrays["train_tokens"] = torch.cat([generator(x) for _ in range(4)]).numpy()
        generator.eval()
        np.savez_compressed(os.path.join(args.out, f"{variant}.npz"), **arrays)
        recipe["variants"][variant] = {"seed": seed, "stands_for": stands_for, "vit": vit_cfg,
                                       "file": f"{variant}.npz", "state_dict": shapes}
        print(variant, {k: (tuple(v.shape), float(np.abs(v).max())) for k, v in arrays.items()})
    with open(os.path.join(args.out, "recipe.json"), "w") as f:
        json.dump(recipe, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
