"""Cityscapes (gtFine): leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png.

The 34 label ids of the official label table (cityscapesscripts' ``helpers/labels.py``) become the 19 train ids;
every other label (void, and the classes the benchmark does not evaluate) becomes 255.
"""

from __future__ import annotations

from pathlib import Path

from segformer_tao.data.convert.base import (
    IGNORE,
    Source,
    files_by_suffix,
    layout_error,
    listing,
    pair_by_stem,
    select_splits,
    table_lut,
)

NAME = "cityscapes"
LAYOUT = ("leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and gtFine/<split>/<city>/<name>_gtFine_labelIds.png "
          "(split: train, val, test) -> 19 train ids, other labels 255")
OPTIONS: tuple[str, ...] = ()
DEFAULT_SPLITS = {"train": "train", "val": "val"}  # test's public gtFine holds no labels

# (name, id, trainId, colour) from the official label table; trainId 255 = not evaluated.
LABELS = [
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)), ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)), ("ground", 6, 255, (81, 0, 81)), ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)), ("building", 11, 2, (70, 70, 70)), ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)), ("guard rail", 14, 255, (180, 165, 180)), ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)), ("pole", 17, 5, (153, 153, 153)), ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)), ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)), ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)), ("rider", 25, 12, (255, 0, 0)), ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)), ("bus", 28, 15, (0, 60, 100)), ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)), ("train", 31, 16, (0, 80, 100)), ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
]
ID_TO_TRAIN_ID = {label_id: train_id for _, label_id, train_id, _ in LABELS}
CLASSES = sorted(((train_id, name, colour) for name, _, train_id, colour in LABELS if train_id != IGNORE))

_IMG, _GT = "_leftImg8bit.png", "_gtFine_labelIds.png"


def scan(src: Path, opts: dict) -> Source:
    """Find the split/city folders and pair images with their labelIds masks by the shared name prefix."""
    images_root, gt_root = src / "leftImg8bit", src / "gtFine"
    if not images_root.is_dir() or not gt_root.is_dir():
        raise layout_error(NAME, src, "folders leftImg8bit/<split>/<city>/ and gtFine/<split>/<city>/",
                           listing(src))
    found = {}
    for split_dir in sorted(p for p in images_root.iterdir() if p.is_dir()):
        images = files_by_suffix(split_dir, _IMG)
        if not images:
            continue
        if not (gt_root / split_dir.name).is_dir():
            raise layout_error(NAME, src, f"gtFine/{split_dir.name}/<city>/*{_GT} beside leftImg8bit/"
                               f"{split_dir.name}/", listing(gt_root))
        masks = files_by_suffix(gt_root / split_dir.name, _GT)
        found[split_dir.name] = pair_by_stem(split_dir.name, images, masks, NAME, src)
    if not found:
        raise layout_error(NAME, src, f"<split>/<city>/*{_IMG} files under leftImg8bit/", listing(images_root))
    items, notes = select_splits(found, opts.get("splits"), DEFAULT_SPLITS, f"'{images_root}'")
    return Source(NAME, items, [(name, colour) for _, name, colour in CLASSES], table_lut(ID_TO_TRAIN_ID),
                  notes=notes)
