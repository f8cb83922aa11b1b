"""`segformer inference`: label-id PNG masks at each image's original size + colour overlays.

Inputs: ``inference.source`` (an image, a folder, a glob, a text list, an s3:// prefix or a video; see
segformer_tao/data/sources.py) or, TAO's way, dataset.segment.root_dir's predict_split. Masks go to
``masks/<name>.png`` (pixel value = class id), overlays (image blended with the palette colours) to
``overlays/<name>.png`` every ``vis_after_n_batches`` batches; ``<name>`` keeps a source file's path relative
to the source (the predict split's: the file stem). A video writes ``masks/<video>/<frame>.png`` (or one lossless
mask video, ``inference.video_masks=video``) and ``overlays/<video>.mp4`` at its frame rate.
``inference.sliding_window`` runs images larger than img_size as overlapping img_size windows;
``inference.flip_tta`` averages with the mirrored image. Images are decoded and resized in loader workers;
masks and overlays are written by a small thread pool while the model runs the next batch.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig

from segformer_tao import status
from segformer_tao.data.loader import ImageFiles, eval_loader, make_loader
from segformer_tao.data.outputs import OutputWriter
from segformer_tao.deploy.base import labels_at, predict_logits, sliding_window_logits
from segformer_tao.deploy.runtime import open_for_action
from segformer_tao.engine.visualize import label_png_array, overlay, write_png
from segformer_tao.errors import UserError, out_of_memory

log = logging.getLogger("segformer_tao")

class SourceImages(ImageFiles):
    """:class:`ImageFiles` that also hands over the decoded ``rgb`` where it is needed (overlay batches, images
    the sliding window splits), so nothing is read or decoded twice."""

    def __init__(self, files, img_size, mean, std, names, batch_size: int, vis_every: int, window: int,
                 max_pixels: int | None = None) -> None:
        super().__init__(files, img_size, mean, std, names=names, max_pixels=max_pixels)
        self.batch_size, self.vis_every, self.window = batch_size, vis_every, window

    def __getitem__(self, index: int) -> dict:
        from segformer_tao.data import storage
        from segformer_tao.data.decode import decode_image
        from segformer_tao.data.transforms import preprocess_image

        path = self.files[index]
        rgb = decode_image(storage.read_bytes(path), path, self.max_pixels)
        keep = (index // self.batch_size) % self.vis_every == 0 or (self.window and max(rgb.shape[:2]) > self.window)
        return {"image": preprocess_image(rgb, self.img_size, self.mean, self.std), "orig_size": tuple(rgb.shape[:2]),
                "path": path, "name": self.names[index], "rgb": rgb if keep else None}


def _predict_batch(cfg: DictConfig, runtime, batch: dict) -> list[torch.Tensor]:
    """Class-id maps (H, W) at each image's original size."""
    inf = cfg.inference
    size = int(runtime.meta.img_size)
    preds: list[torch.Tensor | None] = [None] * len(batch["path"])
    if inf.sliding_window:
        from segformer_tao.data.transforms import preprocess_image

        def prep(crop: np.ndarray) -> torch.Tensor:
            return preprocess_image(crop, size, runtime.meta.mean, runtime.meta.std)

        for i, rgb in enumerate(batch["rgb"]):
            if max(rgb.shape[:2]) > size if rgb is not None else False:
                logits = sliding_window_logits(runtime, rgb, prep, size, bool(inf.flip_tta))
                preds[i] = labels_at(logits, rgb.shape[:2])[0]
    todo = [i for i, p in enumerate(preds) if p is None]
    if todo:
        logits = predict_logits(runtime, batch["image"][todo], bool(inf.flip_tta))
        for j, i in enumerate(todo):
            preds[i] = labels_at(logits[j : j + 1], tuple(int(v) for v in batch["orig_size"][i]))[0]
    return preds


def _save(out_dir: str, name: str, labels: np.ndarray, rgb: np.ndarray | None, palette) -> None:
    """One image's mask (and overlay when ``rgb``); runs on the writer pool."""
    write_png(os.path.join(out_dir, "masks", name + ".png"), labels)
    if rgb is not None:
        write_png(os.path.join(out_dir, "overlays", name + ".png"), overlay(rgb, labels, palette))


def _worker_error(e: UserError) -> UserError:
    """A UserError raised in a loader worker arrives re-wrapped around the worker's traceback text: keep just the
    paragraph (what follows the last ``segformer_tao.errors.<Type>: ``)."""
    text = str(e)
    at = text.rfind("\nsegformer_tao.errors.")
    if not text.startswith("Caught ") or at < 0 or ": " not in text[at:]:
        return e
    return type(e)(text[at:].split(": ", 1)[1].strip())


def _source_dataset(cfg: DictConfig, meta: dict, batch_size: int, src):
    """(dataset, what to name it in messages) for the listed inference.source ``src`` or, without it (None), the
    predict split."""
    from segformer_tao.data import sources

    inf, seg = cfg.inference, cfg.dataset.segment
    if src is not None:
        sources.note_skipped(src)
        files, names, what = src.files, src.names, f"inference.source='{inf.source}'"
    else:
        from segformer_tao.data.dataset import UnetSegmentationDataset

        split = UnetSegmentationDataset(cfg, "predict", "predict")
        files = [s.image for s in (split._local or split.samples)]
        names = [s.stem for s in split.samples]
        what = f"split '{seg.predict_split}' of {seg.root_dir}"
    window = int(meta.img_size) if inf.sliding_window else 0
    return SourceImages(files, meta.img_size, meta.mean, meta.std, names, batch_size,
                        int(inf.vis_after_n_batches), window, seg.get("max_image_pixels")), what


