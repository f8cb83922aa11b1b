"""`segformer train` as an AutoML study: Optuna trials, each a normal train job in ``<results_dir>/trials/<n>/``.

Layout of the train results dir (``cfg.train.results_dir``)::

    automl_study.db              Optuna study (SQLite unless automl.storage names an RDB URL)
    trials/<n>/                  one train job per trial: experiment.yaml, job.json, status.json, checkpoints
    best_model/                  best trial's segformer_model_best.pth + experiment.yaml (its spec)
    automl_results.json / .csv   every trial: number, state, val_miou, params, trial dir
    automl_val_miou.png, automl_importances.png

Re-running the same command resumes: finished (complete or pruned) trials are kept, a trial that was running
when the process died is retried with the same parameters in its own directory (training resumes from its
latest checkpoint), and only the missing trials run.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import warnings

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from segformer_tao.automl.pruning import PruningCallback
from segformer_tao.automl.report import write_report
from segformer_tao.automl.space import Param, build_space, load_train_schema, sample
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")
STUDY_NAME = "segformer_automl"
DB_FILE = "automl_study.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

REDUCTION_FACTOR = 3  # Hyperband / ASHA keep the best third at each rung
HEARTBEAT_S, GRACE_S = 60, 180  # an RDB trial silent for GRACE_S is taken as dead and retried
MAX_RETRY = 2


@contextlib.contextmanager
def _experimental_ok():
    """Heartbeats and trial retries are marked experimental in Optuna; we rely on (and test) their behaviour."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def trial_epochs(cfg: DictConfig) -> int:
    """Epochs per trial: automl.max_epochs, else train.num_epochs."""
    return int(cfg.automl.max_epochs or cfg.train.num_epochs)


def sampler_name(cfg: DictConfig) -> str:
    """``gp`` or ``tpe`` for automl.sampler (``auto``: gp for bayesian when scipy is installed, else tpe)."""
    choice, algorithm = str(cfg.automl.sampler), str(cfg.automl.algorithm)
    has_scipy = importlib.util.find_spec("scipy") is not None
    if choice == "gp":
        if algorithm != "bayesian":
            raise UserError(f"automl.sampler=gp cannot be used with automl.algorithm={algorithm}: Optuna's GP sampler "
                            "does not learn from pruned trials. Use automl.algorithm=bayesian, or automl.sampler=tpe.")
        if not has_scipy:
            raise UserError("automl.sampler=gp needs scipy, which is not installed: `pip install scipy` (or "
                            "`pip install \"segformer_tao[automl]\"`), or use automl.sampler=tpe.")
        return "gp"
    if choice == "auto":
        return "gp" if algorithm == "bayesian" and has_scipy else "tpe"
    return "tpe"


def build_sampler(cfg: DictConfig) -> optuna.samplers.BaseSampler:
    """GP or TPE (see sampler_name); Hyperband/ASHA only add a pruner. A third of the trials start at random."""
    seed, startup = int(cfg.automl.seed), max(1, min(10, int(cfg.automl.num_trials) // 3))
    if sampler_name(cfg) == "gp":
        with _experimental_ok():
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def build_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    """bayesian: no pruning; hyperband / asha: Optuna's pruners with epochs as the resource."""
    algorithm = str(cfg.automl.algorithm)
    first = int(cfg.train.validation_interval)  # the first epoch that reports a val_miou
    if algorithm == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=trial_epochs(cfg),
                                              reduction_factor=REDUCTION_FACTOR)
    if algorithm == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=REDUCTION_FACTOR)
    return optuna.pruners.NopPruner()


def open_study(cfg: DictConfig, out_dir: str) -> optuna.Study:
    """Create or load the study; with the default SQLite file, trials left running by a dead process are retried."""
    default = not cfg.automl.storage
    url = str(cfg.automl.storage or f"sqlite:///{os.path.join(out_dir, DB_FILE)}")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with _experimental_ok():
            retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                 grace_period=GRACE_S, heartbeat_stale_trial_callback=retry)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy raises many types for a bad URL or unreachable server
        raise UserError(f"automl.storage='{url}' cannot be opened ({type(e).__name__}: {str(e).splitlines()[0]}). "
                        "Use an SQLAlchemy URL such as postgresql://user@host/db, or unset it for SQLite in "
                        "the results dir.") from e
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                                sampler=build_sampler(cfg), pruner=build_pruner(cfg))
    if default:  # one process owns a results-dir SQLite study, so anything still RUNNING died with its process
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            with _experimental_ok():
                retry(study, storage.get_trial(t._trial_id))
            log.info("AutoML: trial %d was interrupted; it is retried with the same parameters", t.number)
    return study


