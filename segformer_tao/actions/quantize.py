"""`segformer quantize`: INT8 post-training quantization with calibration images, plus an INT8 vs FP32 report.

quantize.model_path is an ONNX from `segformer export` or one of our .pth checkpoints (exported first, dynamic
batch at img_size). Backends: onnxruntime (default: static Q/DQ, per-channel weights, CPU), modelopt.onnx,
modelopt.pytorch, torchao (when installed). The Q/DQ ONNX builds in TensorRT with explicit quantization
(`segformer gen_trt_engine gen_trt_engine.onnx_file=<it> gen_trt_engine.tensorrt.data_type=int8`).
"""

from __future__ import annotations

import logging
import os
import time

import onnx
import torch

from segformer_tao import io
from segformer_tao.actions.export import check_writable, export_checkpoint, load_trained_model, settle_checkpoint
from segformer_tao.deploy import onnx_export, quant_backends
from segformer_tao.deploy.calibration import calibration_batches
from segformer_tao.deploy.onnx_io import graph_meta, validate_io
from segformer_tao.deploy.onnxruntime import OrtRuntime, make_session, read_embedded_meta
from segformer_tao.deploy.quantization import (
    QuantizeSettings,
    float_compute_nodes,
    nodes_to_exclude,
    qdq_summary,
    quantize_onnx,
)
from segformer_tao.deploy.runtime import settle
from segformer_tao.errors import UserError
from segformer_tao.model.meta import ModelMeta

log = logging.getLogger(__name__)

FLOAT_DTYPES = ("native", "fp32", "float32", "float", "none")
# Every backend's quantize_report.json has these fields (bench/quant_backends.py and the tests read them):
# format, backend, mode, algorithm, runtime, split, calibration_images, quantized_layers, kept_float,
# fp32/int8 {mIoU, overall_accuracy, images, images_per_s, split, file, bytes}, miou_drop_points, speedup,
# size_ratio; plus the backend's own details (qdq for ONNX Q/DQ, fake_quantize_ops for nncf, torchao for torchao).
REPORT_FORMAT = "segformer_tao.quantize_report/2"


def _skip_names(q) -> list[str]:
    """quantize.skip_names plus quantize.layers entries whose weights or activations stay float."""
    names = [str(n) for n in (q.skip_names or [])]
    for layer in q.layers or []:
        dtypes = {str((layer.get(part) or {}).get("dtype") or "int8").lower() for part in ("weights", "activations")}
        unsupported = dtypes - set(FLOAT_DTYPES) - {"int8"}
        if unsupported and q.backend == "onnxruntime":
            raise UserError(f"quantize.layers entry '{layer.module_name}' asks for {sorted(unsupported)}; backend "
                            "onnxruntime quantizes to int8 only (use dtype int8 or native).")
        if dtypes & set(FLOAT_DTYPES):
            names.append(str(layer.module_name))
    return names


def _float_model(cfg, out_dir: str) -> tuple[bytes, ModelMeta, torch.nn.Module | None, str, str]:
    """(FP32 ONNX bytes, decided meta, torch model or None, file stem, FP32 ONNX path) from quantize.model_path: the
    calibration images and the report run at the model's img_size and mean/std (:func:`settle`)."""
    path = cfg.quantize.model_path
    if not path or not io.exists(path):
        raise UserError(f"quantize.model_path='{path}' does not exist. Point it at an ONNX from `segformer export` "
                        "or a .pth checkpoint from `segformer train` (or use parent_job=<export/train results dir>).")
    stem = os.path.splitext(os.path.basename(str(path)))[0]
    if str(path).endswith(".onnx"):
        model_bytes = io.read_bytes(path)
        session = make_session(model_bytes, threads=1, source=str(path))
        source = f"quantize.model_path='{path}'"
        meta = graph_meta(read_embedded_meta(session), validate_io(session, source=source), source)
        return model_bytes, settle(cfg, meta, source).meta, None, stem, str(path)
    model, meta = load_trained_model(path, cfg.encryption_key, "quantize.model_path",
                                     strict=bool(cfg.get("encryption_strict")))
    meta = settle_checkpoint(cfg, meta, "quantize.model_path", str(path))
    settings = onnx_export.ExportSettings(height=meta.img_size, width=meta.img_size, batch_size=-1, opset=17)
    model_bytes, diff = export_checkpoint(model, meta, settings, simplify=True)
    if diff > onnx_export.PARITY_ATOL:
        raise UserError(f"Exporting '{path}' to ONNX gave a {diff:.3g} difference from PyTorch; run `segformer "
                        "export` with export.simplify=false and quantize that ONNX instead.")
    fp32_path = f"{out_dir}/{stem}_fp32.onnx"
    onnx_export.save(fp32_path, model_bytes)
    log.info("Exported %s to %s (max abs diff vs PyTorch %.2g) for quantization", path, fp32_path, diff)
    return model_bytes, meta, model, stem, fp32_path


