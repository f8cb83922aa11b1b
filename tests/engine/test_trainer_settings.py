"""Trainer settings that depend on the machine: precision choices on a CPU."""

from __future__ import annotations

import logging

import pytest

from segformer_tao.config import compose_config
from segformer_tao.engine import trainer as trainer_mod
from segformer_tao.engine.distributed import resolve_topology


def _cfg(tmp_path, precision: str):
    return compose_config("train", ["dataset.segment.root_dir=/data", f"train.precision={precision}",
                                    f"results_dir={tmp_path}"])


@pytest.mark.parametrize("native, warned", [(False, True), (True, False)])
def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, caplog, native, warned):
    cfg = _cfg(tmp_path, "bf16-mixed")
    topo = resolve_topology(cfg)
    if topo.accelerator != "cpu":
        pytest.skip("checks the CPU path; this machine trains on a GPU")
    monkeypatch.setattr(trainer_mod, "_cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        trainer, _ = trainer_mod.build_trainer(cfg, str(tmp_path), topo)
    assert trainer.precision == "bf16-mixed"
    assert ("8x slower than train.precision=32" in caplog.text) is warned
