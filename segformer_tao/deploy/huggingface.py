"""`segformer export export.format=huggingface`: an MiT checkpoint -> a folder transformers loads as it is.

The folder: ``config.json`` (SegformerConfig; our palette, img_size and backbone under ``segformer_tao``),
``model.safetensors`` (Hub tensor names, see model/hf_format.py), ``preprocessor_config.json``
(SegformerImageProcessor: resize to img_size x img_size bilinear, x/255, our mean/std in 0-1 units) and a README.md
model card. It is written into a temporary folder beside the target and renamed into place once complete; an
existing non-empty target is refused. The files are plain (unencrypted): transformers reads them as they are.
Where transformers is installed, the folder is loaded with ``SegformerForSemanticSegmentation.from_pretrained``
before the rename and its logits compared with ours (the ONNX export's check, for this format).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import torch
import yaml

from segformer_tao import io
from segformer_tao.errors import UserError
from segformer_tao.model.hf_format import check_exportable, hf_config, to_hf_state_dict
from segformer_tao.model.meta import ModelMeta

log = logging.getLogger("segformer_tao")

FILES = {"huggingface_config": "config.json", "huggingface_weights": "model.safetensors",
         "huggingface_preprocessor": "preprocessor_config.json", "model_card": "README.md"}
PARITY_ATOL = 1e-4
# What SegformerImageProcessor has no field for (printed once per export, repeated in the model card).
NOT_EXPRESSIBLE = ("inference.sliding_window and inference.flip_tta (transformers runs one forward pass at img_size); "
                   "our resize is torchvision's antialiased bilinear on uint8, which the processor's torchvision "
                   "backend shares and its PIL one (SegformerImageProcessorPil; transformers 4's slow processor) "
                   "approximates")


def output_folder(cfg) -> str:
    """export.huggingface_dir, or <results_dir>/<checkpoint stem>_hf; UserError when it cannot be written (remote,
    a file, a non-empty folder). Checked before the checkpoint is loaded."""
    exp = cfg.export
    stem = os.path.splitext(os.path.basename(str(exp.checkpoint or "model").rstrip("/")))[0] or "model"
    folder = str(exp.get("huggingface_dir") or f"{str(exp.results_dir).rstrip('/')}/{stem}_hf").rstrip("/")
    if io.is_remote(folder):
        raise UserError(f"export.huggingface_dir='{folder}' is remote; the Hugging Face folder is written locally "
                        "(then upload it, e.g. with `huggingface-cli upload`). Set a local folder.")
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise UserError(f"export.huggingface_dir='{folder}' is a file; it must name a folder that does not exist yet "
                        "(or is empty).")
    if os.path.isdir(folder) and os.listdir(folder):
        raise UserError(f"export.huggingface_dir='{folder}' already exists and is not empty ({len(os.listdir(folder))} "
                        "entries); the export never mixes its files with others. Choose a new folder, e.g. "
                        f"export.huggingface_dir={folder}_2, or remove the old one.")
    return folder


def preprocessor_config(img_size: int, mean: list[float], std: list[float]) -> dict:
    """SegformerImageProcessor settings equal to ``data/transforms.preprocess_image`` (mean/std in 0-1 units)."""
    return {"image_processor_type": "SegformerImageProcessor", "do_resize": True,
            "size": {"height": int(img_size), "width": int(img_size)}, "resample": 2,  # PIL.Image.BILINEAR
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [float(v) for v in mean], "image_std": [float(v) for v in std], "do_reduce_labels": False}


def _training_summary(checkpoint: str) -> tuple[list[str], dict]:
    """Lines on the training data (from the train job's experiment.yaml beside the checkpoint) and its job metrics."""
    from segformer_tao.jobs import read_job

    folder = os.path.dirname(os.path.abspath(checkpoint))
    lines, metrics = [], dict((read_job(folder) or {}).get("metrics") or {})
    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError):
        with open(os.path.join(folder, "experiment.yaml"), encoding="utf-8") as f:
            spec = yaml.safe_load(f) or {}
        seg, train = spec.get("dataset", {}).get("segment", {}), spec.get("train", {})
        split = seg.get("train_split", "train")
        images = os.path.join(str(seg.get("root_dir")), "images", str(split))
        count = f", {len(os.listdir(images))} images" if os.path.isdir(images) else ""
        lines.append(f"- data: `{seg.get('root_dir')}` (unet layout), split `{split}`{count}")
        lines.append(f"- {train.get('num_epochs')} epochs, batch size {seg.get('batch_size')}, "
                     f"lr {train.get('optim', {}).get('lr')}")
    return lines, metrics


