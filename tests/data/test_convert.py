"""`segformer dataset convert`: each official layout (tests/data/layouts.py replicas) becomes the unet layout whose
masks, read the way training reads them (the written spec.yaml through MaskDecoder), hold the class ids an
independent reference gives: cityscapesscripts' own trainId rendering, tables typed from each dataset's
documentation, PIL drawing the LabelMe shapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segformer_tao.config import compose_config
from segformer_tao.data.convert import FORMATS, convert, tree
from segformer_tao.data.dataset import mask_decoder
from segformer_tao.errors import UserError
from tests.data import layouts


def _run(fmt: str, src: Path, dst: Path, **opts) -> dict:
    lines: list[str] = []
    report = convert(fmt, src, dst, opts, progress=lines.append)
    report["lines"] = lines
    return report


def _cfg(dst: Path):
    return compose_config("train", [], spec_file=str(dst / "spec.yaml"))


def _read_ids(dst: Path, split: str, stem: str) -> np.ndarray:
    """A converted mask as training reads it: through the MaskDecoder of the written spec."""
    path = dst / "masks" / split / f"{stem}.png"
    return mask_decoder(_cfg(dst))(path.read_bytes(), str(path))


def _palette(dst: Path) -> list[tuple[str, tuple[int, int, int]]]:
    entries = sorted(_cfg(dst).dataset.segment.palette, key=lambda p: p["label_id"])
    return [(p["mapping_class"], tuple(p["rgb"])) for p in entries]


def _same_colour(written: tuple, official: tuple) -> bool:
    """Official colour, or a grey one moved one blue level (so that MaskDecoder does not read it as a mask value)."""
    return tuple(written) == tuple(official) or (
        official[0] == official[1] == official[2] and tuple(written[:2]) == tuple(official[:2])
        and abs(written[2] - official[2]) == 1)


def test_cityscapes_train_ids_equal_cityscapesscripts_conversion(tmp_path):
    from cityscapesscripts.helpers.labels import labels as cs_labels
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    src = layouts.make_cityscapes(tmp_path)
    dst = tmp_path / "out"
    report = _run("cityscapes", src, dst)
    assert report["splits"] == {"train": 2, "val": 1}  # test has no public labels: skipped unless asked
    assert any("test" in n for n in report["notes"])
    for json_path in sorted(src.glob("gtFine/[tv][ra][al]*/*/*_gtFine_polygons.json")):  # train and val
        split, stem = json_path.parts[-3], json_path.name.replace("_gtFine_polygons.json", "")
        reference = tmp_path / f"{stem}_trainIds.png"
        json2labelImg(str(json_path), str(reference), "trainIds")  # the official createTrainIdLabelImgs path
        ids = _read_ids(dst, split, stem)
        np.testing.assert_array_equal(ids, np.asarray(Image.open(reference)))
        assert (dst / "images" / split / f"{stem}.png").samefile(next(src.glob(f"leftImg8bit/*/*/{stem}_*")))
    official = sorted((lab.trainId, lab.name, lab.color) for lab in cs_labels if 0 <= lab.trainId < 255)
    written = _palette(dst)
    assert [n for n, _ in written] == [n for _, n, _ in official]
    assert all(_same_colour(w, o) for (_, w), (_, _, o) in zip(written, official))
    seg = _cfg(dst).dataset.segment
    assert (seg.num_classes, seg.ignore_index, seg.label_transform) == (19, 255, "None")
    assert (dst / "dataset_report.json").is_file()


# objectInfo150.csv of the ADE20K SceneParsing benchmark: Idx -> first name of the Name column.
ADE_OBJECT_INFO = {1: "wall", 2: "building", 3: "sky", 4: "floor", 5: "tree", 13: "person", 21: "car",
                   78: "bar", 79: "arcade machine", 149: "clock", 150: "flag"}


def test_ade20k_reduce_zero_label_and_names(tmp_path):
    src = layouts.make_ade20k(tmp_path / "data")
    dst = tmp_path / "out"
    report = _run("ade20k", src.parent, dst)  # SRC may be the folder holding ADEChallengeData2016
    assert report["splits"] == {"train": 3, "val": 2}
    for ann in sorted(src.glob("annotations/*/*.png")):
        raw = np.asarray(Image.open(ann)).astype(np.int64)
        expected = np.where(raw == 0, 255, raw - 1)  # mmsegmentation's reduce_zero_label
        split = {"training": "train", "validation": "val"}[ann.parent.name]
        np.testing.assert_array_equal(_read_ids(dst, split, ann.stem), expected)
    names = [n for n, _ in _palette(dst)]
    assert len(names) == 150
    assert all(names[idx - 1] == name for idx, name in ADE_OBJECT_INFO.items())


# Pascal VOC devkit: class names and the colours of the SegmentationClass palette (labelcolormap), typed out.
VOC_CLASSES = [("background", (0, 0, 0)), ("aeroplane", (128, 0, 0)), ("bicycle", (0, 128, 0)),
               ("bird", (128, 128, 0)), ("boat", (0, 0, 128)), ("bottle", (128, 0, 128)), ("bus", (0, 128, 128)),
               ("car", (128, 128, 128)), ("cat", (64, 0, 0)), ("chair", (192, 0, 0)), ("cow", (64, 128, 0)),
               ("diningtable", (192, 128, 0)), ("dog", (64, 0, 128)), ("horse", (192, 0, 128)),
               ("motorbike", (64, 128, 128)), ("person", (192, 128, 128)), ("pottedplant", (0, 64, 0)),
               ("sheep", (128, 64, 0)), ("sofa", (0, 192, 0)), ("train", (128, 192, 0)), ("tvmonitor", (0, 64, 128))]


def test_voc_masks_are_linked_unchanged_with_the_voc_classes(tmp_path):
    src = layouts.make_voc(tmp_path)
    dst = tmp_path / "out"
    report = _run("voc", src, dst)
    assert report["splits"] == {"train": 3, "val": 2}
    assert report["files"] == {"images hardlink": 5, "masks hardlink": 5}  # palette indices are the ids already
    for split in ("train", "val"):
        for stem in (src / "VOC2012" / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split():
            original = src / "VOC2012" / "SegmentationClass" / f"{stem}.png"
            assert (dst / "masks" / split / f"{stem}.png").samefile(original)
            np.testing.assert_array_equal(_read_ids(dst, split, stem), np.asarray(Image.open(original)))
    written = _palette(dst)
    assert [n for n, _ in written] == [n for n, _ in VOC_CLASSES]
    assert all(_same_colour(w, o) for (_, w), (_, o) in zip(written, VOC_CLASSES))
    assert report["ignored_pixels"] > 0  # the 255 border stays ignored


def test_voc_aug_reads_segmentation_class_aug_and_its_train_list(tmp_path):
    src = layouts.make_voc(tmp_path, aug=True)
    report = _run("voc", src, tmp_path / "out", aug=True)
    assert report["splits"] == {"train": 4, "val": 2}
    ids = _read_ids(tmp_path / "out", "train", "2008_000123")
    np.testing.assert_array_equal(ids, layouts.blocks([0, 7, 12], 9))


# COCO-Stuff's labels.txt: 1-based ids 1-182; these 11 thing ids were never annotated (COCO 2017 has 80 things).
COCO_UNUSED_1BASED = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]
COCO_LABELS = {1: "person", 2: "bicycle", 11: "fire hydrant", 13: "stop sign", 67: "dining table", 92: "banner",
               101: "carpet", 108: "cupboard", 181: "window-other", 182: "wood"}


def test_coco_stuff_ids_compacted_to_171(tmp_path):
    src = layouts.make_coco_stuff(tmp_path)
    dst = tmp_path / "out"
    report = _run("coco-stuff", src, dst)
    assert report["splits"] == {"train": 2, "val": 1}
    used = [v for v in range(182) if v + 1 not in COCO_UNUSED_1BASED]  # map values = labels.txt id - 1
    table = {v: i for i, v in enumerate(used)} | {255: 255}
    for ann in sorted(src.glob("stuffthingmaps_trainval2017/*/*.png")):
        raw = np.asarray(Image.open(ann))
        split = {"train2017": "train", "val2017": "val"}[ann.parent.name]
        np.testing.assert_array_equal(_read_ids(dst, split, ann.stem), np.vectorize(table.get)(raw))
    names = [n for n, _ in _palette(dst)]
    assert len(names) == 171
    assert all(names[table[k - 1]] == v for k, v in COCO_LABELS.items())


def _draw_reference(shapes: list[dict], classes: list[str]) -> np.ndarray:
    """The test's own rasterisation of LabelMe shapes: PIL, one shape at a time, later shapes on top."""
    out = np.zeros((layouts.H, layouts.W), np.uint8)
    for shape in shapes:
        layer = Image.new("1", (layouts.W, layouts.H), 0)
        draw = ImageDraw.Draw(layer)
        pts = [tuple(p) for p in shape["points"]]
        if shape["shape_type"] == "polygon":
            draw.polygon(pts, fill=1, outline=1)
        elif shape["shape_type"] == "rectangle":
            draw.rectangle(pts, fill=1, outline=1)
        elif shape["shape_type"] == "circle":
            (cx, cy), (px, py) = pts
            r = np.hypot(px - cx, py - cy)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1, outline=1)
        else:
            continue
        out[np.asarray(layer, bool)] = classes.index(shape["label"])
    return out


