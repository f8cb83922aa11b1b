"""Write golden outputs of TAO's own FAN-hybrid SegFormer for tests/model/test_fan_golden.py.

TAO's code is not part of this repository: pass a checkout of NVIDIA/tao_pytorch_backend at the pinned commit,
e.g. ``git --git-dir=<mirror> archive 3a8a971 nvidia_tao_pytorch/cv/backbone_v2 nvidia_tao_pytorch/cv/segformer
| tar -x -C /tmp/tao_src``. This script imports TAO's modules from that path; the few TAO modules they import but
do not need for a forward pass (backbone registry, logging, rank helper, checkpoint loader, the other backbones'
package) are replaced by empty stand-ins created here. Everything else (``cv/backbone_v2/fan.py``,
``convnext_utils.py``, ``backbone_base.py``, ``swin.py``, ``cv/segformer/model/segformer.py``, its FAN backbone
and head) runs as TAO ships it.

Per variant: build TAO's ``SegFormer`` (``feat_downsample=False``, eval mode), fill every state-dict tensor from
the recipe (``tests/model/golden_recipe.py``: per-key seeded generator over the sorted keys), run the recipe's
input in float32 (TAO's positional encoding is float32 only) and save the four backbone maps and the logits
(``<variant>.npz``). The recipe (``recipe.json``) also records each variant's TAO state-dict keys and shapes,
and which of TAO's ``LayerNorm2d`` modules saw a non-contiguous input (TAO's ``torch.var_mean`` branch, unbiased
variance) on this data path.

Usage: PYTHONPATH=. python scripts/make_fan_golden.py --tao-src /tmp/tao_src [--out tests/model/golden]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import types

import numpy as np
import timm
import torch

from tests.model.golden_recipe import seeded_input, seeded_state_dict

TAO_REPO = "NVIDIA/tao_pytorch_backend"
VARIANTS = ("fan_tiny_8_p4_hybrid", "fan_small_12_p4_hybrid", "fan_base_16_p4_hybrid", "fan_large_16_p4_hybrid")
EMBED = {"fan_tiny_8_p4_hybrid": 192, "fan_small_12_p4_hybrid": 384, "fan_base_16_p4_hybrid": 448,
         "fan_large_16_p4_hybrid": 480}

# First matching rule wins (regex on the TAO key; ``ndim`` when given must equal the tensor's).
RULES = [
    {"match": r"running_var$", "dist": "uniform", "low": 0.5, "high": 1.5},
    {"match": r"running_mean$", "dist": "normal", "mean": 0.0, "std": 0.1},
    # small values into ChannelProcessing.norm_v (variance ~1e-3), so its eps (1e-5 vs 1e-6) shows in the output
    {"match": r"mlp_v\.fc2\.weight$", "dist": "fan_in_normal", "gain": 0.03},
    # layer scales of order one (TAO initialises ConvNeXt's at 1e-6), so every block and its norm shape the output
    {"match": r"\.gamma\d?$", "dist": "uniform", "low": 0.25, "high": 0.5},
    {"match": r"temperature$", "dist": "uniform", "low": 0.5, "high": 1.5},
    {"match": r"cls_token$", "dist": "normal", "mean": 0.0, "std": 1.0},
    {"match": r"\.weight$", "ndim": 1, "dist": "normal", "mean": 1.0, "std": 0.1},  # LayerNorm/BatchNorm scales
    {"match": r"\.bias$", "dist": "normal", "mean": 0.0, "std": 0.1},
    {"match": r".", "dist": "fan_in_normal", "gain": 1.0},  # conv/linear weights: unit-variance outputs
]


def _package(name: str, path: str | None = None) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [path] if path else []
    sys.modules[name] = mod
    return mod


class _Registry:
    """Stand-in for fvcore's Registry: TAO's backbone files only decorate functions with it."""

    def register(self, obj=None):
        return obj if obj is not None else (lambda fn: fn)


def import_tao(src: str) -> types.ModuleType:
    """Import TAO's SegFormer model module from the checkout at ``src`` (stand-ins for what it does not need)."""
    root = os.path.join(src, "nvidia_tao_pytorch")
    for name in ("", ".cv", ".cv.segformer", ".cv.segformer.model", ".cv.segformer.model.decode_heads"):
        _package("nvidia_tao_pytorch" + name, os.path.join(root, *name.split(".")[1:]))
    _package("nvidia_tao_pytorch.cv.backbone_v2", os.path.join(root, "cv", "backbone_v2")).BACKBONE_REGISTRY = \
        _Registry()
    for name in ("core", "core.distributed", "core.utils"):
        _package(f"nvidia_tao_pytorch.{name}")
    comm = types.ModuleType("nvidia_tao_pytorch.core.distributed.comm")
    comm.get_global_rank = lambda: 0
    tlt_logging = types.ModuleType("nvidia_tao_pytorch.core.tlt_logging")
    tlt_logging.logging = logging
    ptm = types.ModuleType("nvidia_tao_pytorch.core.utils.ptm_utils")

    def no_pretrained(*args, **kwargs):
        raise RuntimeError("golden outputs use seeded weights, not pretrained files")

    ptm.load_pretrained_weights = no_pretrained
    for mod in (comm, tlt_logging, ptm):
        sys.modules[mod.__name__] = mod
    # TAO's segformer backbones package imports every backbone family; only its FAN dict is needed here.
    backbones = _package("nvidia_tao_pytorch.cv.segformer.model.backbones",
                         os.path.join(root, "cv", "segformer", "model", "backbones"))
    fan = importlib.import_module("nvidia_tao_pytorch.cv.segformer.model.backbones.fan")
    backbones.fan_model_dict = {v: getattr(fan, v) for v in VARIANTS}
    for other in ("mit_model_dict", "vit_adapter_model_dict", "cradio_vit_adapter_model_dict"):
        setattr(backbones, other, {})
    return importlib.import_module("nvidia_tao_pytorch.cv.segformer.model.segformer")


