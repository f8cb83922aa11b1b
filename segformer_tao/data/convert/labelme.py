"""LabelMe: a folder of LabelMe JSON files; each file's shapes are rasterised into one class-id mask.

Shapes are drawn in file order (a later shape covers an earlier one), as labelme's own ``labelme_json_to_dataset``
does with PIL: polygons, rectangles, circles; lines, line strips and points are skipped (no area). The image is
the JSON's ``imagePath`` (relative to the JSON) or, when that file is absent, its embedded ``imageData``.
"""

from __future__ import annotations

import base64
import binascii
import io as _io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segformer_tao.data.convert.base import (
    Item,
    Source,
    layout_error,
    listing,
    select_splits,
    val_split,
    voc_colour_map,
)
from segformer_tao.errors import UserError

NAME = "labelme"
LAYOUT = ("a folder (searched recursively) of LabelMe *.json files, each with shapes[] and imagePath or imageData "
          "-> background 0 + one class per label (--classes for a fixed order), split by --val-fraction/--seed")
OPTIONS: tuple[str, ...] = ("classes", "val_fraction", "seed")
BACKGROUND = ("_background_", "background")
_AREA_SHAPES = ("polygon", "rectangle", "circle")


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"LabelMe file '{path}' is not readable JSON ({e}). Fix or remove it.") from e
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise UserError(f"'{path}' is JSON but not a LabelMe annotation: expected an object with a 'shapes' list "
                        f"(found keys: {', '.join(sorted(data)) if isinstance(data, dict) else type(data).__name__}).")
    return data


def _image(path: Path, data: dict) -> tuple[str | None, bytes | None, str]:
    """(image file, or None with the embedded bytes, extension) of one annotation."""
    if data.get("imagePath"):
        candidate = (path.parent / str(data["imagePath"]).replace("\\", "/")).resolve()
        if candidate.is_file():
            return str(candidate), None, candidate.suffix.lower()
    if data.get("imageData"):
        try:
            raw = base64.b64decode(data["imageData"])
            with Image.open(_io.BytesIO(raw)) as im:
                ext = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif"}.get(im.format or "", ".png")
        except (binascii.Error, ValueError, OSError) as e:
            raise UserError(f"LabelMe file '{path}': imageData is not a base64 image ({e}).") from e
        return None, raw, ext
    raise UserError(f"LabelMe file '{path}' names image '{data.get('imagePath')}', which does not exist beside it, "
                    "and holds no imageData. Put the image next to the JSON or save the JSON with image data.")


def rasterise(shapes: list[dict], size: tuple[int, int], class_of: dict[str, int]) -> np.ndarray:
    """HxW uint8 class ids of ``shapes`` (LabelMe dicts, points in pixels) on an image of ``size`` (W, H)."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        kind = shape.get("shape_type") or "polygon"
        if kind not in _AREA_SHAPES:
            continue
        value = class_of[shape["label"]]
        points = [tuple(float(v) for v in p) for p in shape["points"]]
        if kind == "polygon" and len(points) >= 3:
            draw.polygon(points, outline=value, fill=value)
        elif kind == "rectangle" and len(points) == 2:
            (x0, y0), (x1, y1) = points
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=value, fill=value)
        elif kind == "circle" and len(points) == 2:
            (cx, cy), (px, py) = points
            r = ((cx - px) ** 2 + (cy - py) ** 2) ** 0.5
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=value, fill=value)
    return np.asarray(canvas)


def _classes(annotations: dict[Path, dict], fixed: str | None) -> list[str]:
    labels = sorted({s.get("label") for d in annotations.values() for s in d["shapes"]
                     if (s.get("shape_type") or "polygon") in _AREA_SHAPES} - set(BACKGROUND) - {None})
    if not fixed:
        return ["background", *labels]
    names = [n.strip() for n in fixed.split(",") if n.strip()]
    names = names[1:] if names and names[0] in BACKGROUND else names
    unknown = [lab for lab in labels if lab not in names]
    if unknown:
        where = next(p for p, d in annotations.items() if any(s.get("label") in unknown for s in d["shapes"]))
        raise UserError(f"LabelMe label(s) {', '.join(map(repr, unknown))} (e.g. in '{where}') are not in --classes "
                        f"{fixed}. Add them to --classes or relabel the shapes.")
    return ["background", *names]


def scan(src: Path, opts: dict) -> Source:
    """Read every JSON, collect classes, split the files by --val-fraction with --seed."""
    files = sorted(p for p in src.rglob("*.json") if p.is_file())
    if not files:
        raise layout_error(NAME, src, "LabelMe *.json annotation files in SRC (or its subfolders)", listing(src))
    annotations = {p: _load(p) for p in files}
    names = _classes(annotations, opts.get("classes"))
    if len(names) > 255:
        raise UserError(f"LabelMe files in '{src}' name {len(names) - 1} labels; at most 254 fit 8-bit masks.")
    class_of = {n: i for i, n in enumerate(names)} | {b: 0 for b in BACKGROUND}
    stems = {str(path.relative_to(src).with_suffix("")).replace("/", "__"): path for path in files}
    val = val_split(list(stems), opts.get("val_fraction"), opts.get("seed"))
    found: dict[str, list[Item]] = {"train": [], "val": []}
    for stem in sorted(stems):
        path, data = stems[stem], annotations[stems[stem]]
        image, image_bytes, ext = _image(path, data)
        size = (int(data.get("imageWidth") or 0), int(data.get("imageHeight") or 0))
        if not all(size):
            with Image.open(image or _io.BytesIO(image_bytes)) as im:
                size = im.size
        split = "val" if stem in val else "train"
        render = (lambda shapes=data["shapes"], size=size: rasterise(shapes, size, class_of))
        found[split].append(Item(split, stem, image, render=render, image_bytes=image_bytes, image_ext=ext))
    found = {k: v for k, v in found.items() if v}
    items, notes = select_splits(found, opts.get("splits"), {"train": "train", "val": "val"}, f"'{src}'")
    return Source(NAME, items, list(zip(names, voc_colour_map(len(names)))), notes=notes)
