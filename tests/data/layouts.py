"""Tiny replicas of the official dataset layouts `segformer dataset convert` reads, with their exact folder and
file naming, written from scratch by the tests (no dataset is downloaded).

Each ``make_*`` writes under ``root`` and returns the top folder to pass as SRC. Masks hold the raw values of the
format (Cityscapes label ids, ADE20K 0-150, VOC palette indices with a 255 border, COCO-Stuff 0-181/255).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 40, 30  # image size (pixels): small, not square, so a transposed mask would be caught


def _image(path: Path, seed: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _mask(path: Path, values: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette is not None:
        im = im.convert("P")
        im.putpalette(palette + [0] * (768 - len(palette)))
    im.save(path)


def blocks(values: list[int], seed: int) -> np.ndarray:
    """An HxW mask of horizontal bands holding each of ``values`` (shuffled by seed), so every value appears."""
    order = list(np.random.default_rng(seed).permutation(values))
    bands = np.array_split(np.arange(H), len(order))
    out = np.zeros((H, W), np.uint8)
    for value, rows in zip(order, bands):
        out[rows] = value
    return out


# ------------------------------------------------------------------------------------------------ Cityscapes
# (label name, polygon) objects of a gtFine_polygons.json; drawn in order by cityscapesscripts' json2labelImg.
CITYSCAPES_OBJECTS = [
    [("road", [[0, 15], [39, 15], [39, 29], [0, 29]]), ("sidewalk", [[0, 22], [12, 18], [12, 29], [0, 29]]),
     ("car", [[15, 16], [30, 16], [30, 26], [15, 26]]), ("sky", [[0, 0], [39, 0], [39, 6], [0, 6]]),
     ("building", [[0, 6], [20, 6], [20, 15], [0, 15]]), ("ego vehicle", [[0, 27], [39, 27], [39, 29], [0, 29]]),
     ("cargroup", [[31, 8], [39, 8], [39, 14], [31, 14]]), ("license plate", [[20, 22], [24, 22], [24, 24]])],
    [("vegetation", [[0, 0], [39, 0], [39, 14], [0, 14]]), ("pole", [[18, 2], [20, 2], [20, 25], [18, 25]]),
     ("polegroup", [[24, 2], [26, 2], [26, 25], [24, 25]]), ("caravan", [[2, 18], [12, 18], [12, 28], [2, 28]]),
     ("bicycle", [[28, 18], [38, 18], [38, 28], [28, 28]]), ("traffic sign", [[30, 2], [34, 2], [34, 6]])],
    [("person", [[5, 5], [10, 5], [10, 25], [5, 25]]), ("rider", [[12, 5], [16, 5], [16, 25]]),
     ("terrain", [[20, 20], [39, 20], [39, 29], [20, 29]]), ("out of roi", [[0, 0], [3, 0], [3, 3]]),
     ("train", [[22, 2], [36, 2], [36, 12], [22, 12]]), ("motorcycle", [[17, 14], [21, 14], [21, 19]])],
]


def make_cityscapes(root: Path, *, test_split: bool = True) -> Path:
    """leftImg8bit/{train,val,test}/<city>/ and gtFine/<split>/<city>/ (polygons.json, labelIds, color)."""
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    src = root / "cityscapes"
    plan = [("train", "aachen", 0), ("train", "bremen", 1), ("val", "frankfurt", 2)]
    plan += [("test", "berlin", 0)] if test_split else []
    for i, (split, city, objects) in enumerate(plan):
        stem = f"{city}_{i:06d}_000019"
        _image(src / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", i)
        gt = src / "gtFine" / split / city
        gt.mkdir(parents=True, exist_ok=True)
        polygons = {"imgHeight": H, "imgWidth": W,
                    "objects": [{"label": lab, "polygon": poly} for lab, poly in CITYSCAPES_OBJECTS[objects]]}
        (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
        json2labelImg(str(gt / f"{stem}_gtFine_polygons.json"), str(gt / f"{stem}_gtFine_labelIds.png"), "ids")
        json2labelImg(str(gt / f"{stem}_gtFine_polygons.json"), str(gt / f"{stem}_gtFine_color.png"), "color")
    return src


# ------------------------------------------------------------------------------------------------ ADE20K
def make_ade20k(root: Path) -> Path:
    """ADEChallengeData2016/images/{training,validation}/ADE_*.jpg + annotations/<split>/ADE_*.png (0-150)."""
    src = root / "ADEChallengeData2016"
    src.mkdir(parents=True)
    (src / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n1,0.1576,11664,1172,wall\n")
    (src / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    for split, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            _image(src / "images" / split / f"{stem}.jpg", i)
            values = [0, 1, 2, 3, 13, 150] if i == 1 else [0, 5, 21, 77 + i, 149]
            _mask(src / "annotations" / split / f"{stem}.png", blocks(values, i))
    return src


# ------------------------------------------------------------------------------------------------ Pascal VOC
def voc_palette() -> list[int]:
    """The VOC colour map as the devkit's PNGs carry it (flat R,G,B for 256 indices)."""
    out = []
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r, g, b = r | ((c & 1) << (7 - j)), g | (((c >> 1) & 1) << (7 - j)), b | (((c >> 2) & 1) << (7 - j))
            c >>= 3
        out += [r, g, b]
    return out