def _run_images(cfg: DictConfig, runtime, out_dir: str, pixels: torch.Tensor, src) -> tuple[int, int]:
    meta = runtime.meta
    batch_size = int(cfg.inference.batch_size)
    dataset, what = _source_dataset(cfg, meta, batch_size, src)
    images = overlays = 0
    with OutputWriter(threads=2, pending=2 * batch_size + 2) as writer:
        try:
            for batch in eval_loader(cfg, dataset, batch_size):
                for name, pred, rgb in zip(batch["name"], _predict_batch(cfg, runtime, batch), batch["rgb"]):
                    pixels += torch.bincount(pred.flatten().cpu().long(), minlength=meta.num_classes)
                    overlay_rgb = rgb if (images // batch_size) % int(cfg.inference.vis_after_n_batches) == 0 else None
                    writer.submit(_save, out_dir, name, label_png_array(pred, meta.num_classes), overlay_rgb,
                                  meta.palette)
                    overlays += overlay_rgb is not None
                    images += 1
        except UserError as e:
            raise _worker_error(e) from None
    if images == 0:
        raise UserError(f"No images found in {what}. Check the path.")
    return images, overlays


def _run_video(cfg: DictConfig, runtime, out_dir: str, pixels: torch.Tensor, path: str, name: str) -> tuple[int, int]:
    """Stream a video: per-frame masks (PNGs, or a lossless FFV1 mask video) and an overlay video at its rate."""
    from segformer_tao.data.video import VideoFrames, VideoWriter, probe

    meta, inf = runtime.meta, cfg.inference
    info = probe(path)
    frames_total = info["frames"]
    batch_size = int(inf.batch_size)
    reader = VideoFrames(path, meta.img_size, meta.mean, meta.std, name)
    loader = make_loader(reader, batch_size=batch_size, workers=min(1, int(cfg.dataset.segment.workers)))
    size = (info["width"], info["height"])
    overlay_video = VideoWriter(os.path.join(out_dir, "overlays", name + ".mp4"), info["fps"], *size)
    mask_video = (VideoWriter(os.path.join(out_dir, "masks", name + ".mkv"), info["fps"], *size, gray=True)
                  if inf.video_masks == "video" else None)
    start, frames, every = time.monotonic(), 0, max(1, (frames_total or 100) // 10)
    ok = False
    try:
        with OutputWriter(threads=2, pending=2 * batch_size + 2) as writer:
            for batch in loader:
                for frame_name, pred, rgb in zip(batch["name"], _predict_batch(cfg, runtime, batch), batch["rgb"]):
                    pixels += torch.bincount(pred.flatten().cpu().long(), minlength=meta.num_classes)
                    labels = label_png_array(pred, meta.num_classes)
                    if mask_video is not None:
                        mask_video.write(labels)
                    else:
                        writer.submit(write_png, os.path.join(out_dir, "masks", frame_name + ".png"), labels)
                    overlay_video.write(overlay(rgb, labels, meta.palette))
                    frames += 1
                    if frames % every == 0:
                        _progress(name, frames, frames_total, time.monotonic() - start)
        ok = True
    except UserError as e:
        raise _worker_error(e) from None
    finally:
        for video in (overlay_video, mask_video):
            if video is not None:
                video.close(ok)
    if frames == 0:
        raise UserError(f"Video '{path}' holds no frames that could be decoded. Check the file.")
    return frames, frames


def _progress(name: str, done: int, total: int, seconds: float) -> None:
    rate = done / max(seconds, 1e-9)
    if total:
        left = max(0.0, (total - done) / max(rate, 1e-9))
        eta = time.strftime("%H:%M:%S", time.gmtime(left))
        log.info("video %s: frame %d/%d (%d%%) %.2f frames/s | ETA %s", name, done, total, 100 * done // total, rate,
                 eta)
    else:
        log.info("video %s: frame %d, %.2f frames/s", name, done, rate)


def run(cfg: DictConfig) -> dict:
    """Predict inference.source (or dataset.segment.predict_split) with cfg.inference.checkpoint / onnx_file /
    trt_engine."""
    from segformer_tao.data import sources

    out_dir = str(cfg.inference.results_dir)
    src = sources.list_source(str(cfg.inference.source)) if cfg.inference.get("source") else None
    runtime = open_for_action(cfg, "inference")
    meta = runtime.meta
    start = time.monotonic()
    pixels = torch.zeros(meta.num_classes, dtype=torch.int64)  # predicted pixels per class
    try:
        if src is not None and src.video:
            images, overlays = _run_video(cfg, runtime, out_dir, pixels, src.video, src.names[0])
        else:
            images, overlays = _run_images(cfg, runtime, out_dir, pixels, src)
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise out_of_memory(cfg, "inference") from e
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
