"""quantize.backend=torchao checkpoints: loaded as the quantized model (both modes, encrypted too) with torchao's
types allowed only where they are read; parent_job picks each backend's own output; a missing torchao names the
extra. The CLI chain per backend is in test_e2e.py (slow)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.errors import NotAvailableError, UserError
from tests.conftest import assert_user_error, run_cli
from tests.deploy.conftest import IMG, deploy_cfg, save_tiny_checkpoint

torchao = pytest.importorskip("torchao", reason="torchao is not installed (pip install 'segformer_tao[torchao]')")


def _quantized_checkpoint(tmp_path, mode: str, key: str | None = None) -> tuple[str, torch.nn.Module]:
    """A tiny mit_b0 quantized by torchao and saved as quantize does; returns (path, the quantized model)."""
    from segformer_tao.engine.checkpoint import load_checkpoint, save_checkpoint
    from segformer_tao.engine.checkpoint import load_model_from_checkpoint as load
    from segformer_tao.model import torchao_int8

    torch.set_num_threads(1)
    cfg = deploy_cfg("export", tmp_path)
    src = save_tiny_checkpoint(str(tmp_path / "fp32.pth"), cfg)
    model, meta = load(src)
    record = torchao_int8.quantize(model, mode, [])
    path = str(tmp_path / f"int8_{mode}.pth")
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(path, {"state_dict": state, "meta": meta.to_dict(),
                           "config": load_checkpoint(src)["config"], "quantization": record}, key)
    return path, model


@pytest.mark.parametrize("mode", ["weight_only_ptq", "static_ptq"])
def test_checkpoint_loads_as_the_quantized_model(tmp_path, mode):
    from segformer_tao.engine.checkpoint import is_encrypted
    from segformer_tao.engine.checkpoint import load_model_from_checkpoint as load

    key = "k3y-for-test" if mode == "static_ptq" else None  # the encrypted writer, as for every checkpoint
    path, quantized = _quantized_checkpoint(tmp_path, mode, key)
    assert is_encrypted(open(path, "rb").read(64)) == bool(key)
    loaded, meta = load(path, key)
    weight = loaded.backbone.block1[0].attn.q.weight
    assert type(weight).__name__ == "Int8Tensor" and weight.qdata.dtype == torch.int8
    assert meta.extra["quantization"]["mode"] == mode and len(meta.extra["quantization"]["quantized_layers"]) == 40
    assert type(loaded.decode_head.linear_c1.proj.weight) is torch.nn.Parameter  # folded into the fuse conv
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))  # bit-identical to what quantize measured
    if key:
        with pytest.raises(UserError, match="encrypted"):
            load(path)


def test_torchao_types_are_allowed_only_by_the_scoped_allowlist(tmp_path):
    """torchao allows its ~40 types in every torch.load when imported; that is undone, so a plain weights_only
    load of the file fails and only the checkpoint loader's allowlist reads it; the allowlist is exactly the
    types the two modes' checkpoints hold."""
    from segformer_tao.engine.checkpoint import load_checkpoint
    from segformer_tao.model import torchao_int8

    needed = set()
    for mode in ("weight_only_ptq", "static_ptq"):
        path, _ = _quantized_checkpoint(tmp_path / mode, mode)
        torchao_int8.require_torchao("test")
        with pytest.raises(Exception, match="torchao.quantization"):
            torch.load(path, weights_only=True)
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        assert "torchao.quantization.Int8Tensor" in unsafe
        needed |= unsafe
        assert load_checkpoint(path)["quantization"]["backend"] == "torchao"
    assert needed == {f"{module}.{name}" for module, name in torchao_int8.ALLOWED_TYPES}


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_os_system_beside_torchao_types_is_refused(tmp_path):
    """The allowlist lets torchao's tensors in and nothing else: a payload next to them is still refused."""
    from segformer_tao.engine.checkpoint import load_checkpoint

    path, quantized = _quantized_checkpoint(tmp_path, "static_ptq")
    marker = str(tmp_path / "PAYLOAD_RAN")
    evil = str(tmp_path / "evil_torchao.pth")
    torch.save({"state_dict": quantized.state_dict(), "meta": _Payload(marker), "quantization": {}}, evil)
    with pytest.raises(UserError, match=r"Refused to load .*posix\.system"):
        load_checkpoint(evil)
    assert not os.path.exists(marker)


