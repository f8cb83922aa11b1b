"""What a trained model says about itself, where it is stored, and the ONE rule that decides an action's inputs.

A model file carries a :class:`ModelMeta`: num_classes, class names, display palette, img_size, mean/std (0-1
units), backbone, decoder embed_dim, ignore_index. It travels as a plain dict (:meth:`ModelMeta.to_dict`):

* checkpoints: the ``meta`` entry (``format`` = :data:`FORMAT`), written by training;
* ONNX: a ``metadata_props`` entry named :data:`META_KEY` (JSON), written by export and quantize;
* OpenVINO IR: the model's ``rt_info`` under :data:`META_KEY`;
* TensorRT: ``model_meta`` in the engine's build record (``<engine>.json``).

:func:`decide` is the rule every action and runtime obeys: what the model was trained with wins over schema
defaults; a value the user set (spec file or command line) that differs is used where it can apply, with one warning
naming both values, and refused with the fix where it cannot (a fixed-size ONNX or engine).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segformer_tao.config.provenance import source_of
from segformer_tao.errors import UserError

FORMAT = "segformer_tao.checkpoint/1"  # the checkpoint layout (engine/checkpoint.py) this meta belongs to
META_KEY = "segformer_tao"  # ONNX metadata_props key and OpenVINO rt_info key
MODEL_FILE = "model file"
DEFAULT = "schema default"
IMG_SIZE = "dataset.segment.img_size"
MEAN, STD = "dataset.segment.augmentation.mean", "dataset.segment.augmentation.std"
PALETTE, NUM_CLASSES = "dataset.segment.palette", "dataset.segment.num_classes"
BACKBONE, EMBED_DIM = "model.backbone.type", "model.decode_head.decoder_params.embed_dim"
log = logging.getLogger("segformer_tao")


@dataclass(frozen=True)
class ModelMeta:
    """A model's self-description. ``input_size``: the (H, W) a model file is fixed to (None: any size);
    ``extra``: what else the file records (epoch, val_miou, quantization, export geometry...)."""

    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    img_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    backbone: str | None = None
    embed_dim: int | None = None
    ignore_index: int = 255
    input_size: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: plain types only (``torch.load(weights_only=True)`` and JSON read it)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "input_size")}
        return {**self.extra, **own}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, num_classes: int | None = None,
                  input_size: tuple[int, int] | None = None, embed_dim: int | None = None) -> ModelMeta:
        """Read the stored form; ``num_classes`` (e.g. an ONNX output's channel count) fills or checks it."""
        data = dict(data or {})
        n = int(data.get("num_classes") or num_classes or 0)
        if num_classes is not None and n != int(num_classes):
            raise UserError(f"The model file says it predicts {n} classes, but its output has {num_classes} channels: "
                            "the file was modified after export. Re-export it with `segformer export`.")
        names = [str(c) for c in (data.get("class_names") or [f"class_{i}" for i in range(n)])][:n]
        names += [f"class_{i}" for i in range(len(names), n)]
        palette = [list(map(int, c)) for c in (data.get("palette") or [])][:n]
        if len(palette) < n:
            palette = default_colors(n)
        own = {f.name for f in dataclasses.fields(cls)}
        return cls(num_classes=n, class_names=names, palette=palette,
                   img_size=int(data["img_size"]) if data.get("img_size") else None,
                   mean=[float(v) for v in data["mean"]] if data.get("mean") else None,
                   std=[float(v) for v in data["std"]] if data.get("std") else None,
                   backbone=str(data["backbone"]) if data.get("backbone") else None,
                   embed_dim=int(embed_dim or data.get("embed_dim") or 0) or None,
                   ignore_index=int(data.get("ignore_index", 255)), input_size=input_size,
                   extra={k: v for k, v in data.items() if k not in own})

    def replace(self, **changes: Any) -> ModelMeta:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------ writing
def class_info(cfg: DictConfig, num_classes: int | None = None) -> tuple[list[str], list[list[int]]]:
    """Class names and display colours (0-255 RGB) per class id 0..n-1 (n = dataset.segment.num_classes) from the
    palette.

    Entries sharing a ``mapping_class`` are one class (TAO). Palette ``rgb`` is the mask encoding (0-1 for
    ``label_transform=norm``), so colours are scaled to 0-255 and replaced by a fixed colour map when two
    classes would look the same.
    """
    seg = cfg.dataset.segment
    n = int(num_classes or seg.num_classes)
    entries = sorted(OmegaConf.to_container(seg.palette or [], resolve=True), key=lambda p: p.get("label_id", 0))
    names: list[str] = []
    colors: list[list[int]] = []
    for p in entries:
        name = str(p.get("mapping_class") or p.get("seg_class") or len(names))
        if name in names:
            continue
        rgb = [float(v) for v in p.get("rgb", [0, 0, 0])]
        scale = 255.0 if str(seg.label_transform) == "norm" and max(rgb) <= 1 else 1.0
        names.append(name)
        colors.append([int(round(min(255.0, v * scale))) for v in rgb])
    names = (names + [f"class_{i}" for i in range(len(names), n)])[:n]
    # Palettes that encode mask values (grey levels 0,1,2,... or 0/1) are no use for display; a colour palette (the
    # official Cityscapes, ADE20K, COCO-Stuff ones have neighbours closer than that) is kept unless two are equal.
    grey = all(c[0] == c[1] == c[2] for c in colors[:n])
    limit = 60 if grey else 1
    close = any(sum(abs(a - b) for a, b in zip(c1, c2)) < limit for i, c1 in enumerate(colors[:n])
                for c2 in colors[i + 1 : n])
    if len(colors) < n or close:
        colors = default_colors(n)
    return names, colors[:n]


def default_colors(n: int) -> list[list[int]]:
    """A deterministic, well-separated colour per class (Pascal-VOC bit-interleaving scheme)."""
    colors = []
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append([r, g, b])
    return colors


def meta_from_config(cfg: DictConfig) -> ModelMeta:
    """What training records about the model it builds from ``cfg`` (the checkpoint's ``meta``)."""
    seg = cfg.dataset.segment
    names, colors = class_info(cfg)
    embed = OmegaConf.select(cfg, EMBED_DIM)
    return ModelMeta(num_classes=int(seg.num_classes), class_names=names, palette=colors, img_size=int(seg.img_size),
                     mean=[float(v) for v in seg.augmentation.mean], std=[float(v) for v in seg.augmentation.std],
                     backbone=str(cfg.model.backbone.type), embed_dim=int(embed) if embed else None,
                     ignore_index=int(seg.ignore_index), extra={"format": FORMAT})


def from_checkpoint(payload: dict[str, Any]) -> ModelMeta:
    """The meta of a checkpoint payload; its stored config fills what older checkpoints did not record."""
    config = payload.get("config") or {}
    stored = dict(payload.get("meta") or {})
    stored.setdefault("backbone", ((config.get("model") or {}).get("backbone") or {}).get("type"))
    embed = ((config.get("model") or {}).get("decode_head") or {}).get("decoder_params") or {}
    return ModelMeta.from_dict(stored, embed_dim=embed.get("embed_dim"))


def to_json(meta: ModelMeta, **geometry: Any) -> str:
    """The JSON an ONNX metadata_props entry, an IR's rt_info or an engine record stores (meta + export geometry)."""
    return json.dumps({**meta.to_dict(), **geometry})


def from_json(raw: str | None) -> dict[str, Any]:
    """The dict :func:`to_json` wrote, or {} (a file of another tool)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------------ the rule
@dataclass(frozen=True)
class Decision:
    """What an action runs with (``meta``), where each fact came from (``sources``) and the warnings given."""

    meta: ModelMeta
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def record(self) -> dict[str, dict[str, Any]]:
        """For job.json: each fact's value and source."""
        m = self.meta
        values = {"backbone": m.backbone, "embed_dim": m.embed_dim, "num_classes": m.num_classes,
                  "img_size": m.img_size, "mean": m.mean, "std": m.std, "class_names": m.class_names,
                  "input_size": list(m.input_size) if m.input_size else None}
        return {k: {"value": v, "source": self.sources.get(k, MODEL_FILE)} for k, v in values.items()}


def decide(cfg: DictConfig, meta: ModelMeta, model: str,
           size_problem: Callable[[int], str | None] | None = None) -> Decision:
    """The one rule: which img_size, mean/std, palette, class count and backbone an action uses.

    ``meta``: the model file's; ``model``: its key and path for messages (``evaluate.checkpoint='m.pth'``);
    ``size_problem(size)``: why the model cannot run at ``size`` (None when it can; no callable: any size).
    The model's value wins over a schema default. A value the user set that differs: img_size applies when the
    model can take it (not a fixed-size file, no ``size_problem``), else UserError with the fix; mean/std and the
    palette apply (one warning each); backbone, embed_dim and class count are the model's (a trained network is what
    it is), with a warning.
    """
    seg = cfg.dataset.segment
    sources: dict[str, str] = {}
    warnings: list[str] = []

    def pick(fact: str, key: str, ours: Any, theirs: Any, applies: str) -> Any:
        src = source_of(cfg, key)
        if theirs is None:
            sources[fact] = src or DEFAULT
            return ours
        sources[fact] = MODEL_FILE
        if src is None or _same(ours, theirs):
            return theirs
        sources[fact] = src
        warnings.append(f"{model} was trained with {fact} {_fmt(theirs)}, but {key}={_fmt(ours)} ({src}); "
                        f"{_fmt(ours)} is used{applies}.")
        return ours

    size = _pick_size(cfg, meta, model, sources, warnings, size_problem)
    mean = pick("mean", MEAN, [float(v) for v in seg.augmentation.mean], meta.mean, ", so results differ from "
                "the model's training")
    std = pick("std", STD, [float(v) for v in seg.augmentation.std], meta.std, ", so results differ from the "
               "model's training")
    names, palette = meta.class_names, meta.palette
    if source_of(cfg, PALETTE) is not None:
        spec_names, spec_colors = class_info(cfg, meta.num_classes)
        if (spec_names, spec_colors) != (names, palette):
            warnings.append(f"{model} names its classes {names}, but {PALETTE} ({source_of(cfg, PALETTE)}) gives "
                            f"{spec_names}; the spec's names and colours are used for reports and overlays.")
            names, palette = spec_names, spec_colors
        sources["class_names"] = source_of(cfg, PALETTE) if names is spec_names else MODEL_FILE
    for fact, key, theirs in (("backbone", BACKBONE, meta.backbone), ("class count", NUM_CLASSES, meta.num_classes),
                              ("embed_dim", EMBED_DIM, meta.embed_dim)):
        src, ours = source_of(cfg, key), OmegaConf.select(cfg, key)
        if theirs is not None and src is not None and not _same(ours, theirs):
            warnings.append(f"{model} was trained with {fact} {theirs}, but the spec says {key}={ours} ({src}); "
                            f"the model file's {theirs} is used (the spec's {key} does not change a trained model).")
    resolved = meta.replace(img_size=size, mean=mean, std=std, class_names=names, palette=palette)
    for line in warnings:
        log.warning("warning: %s", line)
    return Decision(resolved, sources, warnings)


def _pick_size(cfg: DictConfig, meta: ModelMeta, model: str, sources: dict[str, str], warnings: list[str],
               size_problem: Callable[[int], str | None] | None) -> int:
    ours, src = int(cfg.dataset.segment.img_size), source_of(cfg, IMG_SIZE)
    if meta.input_size is not None:
        h, w = meta.input_size
        if h != w:
            raise UserError(f"{model} has a fixed, non-square input {h}x{w} (HxW), but images are resized to a square "
                            f"{IMG_SIZE}. Re-export it with export.input_height = export.input_width, or with "
                            "export.dynamic_hw=true.")
        sources["img_size"] = f"{MODEL_FILE} (fixed input {h}x{w})"
        if src is not None and ours != h and ours != meta.img_size:
            raise UserError(f"{model} has a fixed input size {h}x{w}, but {IMG_SIZE}={ours} ({src}) asks for "
                            f"{ours}x{ours}, which this file cannot take. Remove {IMG_SIZE} from the spec/command line "
                            f"(the model's {h} is used), or re-export with export.input_height=export.input_width="
                            f"{ours} (or export.dynamic_hw=true).")
        if src is not None and ours != h:
            log.info("note: %s was trained at %s=%d and exported with a fixed %dx%d input; it runs at %d.", model,
                     IMG_SIZE, ours, h, w, h)
        return h
    if meta.img_size is None:
        sources["img_size"] = src or DEFAULT
        return ours
    sources["img_size"] = MODEL_FILE
    if src is None or ours == meta.img_size:
        return meta.img_size
    problem = size_problem(ours) if size_problem else None
    if problem:
        raise UserError(f"{model} was trained at {IMG_SIZE}={meta.img_size}, and {IMG_SIZE}={ours} ({src}) does "
                        f"not fit it: {problem}. Remove {IMG_SIZE} (the model's {meta.img_size} is used) or choose a "
                        "size it can take.")
    sources["img_size"] = src
    warnings.append(f"{model} was trained with img_size {meta.img_size}, but {IMG_SIZE}={ours} ({src}); {ours} is "
                    f"used (the model runs at other sizes), so results differ from the model's training.")
    return ours


def torch_size_problem(backbone: str | None) -> Callable[[int], str | None] | None:
    """Why a PyTorch model of ``backbone`` cannot run at a size (ViT-Adapters need multiples of their strides;
    MiT and FAN take any size): the ``size_problem`` for :func:`decide`."""
    from segformer_tao.model.backbones.vit import VIT_ARCHS, img_size_problem

    if backbone not in VIT_ARCHS:
        return None
    return lambda size: img_size_problem(str(backbone), size)


def apply(cfg: DictConfig, decision: Decision) -> None:
    """Write the decided facts into ``cfg``, so that every loader, report and experiment.yaml uses and shows them."""
    m = decision.meta
    updates = {IMG_SIZE: m.img_size, MEAN: m.mean, STD: m.std, NUM_CLASSES: m.num_classes, BACKBONE: m.backbone,
               EMBED_DIM: m.embed_dim}
    for key, value in updates.items():
        if value is not None:
            OmegaConf.update(cfg, key, value, force_add=key == EMBED_DIM)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        try:
            return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-9 for x, y in zip(a, b))
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{float(v):g}" for v in value) + "]"
    return str(value)
