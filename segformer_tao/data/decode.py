"""Decoding image and mask files into arrays: RGB uint8 images and class-id masks.

Mask semantics (TAO's ``label_transform`` and ``palette``, made strict instead of silently wrong):

* ``label_transform=norm``: mask values are divided by 255 first, so 0/255 binary masks become 0/1 and the
  palette's ``rgb`` is in 0-1. A mask with other values (e.g. class ids 0,1,2) is an error, since TAO would
  silently turn it into all zeros.
* ``label_transform=None``: mask values are used as they are; the palette's ``rgb`` is in 0-255.
* Single-channel masks (8/16-bit grey, palette-mode PNG indices): a value v is class v, unless a grey palette
  entry (r == g == b) maps it to another label_id. v == ``ignore_index`` (no norm) stays ignored.
* RGB masks: each colour must be a palette ``rgb`` (or the ignore colour (i, i, i)); otherwise an error
  names the file and the colours. RGB masks whose channels are all equal are read as grey masks.
* Any value that ends up >= num_classes and is not the ignore index is an error naming the file and values.
"""

from __future__ import annotations

import io as _io
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from segformer_tao.errors import UserError

_INVALID = -1
_NOT_BINARY = -2
# dataset.segment.max_image_pixels' default: PIL's own warning threshold (about 9459 x 9459), which we enforce
# before decoding instead of PIL's warning (and its error only at twice that).
MAX_IMAGE_PIXELS = 89_478_485
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # replaced by the check below


def _too_many_pixels(name: str, size: str, pixels: int | str, limit: int) -> UserError:
    return UserError(f"Image '{name}' is {size} pixels ({pixels} pixels), more than "
                     f"dataset.segment.max_image_pixels={limit}: decoding it would take about {_gib(pixels)} of "
                     "memory (a decompression bomb, or a very large photo). Remove or shrink the file, or, if such "
                     "images are meant, raise dataset.segment.max_image_pixels.")


def _gib(pixels: int | str) -> str:
    return f"{int(pixels) * 4 / 2**30:.1f} GiB" if str(pixels).isdigit() else "several GiB"


def open_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """Open image bytes with PIL; unreadable/corrupt data, or a header declaring more than ``max_pixels`` pixels
    (default MAX_IMAGE_PIXELS; checked before anything is decoded) -> UserError naming the file."""
    limit = int(max_pixels or MAX_IMAGE_PIXELS)
    if limit > (Image.MAX_IMAGE_PIXELS or 0) * 2:  # the user raised the limit: PIL's own must not refuse first
        Image.MAX_IMAGE_PIXELS = limit
    try:
        im = Image.open(_io.BytesIO(data))
        if im.width * im.height > limit:
            raise _too_many_pixels(name, f"{im.width}x{im.height}", im.width * im.height, limit)
        im.load()
        return im
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_many_pixels(name, "over PIL's limit", found.group(1) if found else "?", limit) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = "unknown image format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UserError(f"Cannot read image '{name}': the file is corrupt or not an image ({why}). Remove or "
                        "replace it.") from e


def to_rgb(im: Image.Image) -> np.ndarray:
    """PIL image (any mode: grey, 16-bit, RGBA, palette, CMYK) -> HxWx3 uint8 RGB array (read-only view)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.int64)
        arr = (arr >> 8) if arr.max(initial=0) > 255 else arr  # 16-bit grey -> 8 bit
        return np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Image file bytes -> HxWx3 uint8 RGB array (at most ``max_pixels`` pixels, see :func:`open_image`)."""
    return to_rgb(open_image(data, name, max_pixels))


