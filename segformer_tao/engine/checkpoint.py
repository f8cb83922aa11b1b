"""Self-describing checkpoints: one ``.pth`` holds weights, metadata, config and the training state.

Layout (a plain dict of tensors and Python containers, so ``torch.load(weights_only=True)`` reads it):

* ``state_dict`` — the LightningModule's weights (model keys prefixed ``model.``);
* ``meta`` — ``format``, ``backbone``, ``num_classes``, ``class_names``, ``palette`` (RGB per class id),
  ``img_size``, ``mean``, ``std``, ``ignore_index``, ``epoch``, ``global_step``, ``val_miou``;
* ``config`` — the experiment config as a dict, with every ``encryption_key`` removed;
* resume state written by Lightning (``optimizer_states``, ``lr_schedulers``, ``loops``, ``epoch``,
  ``global_step``, ``callbacks``) plus ``rng_states`` (torch, CUDA, numpy, python).

With an ``encryption_key`` the serialized bytes are sealed with AES-256-GCM (authenticated: a wrong key or a
modified file fails to open) under a key derived with scrypt from the passphrase and a random salt:
``MAGIC | salt(16) | nonce(12) | ciphertext+tag``.
"""

from __future__ import annotations

import io as _io
import os
from typing import Any

import torch

from segformer_tao import io
from segformer_tao.errors import UserError, load_failure_reason, refused_global, refused_pickle

FORMAT = "segformer_tao.checkpoint/1"
MAGIC = b"SEGTAO-AESGCM-1\n"
_SALT_LEN, _NONCE_LEN = 16, 12
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def _derive_key(passphrase: str, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, **_SCRYPT).derive(str(passphrase).encode("utf-8"))


def encrypt_bytes(data: bytes, passphrase: str) -> bytes:
    """Seal ``data`` with AES-256-GCM under a scrypt-derived key (fresh salt and nonce per call)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = os.urandom(_SALT_LEN), os.urandom(_NONCE_LEN)
    sealed = AESGCM(_derive_key(passphrase, salt)).encrypt(nonce, data, MAGIC)
    return MAGIC + salt + nonce + sealed


def decrypt_bytes(blob: bytes, passphrase: str, path: str = "<bytes>") -> bytes:
    """Open bytes made by :func:`encrypt_bytes`; a wrong key or a tampered file is a :class:`UserError`."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    head = len(MAGIC)
    salt = blob[head : head + _SALT_LEN]
    nonce = blob[head + _SALT_LEN : head + _SALT_LEN + _NONCE_LEN]
    sealed = blob[head + _SALT_LEN + _NONCE_LEN :]
    try:
        return AESGCM(_derive_key(passphrase, salt)).decrypt(nonce, sealed, MAGIC)
    except InvalidTag as e:
        raise UserError(
            f"Cannot decrypt checkpoint '{path}': the encryption_key is wrong (or the file was modified). "
            "Pass the same encryption_key=... that was set when the model was trained."
        ) from e


def is_encrypted(blob: bytes) -> bool:
    return blob[: len(MAGIC)] == MAGIC


def strip_secrets(obj: Any) -> Any:
    """Copy of a config container without any ``encryption_key`` entry (at any depth) and with the password of any
    URL masked (``automl.storage=postgresql://user:***@host/db``)."""
    if isinstance(obj, dict):
        return {k: strip_secrets(v) for k, v in obj.items() if k != "encryption_key"}
    if isinstance(obj, list | tuple):
        return [strip_secrets(v) for v in obj]
    if isinstance(obj, str):
        from segformer_tao.config.compose import mask_url_passwords

        return mask_url_passwords(obj)
    return obj


def save_checkpoint(path: str, payload: dict, encryption_key: str | None = None) -> None:
    """Serialize ``payload`` with ``torch.save`` and write it atomically (local or s3://).

    ``payload`` must contain only tensors and plain containers (dict/list/tuple/str/int/float/bool/None).
    The top-level ``config`` entry, if present, is stored without secrets.
    """
    if "config" in payload:
        payload = {**payload, "config": strip_secrets(payload["config"])}
    buf = _io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    if encryption_key:
        data = encrypt_bytes(data, encryption_key)
    io.write_bytes(path, data)


def load_checkpoint(path: str, encryption_key: str | None = None, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises :class:`UserError` when the file is missing, encrypted without a key, encrypted with another
    key, or not a loadable checkpoint.
    """
    blob = io.read_bytes(path)
    if is_encrypted(blob):
        if not encryption_key:
            raise UserError(
                f"Checkpoint '{path}' is encrypted but no encryption_key was given. "
                "Pass encryption_key=<the key used for training> on the command line or in the spec."
            )
        blob = decrypt_bytes(blob, encryption_key, path)
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
    path: str, encryption_key: str | None = None, map_location: Any = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Rebuild the trained network from one of our checkpoints.

    Returns ``(model, meta)``: the model in eval mode on ``map_location`` and the checkpoint's ``meta``
    (class_names, palette, img_size, mean, std, backbone, num_classes, ...).
    """
    from omegaconf import OmegaConf

    from segformer_tao.model import build_model, torchao_int8

    payload = load_checkpoint(path, encryption_key, map_location="cpu")
    meta, config = payload.get("meta"), payload.get("config")
    if not isinstance(meta, dict) or not isinstance(config, dict):
        raise UserError(
            f"'{path}' is not a segformer_tao checkpoint (no 'meta'/'config' inside). To start from other "
            "weights (Hugging Face, NVlabs/mmseg, TAO, timm), use train.pretrained_model_path or "
            "model.backbone.pretrained_backbone_path and train, then use the checkpoint that training writes."
        )
    cfg = OmegaConf.create(config)
    model = build_model(cfg, load_weights=False)
    if isinstance(payload.get("quantization"), dict) and payload["quantization"].get("backend") == "torchao":
        model = torchao_int8.load_state(model, model_state_dict(payload), path)
        return model.to(map_location).eval(), {**meta, "quantization": payload["quantization"]}
    missing, unexpected = model.load_state_dict(model_state_dict(payload), strict=False)
    if missing or unexpected:
        raise UserError(
            f"Checkpoint '{path}' does not match the model it describes (backbone {meta.get('backbone')}): "
            f"{len(missing)} missing keys (e.g. {list(missing)[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {list(unexpected)[:3]}). The file may come from another version of the tool."
        )
    return model.to(map_location).eval(), meta
