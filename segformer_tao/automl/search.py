"""`segformer train` as an AutoML study: Optuna trials, each a normal train job in ``<results_dir>/trials/<n>/``.

Layout of the train results dir (``cfg.train.results_dir``)::

    automl_study.journal         Optuna study (journal file; automl.storage=postgresql://... for many hosts)
    trials/<n>/                  one train job per trial: experiment.yaml, job.json, status.json, checkpoints
                                 (+ trial_spec.yaml and train.log when trials run as child processes)
    best_model/                  best trial's segformer_model_best.pth + experiment.yaml (its spec)
    automl_results.json / .csv   every trial: number, state, val_miou, params, trial dir
    automl_val_miou.png, automl_importances.png

Re-running the same command resumes: finished (complete or pruned) trials are kept, a trial that was running
when the process died is retried with the same parameters in its own directory (training resumes from its
latest checkpoint), and only the missing trials run.

Scale: ``automl.parallel_trials`` slots run trials as ``segformer train`` child processes (see workers.py), and
workers started with the same command on several hosts share one study through ``automl.storage``: each worker
asks the study for the next trial until ``automl.num_trials`` are finished or running anywhere, waits for the
others' trials (re-running those whose worker died, detected by Optuna's heartbeat), then writes the same
reports from the shared study into its own results dir, and best_model/ when it can reach the best trial's dir
(a shared filesystem, or the worker that ran it).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from segformer_tao.automl import storage as st
from segformer_tao.automl import workers
from segformer_tao.automl.pruning import PruningCallback
from segformer_tao.automl.report import SURPLUS, write_report
from segformer_tao.automl.space import Param, build_space, load_train_schema, sample
from segformer_tao.config.provenance import source_of
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")
STUDY_NAME = st.STUDY_NAME
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ALIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)

REDUCTION_FACTOR = 3  # Hyperband / ASHA keep the best third at each rung
POLL_S = 2.0  # how often a worker with nothing to start looks again at the shared study
_experimental_ok = st.warnings_off


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


# The sampler's random start: a third of the trials (RANDOM_START_SHARE), at least 1, at most MAX_RANDOM_START.
RANDOM_START_SHARE, MAX_RANDOM_START = 3, 10


def build_sampler(cfg: DictConfig) -> optuna.samplers.BaseSampler:
    """GP or TPE (see sampler_name); Hyperband/ASHA only add a pruner. A third of the trials start at random."""
    trials = int(cfg.automl.num_trials)
    seed, startup = int(cfg.automl.seed), max(1, min(MAX_RANDOM_START, trials // RANDOM_START_SHARE))
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


def open_study(cfg: DictConfig, out_dir: str, space: list[Param]) -> optuna.Study:
    """Create or load the study (refusing one made with another search space).

    With the results-dir storage one process owns the study, so trials left running by a dead process are
    retried; with an RDB, Optuna's heartbeat finds them instead (another worker may still be running them).
    """
    url = cfg.automl.storage or None
    storage = st.open_storage(url, out_dir, int(cfg.automl.heartbeat_interval))
    st.check_space(storage, space, st.mask_url(url) if url else out_dir)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                                sampler=build_sampler(cfg), pruner=build_pruner(cfg))
    study.set_user_attr(st.SPACE_ATTR, st.describe_space(space))
    if not url:
        with _experimental_ok():
            retry = RetryHeartbeatStaleTrialCallback(max_retry=st.MAX_RETRY)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            with _experimental_ok():
                retry(study, storage.get_trial(t._trial_id))
            log.info("AutoML: trial %d was interrupted; it is retried with the same parameters", t.number)
    return study


def preflight(cfg: DictConfig) -> None:
    """Everything that can refuse a search before its results dir is touched: keys, devices, the storage (driver,
    server, password) and the stored study's search space. Raises UserError; writes nothing in the results dir."""
    from segformer_tao.jobs import action_results_dir

    _check(cfg)
    sampler_name(cfg)
    workers.plan_slots(cfg)
    space = build_space(cfg, load_train_schema())
    out_dir = os.path.abspath(action_results_dir("train", cfg))
    url = cfg.automl.storage or None
    storage = st.open_storage(url, out_dir, int(cfg.automl.heartbeat_interval), create=False)
    if storage is not None:
        st.check_space(storage, space, st.mask_url(url) if url else out_dir)


def _origin(t: optuna.trial.FrozenTrial) -> int:
    """The trial number a retried trial retries (its directory and checkpoints), else its own number."""
    with _experimental_ok():
        history = RetryHeartbeatStaleTrialCallback.retry_history(t)
    return history[0] if history else t.number


