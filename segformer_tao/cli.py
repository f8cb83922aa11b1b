"""`segformer` entrypoint: parse the action, compose the config, check data sources, dispatch.

Thin on purpose: heavy modules (torch, Lightning, ONNX) are imported only after the config and the required
keys have been validated, so mistakes are reported in about a second.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence

from segformer_tao.config.schema import REQUIRED_KEYS
from segformer_tao.errors import Preempted, UserError
from segformer_tao.ranks import check_allocation, is_primary

ACTION_HELP = {
    "train": "train a model (AutoML search by default: automl_policy=auto|on|off)",
    "evaluate": "metrics of a checkpoint, ONNX model or TensorRT engine on the test split",
    "inference": "masks and overlays for inference.source (images, folder, glob, list, s3://, video) or the "
                 "predict split",
    "export": "export a checkpoint to ONNX (opset 17, input/output)",
    "quantize": "INT8 post-training quantization with calibration images",
    "gen_trt_engine": "build a TensorRT engine from ONNX (GPU machine with TensorRT)",
}
TOOL_HELP = {
    "config": "print the fully composed config of an action: segformer config <action> [-e spec] [k=v ...]; "
              "segformer config upgrade OLD.yaml converts a TAO <= 5.5 spec",
    "schema": "regenerate specs/ (JSON schemas, templates, skill_info.yaml): segformer schema [--check] [--out DIR]",
    "dataset": "dataset tools: segformer dataset check k=v ... | convert --format FMT SRC DST | formats | demo OUTDIR",
    "model": "model tools: segformer model info model.backbone.type=mit_b0",
    "jobs": "list or show jobs: segformer jobs list [DIR] | segformer jobs show DIR",
}
TOOL_MODULES = {"dataset": "segformer_tao.commands.dataset", "model": "segformer_tao.commands.model",
                "jobs": "segformer_tao.commands.jobs"}

log = logging.getLogger("segformer_tao")


def usage() -> str:
    lines = ["usage: segformer <action> [-e SPEC.yaml] [key=value ...] [--debug]", "", "actions:"]
    lines += [f"  {a:<15} {h}" for a, h in ACTION_HELP.items()]
    lines += ["", "tools:"] + [f"  {a:<15} {h}" for a, h in TOOL_HELP.items()]
    lines += ["", "Keys use Hydra's override grammar (key=value, +key=value, ~key); `segformer <action> --help` "
              "lists every key with its default.", "Docs: README.md; schemas: specs/schemas/<action>.schema.json."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[str | None, list[str], dict]:
    """Split argv into (command, overrides, flags). Flags: debug, help, spec."""
    flags = {"debug": False, "help": False, "spec": None}
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--debug":
            flags["debug"] = True
        elif a in ("-h", "--help"):
            flags["help"] = True
        elif a in ("-e", "--experiment_spec_file", "--experiment-spec-file", "--spec"):
            if i + 1 >= len(args):
                raise UserError(f"{a} needs a file: segformer <action> -e spec.yaml")
            flags["spec"] = args[i + 1]
            i += 1
        elif a.startswith("--experiment_spec_file=") or a.startswith("-e="):
            flags["spec"] = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    command = rest.pop(0) if rest else None
    return command, rest, flags


def action_help(action: str) -> str:
    """Every key relevant to an action, with default and description (generated from the dataclasses)."""
    from segformer_tao.config.compose import conf_groups, group_options
    from segformer_tao.config.specs import keys_for_action

    lines = [f"segformer {action}: {ACTION_HELP[action]}", "", "required:"]
    lines += ["  " + " or ".join(group) for group in REQUIRED_KEYS[action]]
    if action == "inference":
        lines += ["", "inputs (one of):",
                  "  inference.source=PATH   an image, a folder (recursive), a glob 'photos/**/*.jpg', a text file "
                  "listing paths, an s3:// prefix, or a video (mp4/mov/avi/mkv; pip install 'segformer_tao[video]')",
                  "  dataset.segment.root_dir=DIR [dataset.segment.predict_split=test]   TAO's unet layout: "
                  "DIR/images/<predict_split>/",
                  "  e.g. segformer inference inference.source=photos/ parent_job=results/train"]
    lines += ["", "config groups (switch a whole group, e.g. model=mit_b2):"]
    for group in sorted(conf_groups()):
        options = group_options(group)
        if len(options) > 1:
            lines.append(f"  {group}={'|'.join(options)}")
    lines += ["", "keys (key = default  description):"]
    for key, default, desc in keys_for_action(action):
        lines.append(f"  {key} = {default!r}  {desc}")
    return "\n".join(lines)


# Keys naming what an action reads (the rest of REQUIRED_KEYS name model files).
DATA_KEYS = {"dataset.segment.root_dir", "inference.source", "dataset.segment.quant_calibration_dataset.images_dir"}


def check_required(action: str, cfg) -> None:
    """Raise a UserError naming the first missing data-source or model key for this action."""
    from omegaconf import OmegaConf

    for group in REQUIRED_KEYS[action]:
        data = any(k in DATA_KEYS for k in group)
        if not any(OmegaConf.select(cfg, k) not in (None, "", []) for k in group):
            keys = " or ".join(group)
            example = f"{group[0]}=/path/to/{'data' if data else 'file'}"
            hint = " (or parent_job=<results dir of a previous job>)" if not data else ""
            raise UserError(f"`segformer {action}` needs {keys} but it is not set. Add it on the command line, "
                            f"e.g. `segformer {action} {example}`{hint}, or set it in the spec file.")
        _check_model_files_exist(cfg, [k for k in group if k not in DATA_KEYS])
    source = cfg.inference.get("source") if action == "inference" else None
    if source and "://" not in str(source):  # s3:// prefixes are listed when the action starts
        from segformer_tao.data.sources import list_source

        list_source(str(source))  # a missing path or a folder without images fails now


# The split folders each action reads (role -> dataset.segment key naming the folder).
SPLIT_KEYS = {"train": {"train": "train_split", "val": "validation_split"}, "evaluate": {"test": "test_split"},
              "inference": {"predict": "predict_split"}}


def check_split_folders(action: str, cfg) -> None:
    """A local split folder that does not exist fails now, before torch and the model are loaded (the dataset
    itself lists and pairs the files later, also for s3://)."""
    from segformer_tao import io

    seg = cfg.dataset.segment
    root = str(seg.root_dir or "").rstrip("/")
    if not root or io.is_remote(root) or not os.path.isdir(os.path.expanduser(root)) or not os.listdir(
            os.path.expanduser(root)):
        return  # unset, remote, missing or empty: the dataset's own checks say so
    if action == "inference" and cfg.inference.get("source"):
        return  # inference.source replaces the predict split
    kinds = ("images",) if action == "inference" else ("images", "masks")
    for key in SPLIT_KEYS.get(action, {}).values():
        for kind in kinds:
            folder = os.path.join(os.path.expanduser(root), kind, str(seg[key]))
            if not os.path.isdir(folder):
                raise UserError(f"Split folder '{folder}' does not exist (split '{seg[key]}' of "
                                f"dataset.segment.root_dir='{root}'). Create it or set dataset.segment.{key} to the "
                                f"folder under {kind}/ that holds this split.")


def _check_model_files_exist(cfg, keys: list[str]) -> None:
    """A set model-file key naming a missing file fails now, not after the dataset check."""
    from omegaconf import OmegaConf

    from segformer_tao import io

    for key in keys:
        path = OmegaConf.select(cfg, key)
        if path in (None, "", []) or io.is_remote(str(path)):  # remote files are checked when read
            continue
        if not io.exists(str(path)):
            raise UserError(f"{key}='{path}' does not exist. Check the path, or use parent_job=<results dir of a "
                            "previous job> to pick its artifact.")
        hf_folder = key.endswith(".checkpoint") and os.path.isfile(os.path.join(str(path), "config.json"))
        if os.path.isdir(str(path)) and not hf_folder:  # a Hugging Face folder is a model (deploy/hf_runtime.py)
            raise UserError(f"{key}='{path}' is a folder, not a model file. Point {key} at the file (e.g. "
                            f"{os.path.join(str(path), 'segformer_model_best.pth')}), or use parent_job={path} to pick "
                            "the artifact of the job that wrote that folder.")


def check_conflicts(action: str, cfg) -> None:
    """Keys that are valid alone but contradict each other."""
    section = cfg.get(action)
    if section is not None and "gpu_ids" in section and "num_gpus" in section:
        ids, n = list(section.gpu_ids or []), section.num_gpus
        # an AutoML search may list the GPUs of all its parallel trials (num_gpus each)
        parallel = int(cfg.automl.parallel_trials) if action == "train" and cfg.automl_policy != "off" else 1
        if len(ids) > 1 and len(ids) not in (n, n * parallel):
            raise UserError(f"{action}.gpu_ids={ids} lists {len(ids)} devices but {action}.num_gpus={n}. Make them "
                            f"agree, e.g. {action}.num_gpus={len(ids)}, or drop {action}.gpu_ids.")


# Splits checked before an action starts (dataset.segment.check=full|sample|off). evaluate checks its split itself,
# once the model has said how many classes it predicts (actions/evaluate.py).
CHECKED_SPLITS = {"train": ("train", "val")}


def check_data(action: str, cfg, out_dir: str) -> None:
    """Catch bad data (unpaired files, corrupt images, mask values >= num_classes) before any training."""
    if action not in CHECKED_SPLITS or cfg.dataset.segment.check == "off" or not is_primary():
        return
    from segformer_tao.data.check import check_dataset

    check_dataset(cfg, CHECKED_SPLITS[action], report_path=f"{out_dir}/dataset_report.json")


def run_action(action: str, overrides: list[str], spec: str | None) -> dict:
    """Compose, validate, prepare the results dir, run the action, record job.json. Returns the action's result."""
    from segformer_tao import jobs, logs, parent
    from segformer_tao.config import compose_config
    from segformer_tao.status import action_status

    cfg = compose_config(action, overrides, spec)
    parent.apply_parent_job(action, cfg, {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o})
    check_required(action, cfg)
    check_split_folders(action, cfg)
    check_conflicts(action, cfg)
    if action == "train":  # an allocation that disagrees with the config fails on every rank, never hangs
        check_allocation(int(cfg.train.num_gpus), int(cfg.train.num_nodes))
    if action == "train" and cfg.automl_policy != "off":  # a search refused (bad storage, ...) writes nothing
        from segformer_tao.automl.policy import blocker, default_specs_dir

        if blocker(cfg, default_specs_dir())[0] is None:
            from segformer_tao.automl.search import preflight

            preflight(cfg)
    out_dir = jobs.prepare_results_dir(action, cfg)
    logs.setup_logging(out_dir, secrets=[cfg.encryption_key or ""])
    module_name = f"segformer_tao.actions.{action}"
    if action == "train":
        from segformer_tao.automl.policy import choose_path
        from segformer_tao.engine.trainer import precision_line

        if is_primary():
            log.info(precision_line(cfg))

        if choose_path(cfg) == "automl":
            module_name = "segformer_tao.automl.search"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise UserError(f"`segformer {action}` is not available in this version yet. See README.md for the "
                            "actions that are.") from e
        raise
    job = jobs.Job.start(action, cfg, out_dir)
    # status.json (TAO's schema): STARTED now, SUCCESS or FAILURE (the user error's message) at the end, written
    # before job.finish releases the results dir's lock.
    try:
        with action_status(out_dir, action, enabled=is_primary()):
            check_data(action, cfg, out_dir)
            result = module.run(cfg) or {}
    except Preempted as e:  # a checkpoint holds the run's full state: the same command (or a requeue) resumes it
        job.finish("preempted", error=str(e), artifacts={"preemption_checkpoint": e.checkpoint})
        if is_primary() and action == "train":
            from segformer_tao.engine.preemption import requeue

            requeue(bool(cfg.train.get("slurm_requeue")))
        raise
    except BaseException as e:
        job.finish("failed", error=str(e) if isinstance(e, UserError) else type(e).__name__)
        raise
    jobs.note_unencrypted(cfg, result.get("artifacts", {}))
    job.finish("done", metrics=result.get("metrics", {}), artifacts=result.get("artifacts", {}))
    if is_primary():  # DDP's extra processes run this CLI too
        log.info("%s finished: outputs in %s", action, out_dir)
    return result


def _print_config(overrides: list[str], spec: str | None) -> int:
    from segformer_tao.config import compose_config, to_yaml_without_secrets

    if overrides and overrides[0] == "upgrade":
        from segformer_tao.config.upgrade import main as upgrade_main

        return upgrade_main(overrides[1:])
    if not overrides or overrides[0] not in ACTION_HELP:
        raise UserError("Usage: segformer config <action> [-e spec.yaml] [key=value ...] with <action> one of "
                        f"{', '.join(ACTION_HELP)}.")
    cfg = compose_config(overrides[0], overrides[1:], spec)
    print(to_yaml_without_secrets(cfg), end="")
    if spec:
        from segformer_tao.config.tao_defaults import note

        line = note(cfg)
        if line:
            print(line, file=sys.stderr)
    return 0


def dispatch(command: str | None, overrides: list[str], flags: dict) -> int:
    if command is None or (flags["help"] and command not in ACTION_HELP):
        if command in TOOL_MODULES:
            return importlib.import_module(TOOL_MODULES[command]).main(overrides + ["--help"])
        print(usage())
        return 0 if flags["help"] or command is None else 2
    if command in ACTION_HELP:
        if flags["help"]:
            print(action_help(command))
            return 0
        run_action(command, overrides, flags["spec"])
        return 0
    if command == "config":
        return _print_config(overrides, flags["spec"])
    if command == "schema":
        from segformer_tao.config.specs import main as schema_main

        return schema_main(overrides)
    if command in TOOL_MODULES:
        return importlib.import_module(TOOL_MODULES[command]).main(overrides)
    import difflib

    close = difflib.get_close_matches(command, list(ACTION_HELP) + list(TOOL_HELP), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UserError(f"Unknown action '{command}'.{hint} Valid actions: {', '.join(ACTION_HELP)} "
                    f"(tools: {', '.join(TOOL_HELP)}). Run `segformer --help`.")


def _quiet_third_party() -> None:
    """Drop third-party chatter that says nothing about this run (advertising tips, internal deprecations)."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # DDP compares strides literally; the depth-wise conv weights (C, 1, 3, 3) differ only in the stride of their
    # size-1 dimension, which is the same memory layout, so the "may impair performance" note does not apply.
    warnings.filterwarnings("ignore", message=r".*Grad strides do not match bucket view strides.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "Tip:" not in record.getMessage())


def _guard_secrets(argv: list[str], own_process: bool) -> None:
    """Before anything can print: remember the secrets on the command line (every message and log line hides them),
    warn about a literal key, and keep it off the command lines of the processes this run starts (Lightning re-runs
    sys.argv for each DDP rank) by handing it over in the environment."""
    from segformer_tao import redact
    from segformer_tao.config import encryption_key as ek
    from segformer_tao.logs import install_redaction

    for arg in argv:
        raw = ek.typed_text(arg)  # also from a malformed override (encryption_key:x), which Hydra would echo
        if raw:
            redact.register(raw, raw.strip("'\""))
        redact.register(*redact.url_passwords(arg))
    install_redaction()
    if ek.literal_on_command_line(argv):
        if is_primary():
            print(ek.literal_key_warning(), file=sys.stderr)
        if own_process:
            ek.scrub_argv(sys.argv)


def _print_traceback() -> None:
    from segformer_tao.redact import redact

    print(redact(traceback.format_exc()), end="", file=sys.stderr)


# Actions whose process ends with os._exit once its work and atexit handlers are done: the interpreter's own
# teardown (freeing torch, ONNX Runtime and OpenVINO state) took 1.7-5 s after the last line of output.
FAST_EXIT = ("evaluate", "inference")


def main(argv: Sequence[str] | None = None) -> int:
    """The `segformer` command: returns its exit code (in its own process, evaluate and inference exit at once)."""
    code = _main(argv)
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    if argv is None and words[:1] and words[0] in FAST_EXIT:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Run the atexit handlers (job locks), flush logs and stdio, and leave without the interpreter's teardown."""
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None = None) -> int:
    own_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("SEGFORMER_DEBUG") == "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    _quiet_third_party()
    start = time.time()
    if own_process:  # a DDP rank this process starts dies with it; this process with the segformer that started it
        from segformer_tao import lifeline

        lifeline.die_with_parent()
        lifeline.mark_children()
    try:
        _guard_secrets(argv, own_process)
        tool_args = [a for a in argv if a != "--debug"]
        if tool_args and tool_args[0] in TOOL_MODULES:  # tools parse their own flags (e.g. dataset check -e)
            return importlib.import_module(TOOL_MODULES[tool_args[0]]).main(tool_args[1:])
        command, overrides, flags = parse_args(argv)
        return dispatch(command, overrides, flags)
    except UserError as e:
        from segformer_tao.redact import redact

        if debug:
            _print_traceback()
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"interrupted after {time.time() - start:.0f} s", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`segformer ... | head`): stop quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except Exception as e:  # noqa: BLE001 - last line of defence: a short message, traceback under --debug
        from segformer_tao.errors import explain_exception
        from segformer_tao.redact import redact

        user = explain_exception(e)
        if user is not None:
            if debug:
                _print_traceback()
            print(f"error: {redact(str(user))}", file=sys.stderr)
            return user.exit_code
        _print_traceback()
        print(redact(f"internal error: {type(e).__name__}: {e}. This is a bug in segformer_tao; please report it "
                     "with the output of --debug."), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
