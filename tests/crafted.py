"""Crafted files for the tests of issue 34 (tests/data, tests/deploy and the bad-input corpus build them)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

WEIGHTS = np.arange(4, dtype=np.float32)


def bomb_png(width: int, height: int) -> bytes:
    """A grey PNG whose header says width x height, with a few bytes of data (never decoded by the code under
    test); built by hand so that making it costs nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


def onnx_with_external_data(folder, location: str, raw: bytes | None = None) -> str:
    """<folder>/model.onnx computing output = input + W, with W stored as external data at ``location``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

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
