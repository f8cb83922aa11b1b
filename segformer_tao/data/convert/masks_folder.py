"""Mask folders: images and masks in two folders (or one), paired by name up to a suffix such as ``_mask``.

Colour masks are linked and read through a palette of the colours found (black first as class 0); 0/255 masks are
linked and read with label_transform=norm; grey id masks whose values are 0..N-1 (255 = ignore) are linked; other
grey values are renumbered 0..N-1 in value order (re-encoded). Sub-folders of the image folder (train/, val/) are
the splits; without them the pairs are split by --val-fraction with --seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segformer_tao.data.convert.base import (
    IGNORE,
    Item,
    Source,
    layout_error,
    listing,
    read_values,
    select_splits,
    table_lut,
    val_split,
    voc_colour_map,
)
from segformer_tao.errors import UserError

NAME = "masks-folder"
LAYOUT = ("SRC/<images>/ and SRC/<masks>/ (names like images|imgs|JPEGImages and masks|labels|annotations|gt, or "
          "--image-dir/--mask-dir), optionally with split sub-folders; mask = image name + optional suffix "
          "(_mask, _label, ...; --mask-suffix) + .png; colour or id masks")
OPTIONS: tuple[str, ...] = ("image_dir", "mask_dir", "mask_suffix", "val_fraction", "seed")
IMAGE_DIRS = ("images", "image", "imgs", "img", "JPEGImages", "rgb")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt", "SegmentationClass", "segmentations")
SUFFIXES = ("", "_mask", "_label", "_labels", "_gt", "_seg", "-mask", "_segmentation")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_MAX_COLOURS = 64


def _folder(src: Path, given: str | None, names: tuple[str, ...], what: str) -> Path:
    if given:
        folder = src / given
        if not folder.is_dir():
            raise layout_error(NAME, src, f"the {what} folder '{given}' given with --{what}-dir", listing(src))
        return folder
    folder = next((src / n for n in names if (src / n).is_dir()), None)
    if folder is None:
        raise layout_error(NAME, src, f"a{'n' if what == 'image' else ''} {what} folder named one of "
                           f"{', '.join(names)} (or --{what}-dir NAME)", listing(src))
    return folder


def _pairs(image_dir: Path, mask_dir: Path, suffix: str | None, src: Path) -> list[tuple[str, Path, Path]]:
    images = {p.relative_to(image_dir).with_suffix(""): p for p in sorted(image_dir.rglob("*"))
              if p.suffix.lower() in IMAGE_EXTS and p.is_file()}
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in sorted(mask_dir.rglob("*.png")) if p.is_file()}
    if not images:
        raise layout_error(NAME, src, f"image files ({', '.join(IMAGE_EXTS)}) in '{image_dir.name}/'",
                           listing(image_dir))
    best: list[tuple[str, Path, Path]] = []
    for suf in [suffix] if suffix is not None else SUFFIXES:
        found = [(str(rel), img, masks[rel.with_name(rel.name + suf)]) for rel, img in images.items()
                 if rel.with_name(rel.name + suf) in masks and masks[rel.with_name(rel.name + suf)] != img]
        if len(found) > len(best):
            best = found
    if not best:
        some = ", ".join(str(p.relative_to(mask_dir)) for p in list(masks.values())[:4]) or "no .png files"
        raise layout_error(NAME, src, f"a mask '{mask_dir.name}/<image name><suffix>.png' for each image in "
                           f"'{image_dir.name}/' (suffixes tried: {', '.join(repr(s) for s in SUFFIXES)})",
                           f"images like {next(iter(images.values())).name} and masks {some}")
    if len(best) < len(images):
        lonely = sorted(set(str(r) for r in images) - {b[0] for b in best})
        raise UserError(f"{NAME}: {len(lonely)} image(s) in '{image_dir}' have no mask in '{mask_dir}': "
                        f"{', '.join(lonely[:8])}. Add the masks, remove the images, or give --mask-suffix.")
    return best


def _classes(masks: list[Path]) -> tuple[list[tuple[str, tuple[int, int, int]]], np.ndarray | None, str,
                                          list[dict] | None]:
    """(classes, LUT or None, label_transform, palette for colour masks) from the values found in the masks."""
    colours: set[tuple[int, int, int]] = set()
    greys: set[int] = set()
    for path in masks:
        values, _ = read_values(str(path))
        if values.ndim == 3:
            found = np.unique(values.reshape(-1, 3), axis=0)
            colours |= {tuple(int(v) for v in c) for c in found}
        else:
            greys |= set(np.unique(values).tolist())
        if len(colours) > _MAX_COLOURS:
            raise UserError(f"Colour masks in '{path.parent}' hold more than {_MAX_COLOURS} colours (e.g. '{path}'): "
                            "they look like photos or JPEG-compressed masks, not label masks.")
    if colours:
        ordered = sorted(colours - {(IGNORE,) * 3}, key=lambda c: (c != (0, 0, 0), c))
        classes = [(f"class_{i}" if c != (0, 0, 0) or i else "background", c) for i, c in enumerate(ordered)]
        palette = [{"label_id": i, "mapping_class": n, "rgb": list(c), "seg_class": n} for i, (n, c) in
                   enumerate(classes)]
        grey_ids = sorted(greys - {IGNORE})
        if grey_ids:
            raise UserError(f"Masks in '{masks[0].parent}' mix colour and grey masks (grey values {grey_ids[:8]}). "
                            "Use one kind of mask for the whole dataset.")
        return classes, None, "None", palette
    values = sorted(greys - {IGNORE})
    if set(greys) == {0, IGNORE}:
        return [("background", (0, 0, 0)), ("foreground", (255, 255, 255))], None, "norm", [
            {"label_id": 0, "mapping_class": "background", "rgb": [0, 0, 0], "seg_class": "background"},
            {"label_id": 1, "mapping_class": "foreground", "rgb": [1, 1, 1], "seg_class": "foreground"}]
    if len(values) > 254:
        raise UserError(f"Masks in '{masks[0].parent}' hold {len(values)} different grey values; at most 254 classes "
                        "fit the 8-bit masks written here. These look like depth maps or photos, not label masks.")
    # ids 0..N-1 already: linked as they are; any other set of grey values: renumbered in value order
    mapping = {v: i for i, v in enumerate(values)}
    names = ["background" if i == 0 and values[0] == 0 else f"class_{i}" for i in range(len(values))]
    return list(zip(names, voc_colour_map(len(names)))), table_lut({**mapping, IGNORE: IGNORE}, 65536), "None", None


def scan(src: Path, opts: dict) -> Source:
    """Find the two folders, pair files by name, read every mask once to learn its classes."""
    image_dir = _folder(src, opts.get("image_dir"), IMAGE_DIRS, "image")
    mask_dir = _folder(src, opts.get("mask_dir"), MASK_DIRS, "mask")
    pairs = _pairs(image_dir, mask_dir, opts.get("mask_suffix"), src)
    classes, lut, transform, palette = _classes([m for _, _, m in pairs])
    found: dict[str, list[Item]] = {}
    split_dirs = sorted({Path(stem).parts[0] for stem, _, _ in pairs if len(Path(stem).parts) > 1})
    if split_dirs and all(len(Path(stem).parts) > 1 for stem, _, _ in pairs):
        if opts.get("val_fraction") is not None or opts.get("seed") is not None:
            raise UserError(f"'{image_dir}' already has split folders ({', '.join(split_dirs)}); --val-fraction and "
                            "--seed split flat folders only. Drop them, or map the folders with --splits.")
        for stem, img, mask in pairs:
            split, *rest = Path(stem).parts
            found.setdefault(split, []).append(Item(split, "__".join(rest), str(img), str(mask)))
        default = {s: s for s in split_dirs}
    else:
        val = val_split([stem for stem, _, _ in pairs], opts.get("val_fraction"), opts.get("seed"))
        for stem, img, mask in pairs:
            split = "val" if stem in val else "train"
            found.setdefault(split, []).append(Item(split, stem.replace("/", "__"), str(img), str(mask)))
        default = {"train": "train", "val": "val"}
    items, notes = select_splits(found, opts.get("splits"), default, f"'{image_dir}'")
    return Source(NAME, items, classes, lut, label_transform=transform, palette=palette, notes=notes)