def norm_branches(model: torch.nn.Module, x: torch.Tensor) -> dict[str, str]:
    """Which branch each TAO ``LayerNorm2d`` takes in ``model(x)``: 'layer_norm' (contiguous input, biased
    variance) or 'var_mean' (any other layout: ``torch.var_mean``, unbiased variance)."""
    seen: dict[str, str] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=name: seen.__setitem__(
            name, "layer_norm" if args[0].is_contiguous(memory_format=torch.contiguous_format) else "var_mean"))
        for name, m in model.named_modules() if type(m).__name__ == "LayerNorm2d"]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tao-src", required=True, help="checkout of NVIDIA/tao_pytorch_backend at the pinned commit")
    ap.add_argument("--tao-git", help="its git dir, to record the exact commit hash")
    ap.add_argument("--commit", default="3a8a971", help="the commit the checkout was taken from")
    ap.add_argument("--out", default="tests/model/golden")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args()
    commit = args.commit
    if args.tao_git:
        commit = subprocess.check_output(["git", "--git-dir", args.tao_git, "rev-parse", args.commit],
                                         text=True).strip()
    segformer = import_tao(args.tao_src)
    recipe = {"source": f"github.com/{TAO_REPO} @ {commit}: nvidia_tao_pytorch/cv/segformer/model/segformer.py "
                        "SegFormer (FAN hybrid backbone from cv/segformer/model/backbones/fan.py, "
                        "cv/backbone_v2/fan.py, convnext_utils.py; TAOSegFormerHead)",
              "tao_commit": commit, "torch": torch.__version__, "timm": timm.__version__,
              "dtype": "float32",
              "seed": 2026, "input_seed": 7, "batch": 1, "img_size": [64, 80], "tao_img_size": 64,
              "decoder_embed_dim": 64, "num_classes": 3, "rules": RULES, "variants": {}}
    os.makedirs(args.out, exist_ok=True)
    x = seeded_input(recipe)
    for seed, name in enumerate(args.variants, start=recipe["seed"]):
        e = EMBED[name]
        torch.manual_seed(0)  # construction-time init only; every tensor is overwritten from the recipe
        model = segformer.SegFormer(
            input_nc=3, output_nc=recipe["num_classes"], embed_dim=recipe["decoder_embed_dim"], model=name,
            img_size=recipe["tao_img_size"], in_channels=[128, 256, e, e], feature_strides=[4, 8, 16, 16],
            in_index=[0, 1, 2, 3], feat_downsample=False).eval()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(seeded_state_dict({**recipe, "seed": seed}, shapes), strict=True)
        branches = norm_branches(model, x)
        with torch.no_grad():  # SegFormer.forward, split to keep the backbone maps
            feats = model.backbone.forward_feature_pyramid(x)
            logits = model.decoder(feats)
        arrays = {f"feat{i}": f.numpy() for i, f in enumerate(feats)}
        arrays["logits"] = logits.numpy()
        np.savez(os.path.join(args.out, f"{name}.npz"), **arrays)
        recipe["variants"][name] = {"seed": seed, "file": f"{name}.npz", "layernorm2d_branch": branches,
                                    "state_dict": shapes}
        print(name, {k: (tuple(v.shape), float(np.abs(v).max())) for k, v in arrays.items()},
              sum(b == "var_mean" for b in branches.values()), "of", len(branches), "LayerNorm2d use var_mean")
    with open(os.path.join(args.out, "recipe.json"), "w") as f:
        json.dump(recipe, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
