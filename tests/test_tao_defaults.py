"""Defaults that differ from TAO's: `segformer config -e spec` names the ones a TAO spec relies on; docs table."""

from __future__ import annotations

import os
import re

import yaml

from segformer_tao.cli import main
from segformer_tao.config.provenance import default_of
from segformer_tao.config.tao_defaults import DIFFERENCES

HERE = os.path.dirname(__file__)
SPEC = os.path.join(HERE, "specs", "tao_vit_train_spec.yaml")  # sets export.input_width/height, not quantize.*


def test_config_notes_the_tao_defaults_a_spec_relies_on(capsys):
    assert main(["config", "quantize", "-e", SPEC, "results_dir=/tmp/r", "dataset.segment.root_dir=/tmp/d"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["quantize"]["backend"] == "onnxruntime"  # stdout stays the plain config
    notes = [ln for ln in err.splitlines() if ln.startswith("note: this spec relies on defaults")]
    assert len(notes) == 1, err
    assert "quantize.backend=onnxruntime (TAO: torchao)" in notes[0]
    assert "quantize.mode=static_ptq (TAO: weight_only_ptq)" in notes[0]
    assert "export.input_width" not in notes[0] and "docs/tao_defaults.md" in notes[0]


def test_no_note_when_the_spec_or_command_line_sets_them(capsys):
    assert main(["config", "quantize", "-e", SPEC, "results_dir=/tmp/r", "dataset.segment.root_dir=/tmp/d",
                 "quantize.backend=torchao", "quantize.mode=weight_only_ptq"]) == 0
    assert "note: this spec relies" not in capsys.readouterr().err


def test_docs_table_is_the_modules_table():
    text = open(os.path.join(HERE, "..", "docs", "tao_defaults.md")).read()
    rows = re.findall(r"^\| `([\w.]+)` \| (.*?) \| (.*?) \| (.*?) \|$", text, re.M)
    assert {key: (tao, ours, why) for key, tao, ours, why in rows} == {
        key: (str(tao), "null" if default_of(key) is None else str(default_of(key)), why)
        for key, (tao, why) in DIFFERENCES.items()}
