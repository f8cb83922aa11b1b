"""COCO-Stuff 164k: images/{train2017,val2017}/*.jpg + stuffthingmaps_trainval2017/{train2017,val2017}/*.png.

The stuffthingmaps hold 0-181 (COCO-Stuff's 182 ids, minus one: 0 = person) and 255 (unlabeled). 11 of the 91
thing ids were never annotated; the remaining 171 are renumbered 0-170 in order, as mmsegmentation's
coco_stuff164k converter does (its ``_labelTrainIds``); 255 stays ignored.
"""

from __future__ import annotations

from pathlib import Path

from segformer_tao.data.convert.base import (
    IGNORE,
    Source,
    layout_error,
    listing,
    pair_by_stem,
    select_splits,
    table_lut,
)

NAME = "coco-stuff"
LAYOUT = ("images/{train2017,val2017}/*.jpg and stuffthingmaps_trainval2017/{train2017,val2017}/*.png (or "
          "annotations/ in place of stuffthingmaps_trainval2017/) -> 171 classes, the 182 ids compacted")
OPTIONS: tuple[str, ...] = ()
DEFAULT_SPLITS = {"train2017": "train", "val2017": "val"}
# 0-based stuffthingmap values of the 11 COCO thing ids without annotations (street sign, hat, shoe, eye glasses,
# plate, mirror, window, desk, door, blender, hair brush).
UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COMPACT = {v: i for i, v in enumerate(v for v in range(182) if v not in UNUSED)} | {IGNORE: IGNORE}
NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "banner",
    "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
]
# mmsegmentation's COCOStuffDataset palette (COCO-Stuff ships no colour table of its own).
COLOURS = [
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224), (0, 192, 192),
    (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224), (0, 0, 64), (0, 160, 192),
    (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224), (0, 0, 192), (128, 160, 192), (128, 128, 0),
    (128, 0, 32), (128, 32, 0), (128, 0, 128), (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160), (0, 32, 0),
    (0, 128, 128), (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128), (0, 0, 128),
    (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128), (64, 0, 160),
    (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192), (0, 128, 32), (64, 224, 0),
    (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192), (0, 128, 160), (192, 224, 0), (0, 128, 64),
    (128, 128, 32), (192, 32, 128), (0, 64, 192), (0, 0, 32), (64, 160, 128), (128, 64, 64), (128, 0, 160),
    (64, 32, 128), (128, 192, 192), (0, 0, 160), (192, 160, 128), (128, 192, 0), (128, 0, 96), (192, 32, 0),
    (128, 64, 128), (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0), (0, 192, 128),
    (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128), (64, 0, 96),
    (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128), (64, 0, 224), (192, 224, 128),
    (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192), (0, 128, 96), (0, 224, 0), (64, 64, 64),
    (128, 128, 224), (0, 96, 0), (64, 192, 192), (0, 128, 224), (128, 224, 0), (64, 192, 64), (128, 128, 96),
    (128, 32, 128), (64, 0, 192), (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224), (0, 32, 128),
    (192, 128, 192), (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64), (192, 0, 128),
    (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128), (64, 192, 160),
    (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128), (64, 64, 32), (0, 224, 192),
    (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128), (64, 64, 160), (128, 224, 192), (192, 128, 64),
    (192, 64, 32), (128, 96, 64), (192, 0, 192), (0, 192, 32), (64, 224, 64), (64, 0, 64), (128, 192, 160),
    (64, 96, 64), (64, 128, 192), (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192),
    (64, 64, 192), (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192),
    (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128), (64, 192, 96),
    (64, 160, 64), (64, 64, 0),
]


def scan(src: Path, opts: dict) -> Source:
    """Pair images/<split>/<name>.jpg with <maps>/<split>/<name>.png for each split folder."""
    images_root = src / "images"
    maps_root = next((src / d for d in ("stuffthingmaps_trainval2017", "annotations") if (src / d).is_dir()), None)
    if not images_root.is_dir() or maps_root is None:
        raise layout_error(NAME, src, "folders images/{train2017,val2017}/ and stuffthingmaps_trainval2017/"
                           "{train2017,val2017}/ (or annotations/)", listing(src))
    found = {}
    for split_dir in sorted(p for p in images_root.iterdir() if p.is_dir()):
        images = {p.stem: p for p in sorted(split_dir.glob("*.jpg"))}
        if not images:
            continue
        if not (maps_root / split_dir.name).is_dir():
            raise layout_error(NAME, src, f"{maps_root.name}/{split_dir.name}/*.png beside images/{split_dir.name}/",
                               listing(maps_root))
        masks = {p.stem: p for p in sorted((maps_root / split_dir.name).glob("*.png"))
                 if not p.stem.endswith("_labelTrainIds")}
        found[split_dir.name] = pair_by_stem(split_dir.name, images, masks, NAME, src)
    if not found:
        raise layout_error(NAME, src, "*.jpg files in images/train2017/ and images/val2017/", listing(images_root))
    items, notes = select_splits(found, opts.get("splits"), DEFAULT_SPLITS, f"'{images_root}'")
    return Source(NAME, items, list(zip(NAMES, COLOURS)), table_lut(COMPACT), notes=notes)
