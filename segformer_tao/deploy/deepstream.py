"""DeepStream Gst-nvinfer config (YAML, ``property:`` group) and labels file for an exported SegFormer.

Key names are Gst-nvinfer's documented ones. nvinfer preprocesses with ``y = net-scale-factor * (x - offsets[c])``
on 0-255 pixels, while we train on ``(x / 255 - mean[c]) / std[c]``, hence offsets = 255 * mean and
net-scale-factor = 1 / (255 * std) (nvinfer has one scale for all channels: with unequal stds the average is
used and a warning names the error it introduces).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import yaml

from segformer_tao import io

log = logging.getLogger(__name__)

NETWORK_TYPE_SEGMENTATION = 2
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
MODEL_COLOR_FORMAT_RGB = 0


def scale_and_offsets(mean: Sequence[float], std: Sequence[float]) -> tuple[float, list[float]]:
    """nvinfer's (net-scale-factor, offsets) reproducing normalization with mean/std given for 0-1 images."""
    avg_std = sum(std) / len(std)
    spread = (max(std) - min(std)) / avg_std
    if spread > 1e-6:
        log.warning("DeepStream applies one net-scale-factor to all channels; std=%s differs per channel, so the "
                    "average %.4f is used (up to %.1f%% scale error per channel).", list(std), avg_std, 100 * spread)
    return 1.0 / (255.0 * avg_std), [round(255.0 * m, 6) for m in mean]


def nvinfer_config(*, onnx_name: str, labels_name: str, num_classes: int, channels: int, height: int, width: int,
                   mean: Sequence[float], std: Sequence[float], batch_size: int = 1,
                   precision: str = "fp16") -> dict:
    """The ``property`` group of a Gst-nvinfer config for a semantic-segmentation SegFormer ONNX.

    The ONNX output ``output`` holds raw logits; nvinfer's built-in segmentation parser assigns each pixel the
    class with the largest value when that value exceeds segmentation-threshold, so the threshold is set far
    below any logit to keep the plain argmax (what evaluate and inference compute).
    """
    scale, offsets = scale_and_offsets(mean, std)
    return {
        "property": {
            "gpu-id": 0,
            "net-scale-factor": scale,
            "offsets": ";".join(f"{o:g}" for o in offsets),
            "model-color-format": MODEL_COLOR_FORMAT_RGB,
            "onnx-file": onnx_name,
            "labelfile-path": labels_name,
            "infer-dims": f"{channels};{height};{width}",
            "batch-size": max(1, batch_size),
            "network-mode": NETWORK_MODE[precision],
            "network-type": NETWORK_TYPE_SEGMENTATION,
            "num-detected-classes": num_classes,
            "output-blob-names": "output",
            "segmentation-threshold": -1.0e4,
            "segmentation-output-order": 0,
            "output-tensor-meta": 0,
            "gie-unique-id": 1,
            "process-mode": 1,
        }
    }


def write_deepstream_files(onnx_path: str, *, class_names: Sequence[str], channels: int, height: int, width: int,
                           mean: Sequence[float], std: Sequence[float], batch_size: int = 1) -> dict[str, str]:
    """Write ``nvdsinfer_config.yaml`` and ``labels.txt`` next to ``onnx_path``; return their paths.

    Paths inside the config are relative (nvinfer resolves them against the config's directory), so the
    folder can be copied to a DeepStream machine as it is. labels.txt has one class name per line.
    """
    folder = os.path.dirname(onnx_path) or "."
    labels_path = f"{folder}/labels.txt"
    config_path = f"{folder}/nvdsinfer_config.yaml"
    config = nvinfer_config(onnx_name=os.path.basename(onnx_path), labels_name="labels.txt",
                            num_classes=len(class_names), channels=channels, height=height, width=width,
                            mean=mean, std=std, batch_size=batch_size)
    io.write_text(labels_path, "".join(f"{name}\n" for name in class_names))
    header = ("# Gst-nvinfer config written by `segformer export` (serialize_nvdsinfer=true).\n"
              "# Output 'output' = SegFormer logits; the default segmentation parser takes the per-pixel argmax.\n")
    io.write_text(config_path, header + yaml.safe_dump(config, sort_keys=False))
    return {"nvdsinfer_config": config_path, "labels": labels_path}
