"""Calibration batches for INT8 (ONNX Runtime Q/DQ and TensorRT's legacy calibrator) from image folders."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from segformer_tao.errors import UserError


def rebatch(batches: Iterable[torch.Tensor], batch_size: int, max_batches: int,
            drop_remainder: bool = True) -> Iterator[torch.Tensor]:
    """Regroup NCHW tensors into exactly ``batch_size`` images per batch, at most ``max_batches`` batches.

    A trailing remainder smaller than ``batch_size`` is dropped when ``drop_remainder`` (TensorRT's calibrator
    expects a fixed batch) and kept otherwise (ONNX Runtime calibration takes any batch of a dynamic-batch model).
    """
    pending: list[torch.Tensor] = []
    count, emitted = 0, 0
    for batch in batches:
        if emitted >= max_batches:
            return
        pending.append(batch)
        count += batch.shape[0]
        while count >= batch_size and emitted < max_batches:
            stacked = torch.cat(pending)
            yield stacked[:batch_size].contiguous()
            emitted += 1
            pending, count = [stacked[batch_size:]], count - batch_size
    if not drop_remainder and count and emitted < max_batches:
        yield torch.cat(pending).contiguous()


def _folder_images(image_dirs: Sequence[str], img_size: int, mean: Sequence[float], std: Sequence[float],
                   limit: int, key: str) -> Iterator[torch.Tensor]:
    """(1, 3, S, S) tensors for up to ``limit`` images of the folders (local or s3://), through the shared loader and
    ``preprocess_image``, so calibration sees exactly what every runtime sees."""
    from segformer_tao.data.calibration import calibration_files
    from segformer_tao.data.loader import ImageFiles, make_loader

    files = calibration_files(image_dirs, limit, key)
    for batch in make_loader(ImageFiles(files, img_size, mean, std), batch_size=1, workers=0):
        yield batch["image"]


def calibration_batches(image_dirs: str | Sequence[str], *, img_size: int, mean: Sequence[float],
                        std: Sequence[float], batch_size: int, max_batches: int, key: str,
                        drop_remainder: bool = True, require_all: bool = False) -> list[torch.Tensor]:
    """Preprocessed (normalized, img_size x img_size) calibration images as a list of NCHW float32 batches.

    Reads at most batch_size * max_batches images from the folders, in name order. ``key`` names the config
    key in error messages. With ``require_all`` fewer than batch_size * max_batches images is a UserError
    (TensorRT's calibrator is asked for exactly that many).
    """
    dirs = [image_dirs] if isinstance(image_dirs, str) else list(image_dirs or [])
    limit = batch_size * max_batches
    streams = _folder_images([str(d) for d in dirs], img_size, mean, std, limit, key)
    batches = list(rebatch(streams, batch_size, max_batches, drop_remainder))
    found = sum(int(b.shape[0]) for b in batches)
    if require_all and (len(batches) < max_batches or found < limit):
        raise UserError(f"{key}={dirs} holds fewer calibration images than the {limit} needed (batches of "
                        f"{batch_size} x {max_batches} batches; found {found} usable). Add images, or lower "
                        "gen_trt_engine.tensorrt.calibration.cal_batches / cal_batch_size.")
    if not batches:
        raise UserError(f"No calibration images found in {key}={dirs} (or fewer than one batch of {batch_size}). "
                        "Put .png/.jpg images there.")
    return batches