def model_card(meta: dict, name: str, checkpoint: str, command: str, diff: float | None) -> str:
    """README.md: what the model is, what it was trained on, its scores, how it was made and how to use it."""
    data_lines, job_metrics = _training_summary(checkpoint)
    scores = [f"- checkpoint: epoch {meta.get('epoch')}, step {meta.get('global_step')}, val_miou "
              f"{meta.get('val_miou')}"] if meta.get("epoch") is not None else []
    scores += [f"- train job `{k}`: {v}" for k, v in sorted(job_metrics.items()) if isinstance(v, int | float)]
    classes = ", ".join(f"{i}: {n}" for i, n in enumerate(meta["class_names"]))
    check = f"max abs logit difference {diff:.3g} vs segformer_tao" if diff is not None else "not checked here"
    return "\n".join([
        "---", "library_name: transformers", "pipeline_tag: image-segmentation",
        "tags: [segformer, semantic-segmentation, segformer_tao]", "---", "",
        f"# SegFormer ({name}), exported by segformer_tao", "",
        f"Semantic segmentation, {meta['num_classes']} classes ({classes}); input {meta['img_size']}x"
        f"{meta['img_size']} RGB, mean {meta['mean']}, std {meta['std']} (0-1 units); ignore index "
        f"{meta['ignore_index']}.", "",
        "## Training data", "", *(data_lines or ["- not recorded beside the checkpoint"]), "",
        "## Metrics", "", *(scores or ["- none recorded in the checkpoint"]), "",
        "## How it was made", "", f"From `{os.path.basename(checkpoint)}` ({check}):", "", "```", command, "```", "",
        "## Use", "", "```python",
        "from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor",
        "processor = SegformerImageProcessor.from_pretrained(folder)",
        "model = SegformerForSemanticSegmentation.from_pretrained(folder).eval()",
        "outputs = model(**processor(images=image, return_tensors=\"pt\"))  # image: a PIL RGB image",
        "mask = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]",
        "```", "", f"Not expressed by the preprocessor: {NOT_EXPRESSIBLE}.", "",
        "The files are plain (not encrypted). `segformer evaluate evaluate.checkpoint=<this folder>` reads it back.",
        ""])


def _command() -> str:
    from segformer_tao.jobs import redacted_argv

    argv = redacted_argv()
    head = ["segformer"] if os.path.basename(argv[0]) in ("segformer", "cli.py", "__main__.py") else argv[:1]
    return " ".join(head + argv[1:])


def _check_with_transformers(folder: str, model: torch.nn.Module, img_size: int) -> float | None:
    """Load ``folder`` with transformers (no missing/unexpected keys) and return the max |logit diff| vs ``model``
    on random normalized inputs; None when transformers is not installed."""
    try:
        from transformers import SegformerForSemanticSegmentation
        from transformers.utils import logging as hf_logging
    except ImportError:
        log.info("Hugging Face folder not checked: transformers is not installed (pip install transformers)")
        return None
    hf_logging.disable_progress_bar()  # a bar per check says nothing in our logs
    hf, info = SegformerForSemanticSegmentation.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise RuntimeError(f"transformers loads the exported folder with {bad}")
    gen = torch.Generator().manual_seed(0)
    diff = 0.0
    with torch.no_grad():
        for shape in ((2, 3, img_size, img_size), (1, 3, img_size + 32, img_size)):
            x = torch.randn(*shape, generator=gen)
            diff = max(diff, float((hf.eval()(pixel_values=x).logits - model(x)).abs().max()))
    return diff


