"""An image whose header declares more pixels than dataset.segment.max_image_pixels is refused by name and size
before it is decoded (issue 34, finding 7: a 20 KB PNG declaring 169 Mpx took 2.4 GB of RAM)."""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from segformer_tao.data.decode import MaskDecoder, decode_image
from segformer_tao.errors import UserError
from tests.conftest import assert_user_error, run_cli
from tests.crafted import bomb_png


def _png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def test_image_over_the_default_limit_is_refused_before_decoding():
    data = bomb_png(13000, 13000)  # 169 Mpx, under PIL's own error threshold (2 x 89.5 Mpx): PIL would decode it
    assert len(data) < 30_000
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        decode_image(data, "images/val/huge.png")
    assert time.monotonic() - t0 < 1
    for needle in ("images/val/huge.png", "13000x13000", "169000000", "dataset.segment.max_image_pixels"):
        assert needle in str(e.value), str(e.value)


def test_image_over_pils_own_error_threshold_is_the_same_user_error():
    with pytest.raises(UserError, match="dataset.segment.max_image_pixels"):
        decode_image(bomb_png(20000, 20000), "big.png")


def test_the_limit_is_the_users_to_set():
    img = np.zeros((16, 20, 3), np.uint8)
    mask = np.zeros((16, 20), np.uint8)
    assert decode_image(_png(img), "x.png", max_pixels=320).shape == (16, 20, 3)
    with pytest.raises(UserError, match="16x20|20x16"):
        decode_image(_png(img), "x.png", max_pixels=319)
    assert MaskDecoder(3, max_pixels=320)(_png(mask), "m.png").shape == (16, 20)
    with pytest.raises(UserError, match="max_image_pixels"):
        MaskDecoder(3, max_pixels=319)(_png(mask), "m.png")


@pytest.mark.slow
def test_dataset_check_names_the_file(tmp_path):
    from segformer_tao.data.synthetic import make_demo_dataset

    root = str(make_demo_dataset(str(tmp_path / "d"), size=32, train=2, val=2, test=2))
    with open(os.path.join(root, "images", "val", "0001.png"), "wb") as f:
        f.write(bomb_png(13000, 13000))
    result = run_cli("dataset", "check", f"dataset.segment.root_dir={root}", "dataset.segment.num_classes=3",
                     "dataset.segment.label_transform=None", "--full", cwd=str(tmp_path))
    assert_user_error(result, "0001.png", "13000x13000", "dataset.segment.max_image_pixels")
    shutil.rmtree(root)


def test_the_default_is_the_schemas():
    from segformer_tao.config.schema import DatasetSegmentConfig
    from segformer_tao.data.decode import MAX_IMAGE_PIXELS

    assert DatasetSegmentConfig().max_image_pixels == MAX_IMAGE_PIXELS