class MaskDecoder:
    """Turns mask file bytes into an HxW class-id array (uint8 when ids fit, else int32).

    Built once from the dataset config; lookup tables make decoding one indexing pass per mask.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, label_transform: Any = "norm",
                 palette: list[dict] | None = None, max_pixels: int | None = None) -> None:
        self.num_classes = int(num_classes)
        self.max_pixels = int(max_pixels or MAX_IMAGE_PIXELS)  # dataset.segment.max_image_pixels, for images too
        self.ignore_index = int(ignore_index)
        self.norm = str(label_transform) == "norm"
        self.grey: dict[int, int] = {}
        self.colours: dict[tuple[int, int, int], int] = {}
        for entry in palette or []:
            rgb = entry.get("rgb")
            rgb = [rgb] * 3 if isinstance(rgb, int | float) else list(rgb or [])
            if len(rgb) == 1:
                rgb = rgb * 3
            colour = tuple(int(round(float(v))) for v in rgb[:3])
            self.colours[colour] = int(entry["label_id"])
            if colour[0] == colour[1] == colour[2]:
                self.grey[colour[0]] = int(entry["label_id"])
        self.dtype = np.uint8 if max(self.num_classes - 1, self.ignore_index) <= 255 else np.int32
        self._luts: dict[int, np.ndarray] = {}

    def _lut(self, size: int) -> np.ndarray:
        """value -> class id table for single-channel masks of ``size`` levels (_INVALID/_NOT_BINARY marks)."""
        if size not in self._luts:
            raw = np.arange(size, dtype=np.int64)
            if self.norm:
                value = np.where(raw % 255 == 0, raw // 255, -1)
            else:
                value = raw
            ids = np.where((value >= 0) & (value < self.num_classes), value, _INVALID)
            if not self.norm and self.ignore_index < size:
                ids[self.ignore_index] = self.ignore_index
            for grey, label in self.grey.items():
                if 0 <= grey < size:
                    ids[value == grey] = label
            ids[(ids >= self.num_classes) & (ids != self.ignore_index)] = _INVALID  # palette ids out of range
            if self.norm:
                ids[value < 0] = _NOT_BINARY
            self._luts[size] = ids.astype(np.int32)
        return self._luts[size]

    def __call__(self, data: bytes, name: str) -> np.ndarray:
        """Mask file bytes -> HxW class ids (values < num_classes or == ignore_index). Bad values -> UserError."""
        im = open_image(data, name, self.max_pixels)
        if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
            arr = np.asarray(im.convert("RGB"))
            if arr[..., 0].tobytes() == arr[..., 1].tobytes() == arr[..., 2].tobytes():
                return self.map_grey(arr[..., 0], name)
            return self.map_colour(arr, name)
        return self.map_grey(np.asarray(im), name)

    def map_grey(self, arr: np.ndarray, name: str) -> np.ndarray:
        """Single-channel mask values (uint8/uint16/int32 HxW) -> class ids."""
        if arr.dtype == np.uint8:
            ids = self._lut(256)[arr]
        else:
            arr = arr.astype(np.int64)
            if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                raise UserError(f"Mask '{name}' has values outside 0-65535; masks must be 8- or 16-bit.")
            ids = self._lut(65536)[arr]
        if ids.min(initial=0) < 0:
            self._raise_bad_values(arr, ids, name)
        return ids.astype(self.dtype, copy=False)

    def map_colour(self, arr: np.ndarray, name: str) -> np.ndarray:
        """RGB mask (HxWx3 uint8) -> class ids through the palette."""
        rgb = arr.astype(np.uint32)
        if self.norm:
            if np.any(arr % 255):
                raise UserError(
                    f"Mask '{name}' is an RGB colour mask with channel values other than 0/255, but "
                    "dataset.segment.label_transform=norm divides masks by 255 (meant for 0/255 masks). Set "
                    "dataset.segment.label_transform=None and give the palette rgb in 0-255.")
            rgb //= 255
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        table = dict(self.colours)
        if not self.norm:
            table.setdefault((self.ignore_index,) * 3, self.ignore_index)
        keys = np.array(sorted((r << 16) | (g << 8) | b for r, g, b in table), dtype=np.uint32)
        labels = np.array([table[((k >> 16) & 255, (k >> 8) & 255, k & 255)] for k in keys.tolist()], np.int32)
        pos = np.clip(np.searchsorted(keys, codes), 0, max(len(keys) - 1, 0))
        found = keys[pos] == codes if len(keys) else np.zeros(codes.shape, bool)
        if not found.all():
            bad = np.unique(codes[~found])[:5]
            colours = ", ".join(str(((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255)) for c in bad)
            known = ", ".join(f"{c}->{i}" for c, i in sorted(self.colours.items(), key=lambda kv: kv[1]))
            scale = " (after label_transform=norm divided it by 255)" if self.norm else ""
            raise UserError(
                f"Mask '{name}' has colours not in dataset.segment.palette{scale}: {colours}. Palette colours: "
                f"{known or 'none'}. Add these colours to the palette (rgb -> label_id) or fix the mask.")
        ids = labels[pos]
        bad_ids = (ids >= self.num_classes) & (ids != self.ignore_index)
        if bad_ids.any():
            self._raise_bad_values(ids, np.where(bad_ids, _INVALID, ids), name)
        return ids.astype(self.dtype, copy=False)

    def _raise_bad_values(self, values: np.ndarray, ids: np.ndarray, name: str) -> None:
        if (ids == _NOT_BINARY).any():
            bad = np.unique(values[ids == _NOT_BINARY])[:10].tolist()
            raise UserError(
                f"Mask '{name}' has values {bad} that are not 0 or 255, but dataset.segment.label_transform=norm "
                "expects 0/255 binary masks (TAO would silently turn them into class 0). For masks that hold "
                "class ids (0, 1, 2, ...) set dataset.segment.label_transform=None.")
        bad = np.unique(values[ids < 0])[:10].tolist()
        hint = (" If the mask is 0/255 binary, set dataset.segment.label_transform=norm." if 255 in bad
                and not self.norm and self.ignore_index != 255 else "")
        raise UserError(
            f"Mask '{name}' has values {bad} >= dataset.segment.num_classes={self.num_classes} that are not the "
            f"ignore index ({self.ignore_index}). Raise num_classes, map the values through "
            f"dataset.segment.palette, or fix the mask.{hint}")
