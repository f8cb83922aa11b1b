"""PyTorch as a runtime: one of our ``.pth`` checkpoints, on CUDA when available."""

from __future__ import annotations

import torch

from segformer_tao.deploy.base import Runtime
from segformer_tao.model.meta import torch_size_problem


class TorchRuntime(Runtime):
    """A segformer_tao ``.pth`` checkpoint run with PyTorch (CUDA when available)."""

    name = "torch"

    def __init__(self, checkpoint: str, encryption_key: str | None = None, device: str | None = None,
                 strict: bool = False):
        from segformer_tao.engine.checkpoint import load_model_from_checkpoint

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta = load_model_from_checkpoint(checkpoint, encryption_key, map_location=self.device,
                                                            strict=strict)
        self.path = checkpoint

    def size_problem(self, size: int) -> str | None:
        check = torch_size_problem(self.meta.backbone)
        return check(size) if check else None

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device, torch.float32)).float().cpu()
