"""`segformer config upgrade OLD.yaml`: a TAO <= 5.5 SegFormer spec (the mmseg-based format tao_deploy still ships)
rewritten in the current format, every moved or dropped key listed with why.

The old format (TAO 5.x ``nvidia_tao_pytorch/cv/segformer/config/default_config.py``) trains by iterations
(``train.max_iters``), reads ``dataset.{train,val,test}_dataset.{img_dir,ann_dir}`` under ``dataset.data_root``,
normalises with ``dataset.img_norm_cfg`` in 0-255, takes the input size from ``model.input_height/width`` and the
optimizer from ``train.trainer.sf_optim``. Its palette ``rgb`` is the mask encoding in 0-255, which is what
``label_transform=None`` reads here.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import Any

import yaml

from segformer_tao.errors import UserError

# Keys only the old format has: any of them marks a spec as TAO <= 5.5.
OLD_MARKERS = ("train.exp_config", "train.trainer", "train.max_iters", "model.input_height", "model.input_width",
               "dataset.data_root", "dataset.img_norm_cfg", "dataset.train_dataset", "dataset.val_dataset",
               "dataset.test_dataset", "dataset.workers_per_gpu", "dataset.repeat_data_times", "export.trt_config",
               "export.onnx_config", "evaluate.exp_config", "inference.exp_config")
SEG = "dataset.segment"
AUG = "dataset.segment.augmentation"
# Secrets are not copied into a file that is printed: the key goes on the command line.
SECRET = "not written to the upgraded spec: give it as encryption_key=... on the command line (one key for all actions)"
# old key -> (new key or None, converter or None, why). Keys starting with a listed prefix share its rule.
Rule = tuple[str | None, Callable[[Any], Any] | None, str]
RULES: dict[str, Rule] = {
    "results_dir": ("results_dir", None, "same key"),
    "encryption_key": (None, None, SECRET),
    "model.backbone.type": ("model.backbone.type", None, "same key"),
    "model.backbone.init_cfg.checkpoint": ("model.backbone.pretrained_backbone_path", None, "pretrained backbone"),
    "model.backbone.init_cfg.type": (None, None, "a pretrained backbone is loaded whenever its path is set"),
    "model.pretrained_model_path": ("train.pretrained_model_path", None, "the full pretrained model is a train key"),
    "model.decode_head.decoder_params": ("model.decode_head.decoder_params", None, "same key"),
    "model.decode_head.in_channels": ("model.decode_head.in_channels", None, "same key"),
    "model.decode_head.in_index": ("model.decode_head.in_index", None, "same key"),
    "model.decode_head.feature_strides": ("model.decode_head.feature_strides", None, "same key"),
    "model.decode_head.align_corners": ("model.decode_head.align_corners", None, "same key"),
    "model.decode_head": (None, None, "fixed by the SegFormer head (dropout, norm, loss); classes come from the "
                                      "palette"),
    "model.type": (None, None, "always an encoder-decoder"),
    "model.test_cfg": (None, None, "whole-image inference; sliding windows are inference.sliding_window"),
    "dataset.img_norm_cfg.mean": (f"{AUG}.mean", lambda v: [round(float(x) / 255, 6) for x in v],
                                  "0-255 values divided by 255 (images are scaled to 0-1 here)"),
    "dataset.img_norm_cfg.std": (f"{AUG}.std", lambda v: [round(float(x) / 255, 6) for x in v],
                                 "0-255 values divided by 255 (images are scaled to 0-1 here)"),
    "dataset.img_norm_cfg": (None, None, "images are read as RGB and padded with the ignore index already"),
    "dataset.palette": (f"{SEG}.palette", None, "rgb in 0-255 encodes the masks, read with label_transform=None"),
    "dataset.batch_size": (f"{SEG}.batch_size", None, "per-device batch size"),
    "dataset.workers_per_gpu": (f"{SEG}.workers", None, "data-loading workers"),
    "dataset.shuffle": (f"{SEG}.shuffle", None, "same meaning"),
    "dataset.input_type": (None, None, "images are always read as RGB (grayscale is repeated over 3 channels)"),
    "dataset.repeat_data_times": (None, None, "training counts epochs (train.num_epochs), not repeated iterations"),
    "dataset.train_dataset.pipeline.augmentation_config.random_flip.prob": (
        f"{AUG}.random_flip.hflip_probability", None, "mmseg's RandomFlip is horizontal"),
    "dataset.train_dataset.pipeline.augmentation_config.resize.ratio_range": (
        f"{AUG}.with_scale_random_crop.scale_range", None, "random rescale before the crop"),
    "dataset.train_dataset.pipeline": (None, None, "crop size is img_size; cat_max_ratio and padding have no "
                                                   "equivalent"),
    "dataset": (None, None, "no equivalent (suffixes, dataset class, reduce_zero_label)"),
    "train.exp_config.manual_seed": ("train.seed", None, "random seed"),
    "train.exp_config.deterministic": ("train.cudnn.deterministic", None, "deterministic algorithms"),
    "train.exp_config.env_cfg.cudnn_benchmark": ("train.cudnn.benchmark", None, "cudnn.benchmark"),
    "train.exp_config.gpu_ids": ("train.gpu_ids", None, "GPU ids"),
    "train.exp_config": (None, None, "distributed settings come from train.num_gpus/num_nodes and the launcher's "
                                     "MASTER_ADDR/MASTER_PORT"),
    "train.trainer.sf_optim.lr": ("train.optim.lr", None, "learning rate"),
    "train.trainer.sf_optim.weight_decay": ("train.optim.weight_decay", None, "weight decay"),
    "train.trainer.sf_optim.betas": ("train.optim.momentum", lambda v: float(v[0]), "AdamW beta1 (beta2 is 0.999)"),
    "train.trainer.sf_optim.type": ("train.optim.optim", lambda v: str(v).lower(), "optimizer"),
    "train.trainer.sf_optim.paramwise_cfg.head.lr_mult": ("train.optim.decoder_lr_mult", None, "decoder LR "
                                                                                              "multiplier"),
    "train.trainer.lr_config.warmup_iters": ("train.optim.warmup_iters", None, "linear warmup steps"),
    "train.trainer.lr_config.policy": ("train.optim.policy", lambda v: "linear" if v == "poly" else str(v),
                                       "poly with power 1 is TAO's linear decay"),
    "train.trainer.grad_clip": ("train.clip_grad_norm", lambda v: float(v or 0.0), "gradient clipping max norm"),
    "train.trainer": (None, None, "fixed here (DDP finds unused parameters; no decay on norms/pos blocks)"),
    "train.checkpoint_interval": ("train.checkpoint_interval", None, "in iterations: checkpoint_interval_unit=step"),
    "train.resume_training_checkpoint_path": ("train.resume_training_checkpoint_path", None, "same key"),
    "train.results_dir": ("train.results_dir", None, "same key"),
    "train.num_gpus": ("train.num_gpus", None, "same key"),
    "train": (None, None, "no equivalent (logging interval, hooks, mmengine schedulers)"),
    **{f"{a}.encryption_key": (None, None, SECRET) for a in ("train", "evaluate", "inference", "export")},
    **{f"{a}.exp_config": (None, None, "mmengine run settings; GPUs come from the action's gpu_ids")
       for a in ("evaluate", "inference", "export")},
    "export.onnx_config": (None, None, "the ONNX is written as TAO 6+ writes it (input `input`, output `output`)"),
    "export.codebase_config": (None, None, "the ONNX is written as TAO 6+ writes it (input `input`, output "
                                           "`output`)"),
    "export.num_gpus": (None, None, "export runs on one device (export.gpu_id)"),
    "evaluate.gpu_id": ("evaluate.gpu_ids", lambda v: [int(v)], "a list of ids"),
    "inference.gpu_id": ("inference.gpu_ids", lambda v: [int(v)], "a list of ids"),
    "export.trt_engine": ("gen_trt_engine.trt_engine", None, "engines are built by `segformer gen_trt_engine`"),
    "export.trt_config.data_type": ("gen_trt_engine.tensorrt.data_type", lambda v: str(v).lower(),
                                    "built by gen_trt_engine"),
    "export.trt_config": ("gen_trt_engine.tensorrt", None, "built by gen_trt_engine"),
    "export.verify": (None, None, "export always compares ONNX Runtime with PyTorch"),
    "gen_trt_engine.input_channel": (None, None, "taken from the ONNX"),
    "gen_trt_engine.input_width": (None, None, "taken from the ONNX"),
    "gen_trt_engine.input_height": (None, None, "taken from the ONNX"),
    "gen_trt_engine.opset_version": (None, None, "taken from the ONNX"),
}
# Sections whose keys keep their names unless a rule above says otherwise.
SAME_NAMES = {"evaluate": ("checkpoint", "trt_engine", "results_dir", "num_gpus"),
              "inference": ("checkpoint", "trt_engine", "results_dir", "num_gpus"),
              "export": ("checkpoint", "onnx_file", "results_dir", "input_channel", "input_width", "input_height",
                         "opset_version", "batch_size", "simplify"),
              "gen_trt_engine": ("results_dir", "gpu_id", "onnx_file", "trt_engine", "batch_size", "verbose",
                                 "tensorrt")}
SPLIT_SECTIONS = {"train_dataset": "train_split", "val_dataset": "validation_split", "test_dataset": "test_split"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_old_format(spec: dict) -> list[str]:
    """The old-format marker keys present in a spec mapping ([] for a current-format spec)."""
    return [k for k in OLD_MARKERS if _get(spec, k) is not _MISSING]


_MISSING = object()


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out += _leaves(v, key + ".") if isinstance(v, dict) and v else [(key, v)]
    return out


def _rule(key: str) -> Rule | None:
    """(new key for this leaf, converter, why); a prefix rule keeps the rest of the path (``export.trt_config.x``
    -> ``gen_trt_engine.tensorrt.x``). None: a key neither format knows."""
    for prefix in sorted(RULES, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "."):
            new, convert, why = RULES[prefix]
            return (None if new is None else new + key[len(prefix):]), convert, why
    section, _, rest = key.partition(".")
    if rest.split(".")[0] in SAME_NAMES.get(section, ()):
        return key, None, "same key"
    return None


class Upgrade:
    """The new spec being built and the report of what moved where."""

    def __init__(self) -> None:
        self.spec: dict = {}
        self.report: list[str] = []

    def move(self, old: str, new: str, value: Any, why: str) -> None:
        _set(self.spec, new, value)
        self.report.append(f"moved:   {old} -> {new}" + ("" if old == new else f" ({why})"))

    def drop(self, old: str, why: str) -> None:
        self.report.append(f"dropped: {old} ({why})")


def upgrade_spec(old: dict) -> Upgrade:
    """Convert an old-format spec mapping; the data folders and iteration counts get their own handling."""
    up = Upgrade()
    handled = _convert_data_dirs(old, up) | _convert_size_and_schedule(old, up)
    for key, value in _leaves(old):
        if key in handled or any(key.startswith(h + ".") for h in handled):
            continue
        rule = _rule(key)
        if rule is None:
            up.drop(key, "not a key of TAO's old or current SegFormer spec")
            continue
        new, convert, why = rule
        if new is None:
            up.drop(key, why)
        else:
            up.move(key, new, convert(value) if convert else value, why)
    if _get(old, "dataset.palette") is not _MISSING:
        up.move("dataset.palette", f"{SEG}.label_transform", "None", "old palettes give mask values in 0-255")
        up.move("dataset.palette", f"{SEG}.num_classes", len({p.get("label_id") for p in old["dataset"]["palette"]}),
                "one class per palette label_id")
    # The old pipeline had no vertical flips, rotations or blur: turn off what the current defaults add.
    for key, value in ((f"{AUG}.random_flip.vflip_probability", 0.0), (f"{AUG}.random_rotate.enable", False),
                       (f"{AUG}.with_random_blur", False)):
        _set(up.spec, key, value)
        up.report.append(f"set:     {key}={value} (TAO <= 5.5's pipeline had none; the current default adds it)")
    return up


def _as_list(value: Any) -> list[str]:
    if value is _MISSING or value in (None, ""):
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _convert_data_dirs(old: dict, up: Upgrade) -> set[str]:
    """img_dir/ann_dir pairs `<root>/images/<split>`, `<root>/masks/<split>` -> root_dir + split names."""
    handled = {"dataset.data_root"}
    data_root = _get(old, "dataset.data_root")
    data_root = "" if data_root is _MISSING or data_root is None else str(data_root)
    roots = set()
    for section, split_key in SPLIT_SECTIONS.items():
        imgs, anns = _as_list(_get(old, f"dataset.{section}.img_dir")), _as_list(_get(old, f"dataset.{section}."
                                                                                       "ann_dir"))
        handled |= {f"dataset.{section}.img_dir", f"dataset.{section}.ann_dir"}
        if not imgs:
            continue
        old_key = f"dataset.{section}.img_dir"
        imgs = [os.path.join(data_root, p) for p in imgs]
        anns = [os.path.join(data_root, p) for p in anns]
        img, ann = os.path.normpath(imgs[0]), os.path.normpath(anns[0]) if anns else ""
        root, split = os.path.dirname(os.path.dirname(img)), os.path.basename(img)
        if (len(imgs) > 1 or os.path.basename(os.path.dirname(img)) != "images"
                or ann != os.path.join(root, "masks", split)):
            up.drop(old_key, f"{imgs} / {anns} is not the <root>/images/<split> + <root>/masks/<split> layout this "
                    "tool reads: arrange the files that way and set dataset.segment.root_dir")
            continue
        roots.add(root)
        up.move(old_key, f"{SEG}.{split_key}", split, f"split folder under {root}/images and {root}/masks")
        if section == "val_dataset" and _get(old, "dataset.test_dataset.img_dir") is _MISSING:
            _set(up.spec, f"{SEG}.test_split", split)
    if len(roots) == 1:
        up.move("dataset.data_root + *_dataset.img_dir", f"{SEG}.root_dir", roots.pop(), "the unet layout's root")
    elif roots:
        up.report.append(f"note:    the splits live under different roots {sorted(roots)}; set "
                         "dataset.segment.root_dir to one root holding images/<split> and masks/<split>")
    return handled


def _count_images(spec: dict) -> int | None:
    seg = spec.get("dataset", {}).get("segment", {})
    folder = os.path.join(str(seg.get("root_dir", "")), "images", str(seg.get("train_split", "train")))
    if not seg.get("root_dir") or not os.path.isdir(folder):
        return None
    return sum(1 for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)) or None


def _convert_size_and_schedule(old: dict, up: Upgrade) -> set[str]:
    """model.input_height/width -> img_size; max_iters/validation_interval (iterations) -> epochs."""
    height, width = _get(old, "model.input_height"), _get(old, "model.input_width")
    sizes = [int(v) for v in (height, width) if v is not _MISSING]
    if sizes:
        size = max(sizes)
        why = "square input" if len(set(sizes)) == 1 else f"inputs are square here; {sizes} -> the larger side"
        up.move("model.input_height/input_width", f"{SEG}.img_size", size, why)
    max_iters, val_every = _get(old, "train.max_iters"), _get(old, "train.validation_interval")
    batch = _get(old, "dataset.batch_size")
    images = _count_images(up.spec)
    if max_iters is not _MISSING:
        if images and batch is not _MISSING:
            per_epoch = max(1, math.ceil(images / int(batch)))
            up.move("train.max_iters", "train.num_epochs", max(1, math.ceil(int(max_iters) / per_epoch)),
                    f"{max_iters} iterations of {per_epoch} per epoch ({images} train images, batch {batch})")
            if val_every is not _MISSING and val_every:
                up.move("train.validation_interval", "train.validation_interval",
                        max(1, round(int(val_every) / per_epoch)), f"every {val_every} iterations, in epochs")
        else:
            up.drop("train.max_iters", "training counts epochs here and the train images could not be counted to "
                    "convert iterations: set train.num_epochs")
            if val_every is not _MISSING:
                up.drop("train.validation_interval", "in iterations; validation runs every N epochs here")
    if _get(old, "train.checkpoint_interval") is not _MISSING:
        _set(up.spec, "train.checkpoint_interval_unit", "step")
    if _get(old, "train.validate") is not _MISSING:
        up.drop("train.validate", "validation always runs, every train.validation_interval epochs")
    return {"model.input_height", "model.input_width", "train.max_iters", "train.validation_interval",
            "train.validate"}


def main(argv: list[str]) -> int:
    """`segformer config upgrade OLD.yaml`: the new spec on stdout, the report on stderr."""
    if len(argv) != 1 or argv[0].startswith("-"):
        raise UserError("Usage: segformer config upgrade OLD_SPEC.yaml > new_spec.yaml (a TAO <= 5.5 SegFormer "
                        "spec; the report of moved and dropped keys goes to stderr).")
    path = argv[0]
    if not os.path.isfile(path):
        raise UserError(f"Spec file '{path}' does not exist. Give the old-format spec to upgrade.")
    from segformer_tao.config import spec_yaml

    with open(path, encoding="utf-8") as f:
        old = spec_yaml.load(f.read(), path) or {}
    if not isinstance(old, dict):
        raise UserError(f"Spec file '{path}' must hold a mapping of keys, not a {type(old).__name__}.")
    if not is_old_format(old):
        raise UserError(f"'{path}' is already in the current format (none of {', '.join(OLD_MARKERS[:4])}, ... is "
                        "set): use it as it is with -e.")
    up = upgrade_spec(old)
    print(f"# Upgraded by `segformer config upgrade {path}` from TAO's <= 5.5 SegFormer format.")
    print(yaml.safe_dump(up.spec, sort_keys=False), end="")
    print("\n".join(up.report), file=sys.stderr)
    return 0
