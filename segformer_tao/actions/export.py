"""`segformer export`: checkpoint -> ONNX (opset 17, input `input`, output `output`), checked against PyTorch.

Output shape: (N, num_classes, H/4, W/4) logits, as TAO's SegFormer export (export.full_resolution_output=true
gives (N, num_classes, H, W)). The batch is dynamic with export.batch_size=-1 (TAO's default), height/width
too with export.dynamic_hw=true. The graph is always traced on the CPU (same graph, no GPU needed).
"""

from __future__ import annotations

import json
import logging
import os

import onnx
import torch

from segformer_tao import io
from segformer_tao.deploy import onnx_export
from segformer_tao.deploy.runtime import settle
from segformer_tao.errors import UserError
from segformer_tao.model import meta as model_meta
from segformer_tao.model.backbones.vit import VIT_ARCHS, img_size_problem
from segformer_tao.model.meta import META_KEY, ModelMeta

log = logging.getLogger(__name__)


def default_onnx_path(results_dir: str, checkpoint: str) -> str:
    """<results_dir>/<checkpoint file stem>.onnx (TAO's create_onnx_file)."""
    stem = os.path.splitext(os.path.basename(str(checkpoint).rstrip("/")))[0] or "model"
    return f"{str(results_dir).rstrip('/')}/{stem}.onnx"


def check_writable(path: str, key: str) -> None:
    """Fail before any work when the output file's folder cannot be written (local paths)."""
    if io.is_remote(path):
        return
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        example = os.path.join(path, "model.engine" if key.endswith("trt_engine") else "model.onnx")
        raise UserError(f"{key}='{path}' is a folder; it must name the output file, e.g. {key}={example} (or "
                        "leave the key unset to write into the action's results_dir).")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"Cannot write {key}='{path}': folder '{folder}' cannot be created ({e.strerror or e}). "
                        "Choose a writable location (or leave the key unset to write into the action's "
                        "results_dir).") from e
    if not os.access(folder, os.W_OK):
        raise UserError(f"Cannot write {key}='{path}': directory '{folder}' is not writable. Choose a writable "
                        "location (or leave the key unset to write into the action's results_dir).")


def load_trained_model(checkpoint: str, encryption_key: str | None, key: str, strict: bool = False
                       ) -> tuple[torch.nn.Module, ModelMeta]:
    """(model in eval mode on CPU, checkpoint meta) from one of our checkpoints; clear errors otherwise."""
    from segformer_tao.engine.checkpoint import load_model_from_checkpoint

    if not checkpoint or not io.exists(checkpoint):
        raise UserError(f"{key}='{checkpoint}' does not exist. Point it at a checkpoint written by `segformer train` "
                        "(e.g. results/train/segformer_model_latest.pth) or use parent_job=<train results dir>.")
    model, meta = load_model_from_checkpoint(checkpoint, encryption_key, map_location="cpu", strict=strict)
    return model.float().eval(), meta


def settle_checkpoint(cfg, meta: ModelMeta, key: str, path: str) -> ModelMeta:
    """The facts a checkpoint is exported with (:func:`segformer_tao.deploy.runtime.settle`: the model's own
    img_size, mean/std and classes unless the user set others that apply)."""
    return settle(cfg, meta, f"{key}='{path}'", model_meta.torch_size_problem(meta.backbone)).meta


def embedded_meta(meta: ModelMeta, settings: onnx_export.ExportSettings) -> dict:
    """What an ONNX consumer needs without the checkpoint: the decided model meta (classes, palette, preprocessing,
    backbone) and the export's geometry."""
    stored = {k: v for k, v in meta.to_dict().items() if k not in ("epoch", "global_step", "quantization")}
    return {
        **stored,
        "input_height": settings.height,
        "input_width": settings.width,
        "dynamic_batch": settings.batch_size == -1,
        "dynamic_hw": settings.dynamic_hw,
        "full_resolution_output": settings.full_resolution_output,
        "opset": settings.opset,
    }


