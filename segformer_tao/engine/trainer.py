"""Assemble and run the Lightning Trainer for one training job (the work behind ``segformer train``)."""

from __future__ import annotations

import csv
import logging
import os
import time
import warnings
from io import StringIO

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from segformer_tao import hardware, io
from segformer_tao.engine.callbacks import BEST, LATEST, EncryptedCheckpointIO, SegformerCheckpoint, StatusLogger
from segformer_tao.engine.datamodule import SegDataModule
from segformer_tao.engine.distributed import (
    build_strategy,
    cluster_plugins,
    export_topology,
    resolve_topology,
    restore_env,
)
from segformer_tao.engine.module import SegFormerModule
from segformer_tao.engine.preemption import Preemption
from segformer_tao.engine.progress import progress_bar
from segformer_tao.engine.resume import newest_checkpoint, progress
from segformer_tao.engine.tracking import LogLearningRate, finish_tracking, tracking_loggers
from segformer_tao.errors import UserError, out_of_memory

log = logging.getLogger("segformer_tao")
# Lightning 2.6 builds torch's deprecated LeafSpec on every fit: a FutureWarning users cannot act on.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
# val_miou/val_loss are reduced by the module itself (confusion matrix all-reduce), so sync_dist stays off.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
# Lightning warns on every plain run where SLURM's tools are installed (a login node, a workstation with SLURM);
# a real SLURM launch is recognised from its task variables (segformer_tao.ranks), so the hint says nothing.
warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system but is not used.*")
PRECISION = {"32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}


def find_resume_checkpoint(cfg: DictConfig, results_dir: str) -> tuple[str, dict | None, str] | None:
    """(path, payload or None, why): train.resume_training_checkpoint_path, else the newest complete checkpoint
    in results_dir (:func:`segformer_tao.engine.resume.newest_checkpoint`); None when there is none."""
    explicit = cfg.train.resume_training_checkpoint_path
    if explicit:
        if not io.exists(explicit):
            raise UserError(f"train.resume_training_checkpoint_path='{explicit}' does not exist. Point it at a "
                            f"checkpoint written by a previous run (e.g. <results_dir>/{LATEST}) or unset it.")
        return str(explicit), None, "train.resume_training_checkpoint_path"
    from segformer_tao.engine.checkpoint import load_checkpoint

    return newest_checkpoint(results_dir, lambda p: load_checkpoint(
        p, cfg.get("encryption_key"), own=True, strict=bool(cfg.get("encryption_strict"))))


class _KeepHistoryWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; on resume we keep the rows logged before the
    checkpoint's step (rows after it belong to the interrupted part, which is re-run) and append to them."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._resume_step is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "") == "" or int(float(r["step"])) < self._resume_step]
        buf = StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        io.write_text(self.metrics_file_path, buf.getvalue())
        self.metrics_keys = sorted(keys)


class _ResumableCSVLogger(CSVLogger):
    def __init__(self, *args, resume_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepHistoryWriter(self.log_dir, self._resume_step)
        return self._experiment


def _loggers(cfg: DictConfig, results_dir: str, resume_step: int | None = None) -> list:
    loggers: list = [_ResumableCSVLogger(results_dir, name="logs", version="csv", resume_step=resume_step)]
    if cfg.train.tensorboard.enabled:
        loggers.append(TensorBoardLogger(results_dir, name="logs", version="tensorboard"))
    from segformer_tao.ranks import is_primary

    if is_primary():  # W&B / MLflow runs are opened once, by rank 0
        loggers += tracking_loggers(cfg, results_dir, resuming=resume_step is not None)
    return loggers


def resolve_precision(cfg: DictConfig, accelerator: str) -> tuple[str, str]:
    """(the train.precision to train with, why). ``auto`` picks bf16-mixed where the hardware computes bf16
    natively (a CUDA GPU of compute capability >= 8.0; a CPU with AVX-512 BF16 or AMX-BF16) and 32 elsewhere
    (emulated bf16 is slower than fp32: 8x for mit_b0 on an AVX2 CPU). Any other value is used as given.
    ``accelerator``: "gpu" or "cpu", as :func:`resolve_topology` decides (gpu whenever CUDA is available)."""
    requested = str(cfg.train.precision)
    if requested != "auto":
        return requested, f"train.precision={requested}"
    if accelerator == "gpu":
        major, minor = hardware.cuda_capability()
        gpu = f"{torch.cuda.get_device_name(0)}, compute capability {major}.{minor}"
        if hardware.cuda_bf16():
            return "bf16-mixed", f"train.precision=auto; the GPU computes bf16: {gpu}"
        return "32", f"train.precision=auto; the GPU has no native bf16: {gpu} < 8.0"
    flags = hardware.cpu_bf16_flags()
    if hardware.cpu_native_bf16():
        return "bf16-mixed", f"train.precision=auto; this CPU computes bf16 natively: {', '.join(flags)}"
    why = "torch has no oneDNN" if flags else "no avx512_bf16 or amx_bf16 flag"
    return "32", f"train.precision=auto; this CPU has no native bf16 ({why}), where bf16 is emulated and slower"


def precision_line(cfg: DictConfig) -> str:
    """The first line `segformer train` prints: the precision it trains in and why."""
    precision, why = resolve_precision(cfg, "gpu" if torch.cuda.is_available() else "cpu")
    label = "fp32" if precision == "32" else precision
    return f"==> train precision: {label} ({why})"


def build_trainer(cfg: DictConfig, results_dir: str, topo, extra_callbacks: list[pl.Callback] | None = None,
                  resume_step: int | None = None, preloaded: tuple[str, dict] | None = None,
                  ) -> tuple[pl.Trainer, SegformerCheckpoint]:
    """A Trainer configured from cfg.train (precision, clipping, intervals, DDP) writing into results_dir.

    ``extra_callbacks`` run after the built-in ones (AutoML adds its pruning callback here). ``resume_step``:
    the global step of the checkpoint being resumed (CSV rows logged before it are kept); ``preloaded``: its
    (path, payload) when already read, so that Lightning does not read it again.
    """
    tr = cfg.train
    precision, _ = resolve_precision(cfg, topo.accelerator)
    if precision == "16-mixed" and topo.accelerator == "cpu":
        raise UserError("train.precision=16-mixed needs a CUDA GPU; this machine has none. Use "
                        "train.precision=32 (or bf16-mixed on a CPU with native bf16, e.g. AVX512-BF16 or AMX).")
    if precision == "bf16-mixed" and topo.accelerator == "cpu" and not hardware.cpu_native_bf16():
        log.warning("train.precision=bf16-mixed on a CPU without native bf16 (no AVX512-BF16/AMX) is emulated and "
                    "was measured 8x slower than train.precision=32 for mit_b0; use 32 here.")
    sync_bn = bool(tr.sync_batchnorm) and topo.world_size > 1
    if sync_bn and topo.accelerator == "cpu":
        log.warning("train.sync_batchnorm=true is ignored on the CPU (torch's SyncBatchNorm needs CUDA); "
                    "each process keeps its own BatchNorm statistics.")
        sync_bn = False
    ckpt_cb = SegformerCheckpoint(results_dir, tr.checkpoint_interval, tr.checkpoint_interval_unit)
    preemption = Preemption(ckpt_cb, tr.get("preemption_signal"), float(tr.get("checkpoint_interval_minutes") or 0))
    preemption.install()  # from now on; Lightning keeps it in its chain at fit start, on_train_start takes over
    callbacks = [ckpt_cb, StatusLogger(results_dir), preemption, progress_bar()]
    if tr.enable_lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += list(extra_callbacks or [])
    loggers = _loggers(cfg, results_dir, resume_step)
    tracked = [lg for lg in loggers if isinstance(lg, (WandbLogger, MLFlowLogger))]
    if tracked:
        callbacks.append(LogLearningRate(tracked))
    trainer = pl.Trainer(
        accelerator=topo.accelerator, devices=topo.devices, num_nodes=topo.num_nodes,
        strategy=build_strategy(cfg, topo, EncryptedCheckpointIO(cfg.get("encryption_key"), preloaded,
                                                                 bool(cfg.get("encryption_strict")))),
        precision=PRECISION[precision], max_epochs=int(tr.num_epochs),
        check_val_every_n_epoch=int(tr.validation_interval), num_sanity_val_steps=0,
        gradient_clip_val=float(tr.clip_grad_norm) or None, gradient_clip_algorithm="norm",
        sync_batchnorm=sync_bn, use_distributed_sampler=False,
        benchmark=bool(tr.cudnn.benchmark), enable_checkpointing=False, logger=loggers,
        callbacks=callbacks, log_every_n_steps=1, default_root_dir=results_dir, enable_model_summary=False,
        plugins=cluster_plugins(),
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
    found = find_resume_checkpoint(cfg, results_dir)
    resume, payload, why = found if found else (None, None, None)
    if model is None:
        from segformer_tao.model import build_model

        # Pretrained weights (train.pretrained_model_path, backbone path) only matter when not resuming.
        model = build_model(cfg, load_weights=resume is None)
    state = inspect_resume(cfg, results_dir, resume, model, payload) if resume else None
    if state is not None and state["epochs_done"] >= int(cfg.train.num_epochs):
        return _already_finished(cfg, results_dir, resume, state)
    module = SegFormerModule(cfg, model)
    datamodule = datamodule or SegDataModule(cfg)
    env_backup = export_topology(topo)
    trainer, ckpt_cb = build_trainer(cfg, results_dir, topo, callbacks,
                                     resume_step=None if state is None else state["global_step"],
                                     preloaded=None if state is None else (resume, state.pop("payload")))
    if resume and trainer.is_global_zero:
        print(f"Resuming training from {resume} (epoch {state['epochs_done']} of {cfg.train.num_epochs} done, "
              f"step {state['global_step']}; {why})")
    start = time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)  # no pickled code
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise out_of_memory(cfg, "train") from e
    finally:
        restore_env(env_backup)
    metrics = {
        "val_miou": module.last_val.get("val_miou"), "best_val_miou": None if ckpt_cb.best_path is None
        else ckpt_cb.best_miou, "val_loss": module.last_val.get("val_loss"),
        "train_loss": _float(trainer.callback_metrics.get("train_loss_epoch")), "epochs": trainer.current_epoch,
        "global_step": trainer.global_step, "train_time_s": round(time.monotonic() - start, 2),
        "world_size": trainer.world_size,
    }
    artifacts = _artifacts(results_dir, bool(ckpt_cb.best_path))
    finish_tracking([lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, MLFlowLogger))], metrics, artifacts)
    return {"metrics": metrics, "artifacts": artifacts, "is_global_zero": trainer.is_global_zero}


