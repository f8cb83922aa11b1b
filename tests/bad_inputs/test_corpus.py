"""The bad-input corpus: every user mistake ends with exit code 2 and one readable paragraph, no traceback.

Each case is (id, argv, needles): argv may use {data} (a valid demo dataset), {tmp} (a scratch dir), {ckpt}
(a trained 3-class mit_b0 checkpoint), {enc_ckpt} (the same, encrypted with key 'k1'), {onnx} (its ONNX) and
the broken datasets/files built in tests/bad_inputs/fixtures.py; needles (formatted the same way) must all appear
in the message. CASES run through `run_cli` (a fresh `python -m segformer_tao.cli`); HEAVY_CASES, which load
models, data or ONNX, run `cli.main` in a forked child with torch & co. already imported (runner.py), with the
case's extra environment (``env_<id>``) or file-size limit (``fsize_<id>``).
"""

from __future__ import annotations

import os

import pytest

from tests.bad_inputs.runner import run_cli_forked
from tests.conftest import assert_user_error, run_cli

LABELS = ["dataset.segment.label_transform=None", "dataset.segment.num_classes=3"]  # the demo masks: 3 class ids
D = ["dataset.segment.root_dir={data}", *LABELS]
OFF = "automl_policy=off"
TINY = ["model=mit_b0", "dataset.segment.img_size=32", "train.num_epochs=1",
        "dataset.segment.batch_size=2", "dataset.segment.workers=0", OFF]