@pytest.mark.parametrize("fixed", [None, "dog,cat,bird"])
def test_labelme_polygons_match_an_independent_rasterisation(tmp_path, fixed):
    src = layouts.make_labelme(tmp_path)
    dst = tmp_path / "out"
    report = _run("labelme", src, dst, classes=fixed, val_fraction=0.34, seed=1)
    classes = ["background", *(fixed.split(",") if fixed else ["bird", "cat", "dog"])]
    assert [n for n, _ in _palette(dst)] == classes
    assert sum(report["splits"].values()) == 3 and report["splits"]["val"] == 1
    for i, shapes in enumerate(layouts.LABELME_SHAPES):
        stem = f"frame_{i:03d}"
        split = next(s for s in ("train", "val") if (dst / "masks" / s / f"{stem}.png").exists())
        np.testing.assert_array_equal(_read_ids(dst, split, stem), _draw_reference(shapes, classes))
        image = next((dst / "images" / split).glob(f"{stem}.*"))
        assert Image.open(image).size == (layouts.W, layouts.H)
    assert report["files"]["images written"] == 1  # frame_002's image came from imageData


def test_labelme_unknown_label_with_fixed_classes_is_refused(tmp_path):
    src = layouts.make_labelme(tmp_path)
    with pytest.raises(UserError, match=r"'bird'.*--classes"):
        convert("labelme", src, tmp_path / "out", {"classes": "cat,dog"}, progress=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_masks_folder_colour_masks_are_linked_and_read_through_the_found_palette(tmp_path):
    src = layouts.make_masks_folder(tmp_path)
    dst = tmp_path / "out"
    report = _run("masks-folder", src, dst, val_fraction=0.25, seed=0)
    assert report["splits"] == {"train": 3, "val": 1}
    assert report["files"]["masks hardlink"] == 4
    for i in range(4):
        split = next(s for s in ("train", "val") if (dst / "masks" / s / f"img{i}.png").exists())
        np.testing.assert_array_equal(_read_ids(dst, split, f"img{i}"), layouts.blocks([0, 1, 2], i))
    assert [c for _, c in _palette(dst)] == layouts.MASK_COLOURS


def test_masks_folder_grey_values_are_renumbered(tmp_path):
    src = tmp_path / "grey"
    for i in range(3):
        layouts._image(src / "imgs" / "train" / f"{i}.png", i)
        layouts._mask(src / "labels" / "train" / f"{i}.png", layouts.blocks([0, 10, 20, 255], i))
        layouts._image(src / "imgs" / "val" / f"v{i}.png", i)
        layouts._mask(src / "labels" / "val" / f"v{i}.png", layouts.blocks([0, 20], i))
    dst = tmp_path / "out"
    report = _run("masks-folder", src, dst)
    assert report["splits"] == {"train": 3, "val": 3}
    np.testing.assert_array_equal(_read_ids(dst, "train", "1"), layouts.blocks([0, 1, 2, 255], 1))


def test_wrong_layout_names_what_was_expected_and_writes_nothing(tmp_path):
    src = layouts.make_ade20k(tmp_path)
    dst = tmp_path / "out"
    with pytest.raises(UserError) as e:
        convert("cityscapes", src, dst, {}, progress=lambda _: None)
    assert "leftImg8bit/<split>/<city>/" in str(e.value) and "annotations/" in str(e.value)
    assert not dst.exists() and not list(tmp_path.glob(".out*"))


def test_non_empty_destination_refused_unless_overwrite(tmp_path):
    src = layouts.make_masks_folder(tmp_path)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        convert("masks-folder", src, dst, {}, progress=lambda _: None)
    assert sorted(os.listdir(dst)) == ["precious.txt"]
    convert("masks-folder", src, dst, {}, overwrite=True, progress=lambda _: None)
    assert not (dst / "precious.txt").exists() and (dst / "spec.yaml").is_file()


def test_interrupted_convert_leaves_no_half_written_mask(tmp_path, monkeypatch):
    src = layouts.make_cityscapes(tmp_path)
    dst = tmp_path / "out"
    real = tree.encode_ids
    calls = []

    def interrupted(ids, colours):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ids, colours)

    monkeypatch.setattr(tree, "encode_ids", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert("cityscapes", src, dst, {}, progress=lambda _: None)
    assert not dst.exists() and not list(tmp_path.glob(".out*"))
    monkeypatch.setattr(tree, "encode_ids", real)
    convert("cityscapes", src, dst, {}, progress=lambda _: None)  # a rerun starts clean
    assert len(list((dst / "masks").rglob("*.png"))) == 3


def test_unknown_ids_name_the_file_and_values(tmp_path):
    src = layouts.make_coco_stuff(tmp_path)
    bad = src / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png"
    layouts._mask(bad, layouts.blocks([0, 11, 200], 3))  # 11: a thing id without annotations; 200 > 181
    with pytest.raises(UserError, match=r"000000000139\.png.*\[11, 200\]"):
        convert("coco-stuff", src, tmp_path / "out", {}, progress=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_splits_mapping_and_progress_and_summary(tmp_path):
    src = layouts.make_cityscapes(tmp_path)
    report = _run("cityscapes", src, tmp_path / "out", splits="train:training,val:validation,test")
    assert report["splits"] == {"training": 2, "validation": 1, "test": 1}
    seg = _cfg(tmp_path / "out").dataset.segment
    assert (seg.train_split, seg.validation_split, seg.predict_split) == ("training", "validation", "test")
    text = "\n".join(report["lines"])
    assert "training: 2/2 pairs (100%)" in text and "ignored (255):" in text and "pixels per class" in text
    assert json.loads((tmp_path / "out" / "convert_report.json").read_text())["class_pixels"]["road"] > 0


def test_formats_lists_every_converter_and_the_cli_knows_them():
    from segformer_tao.commands.dataset import FORMAT_NAMES
    from segformer_tao.data.convert import formats_text

    assert tuple(FORMATS) == FORMAT_NAMES
    text = formats_text()
    assert all(name in text for name in FORMATS)


@pytest.mark.slow
def test_each_converted_format_trains_one_epoch_with_its_spec(tmp_path):
    from tests.bad_inputs.runner import preload, run_cli_forked

    preload()
    for fmt, make in layouts.BUILDERS.items():
        src = make(tmp_path / fmt)
        dst = tmp_path / f"{fmt}_unet"
        convert(fmt, src, dst, {"val_fraction": 0.34} if fmt in ("labelme",) else {}, progress=lambda _: None)
        result = run_cli_forked("train", "-e", str(dst / "spec.yaml"), f"results_dir={tmp_path}/{fmt}_results",
                                "model=mit_b0", "dataset.segment.img_size=32", "train.num_epochs=1",
                                "dataset.segment.batch_size=2", "dataset.segment.workers=0", "automl_policy=off")
        assert result.returncode == 0, f"{fmt}: {result.output[-3000:]}"
        assert list((tmp_path / f"{fmt}_results" / "train").glob("*.pth")), fmt


def test_hard_links_fall_back_to_symlinks_and_the_summary_says_so(tmp_path, monkeypatch):
    import errno

    src = layouts.make_voc(tmp_path)

    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    report = _run("voc", src, tmp_path / "sym")
    assert report["files"] == {"images symlink": 5, "masks symlink": 5}
    assert "files: 5 images symlink, 5 masks symlink" in "\n".join(report["lines"])
    assert (tmp_path / "sym" / "images" / "train" / "2007_000032.jpg").is_symlink()
    copied = convert("voc", src, tmp_path / "copy", {}, link="copy", progress=lambda _: None)
    assert copied["files"] == {"images copy": 5, "masks copy": 5}
    image = tmp_path / "copy" / "images" / "train" / "2007_000032.jpg"
    assert not image.is_symlink() and image.stat().st_nlink == 1
    assert image.read_bytes() == (src / "VOC2012" / "JPEGImages" / "2007_000032.jpg").read_bytes()


def test_cli_convert_prints_progress_and_summary(tmp_path):
    from tests.conftest import run_cli

    src = layouts.make_masks_folder(tmp_path)
    result = run_cli("dataset", "convert", "--format", "masks-folder", str(src), str(tmp_path / "out"), "--no-check")
    assert result.returncode == 0, result.output
    for needle in ("Found 4 pairs", "train: 3/3 pairs (100%)", "4 images hardlink, 4 masks hardlink",
                   "ignored (255): 0.0%", f"segformer train -e {tmp_path / 'out' / 'spec.yaml'}"):
        assert needle in result.stdout, (needle, result.stdout)


def test_masks_folder_binary_masks_are_linked_and_read_with_norm(tmp_path):
    src = tmp_path / "bin"
    for i in range(3):
        layouts._image(src / "images" / f"{i}.png", i)
        layouts._mask(src / "masks" / f"{i}.png", layouts.blocks([0, 255], i))
    dst = tmp_path / "out"
    report = _run("masks-folder", src, dst)
    assert report["files"]["masks hardlink"] == 3
    assert _cfg(dst).dataset.segment.label_transform == "norm"
    split = next(s for s in ("train", "val") if (dst / "masks" / s / "1.png").exists())
    np.testing.assert_array_equal(_read_ids(dst, split, "1"), layouts.blocks([0, 255], 1) // 255)
    assert report["class_pixels"]["foreground"] > 0 and report["ignored_pixels"] == 0
