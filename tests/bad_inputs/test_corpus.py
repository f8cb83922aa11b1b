"""The bad-input corpus: every user mistake ends with exit code 2 and one readable paragraph, no traceback.

Each case is (id, argv, needles): argv may use {data} (a valid demo dataset), {tmp} (a scratch dir), {ckpt}
(a trained 3-class mit_b0 checkpoint), {enc_ckpt} (the same, encrypted with key 'k1'), {onnx} (its ONNX) and
the broken datasets/files built in tests/bad_inputs/fixtures.py; needles must all appear in the message.
"""

from __future__ import annotations

import pytest

from tests.conftest import assert_user_error, run_cli

D = "dataset.segment.root_dir={data}"
OFF = "automl_policy=off"
TINY = ["model=mit_b0", "dataset.segment.num_classes=3", "dataset.segment.img_size=64", "train.num_epochs=1",
        "dataset.segment.batch_size=2", "dataset.segment.workers=0", OFF]
CASES: list[tuple[str, list[str], list[str]]] = [
    # ---- CLI and config
    ("unknown_action", ["fly"], ["Unknown action 'fly'", "segformer --help"]),
    ("unknown_key_suggests", ["train", D, "train.num_epoch=2"], ["train.num_epoch", "Did you mean 'train.num_epochs'"]),
    ("unknown_nested_key", ["train", D, "dataset.segment.augmentation.random_flipp.enable=false"],
     ["random_flipp", "Did you mean"]),
    ("wrong_type_int", ["train", D, "train.num_epochs=ten"], ["train.num_epochs", "ten"]),
    ("wrong_type_bool", ["train", D, "train.sync_batchnorm=maybe"], ["train.sync_batchnorm", "maybe"]),
    ("out_of_range_float", ["train", D, "train.optim.momentum=1.5"], ["train.optim.momentum", "between 0.0 and 1.0"]),
    ("out_of_range_classes", ["train", D, "dataset.segment.num_classes=1"], ["dataset.segment.num_classes", ">= 2"]),
    ("invalid_option", ["train", D, "train.optim.optim=adagrad"], ["train.optim.optim", "adamw, adam, sgd"]),
    ("invalid_backbone_suggests", ["train", D, "model.backbone.type=mit_b7"], ["model.backbone.type", "Did you mean"]),
    ("invalid_precision", ["train", D, "train.precision=fp8"], ["train.precision", "bf16-mixed"]),
    ("invalid_override_syntax", ["train", D, "train.gpu_ids=[0,"], ["Invalid override syntax", "key=value"]),
    ("unknown_group", ["train", D, "model=mit_b9"], ["Cannot switch config group", "model"]),
    ("delete_unknown_key", ["train", D, "~train.nope"], ["train.nope"]),
    ("spec_missing", ["train", "-e", "{tmp}/nope.yaml"], ["nope.yaml", "does not exist"]),
    ("spec_not_yaml", ["train", "-e", "{bad_yaml}"], ["not valid YAML"]),
    ("spec_not_mapping", ["train", "-e", "{scalar_yaml}"], ["mapping"]),
    ("spec_unknown_key", ["train", "-e", "{unknown_key_yaml}", D], ["train.num_epochs"]),
    ("spec_results_dir_unset", ["train", "-e", "{results_missing_yaml}", D], ["results_dir", "???"]),
    ("interpolation_broken", ["train", D, "train.results_dir=${nothing.here}"], ["interpolation", "nothing.here"]),
    # ---- required data sources per action
    ("train_no_root_dir", ["train"], ["dataset.segment.root_dir", "segformer train"]),
    ("evaluate_no_model", ["evaluate", D], ["evaluate.checkpoint", "evaluate.onnx_file", "parent_job"]),
    ("inference_no_model", ["inference", D], ["inference.checkpoint", "parent_job"]),
    ("export_no_checkpoint", ["export", D], ["export.checkpoint"]),
    ("quantize_no_calibration", ["quantize", D, "quantize.model_path={onnx}"],
     ["dataset.segment.quant_calibration_dataset.images_dir"]),
    ("quantize_no_model", ["quantize", D, "dataset.segment.quant_calibration_dataset.images_dir={data}/images/train"],
     ["quantize.model_path"]),
    ("gen_trt_engine_no_onnx", ["gen_trt_engine"], ["gen_trt_engine.onnx_file"]),
    ("parent_job_not_a_dir", ["evaluate", D, "parent_job={tmp}/nope"], ["parent_job", "not a directory"]),
    ("parent_job_without_artifacts", ["export", D, "parent_job={empty_dir}"], ["parent_job", "holds no artifact"]),
    ("results_dir_unwritable", ["train", D, "results_dir={a_file}/out"], ["a_file", "results_dir"]),
    ("gpu_ids_conflict", ["train", D, "train.num_gpus=1", "train.gpu_ids=[0,1,2]"],
     ["train.gpu_ids", "train.num_gpus"]),
]


def _format(argv: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        for k, v in paths.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


@pytest.mark.parametrize("case_id, argv, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, argv, needles, bad_paths):
    args = _format(argv, bad_paths)
    if args and args[0] in ("train", "evaluate", "inference", "export", "quantize") and not any(
            a.startswith("results_dir=") for a in args) and "-e" not in args:
        args.append(f"results_dir={bad_paths['tmp']}/results_{case_id}")
    assert_user_error(run_cli(*args, env=bad_paths.get("env_" + case_id)), *needles)
