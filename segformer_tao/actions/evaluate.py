"""`segformer evaluate`: mIoU and per-class metrics at each mask's original resolution, for any runtime.

Writes results.json, per_class.csv, confusion_matrix.png and, every ``vis_after_n_batches`` batches,
image | ground truth | prediction panels under ``vis/``.
"""

from __future__ import annotations

import csv
import io as _io
import os
import time

import numpy as np
import torch
from omegaconf import DictConfig

from segformer_tao import io, status
from segformer_tao.data import build_dataloader
from segformer_tao.deploy.base import predict_logits, resize_logits
from segformer_tao.deploy.runtime import open_for_action
from segformer_tao.engine.metrics import SegmentationMetrics
from segformer_tao.engine.visualize import colorize, denormalize, plot_confusion_matrix, side_by_side, write_png
from segformer_tao.errors import UserError, out_of_memory
from segformer_tao.model.meta import ModelMeta
from segformer_tao.ranks import is_primary

PER_CLASS_COLUMNS = ["class_id", "class_name", "iou", "acc", "precision", "recall", "f1", "dice", "support"]
# status.json kpi names (TAO's evaluate writes test_miou, test_acc, test_mf1, test_mprecision, test_mrecall)
# -> our results.json keys.
STATUS_KPI = {"test_miou": "mIoU", "test_acc": "overall_accuracy", "test_mAcc": "mAcc", "test_mf1": "mF1",
              "test_mprecision": "mPrecision", "test_mrecall": "mRecall", "test_mdice": "mDice"}


def write_per_class_csv(path: str, per_class: list[dict]) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_CLASS_COLUMNS)
    writer.writeheader()
    for row in per_class:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in PER_CLASS_COLUMNS})
    io.write_text(path, buf.getvalue())


def write_status_summary(out_dir: str, scores: dict, runtime_name: str) -> None:
    """The metrics line of status.json: ``kpi`` (STATUS_KPI), ``categorical`` per class (iou, acc, precision,
    recall, f1, dice and pixels = ground-truth pixel count), keyed by class name."""
    per_class = scores["per_class"]
    categorical = {m: {row["class_name"]: row[m] for row in per_class}
                   for m in ("iou", "acc", "precision", "recall", "f1", "dice")}
    categorical["pixels"] = {row["class_name"]: row["support"] for row in per_class}
    status.write_status(out_dir, status.RUNNING, f"Evaluation metrics generated ({runtime_name}, "
                        f"{scores['images']} images).", kpi={k: scores[v] for k, v in STATUS_KPI.items()},
                        categorical=categorical, images=scores["images"])


def _save_panels(out_dir: str, batch: dict, preds: list[torch.Tensor], meta: ModelMeta) -> None:
    from PIL import Image

    for image, mask, pred, path in zip(batch["image"], batch["mask"], preds, batch["path"]):
        h, w = mask.shape[-2:]
        rgb = Image.fromarray(denormalize(image, meta.mean, meta.std)).resize((w, h), Image.BILINEAR)
        panel = side_by_side([np.asarray(rgb), colorize(mask.numpy(), meta.palette),
                              colorize(pred.numpy(), meta.palette)])
        write_png(os.path.join(out_dir, "vis", os.path.splitext(os.path.basename(str(path)))[0] + ".png"), panel)


def _check_labels_in_range(mask: torch.Tensor, num_classes: int, ignore_index: int, path: str) -> None:
    """A class id the model cannot predict would silently drop out of the metrics (e.g. a spec with more classes
    than the checkpoint): refuse instead."""
    outside = (mask >= num_classes) & (mask != ignore_index)
    if bool(outside.any()):
        value = int(mask[outside].max())
        raise UserError(f"Mask '{path}' holds class id {value}, but the model predicts {num_classes} classes (ids "
                        f"0..{num_classes - 1}). Evaluate a model trained with these classes, or point "
                        "dataset.segment.root_dir/test_split at masks of the model's classes.")


