"""Self-describing checkpoints: one ``.pth`` holds weights, metadata, config and the training state.

Layout (a plain dict of tensors and Python containers, so ``torch.load(weights_only=True)`` reads it):

* ``state_dict`` — the LightningModule's weights (model keys prefixed ``model.``);
* ``meta`` — :class:`segformer_tao.model.meta.ModelMeta`'s stored form (``format``, ``backbone``, ``num_classes``,
  ``class_names``, ``palette``, ``img_size``, ``mean``, ``std``, ``embed_dim``, ``ignore_index``) plus ``epoch``,
  ``global_step``, ``val_miou``;
* ``config`` — the experiment config as a dict, with every ``encryption_key`` removed;
* resume state written by Lightning (``optimizer_states``, ``lr_schedulers``, ``loops``, ``epoch``,
  ``global_step``, ``callbacks``) plus ``rng_states`` (torch, CUDA, numpy, python).

With an ``encryption_key`` the serialized bytes are sealed by :mod:`segformer_tao.crypto` (chunked AES-256-GCM
under an scrypt-derived key, the KDF parameters in an authenticated, versioned header): a wrong key, a modified or a
truncated file fails to open with a UserError. With a key set, a plaintext file where one of our checkpoints is
expected (``own=True``: resume, evaluate/inference/export/quantize) is named in a warning, or refused with
``encryption_strict=true``; pretrained weights from elsewhere load as plaintext.
"""

from __future__ import annotations

import io as _io
import logging
from typing import Any

import torch

from segformer_tao import crypto, io
from segformer_tao.crypto import is_encrypted
from segformer_tao.errors import UserError, load_failure_reason, refused_global, refused_pickle
from segformer_tao.redact import strip_secrets

log = logging.getLogger("segformer_tao")
_WARNED: set[str] = set()


def save_checkpoint(path: str, payload: dict, encryption_key: str | None = None) -> None:
    """Serialize ``payload`` with ``torch.save`` and write it atomically (local or s3://).

    ``payload`` must contain only tensors and plain containers (dict/list/tuple/str/int/float/bool/None).
    The top-level ``config`` entry, if present, is stored without secrets.
    """
    if "config" in payload:
        payload = {**payload, "config": strip_secrets(payload["config"])}
    buf = _io.BytesIO()
    torch.save(payload, buf)
    with io.atomic_write(path, "wb") as f:
        if encryption_key is not None:  # "" is refused by crypto, never taken as "no encryption"
            crypto.encrypt_stream(buf.getbuffer(), f, encryption_key)
        else:
            f.write(buf.getbuffer())


