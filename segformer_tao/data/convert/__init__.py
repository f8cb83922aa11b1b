"""`segformer dataset convert`: turn a dataset in its official layout into the unet layout plus a spec.

One module per format (cityscapes, ade20k, voc, coco_stuff, labelme, masks_folder), each with ``NAME``, ``LAYOUT``,
``OPTIONS`` (the format-specific CLI options it reads) and ``scan(src, opts) -> Source`` that only reads SRC;
:mod:`.tree` writes the tree. :func:`convert` runs the steps in order: recognise the layout (nothing written yet),
check DST, write into a staging folder, move it into place, write spec.yaml, run the dataset check.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import yaml

from segformer_tao import io
from segformer_tao.data.convert import ade20k, cityscapes, coco_stuff, labelme, masks_folder, voc
from segformer_tao.data.convert.base import IGNORE
from segformer_tao.data.convert.tree import (
    prepare_destination,
    publish,
    remove_staging,
    spec_palette,
    split_roles,
    summary_lines,
    write_tree,
)
from segformer_tao.errors import UserError

FORMATS: dict[str, ModuleType] = {m.NAME: m for m in (cityscapes, ade20k, voc, coco_stuff, labelme, masks_folder)}
LINK_MODES = ("auto", "hardlink", "symlink", "copy")


def formats_text() -> str:
    """`segformer dataset formats`: each format with the layout it reads and its own options."""
    lines = ["Formats of `segformer dataset convert --format FMT SRC DST` (the layout each expects under SRC):"]
    for name, module in FORMATS.items():
        opts = ", ".join(f"--{o.replace('_', '-')}" for o in module.OPTIONS)
        lines.append(f"  {name:<13} {module.LAYOUT}" + (f" [options: {opts}]" if opts else ""))
    lines.append("Every format: --splits SRC_SPLIT:DST_SPLIT,... --overwrite --link auto|hardlink|symlink|copy.")
    return "\n".join(lines)


def check_options(fmt: str, opts: dict) -> None:
    """A format-specific option given to a format that does not read it is an error, not silently nothing."""
    for name, module in FORMATS.items():
        for opt in module.OPTIONS:
            value = opts.get(opt)
            if value is not None and value is not False and opt not in FORMATS[fmt].OPTIONS:
                raise UserError(f"--{opt.replace('_', '-')} applies to --format {name} (and formats with the same "
                                f"option), not to --format {fmt}. Remove it.")


def convert(fmt: str, src: str | Path, dst: str | Path, opts: dict | None = None, *, overwrite: bool = False,
            link: str = "auto", check: bool = True, progress: Callable[[str], None] = print) -> dict:
    """Convert SRC (in format ``fmt``) into DST: unet layout, spec.yaml, convert_report.json.

    Args:
        opts: format options (``splits``, ``aug``, ``classes``, ``val_fraction``, ``seed``, ``image_dir``,
            ``mask_dir``, ``mask_suffix``), as parsed by the CLI.
        link: how images (and unchanged masks) get into DST: hard link, symlink, copy, or 'auto' (first that works).
        check: run `dataset check` on the result.
    Returns:
        the report (also written to DST/convert_report.json).
    """
    opts = dict(opts or {})
    if fmt not in FORMATS:
        raise UserError(f"Unknown dataset format '{fmt}'. Formats: {', '.join(FORMATS)} (`segformer dataset "
                        "formats` shows the layout each one reads).")
    if link not in LINK_MODES:
        raise UserError(f"--link {link} is not one of {', '.join(LINK_MODES)}.")
    check_options(fmt, opts)
    remote = [str(p) for p in (src, dst) if io.is_remote(str(p))]
    if remote:
        raise UserError(f"`segformer dataset convert` reads and writes local folders (it hard-links files); got "
                        f"{', '.join(remote)}. Copy the source down first (e.g. `aws s3 sync`), convert, then upload "
                        "DST and set dataset.segment.root_dir to its s3:// prefix.")
    src, dst = Path(os.path.expanduser(str(src))), Path(os.path.expanduser(str(dst))).absolute()
    if not src.is_dir():
        raise UserError(f"SRC '{src}' is not a folder. Give the top folder of the {fmt} dataset.")
    progress(f"Reading {src} as {fmt} ...")
    source = FORMATS[fmt].scan(src, opts)
    if not source.items:
        raise UserError(f"SRC '{src}' holds no {fmt} image/annotation pairs in the chosen splits. See `segformer "
                        "dataset formats`.")
    if len(source.classes) < 2:
        raise UserError(f"The masks in '{src}' hold a single class ({source.classes[0][0] if source.classes else ''})"
                        "; training needs at least 2 classes.")
    splits = list(dict.fromkeys(item.split for item in source.items))
    progress(f"Found {len(source.items)} pairs ({', '.join(splits)}) and {len(source.classes)} classes; writing {dst}")
    staging = prepare_destination(dst, src, overwrite)
    try:
        stats = write_tree(source, staging, link=link, progress=progress)
        segment = {"root_dir": str(dst), "num_classes": len(source.classes), "label_transform": source.label_transform,
                   "ignore_index": IGNORE, "palette": spec_palette(source), **split_roles(splits)}
        # flow style for the leaf lists: one short line per palette entry's colour
        io.write_text(str(staging / "spec.yaml"), yaml.safe_dump({"dataset": {"segment": segment}}, sort_keys=False,
                                                                 default_flow_style=None))
        report = {"format": fmt, "source": str(src.absolute()), "splits": stats["splits"], "files": stats["files"],
                  "class_pixels": {name: int(stats["class_pixels"][i]) for i, (name, _) in enumerate(source.classes)},
                  "ignored_pixels": int(stats["class_pixels"][IGNORE]), "notes": source.notes}
        io.write_text(str(staging / "convert_report.json"), json.dumps(report, indent=2) + "\n")
        publish(staging, dst)
    except BaseException:
        remove_staging(staging)
        raise
    for line in summary_lines(source, stats, dst):
        progress(line)
    if check:
        _check(dst, splits)
    progress(f"Train on it: segformer train -e {dst / 'spec.yaml'} results_dir=<results folder>")
    return report


def _check(dst: Path, splits: list[str]) -> None:
    """`segformer dataset check` on the written tree (dataset.segment.check's default: up to 200 pairs per split;
    every mask was already read and validated while converting)."""
    from segformer_tao.config import compose_config
    from segformer_tao.data.check import check_dataset

    cfg = compose_config("train", [], spec_file=str(dst / "spec.yaml"))
    check_dataset(cfg, splits, report_path=str(dst / "dataset_report.json"))
