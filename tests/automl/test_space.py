"""The search space follows the train schema's AutoML metadata: bounds, options, weights, math_cond, depends_on."""

from __future__ import annotations

import collections
import math

import optuna
import pytest

from segformer_tao.automl.space import UNBOUNDED_SPAN, build_space, load_train_schema, sample, schema_node
from segformer_tao.config import compose_config
from segformer_tao.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cfg(*overrides: str):
    return compose_config("train", ["dataset.segment.root_dir=/data", *overrides])


def _samples(space, cfg, n=60, seed=0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample(trial, space, cfg))
        study.tell(trial, 0.0)
    return out


def test_space_matches_the_packaged_schema_for_every_parameter():
    # With pretrained weights every key is active (freeze_backbone depends on them).
    schema, cfg = load_train_schema(), _cfg("model.backbone.pretrained_backbone_path=/weights/b0.pth")
    space = build_space(cfg, schema)
    keys = [p.key for p in space]
    disabled = set(schema["automl_disabled_parameters"])
    assert sorted(keys) == sorted(schema["automl_default_parameters"]) and not disabled & set(keys)
    for p in space:
        node = schema_node(schema, p.key)
        types = {node["type"]} if isinstance(node["type"], str) else set(node["type"])
        if node.get("valid_options"):
            assert p.kind == "categorical" and list(p.choices) == [o for o in node["valid_options"] if o is not None]
        elif "boolean" in types:
            assert p.kind == "categorical" and set(p.choices) == {True, False}
        elif node.get("automl_range"):
            low, high, scale = node["automl_range"]
            assert (p.low, p.high, p.log) == (low, high, scale == "log"), p.key
            assert node["valid_min"] <= low < high <= node["valid_max"], p.key
        elif node.get("valid_max") == "inf":
            assert p.log and p.low == pytest.approx(node["default"] / UNBOUNDED_SPAN)
            assert p.high == pytest.approx(node["default"] * UNBOUNDED_SPAN) and p.low >= node["valid_min"]
        else:
            assert (p.low, p.high, p.log) == (node["valid_min"], node["valid_max"], False), p.key
    for values in _samples(space, cfg):
        assert set(values) == set(keys)
        for p in space:
            v = values[p.key]
            assert v in p.choices if p.kind == "categorical" else p.low <= v <= p.high, (p.key, v)


# TAO Core 7.3's automl_enabled="TRUE" keys (nvidia_tao_core/config/segformer/default_config.py), which its schema
# generator lists as automl_default_parameters.
TAO_AUTOML_KEYS = [
    "train.optim.lr", "train.optim.momentum", "train.optim.weight_decay", "model.backbone.freeze_backbone",
    *(f"dataset.segment.augmentation.{k}" for k in (
        "random_flip.vflip_probability", "random_flip.hflip_probability", "random_flip.enable",
        "random_rotate.rotate_probability", "random_rotate.enable", "random_color.brightness",
        "random_color.contrast", "random_color.saturation", "random_color.hue", "random_color.enable",
        "random_color.color_probability", "with_scale_random_crop.enable")),
]


def test_default_parameters_are_taos_automl_enabled_keys_and_all_are_searched():
    schema = load_train_schema()
    assert sorted(schema["automl_default_parameters"]) == sorted(TAO_AUTOML_KEYS)
    assert sorted(p.key for p in build_space(_cfg(), schema)) == sorted(TAO_AUTOML_KEYS)
    space = {p.key: p for p in build_space(_cfg("automl.disabled_parameters=[train.optim.momentum]"), schema)}
    assert len(space) == 15 and "train.optim.momentum" not in space


def test_freeze_backbone_is_searched_only_with_pretrained_weights(tmp_path):
    space = build_space(_cfg(), load_train_schema())
    without = _samples(space, _cfg(), 20)
    assert all("model.backbone.freeze_backbone" not in v for v in without)  # freezing random weights is refused
    weights = tmp_path / "b0.pth"
    cfg = _cfg(f"model.backbone.pretrained_backbone_path={weights}")
    assert {v["model.backbone.freeze_backbone"] for v in _samples(build_space(cfg, load_train_schema()), cfg, 20)} \
        == {True, False}


def test_user_parameters_narrow_the_search():
    cfg = _cfg("automl.parameters=[train.optim.decoder_lr_mult,dataset.segment.augmentation.random_color.hue]",
               "automl.disabled_parameters=[train.optim.momentum]")
    space = {p.key: p for p in build_space(cfg, load_train_schema())}
    assert set(space) == {"train.optim.decoder_lr_mult", "dataset.segment.augmentation.random_color.hue"}
    hue = space["dataset.segment.augmentation.random_color.hue"]  # automl_range, inside valid [0, 0.5]
    assert (hue.kind, hue.low, hue.high) == ("float", 0.0, 0.3)
    mult = space["train.optim.decoder_lr_mult"]  # valid_min 0, unbounded: log range around the value (10)
    assert mult.log and (mult.low, mult.high) == pytest.approx((1.0, 100.0))


def test_lr_range_centres_on_the_users_value():
    lr = next(p for p in build_space(_cfg("train.optim.lr=0.001"), load_train_schema()) if p.key == "train.optim.lr")
    assert (lr.low, lr.high) == pytest.approx((1e-4, 1e-2))