def _warn_onnx_only_keys(exp) -> None:
    """Keys of the ONNX export that a Hugging Face folder has no use for: named when set, never silently dropped."""
    from segformer_tao.config.schema import ExportConfig

    default = ExportConfig()
    keys = ("onnx_file", "input_height", "input_width", "batch_size", "dynamic_hw", "full_resolution_output",
            "serialize_nvdsinfer", "opset_version")
    changed = [f"export.{k}={exp.get(k)}" for k in keys if exp.get(k) != getattr(default, k)]
    if changed:
        log.warning("warning: %s shape the ONNX export only; export.format=huggingface ignores them (transformers "
                    "takes any input size and batch)", ", ".join(changed))


def _write_files(tmp: str, model: torch.nn.Module, info: dict, extra: dict, checkpoint: str) -> float | None:
    """The folder's four files in ``tmp``, checked with transformers before the card; returns the logit diff."""
    from safetensors.torch import save as save_safetensors

    io.write_json(f"{tmp}/config.json", hf_config(model, info["class_names"], info["ignore_index"], extra))
    io.write_bytes(f"{tmp}/model.safetensors",
                   save_safetensors(to_hf_state_dict(model.state_dict()), metadata={"format": "pt"}))
    io.write_json(f"{tmp}/preprocessor_config.json", preprocessor_config(info["img_size"], info["mean"], info["std"]))
    diff = _check_with_transformers(tmp, model, info["img_size"])
    if diff is not None and diff > PARITY_ATOL:
        raise UserError(f"transformers' SegformerForSemanticSegmentation computes logits {diff:.3g} away from "
                        f"segformer_tao's (> {PARITY_ATOL:g}) for '{checkpoint}'; nothing was written. Report it with "
                        "the checkpoint's backbone, and use export.format=onnx meanwhile.")
    io.write_text(f"{tmp}/README.md", model_card(info, extra["backbone"], checkpoint, _command(), diff))
    return diff


def export_folder(model: torch.nn.Module, meta: ModelMeta, cfg, folder: str) -> dict:
    """Write the Hugging Face folder of ``model`` (an MiT SegFormer in eval mode) with ``meta`` (what it is exported
    with: its checkpoint's facts, settled by the metadata rule) to ``folder`` (see :func:`output_folder`); returns
    the action's metrics and artifacts."""
    checkpoint = str(cfg.export.checkpoint)
    quantization = meta.extra.get("quantization")
    if quantization:
        raise UserError(f"export.checkpoint='{checkpoint}' is an INT8 checkpoint (quantize.backend="
                        f"{quantization.get('backend')}); export.format=huggingface writes float weights. Export the "
                        "float checkpoint the quantize job started from.")
    name = check_exportable(model, checkpoint)
    _warn_onnx_only_keys(cfg.export)
    info = meta.to_dict()  # epoch, global_step, val_miou ... for the card; class names, img_size, mean/std
    extra = {"format": "segformer_tao.huggingface/1", "backbone": name, "palette": meta.palette,
             "img_size": meta.img_size, "source_checkpoint": os.path.basename(checkpoint)}
    parent = os.path.dirname(os.path.abspath(folder))
    io.makedirs(parent)
    tmp = os.path.join(parent, f".{os.path.basename(folder)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp)
    try:
        diff = _write_files(tmp, model, info, extra, checkpoint)
        try:
            os.rename(tmp, folder)  # replaces an empty folder; a folder filled meanwhile fails (ENOTEMPTY)
        except OSError as e:
            raise UserError(f"export.huggingface_dir='{folder}' cannot be created ({e.strerror}); it may have been "
                            "filled while exporting. Choose a new folder.") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if diff is not None:
        log.info("transformers vs segformer_tao: max abs logit difference %.3g (limit %g)", diff, PARITY_ATOL)
    log.info("note: preprocessor_config.json cannot express %s", NOT_EXPRESSIBLE)
    log.info("Hugging Face folder written to %s (plain files, not encrypted; transformers reads them as they are): "
             "%s", folder, ", ".join(FILES.values()))
    metrics = {"hf_max_abs_diff": diff, "num_labels": meta.num_classes}
    return {"metrics": metrics, "artifacts": {k: f"{folder}/{v}" for k, v in FILES.items()}}
