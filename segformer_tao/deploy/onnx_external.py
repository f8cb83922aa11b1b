"""ONNX external data (weights stored beside the .onnx file) is read from the model's own folder, and only there.

ONNX Runtime, given a model's bytes, resolves an external-data ``location`` against the working directory: a model in
``m/`` naming ``./secret.txt`` would pull that file of the working directory into its weights. Here every location is
checked first (a relative file name inside the model's folder, symbolic links resolved, no ``..``) and the session is
told that folder (``session.model_external_initializers_file_folder_path``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from segformer_tao import io
from segformer_tao.errors import UserError

FOLDER_OPTION = "session.model_external_initializers_file_folder_path"


def _tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers, sparse initializers, and those in node attributes and subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _locations(data: bytes) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor stored outside the model; [] when none (or not parseable here:
    ONNX Runtime then reports what is wrong with the file)."""
    if b"location" not in data:  # every external-data entry carries this key: most models skip the parse
        return []
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError):
        return []
    found = []
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            found.append((tensor.name, entries.get("location", "")))
    return found


def _outside(folder: str, location: str) -> str | None:
    """Why ``location`` is not a file inside ``folder`` (None when it is)."""
    parts = location.replace("\\", "/").split("/")
    if not location or "\x00" in location or any(p in ("", "..") for p in parts) or location[1:3] == ":/":
        return "not a file name relative to the model's folder"
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, target]) != root:
        return f"outside the model's folder '{folder}' (through a symbolic link)"
    return None


def external_data_folder(data: bytes, model: bytes | str, source: str | None = None) -> str | None:
    """The folder ONNX Runtime must resolve ``data``'s external data against: the local model file's folder
    (``model`` when it is a path, else ``source``). None when the model has no external data. UserError for a
    location outside that folder, or for external data of a model that has no local folder (bytes, s3://)."""
    found = _locations(data)
    if not found:
        return None
    path = model if isinstance(model, str) else source
    name = path or "<model bytes>"
    if not path or io.is_remote(path):
        raise UserError(f"ONNX model '{name}' keeps tensor '{found[0][0]}' as external data ('{found[0][1]}'), which "
                        "can only be read beside a local model file. Copy the .onnx file and its data files into one "
                        "local folder and point the key at the .onnx file there.")
    folder = os.path.dirname(os.path.abspath(path))
    for tensor, location in found:
        why = _outside(folder, location)
        if why is not None:
            raise UserError(f"ONNX model '{path}' keeps tensor '{tensor}' as external data at {location!r}, which is "
                            f"{why}: refused, external data is read from the model's own folder only. Re-export the "
                            "model (`segformer export`), or save it with its data files beside it.")
    return folder