def evaluate_runtime(cfg: DictConfig, runtime, out_dir: str | None, batch_size: int,
                     vis_every: int = 0) -> dict:
    """Run ``runtime`` over the test split (read at the config's img_size and mean/std: :func:`open_for_action` has
    put the model's there); returns the scores dict of :func:`scores_from_confusion` plus ``confusion_matrix``
    (list of lists) and ``images``. Writes panels when ``out_dir`` and ``vis_every``."""
    meta = runtime.meta
    metrics = SegmentationMetrics(meta.num_classes, int(cfg.dataset.segment.ignore_index), meta.class_names)
    images = 0
    ignore, n = int(cfg.dataset.segment.ignore_index), int(meta.num_classes)
    for batch_idx, batch in enumerate(build_dataloader(cfg, "test", "eval", batch_size=batch_size)):
        logits = predict_logits(runtime, batch["image"])
        preds = []
        for i, mask in enumerate(batch["mask"]):
            _check_labels_in_range(mask, n, ignore, batch["path"][i])
            pred = resize_logits(logits[i : i + 1], tuple(mask.shape[-2:])).argmax(1)[0]
            metrics.update(pred, mask)
            preds.append(pred)
        images += len(preds)
        if out_dir and vis_every and batch_idx % vis_every == 0:
            _save_panels(out_dir, batch, preds, meta)
    if images == 0:
        raise UserError(f"No images to evaluate in split '{cfg.dataset.segment.test_split}' under "
                        f"{cfg.dataset.segment.root_dir}. Check dataset.segment.test_split and root_dir.")
    scores = metrics.compute()
    scores["confusion_matrix"] = metrics.cm.tolist()
    scores["images"] = images
    return scores


def run(cfg: DictConfig) -> dict:
    """Evaluate cfg.evaluate.checkpoint / onnx_file / trt_engine on dataset.segment.test_split."""
    out_dir = str(cfg.evaluate.results_dir)
    runtime = open_for_action(cfg, "evaluate")
    if cfg.dataset.segment.check != "off" and is_primary():  # with the model's class count, now in cfg
        from segformer_tao.data.check import check_dataset

        check_dataset(cfg, ("test",), report_path=f"{out_dir}/dataset_report.json")
    start = time.monotonic()
    try:
        scores = evaluate_runtime(cfg, runtime, out_dir, int(cfg.evaluate.batch_size),
                                  int(cfg.evaluate.vis_after_n_batches))
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise out_of_memory(cfg, "evaluate") from e
    seconds = time.monotonic() - start
    summary = {k: scores[k] for k in ("mIoU", "mAcc", "mPrecision", "mRecall", "mF1", "mDice", "overall_accuracy")}
    results = {**summary, "runtime": runtime.name, "runtime_label": runtime.label,
               "images": scores["images"], "num_pixels": scores["num_pixels"],
               "seconds": round(seconds, 3), "per_class": scores["per_class"],
               "confusion_matrix": scores["confusion_matrix"], "class_names": runtime.meta.class_names}
    paths = {name: os.path.join(out_dir, name) for name in ("results.json", "per_class.csv", "confusion_matrix.png")}
    io.write_json(paths["results.json"], results)
    write_status_summary(out_dir, scores, runtime.name)
    write_per_class_csv(paths["per_class.csv"], scores["per_class"])
    plot_confusion_matrix(torch.tensor(scores["confusion_matrix"]), runtime.meta.class_names,
                          paths["confusion_matrix.png"])
    print(f"evaluate ({runtime.label}): mIoU={summary['mIoU'] or 0:.4f} overall_accuracy="
          f"{summary['overall_accuracy'] or 0:.4f} on {scores['images']} images -> {paths['results.json']}")
    return {"metrics": {**summary, "images": scores["images"]},
            "artifacts": {**{k.split(".")[0]: v for k, v in paths.items()}, "vis": os.path.join(out_dir, "vis")}}