def trial_dir_of(trial: optuna.Trial, out_dir: str) -> str:
    """``trials/<n>``, where a retried trial keeps the directory (and checkpoints) of the trial it retries."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with _experimental_ok():
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    return os.path.join(out_dir, "trials", str(history[0] if history else trial.number))


def trial_config(cfg: DictConfig, values: dict, trial_dir: str) -> DictConfig:
    """A copy of the user's experiment with the trial's values, its epochs and results dir (a plain train job)."""
    from segformer_tao.config import validate

    tcfg = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(tcfg, key, value, merge=False)
    tcfg.train.num_epochs = trial_epochs(cfg)
    tcfg.train.results_dir = trial_dir
    tcfg.automl_policy = "off"  # rerunning a trial's experiment.yaml trains that trial, not a new search
    validate(tcfg)
    return tcfg


def run_trial(trial: optuna.Trial, cfg: DictConfig, space: list[Param], out_dir: str) -> float:
    """Objective: train one trial as a normal job and return its best val_miou (raises TrialPruned if pruned)."""
    from segformer_tao.engine.tracking import trial_tracking
    from segformer_tao.engine.trainer import train_model
    from segformer_tao.jobs import Job, is_primary, prepare_results_dir
    from segformer_tao.status import action_status

    trial_dir = trial_dir_of(trial, out_dir)
    values = sample(trial, space, cfg)
    trial.set_user_attr("config", values)
    trial.set_user_attr("trial_dir", trial_dir)
    tcfg = trial_config(cfg, values, trial_dir)
    trial_tracking(tcfg, trial.number, out_dir)
    prepare_results_dir("train", tcfg)
    job = Job.start("train", tcfg, trial_dir)
    job.record["automl_trial"] = {"number": trial.number, "params": values}
    log.info("AutoML trial %d (%s): %s", trial.number, trial_dir, ", ".join(f"{k}={v}" for k, v in values.items()))
    pruning = PruningCallback(trial)
    with action_status(trial_dir, "train", enabled=is_primary()) as outcome:  # status.json as in any train job
        try:
            result = train_model(tcfg, trial_dir, callbacks=[pruning])
        except BaseException as e:
            job.finish("failed", error=str(e) if isinstance(e, UserError) else type(e).__name__)
            raise
        result.pop("is_global_zero", None)
        metrics, artifacts = result["metrics"], result["artifacts"]
        if artifacts.get("best_checkpoint"):
            trial.set_user_attr("best_checkpoint", artifacts["best_checkpoint"])
        job.finish("pruned" if pruning.pruned else "done", metrics=metrics, artifacts=artifacts)
        if pruning.pruned:
            outcome["message"] = f"Train stopped early: AutoML pruned this trial after epoch {max(pruning.reported)}."
    if pruning.pruned:
        raise optuna.TrialPruned(f"pruned at epoch {max(pruning.reported)}")
    best = metrics.get("best_val_miou")
    return float(best if best is not None else metrics["val_miou"])


def _check(cfg: DictConfig) -> None:
    if int(cfg.train.validation_interval) > trial_epochs(cfg):
        raise UserError(f"train.validation_interval={cfg.train.validation_interval} is larger than the "
                        f"{trial_epochs(cfg)} epochs of each AutoML trial, so no trial would report val_miou. "
                        "Lower train.validation_interval or raise automl.max_epochs.")


def run(cfg: DictConfig) -> dict:
    """Run (or resume) the study in cfg.train.results_dir; returns the best trial's val_miou and checkpoint."""
    _check(cfg)
    sampler = sampler_name(cfg)  # a bad sampler choice fails before any trial starts
    out_dir = str(cfg.train.results_dir)
    space = build_space(cfg, load_train_schema())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, out_dir)
    target = int(cfg.automl.num_trials)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    log.info("AutoML: %s (%s sampler) over %s; %d/%d trials finished, %d epochs each; study in %s",
             cfg.automl.algorithm, sampler, [p.key for p in space], finished, target, trial_epochs(cfg),
             out_dir)
    if finished < target:
        study.optimize(lambda t: run_trial(t, cfg, space, out_dir), n_trials=target - finished,
                       timeout=cfg.automl.timeout, catch=(),
                       callbacks=[optuna.study.MaxTrialsCallback(target, states=FINISHED)])
    return write_report(study, out_dir)
