"""Assemble and run the Lightning Trainer for one training job (the work behind ``segformer train``)."""

from __future__ import annotations

import logging
import os
import time
import warnings

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from segformer_tao import io
from segformer_tao.engine.callbacks import BEST, LATEST, EncryptedCheckpointIO, SegformerCheckpoint, StatusLogger
from segformer_tao.engine.datamodule import SegDataModule
from segformer_tao.engine.distributed import build_strategy, export_topology, resolve_topology, restore_env
from segformer_tao.engine.module import SegFormerModule
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")
# Lightning 2.6 builds torch's deprecated LeafSpec on every fit: a FutureWarning users cannot act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
# val_miou/val_loss are reduced by the module itself (confusion matrix all-reduce), so sync_dist stays off.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
PRECISION = {"32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}


def oom_message(cfg: DictConfig, where: str) -> str:
    seg = cfg.dataset.segment
    return (f"Out of memory during {where} with dataset.segment.batch_size={seg.batch_size} and "
            f"dataset.segment.img_size={seg.img_size} (backbone {cfg.model.backbone.type}). Lower "
            "dataset.segment.batch_size or dataset.segment.img_size (activation memory grows with img_size^2), "
            "use train.precision=bf16-mixed, or a smaller backbone. The last saved checkpoint is kept; "
            "rerun the same command to resume from it.")


def find_resume_checkpoint(cfg: DictConfig, results_dir: str) -> str | None:
    """train.resume_training_checkpoint_path, else ``segformer_model_latest.pth`` already in results_dir."""
    explicit = cfg.train.resume_training_checkpoint_path
    if explicit:
        if not io.exists(explicit):
            raise UserError(f"train.resume_training_checkpoint_path='{explicit}' does not exist. Point it at a "
                            f"checkpoint written by a previous run (e.g. <results_dir>/{LATEST}) or unset it.")
        return str(explicit)
    latest = os.path.join(results_dir, LATEST)
    return latest if io.exists(latest) else None


def _loggers(cfg: DictConfig, results_dir: str) -> list:
    loggers: list = [CSVLogger(results_dir, name="logs", version="csv")]
    if cfg.train.tensorboard.enabled:
        loggers.append(TensorBoardLogger(results_dir, name="logs", version="tensorboard"))
    return loggers


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def build_trainer(cfg: DictConfig, results_dir: str, topo, extra_callbacks: list[pl.Callback] | None = None,
                  ) -> tuple[pl.Trainer, SegformerCheckpoint]:
    """A Trainer configured from cfg.train (precision, clipping, intervals, DDP) writing into results_dir.

    ``extra_callbacks`` run after the built-in ones (AutoML adds its pruning callback here).
    """
    tr = cfg.train
    if tr.precision == "16-mixed" and topo.accelerator == "cpu":
        raise UserError("train.precision=16-mixed needs a CUDA GPU; this machine has none. Use "
                        "train.precision=32 (or bf16-mixed on a CPU with native bf16, e.g. AVX512-BF16 or AMX).")
    if tr.precision == "bf16-mixed" and topo.accelerator == "cpu" and not _cpu_has_native_bf16():
        log.warning("train.precision=bf16-mixed on a CPU without native bf16 (no AVX512-BF16/AMX) is emulated and "
                    "was measured 8x slower than train.precision=32 for mit_b0; use 32 here.")
    sync_bn = bool(tr.sync_batchnorm) and topo.world_size > 1
    if sync_bn and topo.accelerator == "cpu":
        log.warning("train.sync_batchnorm=true is ignored on the CPU (torch's SyncBatchNorm needs CUDA); "
                    "each process keeps its own BatchNorm statistics.")
        sync_bn = False
    ckpt_cb = SegformerCheckpoint(results_dir, tr.checkpoint_interval, tr.checkpoint_interval_unit)
    callbacks = [ckpt_cb, StatusLogger(results_dir), TQDMProgressBar(refresh_rate=10)]
    if tr.enable_lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += list(extra_callbacks or [])
    trainer = pl.Trainer(
        accelerator=topo.accelerator, devices=topo.devices, num_nodes=topo.num_nodes,
        strategy=build_strategy(cfg, topo, EncryptedCheckpointIO(cfg.get("encryption_key"))),
        precision=PRECISION[str(tr.precision)], max_epochs=int(tr.num_epochs),
        check_val_every_n_epoch=int(tr.validation_interval), num_sanity_val_steps=0,
        gradient_clip_val=float(tr.clip_grad_norm) or None, gradient_clip_algorithm="norm",
        sync_batchnorm=sync_bn, use_distributed_sampler=False,
        benchmark=bool(tr.cudnn.benchmark), enable_checkpointing=False, logger=_loggers(cfg, results_dir),
        callbacks=callbacks, log_every_n_steps=1, default_root_dir=results_dir, enable_model_summary=False,
    )
    return trainer, ckpt_cb


def train_model(cfg: DictConfig, results_dir: str, model: torch.nn.Module | None = None,
                datamodule: pl.LightningDataModule | None = None, callbacks: list[pl.Callback] | None = None) -> dict:
    """Train (or resume) and return ``{"metrics": ..., "artifacts": ...}`` on every rank.

    ``model`` / ``datamodule`` default to ``build_model(cfg)`` and :class:`SegDataModule`; tests inject small ones.
    ``callbacks`` are extra Lightning callbacks (e.g. AutoML's pruning callback).
    """
    seed = int(cfg.train.seed)
    if seed >= 0:
        pl.seed_everything(seed, workers=True, verbose=False)
    torch.backends.cudnn.deterministic = bool(cfg.train.cudnn.deterministic)
    io.makedirs(results_dir)
    topo = resolve_topology(cfg)
    resume = find_resume_checkpoint(cfg, results_dir)
    if model is None:
        from segformer_tao.model import build_model

        # Pretrained weights (train.pretrained_model_path, backbone path) only matter when not resuming.
        model = build_model(cfg, load_weights=resume is None)
    module = SegFormerModule(cfg, model)
    datamodule = datamodule or SegDataModule(cfg)
    env_backup = export_topology(topo)
    trainer, ckpt_cb = build_trainer(cfg, results_dir, topo, callbacks)
    if resume and trainer.is_global_zero:
        print(f"Resuming training from {resume}")
    start = time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)  # no pickled code
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise UserError(oom_message(cfg, "training")) from e
    finally:
        restore_env(env_backup)
    metrics = {
        "val_miou": module.last_val.get("val_miou"), "best_val_miou": None if ckpt_cb.best_path is None
        else ckpt_cb.best_miou, "val_loss": module.last_val.get("val_loss"),
        "train_loss": _float(trainer.callback_metrics.get("train_loss_epoch")), "epochs": trainer.current_epoch,
        "global_step": trainer.global_step, "train_time_s": round(time.monotonic() - start, 2),
        "world_size": trainer.world_size,
    }
    artifacts = {"latest_checkpoint": os.path.join(results_dir, LATEST), "status": os.path.join(results_dir,
                 "status.json"), "training_curves": os.path.join(results_dir, "training_curves.png"),
                 "logs": os.path.join(results_dir, "logs")}
    if ckpt_cb.best_path:
        artifacts["best_checkpoint"] = os.path.join(results_dir, BEST)
    return {"metrics": metrics, "artifacts": artifacts, "is_global_zero": trainer.is_global_zero}


def _float(value) -> float | None:
    return None if value is None else float(value)
