"""ONNX external data is read from the model's own folder only (issue 34, finding 12: a model in m/ whose
external-data location was relative pulled ./secret.txt from the working directory into its weights)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from segformer_tao.deploy.onnxruntime import make_session
from segformer_tao.errors import UserError
from tests.crafted import WEIGHTS, onnx_with_external_data


def _run(path: str) -> np.ndarray:
    return make_session(path, threads=1).run(["output"], {"input": np.zeros(4, np.float32)})[0]


def test_external_data_beside_the_model_is_found_from_any_working_directory(tmp_path, monkeypatch):
    path = onnx_with_external_data(tmp_path / "m", "weights.bin", WEIGHTS.tobytes())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(_run(path), WEIGHTS)


def test_relative_location_is_not_read_from_the_working_directory(tmp_path, monkeypatch):
    path = onnx_with_external_data(tmp_path / "m", "./secret.txt")
    (tmp_path / "secret.txt").write_bytes(np.full(4, 7, np.float32).tobytes())  # in the working directory only
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        _run(path)
    assert "model.onnx" in str(e.value)


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/ABS/secret.bin", "link.bin",
                                      "", "a\x00b"])
def test_locations_outside_the_model_folder_are_refused(tmp_path, location):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(4, 7, np.float32).tobytes())
    location = location.replace("/ABS", str(tmp_path))
    os.makedirs(tmp_path / "m")
    os.symlink(secret, tmp_path / "m" / "link.bin")  # a link inside the folder leading out of it
    path = onnx_with_external_data(tmp_path / "m", location)
    with pytest.raises(UserError) as e:
        _run(path)
    message = str(e.value)
    assert "model.onnx" in message and "external data" in message and "'W'" in message, message
    assert "outside" in message or "not a file name" in message, message


def test_model_bytes_without_a_folder_cannot_use_external_data(tmp_path):
    path = onnx_with_external_data(tmp_path / "m", "weights.bin", WEIGHTS.tobytes())
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(UserError, match="external data"):
        make_session(data, threads=1)
    np.testing.assert_array_equal(  # the bytes with the file they came from: resolved against its folder
        make_session(data, threads=1, source=path).run(["output"], {"input": np.zeros(4, np.float32)})[0], WEIGHTS)
