"""Run in a subprocess where ``import tensorrt`` gives one version's real bindings (stand-in libnvinfer*).

Usage: python -m tests.deploy.trt_contract.probe <repo root> <work dir> <out.json>

1. Static: every ``trt.<name>[.<member>...]`` chain in the project's source is resolved on the real module.
2. Dynamic: gen_trt_engine and TrtRuntime are driven through ``standin`` (real enums/Logger/calibrator base,
   checked Builder/Runtime/OnnxParser) for fp32, fp16, bf16, int8 Q/DQ, int8 calibrator, fixed and dynamic
   batch and the timing cache; line coverage of the project is recorded so the test can require every chain
   to have been reached on some version. Writes a JSON report; assertions are made by the caller.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import onnx
import tensorrt as real
import torch
from onnx import TensorProto, helper
from PIL import Image

from segformer_tao.actions import gen_trt_engine
from segformer_tao.config import compose_config, schema
from segformer_tao.deploy import onnxruntime as _ort  # noqa: F401 (imported before line tracing starts)
from segformer_tao.deploy import tensorrt as trt_mod
from segformer_tao.deploy import tensorrt_build
from segformer_tao.deploy.tensorrt import TrtRuntime
from segformer_tao.errors import NotAvailableError
from segformer_tao.model.meta import decide
from tests.deploy.trt_contract import standin

SOURCE_DIRS = ("segformer_tao", "bench", "scripts")


def trt_chains(root: Path) -> list[dict]:
    """Every maximal attribute chain rooted at a name ``trt`` in the project's Python files."""
    found = []
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
                    continue
                parts, cur = [], node
                while isinstance(cur, ast.Attribute):
                    parts.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name) and cur.id == "trt":
                    found.append({"chain": ".".join(reversed(parts)), "file": str(path.relative_to(root)),
                                  "line": node.lineno})
    return found


def member_uses(root: Path, files: set[str]) -> list[dict]:
    """Attribute names used (``obj.name`` / ``obj.name(...)``) in the files that use ``trt`` which are members of
    a TensorRT class and of no torch/builtin type the same code handles: the methods and properties the project
    calls on TensorRT objects. The test requires each to have gone through the checked stand-in."""
    trt_members = {m for v in vars(real).values() if isinstance(v, type) for m in dir(v) if not m.startswith("_")}
    other = set()
    for obj in (torch.Tensor, torch.cuda.Stream, dict, list, str, bytes, tuple, set, Path, np.ndarray,
                onnx.ModelProto, onnx.GraphProto):
        other |= set(dir(obj)) | set(getattr(getattr(obj, "DESCRIPTOR", None), "fields_by_name", {}))
    for module in (schema, tensorrt_build):  # our dataclasses' fields (settings.profile.opt, trt_cfg.workspace_size)
        for value in vars(module).values():
            if dataclasses.is_dataclass(value):
                other |= {f.name for f in dataclasses.fields(value)}
    uses = []
    for file in sorted(files):
        for node in ast.walk(ast.parse((root / file).read_text())):
            if isinstance(node, ast.Attribute) and node.attr in trt_members and node.attr not in other:
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    continue  # the project's own attribute (self.engine), not a TensorRT member
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if not (isinstance(base, ast.Name) and base.id in ("trt", "torch", "io", "log", "os")):
                    uses.append({"name": node.attr, "file": file, "line": node.lineno})
    return uses


def resolves(chain: str) -> bool:
    obj = real
    for part in chain.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


class TorchShim:
    """``torch`` for the runtime module with CUDA replaced by the CPU: same tensors, a no-op stream."""

    class _Stream:
        cuda_stream = 0

        def __init__(self, *args):
            pass

        def synchronize(self):
            pass

    class cuda:  # noqa: N801 (mirrors torch.cuda)
        @staticmethod
        def is_available():
            return True

        @staticmethod
        def set_device(device):
            pass

        @staticmethod
        def stream(stream):
            return nullcontext()

    cuda.Stream = _Stream

    @staticmethod
    def device(*args, **kwargs):
        return torch.device("cpu")

    def __getattr__(self, name):
        return getattr(torch, name)


