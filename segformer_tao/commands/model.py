"""`segformer model ...`: model tools.

``segformer model info [-e spec.yaml] [key=value ...]`` prints the backbone, feature maps, parameter counts and
FLOPs of one forward pass at ``dataset.segment.img_size`` (``torch.utils.flop_counter``; sampling in
deformable attention, ``grid_sample``, is not counted).
``segformer model list`` prints the supported backbones.
"""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from segformer_tao.errors import UserError
from segformer_tao.model.backbones import BACKBONES

USAGE = ("usage: segformer model info [-e SPEC.yaml] [key=value ...] [--json]   (parameters and GFLOPs at "
         "dataset.segment.img_size)\n       segformer model list                                      "
         "(supported model.backbone.type values)")


def model_info(cfg) -> dict:
    """Parameters, feature maps and FLOPs of ``build_model(cfg)`` for one (1, 3, S, S) image, S = img_size."""
    from segformer_tao.model import build_model
    from segformer_tao.model.backbones.vit import VIT_ARCHS

    # ViTs are counted on the meta device (nothing allocated or computed: the ViT-g has 1.2B parameters)
    device = torch.device("meta" if cfg.model.backbone.type in VIT_ARCHS else "cpu")
    with device:
        model = build_model(cfg, load_weights=False).eval()
    size = int(cfg.dataset.segment.img_size)
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad():
        feats = model.backbone(x)
        with FlopCounterMode(display=False) as counter:
            logits = model(x)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "backbone": model.backbone_name,
        "img_size": size,
        "num_classes": model.num_classes,
        "decoder_embed_dim": model.decode_head.embed_dim,
        "feature_maps": [[int(f.shape[1]), int(f.shape[2]), int(f.shape[3])] for f in feats],
        "logits": list(logits.shape[1:]),
        "params_total_m": count(model) / 1e6,
        "params_backbone_m": count(model.backbone) / 1e6,
        "params_head_m": count(model.decode_head) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
    }


def format_info(info: dict) -> str:
    rows = [
        ("backbone", info["backbone"]),
        ("input", f"1x3x{info['img_size']}x{info['img_size']}"),
        ("feature maps (C,H,W)", ", ".join(str(tuple(f)) for f in info["feature_maps"])),
        ("logits (C,H,W)", str(tuple(info["logits"]))),
        ("params", f"{info['params_total_m']:.2f} M (backbone {info['params_backbone_m']:.2f} M, "
                   f"head {info['params_head_m']:.2f} M)"),
        ("GFLOPs (1 image)", f"{info['gflops']:.2f}  (= {info['gflops'] / 2:.2f} GMACs)"),
    ]
    return "\n".join(f"{k:<22} {v}" for k, v in rows)


def main(argv: list[str]) -> int:
    """Entry point of `segformer model`; returns the process exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] == "list":
        print("\n".join(BACKBONES))
        return 0
    if argv[0] != "info":
        raise UserError(f"Unknown model tool '{argv[0]}'.\n{USAGE}")
    from segformer_tao.cli import parse_args
    from segformer_tao.config import compose_config

    _, overrides, flags = parse_args(["info", *argv[1:]])
    as_json = "--json" in overrides
    overrides = [o for o in overrides if o != "--json"]
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    info = model_info(compose_config("train", overrides, spec_file=flags["spec"]))
    print(json.dumps(info, indent=2) if as_json else format_info(info))
    return 0
