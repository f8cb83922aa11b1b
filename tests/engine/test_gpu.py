"""The CUDA paths we claim: mixed-precision training steps and CUDA inference equal to the CPU's.

Marked ``gpu``: skipped with a reason where torch sees no CUDA GPU (tests/conftest.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from segformer_tao.engine.checkpoint import load_checkpoint
from segformer_tao.engine.datamodule import SegDataModule
from segformer_tao.engine.trainer import train_model

pytestmark = pytest.mark.gpu


def _train(tiny, tmp_path, precision: str) -> tuple[list[float], dict]:
    net_cls, ds_cls, make_cfg = tiny
    results = tmp_path / precision
    cfg = make_cfg(tmp_path, "train.num_epochs=1", f"train.precision={precision}", "train.num_gpus=1")
    torch.manual_seed(0)
    dm = SegDataModule(cfg, ds_cls(12, mode="train"), ds_cls(6, mode="eval", seed=1))
    out = train_model(cfg, str(results), net_cls(), dm)
    lines = [json.loads(s) for s in (results / "status.json").read_text().splitlines()]
    # epoch lines; the loss is top-level or under "graphical" depending on the status.json layout
    losses = [ln.get("graphical", ln)["train_loss"] for ln in lines if ln.get("message", "").startswith("Epoch ")]
    return losses, {"out": out, "ckpt": load_checkpoint(str(results / "segformer_model_latest.pth"))}


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_training_step_on_cuda(tiny, tmp_path, precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    ref_losses, _ = _train(tiny, tmp_path, "32")
    losses, run = _train(tiny, tmp_path, precision)
    assert len(losses) == 1 and all(math.isfinite(v) for v in losses)
    # same seeded data and init: the half-precision epoch loss tracks the fp32 one (a broken autocast does not)
    assert losses[0] == pytest.approx(ref_losses[0], rel=0.1), (losses, ref_losses)
    weights = run["ckpt"]["state_dict"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())  # fp32 master weights
    if precision == "16-mixed":  # fp16 needs loss scaling: Lightning stores the GradScaler's state
        assert "MixedPrecision" in run["ckpt"] and run["ckpt"]["MixedPrecision"]["scale"] > 0


def test_cuda_inference_matches_cpu(tmp_path):
    from segformer_tao.deploy.torch_runtime import TorchRuntime
    from tests.deploy.conftest import deploy_cfg, save_tiny_checkpoint

    path = save_tiny_checkpoint(str(tmp_path / "tiny.pth"), deploy_cfg("export", tmp_path))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cpu = TorchRuntime(path, device="cpu").predict(x)
    cuda_runtime = TorchRuntime(path, device="cuda")
    assert next(cuda_runtime.model.parameters()).is_cuda
    gpu = cuda_runtime.predict(x)
    assert gpu.device.type == "cpu" and gpu.shape == cpu.shape
    # cuDNN may use TF32 convolutions: allow ~1e-3 of the logits' scale, and the same classes nearly everywhere
    assert (gpu - cpu).abs().max() <= 2e-3 * max(1.0, float(cpu.abs().max()))
    assert (gpu.argmax(1) == cpu.argmax(1)).float().mean() >= 0.99
