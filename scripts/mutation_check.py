"""Mutation check: break the package on purpose, one named breakage at a time, and require a test to go red.

Each mutant below is a textual edit of a copy of the repository (package and tests, in a temporary folder);
only the tests meant to catch it run, against the mutated copy (``PYTHONPATH`` and the working directory point
at the copy, so tests and the ``python -m segformer_tao.cli`` subprocesses they start import the mutated code).
A mutant is caught when at least one of its tests fails (``require_all``: every one of them must fail). The
check fails when a mutant survives, when its pattern no longer matches the code exactly once (the code moved:
fix the pattern in MUTANTS), or when the tests do not pass on the unmutated copy.

Usage: ``python scripts/mutation_check.py [NAME ...]`` (``--list`` prints the mutants; ``--slow`` adds those
whose tests take minutes). ``make mutants`` runs the others; CI runs it after ``make test``. Prints one line per
mutant: caught by which test(s), seconds.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutant:
    """A named breakage: ``edits`` are (file relative to the repo, exact text, replacement), each of which must
    match exactly once; ``tests`` are pytest node ids meant to catch it."""

    name: str
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...]
    require_all: bool = False
    slow: bool = False  # minutes of tests: only with --slow or by name (not in `make mutants`)


TT = "tests/engine/test_train_tiny.py::"
TW = "tests/model/test_weights.py::"
TX = "tests/deploy/test_export.py::"
TG = "tests/model/test_fan_golden.py::"
TQ = "tests/deploy/test_torchao.py::"
TC = "tests/data/test_convert.py::"
TR = "tests/test_redact.py::"
TJ = "tests/test_job_folder_safety.py::"
TH = "tests/deploy/test_huggingface.py::"
TRA = "tests/model/test_radio.py::"
TCL = "tests/cluster/test_preemption.py::"
# The table the lead edits after a merge moves code: name, edits (file, exact old text, new text), tests.
MUTANTS: tuple[Mutant, ...] = (
    Mutant("resume_ignored", (
        ("segformer_tao/engine/trainer.py", "ckpt_path=resume,", "ckpt_path=None,"),),
        (TT + "test_resume_gives_the_same_weights_as_an_uninterrupted_run",
         TT + "test_extending_a_finished_training_keeps_its_csv_history",
         TT + "test_out_of_memory_is_explained_and_keeps_the_last_checkpoint"), require_all=True),
    Mutant("resume_ignored_after_kills", (
        ("segformer_tao/engine/trainer.py", "ckpt_path=resume,", "ckpt_path=None,"),),
        ("tests/test_crash_safety.py::test_sigkill_anywhere_then_resume_matches_uninterrupted_run",
         "tests/automl/test_search.py::test_rerun_after_a_crash_keeps_finished_trials_and_resumes_the_interrupted_one"),
        require_all=True, slow=True),
    Mutant("augmentations_dropped", (
        ("segformer_tao/data/transforms.py", "    return v2.Compose(steps)\n", "    return v2.Compose(steps[:1])\n"),),
        ("tests/data/test_transforms.py::test_flips_and_rotations_happen_at_their_configured_rates",
         "tests/data/test_transforms.py::test_colour_jitter_at_probability_one_changes_pixels_not_the_mask",
         "tests/data/test_transforms.py::test_crops_change_geometry_and_the_mask_follows_exactly"), require_all=True),
    Mutant("crop_leaves_the_mask_uncropped", (
        ("segformer_tao/data/transforms.py",
         "crop = F.crop(inpt, params[\"top\"], params[\"left\"], params[\"height\"], params[\"width\"])",
         "crop = inpt"),),
        ("tests/data/test_transforms.py::test_crops_change_geometry_and_the_mask_follows_exactly",)),
    Mutant("mask_resampled_with_legacy_nearest", (
        ("segformer_tao/data/transforms.py", "size, interpolation=v2.InterpolationMode.NEAREST_EXACT)",
         "size, interpolation=v2.InterpolationMode.NEAREST)"),),
        ("tests/data/test_transforms.py::test_crops_change_geometry_and_the_mask_follows_exactly",)),
    Mutant("training_checkpoints_plaintext", (
        ("segformer_tao/engine/callbacks.py", "self.encryption_key = encryption_key or None",
         "self.encryption_key = None"),),
        (TT + "test_encrypted_training_checkpoints",)),
    Mutant("save_checkpoint_plaintext", (
        ("segformer_tao/engine/checkpoint.py", "        if encryption_key is not None:  #",
         "        if False:  #"),),
        ("tests/engine/test_checkpoint.py::test_encrypted_checkpoint_needs_the_right_key",
         TT + "test_encrypted_training_checkpoints"), require_all=True),
    Mutant("weight_loading_skipped", (  # loads the model's own tensors back: the report still looks right
        ("segformer_tao/model/weights.py", "result = model.load_state_dict(sd, strict=False)",
         "result = model.load_state_dict({k: target.get(k, v) for k, v in sd.items()}, strict=False)"),),
        (TW + "test_state_dict_round_trip", TW + "test_tao_layout_with_fuse_bias",
         TW + "test_nvlabs_imagenet_backbone_with_classifier", TW + "test_mmseg_backbone"), require_all=True),
    Mutant("export_parity_self_compared", (
        ("segformer_tao/deploy/onnx_export.py", "got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]",
         "got = ref"),),
        (TX + "test_export_refuses_an_onnx_that_differs_from_torch",)),
    Mutant("exported_graph_wrong_and_self_checked", (
        ("segformer_tao/deploy/onnx_export.py", "got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]",
         "got = ref"),
        ("segformer_tao/deploy/onnx_export.py", "        logits = self.model(x)\n",
         "        logits = self.model(x) * (1.01 if torch.onnx.is_in_onnx_export() else 1.0)\n")),
        (TX + "test_older_opset_without_layernorm_op",
         TX + "test_static_size_full_resolution_output_and_deepstream"), require_all=True),
    Mutant("int8_scale_doubled", (
        ("segformer_tao/deploy/quantization.py", "        quantized = onnx.load(out)\n",
         "        quantized = onnx.load(out)\n"
         "        for init in quantized.graph.initializer:\n"
         "            if init.name.endswith('_scale'):\n"
         "                init.CopyFrom(onnx.numpy_helper.from_array(\n"
         "                    onnx.numpy_helper.to_array(init) * 2, init.name))\n"),),
        ("tests/deploy/test_quantization.py::test_qdq_onnx_is_valid_symmetric_and_runs[minmax]",)),
    Mutant("metrics_at_img_size", (
        ("segformer_tao/actions/evaluate.py", "        for i, mask in enumerate(batch[\"mask\"]):\n",
         "        for i, mask in enumerate(batch[\"mask\"]):\n"
         "            mask = torch.nn.functional.interpolate(mask[None, None].float(), size=tuple(batch[\"image\"]"
         ".shape[-2:]), mode=\"nearest\")[0, 0].long()\n"),),
        ("tests/engine/test_evaluate_resolution.py::test_metrics_are_computed_at_each_masks_own_resolution",)),
    Mutant("val_metrics_at_img_size", (
        ("segformer_tao/engine/module.py", "size=mask.shape[-2:], mode=\"bilinear\"",
         "size=batch[\"image\"].shape[-2:], mode=\"bilinear\""),
        ("segformer_tao/engine/module.py", "            mask = mask.to(logits.device)\n",
         "            mask = torch.nn.functional.interpolate(mask[None, None].float(), size=batch[\"image\"]"
         ".shape[-2:], mode=\"nearest\")[0, 0].long().to(logits.device)\n")),
        ("tests/engine/test_evaluate_resolution.py::test_validation_miou_is_computed_at_each_masks_own_resolution",)),
    Mutant("flip_tta_not_flipped_back", (
        ("segformer_tao/deploy/base.py", "flipped = runtime.predict(images.flip(-1)).flip(-1)",
         "flipped = runtime.predict(images.flip(-1))"),),
        ("tests/deploy/test_postprocess.py::test_flip_tta_of_a_mirror_equivariant_model_equals_its_plain_softmax",)),
    Mutant("dataset_check_skipped_by_cli", (
        ("segformer_tao/cli.py", "if action not in CHECKED_SPLITS or", "if True or action not in CHECKED_SPLITS or"),),
        ("tests/data/test_check.py::test_train_checks_the_dataset_before_training",)),
    Mutant("dataset_check_finds_nothing", (
        ("segformer_tao/data/check.py", "    if report[\"problems\"]:\n        raise UserError(",
         "    if False:\n        raise UserError("),),
        ("tests/data/test_check.py::test_check_finds_every_problem",
         "tests/data/test_check.py::test_train_checks_the_dataset_before_training")),
    Mutant("cityscapes_train_ids_off_by_one", (
        ("segformer_tao/data/convert/cityscapes.py",
         "ID_TO_TRAIN_ID = {label_id: train_id for",
         "ID_TO_TRAIN_ID = {label_id: train_id if train_id in (IGNORE, 18) else train_id + 1 for"),),
        (TC + "test_cityscapes_train_ids_equal_cityscapesscripts_conversion",)),
    Mutant("ade20k_zero_not_ignored", (
        ("segformer_tao/data/convert/ade20k.py", "REDUCE_ZERO_LABEL = {0: IGNORE,", "REDUCE_ZERO_LABEL = {0: 0,"),),
        (TC + "test_ade20k_reduce_zero_label_and_names",)),
    Mutant("grey_palette_colour_remaps_ids", (  # COCO-Stuff's handbag is (0, 0, 0): mask value 0 would read as 26
        ("segformer_tao/data/convert/tree.py", "if r == g == b and r != class_id:", "if False:"),),
        (TC + "test_coco_stuff_ids_compacted_to_171",)),
    Mutant("labelme_shapes_drawn_in_reverse", (  # labelme's own order: a later shape covers an earlier one
        ("segformer_tao/data/convert/labelme.py", "    for shape in shapes:\n",
         "    for shape in reversed(shapes):\n"),),
        (TC + "test_labelme_polygons_match_an_independent_rasterisation",)),
    Mutant("unchanged_masks_reencoded", (
        ("segformer_tao/data/convert/tree.py", "raw = linkable and np.array_equal(ids, values)", "raw = False"),),
        (TC + "test_voc_masks_are_linked_unchanged_with_the_voc_classes",)),
    Mutant("failed_convert_publishes_half_tree", (
        ("segformer_tao/data/convert/__init__.py", "    except BaseException:\n        remove_staging(staging)",
         "    except BaseException:\n        publish(staging, dst)"),),
        (TC + "test_interrupted_convert_leaves_no_half_written_mask",
         TC + "test_unknown_ids_name_the_file_and_values"), require_all=True),
    Mutant("atomic_write_is_a_plain_write", (
        ("segformer_tao/io.py", "    path = os.fspath(path)\n    directory = os.path.dirname(os.path.abspath(path))\n",
         "    path = os.fspath(path)\n    with open(path, mode) as f:\n        yield f\n    return\n"),),
        ("tests/test_io.py::test_a_failed_write_keeps_the_old_file",)),
    Mutant("parent_job_picks_latest", (
        ("segformer_tao/parent.py", "        if \"best\" in ckpts:\n",
         "        if \"best\" in ckpts and \"latest\" not in ckpts:\n"),),
        ("tests/test_jobs.py::test_parent_job_picks_the_best_checkpoint_over_the_latest",)),
    Mutant("encryption_key_parsed_by_hydra", (
        ("segformer_tao/config/compose.py", "overrides, key = ek.take_key_override(list(overrides))",
         "overrides, key = list(overrides), ek.UNSET"),),
        ("tests/test_encryption_key.py::test_command_line_key_is_the_text_typed",)),
    Mutant("plaintext_checkpoint_loads_silently", (
        ("segformer_tao/engine/checkpoint.py", "    elif own and encryption_key:\n", "    elif False:\n"),),
        ("tests/engine/test_crypto.py::test_plaintext_where_encrypted_expected_is_named_or_refused",)),
    Mutant("truncation_not_detected", (
        ("segformer_tao/crypto.py", "        last = not following\n        dst.write(",
         "        last = True\n        dst.write("),),
        ("tests/engine/test_crypto.py::test_truncated_reordered_and_modified_files_are_refused",)),
    Mutant("engine_loaded_without_its_build_record", (
        ("segformer_tao/deploy/tensorrt.py", "    if trusted:\n", "    if True:\n"),),
        ("tests/deploy/test_engine_trust.py::test_an_engine_without_a_build_record_is_refused_unless_trusted",
         "tests/deploy/test_engine_trust.py::test_an_engine_changed_after_its_build_is_refused",
         "tests/deploy/test_engine_trust.py::test_runtime_checks_before_tensorrt_is_imported"), require_all=True),
    Mutant("hf_shard_names_unconfined", (
        ("segformer_tao/model/weights.py", "    if outside:\n", "    if False:\n"),),
        (TW + "test_hf_shard_outside_the_model_folder_is_refused[dotdot]",
         TW + "test_hf_shard_names_of_a_remote_folder_are_confined_by_name"), require_all=True),
    Mutant("appends_follow_symlinks", (
        ("segformer_tao/io.py", '_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)', "_NOFOLLOW = 0"),),
        ("tests/test_io.py::test_appended_files_refuse_a_symlink_planted_at_their_name",)),
    Mutant("atomic_writes_always_private", (
        ("segformer_tao/io.py", "_NOFOLLOW | _CLOEXEC, FILE_MODE), tmp", "_NOFOLLOW | _CLOEXEC, 0o600), tmp"),),
        ("tests/test_io.py::test_every_output_file_gets_the_same_mode_from_the_umask",)),
    Mutant("script_command_unquoted", (
        ("scripts/train_single_node.sh", 'exec "$SEGFORMER" train train.num_gpus',
         "exec $SEGFORMER train train.num_gpus"),),
        ("tests/test_scripts.py::test_segformer_path_with_spaces_and_arguments_pass_through_intact",)),
    Mutant("fan_convnext_norm_biased", (  # timm's LayerNorm2d: what ours computed before issue 26
        ("segformer_tao/model/backbones/fan.py",
         "shrink = (self.normalized_shape[0] - 1) / self.normalized_shape[0]", "shrink = 1.0"),),
        (TG + "test_fan_matches_tao_golden_outputs[fan_tiny_8_p4_hybrid]",
         TG + "test_fan_onnx_export_matches_pytorch_and_tao"), require_all=True),
    Mutant("fan_stem_norm_unbiased", (  # TAO's stem norm sees a contiguous map: biased variance
        ("segformer_tao/model/backbones/fan.py", "LayerNorm2d(d0, eps=1e-6))", "LayerNorm2dUnbiased(d0, eps=1e-6))"),),
        (TG + "test_fan_matches_tao_golden_outputs[fan_tiny_8_p4_hybrid]",
         TG + "test_fan_tao_norms_are_the_ones_tao_runs"), require_all=True),
    Mutant("fan_norm_v_eps_of_the_block", (
        ("segformer_tao/model/backbones/fan.py", "self.norm_v = nn.LayerNorm(dim, eps=1e-5)",
         "self.norm_v = nn.LayerNorm(dim, eps=1e-6)"),),
        (TG + "test_fan_matches_tao_golden_outputs[fan_tiny_8_p4_hybrid]",)),
    Mutant("torchao_allowlist_dropped", (
        ("segformer_tao/model/torchao_int8.py",
         "    with torch.serialization.safe_globals(allowed_types(path)):\n        return load()",
         "    allowed_types(path)\n    return load()"),),
        (TQ + "test_checkpoint_loads_as_the_quantized_model",)),
    Mutant("torchao_global_registration_kept", (
        ("segformer_tao/model/torchao_int8.py", "    if len(kept) != len(registered):", "    if False:"),),
        (TQ + "test_torchao_types_are_allowed_only_by_the_scoped_allowlist",)),
    Mutant("torchao_checkpoint_unpickled_freely", (
        ("segformer_tao/engine/checkpoint.py",
         "map_location=map_location, weights_only=True), path)",
         "map_location=map_location, weights_only=False), path)"),),
        (TQ + "test_os_system_beside_torchao_types_is_refused",)),
    Mutant("quantize_parent_takes_newest_onnx", (
        ("segformer_tao/parent.py", "(recorded or ([] if parent_action == \"quantize\" else files[-1:]))",
         "(recorded or files[-1:])"),),
        (TQ + "test_parent_job_picks_each_backends_output",)),
    Mutant("auto_precision_ignores_amx", (
        ("segformer_tao/hardware.py", 'BF16_FLAGS = ("avx512_bf16", "amx_bf16")', 'BF16_FLAGS = ("avx512_bf16",)'),),
        ("tests/engine/test_trainer_settings.py",)),
    Mutant("auto_precision_bf16_on_pre_ampere_gpus", (
        ("segformer_tao/hardware.py", "return cuda_capability() >= (8, 0)", "return cuda_capability() >= (7, 0)"),),
        ("tests/engine/test_trainer_settings.py",)),
    Mutant("bf16_weights_in_checkpoints", (
        ("segformer_tao/engine/trainer.py", '"bf16-mixed": "bf16-mixed", "16-mixed"',
         '"bf16-mixed": "bf16-true", "16-mixed"'),),
        (TT + "test_checkpoints_hold_fp32_and_a_run_resumed_under_another_precision_continues",)),
    Mutant("progress_bar_into_log_files", (
        ("segformer_tao/engine/progress.py", "    return LineProgress()\n",
         "    return TQDMProgressBar(refresh_rate=10)\n"),),
        ("tests/engine/test_progress.py",)),
    Mutant("freed_memory_returned_to_the_kernel", (
        ("segformer_tao/engine/allocator.py", "return bool(mallopt(M_MMAP_THRESHOLD, _THRESHOLD)) and ", "return "),),
        ("tests/engine/test_allocator.py::test_freed_large_blocks_are_reused",)),
    Mutant("model_meta_spec_default_wins_img_size", (
        ("segformer_tao/model/meta.py", "    if src is None or ours == meta.img_size:\n        return meta.img_size\n",
         "    if src is None or ours == meta.img_size:\n        return ours\n"),),
        ("tests/test_model_meta_rule.py::test_the_models_values_win_over_schema_defaults",)),
    Mutant("model_meta_spec_default_wins_mean_std", (
        ("segformer_tao/model/meta.py", "        if src is None or _same(ours, theirs):\n            return theirs\n",
         "        if src is None or _same(ours, theirs):\n            return ours\n"),),
        ("tests/test_model_meta_rule.py::test_the_models_values_win_over_schema_defaults",)),
    Mutant("model_meta_user_value_ignored", (
        ("segformer_tao/model/meta.py", "    sources[\"img_size\"] = src\n    warnings.append(",
         "    return meta.img_size\n    warnings.append("),),
        ("tests/test_model_meta_rule.py::test_spec_file_and_command_line_values_are_the_users_and_apply_with_a_warning",)),
    Mutant("model_meta_decided_but_not_applied", (
        ("segformer_tao/deploy/runtime.py", "    model_meta.apply(cfg, decision)\n", ""),),
        ("tests/deploy/test_model_meta.py::test_every_action_runs_at_the_models_img_size_and_mean_std",), slow=True),
    Mutant("openvino_core_per_call", (
        ("segformer_tao/deploy/openvino.py", "@functools.lru_cache(maxsize=1)\ndef core():", "def core():"),),
        ("tests/deploy/test_openvino_signal_stack.py",)),
    # issue 34: a URL password ends at whitespace again; a crafted scrypt cost is derived; children keep the lock
    # or outlive their parent; external ONNX data outside the model folder is read; a key inside a path is masked
    Mutant("url_password_cut_at_whitespace", (
        ("segformer_tao/redact.py", "        url = text[m.start():]\n",
         "        url = text[m.start():].split()[0]\n"),),
        (TR + "test_url_password_with_any_character_is_hidden_everywhere",
         TR + "test_command_line_registration_covers_the_whole_argument")),
    Mutant("key_inside_a_path_masked", (
        ("segformer_tao/redact.py", "    return MASK if value in _secrets() else value\n",
         "    return redact(value)\n"),),
        (TR + "test_a_key_inside_a_path_is_not_rewritten_in_config_values",)),
    Mutant("crafted_kdf_cost_derived", (
        ("segformer_tao/crypto.py", "    _check_kdf_cost(path, kdf, log2_n, r, p, chunk)\n", ""),),
        ("tests/engine/test_crypto.py::test_crafted_kdf_cost_is_refused_before_any_derivation",)),
    Mutant("forked_child_keeps_the_lock", (
        ("segformer_tao/joblock.py",
         "        with contextlib.suppress(OSError):\n            os.close(fd)\n    _OPEN_FDS",
         "        pass\n    _OPEN_FDS"),),
        (TJ + "test_forked_child_does_not_hold_the_lock",)),
    Mutant("forked_child_outlives_its_parent", (
        ("segformer_tao/joblock.py", "    lifeline.set_parent_death_signal(_FORKING_PID)\n", ""),),
        (TJ + "test_forked_child_dies_with_its_parent_and_the_folder_is_free",)),
    Mutant("started_process_outlives_its_parent", (
        ("segformer_tao/lifeline.py", "    if os.getppid() == parent:\n        set_parent_death_signal(parent)\n",
         "    if os.getppid() == parent:\n"),),
        (TJ + "test_started_process_dies_with_the_segformer_process_that_started_it",)),
    Mutant("onnx_external_data_anywhere", (
        ("segformer_tao/deploy/onnx_external.py", "        if why is not None:\n", "        if False:\n"),),
        ("tests/deploy/test_onnx_external_data.py::test_locations_outside_the_model_folder_are_refused",)),
    Mutant("hf_export_key_and_value_swapped", (
        ("segformer_tao/model/hf_format.py", 'out[f"{prefix}value.{m[3]}"] = keys, values',
         'out[f"{prefix}value.{m[3]}"] = values, keys'),),
        (TH + "test_our_tensors_in_the_names_transformers_writes",
         TH + "test_image_processor_from_the_folder_preprocesses_like_us"), require_all=True),
    Mutant("hf_preprocessor_mean_in_0_255", (
        ("segformer_tao/deploy/huggingface.py", '"image_mean": [float(v) for v in mean]',
         '"image_mean": [float(v) * 255 for v in mean]'),),
        (TH + "test_image_processor_from_the_folder_preprocesses_like_us",)),
    Mutant("hf_preprocessor_mean_in_0_255_pipeline", (
        ("segformer_tao/deploy/huggingface.py", '"image_mean": [float(v) for v in mean]',
         '"image_mean": [float(v) * 255 for v in mean]'),),
        (TH + "test_transformers_pipeline_gives_segformer_inference_masks",), slow=True),
    Mutant("hf_reader_ignores_rescale_factor", (
        ("segformer_tao/deploy/hf_runtime.py", '"mean": [m / scale for m in mean], "std": [s / scale for s in std]',
         '"mean": mean, "std": std'),),
        (TH + "test_a_hub_folder_with_its_own_processor_runs_like_transformers",)),
    Mutant("hf_export_into_a_full_folder", (
        ("segformer_tao/deploy/huggingface.py", "    if os.path.isdir(folder) and os.listdir(folder):\n",
         "    if False:\n"),),
        (TH + "test_existing_non_empty_output_folder_is_refused",)),
    Mutant("labels_at_last_maximum_wins", (
        ("segformer_tao/deploy/base.py", "labels.masked_fill_(planes[k] > best, k)",
         "labels.masked_fill_(planes[k] >= best, k)"),),
        ("tests/deploy/test_labels_at.py",)),
    Mutant("labels_at_running_maximum_not_kept", (
        ("segformer_tao/deploy/base.py", "            torch.maximum(best, planes[k], out=best)\n", ""),),
        ("tests/deploy/test_labels_at.py",)),
    Mutant("overlay_video_not_at_the_source_rate", (
        ("segformer_tao/actions/inference.py", '"overlays", name + ".mp4"), info["fps"], *size)',
         '"overlays", name + ".mp4"), 25, *size)'),),
        ("tests/data/test_sources.py::test_video_frames_rate_and_masks_equal_per_image_inference_of_its_decoded_frames",)),
    Mutant("source_names_flattened", (
        ("segformer_tao/data/sources.py", 'r = r if inside.startswith("..") else inside.replace(os.sep, "/")',
         "r = r"),),
        ("tests/data/test_sources.py::test_output_names_keep_relative_paths_and_never_collide",
         "tests/data/test_sources.py::test_listing_forms_and_their_names"), require_all=True),
    Mutant("radio_summary_fusion_skipped", (
        ("segformer_tao/model/backbones/radio.py", "        if not self.add_summary:\n            return levels\n",
         "        return levels\n"),),
        (TRA + "test_radio_matches_tao_golden_outputs",)),
    Mutant("radio_cpe_table_not_resized", (
        ("segformer_tao/model/backbones/radio.py", "            if self.cpe_mode:\n                side = max(grid)",
         "            if False:\n                side = max(grid)"),),
        (TRA + "test_radio_matches_tao_golden_outputs",
         TRA + "test_cpe_eval_positions_are_the_resized_tables_top_left_window")),
    Mutant("radio_no_register_tokens", (
        ("segformer_tao/model/backbones/radio.py",
         "self.num_registers = register_multiple - num_tokens % register_multiple if register_multiple else 0",
         "self.num_registers = 0"),),
        (TRA + "test_tao_checkpoint_keys_load_key_for_key", TRA + "test_radio_matches_tao_golden_outputs")),
    Mutant("radio_adapter_norm_eps_1e-6", (
        ("segformer_tao/model/backbones/radio.py", "norm_eps=1e-5,", "norm_eps=1e-6,"),),
        (TRA + "test_radio_matches_tao_golden_outputs",)),
    Mutant("radio_grandma_typo_not_read", (
        ("segformer_tao/model/backbones/radio.py", '.replace(".grandma", ".gamma")', ""),),
        (TRA + "test_radio_release_checkpoint_loads_with_report",)),
    Mutant("radio_training_positions_not_cropped", (
        ("segformer_tao/model/backbones/radio.py", "if self.cpe_mode and self.training:", "if False:"),),
        (TRA + "test_cpe_training_crops_each_image_and_drops_positions",
         TRA + "test_training_mode_positions_match_tao")),
    Mutant("radio_no_position_dropout", (
        ("segformer_tao/model/backbones/radio.py", "if self.training and self.pos_dropout > 0:", "if False:"),),
        (TRA + "test_training_mode_positions_match_tao",)),
    Mutant("etlt_written_as_plain_onnx", (
        ("segformer_tao/actions/export.py", 'if str(onnx_path).lower().endswith(".etlt"):', "if False:"),),
        (TX + "test_etlt_output_is_refused_and_nothing_is_written",)),
    Mutant("calibration_ignores_tao_layout", (
        ("segformer_tao/data/calibration.py", "found = _tao_layout(folder, key)", "found = {}"),),
        ("tests/data/test_calibration.py::test_a_dataset_root_is_read_at_taos_images_test",)),
    Mutant("mmiou_without_the_minimum", (
        ("segformer_tao/engine/mmiou.py", "return -iou.min() - iou.mean()", "return -iou.mean()"),),
        ("tests/engine/test_mmiou.py::test_mmiou_without_absent_classes_uses_the_minimum_and_has_a_gradient",)),
    Mutant("mmiou_counts_ignored_pixels", (
        ("segformer_tao/engine/mmiou.py", "probs = logits.float().softmax(dim=1) * valid",
         "probs = logits.float().softmax(dim=1)"),),
        ("tests/engine/test_mmiou.py::test_mmiou_equals_a_per_image_per_class_loop",)),
    Mutant("mmiou_key_trains_ce", (
        ("segformer_tao/engine/module.py", 'OmegaConf.select(cfg, "train.segment.loss") == "mmiou"', "False"),),
        ("tests/engine/test_mmiou.py::test_mmiou_trains_as_well_as_cross_entropy",)),
    Mutant("tao_default_note_silent", (
        ("segformer_tao/config/tao_defaults.py", "    if not unset:\n        return None\n", "    return None\n"),),
        ("tests/test_tao_defaults.py::test_config_notes_the_tao_defaults_a_spec_relies_on",)),
    Mutant("preemption_signal_handler_removed", (
        ("segformer_tao/engine/preemption.py", "            signal.signal(sig, self._on_signal)\n",
         "            pass\n"),),
        (TCL + "test_sigterm_to_a_plain_train_preempts_and_the_rerun_resumes_to_the_same_weights",), slow=True),
    Mutant("resume_from_latest_only", (
        ("segformer_tao/engine/resume.py", "if io.exists(latest) else []) + _periodic(results_dir)",
         "if io.exists(latest) else [])"),),
        (TCL + "test_resume_takes_the_newest_complete_checkpoint_whatever_its_name",)),
    Mutant("wall_clock_checkpoints_never", (
        ("segformer_tao/engine/preemption.py", "timed = self.interval_s > 0 and", "timed = False and"),),
        (TCL + "test_wall_clock_interval_writes_mid_epoch_checkpoints",)),
    Mutant("mid_epoch_resume_restarts_the_epoch", (
        ("segformer_tao/engine/resumable.py", "        self.batch_sampler.load_state_dict(state)\n",
         "        pass\n"),),
        (TCL + "test_sigterm_to_a_plain_train_preempts_and_the_rerun_resumes_to_the_same_weights",), slow=True),
    Mutant("slurm_ranks_ignored", (
        ("segformer_tao/ranks.py", "    if slurm_managed(env):\n        return Launch(\"slurm\"",
         "    if False:\n        return Launch(\"slurm\""),),
        ("tests/cluster/test_slurm.py::test_one_task_per_device_srun_segformer_train",), slow=True),
)

_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "results", "demo_data", ".pytest_cache",
                                 ".ruff_cache", "*.egg-info", "build", "dist", ".whl")


def check_patterns(root: str, mutants: tuple[Mutant, ...]) -> list[str]:
    """One message per edit whose text is not found exactly once in its file (the code moved or changed)."""
    problems = []
    for m in mutants:
        for path, old, _ in m.edits:
            full = os.path.join(root, path)
            text = open(full, encoding="utf-8").read() if os.path.isfile(full) else None
            count = 0 if text is None else text.count(old)
            if count != 1:
                where = "file missing" if text is None else ("pattern not found" if count == 0 else
                                                              f"pattern found {count} times")
                problems.append(f"{m.name}: {path}: {where}: {old.strip()[:80]!r}")
    return problems


def _run_pytest(copy: str, tests: tuple[str, ...], stop_early: bool, timeout: float, threads: int = 1,
                ) -> tuple[int, dict[str, str], str]:
    """Run ``tests`` in the copied repo; returns (exit code, {failed node id: failure message}, output tail);
    exit code 124 on timeout."""
    report = os.path.join(copy, ".mutation_report.xml")
    env = {**os.environ, "PYTHONPATH": copy, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", f"--junitxml={report}",
           *(["-x"] if stop_early else []), *tests]
    # its own process group, so that a timeout also ends the CLI processes the tests started
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return 124, {}, output[-2000:]
    failed = {}
    if os.path.exists(report):
        for case in ET.parse(report).getroot().iter("testcase"):
            problem = case.find("failure") if case.find("failure") is not None else case.find("error")
            if problem is not None:
                module = case.get("classname", "").replace(".", "/") + ".py"
                failed[f"{module}::{case.get('name')}"] = " ".join((problem.get("message") or "").split())[:160]
        os.unlink(report)
    return proc.returncode, failed, output[-2000:]


def _short(node: str) -> str:
    return node.split("::", 1)[-1]


def _apply(copy: str, mutant: Mutant) -> dict[str, str]:
    originals: dict[str, str] = {}
    for path, old, new in mutant.edits:
        full = os.path.join(copy, path)
        text = open(full, encoding="utf-8").read()
        originals.setdefault(full, text)
        with open(full, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new, 1))
    return originals


def _restore(originals: dict[str, str]) -> None:
    for full, text in originals.items():
        with open(full, "w", encoding="utf-8") as f:
            f.write(text)


def run_mutant(copy: str, mutant: Mutant, timeout: float, verbose: bool = False, threads: int = 1,
               ) -> tuple[bool, str]:
    """(caught, one-line verdict) for one mutant applied to the copy (restored afterwards); ``verbose`` adds each
    failing test's message (to see that it failed for the mutant's reason)."""
    originals = _apply(copy, mutant)
    start = time.monotonic()
    try:
        code, failed, tail = _run_pytest(copy, mutant.tests, not mutant.require_all, timeout, threads)
    finally:
        _restore(originals)
    seconds = time.monotonic() - start
    if code == 124:
        return True, f"caught (tests timed out after {timeout:.0f}s)  {seconds:.1f}s"
    if code not in (0, 1):  # 2-5: interrupted, internal error, usage error, nothing collected
        return False, f"ERROR: pytest exit code {code} (collection or usage problem)  {seconds:.1f}s\n{tail}"
    if not failed:
        return False, f"SURVIVED: {len(mutant.tests)} test(s) passed  {seconds:.1f}s"
    missed = [t for t in mutant.tests if t not in failed] if mutant.require_all else []
    if missed:
        return False, (f"SURVIVED in {', '.join(_short(t) for t in missed)} (caught by "
                       f"{', '.join(_short(t) for t in failed)})  {seconds:.1f}s")
    details = "".join(f"\n    {_short(t)}: {msg}" for t, msg in failed.items()) if verbose else ""
    return True, f"caught by {', '.join(_short(t) for t in failed)}  {seconds:.1f}s{details}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutants and their tests, run nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each failing test's message")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per pytest run (default 300)")
    parser.add_argument("--slow", action="store_true", help="also run the mutants whose tests take minutes")
    parser.add_argument("-j", "--jobs", type=int, default=2,
                        help="pytest runs at once, each in its own copy (default 2, CI's cores; 1 thread each)")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; known: {', '.join(known)}")
    mutants = tuple(known[n] for n in args.names) if args.names else tuple(
        m for m in MUTANTS if args.slow or not m.slow)
    if args.list:
        for m in mutants:
            print(f"{m.name}{' (slow)' if m.slow else ''}: {', '.join(_short(t) for t in m.tests)}")
        return 0
    total = time.monotonic()
    problems = check_patterns(REPO, mutants)
    for p in problems:
        print(f"PATTERN MISSING {p}", flush=True)
    runnable = tuple(m for m in mutants if not any(p.startswith(m.name + ":") for p in problems))
    failures = len({p.split(":", 1)[0] for p in problems})
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 2) // jobs)  # torch threads per pytest run: no oversubscription
    with tempfile.TemporaryDirectory(prefix="segformer_mutants_") as tmp, ThreadPoolExecutor(jobs) as pool:
        copies: queue.Queue[str] = queue.Queue()
        for i in range(jobs):  # one copy per concurrent pytest run: a mutant never leaks into another's tests
            copies.put(shutil.copytree(REPO, os.path.join(tmp, f"repo{i}"), ignore=_IGNORE))

        def in_a_copy(fn, *fn_args):
            copy = copies.get()
            try:
                return fn(copy, *fn_args)
            finally:
                copies.put(copy)

        tests = list(dict.fromkeys(t for m in runnable for t in m.tests))
        start = time.monotonic()
        chunks = [tuple(tests[i::jobs]) for i in range(jobs) if tests[i::jobs]]
        base = list(pool.map(lambda chunk: in_a_copy(_run_pytest, chunk, False, args.timeout * 2, threads), chunks))
        failed = [t for _, f, _ in base for t in f]
        print(f"{'baseline':<40} {len(tests)} tests on the unmutated code: "
              f"{'pass' if not failed and all(c == 0 for c, _, _ in base) else 'FAIL'}  "
              f"{time.monotonic() - start:.1f}s", flush=True)
        if failed or any(c != 0 for c, _, _ in base):
            print(f"The tests must pass before mutating (pytest exit codes {[c for c, _, _ in base]}, 124 = timed "
                  f"out); failed: {failed}\n" + "\n".join(t for _, _, t in base))
            return 1
        verdicts = pool.map(lambda m: in_a_copy(run_mutant, m, args.timeout, args.verbose, threads), runnable)
        for m, (caught, verdict) in zip(runnable, verdicts):
            failures += not caught
            print(f"{m.name:<40} {verdict}", flush=True)
    print(f"{len(mutants) - failures} of {len(mutants)} mutants caught in {time.monotonic() - total:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