class _Timed:
    """A runtime wrapper that adds up the seconds spent in predict (model time, no data loading)."""

    def __init__(self, runtime):
        self.runtime, self.meta, self.name, self.seconds = runtime, runtime.meta, runtime.name, 0.0

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.runtime.predict(images)
        self.seconds += time.perf_counter() - start
        return out


def disk_bytes(path: str) -> int:
    """Size on disk of a model file (an OpenVINO IR .xml counts with its .bin)."""
    paths = [path] + ([os.path.splitext(path)[0] + ".bin"] if path.endswith(".xml") else [])
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def _report(cfg, fp32_path: str, int8_path: str, open_runtime=OrtRuntime, fp32_bytes: int | None = None) -> dict:
    """The fields every backend's quantize_report.json shares: mIoU and images/s of FP32 vs INT8, both run by
    ``open_runtime(path)`` (evaluate's code path, the same runtime for both) on the eval split, and their
    size on disk (``fp32_bytes`` when the FP32 reference is not a file of its own)."""
    from segformer_tao.actions.evaluate import evaluate_runtime

    results, label = {}, None
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        timed = _Timed(open_runtime(path))
        label = getattr(timed.runtime, "label", timed.name)
        size = int(cfg.dataset.segment.img_size)  # settled from the model file before calibration
        timed.runtime.predict(torch.zeros(1, 3, size, size))  # warm-up (first-call setup) outside the timing
        scores = evaluate_runtime(cfg, timed, None, int(cfg.evaluate.batch_size))
        results[name] = {"mIoU": scores["mIoU"], "overall_accuracy": scores["overall_accuracy"],
                         "images": scores["images"], "images_per_s": scores["images"] / max(timed.seconds, 1e-9),
                         "split": str(cfg.dataset.segment.test_split), "file": path,
                         "bytes": disk_bytes(path) if name == "int8" or fp32_bytes is None else fp32_bytes}
    f, i = results["fp32"], results["int8"]
    results["runtime"] = label
    results["split"] = str(cfg.dataset.segment.test_split)
    results["miou_drop_points"] = 100.0 * ((f["mIoU"] or 0.0) - (i["mIoU"] or 0.0))
    results["speedup"] = (i["images_per_s"] / f["images_per_s"]) if f["images_per_s"] and i["images_per_s"] else None
    results["size_ratio"] = i["bytes"] / f["bytes"] if f["bytes"] else None
    return results


