"""At-rest encryption (segformer_tao/crypto.py): a versioned header with its KDF parameters, the production scrypt
cost, chunked AES-GCM that detects truncation, reordering and changes, clean errors, files of the old format still
readable; with a key set, a plaintext file where our encrypted checkpoint is expected is named or refused."""

from __future__ import annotations

import io
import logging
import os
import struct
import time

import pytest
import torch

from segformer_tao import crypto
from segformer_tao.engine.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from segformer_tao.errors import UserError

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
CHUNK = 1024


def _seal(data: bytes, key: str = "Sup3r-crypto-key", log2_n: int = 10) -> bytes:
    out = io.BytesIO()
    crypto.encrypt_stream(data, out, key, log2_n=log2_n, chunk=CHUNK)
    return out.getvalue()


def test_old_format_checkpoint_still_loads():
    """tests/data/encrypted_v1.pth was written by the format-1 code (scrypt N=2^14, one AES-GCM block)."""
    path = os.path.join(DATA, "encrypted_v1.pth")
    with open(path, "rb") as f:
        assert f.read(len(crypto.MAGIC1)) == crypto.MAGIC1
    payload = load_checkpoint(path, "old-format-key-0123")
    assert torch.equal(payload["state_dict"]["model.w"], torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert payload["meta"]["epoch"] == 3 and payload["meta"]["class_names"] == ["a", "b"]
    with pytest.raises(UserError, match="encryption_key is wrong"):
        load_checkpoint(path, "old-format-key-0124")


def test_production_header_stores_a_strong_kdf_cost(tmp_path):
    """Written once at the production cost (N=2^17): the header records it, and the file opens in a fresh cache."""
    path = str(tmp_path / "c.pth")
    started = time.perf_counter()
    save_checkpoint(path, {"w": torch.ones(3)}, "Sup3r-production-key")
    seconds = time.perf_counter() - started
    blob = open(path, "rb").read()
    assert blob.startswith(crypto.MAGIC2)
    kdf, log2_n, r, p, chunk = struct.unpack_from(">BBBBI", blob, len(crypto.MAGIC2))
    assert (kdf, log2_n, r, p, chunk) == (crypto.KDF_SCRYPT, 17, 8, 1, 1 << 20)
    crypto._MASTER.clear()
    assert torch.equal(load_checkpoint(path, "Sup3r-production-key")["w"], torch.ones(3))
    print(f"scrypt N=2^17 save: {seconds:.2f} s")


def test_round_trip_many_chunks_and_empty():
    for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7):
        data = os.urandom(size)
        assert crypto.decrypt_bytes(_seal(data), "Sup3r-crypto-key") == data


def test_truncated_reordered_and_modified_files_are_refused():
    data = os.urandom(4 * CHUNK + 100)
    blob = _seal(data)
    head, step = crypto.HEADER_LEN, CHUNK + crypto.TAG
    for cut in (head, head + step, head + 2 * step, head + step + 5, len(blob) - 1, head - 3):
        with pytest.raises(UserError, match="is truncated"):
            crypto.decrypt_bytes(blob[:cut], "Sup3r-crypto-key", "f.pth")
    chunks = [blob[head + i * step: head + (i + 1) * step] for i in range(5)]
    swapped = blob[:head] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    with pytest.raises(UserError, match="was modified"):
        crypto.decrypt_bytes(swapped, "Sup3r-crypto-key", "f.pth")
    flipped = bytearray(blob)
    flipped[head + step + 10] ^= 1
    with pytest.raises(UserError, match="was modified"):
        crypto.decrypt_bytes(bytes(flipped), "Sup3r-crypto-key", "f.pth")
    cheaper = bytearray(blob)
    cheaper[len(crypto.MAGIC2) + 1] = 11  # the header's KDF cost is authenticated
    with pytest.raises(UserError, match="encryption_key is wrong"):
        crypto.decrypt_bytes(bytes(cheaper), "Sup3r-crypto-key", "f.pth")
    with pytest.raises(UserError, match="encryption_key is wrong"):
        crypto.decrypt_bytes(blob, "Sup3r-other-key", "f.pth")


