"""Experiment tracking through Lightning's loggers: Weights & Biases (TAO's ``wandb.*`` keys) and MLflow
(``mlflow.*``).

Both receive what Lightning logs (train_loss, val_loss, val_miou per validation) plus the learning rate once per
epoch (the values status.json records), the composed config without secrets, and, at the end, the final
checkpoints' paths. A tracker that cannot start (package missing, no credentials, server unreachable) prints one
note and training goes on: tracking is never the reason a training run fails.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import netrc
import os
from typing import Any
from urllib.parse import urlparse

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from segformer_tao import io as sio
from segformer_tao import redact

log = logging.getLogger("segformer_tao")
# WANDB_MODE values that never talk to a server (offline writes the run under results_dir/wandb for `wandb sync`).
WANDB_LOCAL_MODES = ("offline", "dryrun")
DEFAULT_MLFLOW_DB = "mlflow.db"
RUNS_FILE = "tracking_runs.json"  # tracker run ids of the training in a results dir, for resume


def redact_urls(value: Any) -> Any:
    """Secrets out of a (nested) config container or string: ``scheme://user:***@host``, see :mod:`redact`."""
    return redact.strip_secrets(value)


def config_without_secrets(cfg: DictConfig) -> dict:
    """The composed config as a plain dict: no encryption key, no credentials inside URLs."""
    return redact.strip_secrets(OmegaConf.to_container(cfg, resolve=True))


_NOTED: set[str] = set()


def _note(message: str) -> None:
    """Each note once per process (AutoML trains many trials in one process)."""
    if message not in _NOTED:
        _NOTED.add(message)
        log.warning("note: %s", message)


# ------------------------------------------------------------------------------------------ Weights & Biases
def _wandb_has_credentials() -> bool:
    """An API key in the environment, an identity token file, or a netrc entry for the W&B host (`wandb login`)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return bool(os.path.isfile(path) and netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def _previous_runs(results_dir: str) -> dict:
    """The tracker run ids an earlier training in this results dir recorded (resume continues those runs)."""
    try:
        with open(os.path.join(results_dir, RUNS_FILE), encoding="utf-8") as f:
            runs = json.load(f)
        return runs if isinstance(runs, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(results_dir: str, tracker: str, record: dict) -> None:
    sio.write_json(os.path.join(results_dir, RUNS_FILE), {**_previous_runs(results_dir), tracker: record})


def wandb_logger(cfg: DictConfig, results_dir: str, resuming: bool = False) -> Logger | None:
    """A started WandbLogger for ``cfg.wandb``, or None (with a note saying why) when W&B cannot log.

    A resumed training continues the W&B run of the run it resumes (unless wandb.run_id names one)."""
    wb = cfg.wandb
    if not wb.enable:
        return None
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode == "disabled":
        _note("wandb.enable=true but WANDB_MODE=disabled: not logging to Weights & Biases.")
        return None
    if importlib.util.find_spec("wandb") is None:
        _note("wandb.enable=true but the `wandb` package is not installed: not logging to Weights & Biases "
              "(pip install 'segformer_tao[wandb]', or wandb.enable=false to silence this note).")
        return None
    if mode not in WANDB_LOCAL_MODES and not _wandb_has_credentials():
        _note("wandb.enable=true but there are no W&B credentials (WANDB_API_KEY or `wandb login`): not logging to "
              "Weights & Biases. Log in, set WANDB_MODE=offline to keep the run under results_dir/wandb for "
              "`wandb sync`, or set wandb.enable=false to silence this note.")
        return None
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    os.makedirs(results_dir, exist_ok=True)
    kwargs: dict[str, Any] = {
        "project": wb.project, "entity": wb.entity or None, "group": wb.group or None, "tags": list(wb.tags or []),
        "name": wb.name or None, "save_dir": results_dir, "save_code": bool(wb.save_code),
        "sync_tensorboard": bool(wb.sync_tensorboard), "reinit": "finish_previous" if wb.reinit else "default",
        # System metadata holds the command line, which may carry encryption_key=...
        "settings": wandb.Settings(x_disable_meta=True),
    }
    previous = _previous_runs(results_dir).get("wandb", {}).get("id") if resuming else None
    if wb.run_id or previous:
        kwargs.update(id=str(wb.run_id or previous), resume="allow")
    logger = _start(lambda: WandbLogger(**kwargs), "Weights & Biases", "wandb.enable=false")
    if logger is not None:
        _remember(results_dir, "wandb", {"id": logger.experiment.id})
    return logger


# ------------------------------------------------------------------------------------------------- MLflow
def mlflow_tracking_uri(cfg: DictConfig, results_dir: str) -> str:
    """mlflow.tracking_uri, else MLFLOW_TRACKING_URI, else a SQLite file in the results dir."""
    return str(cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
               or f"sqlite:///{os.path.abspath(os.path.join(results_dir, DEFAULT_MLFLOW_DB))}")


def mlflow_logger(cfg: DictConfig, results_dir: str, resuming: bool = False) -> Logger | None:
    """A started MLFlowLogger for ``cfg.mlflow``, or None (with a note) when MLflow cannot log.

    A resumed training continues the MLflow run of the run it resumes (same tracking URI)."""
    ml = cfg.mlflow
    if not ml.enable:
        return None
    if importlib.util.find_spec("mlflow") is None:
        _note("mlflow.enable=true but the `mlflow` package is not installed: not logging to MLflow "
              "(pip install 'segformer_tao[mlflow]').")
        return None
    from pytorch_lightning.loggers import MLFlowLogger

    uri = mlflow_tracking_uri(cfg, results_dir)
    tags = {str(k): str(v) for k, v in (ml.tags or {}).items()}
    previous = _previous_runs(results_dir).get("mlflow", {}) if resuming else {}
    run_id = previous.get("run_id") if previous.get("tracking_uri") == redact_urls(uri) else None
    logger = _start(lambda: MLFlowLogger(experiment_name=ml.experiment_name, run_name=ml.run_name or None,
                                         tracking_uri=uri, tags=tags or None, run_id=run_id),
                    f"MLflow at {redact_urls(uri)}", "mlflow.enable=false")
    if logger is not None:
        _remember(results_dir, "mlflow", {"run_id": logger.run_id, "tracking_uri": redact_urls(uri)})
    return logger


def _start(make, what: str, off: str) -> Logger | None:
    """Build the logger and start its run now, so that a failure is a note here rather than an error mid-fit."""
    try:
        logger = make()
        _ = logger.experiment
        return logger
    except Exception as e:  # noqa: BLE001 - any tracker failure (network, auth, storage) must not stop training
        _note(f"cannot log to {what}: {type(e).__name__}: {redact.redact(str(e)).splitlines()[0] if str(e) else ''}. "
              f"Training goes on without it ({off} silences this note).")
        return None


# --------------------------------------------------------------------------------------------- the trainer
def tracking_loggers(cfg: DictConfig, results_dir: str, resuming: bool = False) -> list[Logger]:
    """The started W&B / MLflow loggers the config asks for, each given the config without secrets.
    ``resuming``: continue the runs recorded in results_dir by the training being resumed."""
    loggers = [lg for lg in (wandb_logger(cfg, results_dir, resuming), mlflow_logger(cfg, results_dir, resuming))
               if lg is not None]
    params = config_without_secrets(cfg) if loggers else {}
    for logger in loggers:
        try:
            _log_config(logger, params)
        except Exception as e:  # noqa: BLE001 - a tracker refusing the config must not stop training
            _note(f"could not log the config to {type(logger).__name__}: {type(e).__name__}.")
    return loggers


def _log_config(logger: Logger, params: dict) -> None:
    """The config as hyper-parameters. MLflow params cannot change once logged: a resumed run whose config
    changed (e.g. a raised train.num_epochs) logs only the keys it lacks and names the others."""
    from pytorch_lightning.loggers import MLFlowLogger

    if not isinstance(logger, MLFlowLogger):
        logger.log_hyperparams(params)
        return
    flat = _flatten(params)  # the keys Lightning's MLFlowLogger logs (a/b/c), values cut at its 250 characters
    logged = logger.experiment.get_run(logger.run_id).data.params
    changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v[:250])
    if changed:
        log.info("MLflow run %s keeps its first values of %s (MLflow params cannot change)", logger.run_id,
                 ", ".join(changed))
    new = {k: v for k, v in flat.items() if k not in logged}
    if new:
        logger.log_hyperparams(new)


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


class LogLearningRate(pl.Callback):
    """The learning rate of the first parameter group at each epoch's end (status.json's ``lr``), sent to the
    tracking loggers only (the CSV log keeps its columns)."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        if lrs and trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({"lr": float(lrs[0])}, step=trainer.global_step)


