"""The one rule of model/meta.decide, case by case: the model's value wins over a schema default; a value the user
set applies where it can (one warning naming both) and is refused where it cannot (a fixed-size file)."""

from __future__ import annotations

import logging

import pytest

from segformer_tao.config import compose_config
from segformer_tao.config.provenance import source_of
from segformer_tao.errors import UserError
from segformer_tao.model.meta import MODEL_FILE, ModelMeta, apply, decide

MODEL = "evaluate.checkpoint='m.pth'"


def _meta(**changes) -> ModelMeta:
    base = ModelMeta(num_classes=3, class_names=["road", "car", "sky"], palette=[[1, 1, 1], [90, 90, 90], [200, 0, 0]],
                     img_size=96, mean=[0.3, 0.4, 0.5], std=[0.2, 0.25, 0.3], backbone="mit_b0", embed_dim=256)
    return base.replace(**changes)


def _cfg(*overrides: str, spec_file: str | None = None):
    return compose_config("evaluate", ["dataset.segment.root_dir=/data", *overrides], spec_file)


def test_the_models_values_win_over_schema_defaults():
    cfg = _cfg()
    decision = decide(cfg, _meta(), MODEL)
    m = decision.meta
    assert (m.img_size, m.mean, m.std, m.class_names) == (96, [0.3, 0.4, 0.5], [0.2, 0.25, 0.3], ["road", "car", "sky"])
    assert decision.warnings == [] and decision.sources["img_size"] == MODEL_FILE
    apply(cfg, decision)
    seg = cfg.dataset.segment
    assert (seg.img_size, list(seg.augmentation.mean), seg.num_classes) == (96, [0.3, 0.4, 0.5], 3)
    assert (cfg.model.backbone.type, cfg.model.decode_head.decoder_params.embed_dim) == ("mit_b0", 256)


def test_spec_file_and_command_line_values_are_the_users_and_apply_with_a_warning(tmp_path, caplog):
    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset:\n  segment:\n    augmentation:\n      mean: [0.5, 0.5, 0.5]\n")
    cfg = _cfg("dataset.segment.img_size=128", spec_file=str(spec))
    assert source_of(cfg, "dataset.segment.img_size") == "command line"
    assert source_of(cfg, "dataset.segment.augmentation.mean") == f"spec file '{spec}'"
    assert source_of(cfg, "dataset.segment.augmentation.std") is None  # a default, though a sibling is set
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        decision = decide(cfg, _meta(), MODEL)
    assert decision.meta.img_size == 128 and decision.meta.mean == [0.5, 0.5, 0.5]
    assert decision.meta.std == [0.2, 0.25, 0.3]  # not set by the user: the model's
    size_warning = next(w for w in decision.warnings if "img_size" in w)
    assert "96" in size_warning and "128 (command line)" in size_warning
    assert any("mean [0.3, 0.4, 0.5]" in w and "spec file" in w for w in decision.warnings)
    assert len(caplog.records) == len(decision.warnings) == 2
    assert decision.sources["img_size"] == "command line"


def test_a_value_equal_to_the_models_is_no_conflict():
    decision = decide(_cfg("dataset.segment.img_size=96"), _meta(), MODEL)
    assert decision.meta.img_size == 96 and decision.warnings == [] and decision.sources["img_size"] == MODEL_FILE


def test_a_size_the_model_cannot_take_is_refused_with_the_fix():
    with pytest.raises(UserError, match=r"img_size=100 \(command line\) does not fit it: multiples of 32"):
        decide(_cfg("dataset.segment.img_size=100"), _meta(), MODEL, lambda s: None if s % 32 == 0 else
               "multiples of 32")


def test_a_fixed_size_file_runs_at_its_size_and_refuses_another():
    fixed = _meta(input_size=(128, 128))
    assert decide(_cfg(), fixed, MODEL).meta.img_size == 128
    assert decide(_cfg("dataset.segment.img_size=96"), fixed, MODEL).meta.img_size == 128  # the training size
    with pytest.raises(UserError, match="fixed input size 128x128.*img_size=64 \\(command line\\).*dynamic_hw"):
        decide(_cfg("dataset.segment.img_size=64"), fixed, MODEL)
    with pytest.raises(UserError, match="non-square"):
        decide(_cfg(), _meta(input_size=(128, 64)), MODEL)


def test_a_file_without_metadata_takes_the_spec():
    bare = ModelMeta.from_dict({}, num_classes=3)
    decision = decide(_cfg("dataset.segment.img_size=64"), bare, MODEL)
    assert decision.meta.img_size == 64 and decision.sources["img_size"] == "command line"
    assert decide(_cfg(), bare, MODEL).sources["img_size"] == "schema default"


def test_backbone_and_class_count_are_the_models_with_a_warning_only_when_set():
    assert decide(_cfg(), _meta(), MODEL).warnings == []  # schema default fan_small_12 / 2 classes: silence
    decision = decide(_cfg("model.backbone.type=mit_b2", "dataset.segment.num_classes=5"), _meta(), MODEL)
    assert decision.meta.backbone == "mit_b0" and decision.meta.num_classes == 3
    assert any("backbone mit_b0" in w and "model.backbone.type=mit_b2" in w for w in decision.warnings)
    assert any("class count 3" in w and "num_classes=5" in w for w in decision.warnings)


def test_an_explicit_palette_names_the_classes_in_reports():
    palette = ("dataset.segment.palette=[{label_id: 0, seg_class: a, rgb: [0, 0, 0]}, {label_id: 1, seg_class: b, "
               "rgb: [255, 0, 0]}, {label_id: 2, seg_class: c, rgb: [0, 255, 0]}]")
    decision = decide(_cfg(palette), _meta(), MODEL)
    assert decision.meta.class_names == ["a", "b", "c"] and "road" in decision.warnings[0]


def test_meta_round_trips_through_its_stored_form():
    meta = _meta(extra={"epoch": 3, "val_miou": 0.5})
    again = ModelMeta.from_dict(meta.to_dict())
    assert again == meta
    with pytest.raises(UserError, match="4 channels"):
        ModelMeta.from_dict(meta.to_dict(), num_classes=4)
