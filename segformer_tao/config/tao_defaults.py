"""Defaults that differ from TAO's on purpose, and the one-line note `segformer config` prints about them.

TAO 7.0.1 (NVIDIA-TAO/tao-pytorch ``config/common/quantization/default_config.py``,
``config/segformer/default_config.py``) has these defaults; ours serve users better where stated. A TAO spec that
leaves one of these keys unset gets ours, so ``segformer config -e spec.yaml`` says which and what TAO would use.
``docs/tao_defaults.md`` shows this table (a test keeps the two equal).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from segformer_tao.config.provenance import source_of

# key -> (TAO's default, why ours differs)
DIFFERENCES: dict[str, tuple[object, str]] = {
    "quantize.backend": ("torchao", "onnxruntime runs INT8 on any CPU and writes the Q/DQ ONNX TensorRT builds "
                                    "explicitly; torchao's weight-only INT8 needs a GPU to pay off and exports no "
                                    "INT8 graph"),
    "quantize.mode": ("weight_only_ptq", "static PTQ (weights and activations, calibrated) is what INT8 engines and "
                                         "ONNX Runtime accelerate; weight-only leaves activations in float"),
    "export.input_width": (544, "null means the checkpoint's own img_size, so an export matches what the model was "
                                "trained at instead of a fixed 544"),
    "export.input_height": (544, "as export.input_width"),
}


def note(cfg: DictConfig) -> str | None:
    """One line naming the keys of ``DIFFERENCES`` that the spec file and command line left unset, with TAO's
    default and ours; None when every one was set (or none applies)."""
    unset = [k for k in DIFFERENCES if OmegaConf.select(cfg, k, default="<absent>") != "<absent>"
             and source_of(cfg, k) is None]
    if not unset:
        return None
    parts = [f"{k}={_show(OmegaConf.select(cfg, k))} (TAO: {_show(DIFFERENCES[k][0])})" for k in unset]
    return ("note: this spec relies on defaults where ours differ from TAO's on purpose: " + ", ".join(parts)
            + "; set them in the spec to get TAO's (reasons: docs/tao_defaults.md).")


def _show(value: object) -> str:
    return "null" if value is None else str(value)
