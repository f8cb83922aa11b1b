"""Calibration images: a folder of images, or TAO's layout (<images_dir>/images/test/) under a dataset root."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from segformer_tao.data.calibration import calibration_files
from segformer_tao.errors import UserError


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / n)


def test_a_folder_of_images_is_read_as_it_is(tmp_path):
    _images(tmp_path, ["b.png", "a.jpg"])
    _images(tmp_path / "images" / "test", ["z.png"])  # not looked at: the folder has images itself
    assert calibration_files(str(tmp_path), 10) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]


def test_a_dataset_root_is_read_at_taos_images_test(tmp_path, caplog):
    _images(tmp_path / "images" / "test", ["t2.png", "t1.png"])
    _images(tmp_path / "images" / "train", ["x.png"])
    with caplog.at_level(logging.INFO, logger="segformer_tao"):
        files = calibration_files(str(tmp_path), 10)
    assert files == [str(tmp_path / "images" / "test" / n) for n in ("t1.png", "t2.png")]
    lines = [r.getMessage() for r in caplog.records if "images/test" in r.getMessage()]
    assert len(lines) == 1 and "holds no images itself" in lines[0]


def test_neither_images_nor_taos_layout_is_a_user_error(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"images_dir=.*holds no png/jpg/jpeg/bmp/tif images \(nor does its "
                                        r"images/test/, where TAO looks\)"):
        calibration_files(str(tmp_path), 10)