def _settings(cfg, img_size: int | None = None) -> onnx_export.ExportSettings:
    """Export settings from cfg.export; an unset input_height/width is ``img_size`` (the model's, as decided by
    :func:`settle_checkpoint`)."""
    exp = cfg.export
    size = int(img_size or cfg.dataset.segment.img_size)
    if exp.format not in ("onnx", "openvino"):
        raise UserError(f"export.format={exp.format} is not supported: segformer_tao writes plain ONNX "
                        "(export.format=onnx), which TensorRT, ONNX Runtime and DeepStream read directly, ONNX "
                        "plus an OpenVINO IR (export.format=openvino), or a Hugging Face transformers folder "
                        "(export.format=huggingface).")
    if exp.format == "openvino":
        from segformer_tao.deploy.openvino import require_openvino

        require_openvino("export.format=openvino")
    if exp.input_channel != 3:
        raise UserError(f"export.input_channel={exp.input_channel}: SegFormer takes RGB images; use 3.")
    if exp.batch_size == 0 or exp.batch_size < -1:
        raise UserError(f"export.batch_size={exp.batch_size}: use -1 (dynamic batch) or a positive batch size.")
    return onnx_export.ExportSettings(
        height=int(exp.input_height or size), width=int(exp.input_width or size), channels=3,
        batch_size=int(exp.batch_size),
        dynamic_hw=bool(exp.dynamic_hw), opset=int(exp.opset_version),
        full_resolution_output=bool(exp.full_resolution_output), verbose=bool(exp.verbose))


def check_vit_geometry(backbone: str, settings: onnx_export.ExportSettings) -> None:
    """ViT-Adapter graphs hold one input size: refuse dynamic H/W and sizes the backbone cannot take."""
    if backbone not in VIT_ARCHS:
        return
    if settings.dynamic_hw:
        raise UserError(
            f"export.dynamic_hw=true is not available for model.backbone.type={backbone}: the ViT-Adapter's "
            "deformable-attention sampling grids (and DINOv3's rotary positions) are computed for one input size "
            "when the graph is traced, so other sizes would give wrong masks. Set export.dynamic_hw=false and "
            "export one ONNX per input size (export.input_height/input_width); the batch stays dynamic.")
    for key, value in (("export.input_height", settings.height), ("export.input_width", settings.width)):
        problem = img_size_problem(backbone, value)
        if problem:
            raise UserError(f"{key}={value} does not fit model.backbone.type={backbone}: {problem}.")


def export_checkpoint(model: torch.nn.Module, meta: ModelMeta, settings: onnx_export.ExportSettings,
                      simplify: bool) -> tuple[bytes, float]:
    """Trace, optionally simplify, embed metadata, check and compare; returns (onnx bytes, max |diff|)."""
    model_bytes = onnx_export.export_onnx_bytes(model, settings)
    if simplify:
        model_bytes = onnx_export.simplify(model_bytes)
    proto = onnx.load_from_string(model_bytes)
    proto.metadata_props.add(key=META_KEY, value=json.dumps(embedded_meta(meta, settings)))
    proto.producer_name = "segformer_tao"
    model_bytes = proto.SerializeToString()
    onnx_export.check_model(model_bytes)
    diff = onnx_export.max_abs_diff_vs_torch(model, model_bytes, onnx_export.parity_inputs(settings),
                                             settings.full_resolution_output)
    return model_bytes, diff


