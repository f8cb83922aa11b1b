"""ONNX external data is read from the model's own folder only (issue 34, finding 12: a model in m/ whose
external-data location was relative pulled ./secret.txt from the working directory into its weights)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segformer_tao.deploy.onnxruntime import make_session
from segformer_tao.errors import UserError

WEIGHTS = np.arange(4, dtype=np.float32)


def _model(folder, location: str, raw: bytes | None = None) -> str:
    """m/model.onnx computing output = input + W, with W stored as external data at ``location``."""
    os.makedirs(folder, exist_ok=True)
    w = numpy_helper.from_array(WEIGHTS, "W")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    w.external_data.add(key="length", value=str(WEIGHTS.nbytes))
    graph = helper.make_graph([helper.make_node("Add", ["input", "W"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [4])], [w])
    path = os.path.join(folder, "model.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    if raw is not None:
        with open(os.path.join(folder, location), "wb") as f:
            f.write(raw)
    return path


def _run(path: str) -> np.ndarray:
    return make_session(path, threads=1).run(["output"], {"input": np.zeros(4, np.float32)})[0]


def test_external_data_beside_the_model_is_found_from_any_working_directory(tmp_path, monkeypatch):
    path = _model(tmp_path / "m", "weights.bin", WEIGHTS.tobytes())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(_run(path), WEIGHTS)


def test_relative_location_is_not_read_from_the_working_directory(tmp_path, monkeypatch):
    path = _model(tmp_path / "m", "./secret.txt")
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
    path = _model(tmp_path / "m", location)
    with pytest.raises(UserError) as e:
        _run(path)
    message = str(e.value)
    assert "model.onnx" in message and "external data" in message and "'W'" in message, message
    assert "outside" in message or "not a file name" in message, message


def test_model_bytes_without_a_folder_cannot_use_external_data(tmp_path):
    path = _model(tmp_path / "m", "weights.bin", WEIGHTS.tobytes())
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(UserError, match="external data"):
        make_session(data, threads=1)
    np.testing.assert_array_equal(  # the bytes with the file they came from: resolved against its folder
        make_session(data, threads=1, source=path).run(["output"], {"input": np.zeros(4, np.float32)})[0], WEIGHTS)
