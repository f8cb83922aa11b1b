"""TensorRT 10/11 runtime: run a serialized SegFormer engine with torch CUDA tensors as buffers (no pycuda).

Also the pieces the builder (``segformer_tao.deploy.tensorrt_build``) shares: ``require_tensorrt`` and
``engine_io`` (the I/O facts written to engine.json).

An engine is executable code (TensorRT runs what it holds, plugins included, when it deserializes it), so
:func:`check_engine_trusted` runs before TensorRT is imported: the engine's sha256 must equal the one its build
recorded (``<engine>.json`` and the job.json of the gen_trt_engine job), unless the user says the file is trusted
(``evaluate.trust_engine`` / ``inference.trust_engine``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import torch

from segformer_tao import io
from segformer_tao.deploy.base import Runtime
from segformer_tao.errors import NotAvailableError, UserError
from segformer_tao.model.meta import ModelMeta

log = logging.getLogger("segformer_tao")


def require_tensorrt():
    """Import tensorrt and check a CUDA GPU is visible; NotAvailableError (exit 2) otherwise."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise NotAvailableError("TensorRT is not installed: gen_trt_engine and trt_engine evaluate/inference need a "
                                "CUDA GPU machine with `pip install tensorrt` (10.x or 11.x). On CPU use "
                                "ONNX Runtime instead (evaluate.onnx_file / inference.onnx_file).") from e
    if not torch.cuda.is_available():
        raise NotAvailableError("TensorRT needs a CUDA GPU and none is visible (torch.cuda.is_available() is "
                                "False). Run on a GPU machine, or use ONNX Runtime (evaluate.onnx_file) on CPU.")
    return trt