CK = ["evaluate.checkpoint={ckpt}"]
CAL = "dataset.segment.quant_calibration_dataset.images_dir={calib}"
CASES: list[tuple[str, list[str], list[str]]] = [
    # ---- CLI and config
    ("unknown_action", ["fly"], ["Unknown action 'fly'", "segformer --help"]),
    ("unknown_key_suggests", ["train", *D, "train.num_epoch=2"],
     ["train.num_epoch", "Did you mean 'train.num_epochs'"]),
    ("unknown_nested_key", ["train", *D, "dataset.segment.augmentation.random_flipp.enable=false"],
     ["random_flipp", "Did you mean"]),
    ("wrong_type_int", ["train", *D, "train.num_epochs=ten"], ["train.num_epochs", "ten"]),
    ("wrong_type_bool", ["train", *D, "train.sync_batchnorm=maybe"], ["train.sync_batchnorm", "maybe"]),
    ("out_of_range_float", ["train", *D, "train.optim.momentum=1.5"], ["train.optim.momentum", "between 0.0 and 1.0"]),
    ("batch_size_zero", ["train", *D, "dataset.segment.batch_size=0"], ["dataset.segment.batch_size=0", "-1"]),
    ("out_of_range_classes", ["train", *D, "dataset.segment.num_classes=1"], ["dataset.segment.num_classes", ">= 2"]),
    ("invalid_option", ["train", *D, "train.optim.optim=adagrad"], ["train.optim.optim", "adamw, adam, sgd"]),
    ("invalid_backbone_suggests", ["train", *D, "model.backbone.type=mit_b7"], ["model.backbone.type", "Did you mean"]),
    ("invalid_precision", ["train", *D, "train.precision=fp8"], ["train.precision", "bf16-mixed"]),
    ("invalid_override_syntax", ["train", *D, "train.gpu_ids=[0,"],
     ["Invalid override syntax in 'train.gpu_ids=[0,'", "key=value"]),
    ("dash_flag_instead_of_key", ["train", *D, "--epochs", "3"], ["'--epochs' is not an option", "key=value"]),
    ("unknown_group", ["train", *D, "model=mit_b9"],
     ["no model option 'mit_b9'", "Options: c_radio_v2_vit_base_patch16_224, ", "fan_base", "mit_b0"]),
    ("delete_unknown_key", ["train", *D, "~train.nope"], ["train.nope"]),
    ("spec_missing", ["train", "-e", "{tmp}/nope.yaml"], ["nope.yaml", "does not exist"]),
    ("spec_not_yaml", ["train", "-e", "{bad_yaml}"], ["not valid YAML"]),
    ("spec_not_mapping", ["train", "-e", "{scalar_yaml}"], ["mapping"]),
    ("spec_unknown_key", ["train", "-e", "{unknown_key_yaml}", *D], ["train.num_epochs"]),
    ("spec_old_tao_format", ["train", "-e", "{old_format_yaml}", *D],
     ["tao5.yaml", "TAO's older SegFormer format", "train.trainer", "segformer config upgrade"]),
    ("config_upgrade_current_spec", ["config", "upgrade", "{unknown_key_yaml}"], ["already in the current format"]),
    ("spec_results_dir_unset", ["train", "-e", "{results_missing_yaml}", *D], ["results_dir", "???"]),
    ("interpolation_broken", ["train", *D, "train.results_dir=${nothing.here}"], ["interpolation", "nothing.here"]),
    # ---- required data sources per action
    ("train_no_root_dir", ["train"], ["dataset.segment.root_dir", "segformer train"]),
    ("evaluate_no_model", ["evaluate", *D], ["evaluate.checkpoint", "evaluate.onnx_file", "parent_job"]),
    ("inference_no_model", ["inference", *D], ["inference.checkpoint", "parent_job"]),
    ("export_no_checkpoint", ["export", *D], ["export.checkpoint"]),
    ("quantize_no_calibration", ["quantize", *D, "quantize.model_path={onnx}"],
     ["dataset.segment.quant_calibration_dataset.images_dir"]),
    ("quantize_no_model", ["quantize", *D, "dataset.segment.quant_calibration_dataset.images_dir={data}/images/train"],
     ["quantize.model_path"]),
    ("gen_trt_engine_no_onnx", ["gen_trt_engine"], ["gen_trt_engine.onnx_file"]),
    # ---- inference.source (checked before anything heavy is imported)
    ("source_empty_folder", ["inference", "inference.checkpoint={ckpt}", "inference.source={empty_dir}"],
     ["inference.source='{empty_dir}'", "is empty"]),
    ("source_folder_without_images", ["inference", "inference.checkpoint={ckpt}", "inference.source={no_images}"],
     ["inference.source='{no_images}'", "holds no image files", "notes.txt"]),
    ("source_glob_matches_nothing", ["inference", "inference.checkpoint={ckpt}",
                                     "inference.source={tmp}/nowhere/**/*.jpg"],
     ["inference.source='{tmp}/nowhere/**/*.jpg'", "matches no file"]),
    ("source_missing", ["inference", "inference.checkpoint={ckpt}", "inference.source={tmp}/photos.zip"],
     ["inference.source='{tmp}/photos.zip'", "does not exist"]),
    ("jobs_list_missing_dir", ["jobs", "list", "{tmp}/nope"], ["nope", "is not a folder"]),
    ("parent_job_not_a_dir", ["evaluate", *D, "parent_job={tmp}/nope"], ["parent_job", "not a directory"]),
    ("parent_job_without_artifacts", ["export", *D, "parent_job={empty_dir}"], ["parent_job", "holds no artifact"]),
    ("results_dir_busy", ["train", *D, "train.results_dir={busy_dir}"],
     ["{busy_dir}", "in use by a running train", "num_epochs=300", "wrote nothing", "another results_dir"]),
    ("results_dir_other_host", ["train", *D, "train.results_dir={other_host_dir}"],
     ["gpu-node-07.cluster", "pid 31337", "last heartbeat", "wrote nothing"]),
    ("results_dir_unwritable", ["train", *D, "results_dir={a_file}/out"], ["a_file", "results_dir"]),
    ("gpu_ids_conflict", ["train", *D, "train.num_gpus=1", "train.gpu_ids=[0,1,2]"],
     ["train.gpu_ids", "train.num_gpus"]),
    ("log_txt_is_a_symlink", ["evaluate", *D, *CK, "results_dir={tmp}/results_log_txt_is_a_symlink"],
     ["results_log_txt_is_a_symlink/evaluate/log.txt", "is a symbolic link", "victim.txt", "another results_dir"]),
    # ---- AutoML (tests/automl/test_postgres.py covers a wrong password, a missing driver, another search space)
    ("automl_storage_unreachable", ["train", *D, "automl_policy=on",
                                    "automl.storage=postgresql://automl:pw-5531@127.0.0.1:1/study"],
     ["automl.storage='postgresql://automl:***@127.0.0.1:1/study' cannot be opened", "reachable"]),
    ("automl_storage_password_with_slash", ["train", *D, "automl_policy=on",
                                            "automl.storage=postgresql://automl:p/w-5531@127.0.0.1:1/study"],
     ["automl.storage='postgresql://automl:***@127.0.0.1:1/study' cannot be opened"]),
    # ---- encryption_key: the exact text typed, never echoed
    ("encryption_key_empty", ["train", *D, "encryption_key="], ["encryption_key= is empty", "SEGFORMER_KEY"]),
    ("encryption_key_env_var_empty", ["train", *D, "encryption_key=${oc.env:SEGFORMER_KEY}"],
     ["encryption_key is empty", "SEGFORMER_KEY"]),
    ("encryption_key_interpolation_inside", ["train", *D, "encryption_key=Sup3r${x}"],
     ["encryption_key on the command line contains '${'", "${oc.env:SEGFORMER_KEY}"]),
    ("encryption_key_in_spec_not_a_string", ["train", "-e", "{key_list_yaml}", *D],
     ["key_list.yaml", "encryption_key", "not a single value"]),
    ("malformed_override_beside_key", ["train", *D, "encryption_key=Sup3r'Secret", "train.gpu_ids=[0,"],
     ["Invalid override syntax in 'train.gpu_ids=[0,'"]),
    ("malformed_key_override", ["train", *D, "encryption_key:Sup3r'Secret"], ["Invalid override syntax", "***"]),
    # ---- issue 34: an attacker's and an unlucky user's afternoon
    ("spec_key_line_bad_yaml", ["train", "-e", "{key_bad_escape_yaml}", *D],
     ["key_bad_escape.yaml", "not valid YAML at line 1"]),
    ("spec_alias_bomb", ["config", "train", "-e", "{alias_bomb_yaml}"], ["alias_bomb.yaml", "YAML aliases"]),
    ("unknown_key_holding_secret", ["train", *D, "encryption_ky=Sup3rS3cret"],
     ["encryption_ky=***", "Did you mean 'encryption_key'"]),
    ("jobs_show_job_json_not_an_object", ["jobs", "show", "{job_json_list_dir}"],
     ["job_json_list/job.json", "not a JSON object"]),
    ("checkpoint_is_a_folder", ["evaluate", *D, "evaluate.checkpoint={empty_dir}"],
     ["evaluate.checkpoint='{empty_dir}' is a folder", "parent_job="]),
    ("automl_storage_password_with_hash", ["train", *D, "automl_policy=on",
                                           "automl.storage='postgresql://automl:pera#w-5531@127.0.0.1:1/study'"],
     ["automl.storage='postgresql://automl:***@127.0.0.1:1/study' cannot be opened", "OperationalError"]),
    ("automl_too_few_gpus_or_nodes", ["train", *D, "automl_policy=on", "train.num_nodes=2"],
     ["train.num_nodes=2", "automl.storage"]),
]
# Cases that load models, data or ONNX: run in a forked child of the test process (tests/bad_inputs/runner.py).
HEAVY_CASES: list[tuple[str, list[str], list[str]]] = [
    # ---- dataset convert (tests/data/test_convert.py checks that nothing is written to DST)
    ("convert_wrong_layout", ["dataset", "convert", "--format", "cityscapes", "{convert_ade}", "{tmp}/conv_wrong"],
     ["not in the cityscapes layout", "leftImg8bit/<split>/<city>/", "annotations/", "segformer dataset formats"]),
    ("convert_unknown_ids", ["dataset", "convert", "--format", "coco-stuff", "{convert_bad_ids}", "{tmp}/conv_ids"],
     ["000000000139.png", "[11, 200]", "label table", "--format"]),
    ("convert_empty_source", ["dataset", "convert", "--format", "ade20k", "{convert_empty}", "{tmp}/conv_empty"],
     ["convert_empty_src", "is empty", "images/{training,validation}/"]),
    ("convert_dst_not_empty", ["dataset", "convert", "--format", "ade20k", "{convert_ade}", "{convert_full_dst}"],
     ["full_dst", "is not empty", "--overwrite"]),
    ("convert_option_of_another_format", ["dataset", "convert", "--format", "ade20k", "--aug", "{convert_ade}",
                                          "{tmp}/conv_aug"], ["--aug applies to --format voc", "ade20k"]),
    # ---- datasets (the dispatcher's dataset check and the readers)
    ("root_dir_missing", ["train", "dataset.segment.root_dir={tmp}/nowhere", *LABELS, *TINY],
     ["dataset.segment.root_dir", "nowhere", "does not exist"]),
    ("root_dir_empty", ["evaluate", "dataset.segment.root_dir={empty_root}", *LABELS, *CK], ["empty_root", "is empty"]),
    ("split_folder_missing", ["train", "dataset.segment.root_dir={no_val}", *LABELS, *TINY], ["Split folder", "val"]),
    ("unpaired_files", ["evaluate", "dataset.segment.root_dir={unpaired}", *LABELS, *CK], ["Unpaired", "0099"]),
    ("corrupt_image", ["evaluate", "dataset.segment.root_dir={corrupt}", *LABELS, *CK], ["0001.png", "corrupt"]),
    ("mask_size_mismatch", ["evaluate", "dataset.segment.root_dir={size_mismatch}", *LABELS, *CK],
     ["0000.png", "16x16"]),
    ("mask_values_out_of_range", ["evaluate", "dataset.segment.root_dir={bad_values}", *LABELS, *CK],
     ["0000.png", "[7]", "dataset.segment.num_classes=3"]),
    ("rgb_mask_wrong_colour", ["evaluate", "-e", "{rgb_spec}", *CK, "results_dir={tmp}/results_rgb"],
     ["dataset.segment.palette", "(123, 45, 67)"]),
    ("s3_unreachable", ["train", "dataset.segment.root_dir=s3://bucket/data", *LABELS, *TINY],
     ["Cannot reach the S3 endpoint", "127.0.0.1:{closed_port}"]),
    ("s3_keeps_failing", ["train", "dataset.segment.root_dir=s3://bucket/data", *LABELS, *TINY],
     ["'s3://bucket/data'", "{failing_s3_url}", "failed 2 times", "AWS_MAX_ATTEMPTS (now 2)"]),
    ("s3_max_attempts_not_a_number", ["train", "dataset.segment.root_dir=s3://bucket/data", *LABELS, *TINY],
     ["AWS_MAX_ATTEMPTS='lots'", "whole number"]),
    ("s3_timeout_not_a_number", ["train", "dataset.segment.root_dir=s3://bucket/data", *LABELS, *TINY],
     ["SEGFORMER_S3_TIMEOUT_S='1min'", "number of seconds"]),
    ("s3_missing_bucket", ["train", "dataset.segment.root_dir=s3://no-such-bucket/data", *LABELS, *TINY],
     ["no-such-bucket", "does not exist"]),
    # ---- checkpoints and weights
    ("pretrained_other_backbone", ["train", *D, *TINY, "model=mit_b1", "train.pretrained_model_path={ckpt}"],
     ["segformer_model_best.pth", "mit_b1", "mit_b0"]),
    # A spec with more classes than the checkpoint only warns; masks holding a class the model lacks are refused.
    ("evaluate_masks_beyond_model_classes", ["evaluate", "dataset.segment.root_dir={bad_values}",
                                             "dataset.segment.label_transform=None", "dataset.segment.num_classes=8",
                                             *CK], ["0000.png", "values [7]", "num_classes=3", "model's class count"]),
    ("truncated_checkpoint", ["evaluate", *D, "evaluate.checkpoint={truncated_ckpt}"],
     ["truncated.pth", "Cannot read"]),
    ("trt_calibration_too_few_images", ["gen_trt_engine", "gen_trt_engine.onnx_file={onnx}",
                                        "gen_trt_engine.tensorrt.data_type=int8",
                                        "gen_trt_engine.tensorrt.calibration.cal_image_dir=[{calib}]",
                                        "gen_trt_engine.tensorrt.calibration.cal_batches=9",
                                        "results_dir={tmp}/results_trt_cal"],
     ["cal_image_dir", "fewer calibration images than the 9 needed", "found 8"]),
    ("export_nvdsinfer_batch_too_large", ["export", *D, "export.checkpoint={ckpt}", "export.serialize_nvdsinfer=true",
                                          "export.batch_size=2000"], ["export.batch_size=2000", "batch-size 1..1024"]),
    ("truncated_pretrained", ["train", *D, *TINY, "train.pretrained_model_path={truncated_ckpt}"], ["truncated.pth"]),
    ("hf_shard_outside_model_folder", ["train", *D, *TINY, "model.backbone.pretrained_backbone_path={hf_escape}"],
     ["hf_escape/model.safetensors.index.json", "'../outside.safetensors'", "not a file inside the model folder"]),
    ("checkpoint_is_onnx", ["evaluate", *D, "evaluate.checkpoint={onnx}"], ["is an ONNX model", ".onnx_file"]),
    ("checkpoint_missing", ["evaluate", *D, "evaluate.checkpoint={tmp}/nope.pth"], ["nope.pth", "does not exist"]),
    ("pretrained_backbone_missing", ["train", *D, *TINY, "model.backbone.pretrained_backbone_path={tmp}/nope.pth"],
     ["nope.pth", "does not exist"]),
    ("pretrained_model_missing", ["train", *D, *TINY, "train.pretrained_model_path={tmp}/nope.pth"],
     ["nope.pth", "does not exist"]),
    ("vit_img_size_not_multiple", ["train", *D, *TINY, "model.backbone.type=vit_giant_nvdinov2",
                                   "dataset.segment.img_size=256"],
     ["dataset.segment.img_size=256", "vit_giant_nvdinov2", "multiple of 224", "e.g. 224 or 448"]),
    ("resume_checkpoint_missing", ["train", *D, *TINY, "train.resume_training_checkpoint_path={tmp}/nope.pth"],
     ["train.resume_training_checkpoint_path", "nope.pth"]),
    ("wrong_encryption_key", ["evaluate", *D, "evaluate.checkpoint={enc_ckpt}", "encryption_key=k2"],
     ["encrypted.pth", "encryption_key is wrong"]),
    ("plaintext_checkpoint_encryption_strict", ["evaluate", *D, *CK, "encryption_key=k1", "encryption_strict=true"],
     ["segformer_model_best.pth", "is not encrypted", "encryption_strict=true"]),
    ("encrypted_checkpoint_truncated", ["evaluate", *D, "evaluate.checkpoint={truncated_enc_ckpt}",
                                        "encryption_key=k1"],
     ["enc_truncated.pth", "is truncated"]),
    ("missing_encryption_key", ["evaluate", *D, "evaluate.checkpoint={enc_ckpt}"],
     ["encrypted.pth", "no encryption_key was given"]),
    ("export_missing_encryption_key", ["export", *D, "export.checkpoint={enc_ckpt}"],
     ["encrypted.pth", "encryption_key"]),
    ("disk_full_checkpoint", ["train", *D, *TINY], ["File too large", "results_dir", "half-written"]),
    ("fp16_without_gpu", ["train", *D, *TINY, "train.precision=16-mixed"],
     ["train.precision=16-mixed", "CUDA GPU", "train.precision=32"]),
    # ---- ONNX, quantization, TensorRT
    ("onnx_not_onnx", ["evaluate", *D, "evaluate.onnx_file={not_onnx}"], ["not_a_model.onnx"]),
    ("quantize_not_onnx", ["quantize", *D, "quantize.model_path={not_onnx}", CAL], ["not_a_model.onnx"]),
    ("quantize_calibration_empty", ["quantize", *D, "quantize.model_path={onnx}",
                                    "dataset.segment.quant_calibration_dataset.images_dir={empty_dir}"],
     ["images_dir", "empty_job", "No calibration images"]),
    ("export_onnx_file_is_a_folder", ["export", *D, "export.checkpoint={ckpt}", "export.onnx_file={tmp}/"],
     ["export.onnx_file", "is a folder", "model.onnx"]),
    ("export_onnx_file_under_a_file", ["export", *D, "export.checkpoint={ckpt}", "export.onnx_file={a_file}/m.onnx"],
     ["export.onnx_file", "cannot be created"]),
    ("export_opset_too_low", ["export", *D, "export.checkpoint={ckpt}", "export.opset_version=9"],
     ["export.opset_version", "17"]),
    ("gen_trt_engine_no_tensorrt", ["gen_trt_engine", "gen_trt_engine.onnx_file={onnx}",
                                    "results_dir={tmp}/results_trt"], ["TensorRT"]),
    ("evaluate_trt_no_tensorrt", ["evaluate", *D, "evaluate.trt_engine={fake_engine}", "evaluate.trust_engine=true"],
     ["TensorRT"]),
    ("trt_engine_no_build_record", ["evaluate", *D, "evaluate.trt_engine={fake_engine}"],
     ["model.engine", "no build record", "{fake_engine_sha}", "segformer gen_trt_engine",
      "evaluate.trust_engine=true"]),
    ("trt_engine_changed_since_build", ["inference", *D, "inference.trt_engine={tampered_engine}"],
     ["tampered.engine", "{tampered_engine_sha}", "tampered.engine.json' records {tampered_engine_recorded}",
      "inference.trust_engine=true"]),
    ("quantize_torchao_missing", ["quantize", *D, "quantize.model_path={ckpt}", CAL, "quantize.backend=torchao"],
     ["quantize.backend=torchao", "torchao"]),
    ("openvino_ir_without_bin", ["evaluate", *D, "evaluate.onnx_file={ir_without_bin}"],
     ["OpenVINO IR", "ir_alone/model.bin", "is missing"]),
    ("openvino_ir_other_size", ["evaluate", *D, "evaluate.onnx_file={ir}", "dataset.segment.img_size=64"],
     ["model.xml", "fixed input size 32x32", "dataset.segment.img_size=64"]),
    ("openvino_ir_on_onnxruntime", ["evaluate", *D, "evaluate.onnx_file={ir}", "evaluate.onnx_engine=onnxruntime"],
     ["is an OpenVINO IR", "evaluate.onnx_engine=openvino"]),
    ("quantize_nncf_calibration_empty", ["quantize", *D, "quantize.model_path={onnx}", "quantize.backend=nncf",
                                         "dataset.segment.quant_calibration_dataset.images_dir={empty_dir}"],
     ["images_dir", "empty_job", "No calibration images"]),
    ("quantize_nncf_algorithm", ["quantize", *D, "quantize.model_path={onnx}", CAL, "quantize.backend=nncf",
                                 "quantize.algorithm=entropy"],
     ["quantize.algorithm=entropy", "backend=nncf", "minmax"]),
    # ---- issue 34: crafted files that load models or data
    ("encrypted_header_crafted_cost", ["evaluate", *D, "evaluate.checkpoint={crafted_kdf_ckpt}", "encryption_key=k1"],
     ["crafted_kdf.pth", "N=2^22, r=32, p=16", "16384 MiB", "not opened"]),
    ("image_decompression_bomb", ["evaluate", "dataset.segment.root_dir={bomb}", *LABELS, *CK],
     ["0001.png", "13000x13000", "dataset.segment.max_image_pixels"]),
    ("onnx_external_data_outside_its_folder", ["evaluate", *D, "evaluate.onnx_file={onnx_escape}"],
     ["onnx_escape/model.onnx", "external data at '../secret.bin'", "refused"]),
    ("hf_shard_is_the_folder", ["train", *D, *TINY, "model.backbone.pretrained_backbone_path={hf_dot}"],
     ["hf_dot/model.safetensors.index.json", "names the shard '.'", "not a file inside the model folder"]),
    ("source_corrupt_image", ["inference", "inference.checkpoint={ckpt}", "inference.source={corrupt}/images/val"],
     ["Cannot read image", "0001.png", "corrupt"]),
    ("video_unsupported_codec", ["inference", "inference.checkpoint={ckpt}", "inference.source={bad_codec_video}"],
     ["bad_codec.mov", "codec", "not supported", "ffmpeg -i"]),
    ("video_unreadable_frame", ["inference", "inference.checkpoint={ckpt}", "inference.source={corrupt_video}",
                                "inference.batch_size=1"],
     ["Cannot decode frame 3 of video", "corrupt_frame.mov", "frames 0-2 decode", "Re-encode"]),
    ("quantize_modelopt_missing", ["quantize", *D, "quantize.model_path={onnx}", CAL, "quantize.backend=modelopt.onnx"],
     ["quantize.backend=modelopt.onnx", "nvidia-modelopt"]),
]
CASES = CASES + HEAVY_CASES
# Secrets typed in the cases above: no output of any case may show them.
SECRETS = ["Sup3r", "w-5531"]
HEAVY = {c[0] for c in HEAVY_CASES}


