"""Trainer settings that depend on the machine: train.precision=auto, precision choices on a CPU."""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from segformer_tao import hardware
from segformer_tao.config import compose_config
from segformer_tao.engine import trainer as trainer_mod
from segformer_tao.engine.distributed import Topology

CPU = Topology("cpu", 1, 1)


def _cfg(tmp_path, *overrides: str):
    return _composed(overrides)  # results_dir is not read here: build_trainer gets its folder as an argument


@functools.cache
def _composed(overrides: tuple[str, ...]):
    return compose_config("train", ["dataset.segment.root_dir=/data", *overrides])


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the CPU flags source at a fake /proc/cpuinfo holding the given flags."""
    def write(*flags: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text("processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: fpu sse2 " + " ".join(flags) + "\n")
        monkeypatch.setattr(hardware, "CPUINFO", str(path))
    return write


@pytest.fixture
def gpu(monkeypatch):
    """Pretend device 0 is a CUDA GPU of the given compute capability."""
    def fake(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    return fake


def test_train_precision_defaults_to_auto(tmp_path):
    assert _cfg(tmp_path).train.precision == "auto"


@pytest.mark.parametrize("flags, picked", [
    (("avx2", "avx512f", "avx512_bf16"), "bf16-mixed"),  # AVX-512 BF16 (e.g. Zen 4, Cooper Lake)
    (("avx2", "amx_tile", "amx_bf16"), "bf16-mixed"),  # AMX (Sapphire Rapids and later)
    (("avx2", "avx512f", "avx512_vnni"), "32"),  # AVX-512 without BF16: emulated, slower
    ((), "32"),
])
def test_auto_on_a_cpu_picks_bf16_only_where_native(tmp_path, cpuinfo, flags, picked):
    cpuinfo(*flags)
    cfg = _cfg(tmp_path)
    precision, why = trainer_mod.resolve_precision(cfg, "cpu")
    assert precision == picked and why.startswith("train.precision=auto")
    native = [f for f in flags if f.endswith("_bf16")]
    assert (native[0] in why) if native else "no avx512_bf16 or amx_bf16" in why
    trainer, _ = trainer_mod.build_trainer(cfg, str(tmp_path), CPU)
    assert trainer.precision == {"32": "32-true"}.get(picked, picked)
    line = trainer_mod.precision_line(cfg)
    assert line.startswith(f"==> train precision: {'fp32' if picked == '32' else picked} (train.precision=auto")


@pytest.mark.parametrize("capability, picked", [((8, 0), "bf16-mixed"), ((7, 5), "32")])
def test_auto_on_a_gpu_picks_bf16_from_compute_capability_8(tmp_path, gpu, cpuinfo, capability, picked):
    cpuinfo("avx512_bf16")  # the CPU's flags do not matter when training on the GPU
    gpu(capability)
    precision, why = trainer_mod.resolve_precision(_cfg(tmp_path), "gpu")
    assert precision == picked and f"compute capability {capability[0]}.{capability[1]}" in why
    assert trainer_mod.precision_line(_cfg(tmp_path)).startswith(
        f"==> train precision: {'fp32' if picked == '32' else picked}")


@pytest.mark.parametrize("value", ["32", "bf16-mixed", "16-mixed"])
def test_an_explicit_precision_is_kept_whatever_the_hardware(tmp_path, cpuinfo, value):
    cpuinfo("avx512_bf16")
    assert trainer_mod.resolve_precision(_cfg(tmp_path, f"train.precision={value}"), "cpu") == (
        value, f"train.precision={value}")


@pytest.mark.parametrize("flags, warned", [((), True), (("avx512_bf16",), False)])
def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, cpuinfo, caplog, flags, warned):
    cpuinfo(*flags)
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        trainer, _ = trainer_mod.build_trainer(_cfg(tmp_path, "train.precision=bf16-mixed"), str(tmp_path), CPU)
    assert trainer.precision == "bf16-mixed"
    assert ("8x slower than train.precision=32" in caplog.text) is warned
