"""torchao INT8 SegFormer models (quantize.backend=torchao): quantize, and load the checkpoints quantize writes.

A torchao checkpoint is one of our checkpoints (``state_dict`` / ``meta`` / ``config``, written by
``engine.checkpoint.save_checkpoint``, encrypted like the others when an encryption_key is set) whose quantized
Linear weights are torchao ``Int8Tensor`` subclasses (int8 ``qdata`` + per-row float ``scale``), plus a
``quantization`` entry (backend, mode, torchao version, quantized and float layers). It loads with
``torch.load(weights_only=True)`` and, scoped to that load, an allowlist of exactly the torchao types such a
file holds (:data:`ALLOWED_TYPES`); anything else a pickle names (``os.system``, ...) is still refused.

Why not plain tensors + a recipe re-applied on load: torchao's tensors carry their own kernels (int8 weight
matmul on CPU/CUDA, dynamic activation quantization) and ``load_state_dict(assign=True)`` puts them back
unchanged, so the loaded model is bit-identical to the one quantize measured, with no torchao internals
(constructors, field layouts) re-implemented here. A file from a torchao whose types moved fails to load with
a message naming both versions.
"""

from __future__ import annotations

import fnmatch
from importlib import import_module

import torch
from torch import nn

from segformer_tao.errors import NotAvailableError, UserError

INSTALL = "pip install 'segformer_tao[torchao]'"
FORMAT = "segformer_tao.torchao_int8/1"
# quantize.mode -> torchao config: weight-only int8 (TAO 7.3's default mode) or int8 activations quantized
# dynamically per token + int8 weights (torchao has no static-activation int8 for CPU/CUDA eager).
MODES = {"weight_only_ptq": "Int8WeightOnlyConfig", "static_ptq": "Int8DynamicActivationInt8WeightConfig"}
# (module, name) of every type a checkpoint of ours holds besides torch's own; nothing else is allowed.
ALLOWED_TYPES = (
    ("torchao.quantization", "Int8Tensor"),
    ("torchao.quantization.quantize_.workflows.int8.int8_tensor", "QuantizeTensorToInt8Kwargs"),
    ("torchao.quantization.granularity", "PerRow"),
    ("torchao.quantization.quant_primitives", "MappingType"),
)


def require_torchao(why: str):
    """Import torchao (its quantization package) or raise NotAvailableError naming the extra.

    torchao registers ~40 of its types as safe for every ``torch.load(weights_only=True)`` in the process when
    imported (by whoever imports it first); that registration is undone here, so that only the scoped allowlist
    of :func:`load_allowing_torchao` lets torchao types in (our other loaders keep torch's defaults)."""
    try:
        quantization = import_module("torchao.quantization")
    except ImportError as e:
        raise NotAvailableError(f"{why} needs torchao, which is not installed ({e.name or e}): `{INSTALL}`.") from e
    registered = torch.serialization.get_safe_globals()
    kept = [g for g in registered if not _defined_in_torchao(g)]
    if len(kept) != len(registered):
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(kept)
    return quantization


def _defined_in_torchao(entry) -> bool:
    obj = entry[0] if isinstance(entry, tuple) else entry
    return str(getattr(obj, "__module__", "")).split(".")[0] == "torchao"


def allowed_types(path: str = "a torchao INT8 checkpoint") -> list[type]:
    """The torchao classes of :data:`ALLOWED_TYPES` (NotAvailableError naming ``path`` without torchao)."""
    require_torchao(f"Reading '{path}' (a quantize.backend=torchao INT8 checkpoint)")
    found = []
    for module, name in ALLOWED_TYPES:
        try:
            found.append(getattr(import_module(module), name))
        except (ImportError, AttributeError) as e:
            import torchao

            raise NotAvailableError(f"The installed torchao {torchao.__version__} has no {module}.{name}, which "
                                    f"torchao INT8 checkpoints hold: install the torchao version of the "
                                    f"[torchao] extra (`{INSTALL}`).") from e
    return found


def is_torchao_reference(global_name: str) -> bool:
    """True for a pickle global such as ``torchao.quantization.Int8Tensor`` (from torch's refusal message)."""
    return global_name.split(".")[0] == "torchao"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) or p in name for p in patterns)


def quantizable_linears(model: nn.Module, skip_names: list[str]) -> tuple[list[str], list[str]]:
    """(Linear layers torchao quantizes, Linear layers kept float). The decode head's per-stage projections stay
    float: the head folds their weights into the fuse conv (head.py) instead of calling them as Linear layers."""
    quantized, kept = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            folded = name.startswith("decode_head.linear_c")
            (kept if folded or _matches(name, skip_names) else quantized).append(name)
    return quantized, kept


def quantize(model: nn.Module, mode: str, skip_names: list[str]) -> dict:
    """Quantize ``model``'s Linear layers in place with torchao; returns the ``quantization`` record
    (backend, mode, torchao config and version, quantized layers, layers kept float)."""
    quantization = require_torchao("quantize.backend=torchao")
    if mode not in MODES:
        raise UserError(f"quantize.mode={mode} is not a torchao INT8 mode; use one of {sorted(MODES)}.")
    unknown = [p for p in skip_names if not any(_matches(n, [p]) for n, _ in model.named_modules())]
    if unknown:
        raise UserError(f"quantize.skip_names entries {unknown} match no layer of the PyTorch model. Use module "
                        "names such as 'backbone.block4.1.mlp.fc2' or patterns such as '*block4*'.")
    quantized, kept_linear = quantizable_linears(model, list(skip_names))
    chosen = set(quantized)
    config = getattr(quantization, MODES[mode])()
    quantization.quantize_(model, config, filter_fn=lambda module, name: name in chosen)
    other_float = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.Conv2d | nn.LayerNorm)})
    import torchao

    return {"format": FORMAT, "backend": "torchao", "mode": mode, "torchao_config": MODES[mode],
            "torchao_version": torchao.__version__, "quantized_layers": quantized,
            "kept_float": kept_linear + [f"every {t} (torchao quantizes Linear layers only)" for t in other_float]}


def load_allowing_torchao(load, path: str):
    """``load()`` (a ``torch.load(weights_only=True)`` of ``path``) with :data:`ALLOWED_TYPES` allowed, scoped to
    that call."""
    with torch.serialization.safe_globals(allowed_types(path)):
        return load()


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> nn.Module:
    """Put a torchao checkpoint's weights (Int8Tensor and plain) into a freshly built float model, as they are."""
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise UserError(f"torchao checkpoint '{path}' does not match the model it describes: {len(missing)} missing "
                        f"keys (e.g. {list(missing)[:3]}), {len(unexpected)} unexpected (e.g. "
                        f"{list(unexpected)[:3]}).")
    return model