@pytest.mark.parametrize("key, needle", [("train.gpu_ids", "not searchable"), ("train.optim.nope", "not a key"),
                                         ("train.optim.warmup_iters", "unbounded")])
def test_unsearchable_user_parameters_are_user_errors(key, needle):
    with pytest.raises(UserError, match=needle):
        build_space(_cfg(f"automl.parameters=[{key}]"), load_train_schema())


def _schema(**leaves) -> dict:
    """A minimal train schema with leaves under `train.x.<name>`, all searched by default."""
    return {"automl_default_parameters": [f"train.x.{k}" for k in leaves], "automl_disabled_parameters": [],
            "properties": {"train": {"properties": {"x": {"properties": leaves}}}}}


def _space(schema, values: dict):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"automl": {"parameters": [], "disabled_parameters": []}, "train": {"x": values}})
    return build_space(cfg, schema), cfg


def test_option_weights_make_a_weighted_categorical():
    schema = _schema(opt={"type": "string", "default": "a", "valid_options": ["a", "b", "c"],
                          "option_weights": [0.7, 0.2, 0.1]})
    space, cfg = _space(schema, {"opt": "a"})
    assert space[0].weights == pytest.approx((0.7, 0.2, 0.1))
    counts = collections.Counter(v["train.x.opt"] for v in _samples(space, cfg, n=400))
    assert counts["a"] > counts["b"] > counts["c"] > 0 and 0.6 < counts["a"] / 400 < 0.8


def test_automl_range_narrows_the_search_but_not_validation():
    """weight_decay is valid in [0, 1] (TAO), but AutoML samples it log-uniformly in [1e-4, 0.1]; momentum in
    [0.8, 0.99]. A user value outside the AutoML range is still a valid plain-train value."""
    space = {p.key: p for p in build_space(_cfg(), load_train_schema())}
    wd, mom = space["train.optim.weight_decay"], space["train.optim.momentum"]
    assert (wd.low, wd.high, wd.log) == (1e-4, 0.1, True) and (mom.low, mom.high, mom.log) == (0.8, 0.99, False)
    assert _cfg("train.optim.weight_decay=0.5").train.optim.weight_decay == 0.5
    schema = _schema(rate={"type": "number", "default": 0.5, "valid_min": 0.2, "valid_max": 1.0,
                           "automl_range": [0.01, 0.9, "log"]})
    (rate,), _ = _space(schema, {"rate": 0.5})
    assert (rate.low, rate.high, rate.log) == (0.2, 0.9, True)  # clipped to valid_min


def test_math_cond_tightens_bounds_and_keeps_powers():
    schema = _schema(
        strict={"type": "number", "default": 0.5, "valid_min": 0.0, "valid_max": 1.0, "math_cond": "> 0.0"},
        count={"type": "integer", "default": 4, "valid_min": 1, "valid_max": 40, "math_cond": "^ 2"},
        small={"type": "integer", "default": 3, "valid_min": 0, "valid_max": 10, "math_cond": "< 5"},
    )
    space, cfg = _space(schema, {"strict": 0.5, "count": 4, "small": 3})
    by = {p.key.split(".")[-1]: p for p in space}
    assert by["strict"].low > 0.0 and by["strict"].high == 1.0
    assert by["count"].choices == (1, 2, 4, 8, 16, 32)
    assert (by["small"].low, by["small"].high) == (0, 4)
    for v in _samples(space, cfg):
        assert 0 < v["train.x.strict"] <= 1 and v["train.x.count"] in by["count"].choices
        assert 0 <= v["train.x.small"] <= 4


def test_depends_on_relations_switches_and_derived_values():
    schema = _schema(
        low_lr={"type": "number", "default": 1e-4, "valid_min": 1e-6, "valid_max": 1e-2,
                "depends_on": "< train.x.lr"},
        jitter={"type": "number", "default": 0.3, "valid_min": 0, "valid_max": 1, "depends_on": "train.x.color"},
        half={"type": "integer", "default": 8, "valid_min": 1, "valid_max": 64, "depends_on": "train.x.size",
              "math_cond": "/ 2"},
        lr={"type": "number", "default": 1e-3, "valid_min": 1e-6, "valid_max": 1e-2},
        color={"type": "boolean", "default": True},
        size={"type": "integer", "default": 16, "valid_min": 8, "valid_max": 64, "math_cond": "^ 2"},
    )
    space, cfg = _space(schema, {"low_lr": 1e-4, "jitter": 0.3, "half": 8, "lr": 1e-3, "color": True, "size": 16})
    order = [p.key.split(".")[-1] for p in space]
    assert order.index("lr") < order.index("low_lr") and order.index("color") < order.index("jitter")
    assert order.index("size") < order.index("half")
    seen = set()
    for v in _samples(space, cfg, n=80):
        assert v["train.x.low_lr"] < v["train.x.lr"]
        assert ("train.x.jitter" in v) == v["train.x.color"]
        assert v["train.x.half"] == v["train.x.size"] // 2
        seen.add(v["train.x.color"])
    assert seen == {True, False}


def test_unbounded_numbers_search_a_log_range_clipped_to_the_finite_bound():
    schema = _schema(rate={"type": "number", "default": 0.5, "valid_min": 0.1, "valid_max": "inf"})
    space, _ = _space(schema, {"rate": 0.5})
    assert space[0].log and space[0].low == pytest.approx(0.1) and space[0].high == pytest.approx(5.0)
    assert not math.isinf(space[0].high)
