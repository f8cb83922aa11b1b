"""`segformer inference`: label-id PNG masks at each image's original size + colour overlays.

Masks go to ``masks/<stem>.png`` (pixel value = class id), overlays (image blended with the palette colours)
to ``overlays/<stem>.png`` every ``vis_after_n_batches`` batches. ``inference.sliding_window`` runs images
larger than img_size as overlapping img_size windows; ``inference.flip_tta`` averages with the mirrored image.
"""

from __future__ import annotations

import io as _io
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig

from segformer_tao import io, status
from segformer_tao.data import build_dataloader
from segformer_tao.deploy.base import predict_logits, resize_logits, sliding_window_logits
from segformer_tao.deploy.runtime import open_for_action
from segformer_tao.engine.visualize import label_png_array, overlay, write_png
from segformer_tao.errors import UserError, out_of_memory


def read_rgb(path: str) -> np.ndarray:
    """An image file (local or s3://) as (H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(_io.BytesIO(io.read_bytes(path))) as im:
        return np.asarray(im.convert("RGB"))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(str(path)))[0]


def _predict_batch(cfg: DictConfig, runtime, batch: dict) -> list[torch.Tensor]:
    """Class-id maps (H, W) at each image's original size."""
    inf = cfg.inference
    size = int(runtime.meta.img_size)
    preds: list[torch.Tensor | None] = [None] * len(batch["path"])
    if inf.sliding_window:
        from segformer_tao.data.transforms import preprocess_image

        def prep(crop: np.ndarray) -> torch.Tensor:
            return preprocess_image(crop, size, runtime.meta.mean, runtime.meta.std)

        for i, path in enumerate(batch["path"]):
            h, w = (int(v) for v in batch["orig_size"][i])
            if max(h, w) > size:
                preds[i] = sliding_window_logits(runtime, read_rgb(path), prep, size, bool(inf.flip_tta)).argmax(1)[0]
    todo = [i for i, p in enumerate(preds) if p is None]
    if todo:
        logits = predict_logits(runtime, batch["image"][todo], bool(inf.flip_tta))
        for j, i in enumerate(todo):
            preds[i] = resize_logits(logits[j : j + 1], tuple(int(v) for v in batch["orig_size"][i])).argmax(1)[0]
    return preds


def run(cfg: DictConfig) -> dict:
    """Predict dataset.segment.predict_split with cfg.inference.checkpoint / onnx_file / trt_engine."""
    out_dir = str(cfg.inference.results_dir)
    runtime = open_for_action(cfg, "inference")
    meta = runtime.meta
    loader = build_dataloader(cfg, "predict", "predict", batch_size=int(cfg.inference.batch_size))
    vis_every = int(cfg.inference.vis_after_n_batches)
    start, images, overlays = time.monotonic(), 0, 0
    pixels = torch.zeros(meta.num_classes, dtype=torch.int64)  # predicted pixels per class
    try:
        for batch_idx, batch in enumerate(loader):
            for path, pred in zip(batch["path"], _predict_batch(cfg, runtime, batch)):
                pixels += torch.bincount(pred.flatten().cpu().long(), minlength=meta.num_classes)
                labels = label_png_array(pred, meta.num_classes)
                write_png(os.path.join(out_dir, "masks", _stem(path) + ".png"), labels)
                if batch_idx % vis_every == 0:
                    write_png(os.path.join(out_dir, "overlays", _stem(path) + ".png"),
                              overlay(read_rgb(path), labels, meta.palette))
                    overlays += 1
                images += 1
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise out_of_memory(cfg, "inference") from e
    if images == 0:
        raise UserError(f"No images found in split '{cfg.dataset.segment.predict_split}' under "
                        f"{cfg.dataset.segment.root_dir}/images. Check dataset.segment.predict_split and root_dir.")
    seconds = time.monotonic() - start
    print(f"inference ({runtime.label}): {images} masks -> {os.path.join(out_dir, 'masks')}, {overlays} overlays -> "
          f"{os.path.join(out_dir, 'overlays')}")
    metrics = {"images": images, "overlays": overlays, "seconds": round(seconds, 3),
               "images_per_s": round(images / max(seconds, 1e-9), 3)}
    status.write_status(out_dir, status.RUNNING, f"Inference finished ({runtime.name}): {images} masks.",
                        kpi=metrics, categorical={"predicted_pixels": dict(zip(meta.class_names,
                                                                               pixels.tolist()))})
    return {"metrics": metrics,
            "artifacts": {"masks": os.path.join(out_dir, "masks"), "overlays": os.path.join(out_dir, "overlays")}}
