"""What every format module shares: the found dataset (`Source`, `Item`), split selection, label tables, layout
errors and mask reading.

A format module only looks at SRC and returns a :class:`Source` (pairs, official classes, how mask values become
class ids); it writes nothing. :mod:`.tree` writes the unet tree from it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from segformer_tao import io
from segformer_tao.data.decode import open_image
from segformer_tao.errors import UserError

IGNORE = 255
UNKNOWN = -1  # a LUT entry for a mask value that the format's table does not define
_SHOWN = 8


@dataclass(frozen=True)
class Item:
    """One output pair: the source image and where its class ids come from.

    ``mask`` is a source mask file read through ``Source.lut`` (linked as is when that changes no value, or when
    the LUT is None);
    ``render`` builds the HxW class ids itself (LabelMe polygons); ``image_bytes`` is an embedded image.
    """

    split: str
    stem: str
    image: str | None
    mask: str | None = None
    render: Callable[[], np.ndarray] | None = None
    image_bytes: bytes | None = None
    image_ext: str = ""


@dataclass
class Source:
    """A recognised dataset: its pairs, classes (name, 0-255 RGB) and mask value -> class id table."""

    format: str
    items: list[Item]
    classes: list[tuple[str, tuple[int, int, int]]]
    lut: np.ndarray | None = None  # mask value -> class id / IGNORE / UNKNOWN; None: values are the ids already
    label_transform: str = "None"
    palette: list[dict] | None = None  # set when the masks are colour masks (the palette is their encoding)
    notes: list[str] = field(default_factory=list)


def voc_colour_map(n: int = 256) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map (devkit labelcolormap.m): the bits of the class id interleaved into R, G, B."""
    colours = []
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def table_lut(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A LUT from an explicit {source value: class id} table; values not in it are UNKNOWN."""
    lut = np.full(size, UNKNOWN, np.int32)
    for value, class_id in mapping.items():
        lut[value] = class_id
    return lut


def parse_splits(text: str | None, default: dict[str, str]) -> dict[str, str]:
    """``--splits 'training:train,validation:val'`` (source split: output folder; a bare name keeps its name)."""
    if not text:
        return dict(default)
    out = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        src, _, dst = part.partition(":")
        src, dst = src.strip(), (dst.strip() or src.strip())
        if not src or "/" in dst or dst in (".", ".."):
            raise UserError(f"--splits entry '{part}' is not 'SOURCE_SPLIT:OUTPUT_SPLIT' (e.g. --splits "
                            "training:train,validation:val).")
        out[src] = dst
    return out


def pick_splits(found: dict[str, list], mapping: dict[str, str], where: str) -> dict[str, list]:
    """Keep the source splits named in ``mapping`` (renamed); a mapped split that is absent -> UserError."""
    missing = [s for s in mapping if s not in found]
    if missing:
        raise UserError(f"--splits names source split(s) {', '.join(missing)} that {where} does not hold; found: "
                        f"{', '.join(sorted(found)) or 'none'}.")
    return {mapping[s]: found[s] for s in mapping}


def select_splits(found: dict[str, list[Item]], splits: str | None, default: dict[str, str],
                  where: str) -> tuple[list[Item], list[str]]:
    """The items of the chosen source splits, renamed to their output folders, and a note on skipped splits."""
    mapping = parse_splits(splits, {k: v for k, v in default.items() if k in found} or {k: k for k in found})
    chosen = pick_splits(found, mapping, where)
    items = [replace(item, split=out) for out, split_items in chosen.items() for item in split_items]
    skipped = [s for s in found if s not in mapping]
    notes = [f"source split(s) {', '.join(skipped)} skipped (add them with --splits)"] if skipped else []
    return items, notes


def val_split(stems: list[str], fraction: float | None, seed: int | None) -> set[str]:
    """The stems that go to val: a seeded shuffle of the sorted stems, ``fraction`` of them (default 0.2), at least
    one when fraction > 0 and never all."""
    fraction = 0.2 if fraction is None else float(fraction)
    if not 0 <= fraction < 1:
        raise UserError(f"--val-fraction {fraction} is not in [0, 1): give the share of files for val, e.g. 0.2.")
    order = sorted(stems)
    random.Random(int(seed or 0)).shuffle(order)
    n_val = min(len(order) - 1, max(1 if fraction > 0 else 0, round(fraction * len(order))))
    return set(order[:max(n_val, 0)])


def layout_error(fmt: str, src: Path, expected: str, found: str) -> UserError:
    """The wrong-layout message: what was expected where, and what is there instead."""
    return UserError(f"'{src}' is not in the {fmt} layout: expected {expected}; found {found}. Point SRC at the "
                     f"dataset's top folder, or see `segformer dataset formats` for the layouts each format reads.")


def listing(folder: Path, limit: int = _SHOWN) -> str:
    """A short description of what a folder holds, for layout errors."""
    if not folder.exists():
        return f"no folder '{folder}'"
    if not folder.is_dir():
        return f"'{folder}' is a file, not a folder"
    names = sorted(os.listdir(folder))
    if not names:
        return f"'{folder}' is empty"
    shown = ", ".join(n + ("/" if (folder / n).is_dir() else "") for n in names[:limit])
    return f"'{folder}' holds {shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def files_by_suffix(folder: Path, suffix: str) -> dict[str, Path]:
    """{stem without suffix: path} for files under ``folder`` (recursively) whose name ends with ``suffix``."""
    out = {}
    for path in sorted(folder.rglob(f"*{suffix}")):
        if path.is_file():
            out[path.name[: -len(suffix)]] = path
    return out


def pair_by_stem(split: str, images: dict[str, Path], masks: dict[str, Path], fmt: str, src: Path) -> list[Item]:
    """Items for the stems present on both sides; unpaired files -> UserError naming a few of them."""
    lonely = sorted(set(images) ^ set(masks))
    if lonely:
        names = [str((images.get(s) or masks[s]).relative_to(src)) for s in lonely[:_SHOWN]]
        raise UserError(f"{fmt}: {len(lonely)} file(s) in split '{split}' have no partner (image <-> mask, matched "
                        f"by name): {', '.join(names)}. Add the missing files or remove the extra ones.")
    return [Item(split, stem, str(images[stem]), str(masks[stem])) for stem in sorted(images)]


def read_values(path: str) -> tuple[np.ndarray, bool]:
    """A source mask's raw values, HxW (grey, palette indices, 16-bit) or HxWx3 (colour), and whether the file
    can be linked as is when its values already are the class ids (an 8-bit grey or palette PNG)."""
    im = open_image(io.read_bytes(path), path)
    if im.mode in ("RGB", "RGBA"):
        return np.asarray(im.convert("RGB")), False
    return np.asarray(im), im.format == "PNG" and im.mode in ("L", "P")


def map_values(values: np.ndarray, lut: np.ndarray, name: str) -> np.ndarray:
    """Raw mask values -> class ids through ``lut``; a value the table does not define -> UserError."""
    if values.ndim != 2:
        raise UserError(f"Mask '{name}' is a colour image, but this format's masks hold one value per pixel "
                        "(grey or palette PNG). Use the dataset's original annotation files.")
    if values.max(initial=0) >= len(lut):
        lut = np.concatenate([lut, np.full(int(values.max()) + 1 - len(lut), UNKNOWN, np.int32)])
    ids = lut[values]
    if (ids == UNKNOWN).any():
        bad = np.unique(values[ids == UNKNOWN])[:10].tolist()
        raise UserError(f"Mask '{name}' holds value(s) {bad} that are not in the format's label table (known: "
                        f"{', '.join(str(v) for v in np.flatnonzero(lut != UNKNOWN)[:12])}...). The file is not an "
                        "annotation of this format, or the dataset was already converted: pick the right --format "
                        "or restore the original masks.")
    return ids
