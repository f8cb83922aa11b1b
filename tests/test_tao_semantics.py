"""TAO users' habits: TAO's -1 batch sizes, its default spec, parent_job over a spec's stale model path, and a
warning when a model file and the spec disagree."""

from __future__ import annotations

import json
import logging
import os

import pytest
from omegaconf import OmegaConf

from segformer_tao.config import compose_config
from segformer_tao.errors import UserError
from segformer_tao.parent import apply_parent_job
from tests.conftest import assert_user_error, run_cli

TAO_DEFAULT_SPEC = os.path.join(os.path.dirname(__file__), "specs", "tao_core_7_3_default_spec.yaml")


def test_evaluate_and_inference_batch_by_the_dataset_batch_size_unless_set():
    # TAO batches evaluate/inference by dataset.segment.batch_size; a TAO user sets only that key.
    cfg = compose_config("inference", ["dataset.segment.batch_size=1"])
    assert cfg.inference.batch_size == 1 and cfg.evaluate.batch_size == 1
    cfg = compose_config("evaluate", ["dataset.segment.batch_size=2", "evaluate.batch_size=5"])
    assert cfg.evaluate.batch_size == 5 and cfg.inference.batch_size == 2 and cfg.dataset.segment.batch_size == 2


def test_minus_one_dataset_batch_size_is_the_schema_default_with_a_note(capsys):
    cfg = compose_config("evaluate", ["dataset.segment.batch_size=-1", "evaluate.batch_size=-1"])
    assert cfg.dataset.segment.batch_size == 8 and cfg.evaluate.batch_size == 8
    err = capsys.readouterr().err
    assert "dataset.segment.batch_size=-1" in err and "using 8" in err
    with pytest.raises(UserError, match=r"inference.batch_size=0"):
        compose_config("inference", ["inference.batch_size=0"])
    with pytest.raises(UserError, match=r"dataset.segment.batch_size"):
        compose_config("train", ["dataset.segment.batch_size=-2"])


@pytest.mark.parametrize("action", ["train", "evaluate", "inference", "export", "quantize", "gen_trt_engine"])
def test_tao_core_default_spec_composes_for_every_action(action, tmp_path):
    result = run_cli("config", action, "-e", TAO_DEFAULT_SPEC, f"results_dir={tmp_path}")
    assert result.returncode == 0, result.output
    cfg = OmegaConf.create(result.stdout)
    assert cfg.dataset.segment.batch_size == 8 and cfg.evaluate.batch_size == 8
    assert cfg.gen_trt_engine.tensorrt.data_type == "fp32"  # TAO writes FP32


