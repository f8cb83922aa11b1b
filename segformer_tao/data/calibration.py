"""Calibration images for INT8 quantization and TensorRT calibration (local folders or s3:// prefixes)."""

from __future__ import annotations

from collections.abc import Sequence

from segformer_tao import io
from segformer_tao.data import storage
from segformer_tao.errors import UserError

KEY = "dataset.segment.quant_calibration_dataset.images_dir"


def calibration_files(image_dirs: str | Sequence[str], limit: int, key: str = KEY) -> list[str]:
    """Up to ``limit`` png/jpg/jpeg/bmp/tif images of the folders (subfolders are not searched), each folder's in name
    order so the choice is reproducible. ``key`` names the config key in errors."""
    dirs = [image_dirs] if isinstance(image_dirs, str) else list(image_dirs or [])
    if not dirs or not all(dirs):
        raise UserError(f"{key} is not set: INT8 calibration needs a folder of representative images (a few hundred "
                        "images like the ones the model will see, e.g. the training images folder).")
    files: list[str] = []
    for folder in (str(d).rstrip("/") for d in dirs):
        try:
            found = storage.list_files(folder, storage.IMAGE_EXTS)
        except FileNotFoundError as e:
            raise UserError(f"{key}='{folder}' does not exist. Point it at a folder of images"
                            f"{' (s3:// prefix)' if io.is_remote(folder) else ''}.") from e
        if not found:
            raise UserError(f"{key}='{folder}' holds no png/jpg/jpeg/bmp/tif images.")
        files += [found[stem] for stem in sorted(found)]
    return files[:limit]
