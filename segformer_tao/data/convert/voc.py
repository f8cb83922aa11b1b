"""Pascal VOC 2012: JPEGImages/*.jpg + SegmentationClass/*.png + ImageSets/Segmentation/<split>.txt.

SegmentationClass PNGs are palette images whose indices are the 21 class ids, 255 on object borders and
"difficult" regions: they are linked as they are. ``--aug`` reads SegmentationClassAug (the SBD-augmented
masks, grey ids) instead, and takes the train list from an aug list (aug.txt, train_aug.txt or trainaug.txt).
"""

from __future__ import annotations

from pathlib import Path

from segformer_tao.data.convert.base import (
    IGNORE,
    Item,
    Source,
    layout_error,
    listing,
    select_splits,
    table_lut,
    voc_colour_map,
)
from segformer_tao.errors import UserError

NAME = "voc"
LAYOUT = ("VOC2012/JPEGImages/*.jpg, SegmentationClass/*.png and ImageSets/Segmentation/{train,val}.txt (SRC may be "
          "VOC2012, VOCdevkit or its parent); --aug: SegmentationClassAug/*.png and an aug list -> 21 classes")
OPTIONS: tuple[str, ...] = ("aug",)
CLASS_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]
AUG_LISTS = ("aug.txt", "train_aug.txt", "trainaug.txt")


def _root(src: Path) -> Path:
    for candidate in (src, src / "VOC2012", src / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise layout_error(NAME, src, "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/ in SRC, SRC/VOC2012 "
                       "or SRC/VOCdevkit/VOC2012", listing(src))


def _missing(list_file: Path, missing: list[str], mask_dir: Path) -> UserError:
    return UserError(f"{NAME}: {len(missing)} name(s) in '{list_file}' have no JPEGImages/<name>.jpg or "
                     f"{mask_dir.name}/<name>.png: {', '.join(missing[:8])}. Restore the files or use a list that "
                     "matches the masks (SegmentationClass covers train/val; --aug uses SegmentationClassAug).")


def scan(src: Path, opts: dict) -> Source:
    """Read the split lists and pair each listed name with its JPEG and mask."""
    root = _root(src)
    mask_dir = root / ("SegmentationClassAug" if opts.get("aug") else "SegmentationClass")
    lists_dir = root / "ImageSets" / "Segmentation"
    if not mask_dir.is_dir():
        hint = " (--aug reads the SBD-augmented masks: unpack SegmentationClassAug into VOC2012/)" if opts.get(
            "aug") else ""
        raise layout_error(NAME, src, f"mask folder {mask_dir.name}/ beside JPEGImages/{hint}", listing(root))
    if not lists_dir.is_dir():
        raise layout_error(NAME, src, "split lists ImageSets/Segmentation/{train,val}.txt", listing(root / "ImageSets"))
    found: dict[str, list[Item]] = {}
    for list_file in sorted(lists_dir.glob("*.txt")):
        names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        missing = [n for n in names if not (root / "JPEGImages" / f"{n}.jpg").is_file()
                   or not (mask_dir / f"{n}.png").is_file()]
        if missing and list_file.stem in ("train", "val") + tuple(a[:-4] for a in AUG_LISTS):
            raise _missing(list_file, missing, mask_dir)
        if names and not missing:
            found[list_file.stem] = [Item(list_file.stem, n, str(root / "JPEGImages" / f"{n}.jpg"),
                                          str(mask_dir / f"{n}.png")) for n in names]
    if not found:
        raise layout_error(NAME, src, "name lists ImageSets/Segmentation/train.txt and val.txt",
                           listing(lists_dir))
    default = {"train": "train", "val": "val"}
    aug = next((a[:-4] for a in AUG_LISTS if a[:-4] in found), None)
    if opts.get("aug") and aug:
        default = {aug: "train", "val": "val"}
    items, notes = select_splits(found, opts.get("splits"), default, f"'{lists_dir}'")
    return Source(NAME, items, list(zip(CLASS_NAMES, voc_colour_map(21))),
                  table_lut({**{i: i for i in range(21)}, IGNORE: IGNORE}), notes=notes)
