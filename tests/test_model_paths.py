"""Model paths that gave internal errors (issue 34, finding 16): a folder where a model file is expected, and shard
names '.' or holding NUL in a Hugging Face index."""

from __future__ import annotations

import json

import pytest

from segformer_tao import io
from segformer_tao.errors import UserError


def test_reading_a_folder_as_a_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        io.read_bytes(str(tmp_path))


@pytest.mark.parametrize("key", ["evaluate.checkpoint", "evaluate.onnx_file", "evaluate.trt_engine"])
def test_model_key_naming_a_folder_is_refused_up_front(tmp_path, key):
    from omegaconf import OmegaConf

    from segformer_tao.cli import _check_model_files_exist

    cfg = OmegaConf.create({"evaluate": {"checkpoint": None, "onnx_file": None, "trt_engine": None}})
    OmegaConf.update(cfg, key, str(tmp_path))
    with pytest.raises(UserError) as e:
        _check_model_files_exist(cfg, [key])
    message = str(e.value)
    assert f"{key}='{tmp_path}' is a folder" in message and "parent_job=" in message, message


@pytest.mark.parametrize("shard", [".", "./", "a\x00b", "sub/.", "./."])
def test_odd_shard_names_are_refused(tmp_path, shard):
    from segformer_tao.model.weights import read_state_dict

    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match="not a file inside the model folder"):
        read_state_dict(str(tmp_path))