def trial_dir_of(trial: optuna.Trial, out_dir: str) -> str:
    """``trials/<n>``, where a retried trial keeps the directory (and checkpoints) of the trial it retries: the
    one that trial recorded when this host can reach it (the same results dir, or another worker's on a shared
    filesystem), else ``trials/<n>`` here (the retry then starts from scratch)."""
    origin = _origin(trial.study._storage.get_trial(trial._trial_id))
    if origin != trial.number:
        first = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == origin)
        recorded = first.user_attrs.get("trial_dir")
        if recorded and os.path.isdir(recorded):
            return recorded
    return os.path.join(out_dir, "trials", str(origin))


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


def _own_devices(cfg: DictConfig) -> str:
    """What a trial trained in this process runs on, as a Slot describes it."""
    import torch

    if torch.cuda.is_available():
        ids = [int(g) for g in cfg.train.gpu_ids or [0]]
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"gpu {visible.split(',')[ids[0]] if visible else ids[0]}"
    return f"cpu x{torch.get_num_threads()} threads"


def _start_trial(trial: optuna.Trial, cfg: DictConfig, space: list[Param], out_dir: str,
                 devices: str) -> tuple[str, dict, DictConfig]:
    """Sample the trial's values and record them, its directory, host and devices on the trial."""
    from segformer_tao.engine.tracking import trial_tracking

    trial_dir = trial_dir_of(trial, out_dir)
    values = sample(trial, space, cfg)
    for key, value in (("config", values), ("trial_dir", trial_dir), ("host", workers.host_id()),
                       ("devices", devices)):
        trial.set_user_attr(key, value)
    tcfg = trial_config(cfg, values, trial_dir)
    trial_tracking(tcfg, trial.number, out_dir)  # in-process and child trials: one W&B group / MLflow experiment
    return trial_dir, values, tcfg


