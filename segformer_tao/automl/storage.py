"""Where an AutoML study lives, and how its URL is shown.

* default: Optuna's journal file ``<results_dir>/automl_study.journal``, safe for the trial child processes of one
  search on one host (``automl.parallel_trials``); a results dir from an older version keeps its
  ``automl_study.db`` (SQLite);
* ``automl.storage=postgresql://user:password@host/db`` (or ``mysql+pymysql://...``): an RDB shared by workers on
  many hosts, with Optuna's heartbeat so that a dead worker's trial is failed and retried.

A storage URL's password is never shown: every message, log line and file gets :func:`mask_url`'s form.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import warnings

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from segformer_tao import redact
from segformer_tao.config.compose import mask_url_passwords
from segformer_tao.errors import UserError

STUDY_NAME = "segformer_automl"
JOURNAL_FILE = "automl_study.journal"
LEGACY_DB = "automl_study.db"
SPACE_ATTR = "search_space"
MAX_RETRY = 2  # a trial whose worker died is retried at most twice
# driver module -> extra that installs it, per SQLAlchemy dialect
_DRIVERS = {"postgresql": ("psycopg", "automl-pg"), "mysql": ("pymysql", "automl-mysql")}


def mask_url(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``: the whole of ``text`` when it is a URL (its
    password may hold spaces, '/' or '#'), else every URL in it."""
    text = str(text)
    return redact.mask_url_value(text) if redact.is_url(text) else mask_url_passwords(text)


def url_password(url: str | None) -> str | None:
    """The password inside a storage URL (for log redaction), or None."""
    found = redact.url_passwords(str(url or "")) if redact.is_url(str(url or "")) else []
    return found[0] if found and "@" in str(url) else None


def local_path(out_dir: str) -> str:
    """The study file in the results dir: the legacy SQLite file when present, else the journal file."""
    legacy = os.path.join(out_dir, LEGACY_DB)
    return legacy if os.path.isfile(legacy) else os.path.join(out_dir, JOURNAL_FILE)


def rdb_url(url: str) -> str:
    """``postgresql://`` and ``mysql://`` name psycopg2/MySQLdb in SQLAlchemy; use psycopg 3/PyMySQL instead."""
    for dialect, (module, _) in _DRIVERS.items():
        if url.startswith(f"{dialect}://"):
            return f"{dialect}+{module}://" + url[len(dialect) + 3:]
    return url


def _check_driver(url: str) -> None:
    scheme = url.split(":", 1)[0]
    dialect, _, driver = scheme.partition("+")
    module, extra = _DRIVERS.get(dialect, (None, None))
    if not module or driver not in ("", module):
        return  # another driver named explicitly: SQLAlchemy's own error says what is missing
    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(f"automl.storage='{mask_url(url)}' needs the {module} driver, which is not installed: "
                        f"`pip install \"segformer_tao[{extra}]\"` on every worker.") from None


def open_storage(url: str | None, out_dir: str, heartbeat_s: int, create: bool = True) -> optuna.storages.BaseStorage:
    """The study's storage. ``url`` None: the results-dir file (``create=False``: None when it does not exist yet).

    RDB storages record a heartbeat every ``heartbeat_s`` seconds per running trial; a trial silent for
    3 x ``heartbeat_s`` is failed and re-queued with the same parameters (at most MAX_RETRY times).
    """
    if not url:
        path = local_path(out_dir)
        if not create and not os.path.isfile(path):
            return None
        if path.endswith(".db"):
            return RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})
        return JournalStorage(JournalFileBackend(path))
    _check_driver(url)
    try:
        with warnings_off():
            return RDBStorage(rdb_url(url), heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                              engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # noqa: BLE001 - SQLAlchemy/drivers raise many types for a bad URL or unreachable server
        detail = mask_url(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        password = url_password(url)
        if password:
            detail = detail.replace(password, "***")
        raise UserError(f"automl.storage='{mask_url(url)}' cannot be opened ({detail}). Check that the database "
                        "server is running and reachable from this host and that the user, password and database "
                        "name are right (an SQLAlchemy URL such as postgresql://user:password@host:5432/db), or "
                        "unset automl.storage to keep the study in the results dir.") from None


@contextlib.contextmanager
def warnings_off():
    """Heartbeats and retries are marked experimental in Optuna; we rely on (and test) their behaviour."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def describe_space(space: list) -> list[dict]:
    """The searched parameters as JSON-able dicts (stored on the study to refuse a different search later)."""
    return json.loads(json.dumps([dataclasses.asdict(p) for p in space]))


def check_space(storage: optuna.storages.BaseStorage, space: list, where: str) -> None:
    """Raise UserError when the study in ``storage`` was created with another search space."""
    try:
        study_id = storage.get_study_id_from_name(STUDY_NAME)
    except KeyError:
        return  # a new study
    stored = storage.get_study_user_attrs(study_id).get(SPACE_ATTR)
    if stored is None:
        return  # a study from an older version: nothing recorded to compare with
    now = {p["key"]: p for p in describe_space(space)}
    old = {p["key"]: p for p in stored}
    if now == old:
        return
    parts = [f"{label}: {', '.join(sorted(keys))}" for label, keys in (
        ("only in the stored study", set(old) - set(now)), ("only in this experiment", set(now) - set(old)),
        ("different range or choices", {k for k in set(now) & set(old) if now[k] != old[k]})) if keys]
    raise UserError(f"The AutoML study in {where} was created with another search space ({'; '.join(parts)}). "
                    "Its trials cannot guide this search. Use the same spec and automl.* keys as the workers that "
                    "created it, or start a new study: a new results_dir, or another automl.storage database.")
