"""UnetSegmentationDataset, loaders, mask semantics and the bad inputs users hit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from segformer_tao.data import UnetSegmentationDataset, build_dataloader
from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.errors import UserError
from tests.data.conftest import make_cfg


def _write(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _tiny_root(tmp_path, masks: dict, images: dict | None = None):
    """Dataset root with split 'train': images (HxWx3 uint8, default grey 20x30) and masks by file name."""
    for name, mask in masks.items():
        _write(tmp_path / "masks" / "train" / name, mask)
    for name, img in (images or {n.rsplit(".", 1)[0] + ".png": None for n in masks}).items():
        shape = next(iter(masks.values())).shape[:2]
        _write(tmp_path / "images" / "train" / name, img if img is not None else np.full((*shape, 3), 90, np.uint8))
    return tmp_path


def test_demo_dataset_is_deterministic(tmp_path):
    a = make_demo_dataset(tmp_path / "a", size=32, train=3, val=1, test=1, seed=5)
    b = make_demo_dataset(tmp_path / "b", size=32, train=3, val=1, test=1, seed=5)
    c = make_demo_dataset(tmp_path / "c", size=32, train=3, val=1, test=1, seed=6)
    for rel in ["images/train/0002.png", "masks/train/0002.png", "masks/val/0000.png"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "images/train/0002.png").read_bytes() != (c / "images/train/0002.png").read_bytes()
    assert "label_transform: None" in (a / "spec.yaml").read_text()


def test_modes_shapes_and_dtypes(demo_cfg):
    train = UnetSegmentationDataset(demo_cfg, "train", "train")[0]
    assert train["image"].shape == (3, 32, 32) and train["image"].dtype == torch.float32
    assert train["mask"].shape == (32, 32) and train["mask"].dtype == torch.int64
    ev = UnetSegmentationDataset(demo_cfg, "val", "eval")[1]
    assert ev["image"].shape == (3, 32, 32) and ev["mask"].shape == (48, 48) and ev["orig_size"] == (48, 48)
    pred = UnetSegmentationDataset(demo_cfg, "predict", "predict")[0]
    assert set(pred) == {"image", "orig_size", "path"} and pred["path"].endswith("test/0000.png")


def test_eval_loader_keeps_original_resolution_masks(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:25] = 1
    mask[0, 0] = 255
    root = _tiny_root(tmp_path, {"a.png": mask, "b.png": mask.T.copy()},
                      images={"a.jpg": np.full((20, 30, 3), 90, np.uint8), "b.bmp": np.full((30, 20, 3), 9, np.uint8)})
    cfg = make_cfg(root, label_transform="None", img_size=16, test_split="train")
    batch = next(iter(build_dataloader(cfg, "test", "eval")))
    assert batch["image"].shape == (2, 3, 16, 16)
    assert [tuple(m.shape) for m in batch["mask"]] == [(20, 30), (30, 20)]
    assert batch["orig_size"] == [(20, 30), (30, 20)]
    assert batch["mask"][0][0, 0] == 255 and batch["mask"][0][6, 6] == 1  # ignore index kept as is


def test_pairs_by_stem_not_sort_order(tmp_path):
    # sorted file names pair wrongly here ('a-1.png' < 'a.jpg' but 'a.png' < 'a_1.png')
    masks = {"a.png": np.full((8, 8), 1, np.uint8), "a_1.png": np.full((8, 8), 2, np.uint8),
             "a-1.png": np.full((8, 8), 0, np.uint8)}
    images = {"a.jpg": np.full((8, 8, 3), 100, np.uint8), "a_1.png": np.full((8, 8, 3), 200, np.uint8),
              "a-1.tif": np.full((8, 8, 3), 0, np.uint8)}
    root = _tiny_root(tmp_path, masks, images)
    ds = UnetSegmentationDataset(make_cfg(root, num_classes=3, label_transform="None", test_split="train"),
                                 "test", "eval")
    for item in ds:
        expected = {"a": 1, "a_1": 2, "a-1": 0}[item["path"].rsplit("/", 1)[1].rsplit(".", 1)[0]]
        assert int(item["mask"][0, 0]) == expected


def test_label_transform_norm_maps_binary_255(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5] = 255
    root = _tiny_root(tmp_path, {"m.png": mask})
    item = UnetSegmentationDataset(make_cfg(root, test_split="train"), "test", "eval")[0]  # default norm
    assert sorted(item["mask"].unique().tolist()) == [0, 1]


def test_norm_on_class_id_masks_is_an_error_naming_the_fix(tmp_path):
    root = _tiny_root(tmp_path, {"ids.png": np.array([[0, 1], [2, 0]], np.uint8)})
    with pytest.raises(UserError, match=r"ids\.png.*\[1, 2\].*label_transform=None"):
        UnetSegmentationDataset(make_cfg(root, num_classes=3, test_split="train"), "test", "eval")[0]


def test_mask_value_ge_num_classes_names_file_and_value(tmp_path):
    root = _tiny_root(tmp_path, {"bad.png": np.array([[0, 1], [7, 255]], np.uint8)})
    cfg = make_cfg(root, num_classes=3, label_transform="None", test_split="train")
    with pytest.raises(UserError, match=r"bad\.png.*\[7\].*num_classes=3"):
        UnetSegmentationDataset(cfg, "test", "eval")[0]


def test_sixteen_bit_masks_and_grey_palette_remap(tmp_path):
    mask16 = np.array([[0, 300], [300, 0]], np.uint16)
    root = _tiny_root(tmp_path, {"m.png": mask16})
    palette = [{"label_id": 0, "rgb": [0, 0, 0]}, {"label_id": 1, "rgb": [300, 300, 300]}]
    cfg = make_cfg(root, label_transform="None", palette=palette, test_split="train")
    assert UnetSegmentationDataset(cfg, "test", "eval")[0]["mask"].tolist() == [[0, 1], [1, 0]]


def test_rgb_palette_masks_and_unknown_colour(tmp_path):
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[:2] = (230, 40, 40)
    mask[3, 3] = (255, 255, 255)  # the ignore colour
    root = _tiny_root(tmp_path, {"c.png": mask})
    palette = [{"label_id": 0, "rgb": [0, 0, 0]}, {"label_id": 1, "rgb": [230, 40, 40]}]
    cfg = make_cfg(root, label_transform="None", palette=palette, test_split="train")
    out = UnetSegmentationDataset(cfg, "test", "eval")[0]["mask"]
    assert out[0, 0] == 1 and out[2, 0] == 0 and out[3, 3] == 255
    mask[0, 0] = (1, 2, 3)
    _write(tmp_path / "masks" / "train" / "c.png", mask)
    with pytest.raises(UserError, match=r"c\.png.*\(1, 2, 3\).*palette"):
        UnetSegmentationDataset(cfg, "test", "eval")[0]


def test_grey_and_rgba_images_become_rgb(tmp_path):
    masks = {"g.png": np.zeros((6, 6), np.uint8), "r.png": np.zeros((6, 6), np.uint8)}
    images = {"g.png": np.full((6, 6), 77, np.uint8), "r.png": np.full((6, 6, 4), 200, np.uint8)}
    root = _tiny_root(tmp_path, masks, images)
    cfg = make_cfg(root, img_size=6, test_split="train")
    cfg.dataset.segment.augmentation.mean, cfg.dataset.segment.augmentation.std = [0, 0, 0], [1, 1, 1]
    items = list(UnetSegmentationDataset(cfg, "test", "eval"))
    assert all(i["image"].shape == (3, 6, 6) for i in items)
    assert torch.allclose(items[0]["image"], torch.full((3, 6, 6), 77 / 255))


@pytest.mark.parametrize("root_dir, match", [(None, "root_dir is not set"), ("/nonexistent/x", "does not exist")])
def test_root_dir_missing(root_dir, match):
    cfg = make_cfg("/tmp")
    cfg.dataset.segment.root_dir = root_dir
    with pytest.raises(UserError, match=match):
        UnetSegmentationDataset(cfg, "train")


def test_root_dir_empty(tmp_path):
    with pytest.raises(UserError, match="is empty"):
        UnetSegmentationDataset(make_cfg(tmp_path), "train")


def test_split_folder_missing_names_folder_and_key(demo_cfg):
    demo_cfg.dataset.segment.validation_split = "valid"
    with pytest.raises(UserError, match=r"masks/valid|images/valid.*validation_split"):
        UnetSegmentationDataset(demo_cfg, "val", "eval")


def test_unpaired_files_listed(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "d")
    (root / "masks" / "train" / "0001.png").unlink()
    (root / "masks" / "train" / "0004.png").rename(root / "masks" / "train" / "extra.png")
    with pytest.raises(UserError, match=r"2 image\(s\) without a mask.*0001\.png, 0004\.png.*extra\.png"):
        UnetSegmentationDataset(make_cfg(root, num_classes=4, label_transform="None"), "train")


def test_corrupt_image_names_file(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "d")
    (root / "images" / "train" / "0002.png").write_bytes(b"\x89PNG not really")
    ds = UnetSegmentationDataset(make_cfg(root, num_classes=4, label_transform="None"), "train")
    with pytest.raises(UserError, match=r"Cannot read image .*0002\.png"):
        ds[2]


def test_size_mismatch(tmp_path):
    root = _tiny_root(tmp_path, {"a.png": np.zeros((8, 8), np.uint8)}, images={"a.png": np.zeros((8, 9, 3), np.uint8)})
    with pytest.raises(UserError, match=r"a\.png.*9x8.*8x8"):
        UnetSegmentationDataset(make_cfg(root, test_split="train"), "test", "eval")[0]