def _format(argv: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        for k, v in paths.items():
            if isinstance(v, str):
                a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


def _nothing_half_written(results_dir: str) -> None:
    """After a failed write: no temp file left behind and every checkpoint under its final name loads."""
    from segformer_tao.engine.checkpoint import load_checkpoint

    for root, _, files in os.walk(results_dir):
        for name in files:
            assert not name.endswith(".tmp"), os.path.join(root, name)
            if name.endswith(".pth"):
                load_checkpoint(os.path.join(root, name))


def _link_target_untouched(results_dir: str) -> None:
    """The file a planted log.txt link points at was not written to."""
    with open(os.path.join(results_dir, "evaluate", "log.txt")) as f:  # through the link: the victim
        assert f.read() == "not a log\n"


def _no_partial_outputs(results_dir: str) -> None:
    """A video that fails mid-way: the masks written for the frames before are complete PNGs, no temp file or
    half-written overlay video is left."""
    from PIL import Image

    masks = os.path.join(results_dir, "inference", "masks", "corrupt_frame")
    assert set(os.listdir(masks)) <= {"000000.png", "000001.png", "000002.png"} and os.listdir(masks)
    for name in os.listdir(masks):
        with Image.open(os.path.join(masks, name)) as im:
            im.load()
    overlays = os.path.join(results_dir, "inference", "overlays")
    assert not os.path.exists(overlays) or os.listdir(overlays) == [], os.listdir(overlays)
    for _, _, files in os.walk(results_dir):
        assert not [f for f in files if f.endswith(".tmp") or f.startswith(".") and f != ".segformer.lock"], files


# Extra checks on what a failed case left in its results dir.
AFTER = {"disk_full_checkpoint": _nothing_half_written, "log_txt_is_a_symlink": _link_target_untouched,
         "video_unreadable_frame": _no_partial_outputs}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# Cases whose mistake only exists where something is absent: (present?, reason) -> a visible skip where it is.
NEEDS_ABSENT = {
    "fp16_without_gpu": (_cuda, "a CUDA GPU is present, so train.precision=16-mixed is valid here"),
    "gen_trt_engine_no_tensorrt": (lambda: _installed("tensorrt") and _cuda(), "TensorRT and a GPU are present"),
    "evaluate_trt_no_tensorrt": (lambda: _installed("tensorrt") and _cuda(), "TensorRT and a GPU are present"),
    "quantize_torchao_missing": (lambda: _installed("torchao"), "torchao is installed"),
    "quantize_modelopt_missing": (lambda: _installed("modelopt"), "nvidia-modelopt is installed"),
}


# Cases that need an optional package present: (present?, reason) -> a visible skip where it is absent.
NEEDS_PRESENT = {case: (lambda: _installed("av"), "PyAV (the [video] extra) is not installed")
                 for case in ("video_unsupported_codec", "video_unreadable_frame")}


@pytest.mark.parametrize("case_id, argv, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, argv, needles, bad_paths):
    if case_id in NEEDS_ABSENT and NEEDS_ABSENT[case_id][0]():
        pytest.skip(f"{case_id}: {NEEDS_ABSENT[case_id][1]}")
    if case_id in NEEDS_PRESENT and not NEEDS_PRESENT[case_id][0]():
        pytest.skip(f"{case_id}: {NEEDS_PRESENT[case_id][1]}")
    args = _format(argv, bad_paths)
    if args and args[0] in ("train", "evaluate", "inference", "export", "quantize") and not any(
            a.startswith("results_dir=") for a in args) and "-e" not in args:
        args.append(f"results_dir={bad_paths['tmp']}/results_{case_id}")
    env = bad_paths.get("env_" + case_id)
    if case_id in HEAVY:
        result = run_cli_forked(*args, env=env, fsize=bad_paths.get("fsize_" + case_id))
    else:
        result = run_cli(*args, env=env)
    assert_user_error(result, *_format(needles, bad_paths))
    for secret in SECRETS:
        assert secret not in result.output, f"{case_id} shows the secret {secret!r}: {result.output[-2000:]}"
    if case_id in AFTER:
        AFTER[case_id](f"{bad_paths['tmp']}/results_{case_id}")
