"""``status.json``: one JSON line per event, in TAO's StatusLogger schema, so TAO's services, UI and AutoML
controller (``StatusParser`` in nvidia_tao_core) can follow our jobs.

Every line has TAO's ``date`` (M/D/YYYY, local time), ``time`` (H:M:S, local time), ``status``
(STARTED, RUNNING, SUCCESS, FAILURE, SKIPPED; ours: PREEMPTED), ``verbosity`` (INFO, ERROR, ...) and ``message``.
Metrics go into
the three dictionaries TAO's parser reads, keyed by the line's ``epoch``: ``graphical`` (curves: losses, lr),
``kpi`` (scores: val_miou, test_miou, ...) and ``categorical`` (per-class values: ``{metric: {class: value}}``).
TAO's progress fields are ``epoch``, ``max_epoch``, ``step``, ``time_per_epoch`` and ``eta`` (both
``H:MM:SS.ffffff`` strings, as TAO writes them). Our own extras use names TAO does not: ``timestamp`` (ISO 8601,
UTC), ``eta_s`` and ``elapsed_s`` (seconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from segformer_tao import io
from segformer_tao.errors import Preempted, UserError, explain_exception
from segformer_tao.redact import redact

log = logging.getLogger("segformer_tao")
STATUS_FILE = "status.json"
STARTED, RUNNING, SUCCESS, FAILURE = "STARTED", "RUNNING", "SUCCESS", "FAILURE"  # TAO also has SKIPPED
PREEMPTED = "PREEMPTED"  # ours: stopped by a preemption signal after a resumable checkpoint (docs/clusters.md)
ACTION_NAMES = {"train": "Train", "evaluate": "Evaluation", "inference": "Inference", "export": "Export",
                "quantize": "Quantization", "gen_trt_engine": "TensorRT engine generation"}


def duration(seconds: float) -> str:
    """``H:MM:SS.ffffff`` as TAO writes ``time_per_epoch`` and ``eta`` (its AutoML controller parses the
    part before the dot with ``%H:%M:%S``)."""
    return str(timedelta(seconds=max(0.0, float(seconds))))


def _number(value: Any) -> float | int | str:
    """A JSON-safe number: NaN/inf become the strings TAO's parser skips ("nan", "inf", "-inf")."""
    if isinstance(value, bool | int):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _clean(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop None (a metric with no value this time, e.g. the IoU of an absent class)."""
    return {k: _number(v) for k, v in (values or {}).items() if v is not None}


def status_line(status: str, message: str, *, verbosity: str = "INFO", kpi: Mapping[str, Any] | None = None,
                graphical: Mapping[str, Any] | None = None,
                categorical: Mapping[str, Mapping[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """One status.json record. ``fields``: TAO's progress fields (epoch, max_epoch, step, time_per_epoch, eta)
    and our extras; empty kpi/graphical/categorical are left out, as TAO's StatusLogger does."""
    utc = datetime.now(UTC)
    now = utc.astimezone()  # TAO's date and time are local
    line: dict[str, Any] = {
        "date": f"{now.month}/{now.day}/{now.year}", "time": f"{now.hour}:{now.minute}:{now.second}",
        "timestamp": utc.isoformat(timespec="seconds"), "status": status, "verbosity": verbosity,
        "message": message, **{k: v for k, v in fields.items() if v is not None},
    }
    cat = {metric: _clean(per_class) for metric, per_class in (categorical or {}).items()}
    for name, values in (("graphical", _clean(graphical)), ("kpi", _clean(kpi)),
                         ("categorical", {m: v for m, v in cat.items() if v})):
        if values:
            line[name] = values
    return line


def write_status(results_dir: str, status: str, message: str, **kwargs: Any) -> dict[str, Any]:
    """Append one line (see :func:`status_line`) to ``<results_dir>/status.json``; returns the record."""
    record = status_line(status, redact(message), **kwargs)
    io.append_line(os.path.join(results_dir, STATUS_FILE), json.dumps(record))
    return record


def read_status(results_dir: str) -> list[dict[str, Any]]:
    """The records of ``<results_dir>/status.json`` in order ([] when there is none)."""
    path = os.path.join(results_dir, STATUS_FILE)
    if not io.exists(path):
        return []
    return [json.loads(line) for line in io.read_text(path).splitlines() if line.strip()]


def failure_message(action: str, error: BaseException) -> str:
    """What the FAILURE line says: the user error's paragraph (as the CLI prints it), else the error's kind."""
    if isinstance(error, KeyboardInterrupt):
        return f"{ACTION_NAMES.get(action, action)} was interrupted."
    user = error if isinstance(error, UserError) else explain_exception(error)
    if user is not None:
        return str(user)
    # An internal error's text may quote anything (paths, values); its kind is enough here, details via --debug.
    return f"{type(error).__name__}: internal error in segformer_tao; rerun with --debug for the traceback."


def _write_quietly(results_dir: str, status: str, message: str, **kwargs: Any) -> None:
    """Action outcome lines never decide an action's fate: e.g. a full disk is reported by the action itself (and
    job.json), not by a traceback from here that would hide it."""
    try:
        write_status(results_dir, status, message, **kwargs)
    except OSError as e:
        log.warning("could not write %s to %s: %s", status, os.path.join(results_dir, STATUS_FILE), e)


@contextlib.contextmanager
def action_status(results_dir: str, action: str, enabled: bool = True) -> Iterator[dict[str, str]]:
    """STARTED before the block, SUCCESS after it, FAILURE (with :func:`failure_message`) if it raises; the
    exception propagates. The block may set ``["message"]`` of the yielded dict to say more on the SUCCESS line.
    ``enabled=False`` (DDP ranks other than 0) writes nothing."""
    outcome = {"message": f"{ACTION_NAMES.get(action, action)} finished successfully."}
    if enabled:
        _write_quietly(results_dir, STARTED, f"Starting segformer {action}.")
    try:
        yield outcome
    except Preempted as e:
        if enabled:
            _write_quietly(results_dir, PREEMPTED, str(e), verbosity="WARNING", epoch=e.epoch, step=e.step)
        raise
    except BaseException as e:
        if enabled:
            _write_quietly(results_dir, FAILURE, failure_message(action, e), verbosity="ERROR")
        raise
    if enabled:
        _write_quietly(results_dir, SUCCESS, outcome["message"])