def test_truncated_checkpoint_is_a_user_error(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint(path, {"w": torch.ones(1000)}, "Sup3r-crypto-key")
    blob = open(path, "rb").read()
    for cut in (20, len(blob) // 2, len(blob) - 1):
        (tmp_path / "cut.pth").write_bytes(blob[:cut])
        with pytest.raises(UserError, match="truncated"):
            load_checkpoint(str(tmp_path / "cut.pth"), "Sup3r-crypto-key")


def test_empty_key_is_refused_not_taken_as_no_encryption(tmp_path):
    with pytest.raises(UserError, match="encryption_key is empty"):
        save_checkpoint(str(tmp_path / "c.pth"), {"w": 1}, "")
    assert not (tmp_path / "c.pth").exists()
    save_checkpoint(str(tmp_path / "c.pth"), {"w": 1}, "Sup3r-crypto-key")
    with pytest.raises(UserError, match="encryption_key is empty"):
        crypto.decrypt_bytes(open(tmp_path / "c.pth", "rb").read(), "")


@pytest.fixture
def plain_model_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    from segformer_tao.config import compose_config
    from segformer_tao.model import build_model

    cfg = compose_config("train", ["model=mit_b0", "dataset.segment.num_classes=3"])
    model = build_model(cfg, load_weights=False)
    path = str(tmp_path / "segformer_model_best.pth")
    save_checkpoint(path, {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                           "meta": {"backbone": "mit_b0", "num_classes": 3},
                           "config": OmegaConf.to_container(cfg, resolve=True)})
    return path


def test_plaintext_where_encrypted_expected_is_named_or_refused(plain_model_checkpoint, caplog):
    path = plain_model_checkpoint
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        load_model_from_checkpoint(path, "Sup3r-crypto-key")
    assert any(path in r.getMessage() and "NOT encrypted" in r.getMessage() for r in caplog.records)
    with pytest.raises(UserError, match="encryption_strict=true"):
        load_model_from_checkpoint(path, "Sup3r-crypto-key", strict=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):  # pretrained weights: plaintext, no word
        load_checkpoint(path, "Sup3r-crypto-key", own=False)
        load_model_from_checkpoint(path, None, strict=True)  # no key: nothing to expect
    assert not caplog.records


@pytest.mark.parametrize("log2_n, r, p", [(22, 32, 16), (20, 8, 1), (18, 8, 1), (17, 16, 1), (17, 8, 2), (9, 8, 1)])
def test_crafted_kdf_cost_is_refused_before_any_derivation(monkeypatch, log2_n, r, p):
    """A header asking for more scrypt work or memory than we write (up to 16 GiB x 16 passes) is refused at once,
    with one paragraph, before scrypt runs (issue 34, finding 3)."""
    def no_scrypt(*args):
        raise AssertionError(f"scrypt ran for a refused header: {args[2:]}")

    monkeypatch.setattr(crypto, "_master", no_scrypt)
    head = crypto.MAGIC2 + struct.pack(">BBBBI", crypto.KDF_SCRYPT, log2_n, r, p, CHUNK) + os.urandom(16 + 16 + 7 + 16)
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        crypto.decrypt_bytes(head + os.urandom(64), "any-key", "crafted.pth")
    assert time.monotonic() - t0 < 1
    message = str(e.value)
    assert "crafted.pth" in message and f"N=2^{log2_n}, r={r}, p={p}" in message and "MiB" in message, message


def test_every_cost_we_write_is_accepted():
    for log2_n in (10, crypto.LOG2_N):
        assert crypto.decrypt_bytes(_seal(b"weights", log2_n=log2_n), "Sup3r-crypto-key") == b"weights"
