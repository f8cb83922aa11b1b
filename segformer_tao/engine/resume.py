"""Which checkpoint a training resumes from: the newest complete one in its results dir, whatever its name.

Candidates are ``segformer_model_latest.pth`` and every ``model_epoch_XXX_step_YYYYY.pth`` (periodic, timed and
preemption checkpoints). "Newest" is by progress stored in the file (epochs done, then global step), not by
name or modification time; "complete" means the file loads. A kill between writing ``model_epoch_030_...`` and
rewriting latest therefore resumes from epoch 30, and an unreadable newest file falls back to the next one.
"""

from __future__ import annotations

import logging
import os
import re

from segformer_tao import io
from segformer_tao.errors import UserError
from segformer_tao.jobs import LATEST_CHECKPOINT

log = logging.getLogger("segformer_tao")
_PERIODIC = re.compile(r"model_epoch_(\d+)_step_(\d+)\.pth$")


def progress(payload: dict) -> tuple[int, int]:
    """(epochs done, global step) stored in a Lightning checkpoint."""
    done = (payload.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {}).get("total", {})
    return int(done.get("processed", payload.get("epoch", -1) + 1)), int(payload.get("global_step", 0))


def _periodic(results_dir: str) -> list[tuple[tuple[int, int], str]]:
    fs, root = io.filesystem(results_dir)
    found = []
    for path in fs.glob(f"{root.rstrip('/')}/model_epoch_*_step_*.pth"):
        m = _PERIODIC.search(os.path.basename(path))
        if m:
            full = path if not io.is_remote(results_dir) else f"{results_dir.rstrip('/')}/{os.path.basename(path)}"
            found.append(((int(m.group(1)), int(m.group(2))), full))
    return sorted(found, reverse=True)


def newest_checkpoint(results_dir: str, load) -> tuple[str, dict, str] | None:
    """(path, loaded payload, why) of the checkpoint to resume from, or None when the folder holds none.

    ``load(path) -> payload`` reads a checkpoint (raising UserError when it cannot). Files that cannot be read
    are skipped with a warning; when none can be read, the newest one's error is raised (e.g. a wrong
    encryption_key must not silently restart training from scratch).
    """
    latest = os.path.join(results_dir, LATEST_CHECKPOINT) if not io.is_remote(results_dir) else \
        f"{results_dir.rstrip('/')}/{LATEST_CHECKPOINT}"
    candidates = ([((10**9, 10**9), latest)] if io.exists(latest) else []) + _periodic(results_dir)
    best: tuple[tuple[int, int], str, dict] | None = None
    errors: list[tuple[str, UserError]] = []
    for named, path in candidates:  # latest first (its progress is only known once read), then newest by name
        if best is not None and named <= best[0] and path != latest:
            break  # periodic files are sorted: none further can be newer than what was found
        try:
            payload = load(path)
        except UserError as e:
            errors.append((path, e))
            log.warning("Not resuming from %s: it cannot be read (%s).", path, str(e).split(". ")[0])
            continue
        done = progress(payload)
        if best is None or done > best[0]:
            best = (done, path, payload)
    if best is None:
        if errors:
            raise errors[0][1]
        return None
    (epochs, step), path, payload = best
    others = len(candidates) - 1
    why = (f"the newest complete checkpoint of {others + 1} in {results_dir}: {epochs} epoch(s), step {step}"
           + (f"; skipped unreadable {', '.join(os.path.basename(p) for p, _ in errors)}" if errors else ""))
    return path, payload, why
