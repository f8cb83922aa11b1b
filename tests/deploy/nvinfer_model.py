"""A small Python model of DeepStream Gst-nvinfer (6.2 sources), the independent reference for our config.

Sources (github.com/hiennguyen9874/deepstream-sources, a copy of DeepStream 6.2's open sources):
- value checks: ``gst_nvinfer_parse_props_yaml`` / ``gst_nvinfer_parse_other_attribute_yaml`` in
  ``sources/gst-plugins/gst-nvinfer/gstnvinfer_yaml_parser.cpp`` (string lists are ``split_string`` on ';' and
  each item is strncpy'd into a 64-byte buffer); ``layer-device-precision`` items are then split on ':' and
  checked by ``isValidPrecisionType``/``isValidDeviceType`` (``sources/libs/nvdsinfer/nvdsinfer_model_builder.cpp``,
  ``nvdsinfer_func_utils.cpp``); limits from ``sources/includes/nvdsinfer_context.h``.
- preprocessing: ``y = net-scale-factor * (x - offsets[c])`` on the RGB frame scaled to infer-dims.
- segmentation parsing: ``SegmentPostprocessor::fillSegmentationOutput`` in
  ``sources/libs/nvdsinfer/nvdsinfer_context_impl_output_parsing.cpp``.
"""

from __future__ import annotations

import os

import numpy as np
import yaml

MAX_BATCH_SIZE = 1024  # NVDSINFER_MAX_BATCH_SIZE
MAX_CHANNELS = 4  # _MAX_CHANNELS (offsets)
STRING_BUFFER = 64  # output-blob-names / layer-device-precision items: strncpy(dst, src, 64)
UINT_KEYS = ("gie-unique-id", "gpu-id", "batch-size", "network-mode", "network-type", "model-color-format",
             "num-detected-classes")
INT_KEYS = ("segmentation-output-order", "process-mode", "output-tensor-meta", "maintain-aspect-ratio",
            "scaling-filter", "interval", "symmetric-padding")
DOUBLE_KEYS = ("net-scale-factor", "segmentation-threshold", "classifier-threshold")
STRING_KEYS = ("onnx-file", "labelfile-path", "infer-dims", "offsets", "output-blob-names", "layer-device-precision",
               "model-engine-file", "int8-calib-file")
ENUMS = {
    "network-mode": (0, 1, 2),  # FP32, INT8, FP16
    "network-type": (0, 1, 2, 3, 100),  # detector, classifier, segmentation, instance seg., other
    "model-color-format": (0, 1, 2),
    "segmentation-output-order": (0, 1),
    "process-mode": (1, 2),
    "scaling-filter": (0, 1, 2, 3, 4, 5, 6),
}


class NvinferConfigError(ValueError):
    """nvinfer would print this and fail to start ("Configuration file parsing failed")."""


def _fail(msg: str) -> None:
    raise NvinferConfigError(msg)