def engine_records(engine_file: str, job_dirs: list[str] | tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(where, sha256) of every build record of ``engine_file``: its ``<engine>.json`` and each job.json (in the
    engine's folder and in ``job_dirs``, e.g. parent_job) whose artifacts name this file."""
    records = []
    sidecar = f"{engine_file}.json"
    if io.exists(sidecar):
        try:
            recorded = json.loads(io.read_text(sidecar)).get("sha256")
        except (ValueError, UnicodeDecodeError, AttributeError):
            recorded = None
        if isinstance(recorded, str):
            records.append((sidecar, recorded))
    if io.is_remote(engine_file):
        return records
    target = os.path.realpath(engine_file)
    for folder in dict.fromkeys([os.path.dirname(target), *(os.path.abspath(str(d)) for d in job_dirs if d)]):
        job_file = os.path.join(folder, "job.json")
        try:
            with open(job_file, encoding="utf-8") as f:
                artifacts = json.load(f).get("artifacts") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for art in artifacts.values() if isinstance(artifacts, dict) else ():
            if (isinstance(art, dict) and isinstance(art.get("sha256"), str) and art.get("path")
                    and os.path.realpath(str(art["path"])) == target):
                records.append((job_file, art["sha256"]))
    return records


def _engine_fix(trust_key: str) -> str:
    return (f"Rebuild it with `segformer gen_trt_engine` (gen_trt_engine.onnx_file=<the ONNX>), or, if you trust "
            f"this file and where it came from, set {trust_key}=true.")


def check_engine_trusted(engine_file: str, data: bytes, *, trust_key: str = "evaluate.trust_engine",
                         trusted: bool = False, job_dirs: list[str] | tuple[str, ...] = ()) -> str:
    """Refuse to load an engine that `segformer gen_trt_engine` did not build: the sha256 of ``data`` (the file's
    bytes, exactly as they will be deserialized) must equal every build record of :func:`engine_records`.
    ``trusted`` (the ``trust_key`` option) skips the check with a warning. Needs no TensorRT; returns the sha256."""
    actual = hashlib.sha256(data).hexdigest()
    if trusted:
        log.warning("warning: %s=true: loading TensorRT engine '%s' (sha256 %s) without checking it against a "
                    "build record", trust_key, engine_file, actual)
        return actual
    records = engine_records(engine_file, job_dirs)
    if not records:
        raise UserError(f"TensorRT engine '{engine_file}' has no build record: no sha256 in '{engine_file}.json' "
                        f"nor in a job.json naming it (its sha256 is {actual}). An engine is executable code, so "
                        "segformer only loads engines whose hash their gen_trt_engine job recorded. "
                        + _engine_fix(trust_key))
    for where, expected in records:
        if expected != actual:
            raise UserError(f"TensorRT engine '{engine_file}' is not the file its build recorded: its sha256 is "
                            f"{actual}, but '{where}' records {expected}. It was replaced or changed after "
                            "gen_trt_engine wrote it. " + _engine_fix(trust_key))
    return actual


def _deserialize(trt, engine_bytes: bytes, logger):
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise UserError("TensorRT cannot deserialize the engine: it was built with another TensorRT version or GPU. "
                        "Rebuild it with `segformer gen_trt_engine` on this machine.")
    return engine


# TensorRT DataType member names -> numpy's (bfloat16/float8 as ml_dtypes and torch spell them).
NUMPY_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                     "INT64": "int64", "UINT8": "uint8", "BOOL": "bool", "FP8": "float8_e4m3fn", "INT4": "int4"}


def dtype_name(dtype) -> str:
    """numpy's name for a TensorRT DataType (``trt.float32`` -> "float32")."""
    member = str(dtype).split(".")[-1]
    return NUMPY_DTYPE_NAMES.get(member, member.lower())


def engine_io(trt, engine_or_bytes, logger=None) -> list[dict]:
    """Names, modes, shapes (-1 = dynamic), dtypes and profile-0 ranges of an engine's I/O tensors."""
    engine = engine_or_bytes
    if isinstance(engine_or_bytes, bytes | bytearray):
        engine = _deserialize(trt, bytes(engine_or_bytes), logger or trt.Logger(trt.Logger.WARNING))
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry = {"name": name, "mode": "input" if is_input else "output", "shape": list(engine.get_tensor_shape(name)),
                 "dtype": dtype_name(engine.get_tensor_dtype(name))}
        if is_input:
            entry["profile"] = [list(s) for s in engine.get_tensor_profile_shape(name, 0)]
        tensors.append(entry)
    return tensors


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


class TrtRuntime(Runtime):
    """Runs a serialized SegFormer engine; buffers are torch CUDA tensors, execution on a torch CUDA stream.

    ``cfg`` (what ``open_runtime`` passes) supplies dataset.segment.num_classes and the runtime meta.
    """

    name = "tensorrt"

    def __init__(self, engine_file: str, *, num_classes: int | None = None, device: int = 0, trusted: bool = False,
                 trust_key: str = "evaluate.trust_engine", parent_job: str | None = None):
        if not io.exists(engine_file):
            raise UserError(f"TensorRT engine '{engine_file}' does not exist. Check evaluate.trt_engine / "
                            "inference.trt_engine, or build one with `segformer gen_trt_engine`.")
        engine_bytes = io.read_bytes(engine_file)  # checked, then deserialized: the very same bytes
        check_engine_trusted(engine_file, engine_bytes, trust_key=trust_key, trusted=trusted,
                             job_dirs=[str(parent_job)] if parent_job else [])
        trt = require_tensorrt()
        self.trt = trt
        self.path = engine_file
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.engine = _deserialize(trt, engine_bytes, trt.Logger(trt.Logger.WARNING))
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        tensors = {t["name"]: t for t in engine_io(trt, self.engine)}
        if set(tensors) != {"input", "output"}:
            raise UserError(f"Engine '{engine_file}' has tensors {sorted(tensors)}; a SegFormer engine has 'input' "
                            "and 'output'. Build it from `segformer export`'s ONNX.")
        classes = int(tensors["output"]["shape"][1])
        if num_classes is not None and classes != num_classes:
            raise UserError(f"Engine '{engine_file}' outputs {classes} classes but {num_classes} were expected; use "
                            "the engine of a model trained on these classes.")
        profile = tensors["input"]["profile"]  # [min, opt, max] (N, C, H, W)
        self.io = list(tensors.values())
        self.min_batch, self.max_batch = int(profile[0][0]), int(profile[2][0])
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype("input"))
        self.output_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype("output"))
        info = f"{engine_file}.json"
        embedded = json.loads(io.read_text(info)).get("model_meta", {}) if io.exists(info) else {}
        fixed = tuple(profile[0][2:]) if profile[0][2:] == profile[2][2:] else None
        self.meta = ModelMeta.from_dict(embedded, num_classes=classes, input_size=fixed)
        self.profile_hw = (tuple(profile[0][2:]), tuple(profile[2][2:]))

    def size_problem(self, size: int) -> str | None:
        (hmin, wmin), (hmax, wmax) = self.profile_hw
        if hmin <= size <= hmax and wmin <= size <= wmax:
            return None
        return (f"the engine's optimization profile takes {hmin}..{hmax} x {wmin}..{wmax} pixels (rebuild it from an "
                f"ONNX exported at {size}x{size}, or with a profile that includes it)")

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) float32 normalized -> logits (N, C, h, w) float32 on the CPU.

        Batches are split to the engine's max batch and a chunk below its min batch (a fixed-batch engine, the
        last evaluate batch, a sliding-window crop) is zero-padded up to it and the result sliced back (as TAO).
        """
        chunks = pad_to_profile(images, self.min_batch, self.max_batch)
        return torch.cat([self._run(chunk)[:real] for chunk, real in chunks])

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            x = images.to(self.device, self.input_dtype, non_blocking=True).contiguous()
            if not self.context.set_input_shape("input", tuple(x.shape)):
                raise UserError(f"Input shape {tuple(x.shape)} is outside the engine's optimization profile "
                                f"{self.io[0].get('profile')}; rebuild with matching min/max batch sizes.")
            out = torch.empty(tuple(self.context.get_tensor_shape("output")), dtype=self.output_dtype,
                              device=self.device)
            self.context.set_tensor_address("input", x.data_ptr())
            self.context.set_tensor_address("output", out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return out.float().cpu()


def pad_to_profile(images: torch.Tensor, min_batch: int, max_batch: int) -> list[tuple[torch.Tensor, int]]:
    """(chunk, real images in it): chunks of at most ``max_batch`` images, zero-padded at the end to at least
    ``min_batch``; the real images come first, so ``output[:real]`` is theirs."""
    chunks = []
    for chunk in images.split(max_batch):
        real = len(chunk)
        if real < min_batch:
            chunk = torch.cat([chunk, chunk.new_zeros((min_batch - real, *chunk.shape[1:]))])
        chunks.append((chunk, real))
    return chunks


def write_engine(engine_path: str, engine_bytes: bytes, info: dict) -> str:
    """Write the engine and ``<engine>.json`` beside it atomically, the JSON with the sha256 of the engine file as
    written (the build record :func:`check_engine_trusted` compares with); returns the JSON path."""
    io.write_bytes(engine_path, engine_bytes)
    json_path = f"{engine_path}.json"
    io.write_text(json_path, json.dumps({**info, "sha256": io.sha256(engine_path)}, indent=2, default=str) + "\n")
    return json_path