@torch.no_grad()
def run(cfg) -> dict:
    """Quantize quantize.model_path to INT8; writes <stem>_int8.onnx (or .pth for torchao) + quantize_report.json."""
    q, seg = cfg.quantize, cfg.dataset.segment
    out_dir = str(q.results_dir).rstrip("/")
    kwargs = dict(q.backend_kwargs or {})
    if q.mode == "weight_only_ptq" and q.backend != "torchao":
        raise UserError(f"quantize.mode=weight_only_ptq is not offered by quantize.backend={q.backend}, which "
                        "quantizes weights and activations for TensorRT; use quantize.mode=static_ptq (or "
                        "quantize.backend=torchao for weight-only PyTorch INT8).")
    quant_backends.require_backend(str(q.backend))
    if q.backend == "nncf" and q.algorithm not in ("minmax", "max"):
        raise UserError(f"quantize.algorithm={q.algorithm} is not offered by quantize.backend=nncf, which sets "
                        "activation ranges with NNCF's own min/max estimators (plus SmoothQuant and bias "
                        "correction); use quantize.algorithm=minmax.")
    check_writable(f"{out_dir}/quantize_report.json", "quantize.results_dir")
    if q.backend == "torchao":
        return _run_torchao(cfg, out_dir, _skip_names(q))
    fp32_bytes, meta, model, stem, fp32_path = _float_model(cfg, out_dir)
    size, mean, std = int(meta.img_size), list(meta.mean), list(meta.std)
    batch = int(kwargs.pop("calibration_batch_size", 8))
    max_images = int(kwargs.pop("max_calibration_images", 256))
    batches = calibration_batches(seg.quant_calibration_dataset.images_dir, img_size=size, mean=mean, std=std,
                                  batch_size=min(batch, max_images), max_batches=max(1, max_images // batch),
                                  key="dataset.segment.quant_calibration_dataset.images_dir", drop_remainder=False)
    settings = QuantizeSettings(algorithm=str(q.algorithm), skip_names=_skip_names(q),
                                target=str(kwargs.pop("target", "tensorrt")),
                                percentile=float(kwargs.pop("percentile", 99.999)), extra=kwargs)
    artifacts: dict[str, str] = {}
    if q.backend == "nncf":
        return _run_nncf(cfg, fp32_path, stem, batches, settings, out_dir)
    if q.backend == "onnxruntime":
        int8_bytes = quantize_onnx(fp32_bytes, batches, settings)
    elif q.backend == "modelopt.onnx":
        exclude = nodes_to_exclude(onnx.load_from_string(fp32_bytes), settings)
        int8_bytes = quant_backends.modelopt_onnx(fp32_bytes, batches, algorithm=settings.algorithm, exclude=exclude,
                                                  device=str(q.device))
    else:  # modelopt.pytorch: fake-quant the torch model, then export its Q/DQ graph
        if model is None:
            raise UserError("quantize.backend=modelopt.pytorch needs a .pth checkpoint in quantize.model_path.")
        quantized = quant_backends.modelopt_pytorch(model, batches, algorithm=settings.algorithm,
                                                    skip_names=list(settings.skip_names), device=str(q.device))
        export_settings = onnx_export.ExportSettings(height=size, width=size, batch_size=-1, opset=17)
        int8_bytes = onnx_export.export_onnx_bytes(quantized, export_settings)
    onnx_export.check_model(int8_bytes)
    artifacts["onnx_file"] = f"{out_dir}/{stem}_int8.onnx"
    onnx_export.save(artifacts["onnx_file"], int8_bytes)
    qdq = qdq_summary(int8_bytes)
    report = {"format": REPORT_FORMAT, "backend": q.backend, "mode": str(q.mode), "algorithm": settings.algorithm,
              "target": settings.target, "calibration_images": sum(int(b.shape[0]) for b in batches),
              "quantized_layers": qdq["quantized_nodes"], "kept_float": float_compute_nodes(int8_bytes),
              "qdq": qdq, **_report(cfg, fp32_path, artifacts["onnx_file"])}
    return _finish(report, artifacts, out_dir)


def _finish(report: dict, artifacts: dict, out_dir: str) -> dict:
    """Write quantize_report.json, print the FP32 vs INT8 line, return the action's metrics and artifacts."""
    artifacts["report"] = f"{out_dir}/quantize_report.json"
    io.write_json(artifacts["report"], report)
    f32, i8 = report["fp32"], report["int8"]
    print(f"FP32 mIoU {f32['mIoU']:.4f} at {f32['images_per_s']:.1f} img/s | INT8 mIoU {i8['mIoU']:.4f} at "
          f"{i8['images_per_s']:.1f} img/s | drop {report['miou_drop_points']:.2f} points, speedup "
          f"{report['speedup']:.2f}x")
    return {"metrics": {"fp32_mIoU": f32["mIoU"], "int8_mIoU": i8["mIoU"], "miou_drop_points":
                        report["miou_drop_points"], "speedup": report["speedup"]}, "artifacts": artifacts}


def _run_nncf(cfg, fp32_path: str, stem: str, batches: list, settings: QuantizeSettings, out_dir: str) -> dict:
    """quantize.backend=nncf: NNCF INT8 of the FP32 model as an OpenVINO IR (<stem>_int8.xml/.bin), reported
    against the FP32 model, both run by OpenVINO in f32 (INT8 ops in INT8)."""
    from segformer_tao.deploy.openvino import OpenVinoRuntime, read_model, save_ir

    model, meta = read_model(fp32_path, "quantize.model_path")
    kept = quant_backends.openvino_float_ops(model, classifier=settings.keep_classifier_float,
                                             attention=settings.keep_attention_float,
                                             skip_names=list(settings.skip_names))
    int8 = quant_backends.nncf_int8(model, batches, ignored=kept)
    xml, bin_ = save_ir(int8, f"{out_dir}/{stem}_int8.xml", meta)
    artifacts = {"openvino_xml": xml, "openvino_bin": bin_}

    def open_f32(path: str) -> OpenVinoRuntime:
        return OpenVinoRuntime(path, precision="f32", key="quantize.model_path")

    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in int8.get_ops())
    report = {"format": REPORT_FORMAT, "backend": "nncf", "mode": "static_ptq", "algorithm": settings.algorithm,
              "calibration_images": sum(int(b.shape[0]) for b in batches),
              "quantized_layers": sum(_ov_quantized(op) for op in int8.get_ordered_ops()),
              "kept_float": kept + ["LayerNorm, Softmax, GELU and residual Adds (NNCF transformer preset)"],
              "fake_quantize_ops": fake_quantize,
              "note": "INT8 OpenVINO IR only: NNCF's Q/DQ ONNX of this model is not readable by OpenVINO, and "
                      "quantize.backend=onnxruntime writes the Q/DQ ONNX for TensorRT and ONNX Runtime.",
              **_report(cfg, fp32_path, xml, open_f32)}
    return _finish(report, artifacts, out_dir)


