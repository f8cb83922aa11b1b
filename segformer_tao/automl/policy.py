"""Which path `segformer train` takes: an AutoML study or one plain training job.

The model's capability is ``automl_enabled`` in ``specs/references/skill_info.yaml`` (generated, never written
here); the per-run choice is ``automl_policy``: ``auto`` (default: search when runnable), ``on`` (search or fail),
``off`` (train plainly). Runnable means the generated train schema and template are present and parse.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os

import yaml
from omegaconf import DictConfig

from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")

SKILL_INFO = os.path.join("references", "skill_info.yaml")
TRAIN_SCHEMA = os.path.join("schemas", "train.schema.json")
TRAIN_TEMPLATE = os.path.join("references", "spec_template_train.yaml")
NOT_GENERATED = "AutoML is enabled for this model but not runnable until the schemas are generated (make specs)"


def default_specs_dir() -> str:
    """The packaged specs/ folder (``segformer schema`` writes it)."""
    from segformer_tao.config.compose import package_dir

    return package_dir("specs")


def _read(path: str, parse) -> object | None:
    """Parsed content of a file, or None when it is missing or does not parse."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def automl_capability(specs_dir: str) -> tuple[bool, str]:
    """(enabled, why) from skill_info.yaml's ``automl_enabled``."""
    info = _read(os.path.join(specs_dir, SKILL_INFO), yaml.safe_load)
    if not isinstance(info, dict):
        return False, f"{os.path.join(specs_dir, SKILL_INFO)} is missing or unreadable"
    if info.get("automl_enabled") is not True:
        return False, "skill_info.yaml says automl_enabled is not true for this model"
    return True, "skill_info.yaml automl_enabled=true"


def specs_problem(specs_dir: str) -> str | None:
    """None when the train schema and template are present and parse, else what is wrong with them."""
    schema = _read(os.path.join(specs_dir, TRAIN_SCHEMA), json.load)
    if not isinstance(schema, dict) or not isinstance(schema.get("automl_default_parameters"), list):
        return f"{os.path.join(specs_dir, TRAIN_SCHEMA)} is missing, unparsable or has no automl_default_parameters"
    template = _read(os.path.join(specs_dir, TRAIN_TEMPLATE), yaml.safe_load)
    if not isinstance(template, dict):
        return f"{os.path.join(specs_dir, TRAIN_TEMPLATE)} is missing or unparsable"
    return None


def blocker(cfg: DictConfig, specs_dir: str) -> tuple[str | None, str]:
    """(what stops AutoML or None, the capability reason) for this config and specs folder."""
    enabled, why = automl_capability(specs_dir)
    if not enabled:
        return why, why
    problem = specs_problem(specs_dir)
    if problem:
        return f"{NOT_GENERATED} [{problem}]", why
    missing = [m for m in ("optuna", "scipy") if importlib.util.find_spec(m) is None]
    if "optuna" in missing or ("scipy" in missing and str(cfg.automl.sampler) == "gp"):
        return (f"AutoML needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed "
                "(`pip install \"segformer_tao[automl]\"`)"), why
    if int(cfg.train.num_nodes) > 1:
        return (f"AutoML trials train on one node each but train.num_nodes={cfg.train.num_nodes}; set "
                "train.num_nodes=1 and start the same command on every node with a shared automl.storage to search "
                "on several machines"), why
    return None, why


def choose_path(cfg: DictConfig, specs_dir: str | None = None) -> str:
    """Return "automl" or "plain" for `segformer train` and log one line saying which and why.

    ``automl_policy=on`` raises UserError when AutoML is not runnable. ``specs_dir`` defaults to the packaged
    specs/ (tests point it elsewhere). Nothing is written.
    """
    policy = str(cfg.get("automl_policy") or "auto")
    if policy == "off":
        log.info("==> train path: plain training (automl_policy=off)")
        return "plain"
    problem, why = blocker(cfg, specs_dir or default_specs_dir())
    if problem:
        if policy == "on":
            raise UserError(f"automl_policy=on but AutoML cannot run: {problem}. Fix that (`make specs` "
                            "regenerates the schemas), or use automl_policy=auto or off to train plainly.")
        log.info("==> train path: plain training. %s", problem)
        return "plain"
    log.info("==> train path: AutoML search (automl_policy=%s, %s, train schema and template present; "
             "automl.algorithm=%s, automl.num_trials=%s)", policy, why, cfg.automl.algorithm, cfg.automl.num_trials)
    return "automl"