def _artifacts(results_dir: str, has_best: bool) -> dict:
    artifacts = {"latest_checkpoint": os.path.join(results_dir, LATEST), "status": os.path.join(results_dir,
                 "status.json"), "training_curves": os.path.join(results_dir, "training_curves.png"),
                 "logs": os.path.join(results_dir, "logs")}
    if has_best:
        artifacts["best_checkpoint"] = os.path.join(results_dir, BEST)
    return artifacts


def inspect_resume(cfg: DictConfig, results_dir: str, resume: str, model: torch.nn.Module,
                   payload: dict | None = None) -> dict:
    """Check that ``resume`` holds this run's model (same backbone and classes) before Lightning loads it.

    Returns {"epochs_done", "global_step", "meta", "payload"} (payload: the loaded checkpoint, handed on to
    Lightning); UserError naming the directory and the fix otherwise (a results_dir reused for another model
    would fail deep inside Lightning with a size-mismatch traceback).
    """
    from segformer_tao.engine.checkpoint import load_checkpoint, model_state_dict

    if payload is None:
        payload = load_checkpoint(resume, cfg.get("encryption_key"), own=True,
                                  strict=bool(cfg.get("encryption_strict")))
    meta = payload.get("meta") or {}
    ours = model.state_dict()
    theirs = model_state_dict(payload)
    differ = sorted(k for k in set(ours) | set(theirs)
                    if k not in ours or k not in theirs or tuple(ours[k].shape) != tuple(theirs[k].shape))
    if differ:
        this = f"{cfg.model.backbone.type}, {cfg.dataset.segment.num_classes} classes"
        other = f"{meta.get('backbone', 'another backbone')}, {meta.get('num_classes', '?')} classes"
        if cfg.train.resume_training_checkpoint_path:
            where = f"train.resume_training_checkpoint_path='{resume}' is a checkpoint of another model"
            fix = "Point it at a checkpoint of this model, or unset it to start from scratch."
        else:
            where = (f"results_dir '{results_dir}' already holds a training checkpoint of another model "
                     f"({os.path.basename(resume)})")
            fix = (f"Train into a new results_dir, or delete '{results_dir}' to start over (train resumes by itself "
                   "from the checkpoints in its results_dir).")
        raise UserError(f"{where}: {other}, but this run builds {this} ({len(differ)} weights differ, e.g. "
                        f"{differ[0]}), so training cannot resume from it. {fix}")
    epochs_done, global_step = progress(payload)
    return {"epochs_done": epochs_done, "global_step": global_step, "meta": meta, "payload": payload}