def _ov_quantized(op) -> bool:
    """A Convolution/MatMul of an NNCF model with a FakeQuantize on one of its inputs (directly or via Convert)."""
    if op.get_type_name() not in ("Convolution", "MatMul"):
        return False
    for value in op.input_values():
        node = value.get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose") and node.get_input_size():
            node = node.input_value(0).get_node()
        if node.get_type_name() == "FakeQuantize":
            return True
    return False


def _run_torchao(cfg, out_dir: str, skip_names: list[str]) -> dict:
    """quantize.backend=torchao: torchao INT8 of the .pth's Linear layers (weight-only for weight_only_ptq, int8
    dynamic activations + int8 weights for static_ptq), saved as our checkpoint (<stem>_int8_torchao.pth,
    encrypted with encryption_key like every checkpoint) and reported against the FP32 checkpoint, both run by
    evaluate's PyTorch runtime. torchao needs no calibration images."""
    import copy

    from segformer_tao.deploy.torch_runtime import TorchRuntime
    from segformer_tao.engine.checkpoint import load_checkpoint, save_checkpoint
    from segformer_tao.model import torchao_int8

    q = cfg.quantize
    path = str(q.model_path or "")
    if path.endswith(".onnx"):
        raise UserError("quantize.backend=torchao quantizes a PyTorch model: set quantize.model_path to a .pth "
                        "checkpoint from `segformer train` (or parent_job=<train results dir>), not an ONNX.")
    torchao_int8.require_torchao("quantize.backend=torchao")
    if str(q.mode) == "static_ptq":  # torchao has no static-activation INT8 for eager CPU/CUDA
        log.info("quantize.backend=torchao with quantize.mode=static_ptq: int8 weights and int8 activations "
                 "quantized per token at run time (torchao's dynamic form; it has no static-activation INT8), "
                 "so no calibration images are used.")
    strict = bool(cfg.get("encryption_strict"))
    model, meta = load_trained_model(path, cfg.encryption_key, "quantize.model_path", strict=strict)
    settle_checkpoint(cfg, meta, "quantize.model_path", path)
    source = load_checkpoint(path, cfg.encryption_key, own=True, strict=strict)
    fp32_state = {f"model.{k}": v for k, v in copy.deepcopy(model).state_dict().items()}
    record = torchao_int8.quantize(model, str(q.mode), skip_names)
    stem = os.path.splitext(os.path.basename(path))[0]
    int8_path = f"{out_dir}/{stem}_int8_torchao.pth"
    payload = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "meta": meta.to_dict(),
               "config": source.get("config") or {}, "quantization": record}
    save_checkpoint(int8_path, payload, cfg.encryption_key)
    fp32_bytes = _serialized_bytes({**payload, "state_dict": fp32_state, "quantization": None})

    def open_torch(p: str) -> TorchRuntime:
        return TorchRuntime(p, cfg.encryption_key)

    report = {"format": REPORT_FORMAT, "backend": "torchao", "mode": str(q.mode), "algorithm": None,
              "calibration_images": 0, "quantized_layers": len(record["quantized_layers"]),
              "kept_float": record["kept_float"],
              "torchao": {k: record[k] for k in ("torchao_version", "torchao_config", "quantized_layers")},
              "note": "torchao needs no calibration (weights per row; static_ptq quantizes activations per token at "
                      "run time); fp32.bytes is the same checkpoint layout with float weights (no optimizer state)",
              **_report(cfg, path, int8_path, open_torch, fp32_bytes=fp32_bytes)}
    return _finish(report, {"quantized_model": int8_path}, out_dir)


def _serialized_bytes(payload: dict) -> int:
    import io as _io

    buf = _io.BytesIO()
    torch.save(payload, buf)
    return len(buf.getvalue())
