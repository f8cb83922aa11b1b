"""Calibration images for INT8 quantization and TensorRT calibration (local folder or s3:// prefix)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from segformer_tao import io
from segformer_tao.data import storage
from segformer_tao.data.decode import decode_image
from segformer_tao.data.transforms import preprocess_image
from segformer_tao.errors import UserError

KEY = "dataset.segment.quant_calibration_dataset.images_dir"


class CalibrationImages:
    """Iterable of float32 (N, 3, S, S) batches, preprocessed exactly like inference (resize + mean/std).

    Args:
        images_dir: folder (or s3:// prefix) of png/jpg/jpeg/bmp/tif images; subfolders are not searched.
        img_size: side S in pixels.
        mean, std: per-channel normalisation in 0-1 units.
        batch_size: images per batch (the last batch may be smaller).
        max_images: use at most this many images (sorted by name, so the choice is reproducible).
    """

    def __init__(self, images_dir: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                 batch_size: int = 8, max_images: int | None = None) -> None:
        if not images_dir:
            raise UserError(f"{KEY} is not set: quantization needs a folder of calibration images (a few hundred "
                            "images like the ones the model will see, e.g. the training images folder).")
        self.images_dir = str(images_dir).rstrip("/")
        try:
            files = storage.list_files(self.images_dir, storage.IMAGE_EXTS)
        except FileNotFoundError as e:
            raise UserError(f"{KEY}='{images_dir}' does not exist. Point it at a folder of images"
                            f"{' (s3:// prefix)' if io.is_remote(self.images_dir) else ''}.") from e
        if not files:
            raise UserError(f"{KEY}='{images_dir}' holds no png/jpg/jpeg/bmp/tif images.")
        self.files = [files[stem] for stem in sorted(files)][:max_images]
        self.img_size, self.mean, self.std = int(img_size), list(mean), list(std)
        self.batch_size = max(1, int(batch_size))

    @property
    def num_images(self) -> int:
        return len(self.files)

    def __len__(self) -> int:
        """Number of batches."""
        return -(-len(self.files) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.files), self.batch_size):
            batch = self.files[start:start + self.batch_size]
            data = dict(storage.read_many(batch))  # remote files are fetched concurrently
            yield torch.stack([preprocess_image(decode_image(data[f], f), self.img_size, self.mean, self.std)
                               for f in batch])
