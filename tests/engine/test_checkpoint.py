"""Checkpoint format: weights_only round trip, secrets stripped, AES-GCM encryption with clear errors."""

from __future__ import annotations

import io as _io

import pytest
import torch

from segformer_tao.engine.checkpoint import is_encrypted, load_checkpoint, model_state_dict, save_checkpoint
from segformer_tao.errors import UserError


def _payload():
    net = torch.nn.Conv2d(3, 2, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(1, 3, 4, 4)).sum().backward()
    opt.step()
    return {
        "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "meta": {"class_names": ["a", "b"], "palette": [[0, 0, 0], [255, 0, 0]], "img_size": 64},
        "config": {"encryption_key": "s3cret", "train": {"seed": 1, "nested": {"encryption_key": "x"}}},
        "rng_states": {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)},
    }


def test_round_trip_is_weights_only_and_strips_secrets(tmp_path):
    path = str(tmp_path / "m.pth")
    payload = _payload()
    save_checkpoint(path, payload)
    raw = torch.load(path, weights_only=True)  # the plain file loads with the safe unpickler
    assert "encryption_key" not in raw["config"] and "encryption_key" not in raw["config"]["train"]["nested"]
    assert b"s3cret" not in open(path, "rb").read()
    back = load_checkpoint(path)
    assert torch.equal(back["state_dict"]["model.weight"], payload["state_dict"]["model.weight"])
    assert set(model_state_dict(back)) == {"weight", "bias"}
    step = back["optimizer_states"][0]["state"][0]["step"]
    assert step == payload["optimizer_states"][0]["state"][0]["step"]


def test_encrypted_checkpoint_needs_the_right_key(tmp_path):
    path = str(tmp_path / "enc.pth")
    payload = _payload()
    save_checkpoint(path, payload, encryption_key="k1")
    blob = open(path, "rb").read()
    assert is_encrypted(blob)
    with pytest.raises(Exception):  # noqa: B017 - not readable without the key, whatever torch raises
        torch.load(_io.BytesIO(blob), weights_only=True)
    back = load_checkpoint(path, encryption_key="k1")
    assert torch.equal(back["state_dict"]["model.bias"], payload["state_dict"]["model.bias"])
    with pytest.raises(UserError, match="encryption_key is wrong"):
        load_checkpoint(path, encryption_key="k2")
    with pytest.raises(UserError, match="no encryption_key was given"):
        load_checkpoint(path)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    (tmp_path / "bad.pth").write_bytes(bytes(tampered))
    with pytest.raises(UserError, match="modified"):
        load_checkpoint(str(tmp_path / "bad.pth"), encryption_key="k1")


def test_missing_and_garbage_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="Cannot read checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pth"))
