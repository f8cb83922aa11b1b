"""Dataset check run before train/evaluate and by `segformer dataset check`: catch bad data up front.

Finds missing/empty splits, unpaired files, unreadable images, image/mask size mismatches and mask values
that are not classes (>= num_classes and not the ignore index: TAO's mid-training "num_classes mismatch"),
and counts pixels per class. Writes dataset_report.json and raises one UserError listing the problems.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image

from segformer_tao import io
from segformer_tao.data import storage
from segformer_tao.data.dataset import Sample, check_root, mask_decoder, pair_split, split_name
from segformer_tao.data.decode import MaskDecoder, open_image
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")

SAMPLE_SIZE = 200  # pairs checked per split in 'sample' mode
_SHOWN = 10


def _check_pair(sample: Sample, decoder: MaskDecoder) -> dict[str, Any]:
    """Decode one image (+ mask): its size, class pixel counts, and any problem found."""
    out: dict[str, Any] = {"problems": []}
    try:
        im = open_image(storage.read_bytes(sample.image), sample.image, decoder.max_pixels)
        out["size"] = im.size  # (W, H)
    except UserError as e:
        out["problems"].append({"kind": "unreadable", "file": sample.image, "detail": str(e)})
        return out
    if sample.mask is None:
        return out
    try:
        data = storage.read_bytes(sample.mask)
    except UserError as e:  # e.g. a remote read that failed: a problem of this file, not of the whole check
        out["problems"].append({"kind": "unreadable", "file": sample.mask, "detail": str(e)})
        return out
    try:
        with Image.open(BytesIO(data)) as header:  # the size alone, so a mask with bad values is still checked
            mask_size = header.size
    except Exception:  # noqa: BLE001 - unreadable: the decoder below names the file and the reason
        mask_size = None
    if mask_size is not None and mask_size != im.size:
        out["problems"].append({"kind": "size_mismatch", "file": sample.mask, "detail": (
            f"Mask '{sample.mask}' is {mask_size[0]}x{mask_size[1]} but image '{sample.image}' is "
            f"{im.size[0]}x{im.size[1]} (WxH).")})
    try:
        ids = decoder(data, sample.mask)
    except UserError as e:
        kind = "unreadable" if "Cannot read" in str(e) else "bad_mask"
        out["problems"].append({"kind": kind, "file": sample.mask, "detail": str(e)})
        return out
    out["counts"] = np.bincount(ids.ravel(), minlength=decoder.num_classes)
    return out


def _check_split(cfg: Any, root: str, split: str, mode: str, decoder: MaskDecoder) -> tuple[dict, list[dict]]:
    folder = split_name(cfg, split)
    with_masks = split != "predict"
    try:
        samples, unpaired = pair_split(root, folder, with_masks)
    except UserError as e:
        return {"split": folder, "checked": 0}, [{"kind": "missing_or_empty_split", "split": folder, "file": None,
                                                  "detail": str(e)}]
    problems = [{"kind": "unpaired", "split": folder, "file": None, "detail": str(unpaired)}] if unpaired else []
    chosen = samples  # the pairs that do exist are still checked
    if mode == "sample" and len(samples) > SAMPLE_SIZE:
        chosen = random.Random(0).sample(samples, SAMPLE_SIZE)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        results = list(pool.map(lambda s: _check_pair(s, decoder), chosen))
    counts = np.zeros(max(decoder.num_classes, decoder.ignore_index + 1), np.int64)
    sizes = []
    for r in results:
        problems += [dict(p, split=folder) for p in r["problems"]]
        if "counts" in r:
            c = r["counts"]
            counts[:len(c)] += c[:len(counts)]
        if "size" in r:
            sizes.append(r["size"])
    stats = {
        "split": folder, "pairs" if with_masks else "images": len(samples), "checked": len(chosen),
        "sampled": len(chosen) < len(samples),
        "image_size_min": [int(v) for v in np.min(sizes, axis=0)] if sizes else None,
        "image_size_max": [int(v) for v in np.max(sizes, axis=0)] if sizes else None,
    }
    if with_masks:
        stats["class_pixels"] = {str(i): int(counts[i]) for i in range(decoder.num_classes)}
        stats["ignored_pixels"] = int(counts[decoder.ignore_index]) if decoder.ignore_index < len(counts) else 0
    return stats, problems


def summary(report: dict) -> str:
    """A few lines for the console: per split counts, class histogram, problem count."""
    lines = [f"Dataset check ({report['mode']}) of {report['root_dir']}:"]
    for s in report["splits"]:
        n = s.get("pairs", s.get("images", 0))
        line = f"  {s['split']}: {n} {'pairs' if 'pairs' in s else 'images'}, {s['checked']} checked"
        if s.get("class_pixels"):
            total = sum(s["class_pixels"].values()) or 1
            hist = " ".join(f"{k}:{100 * v / total:.1f}%" for k, v in s["class_pixels"].items())
            line += f"; class pixels {hist}"
            if not all(s["class_pixels"].values()):
                line += " (some classes never appear)"
        lines.append(line)
    lines.append(f"  {len(report['problems'])} problem(s)" + (f"; report: {report['report']}" if report.get("report")
                                                                else ""))
    return "\n".join(lines)


def _warn_palette_size(seg: Any) -> None:
    """A palette naming another number of classes than num_classes is legal, but usually a spec mistake."""
    from segformer_tao.config.schema import DatasetSegmentConfig

    palette = list(seg.get("palette") or [])
    if not palette or palette == DatasetSegmentConfig().palette:  # TAO's 2-entry default: not the user's choice
        return
    ignore = int(seg.get("ignore_index", 255))
    ids = sorted({int(p["label_id"]) for p in palette if int(p.get("label_id", -1)) not in (ignore, -1)})
    n = int(seg.num_classes)
    if ids and len(ids) != n:
        log.warning("dataset.segment.num_classes=%d but dataset.segment.palette names %d class id(s) (%s). Classes "
                    "without a palette entry get generic names and colours; if the masks only hold the palette's "
                    "ids, set num_classes=%d.", n, len(ids), ", ".join(map(str, ids)), len(ids))


def check_dataset(cfg: Any, splits: Sequence[str] = ("train", "val"), *, mode: str | None = None,
                  report_path: str | None = None, quiet: bool = False) -> dict:
    """Check the given splits ('train', 'val', 'test', 'predict' or folder names) of dataset.segment.root_dir.

    Args:
        mode: 'full' (every file), 'sample' (up to 200 pairs per split) or 'off'; default dataset.segment.check.
        report_path: where to write dataset_report.json (local or s3://); None writes nothing.
        quiet: do not print the summary.
    Returns:
        the report dict (also written to report_path).
    Raises:
        UserError naming the files and values at fault when any problem is found.
    """
    seg = cfg.dataset.segment
    mode = str(mode or seg.get("check", "sample"))
    if mode == "off":
        return {"mode": "off", "splits": [], "problems": []}
    root = check_root(seg.root_dir)
    decoder = mask_decoder(cfg)
    _warn_palette_size(seg)
    report: dict[str, Any] = {"root_dir": root, "mode": mode, "num_classes": decoder.num_classes,
                              "ignore_index": decoder.ignore_index, "splits": [], "problems": []}
    seen = set()
    for split in splits:
        key = (split_name(cfg, split), split == "predict")
        if key in seen:  # e.g. test_split defaults to the validation folder
            continue
        seen.add(key)
        stats, problems = _check_split(cfg, root, split, mode, decoder)
        report["splits"].append(stats)
        report["problems"] += problems
    report["ok"] = not report["problems"]
    if report_path:
        report["report"] = report_path
        io.write_json(report_path, report)
    if not quiet:
        print(summary(report))
    if report["problems"]:
        raise UserError(f"Dataset check of '{root}' found {len(report['problems'])} problem(s): "
                        f"{_grouped(report['problems'])}{f' Full list in {report_path}.' if report_path else ''}")
    return report


def _grouped(problems: list[dict]) -> str:
    """One full example per kind of problem, then the other files of that kind by name (not the same fix again)."""
    by_kind: dict[str, list[dict]] = {}
    parts = []
    for p in problems:
        if p.get("file"):
            by_kind.setdefault(p["kind"], []).append(p)
        else:  # split-level problems (missing folder, unpaired files) each say something different
            parts.append(f"[{p['kind']}] {p['detail']}")
    for kind, items in by_kind.items():
        text = f"[{kind}] {items[0]['detail']}"
        others = [os.path.basename(p["file"]) for p in items[1:]]
        if others:
            listed = ", ".join(others[:_SHOWN]) + (f" and {len(others) - _SHOWN} more" if len(others) > _SHOWN else "")
            text += f" The same for {len(others)} more file(s): {listed}."
        parts.append(text)
    return " ".join(parts)