@pytest.mark.slow
def test_tao_core_default_spec_trains_one_epoch(tmp_path):
    from segformer_tao.data.synthetic import make_demo_dataset

    root = make_demo_dataset(tmp_path / "data", num_classes=2, size=32, train=2, val=2, test=1)
    result = run_cli("train", "-e", TAO_DEFAULT_SPEC, f"results_dir={tmp_path}/out", f"dataset.segment.root_dir={root}",
                     "dataset.segment.label_transform=None", "model.backbone.type=mit_b0",
                     "dataset.segment.img_size=32",
                     "dataset.segment.workers=0", "train.num_epochs=1", "automl_policy=off",
                     env={"WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.output
    assert "dataset.segment.batch_size=-1" in result.stderr
    saved = OmegaConf.load(tmp_path / "out" / "train" / "experiment.yaml")
    assert saved.dataset.segment.batch_size == 8
    assert (tmp_path / "out" / "train" / "segformer_model_latest.pth").exists()


# ------------------------------------------------------------------------------------ parent_job precedence
def _tutorial_spec(tmp_path) -> str:
    spec = tmp_path / "evaluate.yaml"  # TAO's tutorial evaluate spec hard-codes the checkpoint path
    spec.write_text("evaluate:\n  checkpoint: /result/isbi_experiment/segformer_model_latest.pth\n")
    return str(spec)


def _parent(tmp_path) -> str:
    parent = tmp_path / "train"
    parent.mkdir()
    (parent / "segformer_model_latest.pth").write_bytes(b"stand-in: only its name is resolved here")
    return str(parent)


def test_parent_job_replaces_a_missing_model_path_from_the_spec_file(tmp_path, caplog):
    parent = _parent(tmp_path)
    cfg = compose_config("evaluate", [f"parent_job={parent}"], _tutorial_spec(tmp_path))
    with caplog.at_level(logging.INFO, logger="segformer_tao"):
        apply_parent_job("evaluate", cfg, set())
    assert cfg.evaluate.checkpoint == os.path.join(parent, "segformer_model_latest.pth")
    note = next(r.getMessage() for r in caplog.records if "does not exist" in r.getMessage())
    assert "/result/isbi_experiment/segformer_model_latest.pth" in note and parent in note


def test_a_model_path_on_the_command_line_wins_over_parent_job(tmp_path):
    parent = _parent(tmp_path)
    existing = tmp_path / "mine.pth"
    existing.write_bytes(b"x")
    cfg = compose_config("evaluate", [f"parent_job={parent}"], _tutorial_spec(tmp_path))
    apply_parent_job("evaluate", cfg, {"evaluate.checkpoint"})
    assert cfg.evaluate.checkpoint == "/result/isbi_experiment/segformer_model_latest.pth"
    cfg = compose_config("evaluate", [f"parent_job={parent}", f"evaluate.checkpoint={existing}"])
    apply_parent_job("evaluate", cfg, set())  # an existing file from the spec also wins
    assert cfg.evaluate.checkpoint == str(existing)
    # Through the CLI: the missing path typed on the command line is the one reported.
    result = run_cli("evaluate", "-e", _tutorial_spec(tmp_path), f"parent_job={parent}",
                     f"dataset.segment.root_dir={tmp_path}", f"evaluate.checkpoint={tmp_path}/typo.pth",
                     f"results_dir={tmp_path}/out")
    assert_user_error(result, "typo.pth", "does not exist")


# ------------------------------------------------------------------------------------------ mismatch warning
def test_model_file_and_spec_disagreeing_warns_and_the_file_wins(tmp_path, caplog):
    from segformer_tao.actions import evaluate
    from segformer_tao.data.synthetic import make_demo_dataset
    from tests.deploy.conftest import deploy_cfg, save_tiny_checkpoint

    make_demo_dataset(tmp_path / "data", num_classes=3, size=64, train=1, val=2, test=1)
    from segformer_tao.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = save_tiny_checkpoint(str(tmp_path / "b0.pth"), deploy_cfg("export", tmp_path))  # mit_b0, 3 classes
    payload = load_checkpoint(ckpt)
    payload["meta"]["palette"] = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]  # evaluate draws panels with it
    save_checkpoint(ckpt, payload)
    labels = "dataset.segment.label_transform=None"
    cfg = deploy_cfg("evaluate", tmp_path, f"evaluate.checkpoint={ckpt}", labels,
                     "model.backbone.type=vit_large_nvdinov2",
                     "model.backbone.pretrained_backbone_path=/models/nvdinov2.pth", "dataset.segment.num_classes=5")
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        out = evaluate.run(cfg)
    assert out["metrics"]["images"] == 2
    results = json.loads((tmp_path / "results" / "evaluate" / "results.json").read_text())
    assert len(results["per_class"]) == 3  # the checkpoint's classes
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"evaluate.checkpoint='{ckpt}'" in w and "mit_b0" in w and "model.backbone.type=vit_large_nvdinov2" in w
               and "is used" in w for w in warnings), warnings
    assert any("dataset.segment.num_classes=5" in w and " 3 " in w for w in warnings), warnings
    caplog.clear()
    cfg = deploy_cfg("evaluate", tmp_path, f"evaluate.checkpoint={ckpt}", labels)  # the spec agrees: silence
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        evaluate.run(cfg)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "trained with" in r.getMessage()]