def check_property_group(config_path: str) -> dict:
    """Apply nvinfer's value checks to every key of the ``property`` group; return the group.

    Stricter than nvinfer in one way: a key nvinfer does not know is an error here (nvinfer prints "Unknown or
    legacy key" and ignores it, which would silently drop a setting we meant).
    """
    with open(config_path) as f:
        doc = yaml.safe_load(f)
    if "property" not in doc:
        _fail("Could not find group property")
    prop = doc["property"]
    for key, value in prop.items():
        if key in UINT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                _fail(f"{key}: '{value}' is not an unsigned int (yaml-cpp as<unsigned int>)")
        elif key in INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool):
                _fail(f"{key}: '{value}' is not an int (std::stoi)")
        elif key in DOUBLE_KEYS:
            if not isinstance(value, int | float) or isinstance(value, bool):
                _fail(f"{key}: '{value}' is not a double")
        elif key not in STRING_KEYS:
            _fail(f"Unknown or legacy key specified '{key}' for group property")
        if key in ENUMS and value not in ENUMS[key]:
            _fail(f"Error. Invalid value for {key}:'{value}'")
    if prop.get("gie-unique-id", 1) <= 0:
        _fail("Error: gie-unique-id should be > 0")
    if not 1 <= prop.get("batch-size", 1) <= MAX_BATCH_SIZE:
        _fail(f"Error: batch-size({prop['batch-size']}) should be in the range [1,{MAX_BATCH_SIZE}]")
    for key in ("segmentation-threshold", "classifier-threshold"):
        if prop.get(key, 0) < 0:
            _fail(f"Error: Negative value specified for {key}({prop[key]:.2f})")
    if "infer-dims" in prop:
        dims = str(prop["infer-dims"]).split(";")
        if len(dims) != 3 or not all(d.isdigit() for d in dims):
            _fail(f"Error. infer-dims '{prop['infer-dims']}' should be 3 unsigned ints as [c;h;w]")
    if "offsets" in prop:
        offsets = str(prop["offsets"]).split(";")
        if len(offsets) > MAX_CHANNELS:
            _fail(f"Error. Maximum  length of {MAX_CHANNELS} is allowed for offsets")
        [float(o) for o in offsets]  # std::stod throws on a non-number
    for key in ("output-blob-names", "layer-device-precision"):
        for item in str(prop.get(key, "")).split(";") if key in prop else []:
            if len(item) >= STRING_BUFFER:
                _fail(f"{key} item '{item}' is {len(item)} chars: nvinfer keeps only the first {STRING_BUFFER}")
    for item in str(prop["layer-device-precision"]).split(";") if "layer-device-precision" in prop else []:
        parts = item.split(":")
        if len(parts) != 3:
            _fail(f"failed to parse outputDevicePrecision {item}. Expected layerName:precisionType:deviceType")
        if parts[1] not in ("fp32", "fp16", "int8"):
            _fail(f"Invalid output precisionType specified {parts[1]}")
        if parts[2] not in ("gpu", "dla"):
            _fail(f"Invalid deviceType specified {parts[2]}")
    folder = os.path.dirname(os.path.abspath(config_path))
    for key in ("onnx-file", "labelfile-path", "model-engine-file", "int8-calib-file"):
        if key in prop and not os.path.exists(os.path.join(folder, str(prop[key]))):
            _fail(f"{key}: '{prop[key]}' does not exist relative to the config's folder")
    return prop


def preprocess(rgb: np.ndarray, prop: dict) -> np.ndarray:
    """uint8 (H, W, 3) RGB frame -> (1, 3, H, W) float32 network input, as nvinfer converts it.

    nvinfer first scales the frame to infer-dims; that scaler is not modelled, so the frame must already have
    the network's size.
    """
    c, h, w = (int(d) for d in str(prop["infer-dims"]).split(";"))
    assert prop.get("model-color-format", 0) == 0 and c == 3, "model only covers RGB networks"
    assert rgb.shape == (h, w, 3), f"frame {rgb.shape} is not at infer-dims {(h, w)}: scaler not modelled"
    offsets = np.array([float(o) for o in str(prop.get("offsets", "0;0;0")).split(";")], np.float32)
    x = float(prop.get("net-scale-factor", 1.0)) * (rgb.astype(np.float32) - offsets)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def fill_segmentation_output(output: np.ndarray, threshold: float, order: int = 0) -> np.ndarray:
    """One frame's output tensor ((C, H, W) for order 0 = NCHW, (H, W, C) for 1) -> int class map (H, W).

    The loop of fillSegmentationOutput, vectorized over pixels: each pixel starts at class -1 with
    max_prob = -1, and channel c (in order) wins where ``prob > max_prob && prob > threshold``.
    """
    probs = output if order == 0 else np.moveaxis(output, -1, 0)
    max_prob = np.full(probs.shape[1:], -1.0, dtype=np.float32)
    class_map = np.full(probs.shape[1:], -1, dtype=np.int32)
    for c in range(probs.shape[0]):
        wins = (probs[c] > max_prob) & (probs[c] > np.float32(threshold))
        class_map[wins] = c
        max_prob[wins] = probs[c][wins]
    return class_map
