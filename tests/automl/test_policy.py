"""Routing of `segformer train`: AutoML study or plain training, one loud line, skill_info.yaml untouched."""

from __future__ import annotations

import logging
import os

import pytest

from segformer_tao.automl.policy import NOT_GENERATED, choose_path
from segformer_tao.config import compose_config
from segformer_tao.errors import UserError


def _cfg(*overrides: str):
    return compose_config("train", ["dataset.segment.root_dir=/data", *overrides])


def _route(cfg, specs, caplog) -> tuple[str, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="segformer_tao"):
        path = choose_path(cfg, specs_dir=str(specs))
    return path, [r.getMessage() for r in caplog.records if "train path" in r.getMessage()]


def test_auto_with_generated_specs_runs_automl(specs_copy, caplog):
    skill = specs_copy / "references" / "skill_info.yaml"
    before = (skill.read_bytes(), os.stat(skill).st_mtime_ns)
    path, lines = _route(_cfg(), specs_copy, caplog)
    assert path == "automl"
    assert len(lines) == 1 and "AutoML search" in lines[0] and "automl_policy=auto" in lines[0]
    assert (skill.read_bytes(), os.stat(skill).st_mtime_ns) == before  # the per-run policy never edits it


def test_off_trains_plainly_without_reading_specs(tmp_path, caplog):
    path, lines = _route(_cfg("automl_policy=off"), tmp_path / "nowhere", caplog)
    assert path == "plain" and len(lines) == 1 and "automl_policy=off" in lines[0]


@pytest.mark.parametrize("broken", ["missing_schema", "bad_schema", "missing_template", "bad_template"])
def test_auto_with_specs_not_generated_says_so_and_trains_plainly(specs_copy, caplog, broken):
    schema = specs_copy / "schemas" / "train.schema.json"
    template = specs_copy / "references" / "spec_template_train.yaml"
    target = schema if "schema" in broken else template
    if broken.startswith("missing"):
        target.unlink()
    else:
        target.write_text("{not: [valid" if target.suffix == ".yaml" else "{\"truncated\": ")
    path, lines = _route(_cfg(), specs_copy, caplog)
    assert path == "plain"
    assert len(lines) == 1 and NOT_GENERATED in lines[0] and target.name in lines[0]
    assert NOT_GENERATED == ("AutoML is enabled for this model but not runnable until the schemas are generated "
                             "(make specs)")


def test_on_requires_automl(specs_copy, caplog):
    assert _route(_cfg("automl_policy=on"), specs_copy, caplog)[0] == "automl"
    (specs_copy / "schemas" / "train.schema.json").unlink()
    with pytest.raises(UserError, match=r"automl_policy=on.*make specs.*automl_policy=auto or off"):
        choose_path(_cfg("automl_policy=on"), specs_dir=str(specs_copy))


def test_model_without_automl_capability(specs_copy, caplog):
    skill = specs_copy / "references" / "skill_info.yaml"
    skill.write_text(skill.read_text().replace("automl_enabled: true", "automl_enabled: false"))
    path, lines = _route(_cfg(), specs_copy, caplog)
    assert path == "plain" and "automl_enabled is not true" in lines[0]
    with pytest.raises(UserError, match="automl_enabled"):
        choose_path(_cfg("automl_policy=on"), specs_dir=str(specs_copy))


def test_multi_gpu_trials_are_searched_but_multi_node_trials_are_not(specs_copy, caplog):
    assert _route(_cfg("train.num_gpus=2"), specs_copy, caplog)[0] == "automl"  # DDP inside each trial's child
    path, lines = _route(_cfg("train.num_nodes=2"), specs_copy, caplog)
    assert path == "plain" and "train.num_nodes=2" in lines[0]
    with pytest.raises(UserError, match="train.num_nodes=1"):
        choose_path(_cfg("automl_policy=on", "train.num_nodes=2"), specs_dir=str(specs_copy))


def test_without_the_automl_extra_auto_trains_plainly_and_on_says_what_to_install(specs_copy, caplog, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    path, lines = _route(_cfg(), specs_copy, caplog)
    assert path == "plain" and "optuna" in lines[0] and "segformer_tao[automl]" in lines[0]
    with pytest.raises(UserError, match=r"optuna.*not installed"):
        choose_path(_cfg("automl_policy=on"), specs_dir=str(specs_copy))