def _job(directory, action: str, artifacts: dict[str, str]) -> str:
    os.makedirs(directory, exist_ok=True)
    for path in artifacts.values():
        open(path, "wb").close()
    record = {"action": action, "artifacts": {k: {"path": p} for k, p in artifacts.items()}}
    with open(os.path.join(directory, "job.json"), "w") as f:
        json.dump(record, f)
    return str(directory)


def test_parent_job_picks_each_backends_output(tmp_path):
    """Each action takes the file the quantize job recorded, never the FP32 ONNX beside it."""
    from segformer_tao.parent import resolve_parent

    ort = _job(tmp_path / "ort", "quantize", {"onnx_file": f"{tmp_path}/ort/m_int8.onnx",
                                              "report": f"{tmp_path}/ort/quantize_report.json"})
    open(f"{tmp_path}/ort/m_fp32.onnx", "wb").close()  # written last: the newest ONNX there
    for action, key in (("evaluate", "evaluate.onnx_file"), ("inference", "inference.onnx_file"),
                        ("gen_trt_engine", "gen_trt_engine.onnx_file")):
        assert resolve_parent(action, ort)[:2] == (key, f"{tmp_path}/ort/m_int8.onnx")
    with pytest.raises(UserError, match="holds no artifact"):
        resolve_parent("export", ort)
    nncf = _job(tmp_path / "nncf", "quantize", {"openvino_xml": f"{tmp_path}/nncf/m_int8.xml",
                                                "openvino_bin": f"{tmp_path}/nncf/m_int8.bin"})
    open(f"{tmp_path}/nncf/m_fp32.onnx", "wb").close()
    assert resolve_parent("evaluate", nncf)[:2] == ("evaluate.onnx_file", f"{tmp_path}/nncf/m_int8.xml")
    tao = _job(tmp_path / "tao", "quantize", {"quantized_model": f"{tmp_path}/tao/m_int8_torchao.pth"})
    open(f"{tmp_path}/tao/m_fp32.onnx", "wb").close()
    for action, key in (("evaluate", "evaluate.checkpoint"), ("inference", "inference.checkpoint"),
                        ("export", "export.checkpoint")):
        assert resolve_parent(action, tao)[:2] == (key, f"{tmp_path}/tao/m_int8_torchao.pth")
    with pytest.raises(UserError, match="torchao quantize job.*segformer export parent_job="):
        resolve_parent("gen_trt_engine", tao)


def test_without_torchao_a_torchao_checkpoint_names_the_extra(tmp_path):
    """An install without torchao (an import that fails, as where the package is absent) reading the file."""
    path, _ = _quantized_checkpoint(tmp_path, "weight_only_ptq")
    blocker = tmp_path / "no_torchao" / "torchao"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torchao'\", name='torchao')\n")
    make_demo_dataset(tmp_path / "data", num_classes=3, size=IMG, train=1, val=1, test=1)
    result = run_cli("evaluate", f"dataset.segment.root_dir={tmp_path}/data", f"evaluate.checkpoint={path}",
                     "dataset.segment.num_classes=3", "dataset.segment.label_transform=None",
                     f"results_dir={tmp_path}/r", env={"PYTHONPATH": f"{blocker.parent}{os.pathsep}{_repo()}"})
    assert_user_error(result, path, "needs torchao", "pip install 'segformer_tao[torchao]'")


def _repo() -> str:
    from tests.conftest import REPO

    return REPO


def test_require_torchao_error_names_the_extra(monkeypatch):
    from segformer_tao.model import torchao_int8

    monkeypatch.setitem(__import__("sys").modules, "torchao.quantization", None)
    with pytest.raises(NotAvailableError, match=r"pip install 'segformer_tao\[torchao\]'"):
        torchao_int8.require_torchao("quantize.backend=torchao")


def test_unknown_skip_name_and_mode(tmp_path):
    from segformer_tao.model import build_model, torchao_int8

    model = build_model(deploy_cfg("export", tmp_path), load_weights=False)
    with pytest.raises(UserError, match="match no layer"):
        torchao_int8.quantize(copy.deepcopy(model), "weight_only_ptq", ["no_such_layer"])
    with pytest.raises(UserError, match="not a torchao INT8 mode"):
        torchao_int8.quantize(model, "qat", [])