def load_checkpoint(path: str, encryption_key: str | None = None, map_location: Any = "cpu", *, own: bool = False,
                    strict: bool = False) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    ``own``: the file is one of our own checkpoints (resume, evaluate, export, ...), so with a key set a plaintext
    file is unexpected: a warning names it, or with ``strict`` (``encryption_strict=true``) it is refused.
    Raises :class:`UserError` when the file is missing, encrypted without a key, encrypted with another
    key, truncated, or not a loadable checkpoint.
    """
    blob = io.read_bytes(path)
    if is_encrypted(blob):
        if not encryption_key:
            raise UserError(
                f"Checkpoint '{path}' is encrypted but no encryption_key was given. Pass the key used for training "
                "(recommended: encryption_key='${oc.env:SEGFORMER_KEY}' with the key in that environment variable)."
            )
        blob = crypto.decrypt_bytes(blob, encryption_key, path)
    elif own and encryption_key:
        _plaintext_where_encrypted(path, strict)
    try:
        return _load_weights_only(blob, path, map_location)
    except UserError:
        raise
    except Exception as e:  # any unpickling failure means "not a checkpoint we can read"
        refused = refused_pickle(path, e)
        if refused is not None:
            raise refused from e
        other = _other_model_file(path)
        if other:
            what, key = other
            raise UserError(f"'{path}' is {what}, not a PyTorch checkpoint: pass it as <action>.{key} (e.g. "
                            f"evaluate.{key}={path}) instead of a checkpoint key, or give a .pth written by "
                            "`segformer train`.") from e
        reason = load_failure_reason(e)
        hint = (
            " It may be truncated (an interrupted copy), or encrypted with a scheme this tool does not read (e.g. "
            "a TAO .tlt/.pth): decrypt it with the tool that wrote it, or import weights with "
            "train.pretrained_model_path."
        )
        raise UserError(f"Cannot read checkpoint '{path}': {reason}.{hint}") from e


def _plaintext_where_encrypted(path: str, strict: bool) -> None:
    """A key is set and one of our checkpoints is expected, but ``path`` is plaintext: anyone could have put it there
    (no tamper check applies)."""
    if strict:
        raise UserError(f"Checkpoint '{path}' is not encrypted, but encryption_key is set and encryption_strict=true "
                        "requires our checkpoints to be encrypted with it. Use the checkpoint your encrypted job "
                        "wrote, or set encryption_strict=false to load this unencrypted file (with a warning).")
    if path not in _WARNED:
        _WARNED.add(path)
        log.warning("warning: checkpoint '%s' is NOT encrypted although encryption_key is set: it was not written by a "
                    "job with this key and its integrity is not checked (encryption_strict=true refuses it).", path)


def _load_weights_only(blob: bytes, path: str, map_location: Any) -> dict:
    """``torch.load(weights_only=True)``; a file that names torchao's types (a quantize.backend=torchao
    checkpoint) is read again with exactly those types allowed (model/torchao_int8.py), nothing else."""
    from segformer_tao.model import torchao_int8

    try:
        return torch.load(_io.BytesIO(blob), map_location=map_location, weights_only=True)
    except Exception as e:
        named = refused_global(e)
        if named is None or not torchao_int8.is_torchao_reference(named):
            raise
    return torchao_int8.load_allowing_torchao(
        lambda: torch.load(_io.BytesIO(blob), map_location=map_location, weights_only=True), path)


def _other_model_file(path: str) -> tuple[str, str] | None:
    """(what the file is, the key that takes it) when its name says it is an ONNX model or an engine."""
    name = path.lower()
    if name.endswith(".onnx"):
        return "an ONNX model", "onnx_file"
    if name.endswith((".engine", ".trt", ".plan")):
        return "a TensorRT engine", "trt_engine"
    return None


def model_state_dict(payload: dict) -> dict[str, torch.Tensor]:
    """The model's own weights from a checkpoint payload (Lightning's ``model.`` prefix removed)."""
    state = payload.get("state_dict", payload)
    prefix = "model."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def load_model_from_checkpoint(
    path: str, encryption_key: str | None = None, map_location: Any = "cpu", strict: bool = False
) -> tuple[torch.nn.Module, dict]:
    """Rebuild the trained network from one of our checkpoints.

    Returns ``(model, meta)``: the model in eval mode on ``map_location`` and the checkpoint's
    :class:`~segformer_tao.model.meta.ModelMeta` (``extra`` holds epoch, val_miou, quantization...).
    """
    from omegaconf import OmegaConf

    from segformer_tao.model import build_model, torchao_int8
    from segformer_tao.model import meta as model_meta

    payload = load_checkpoint(path, encryption_key, map_location="cpu", own=True, strict=strict)
    meta, config = payload.get("meta"), payload.get("config")
    if not isinstance(meta, dict) or not isinstance(config, dict):
        raise UserError(
            f"'{path}' is not a segformer_tao checkpoint (no 'meta'/'config' inside). To start from other "
            "weights (Hugging Face, NVlabs/mmseg, TAO, timm), use train.pretrained_model_path or "
            "model.backbone.pretrained_backbone_path and train, then use the checkpoint that training writes."
        )
    cfg = OmegaConf.create(config)
    model = build_model(cfg, load_weights=False)
    described = model_meta.from_checkpoint(payload)
    if isinstance(payload.get("quantization"), dict) and payload["quantization"].get("backend") == "torchao":
        model = torchao_int8.load_state(model, model_state_dict(payload), path)
        extra = {**described.extra, "quantization": payload["quantization"]}
        return model.to(map_location).eval(), described.replace(extra=extra)
    missing, unexpected = model.load_state_dict(model_state_dict(payload), strict=False)
    if missing or unexpected:
        raise UserError(
            f"Checkpoint '{path}' does not match the model it describes (backbone {meta.get('backbone')}): "
            f"{len(missing)} missing keys (e.g. {list(missing)[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {list(unexpected)[:3]}). The file may come from another version of the tool."
        )
    return model.to(map_location).eval(), described