def tiny_onnx(path: Path, *, qdq: bool, size: int, batch: int | str = "batch", classes: int = 3) -> None:
    """A runnable ONNX with the node kinds the builder pins: Conv (stride 4), LayerNormalization, Softmax,
    ReduceMean; input 'input' (batch, 3, size, size), output 'output' (batch, classes, size/4, size/4)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, classes, size // 4, size // 4])
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [classes, 3, 4, 4], np.full(classes * 48, 0.01).tolist()),
             helper.make_tensor("g", TensorProto.FLOAT, [classes], [1.0] * classes),
             helper.make_tensor("b", TensorProto.FLOAT, [classes], [0.0] * classes),
             helper.make_tensor("s", TensorProto.FLOAT, [], [0.02]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    nodes = []
    src = "input"
    if qdq:
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="q"),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq")]
        src = "dq"
    nodes += [helper.make_node("Conv", [src, "w"], ["c"], name="conv", strides=[4, 4], kernel_shape=[4, 4]),
              helper.make_node("Transpose", ["c"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
              helper.make_node("LayerNormalization", ["t", "g", "b"], ["n"], name="norm", axis=-1),
              helper.make_node("Softmax", ["n"], ["sm"], name="attn_softmax", axis=-1),
              helper.make_node("ReduceMean", ["sm"], ["m"], name="mean", axes=[3], keepdims=1),
              helper.make_node("Add", ["sm", "m"], ["a"], name="add"),
              helper.make_node("Transpose", ["a"], ["output"], name="to_nchw", perm=[0, 3, 1, 2])]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def scenario(name, results, fn):
    """Run one scenario; record ok / the exception (type and message) and stand-in failures."""
    standin.FAILURES.clear()
    try:
        detail = fn() or {}
        results[name] = {"ok": True, **detail}
    except Exception as e:  # noqa: BLE001 (reported to the test, which asserts on it)
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    results[name]["standin_failures"] = list(standin.FAILURES)


def main() -> int:
    root, work, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    report = {"version": real.__version__, "chains": [], "scenarios": {}}
    for c in trt_chains(root):
        report["chains"].append({**c, "exists": resolves(c["chain"])})
    report["member_uses"] = member_uses(root, {c["file"] for c in report["chains"]})
    report["strongly_typed_flag"] = (1 << int(real.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
                                     if hasattr(real.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") else None)

    module = standin.make_module(real)
    trt_mod.require_tensorrt = lambda: module
    trt_mod.torch = tensorrt_build.torch = TorchShim()
    size = 32
    tiny_onnx(work / "float.onnx", qdq=False, size=size)
    tiny_onnx(work / "qdq.onnx", qdq=True, size=size)
    tiny_onnx(work / "float_b2.onnx", qdq=False, size=size, batch=2)
    cal_dir = work / "cal"
    cal_dir.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(cal_dir / f"{i}.png")

    def cfg(tag, onnx_name, *overrides):
        return compose_config("gen_trt_engine", [
            f"results_dir={work}/{tag}", f"gen_trt_engine.onnx_file={work}/{onnx_name}",
            f"gen_trt_engine.trt_engine={work}/{tag}/model.engine", f"dataset.segment.img_size={size}",
            "dataset.segment.num_classes=3", *overrides])

    def build(tag, onnx_name, *overrides):
        c = cfg(tag, onnx_name, *overrides)
        artifacts = gen_trt_engine.run(c)["artifacts"]
        builder = standin.Builder.LAST
        net, conf = builder._network, builder._config
        pins = {}  # layer type -> the precision the builder assigned (unassigned layers are absent)
        for layer in net._layers:
            assigned = layer.__dict__.get("_assigned", {})
            if "precision" in assigned:
                kind = str(object.__getattribute__(layer, "type")).split(".")[-1]
                pins[kind] = str(assigned["precision"]).split(".")[-1]
        info = json.loads(Path(artifacts["engine_json"]).read_text())
        return c, artifacts, {"flags": sorted(conf._flags), "pinned_precisions": pins,
                              "profile": conf._profiles[0]._shapes["input"], "network_flags": net._flags,
                              "calibration_feeds": builder._calibration_feeds, "engine_json_io": info["io"],
                              "timing_cache": info.get("timing_cache"), "layers_pinned": info["layers_pinned"]}

    def run_runtime(c, engine, batch):
        runtime = TrtRuntime(engine, parent_job=c.get("parent_job"))
        x = torch.randn(batch, 3, size, size)
        got = runtime.predict(x)
        expected = standin.reference_output(x.numpy(), 3)
        return {"max_abs_err": float(np.abs(got.numpy() - expected).max()),
                "engine_batches": standin.Engine.LAST_CONTEXT._batches_run}

    def fp32_dynamic_with_timing_cache():
        cache = work / "timing.cache"
        c, art, detail = build("fp32", "float.onnx", "gen_trt_engine.tensorrt.data_type=fp32",
                               "gen_trt_engine.tensorrt.min_batch_size=1", "gen_trt_engine.tensorrt.opt_batch_size=2",
                               "gen_trt_engine.tensorrt.max_batch_size=4", f"gen_trt_engine.timing_cache={cache}")
        detail["timing_cache_written"] = cache.read_bytes().decode()
        _, _, again = build("fp32_cached", "float.onnx", "gen_trt_engine.tensorrt.data_type=fp32",
                            f"gen_trt_engine.timing_cache={cache}")
        detail["timing_cache_second"] = again["timing_cache"]
        cache.write_bytes(b"corrupt")
        _, _, bad = build("fp32_bad_cache", "float.onnx", "gen_trt_engine.tensorrt.data_type=fp32",
                          f"gen_trt_engine.timing_cache={cache}")
        detail["timing_cache_corrupt"] = bad["timing_cache"]
        detail["corrupt_cache_left_alone"] = cache.read_bytes() == b"corrupt"
        detail["runtime"] = run_runtime(c, art["trt_engine"], 5)
        return detail

    def fp16_fixed_batch():
        c, art, detail = build("fp16", "float.onnx", "gen_trt_engine.tensorrt.data_type=fp16",
                               "gen_trt_engine.batch_size=2", "gen_trt_engine.tensorrt.layers_precision=[conv:fp32]")
        detail["runtime"] = run_runtime(c, art["trt_engine"], 3)
        return detail

    def fp32_static_onnx_batch():
        c, art, detail = build("fp32_static", "float_b2.onnx", "gen_trt_engine.tensorrt.data_type=fp32")
        detail["runtime"] = run_runtime(c, art["trt_engine"], 1)
        return detail

    def wrong_img_size():
        c, art, _ = build("size", "float.onnx", "gen_trt_engine.tensorrt.data_type=fp32")
        other = compose_config("evaluate", ["dataset.segment.img_size=64", "dataset.segment.num_classes=3"])
        os.remove(f"{art['trt_engine']}.json")  # no embedded meta: the dataset's img_size is what is fed
        runtime = TrtRuntime(art["trt_engine"], trusted=True)  # nor its build record: the user vouches for it
        decide(other, runtime.meta, "evaluate.trt_engine")  # the engine's fixed 32x32 against img_size=64

    results = report["scenarios"]
    scenario("fp32_dynamic_timing_cache", results, fp32_dynamic_with_timing_cache)
    scenario("fp16_fixed_batch", results, fp16_fixed_batch)
    scenario("fp32_static_onnx_batch", results, fp32_static_onnx_batch)
    scenario("bf16", results, lambda: build("bf16", "float.onnx", "gen_trt_engine.tensorrt.data_type=bf16")[2])
    scenario("int8_qdq", results, lambda: build("int8q", "qdq.onnx", "gen_trt_engine.tensorrt.data_type=int8",
                                               "gen_trt_engine.tensorrt.max_batch_size=2")[2])
    scenario("int8_calibrator", results, lambda: build(
        "int8c", "float.onnx", "gen_trt_engine.tensorrt.data_type=int8", "gen_trt_engine.tensorrt.min_batch_size=1",
        "gen_trt_engine.tensorrt.opt_batch_size=4", "gen_trt_engine.tensorrt.max_batch_size=8",
        f"gen_trt_engine.tensorrt.calibration.cal_image_dir=[{cal_dir}]",
        "gen_trt_engine.tensorrt.calibration.cal_batch_size=2", "gen_trt_engine.tensorrt.calibration.cal_batches=2",
        f"gen_trt_engine.tensorrt.calibration.cal_cache_file={work}/cal.cache")[2])
    scenario("wrong_img_size", results, wrong_img_size)

    def unparseable():
        proto = onnx.load(work / "float.onnx")
        proto.graph.node[0].op_type = "NotAnOnnxOp"  # the stand-in parser fails on it, as TensorRT's would
        profile = tensorrt_build.Profile(*[(1, 3, size, size)] * 3)
        tensorrt_build.build_engine(proto.SerializeToString(), tensorrt_build.BuildSettings("fp32", 16, profile))

    scenario("unparseable_onnx", results, unparseable)
    report["modelopt"] = NotAvailableError.__name__ if _missing("modelopt") else "installed"
    report["calls"] = sorted(standin.CALLS)
    out.write_text(json.dumps(report, indent=1))
    return 0


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def traced_main() -> int:
    """main() with line coverage of the project's files (to show which trt chains the drive reached)."""
    root = os.path.abspath(sys.argv[1])
    traced = {os.path.join(root, c["file"]) for c in trt_chains(Path(root))}  # lines only where trt is used
    executed: set[tuple[str, int]] = set()

    def tracer(frame, event, arg):
        filename = frame.f_code.co_filename
        if filename not in traced:
            return None
        if event == "line":
            executed.add((os.path.relpath(filename, root), frame.f_lineno))
        return tracer

    sys.settrace(tracer)
    try:
        code = main()
    finally:
        sys.settrace(None)
    out = Path(sys.argv[3])
    report = json.loads(out.read_text())
    report["executed"] = sorted([f, n] for f, n in executed)
    out.write_text(json.dumps(report, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(traced_main())
