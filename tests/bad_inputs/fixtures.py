"""Build the files the bad-input corpus points at (once per test session)."""

from __future__ import annotations

import os

import pytest


def _write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="session")
def bad_paths(tmp_path_factory) -> dict[str, str]:
    tmp = str(tmp_path_factory.mktemp("bad_inputs"))
    paths = {"tmp": tmp, "data": os.path.join(tmp, "no_dataset_needed"), "onnx": os.path.join(tmp, "m.onnx")}
    paths["bad_yaml"] = _write(os.path.join(tmp, "bad.yaml"), "train: [unclosed\n")
    paths["scalar_yaml"] = _write(os.path.join(tmp, "scalar.yaml"), "just a string\n")
    paths["unknown_key_yaml"] = _write(os.path.join(tmp, "unknown.yaml"), "train:\n  num_epochz: 3\n")
    paths["results_missing_yaml"] = _write(os.path.join(tmp, "results.yaml"), "results_dir: ???\n")
    paths["a_file"] = _write(os.path.join(tmp, "a_file"), "x")
    paths["empty_dir"] = os.path.join(tmp, "empty_job")
    os.makedirs(paths["empty_dir"], exist_ok=True)
    return paths
