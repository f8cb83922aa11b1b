"""One interface for every way of running the network: PyTorch checkpoint, ONNX Runtime, OpenVINO, TensorRT.

``Runtime.predict`` takes normalized float32 NCHW images at img_size and returns logits (N, C, h, w) on the
CPU (h, w = img_size / 4 for our models). Post-processing (resize to original size, argmax, flip TTA, sliding
window) is written once here and shared by evaluate, inference and quantize's report.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")


class Runtime(ABC):
    """A loaded model. ``meta``: class_names, palette, img_size, mean, std, backbone, num_classes."""

    name = "runtime"
    meta: dict

    @property
    def label(self) -> str:
        """The runtime and, where it has a choice, its precision (e.g. "openvino bf16"), for logs and reports."""
        return self.name

    @abstractmethod
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float32 normalized -> (N, C, h, w) float32 logits on the CPU."""


class TorchRuntime(Runtime):
    """A segformer_tao ``.pth`` checkpoint run with PyTorch (CUDA when available)."""

    name = "torch"

    def __init__(self, checkpoint: str, encryption_key: str | None = None, device: str | None = None,
                 strict: bool = False):
        from segformer_tao.engine.checkpoint import load_model_from_checkpoint

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta = load_model_from_checkpoint(checkpoint, encryption_key, map_location=self.device,
                                                            strict=strict)
        self.path = checkpoint

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device, torch.float32)).float().cpu()


def open_runtime(cfg: DictConfig, action: str) -> Runtime:
    """The runtime for ``cfg[action]``: ``trt_engine`` -> TensorRT, ``onnx_file`` -> ONNX Runtime or OpenVINO
    (``onnx_engine``, see deploy/cpu_select.py), ``checkpoint`` -> PyTorch (first one set wins, in that order)."""
    section = cfg[action]
    key = cfg.get("encryption_key")
    if section.get("trt_engine"):
        from segformer_tao.deploy.tensorrt import TrtRuntime

        return TrtRuntime(str(section.trt_engine), cfg, trusted=bool(section.get("trust_engine")),
                          trust_key=f"{action}.trust_engine")
    if section.get("onnx_file"):
        from segformer_tao.deploy.cpu_select import open_onnx_runtime

        return open_onnx_runtime(str(section.onnx_file), cfg, action)
    if section.get("checkpoint"):
        return TorchRuntime(str(section.checkpoint), key, strict=bool(cfg.get("encryption_strict")))
    raise UserError(f"`{action}` needs a model: set {action}.checkpoint (a .pth from train), {action}.onnx_file "
                    f"or {action}.trt_engine, or parent_job=<results dir of a train/export job>.")


def meta_from_config(cfg: DictConfig) -> dict:
    """Runtime metadata from the experiment config (for runtimes whose files carry none, e.g. ONNX)."""
    from segformer_tao.engine.module import build_meta

    return build_meta(cfg)


def warn_spec_mismatch(cfg: DictConfig, meta: dict, action: str) -> list[str]:
    """Warn when the model file of ``cfg[action]`` (its ``meta``) has another backbone or class count than the
    spec (the file's is used: the network is rebuilt from it). A spec backbone equal to the schema default is
    taken as unset and not compared (evaluate/export specs often leave the model section out). Returns the
    warnings (also logged)."""
    from segformer_tao.config.schema import BackboneConfig

    section = cfg[action]
    key = next((k for k in ("trt_engine", "onnx_file", "checkpoint") if section.get(k)), "checkpoint")
    source = f"{action}.{key}='{section.get(key)}'"
    checks = [("model.backbone.type", cfg.model.backbone.type, meta.get("backbone")),
              ("dataset.segment.num_classes", cfg.dataset.segment.num_classes, meta.get("num_classes"))]
    warnings = []
    for name, ours, theirs in checks:
        if theirs is None or str(ours) == str(theirs) or (name == "model.backbone.type"
                                                          and str(ours) == BackboneConfig.type):
            continue
        what = "backbone" if "backbone" in name else "class count"
        warnings.append(f"{source} was trained with {what} {theirs}, but the spec says {name}={ours}; the model "
                        f"file's {theirs} is used (the spec's {name} does not change a trained model).")
        log.warning("warning: %s", warnings[-1])
    return warnings


def predict_logits(runtime: Runtime, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """Logits for a batch; with ``flip_tta`` the mean of the image's and its horizontal mirror's softmax."""
    logits = runtime.predict(images)
    if not flip_tta:
        return logits
    flipped = runtime.predict(images.flip(-1)).flip(-1)
    return (logits.softmax(1) + flipped.softmax(1)) / 2  # probabilities: argmax is what callers use


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) bilinear (align_corners=False), the same resize training used."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def sliding_window_logits(runtime: Runtime, image: np.ndarray, preprocess: Callable[[np.ndarray], torch.Tensor],
                          window: int, flip_tta: bool = False, overlap: float = 1 / 3) -> torch.Tensor:
    """Logits (1, C, H, W) for an RGB uint8 image larger than ``window`` px, from overlapping window crops.

    Each crop (``window`` x ``window``, or the whole side when smaller) goes through ``preprocess`` (the shared
    resize + normalize), its logits are resized back to the crop and averaged where crops overlap.
    """
    h, w = image.shape[:2]
    ch, cw = min(window, h), min(window, w)
    stride = max(1, int(window * (1 - overlap)))
    ys = _starts(h, ch, stride)
    xs = _starts(w, cw, stride)
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, h, w)
    for y in ys:
        for x in xs:
            crop = np.ascontiguousarray(image[y : y + ch, x : x + cw])
            logits = resize_logits(predict_logits(runtime, preprocess(crop)[None], flip_tta), (ch, cw))
            if total is None:
                total = torch.zeros(1, logits.shape[1], h, w)
            total[:, :, y : y + ch, x : x + cw] += logits
            count[:, :, y : y + ch, x : x + cw] += 1
    return total / count


def _starts(length: int, crop: int, stride: int) -> list[int]:
    n = max(1, math.ceil((length - crop) / stride) + 1)
    return sorted({min(i * stride, length - crop) for i in range(n)})



def labels_at(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Class ids (N, H, W) at ``size`` (H, W) pixels from logits (N, C, h, w): exactly the labels of
    ``resize_logits(logits[i : i + 1], size).argmax(1)`` per image, uint8 for C <= 256 classes (int64 above), on
    the logits' device.

    argmax over dim 1 of an NCHW tensor walks memory with a stride of H*W and dominates post-processing (0.2-2 s
    per large image); a running maximum over the contiguous H*W class planes keeps the first maximal class, as
    argmax does. The resize is the same call as before, all classes at once: resizing a few classes at a time
    changes how the kernel splits its loops and, with it, the last bit of some values.
    """
    n, c = logits.shape[:2]
    h, w = int(size[0]), int(size[1])
    out = torch.zeros(n, h, w, dtype=torch.uint8 if c <= 256 else torch.int64, device=logits.device)
    for i in range(n):
        planes = resize_logits(logits[i : i + 1], (h, w))[0]
        labels, best = out[i], planes[0].clone()
        for k in range(1, c):
            labels.masked_fill_(planes[k] > best, k)
            torch.maximum(best, planes[k], out=best)
    return out
