"""`segformer gen_trt_engine`: ONNX -> serialized TensorRT engine + <engine>.json (I/O, build settings, version).

Needs TensorRT 10/11 and a CUDA GPU (NotAvailableError, exit 2, otherwise). int8 comes from a Q/DQ ONNX made by
`segformer quantize`; TensorRT 10 can also calibrate a float ONNX with the legacy entropy calibrator from
gen_trt_engine.tensorrt.calibration.cal_image_dir.
"""

from __future__ import annotations

import logging
import os

from segformer_tao import io
from segformer_tao.actions.export import check_writable
from segformer_tao.deploy import tensorrt, tensorrt_build
from segformer_tao.deploy.calibration import calibration_batches
from segformer_tao.deploy.onnx_io import graph_meta, validate_io
from segformer_tao.deploy.onnxruntime import make_session, read_embedded_meta
from segformer_tao.deploy.runtime import settle
from segformer_tao.errors import UserError
from segformer_tao.model.meta import ModelMeta

log = logging.getLogger(__name__)


def default_engine_path(results_dir: str, onnx_file: str) -> str:
    """<results_dir>/<onnx stem>.engine (TAO's create_engine_file)."""
    stem = os.path.splitext(os.path.basename(str(onnx_file)))[0] or "model"
    return f"{str(results_dir).rstrip('/')}/{stem}.engine"


def plan(cfg) -> tuple[bytes, tensorrt_build.BuildSettings, ModelMeta, str]:
    """Everything decided before TensorRT is touched: (onnx bytes, settings, the model's decided meta, engine
    path). The profile's H/W and calibration follow the ONNX's own img_size and mean/std (:func:`settle`)."""
    gen = cfg.gen_trt_engine
    if not gen.onnx_file or not io.exists(gen.onnx_file):
        raise UserError(f"gen_trt_engine.onnx_file='{gen.onnx_file}' does not exist. Export one with `segformer "
                        "export` (or `segformer quantize` for INT8), or use parent_job=<export results dir>.")
    onnx_bytes = io.read_bytes(gen.onnx_file)
    session = make_session(onnx_bytes, threads=1, source=str(gen.onnx_file))
    source = f"gen_trt_engine.onnx_file='{gen.onnx_file}'"
    meta = graph_meta(read_embedded_meta(session), validate_io(session, source=source), source)
    meta = settle(cfg, meta, source).meta
    settings = tensorrt_build.settings_from_config(gen, session.get_inputs()[0].shape, int(meta.img_size))
    engine_path = gen.trt_engine or default_engine_path(gen.results_dir, gen.onnx_file)
    return onnx_bytes, settings, meta, engine_path


def run(cfg) -> dict:
    """Build the engine; returns the engine path, its JSON and the build settings."""
    onnx_bytes, settings, meta, engine_path = plan(cfg)
    check_writable(engine_path, "gen_trt_engine.trt_engine")
    calibration = None
    legacy_int8 = settings.data_type == "int8" and not tensorrt_build.has_qdq(onnx_bytes)
    if legacy_int8 and settings.cal_image_dirs:  # read (and checked) before TensorRT is needed
        batch, _, size, _ = tensorrt_build.calibration_shape(settings.profile, settings.cal_batch_size)
        calibration = calibration_batches(
            settings.cal_image_dirs, img_size=size, mean=meta.mean, std=meta.std, batch_size=batch,
            max_batches=settings.cal_batches, key="gen_trt_engine.tensorrt.calibration.cal_image_dir", require_all=True)
    engine_bytes, info = tensorrt_build.build_engine(onnx_bytes, settings, calibration)
    info["onnx_file"] = cfg.gen_trt_engine.onnx_file
    info["model_meta"] = meta.to_dict()
    json_path = tensorrt.write_engine(engine_path, engine_bytes, info)
    log.info("TensorRT %s engine (%s) written to %s", info["tensorrt_version"], settings.data_type, engine_path)
    return {"metrics": {"engine_bytes": len(engine_bytes)},
            "artifacts": {"trt_engine": engine_path, "engine_json": json_path}}
