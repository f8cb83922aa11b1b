"""TensorRT contract on CPU: the project's TensorRT code against the real Python bindings of three versions.

For the oldest 10.x we support, the newest 10.x and the newest 11.x, the real ``tensorrt-cu12-bindings`` wheel is
downloaded from PyPI (cached for the test session), stand-in ``libnvinfer``/``libnvinfer_plugin``/
``libnvonnxparser`` are compiled with the system C compiler so that the pybind11 module imports (recipe from
shared/research/tensorrt-deepstream.md section 5; only import-time code of the bindings runs), and
``trt_contract/probe.py`` runs in a subprocess per version: it resolves every ``trt.*`` chain found in the
project's source and drives gen_trt_engine and TrtRuntime through ``trt_contract/standin.py``, whose every call
is checked against the bindings' own signatures. Skips (visibly) only without a C compiler or PyPI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = {"oldest 10.x": "tensorrt-cu12-bindings==10.0.1",  # setup.cfg's [trt] lower bound
            "newest 10.x": "tensorrt-cu12-bindings>=10,<11",
            "newest 11.x": "tensorrt-cu12-bindings>=11,<12"}
# Symbols the bindings import from the TensorRT libraries (all 10.x/11.x so far); nm adds any new ones.
KNOWN_SYMBOLS = ["createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                 "getBuilderPluginRegistry", "getPluginRegistry", "initLibNvInferPlugins",
                 "createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL", "getNvOnnxParserVersion"]
NETWORK_ERRORS = ("Could not fetch URL", "Max retries", "NewConnectionError", "Temporary failure in name resolution",
                  "Network is unreachable", "ConnectionError", "ProxyError", "timed out", "Name or service not known")

pytestmark = pytest.mark.slow


def _download(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), spec]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"PyPI unreachable: `pip download {spec}` timed out")
    if proc.returncode != 0:
        if any(e in proc.stdout + proc.stderr for e in NETWORK_ERRORS):
            pytest.skip(f"PyPI unreachable: {proc.stderr.strip().splitlines()[-1:]}")
        raise AssertionError(f"pip download {spec} failed:\n{proc.stderr}")
    wheels = sorted(dest.glob("tensorrt_cu12_bindings-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _stub_libs(so: Path, major: str, dest: Path) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc/cc) to build stand-in libnvinfer libraries")
    symbols = set(KNOWN_SYMBOLS)
    if shutil.which("nm"):
        undefined = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True, text=True).stdout
        symbols |= {s for s in re.findall(r"\bU (\w+)$", undefined, re.M) if re.match(r"(create|get|init)[A-Z]", s)}
    libdir = dest / f"lib{major}"
    libdir.mkdir(parents=True, exist_ok=True)
    source = dest / "stub.c"
    source.write_text("".join(f"void* {s}(void) {{ return 0; }}\n" for s in sorted(symbols)))
    for lib in ("nvinfer", "nvinfer_plugin", "nvonnxparser"):
        name = f"lib{lib}.so.{major}"
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(libdir / name), str(source), f"-Wl,-soname,{name}"],
                       check=True, capture_output=True)
    return libdir


@pytest.fixture(scope="session")
def reports(tmp_path_factory) -> dict[str, dict]:
    """{label: probe report} for the three versions (wheels downloaded once per session)."""
    base = tmp_path_factory.mktemp("trt_contract")
    out = {}
    for label, spec in VERSIONS.items():
        tag = label.replace(" ", "_").replace(".", "")
        wheel = _download(spec, base / "wheels" / tag)
        version = wheel.name.split("-")[1]
        pkg = base / "py" / tag
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(pkg / "unpacked")
        (pkg / "unpacked" / "tensorrt_bindings").rename(pkg / "tensorrt")  # importable as `tensorrt`
        libdir = _stub_libs(pkg / "tensorrt" / "tensorrt.so", version.split(".")[0], base / "stubs")
        report_path = base / f"{tag}.json"
        env = {**os.environ, "LD_LIBRARY_PATH": str(libdir), "PYTHONPATH": os.pathsep.join([str(pkg), str(ROOT)]),
               "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run([sys.executable, "-m", "tests.deploy.trt_contract.probe", str(ROOT),
                               str(base / "work" / tag), str(report_path)], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"probe for TensorRT {version} failed:\n{proc.stdout}\n{proc.stderr}"
        report = json.loads(report_path.read_text())
        assert report["version"] == version
        out[label] = report
    return out


def _executed(report) -> set[tuple[str, int]]:
    return {(f, n) for f, n in report["executed"]}


@pytest.mark.parametrize("label", list(VERSIONS))
def test_every_trt_name_the_code_reaches_exists(reports, label):
    report = reports[label]
    assert report["chains"], "the source scan found no trt.* uses"
    executed = _executed(report)
    for c in report["chains"]:
        driven = c["file"].startswith("segformer_tao/")
        if not c["exists"]:
            # only names the code guards (hasattr/weakly_typed) may be absent, and the drive must not reach them
            assert driven and (c["file"], c["line"]) not in executed, (
                f"trt.{c['chain']} ({c['file']}:{c['line']}) does not exist in TensorRT {report['version']}")


def test_every_trt_name_and_member_is_driven_on_some_version(reports):
    chains = {(c["chain"], c["file"], c["line"]) for r in reports.values() for c in r["chains"]
              if c["file"].startswith("segformer_tao/")}
    reached = set()
    for r in reports.values():
        executed = _executed(r)
        reached |= {(c["chain"], c["file"], c["line"]) for c in r["chains"] if c["exists"]
                    and (c["file"], c["line"]) in executed}
    assert chains - reached == set(), "trt.* uses the contract drive never reached: extend trt_contract/probe.py"
    called = {call.split(".")[-1].rstrip("=") for r in reports.values() for call in r["calls"]}
    uses = {(u["name"], u["file"], u["line"]) for r in reports.values() for u in r["member_uses"]}
    unchecked = sorted(u for u in uses if u[0] not in called)
    assert not unchecked, f"TensorRT methods/properties never called through the checked stand-in: {unchecked}"


@pytest.mark.parametrize("label", list(VERSIONS))
def test_builder_and_runtime_through_checked_standin(reports, label):
    report = reports[label]
    s = report["scenarios"]
    for name, result in s.items():
        assert result["standin_failures"] == [], f"{name}: {result['standin_failures']}"
    weakly_typed = report["version"].startswith("10.")
    pinned = {"NORMALIZATION": "FLOAT", "SOFTMAX": "FLOAT", "REDUCE": "FLOAT"}

    fp32 = s["fp32_dynamic_timing_cache"]
    assert fp32["ok"], fp32.get("trace")
    assert fp32["profile"] == [[1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]]
    assert fp32["network_flags"] == (0 if weakly_typed else report["strongly_typed_flag"])
    assert fp32["pinned_precisions"] == {} and fp32["flags"] == []
    assert fp32["runtime"] == {"max_abs_err": 0.0, "engine_batches": [4, 1]}  # split at the max batch
    assert [t["dtype"] for t in fp32["engine_json_io"]] == ["float32", "float32"]
    assert fp32["timing_cache"]["attached"] and fp32["timing_cache_second"]["attached"]
    assert fp32["timing_cache_written"].startswith("timing-cache:")
    assert fp32["timing_cache_corrupt"]["attached"] is False and fp32["corrupt_cache_left_alone"]
    static = s["fp32_static_onnx_batch"]
    assert static["ok"], static.get("trace")
    assert static["runtime"] == {"max_abs_err": 0.0, "engine_batches": [2]}  # 1 image padded to the fixed 2
    assert s["wrong_img_size"]["error"].startswith("UserError") and "img_size" in s["wrong_img_size"]["error"]
    assert "cannot parse the ONNX: No importer registered" in s["unparseable_onnx"]["error"]
    if weakly_typed:
        fp16 = s["fp16_fixed_batch"]
        assert fp16["ok"], fp16.get("trace")
        assert fp16["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
        assert fp16["pinned_precisions"] == {**pinned, "CONVOLUTION": "FLOAT"}  # + layers_precision=[conv:fp32]
        assert fp16["profile"] == [[2, 3, 32, 32]] * 3
        assert fp16["runtime"] == {"max_abs_err": 0.0, "engine_batches": [2, 2]}  # 3 = 2 + 1 padded to 2
        assert s["bf16"]["flags"] == ["BF16", "OBEY_PRECISION_CONSTRAINTS"] and s["bf16"]["pinned_precisions"] == pinned
        for name in ("int8_qdq", "int8_calibrator"):
            assert s[name]["ok"], s[name].get("trace")
            assert s[name]["flags"] == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
            assert s[name]["pinned_precisions"] == pinned  # int8 engines run the rest in fp16: pins apply
        assert s["int8_qdq"]["calibration_feeds"] == []
        # cal_batch_size=2 x cal_batches=2 with opt batch 4: TensorRT reads exactly the fed (2, 3, 32, 32)
        assert s["int8_calibrator"]["calibration_feeds"] == [[2, 3, 32, 32]] * 2
    else:
        assert s["int8_qdq"]["ok"] and s["int8_qdq"]["flags"] == [] and s["int8_qdq"]["pinned_precisions"] == {}
        assert "needs a Q/DQ ONNX" in s["int8_calibrator"]["error"]
        if report["modelopt"] != "installed":
            for name in ("fp16_fixed_batch", "bf16"):
                assert s[name]["error"].startswith("NotAvailableError") and "nvidia-modelopt" in s[name]["error"]
