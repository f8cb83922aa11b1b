"""OpenVINO as a CPU runtime: an exported ONNX or an OpenVINO IR (.xml + .bin), in f32 or native bf16.

``OpenVinoRuntime.predict`` has the contract of every runtime (normalized float32 NCHW in, (N, C, h, w) float32
logits out on the CPU). BF16 is used only where the CPU computes it natively (AVX-512 BF16 or AMX): elsewhere
OpenVINO would emulate it slower than f32, so a bf16 request prints a note and runs f32. INT8 models are IRs
written by ``segformer quantize quantize.backend=nncf``; they run their INT8 ops as INT8 whatever the precision.
Needs the ``openvino`` extra (``pip install 'segformer_tao[openvino]'``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import sys
import tempfile
from types import SimpleNamespace
from typing import Any

import torch

from segformer_tao import hardware, io
from segformer_tao.deploy.base import Runtime
from segformer_tao.deploy.onnx_io import available_cores, graph_meta, run_in_fixed_batches, validate_io
from segformer_tao.errors import NotAvailableError, UserError
from segformer_tao.model.meta import META_KEY, from_json

log = logging.getLogger(__name__)

EXTRA = "pip install 'segformer_tao[openvino]'"
PRECISIONS = ("f32", "bf16")


def require_openvino(key: str):
    """The ``openvino`` module, or NotAvailableError (exit 2) naming ``key`` and the extra to install."""
    try:
        import openvino
    except ImportError as e:
        raise NotAvailableError(f"{key} needs OpenVINO, which is not installed: `{EXTRA}` (or use ONNX Runtime, "
                                "which is built in).") from e
    return openvino


@functools.lru_cache(maxsize=1)
def core():
    """The process's one ``openvino.Core``, kept until exit.

    OpenVINO's CPU plugin (2026.4) installs a signal stack (``sigaltstack``) of its own on the thread that loads
    it and, when that plugin is torn down, puts back the one it found. With a Core per call, two plugins torn
    down first-in-first-out leave the thread's signal stack on the first plugin's unmapped memory: the next
    caught signal on that thread (a SIGCHLD once torch's DataLoader has installed its handler; Python installs
    every handler with SA_ONSTACK) kills the process with SIGSEGV (si_code SI_KERNEL, no faulthandler output), or,
    where that address was mapped again, writes its frame over live memory (a corrupted heap). One Core: one plugin
    that is never torn down. See :func:`keep_signal_stack` for code that makes Cores of its own (NNCF)."""
    import openvino as ov

    return ov.Core()


class _Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def keep_signal_stack():
    """Put back this thread's signal stack after the block if OpenVINO code in it (NNCF makes its own Cores)
    replaced it: an OpenVINO plugin torn down later then finds another stack current and only unmaps its own,
    instead of "restoring" one that may be unmapped by then (see :func:`core`)."""
    fn = _sigaltstack()
    saved = _Stack()
    if fn is None or fn(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        now = _Stack()
        if fn(None, ctypes.byref(now)) == 0 and (now.ss_sp, now.ss_size) != (saved.ss_sp, saved.ss_size):
            fn(ctypes.byref(saved), None)


def native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX) and OpenVINO's CPU plugin uses it."""
    if not hardware.cpu_bf16_flags():
        return False
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(requested: str, key: str) -> str:
    """The precision to compile with: ``requested`` ("f32" or "bf16"), or f32 with a printed note where bf16 is
    not native (emulated bf16 is slower than f32 and less accurate)."""
    if requested not in PRECISIONS:
        raise UserError(f"{key}={requested} is not a precision OpenVINO runs here; use one of {list(PRECISIONS)}.")
    if requested == "bf16" and not native_bf16():
        on = [f for f, has in hardware.cpu_flags().items() if has]
        flags = ", ".join(on) or "none of " + "/".join(hardware.CPU_FLAGS)
        print(f"Note: {key}=bf16 needs a CPU with native BF16 (AVX-512 BF16 or AMX); this CPU has {flags}. "
              "Running f32 instead (emulated bf16 would be slower and less accurate).")
        return "f32"
    return requested


def _local(path: str, tmp: str) -> str:
    """A local copy of ``path`` (s3:// and other remote files are downloaded into ``tmp``)."""
    if not io.is_remote(path):
        return path
    local = os.path.join(tmp, os.path.basename(path))
    with open(local, "wb") as f:
        f.write(io.read_bytes(path))
    return local