def _already_finished(cfg: DictConfig, results_dir: str, resume: str, state: dict) -> dict:
    """A re-run of a finished training: report its results, touch nothing (logs, curves, checkpoints)."""
    meta = state["meta"]
    print(f"Training in {results_dir} already finished: {state['epochs_done']} of {cfg.train.num_epochs} epochs "
          f"done ({resume}). Nothing to train; raise train.num_epochs to train longer, or use a new results_dir "
          "to start over.")
    best = os.path.join(results_dir, BEST)
    best_miou = None
    if io.exists(best):  # its meta holds the best val_miou
        from segformer_tao.engine.checkpoint import load_checkpoint

        best_miou = (load_checkpoint(best, cfg.get("encryption_key"), own=True,
                                    strict=bool(cfg.get("encryption_strict"))).get("meta") or {}).get("val_miou")
    metrics = {"val_miou": meta.get("val_miou"), "best_val_miou": best_miou, "epochs": state["epochs_done"],
               "global_step": state["global_step"], "already_finished": True}
    from segformer_tao.ranks import is_primary  # no processes were launched: rank 0 unless a launcher made this one

    return {"metrics": metrics, "artifacts": _artifacts(results_dir, io.exists(best)),
            "is_global_zero": is_primary()}


def _float(value) -> float | None:
    return None if value is None else float(value)