def make_voc(root: Path, *, aug: bool = False) -> Path:
    """VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}; with aug, SegmentationClassAug."""
    src = root / "VOCdevkit"
    voc = src / "VOC2012"
    names = {"train": ["2007_000032", "2007_000039", "2008_000008"], "val": ["2007_000033", "2009_000001"]}
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, stems in names.items():
        (lists / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    (lists / "trainval.txt").write_text("".join(f"{s}\n" for s in names["train"] + names["val"]))
    (voc / "Annotations").mkdir()
    for i, stem in enumerate(names["train"] + names["val"]):
        _image(voc / "JPEGImages" / f"{stem}.jpg", i, "JPEG")
        values = blocks([0, 1 + i, 8, 15, 20 - i], i)
        values[:, :1] = 255  # the white object border of VOC masks
        values[:1, :] = 255
        _mask(voc / "SegmentationClass" / f"{stem}.png", values, voc_palette())
        if aug:
            _mask(voc / "SegmentationClassAug" / f"{stem}.png", values)
    if aug:  # SBD adds images whose masks exist only in SegmentationClassAug
        _image(voc / "JPEGImages" / "2008_000123.jpg", 9, "JPEG")
        _mask(voc / "SegmentationClassAug" / "2008_000123.png", blocks([0, 7, 12], 9))
        (lists / "train_aug.txt").write_text("".join(f"{s}\n" for s in names["train"] + ["2008_000123"]))
    return src


# ------------------------------------------------------------------------------------------------ COCO-Stuff
def make_coco_stuff(root: Path) -> Path:
    """images/{train2017,val2017}/<12 digits>.jpg + stuffthingmaps_trainval2017/<split>/<same>.png (0-181, 255)."""
    src = root / "coco_stuff164k"
    plan = {"train2017": [(9, [0, 10, 12, 91, 181]), (25, [255, 1, 66, 100])], "val2017": [(139, [0, 26, 180, 255])]}
    for split, files in plan.items():
        for image_id, values in files:
            stem = f"{image_id:012d}"
            _image(src / "images" / split / f"{stem}.jpg", image_id, "JPEG")
            _mask(src / "stuffthingmaps_trainval2017" / split / f"{stem}.png", blocks(values, image_id))
    return src


# ------------------------------------------------------------------------------------------------ LabelMe
LABELME_SHAPES = [
    [{"label": "cat", "points": [[2, 3], [20, 4], [15, 25], [3, 20]], "shape_type": "polygon"},
     {"label": "dog", "points": [[10, 10], [35, 28]], "shape_type": "rectangle"},
     {"label": "cat", "points": [[30, 5], [33, 5]], "shape_type": "line"}],
    [{"label": "dog", "points": [[5.5, 2.2], [38.7, 6.1], [30.2, 27.9], [8.4, 20.3], [20.0, 12.5]],
      "shape_type": "polygon"},
     {"label": "bird", "points": [[20, 15], [26, 15]], "shape_type": "circle"}],
    [{"label": "bird", "points": [[0, 0], [39, 0], [39, 29]], "shape_type": "polygon"}],
]


def make_labelme(root: Path) -> Path:
    """A folder of LabelMe JSONs: two beside their images (imagePath), one with the image embedded (imageData)."""
    src = root / "labelme"
    src.mkdir(parents=True)
    for i, shapes in enumerate(LABELME_SHAPES):
        name = f"frame_{i:03d}"
        record = {"version": "5.4.1", "flags": {}, "shapes": [dict(s, group_id=None, flags={}) for s in shapes],
                  "imagePath": f"{name}.jpg", "imageData": None, "imageHeight": H, "imageWidth": W}
        if i == 2:
            buf = io.BytesIO()
            _image_to(buf, i)
            record["imageData"] = base64.b64encode(buf.getvalue()).decode()
        else:
            _image(src / f"{name}.jpg", i, "JPEG")
        (src / f"{name}.json").write_text(json.dumps(record))
    return src


def _image_to(buf: io.BytesIO, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")


# ------------------------------------------------------------------------------------------------ mask folders
MASK_COLOURS = [(0, 0, 0), (50, 200, 90), (250, 50, 50)]  # class ids: black first, then in RGB order


def make_masks_folder(root: Path) -> Path:
    """images/NAME.jpg + masks/NAME_mask.png colour masks (black background, two colours)."""
    src = root / "my_masks"
    for i in range(4):
        _image(src / "images" / f"img{i}.jpg", i, "JPEG")
        ids = blocks([0, 1, 2], i)
        rgb = np.array(MASK_COLOURS, np.uint8)[ids]
        (src / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(src / "masks" / f"img{i}_mask.png")
    return src


BUILDERS = {"cityscapes": make_cityscapes, "ade20k": make_ade20k, "voc": make_voc, "coco-stuff": make_coco_stuff,
            "labelme": make_labelme, "masks-folder": make_masks_folder}