def read_model(path: str, key: str) -> tuple[Any, dict]:
    """(openvino.Model, embedded meta) from an ONNX file or an IR .xml (whose weights are the .bin beside it)."""
    require_openvino(key)
    if not io.exists(path):
        raise UserError(f"{key}='{path}' does not exist. Point it at an ONNX from `segformer export` or an "
                        "OpenVINO IR (.xml with its .bin) from `segformer export export.format=openvino` or "
                        "`segformer quantize quantize.backend=nncf`.")
    is_ir = str(path).endswith(".xml")
    weights = os.path.splitext(str(path))[0] + ".bin"
    if is_ir and not io.exists(weights):
        raise UserError(f"{key}='{path}' is an OpenVINO IR but its weights file '{weights}' is missing. Copy the "
                        ".bin written next to the .xml (same name) into the same folder.")
    with tempfile.TemporaryDirectory(prefix="segformer_ov_") as tmp:
        local = _local(str(path), tmp)
        try:
            model = core().read_model(local, _local(weights, tmp) if is_ir else None)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise UserError(f"OpenVINO cannot read {key}='{path}': {str(e).strip().splitlines()[0]}. Check that "
                            "the file is a complete export of this tool (re-run `segformer export`).") from e
        return model, (_ir_meta(model) if is_ir else _onnx_meta(local))


def _onnx_meta(path: str) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return from_json(props.get(META_KEY))


def _ir_meta(model) -> dict:
    return from_json(model.get_rt_info([META_KEY]).astype(str)) if model.has_rt_info([META_KEY]) else {}


def save_ir(model, xml_path: str, meta: dict) -> list[str]:
    """Write ``model`` as an OpenVINO IR (weights kept f32) with ``meta`` in its rt_info; returns [xml, bin]."""
    import openvino as ov

    model.set_rt_info(json.dumps(meta), [META_KEY])
    bin_path = os.path.splitext(xml_path)[0] + ".bin"
    with tempfile.TemporaryDirectory(prefix="segformer_ir_") as tmp:
        tmp_xml = os.path.join(tmp, "model.xml")
        # f16 weight compression would change f32 results; INT8 weights are stored as int8 anyway.
        ov.save_model(model, tmp_xml, compress_to_fp16=False)
        for src, dst in ((tmp_xml, xml_path), (os.path.join(tmp, "model.bin"), bin_path)):
            with open(src, "rb") as f:
                io.write_bytes(dst, f.read())
    return [xml_path, bin_path]


class _IoView:
    """The OpenVINO model's I/O in the shape of ONNX Runtime's session API, so validate_io checks both alike."""

    def __init__(self, model):
        self.model = model

    @staticmethod
    def _args(ports) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=p.get_any_name(), shape=[d.get_length() if d.is_static else None
                                                             for d in p.get_partial_shape()]) for p in ports]

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._args(self.model.inputs)

    def get_outputs(self) -> list[SimpleNamespace]:
        return self._args(self.model.outputs)


def compile_model(model, precision: str, threads: int | None = None):
    """Compile for the CPU: one stream, latency hint, ``threads`` (default all available cores), and an explicit
    precision hint (OpenVINO's default on BF16 CPUs is bf16, which would change f32 results silently)."""
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                               "PERFORMANCE_HINT": "LATENCY",
                                               "INFERENCE_NUM_THREADS": threads or available_cores()})


class OpenVinoRuntime(Runtime):
    """Runs a SegFormer ONNX or OpenVINO IR with OpenVINO on the CPU.

    ``precision``: "f32" or "bf16" (bf16 only where native, see :func:`resolve_precision`); ``key`` and
    ``precision_key`` name the config keys in messages. ``meta`` is what the file says (as for ONNX Runtime);
    ``num_classes`` and ``img_size``, when given, are checked against the file.
    """

    name = "openvino"

    def __init__(self, path: str, *, precision: str = "f32", key: str = "onnx_file",
                 precision_key: str = "cpu_precision", num_classes: int | None = None, img_size: int | None = None,
                 threads: int | None = None):
        self.path = path
        model, embedded = read_model(path, key)
        self.io = validate_io(_IoView(model), source=f"'{path}'", num_classes=num_classes, img_size=img_size)
        self.meta = graph_meta(embedded, self.io, f"'{path}'")
        self.precision = resolve_precision(precision, precision_key)
        self.compiled = compile_model(model, self.precision, threads)
        self.request = self.compiled.create_infer_request()
        self.int8 = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())

    @property
    def label(self) -> str:
        """e.g. "openvino bf16" or "openvino int8+f32" (INT8 ops, the rest at ``precision``)."""
        return f"openvino {'int8+' if self.int8 else ''}{self.precision}"

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) float32 normalized -> logits (N, C, h, w) float32 on the CPU."""
        x = images.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(run_in_fixed_batches(self._run, x, self.io["batch"]))

    def _run(self, x):
        # The request reuses its output buffer: copy before the next call overwrites it.
        return self.request.infer({0: x})[0].copy()
