"""The SegFormer LightningModule: loss, optimizer groups, TAO's LR schedule, validation mIoU, checkpoint extras.

Facts kept from TAO SegFormer: AdamW (betas (momentum, 0.999)), decoder LR x10, no weight decay on biases and
norm parameters, ``linear`` policy = per-step linear decay after a warmup from 1e-6 x lr (TAO warms up for 1%
of the steps), ``step`` policy = x0.1 every ``num_epochs // 3`` epochs.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from segformer_tao.engine.allocator import reuse_freed_memory
from segformer_tao.engine.checkpoint import strip_secrets
from segformer_tao.engine.loss import segmentation_loss
from segformer_tao.engine.metrics import SegmentationMetrics
from segformer_tao.model.meta import meta_from_config

WARMUP_RATIO = 1e-6  # TAO/mmseg: warmup starts at lr x 1e-6


def lr_factor(step: int, *, total_steps: int, steps_per_epoch: int, policy: str, warmup_iters: int,
              num_epochs: int) -> float:
    """LR multiplier at optimizer step ``step`` (0-based) for TAO's policies.

    ``warmup_iters`` > 0 sets the linear warmup length in steps; 0 keeps TAO's default (1% of all steps for
    the ``linear`` policy, none for ``step``).
    """
    warmup = warmup_iters if warmup_iters > 0 else (total_steps // 100 if policy == "linear" else 0)
    if step < warmup:
        return 1.0 - (1.0 - WARMUP_RATIO) * (warmup - step) / warmup
    if policy == "linear":
        return max(0.0, 1.0 - (step - warmup) / float(total_steps - warmup + 1))
    if policy == "step":
        epoch = step // max(1, steps_per_epoch)
        return 0.1 ** (epoch // max(1, num_epochs // 3))
    raise ValueError(f"unknown LR policy {policy!r}")


def capture_rng() -> dict:
    """All RNG states (torch, CUDA, numpy, python) as tensors/plain containers (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *[int(v) if i < 2 else float(v)
                  for i, v in enumerate(np_state[2:])]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class SegFormerModule(pl.LightningModule):
    """Trains ``model`` (any module mapping normalized NCHW images to (N, C, H/4, W/4) logits)."""

    def __init__(self, cfg: DictConfig, model: torch.nn.Module | None = None):
        super().__init__()
        if model is None:
            from segformer_tao.model import build_model

            model = build_model(cfg)
        self.model = model
        self.cfg = cfg
        self.meta = meta_from_config(cfg).to_dict()  # what every checkpoint says about the model
        self.ignore_index = int(cfg.dataset.segment.ignore_index)
        self.val_metrics = SegmentationMetrics(self.meta["num_classes"], self.ignore_index, self.meta["class_names"])
        self._val_loss = torch.zeros(2, dtype=torch.float64)  # (sum of per-image losses, images)
        self.last_val: dict = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            reuse_freed_memory()  # each step's large activations reuse the last step's memory (allocator.py)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["image"])
        loss = segmentation_loss(logits, batch["mask"], self.ignore_index)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=logits.shape[0],
                 sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()
        self._val_loss.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch["image"])
        masks = batch["mask"]
        masks = list(masks) if isinstance(masks, list | tuple) else list(masks.unbind(0))
        for i, mask in enumerate(masks):
            mask = mask.to(logits.device)
            # Metrics at the mask's original resolution: logits are resized back, never the mask.
            up = F.interpolate(logits[i : i + 1].float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
            self.val_metrics.update(up.argmax(1)[0], mask)
            self._val_loss[0] += float(segmentation_loss(up, mask[None], self.ignore_index))
            self._val_loss[1] += 1

    def on_validation_epoch_end(self) -> None:
        self.val_metrics.sync()
        loss = self._val_loss.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            buf = loss.to(self.device) if torch.distributed.get_backend() == "nccl" else loss
            torch.distributed.all_reduce(buf)
            loss = buf.cpu()
        scores = self.val_metrics.compute()
        miou = float(scores["mIoU"] or 0.0)
        val_loss = float(loss[0] / max(1.0, float(loss[1])))
        if self.trainer.sanity_checking:
            return
        # TAO's validation names (val_acc = overall pixel accuracy, val_mAcc = mean class accuracy).
        self.last_val = {"val_miou": miou, "val_loss": val_loss, "val_acc": scores["overall_accuracy"],
                         "val_mAcc": scores["mAcc"], "val_mf1": scores["mF1"],
                         "val_mprecision": scores["mPrecision"], "val_mrecall": scores["mRecall"],
                         "epoch": int(self.current_epoch)}
        # Values are already reduced over ranks (identical everywhere): no further sync.
        self.log("val_miou", miou, prog_bar=True, sync_dist=False)
        self.log("val_loss", val_loss, sync_dist=False)

    def param_groups(self) -> list[dict]:
        """Backbone / decoder x decay / no-decay groups (decoder LR x decoder_lr_mult; 1-D params no decay)."""
        optim = self.cfg.train.optim
        lr, wd, mult = float(optim.lr), float(optim.weight_decay), float(optim.decoder_lr_mult)
        groups: dict[tuple[bool, bool], list] = {(b, d): [] for b in (True, False) for d in (True, False)}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                groups[(name.startswith("backbone."), p.ndim > 1)].append(p)
        out = []
        for (is_backbone, decay), params in groups.items():
            if params:
                out.append({"params": params, "lr": lr if is_backbone else lr * mult,
                            "weight_decay": wd if decay else 0.0})
        return out

    def configure_optimizers(self) -> dict:
        optim = self.cfg.train.optim
        groups = self.param_groups()
        lr, momentum = float(optim.lr), float(optim.momentum)
        if optim.optim == "sgd":
            opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        elif optim.optim == "adam":
            opt = torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999))
        else:
            opt = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or 1))
        kwargs = {"total_steps": total, "steps_per_epoch": max(1, total // epochs), "policy": str(optim.policy),
                  "warmup_iters": int(optim.warmup_iters), "num_epochs": epochs}
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, **kwargs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = dict(self.meta, epoch=int(self.current_epoch), global_step=int(self.global_step),
                    val_miou=self.last_val.get("val_miou"))
        checkpoint["meta"] = meta
        checkpoint["config"] = strip_secrets(OmegaConf.to_container(self.cfg, resolve=True))
        checkpoint["rng_states"] = capture_rng()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores before it creates the first train iterator (which draws from the global RNG), so
        # the resumed run samples and augments exactly like the uninterrupted one.
        if checkpoint.get("rng_states") is not None:
            restore_rng(checkpoint["rng_states"])