@torch.no_grad()
def run(cfg) -> dict:
    """Export cfg.export.checkpoint to ONNX; returns metrics (max_abs_diff) and artifact paths."""
    exp = cfg.export
    if exp.format == "huggingface":  # a transformers folder, not ONNX: deploy/huggingface.py
        from segformer_tao.deploy import huggingface

        folder = huggingface.output_folder(cfg)  # refused before loading anything
        model, meta = load_trained_model(exp.checkpoint, cfg.encryption_key, "export.checkpoint",
                                         strict=bool(cfg.get("encryption_strict")))
        meta = settle_checkpoint(cfg, meta, "export.checkpoint", str(exp.checkpoint))
        return huggingface.export_folder(model, meta, cfg, folder)
    _settings(cfg)  # reject bad keys before loading anything
    if exp.serialize_nvdsinfer:
        from segformer_tao.deploy.deepstream import check_batch_size

        check_batch_size(max(1, int(exp.batch_size)))
    onnx_path = exp.onnx_file or default_onnx_path(exp.results_dir, exp.checkpoint)
    check_writable(onnx_path, "export.onnx_file")
    model, meta = load_trained_model(exp.checkpoint, cfg.encryption_key, "export.checkpoint",
                                     strict=bool(cfg.get("encryption_strict")))
    meta = settle_checkpoint(cfg, meta, "export.checkpoint", str(exp.checkpoint))
    settings = _settings(cfg, meta.img_size)
    check_vit_geometry(getattr(model, "backbone_name", ""), settings)
    if (meta.extra.get("quantization") or {}).get("backend") == "torchao":
        model_bytes, diff = _export_torchao(model, meta, settings, str(exp.checkpoint))
    else:
        model_bytes, diff = export_checkpoint(model, meta, settings, bool(exp.simplify))
    shapes = [f"{tuple(x.shape)}" for x in onnx_export.parity_inputs(settings)]
    log.info("ONNX Runtime vs PyTorch: max abs logit difference %.3g (limit %g) over inputs %s", diff,
             onnx_export.PARITY_ATOL, ", ".join(shapes))
    if diff > onnx_export.PARITY_ATOL:
        raise UserError(f"The exported ONNX differs from PyTorch by {diff:.3g} (> {onnx_export.PARITY_ATOL:g}) in "
                        "fp32. Retry with export.simplify=false and export.opset_version=17; if it persists, "
                        "report it with the checkpoint's backbone.")
    onnx_export.save(onnx_path, model_bytes)
    artifacts = {"onnx_file": onnx_path}
    if exp.serialize_nvdsinfer:
        from segformer_tao.deploy.deepstream import write_deepstream_files

        artifacts.update(write_deepstream_files(
            onnx_path, model, class_names=meta.class_names, height=settings.height, width=settings.width,
            mean=meta.mean, std=meta.std, batch_size=max(1, settings.batch_size), opset=settings.opset,
            data_type=str(cfg.gen_trt_engine.tensorrt.data_type).lower(), gpu_id=int(exp.gpu_id)))
    log.info("ONNX written to %s", onnx_path)
    metrics = {"max_abs_diff": diff, "opset": settings.opset}
    if exp.format == "openvino":
        metrics["openvino_max_abs_diff"] = _write_ir(model, onnx_path, embedded_meta(meta, settings), settings,
                                                     artifacts)
    return {"metrics": metrics, "artifacts": artifacts}


def _export_torchao(model: torch.nn.Module, meta: ModelMeta, settings: onnx_export.ExportSettings,
                    checkpoint: str) -> tuple[bytes, float]:
    """ONNX of a torchao INT8 checkpoint where torchao's tensors trace: weight-only INT8 traces to Gemm/MatMul on
    the int8-rounded weights stored as float (ONNX has no weight-only int8 op); int8 dynamic activations do not."""
    mode = meta.extra["quantization"].get("mode")
    try:
        model_bytes, diff = export_checkpoint(model, meta, settings, simplify=False)
    except Exception as e:  # noqa: BLE001 - whatever torchao's tensor subclass fails with while tracing
        raise UserError(f"export.checkpoint='{checkpoint}' is a torchao INT8 checkpoint (quantize.mode={mode}) whose "
                        f"int8 activation quantization does not trace to ONNX ({type(e).__name__}); for an INT8 ONNX "
                        "export the float checkpoint and run `segformer quantize` with quantize.backend=onnxruntime, "
                        "modelopt.onnx or modelopt.pytorch.") from e
    log.warning("export.checkpoint is a torchao weight-only INT8 checkpoint: the ONNX computes what it computes, "
                "with its int8-rounded weights stored as float (FP32 size; TensorRT builds it as a float model)")
    return model_bytes, diff


def _write_ir(model: torch.nn.Module, onnx_path: str, meta: dict, settings: onnx_export.ExportSettings,
              artifacts: dict) -> float:
    """<onnx stem>.xml/.bin beside the ONNX, checked in f32 against PyTorch; returns the max |logit diff|."""
    from segformer_tao.deploy.openvino import compile_model, read_model, save_ir

    ov_model, _ = read_model(onnx_path, "export.onnx_file")
    compiled = compile_model(ov_model, "f32")
    wrapper = onnx_export.ExportWrapper(model, settings.full_resolution_output).eval()
    diff = 0.0
    for x in onnx_export.parity_inputs(settings):
        got = compiled({0: x.numpy()})[0]
        diff = max(diff, float((torch.from_numpy(got) - wrapper(x)).abs().max()))
    if diff > onnx_export.PARITY_ATOL:
        raise UserError(f"The OpenVINO IR differs from PyTorch by {diff:.3g} (> {onnx_export.PARITY_ATOL:g}) in f32. "
                        "Use the ONNX (export.format=onnx) and report it with the checkpoint's backbone.")
    xml, bin_ = save_ir(ov_model, os.path.splitext(onnx_path)[0] + ".xml", meta)
    artifacts.update({"openvino_xml": xml, "openvino_bin": bin_})
    log.info("OpenVINO IR written to %s (+ .bin), max abs logit difference vs PyTorch %.3g", xml, diff)
    return diff
