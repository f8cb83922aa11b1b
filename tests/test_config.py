"""The config tree: TAO keys and defaults, composition order, validation, conf/ groups."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
import yaml
from omegaconf import OmegaConf

from segformer_tao.config import compose_config
from segformer_tao.config.compose import all_keys, package_dir
from segformer_tao.config.specs import action_schema, generate
from segformer_tao.errors import UserError

HERE = os.path.dirname(__file__)
TAO_SPEC = os.path.join(HERE, "specs", "tao_train_spec.yaml")
TAO_KEYS = [  # a sample of TAO Core 7.3's 137 leaf keys, every section represented
    "model_name", "encryption_key", "results_dir", "wandb.enable", "wandb.run_id", "model.precise_msda",
    "model.backbone.type", "model.backbone.feat_downsample", "model.decode_head.decoder_params",
    "dataset.segment.root_dir", "dataset.segment.label_transform", "dataset.segment.palette",
    "dataset.segment.augmentation.random_color.hue", "dataset.segment.augmentation.with_scale_random_crop.scale_range",
    "dataset.segment.quant_calibration_dataset.images_dir", "train.cudnn.deterministic", "train.checkpointer",
    "train.checkpoint_interval_unit", "train.optim.monitor_name", "train.segment.weights",
    "train.tensorboard.infrequent_logging_frequency", "train.enable_lr_monitor", "evaluate.vis_after_n_batches",
    "inference.trt_engine", "export.serialize_nvdsinfer", "export.format", "gen_trt_engine.timing_cache",
    "gen_trt_engine.tensorrt.layers_precision", "gen_trt_engine.tensorrt.calibration.cal_batches",
    "quantize.backend_kwargs", "quantize.skip_names", "quantize.layers", "quantize.device",
]


def test_every_tao_key_present_and_count():
    keys = set(all_keys())
    missing = [k for k in TAO_KEYS if k not in keys]
    assert not missing
    assert len(keys) >= 137  # TAO's 137 leaf keys plus ours


def test_tao_defaults():
    cfg = compose_config("train")
    assert cfg.dataset.segment.num_classes == 2
    assert cfg.dataset.segment.img_size == 256
    assert cfg.dataset.segment.batch_size == 8
    assert cfg.model.backbone.type == "fan_small_12_p4_hybrid"
    assert cfg.train.optim.lr == pytest.approx(6e-5)
    assert cfg.train.optim.optim == "adamw" and cfg.train.optim.policy == "linear"
    assert cfg.train.num_epochs == 10
    assert cfg.export.opset_version == 17
    assert cfg.automl_policy == "auto"


def test_tao_spec_loads_unchanged_with_interpolations():
    cfg = compose_config("export", ["results_dir=/r", "dataset.segment.root_dir=/d"], TAO_SPEC)
    assert cfg.encryption_key == "tlt_encode"
    assert cfg.export.onnx_file == "/r/export/segformer.onnx"
    assert cfg.gen_trt_engine.onnx_file == "/r/export/segformer.onnx"
    assert cfg.gen_trt_engine.tensorrt.data_type == "fp16"  # TAO writes FP16; normalised
    assert cfg.dataset.segment.label_transform == "None"
    assert cfg.dataset.segment.palette[2]["label_id"] == 255
    assert cfg.train.optim.weight_decay == pytest.approx(5e-4)


def test_override_order_spec_then_keys_and_groups(capsys):
    cfg = compose_config("train", ["model=mit_b2", "train.num_epochs=7", "results_dir=/x"], TAO_SPEC)
    assert cfg.train.num_epochs == 7  # key=value wins over the spec
    # A group chosen on the command line wins over the spec too (it would otherwise be a silent no-op), and
    # says which spec keys it replaced; key=value overrides still come last.
    assert cfg.model.backbone.type == "mit_b2" and cfg.model.decode_head.in_channels == [64, 128, 320, 512]
    assert "model=mit_b2 on the command line replaces model.backbone.type" in capsys.readouterr().err
    cfg = compose_config("train", ["model=mit_b2", "model.backbone.type=mit_b1", "results_dir=/x"], TAO_SPEC)
    assert cfg.model.backbone.type == "mit_b1"
    cfg = compose_config("train", ["results_dir=/x"], TAO_SPEC)
    assert cfg.model.backbone.type == "fan_small_12_p4_hybrid"  # no group override: the spec's value
    cfg = compose_config("train", ["model=mit_b2", "train=fast_dev"])
    assert cfg.model.backbone.type == "mit_b2" and cfg.model.decode_head.in_channels == [64, 128, 320, 512]
    assert cfg.train.num_epochs == 1


def test_hydra_grammar_lists_add_delete():
    cfg = compose_config("train", ["train.gpu_ids=[0,1]", "++train.checkpointer={save_top_k: 2}",
                                   "~dataset.segment.cache_dir"])
    assert list(cfg.train.gpu_ids) == [0, 1]
    assert cfg.train.checkpointer.save_top_k == 2
    assert "cache_dir" not in cfg.dataset.segment


@pytest.mark.parametrize("override, needle", [
    ("train.num_epoch=3", "Did you mean 'train.num_epochs'"),
    ("train.num_epochs=abc", "train.num_epochs"),
    ("train.optim.momentum=1.5", "between 0.0 and 1.0"),
    ("train.optim.optim=adagrad", "adamw, adam, sgd"),
    ("model.backbone.type=mit_b7", "Did you mean"),
    ("train.num_epochs=[1", "Invalid override syntax"),
    ("model=mit_b9", "Did you mean 'model=mit_b5'"),
])
def test_bad_overrides_are_user_errors(override, needle):
    with pytest.raises(UserError, match=None) as e:
        compose_config("train", [override])
    assert needle in str(e.value)


def test_bad_spec_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        compose_config("train", [], str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        compose_config("train", [], str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(UserError, match="mapping"):
        compose_config("train", [], str(scalar))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  num_epochz: 3\n")
    with pytest.raises(UserError, match="train.num_epochs"):
        compose_config("train", [], str(unknown))
    missing_results = tmp_path / "missing.yaml"
    missing_results.write_text("results_dir: ???\n")
    with pytest.raises(UserError, match="results_dir"):
        compose_config("train", [], str(missing_results))


def test_specs_are_fresh_and_templates_validate(tmp_path):
    generated = generate(str(tmp_path))
    committed = package_dir("specs")
    for rel in generated:
        with open(tmp_path / rel) as a, open(os.path.join(committed, rel)) as b:
            assert a.read() == b.read(), f"specs/{rel} is stale: run `make specs`"
    for action in ("train", "evaluate", "inference", "export", "quantize", "gen_trt_engine"):
        schema = action_schema(action)
        with open(os.path.join(committed, "references", f"spec_template_{action}.yaml")) as f:
            template = yaml.safe_load(f)
        jsonschema.validate(template, schema)
        # ... and loads back into the dataclass tree unchanged
        spec_file = tmp_path / f"{action}.yaml"
        spec_file.write_text(yaml.safe_dump(template))
        cfg = compose_config(action, [], str(spec_file))
        if template[action].get("batch_size") == -1 and action in ("evaluate", "inference"):
            template[action]["batch_size"] = cfg.dataset.segment.batch_size  # -1 resolves to the dataset's
        assert OmegaConf.to_container(cfg)[action] == template[action]
    train = action_schema("train")
    assert "train.optim.lr" in train["automl_default_parameters"]
    assert "dataset.segment.palette" in train["automl_disabled_parameters"]
    lr = train["properties"]["train"]["properties"]["optim"]["properties"]["lr"]
    assert lr["automl_enabled"] is True and lr["valid_min"] == 0 and lr["valid_max"] == "inf"
    with open(os.path.join(committed, "schemas", "manifest.json")) as f:
        assert set(json.load(f)["actions"]) == {"train", "evaluate", "inference", "export", "quantize",
                                                 "gen_trt_engine"}
    with open(os.path.join(committed, "references", "skill_info.yaml")) as f:
        info = yaml.safe_load(f)
    assert info["automl_enabled"] is True and info["monitored_metric"] == "val_miou"
