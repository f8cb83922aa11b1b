"""Writing a :class:`~segformer_tao.data.convert.base.Source` as a unet-layout tree, its spec and summary.

The tree is built in a staging folder beside DST (images hard-linked, else symlinked, else copied; masks linked
when their values already are the class ids, else re-encoded as palette PNGs with atomic writes) and moved into
place only when every file is done, so an interrupted or failed convert leaves DST as it was.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from segformer_tao import io
from segformer_tao.data.convert.base import IGNORE, Item, Source, listing, map_values, read_values
from segformer_tao.errors import UserError

_MARKER = ".segformer-convert"


def _link(src: str, dst: str, how: list[str]) -> str:
    """Hard link ``dst`` -> ``src``, else symlink, else copy (atomic); returns what was done.

    ``how`` is shared by all items: a method this filesystem refuses is dropped for the rest of the run.
    """
    for method in list(how):
        try:
            if method == "hardlink":
                os.link(src, dst)
            elif method == "symlink":
                os.symlink(os.path.abspath(src), dst)
            else:
                with open(src, "rb") as f, io.atomic_write(dst) as out:
                    shutil.copyfileobj(f, out)
            return method
        except OSError as e:
            if len(how) == 1:
                raise UserError(f"Cannot {method} '{src}' to '{dst}': {e.strerror or e}. Use --link auto (hard "
                                "link, else symlink, else copy) or another --link method.") from e
            with contextlib.suppress(ValueError):
                how.remove(method)
    raise UserError(f"Cannot link or copy '{src}' to '{dst}'.")


def encode_ids(ids: np.ndarray, colours: list[tuple[int, int, int]]) -> bytes:
    """HxW class ids (uint8) -> palette-mode PNG: pixel value = class id, viewers show the class colours."""
    im = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    flat = [v for c in colours[:256] for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    buf = _io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _image_size(path: str | None, data: bytes | None) -> tuple[int, int]:
    with Image.open(_io.BytesIO(data) if data is not None else path) as im:
        return im.size


def _write_item(item: Item, source: Source, staging: Path, how: list[str]) -> dict:
    """Write one pair into the staging tree; returns its class pixel counts and what was done with each file."""
    ext = item.image_ext or os.path.splitext(item.image or "")[1].lower()
    image_dst = staging / "images" / item.split / f"{item.stem}{ext}"
    mask_dst = staging / "masks" / item.split / f"{item.stem}.png"
    size = _image_size(item.image, item.image_bytes)
    if item.render is not None:
        ids, raw = item.render(), False
    else:
        values, linkable = read_values(item.mask)
        if source.lut is None:  # colour or 0/255 masks that the spec's palette / label_transform reads as they are
            ids, raw = values, True
        else:
            ids = map_values(values, source.lut, item.mask)
            raw = linkable and np.array_equal(ids, values)  # ids unchanged: link the original file
    if (ids.shape[1], ids.shape[0]) != size:
        raise UserError(f"Mask '{item.mask}' is {ids.shape[1]}x{ids.shape[0]} but its image '{item.image}' is "
                        f"{size[0]}x{size[1]} (WxH). Fix or remove the pair.")
    if item.image_bytes is not None:
        io.write_bytes(str(image_dst), item.image_bytes)
        image_how = "written"
    else:
        image_how = _link(item.image, str(image_dst), how)
    if raw:
        mask_how = _link(item.mask, str(mask_dst), how)
        counts = _count_raw(ids, source) if source.lut is None else np.bincount(ids.ravel(), minlength=IGNORE + 1)
    else:
        io.write_bytes(str(mask_dst), encode_ids(ids, [c for _, c in source.classes]))
        mask_how = "encoded"
        counts = np.bincount(ids.ravel().astype(np.int64), minlength=IGNORE + 1)
    return {"image": image_how, "mask": mask_how, "counts": counts[: IGNORE + 1]}


def _count_raw(values: np.ndarray, source: Source) -> np.ndarray:
    """Pixel counts per class of a mask used as is (ids, or colours through the palette)."""
    if values.ndim == 3:
        codes = (values[..., 0].astype(np.int64) << 16) | (values[..., 1].astype(np.int64) << 8) | values[..., 2]
        table = {(int(r) << 16) | (int(g) << 8) | int(b): int(p["label_id"])
                 for p in source.palette or [] for r, g, b in [p["rgb"]]}
        found, n = np.unique(codes, return_counts=True)
        counts = np.zeros(IGNORE + 1, np.int64)
        for code, k in zip(found.tolist(), n.tolist()):
            counts[table.get(code, IGNORE)] += k
        return counts
    counts = np.bincount(values.ravel().astype(np.int64), minlength=IGNORE + 1)
    if source.label_transform == "norm":  # 0/255 binary masks: 255 is class 1
        counts = counts.copy()
        counts[1], counts[IGNORE] = counts[IGNORE], 0
    return counts


def prepare_destination(dst: Path, src: Path, overwrite: bool) -> Path:
    """Refuse a non-empty DST (unless overwrite) or one overlapping SRC; returns a fresh staging folder."""
    dst_r, src_r = dst.resolve(), src.resolve()
    if dst_r == src_r or src_r in dst_r.parents or dst_r in src_r.parents:
        raise UserError(f"DST '{dst}' and SRC '{src}' overlap (one is inside the other). Convert into a separate "
                        "folder, e.g. next to the source dataset.")
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST '{dst}' is a file. Give a folder (it is created).")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise UserError(f"DST '{dst}' is not empty ({listing(dst, 4)}). Choose an empty or new folder, or pass "
                        "--overwrite to replace its contents with the converted dataset.")
    staging = dst.parent / f".{dst.name}.converting"
    if staging.exists():  # an interrupted earlier run: ours if it carries the marker
        if not (staging / _MARKER).exists():
            raise UserError(f"'{staging}' exists and was not made by `segformer dataset convert`. Move it away.")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / _MARKER).write_text("staging folder of segformer dataset convert; safe to delete\n")
    return staging


def publish(staging: Path, dst: Path) -> None:
    """Move the finished staging tree to DST (an old DST is removed only after the new one is complete)."""
    (staging / _MARKER).unlink()
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.replaced"
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(staging, dst)
    if old is not None:
        shutil.rmtree(old)


def write_tree(source: Source, staging: Path, *, link: str = "auto", workers: int = 4,
               progress: Callable[[str], None] = print) -> dict:
    """Write every item of ``source`` into ``staging``; returns the statistics for the summary and report.

    Args:
        link: 'auto' (hard link, else symlink, else copy), 'hardlink', 'symlink' or 'copy'.
        progress: called with one line every ~2 s and at the end of each split.
    """
    how = ["hardlink", "symlink", "copy"] if link == "auto" else [link]
    by_split: dict[str, list[Item]] = {}
    for item in source.items:
        by_split.setdefault(item.split, []).append(item)
    stats: dict = {"splits": {}, "class_pixels": np.zeros(IGNORE + 1, np.int64), "files": {}}
    for split, items in by_split.items():
        (staging / "images" / split).mkdir(parents=True, exist_ok=True)
        (staging / "masks" / split).mkdir(parents=True, exist_ok=True)
        last = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done, result in enumerate(pool.map(lambda it: _write_item(it, source, staging, how), items),
                                          start=1):
                stats["class_pixels"] += result["counts"]
                for kind in ("image", "mask"):
                    key = f"{kind}s {result[kind]}"
                    stats["files"][key] = stats["files"].get(key, 0) + 1
                if time.monotonic() - last > 2 or done == len(items):
                    progress(f"  {split}: {done}/{len(items)} pairs ({100 * done // len(items)}%)")
                    last = time.monotonic()
        stats["splits"][split] = len(items)
    return stats


def spec_palette(source: Source) -> list[dict]:
    """dataset.segment.palette for id masks: official names and colours, label_id = class id.

    MaskDecoder reads a grey palette colour (r == g == b) as a mask value to remap; the masks written here
    already hold class ids, so a grey display colour is moved one blue level to keep it a colour only.
    """
    if source.palette is not None:
        return source.palette
    out = []
    for class_id, (name, rgb) in enumerate(source.classes):
        r, g, b = (int(v) for v in rgb)
        if r == g == b and r != class_id:
            b = b + 1 if b < 255 else b - 1
        out.append({"label_id": class_id, "mapping_class": name, "rgb": [r, g, b], "seg_class": name})
    return out


def split_roles(splits: list[str]) -> dict[str, str]:
    """dataset.segment split keys for the written folders: train, val(idation) and test by name, else order."""
    keys: dict[str, str] = {}
    train = next((s for s in splits if s.startswith("train")), splits[0])
    val = next((s for s in splits if s.startswith("val")), None) or next((s for s in splits if s != train), train)
    keys["train_split"], keys["validation_split"], keys["test_split"] = train, val, val
    test = next((s for s in splits if s.startswith("test")), None)
    if test:
        keys["predict_split"] = test
    return keys


def summary_lines(source: Source, stats: dict, dst: Path) -> list[str]:
    """The console summary: images per split, pixels per class (most frequent first), share ignored."""
    counts = stats["class_pixels"]
    total = int(counts.sum()) or 1
    lines = [f"Converted {source.format} into {dst}:"]
    lines += [f"  {split}: {n} images" for split, n in stats["splits"].items()]
    lines.append("  files: " + ", ".join(f"{n} {k}" for k, n in sorted(stats["files"].items())))
    ranked = sorted(range(len(source.classes)), key=lambda c: -int(counts[c]))
    shown = ", ".join(f"{source.classes[c][0]} {100 * counts[c] / total:.1f}%" for c in ranked[:10])
    absent = [source.classes[c][0] for c in range(len(source.classes)) if counts[c] == 0]
    lines.append(f"  pixels per class ({len(source.classes)} classes; all in convert_report.json): {shown}"
                 + (f"; {len(absent)} class(es) never appear" if absent else ""))
    lines.append(f"  ignored (255): {100 * counts[IGNORE] / total:.1f}% of pixels")
    lines += [f"  note: {n}" for n in source.notes]
    return lines


def remove_staging(staging: Path) -> None:
    """Drop a staging tree after a failure (DST itself was never touched)."""
    with contextlib.suppress(OSError):
        shutil.rmtree(staging)