def finish_tracking(loggers: list[Logger], metrics: dict, artifacts: dict) -> None:
    """Record the final checkpoints' paths and metrics on each run, then close it."""
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    final = {k: v for k, v in artifacts.items() if k.endswith("checkpoint") and v and os.path.exists(v)}
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                best = metrics.get("best_val_miou")
                run.summary.update({**final, **({"best_val_miou": best} if best is not None else {})})
                run.finish()
            elif isinstance(logger, MLFlowLogger):
                for key, path in final.items():
                    logger.experiment.set_tag(logger.run_id, key, path)
        except Exception as e:  # noqa: BLE001 - the model is trained and saved; tracking must not fail the job
            _note(f"could not record the final checkpoint on {type(logger).__name__}: {type(e).__name__}.")


def trial_tracking(tcfg: DictConfig, number: int, study_dir: str) -> None:
    """Make an AutoML trial's runs one per trial inside one W&B group / MLflow experiment (in place).

    W&B: group = wandb.group or ``automl <study_dir>``, name ``<name> trial <n>``, run_id ``<run_id>-trial-<n>``;
    MLflow: the search's tracking URI (one SQLite file for all trials by default), run name ``trial_<n>``.
    """
    wb, ml = tcfg.wandb, tcfg.mlflow
    wb.group = wb.group or f"automl {os.path.abspath(study_dir)}"[-128:]  # W&B caps group names at 128
    wb.name = f"{wb.name or 'segformer'} trial {number}"
    if wb.run_id:
        wb.run_id = f"{wb.run_id}-trial-{number}"
    ml.tracking_uri = mlflow_tracking_uri(tcfg, study_dir)
    ml.run_name = f"{ml.run_name + '_' if ml.run_name else ''}trial_{number}"
