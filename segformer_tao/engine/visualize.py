"""Pictures written by evaluate/inference: label-id PNGs, colour overlays, side-by-side panels, confusion matrix."""

from __future__ import annotations

import io as _io
from collections.abc import Sequence

import numpy as np
import torch

from segformer_tao import io


def write_png(path: str, array: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) uint8/uint16 array as PNG, atomically (local or s3://)."""
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    io.write_bytes(path, buf.getvalue())


def label_png_array(pred: torch.Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids as uint8 (uint16 when there are more than 256 classes), for label-id mask files."""
    arr = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    return arr.astype(np.uint8 if num_classes <= 256 else np.uint16)


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored/unknown ids are black."""
    lut = np.zeros((max(len(palette), int(labels.max(initial=0)) + 1), 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    out = lut[np.clip(labels, 0, len(lut) - 1)]
    out[labels == ignore_index] = 0
    return out


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend the colourized labels over the RGB uint8 image (same H, W)."""
    color = colorize(labels, palette).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + color * alpha).round().clip(0, 255).astype(np.uint8)


def denormalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalized tensor -> (H, W, 3) uint8 RGB (assumes 0-1 scaling before normalization)."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    rgb = (image.cpu().float() * s + m).clamp(0, 1) * 255
    return rgb.round().byte().permute(1, 2, 0).numpy()


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate (H, W, 3) panels of equal height with a white gap."""
    h = panels[0].shape[0]
    sep = np.full((h, gap, 3), 255, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for p in panels:
        parts += [p, sep]
    return np.concatenate(parts[:-1], axis=1)


def plot_confusion_matrix(cm: torch.Tensor, class_names: Sequence[str], path: str) -> None:
    """Row-normalized confusion matrix (rows = ground truth) with raw counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = cm.cpu().numpy().astype(np.int64)
    norm = counts / np.maximum(1, counts.sum(1, keepdims=True))
    n = len(counts)
    size = min(20, 2 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set(xticks=range(n), yticks=range(n), xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="ground truth", title="Confusion matrix (row-normalized)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    with io.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
