"""Deterministic synthetic demo dataset in the unet layout (shapes = classes on textured backgrounds).

Each foreground class has its own shape, colour and surface pattern, and objects cover a large part of the
image, so a tiny MiT-b0 learns it to a high mIoU in a few CPU minutes. Used by ``segformer dataset demo``,
``make demo`` and the tests.
"""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from segformer_tao import io
from segformer_tao.errors import UserError

MASK_FORMATS = ("ids", "binary255", "rgb")
SHAPES = ("disk", "square", "triangle", "ring", "cross", "diamond", "hbar", "vbar")
# Palette colours (0-255): class 0 is the background.
COLOURS = [
    (0, 0, 0), (230, 40, 40), (40, 200, 60), (50, 90, 235), (240, 210, 40), (200, 60, 210),
    (40, 210, 220), (250, 140, 30), (150, 90, 40), (255, 160, 200),
]


def class_colour(class_id: int) -> tuple[int, int, int]:
    """RGB colour (0-255) of a demo class; beyond the fixed table colours come from a seeded generator."""
    if class_id < len(COLOURS):
        return COLOURS[class_id]
    rng = np.random.default_rng(class_id)
    return tuple(int(v) for v in rng.integers(40, 256, size=3))


def demo_palette(num_classes: int, mask_format: str) -> list[dict]:
    """The dataset.segment.palette matching a demo dataset (rgb in 0-1 for binary255, as TAO's 'norm')."""
    names = ["background"] + [f"{SHAPES[(c - 1) % len(SHAPES)]}{'' if c <= len(SHAPES) else c}"
                              for c in range(1, num_classes)]
    palette = []
    for c in range(num_classes):
        if mask_format == "rgb":
            rgb = list(class_colour(c))
        else:  # class-id masks: grey level = id (binary255 after 'norm' -> 0/1)
            rgb = [c, c, c]
        palette.append({"label_id": c, "mapping_class": names[c], "rgb": rgb, "seg_class": names[c]})
    return palette


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, value: int) -> None:
    """Draw one filled shape of 'radius' r (pixels) centred at (cx, cy) with fill ``value``."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disk":
        draw.ellipse(box, fill=value)
    elif shape == "square":
        draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=value)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=value)
    elif shape == "ring":
        draw.ellipse(box, outline=value, width=max(3, int(0.4 * r)))
    elif shape == "cross":
        w = 0.35 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=value)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=value)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=value)
    elif shape == "hbar":
        draw.rectangle([cx - r, cy - 0.4 * r, cx + r, cy + 0.4 * r], fill=value)
    else:  # vbar
        draw.rectangle([cx - 0.4 * r, cy - r, cx + 0.4 * r, cy + r], fill=value)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey-ish textured background: smooth gradient + faint stripes + noise (HxWx3 float)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(90, 150) + 30 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
    stripes = 8 * np.sin(2 * np.pi * rng.uniform(2, 6) * (xx * rng.uniform(-1, 1) + yy))
    img = base[..., None] + stripes[..., None] + rng.normal(0, 6, size=(size, size, 3))
    return img + rng.uniform(-10, 10, size=3)


def make_sample(rng: np.random.Generator, num_classes: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (HxWx3 uint8 RGB) and its class-id mask (HxW uint8); 1-3 objects, each >= ~12% of the side."""
    label = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(label)
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.integers(1, num_classes))
        r = rng.uniform(0.14, 0.26) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        _draw_shape(draw, SHAPES[(c - 1) % len(SHAPES)], cx, cy, r, c)
    mask = np.asarray(label)
    img = _background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size]
    for c in np.unique(mask[mask > 0]):
        sel = mask == c
        pattern = 18 * np.sign(np.sin((xx + yy * (c % 3)) * (0.5 + 0.15 * c)))  # class-specific texture
        colour = np.array(class_colour(int(c)), np.float32) + rng.uniform(-15, 15, size=3)
        img[sel] = colour + pattern[sel, None] + rng.normal(0, 5, size=(int(sel.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = _io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _encode_mask(mask: np.ndarray, mask_format: str) -> bytes:
    if mask_format == "ids":
        return _png(mask, "L")
    if mask_format == "binary255":
        return _png((mask > 0).astype(np.uint8) * 255, "L")
    lut = np.array([class_colour(c) for c in range(256)], np.uint8)
    return _png(lut[mask], "RGB")


def make_demo_dataset(outdir: str | Path, *, num_classes: int = 3, size: int = 64, train: int = 16, val: int = 8,
                      test: int = 4, mask_format: str = "ids", seed: int = 0) -> Path:
    """Write a deterministic demo dataset and a matching spec.

    Layout: ``images/{train,val,test}/NNNN.png`` (RGB), ``masks/{train,val}/NNNN.png`` and
    ``masks/test/`` too (so the test split can be evaluated), plus ``spec.yaml`` holding the
    ``dataset.segment`` keys to train on it (root_dir, num_classes, label_transform, palette, img_size).

    Args:
        outdir: output directory (created).
        num_classes: classes including background (>= 2); ``binary255`` needs exactly 2.
        size: image side in pixels.
        train, val, test: number of images per split.
        mask_format: ``ids`` (grey class ids), ``binary255`` (0/255, read with label_transform=norm) or
            ``rgb`` (colour masks mapped through the palette).
        seed: the same seed always gives byte-identical files.
    Returns:
        the dataset root as a Path.
    """
    if mask_format not in MASK_FORMATS:
        raise UserError(f"Unknown demo mask format '{mask_format}'. Use one of: {', '.join(MASK_FORMATS)}.")
    if num_classes < 2 or num_classes > 255 or (mask_format == "binary255" and num_classes != 2):
        raise UserError(f"Demo datasets need 2 <= num_classes <= 255 (binary255 masks: exactly 2); got "
                        f"num_classes={num_classes} with mask format '{mask_format}'.")
    if size < 16:
        raise UserError(f"Demo image size must be >= 16 pixels; got size={size}.")
    root = Path(outdir)
    for split_index, (split, count) in enumerate((("train", train), ("val", val), ("test", test))):
        rng = np.random.default_rng([seed, split_index])
        for i in range(count):
            img, mask = make_sample(rng, num_classes, size)
            io.write_bytes(str(root / "images" / split / f"{i:04d}.png"), _png(img, "RGB"))
            io.write_bytes(str(root / "masks" / split / f"{i:04d}.png"), _encode_mask(mask, mask_format))
    segment = {
        "root_dir": str(root.resolve()), "num_classes": num_classes, "img_size": max(size, 32),
        "label_transform": "norm" if mask_format == "binary255" else "None",
        "palette": demo_palette(num_classes, mask_format),
    }
    io.write_text(str(root / "spec.yaml"), OmegaConf.to_yaml({"dataset": {"segment": segment}}))
    return root