def run_child_trial(trial: optuna.Trial, cfg: DictConfig, space: list[Param], out_dir: str,
                    slot: workers.Slot) -> float:
    """Objective: train one trial as a ``segformer train`` child process on ``slot``."""
    trial_dir, values, tcfg = _start_trial(trial, cfg, space, out_dir, slot.describe())
    os.makedirs(trial_dir, exist_ok=True)
    tcfg.dataset.segment.check = "off"  # this search checked the dataset once already (as in-process trials skip it)
    where = {"url": cfg.automl.storage or None, "out_dir": out_dir, "heartbeat_s": int(cfg.automl.heartbeat_interval)}
    log.info("AutoML trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in values.items()))
    return workers.run_child(trial, tcfg, trial_dir, slot, where)


def trial_callbacks(cfg: DictConfig) -> list:
    """In a trial's child process (`segformer train` started by a search): the callback reporting to its trial."""
    trial = workers.child_trial(build_pruner(cfg))
    return [PruningCallback(trial)] if trial is not None else []


def run_trial(trial: optuna.Trial, cfg: DictConfig, space: list[Param], out_dir: str) -> float:
    """Objective: train one trial as a normal job and return its best val_miou (raises TrialPruned if pruned)."""
    from segformer_tao.engine.trainer import train_model
    from segformer_tao.jobs import Job, prepare_results_dir
    from segformer_tao.ranks import is_primary
    from segformer_tao.status import action_status

    trial_dir, values, tcfg = _start_trial(trial, cfg, space, out_dir, _own_devices(cfg))
    prepare_results_dir("train", tcfg)
    job = Job.start("train", tcfg, trial_dir)
    job.record["automl_trial"] = {"number": trial.number, "params": values}
    log.info("AutoML trial %d (%s): %s", trial.number, trial_dir, ", ".join(f"{k}={v}" for k, v in values.items()))
    pruning = PruningCallback(trial)
    # status.json as in any train job, its last line written before job.finish releases the trial dir's lock
    try:
        with action_status(trial_dir, "train", enabled=is_primary()) as outcome:
            result = train_model(tcfg, trial_dir, callbacks=[pruning])
            if pruning.pruned:
                outcome["message"] = (f"Train stopped early: AutoML pruned this trial after epoch "
                                      f"{max(pruning.reported)}.")
    except BaseException as e:
        job.finish("failed", error=str(e) if isinstance(e, UserError) else type(e).__name__)
        raise
    result.pop("is_global_zero", None)
    metrics, artifacts = result["metrics"], result["artifacts"]
    if artifacts.get("best_checkpoint"):
        trial.set_user_attr("best_checkpoint", artifacts["best_checkpoint"])
    job.finish("pruned" if pruning.pruned else "done", metrics=metrics, artifacts=artifacts)
    if pruning.pruned:
        raise optuna.TrialPruned(f"pruned at epoch {max(pruning.reported)}")
    best = metrics.get("best_val_miou")
    return float(best if best is not None else metrics["val_miou"])


def _check(cfg: DictConfig) -> None:
    if int(cfg.train.validation_interval) > trial_epochs(cfg):
        raise UserError(f"train.validation_interval={cfg.train.validation_interval} is larger than the "
                        f"{trial_epochs(cfg)} epochs of each AutoML trial, so no trial would report val_miou. "
                        "Lower train.validation_interval or raise automl.max_epochs.")


def _next_trial(study: optuna.Study, target: int) -> optuna.Trial | str | None:
    """A trial to run now, "wait" while trials run elsewhere (they may die and come back), or None when done."""
    with _experimental_ok():
        fail_stale_trials(study)  # RDB: trials of dead workers -> FAIL + a WAITING retry
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    alive = {_origin(t) for t in trials if t.state in ALIVE}
    if len(alive) >= target and not any(t.state == TrialState.WAITING for t in trials):
        return "wait" if any(t.state == TrialState.RUNNING for t in trials) else None
    trial = study.ask()
    # Workers that ask at the same moment for the last trial both get one: the later number gives way.
    mine = _origin(study._storage.get_trial(trial._trial_id))
    earlier = {_origin(t) for t in study.get_trials(deepcopy=False)
               if t.number < trial.number and t.state in ALIVE and not t.user_attrs.get(SURPLUS)}
    if len(earlier - {mine}) >= target:
        trial.set_user_attr(SURPLUS, True)
        study.tell(trial, state=TrialState.FAIL)
        return "wait"
    return trial


def _run_one(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> None:
    from optuna.storages._heartbeat import get_heartbeat_thread  # the heartbeat Study.optimize runs per trial

    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            return
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
    # skip_if_finished: a worker stalled past 3 heartbeats may find its trial failed (and retried) by another one
    study.tell(trial, value, skip_if_finished=True)


def optimize(study: optuna.Study, target: int, objectives: list[Callable[[optuna.Trial], float]],
             timeout: float | None) -> None:
    """Run trials with one thread per objective (slot) until ``target`` trials are finished in the study.

    A failing trial stops new trials from starting; the running ones finish, then its error is raised.
    """
    deadline = time.time() + timeout if timeout else None
    lock, stop = threading.Lock(), threading.Event()

    def slot_loop(objective: Callable[[optuna.Trial], float]) -> None:
        while not stop.is_set():
            with lock:
                nxt = None if deadline and time.time() > deadline else _next_trial(study, target)
            if nxt is None:
                return
            if nxt == "wait":
                stop.wait(POLL_S)
                continue
            try:
                _run_one(study, nxt, objective)
            except BaseException:
                stop.set()
                raise

    if len(objectives) == 1:
        slot_loop(objectives[0])
        return
    with ThreadPoolExecutor(len(objectives), thread_name_prefix="automl-slot") as pool:
        futures = [pool.submit(slot_loop, o) for o in objectives]
    for f in futures:
        f.result()  # re-raise the first slot's error


def run(cfg: DictConfig) -> dict:
    """Run (or resume, or join) the study; returns the best trial's val_miou and checkpoint."""
    from segformer_tao.logs import redact_in_logs

    redact_in_logs([st.url_password(cfg.automl.storage) or ""])
    _check(cfg)
    sampler = sampler_name(cfg)  # a bad sampler choice fails before any trial starts
    slots = workers.plan_slots(cfg)
    out_dir = str(cfg.train.results_dir)
    space = build_space(cfg, load_train_schema())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, out_dir, space)
    target = int(cfg.automl.num_trials)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    where = st.mask_url(cfg.automl.storage) if cfg.automl.storage else st.local_path(out_dir)
    if not cfg.automl.storage and source_of(cfg, "automl.heartbeat_interval") is not None:
        log.info("AutoML: automl.heartbeat_interval=%s has no effect without automl.storage (one process owns a "
                 "results-dir study and retries its interrupted trials when re-run)", cfg.automl.heartbeat_interval)
    log.info("AutoML: %s (%s sampler) over %s; %d/%d trials finished, %d epochs each; %s; study in %s",
             cfg.automl.algorithm, sampler, [p.key for p in space], finished, target, trial_epochs(cfg),
             f"{len(slots)} trials at a time ({', '.join(s.describe() for s in slots)})" if slots
             else "one trial at a time in this process", where)
    if slots:
        objectives = [lambda t, s=s: run_child_trial(t, cfg, space, out_dir, s) for s in slots]
    else:
        objectives = [lambda t: run_trial(t, cfg, space, out_dir)]
    optimize(study, target, objectives, cfg.automl.timeout)
    return write_report(study, out_dir)
