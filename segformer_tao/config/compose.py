"""Compose, override and validate an experiment config.

Order (later wins): schema defaults -> conf/ groups (Hydra) -> the user's spec file (``-e``) -> key=value
overrides (Hydra's override grammar). Every mistake becomes a :class:`UserError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from collections.abc import Sequence
from importlib import resources
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segformer_tao import redact
from segformer_tao.config import encryption_key as ek
from segformer_tao.config import provenance, spec_yaml
from segformer_tao.config.resolve import resolve_batch_sizes
from segformer_tao.config.schema import ExperimentConfig, iter_fields
from segformer_tao.errors import UserError

SCHEMA_NAME = "segformer_experiment_schema"


def package_dir(name: str) -> str:
    """Absolute path of a data folder shipped inside the package (``conf`` or ``specs``)."""
    return str(resources.files("segformer_tao") / name)


def _register_schema() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=ExperimentConfig)


def all_keys() -> list[str]:
    return [k for k, _ in iter_fields()]


def suggest(key: str) -> str:
    """A ' Did you mean ...?' hint for an unknown key, or ''."""
    keys = all_keys()
    leaf = key.split(".")[-1]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not close:
        close = [k for k in keys if k.split(".")[-1] == leaf][:1]
    if not close:
        close = difflib.get_close_matches(leaf, [k.split(".")[-1] for k in keys], n=1, cutoff=0.75)
        close = [k for k in keys if close and k.split(".")[-1] == close[0]][:1]
    return f" Did you mean '{close[0]}'?" if close else ""


def conf_groups() -> set[str]:
    root = package_dir("conf")
    return {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}


def group_options(group: str) -> list[str]:
    """The options of a conf/ group (``model`` -> mit_b0, ..., fan_*), from its YAML files; [] if no such group."""
    folder = os.path.join(package_dir("conf"), group)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []


def _omegaconf_error(e: OmegaConfBaseException, source: str) -> UserError:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    if "Key '" in msg and any(t in msg for t in ("not in struct", "Missing key", "not found", "not in '")):
        return UserError(f"Unknown key '{key}' in {source}.{suggest(key)} Run `segformer <action> --help` to "
                         "list the valid keys.")
    if "could not be converted" in msg or "Value '" in msg or "Invalid type" in msg or "is not a subclass" in msg:
        return UserError(f"Wrong type for key '{key}' in {source}: {msg}. Give a value of the type the key "
                         "expects (see `segformer <action> --help`).")
    return UserError(f"Invalid config in {source} at '{key}': {msg}.")


def load_spec_file(path: str) -> DictConfig:
    """Read a TAO-style spec YAML as-is; a missing, unreadable or non-mapping file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"Spec file '{path}' (given with -e) does not exist. Check the path.")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        data = spec_yaml.load(text, path)  # errors without the source line; alias bombs refused
    except UnicodeDecodeError as e:
        raise UserError(f"Spec file '{path}' is not a text YAML file. Pass a .yaml spec with -e.") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"Spec file '{path}' must hold a mapping of keys (e.g. 'train: {{num_epochs: 10}}'), "
                        f"not a {type(data).__name__}.")
    data.pop("defaults", None)
    key = ek.spec_file_value(text, path)  # the key as written, not as YAML reads it (0123 -> 83, yes -> True)
    if key is not ek.UNSET:
        data[ek.KEY] = key
    return OmegaConf.create(data)


def _key_exists(cfg: DictConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
        else:
            return False
    return True


def _override_syntax_error(overrides: Sequence[str], e: OverrideParseException) -> UserError:
    """Name the override Hydra could not parse, without the parser's internal exception names."""
    bad = next((o for o in overrides if _unparsable(o)), None)
    example = "e.g. train.num_epochs=5 or 'train.gpu_ids=[0,1]'"
    if bad is not None and bad.startswith("-"):
        return UserError(f"'{bad}' is not an option: settings are given as key=value ({example}); run "
                         "`segformer <action> --help` for the keys.")
    reason = str(e).splitlines()[0].split(": ", 1)[-1] if "Exception:" in str(e) else str(e).splitlines()[0]
    where = f"'{bad}'" if bad is not None else "an override"
    return UserError(f"Invalid override syntax in {where} ({reason.rstrip('.')}). Overrides look like key=value, "
                     f"{example}; quote values with brackets or spaces in the shell.")


def _unparsable(override: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return True
    return False


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Apply Hydra-grammar overrides (``a.b=1``, ``+a.new=x``, ``++a.b=2``, ``~a.b``) in place."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise _override_syntax_error(overrides, e) from e
    for ov in parsed:
        key = ov.key_or_group
        try:
            if ov.is_delete():
                if not _key_exists(cfg, key):
                    raise UserError(f"Cannot delete '{key}' (~{key}): no such key.{suggest(key)}")
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                with _open_dict(node):
                    del node[leaf]
                continue
            value = ov.value()
            if not (ov.is_add() or ov.is_force_add()) and not _key_exists(cfg, key):
                raise UserError(f"Unknown key '{key}' in override '{key}=***' (value hidden: a misspelt key may "
                                f"hold a secret).{suggest(key)} "
                                "Run `segformer <action> --help` to list the valid keys.")
            existing = OmegaConf.select(cfg, key, default=None)
            merge = isinstance(existing, DictConfig) and not existing._is_none()
            OmegaConf.update(cfg, key, value, merge=merge, force_add=ov.is_add() or ov.is_force_add())
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e, f"override '{ov.input_line}'") from e


class _open_dict:
    def __init__(self, node: DictConfig) -> None:
        self.node, self.flag = node, None

    def __enter__(self) -> None:
        self.flag = self.node._get_flag("struct")
        OmegaConf.set_struct(self.node, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.node, self.flag)


def _check_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    md = f.metadata
    options = md.get("valid_options")
    if options is not None and value is not None:
        if value in options:
            return value
        if isinstance(value, str):
            folded = {str(o).lower(): o for o in options}
            if value.lower() in folded:
                return folded[value.lower()]
        close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"Invalid value {value!r} for '{key}'.{hint} Valid options: {', '.join(map(str, options))}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = md.get("valid_min"), md.get("valid_max")
        lo = -math.inf if lo in (None, "", "-inf") else float(lo)
        hi = math.inf if hi in (None, "", "inf") else float(hi)
        if not lo <= value <= hi:
            bounds = f"between {md.get('valid_min')} and {md.get('valid_max')}" if md.get("valid_max") not in (
                None, "", "inf") else f">= {md.get('valid_min')}"
            raise UserError(f"Value {value} for '{key}' is out of range: it must be {bounds}.")
    return value


def validate(cfg: DictConfig) -> None:
    """Check bounds and options of every key; normalises option case (e.g. data_type FP16 -> fp16)."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise UserError(f"Cannot resolve interpolation at '{getattr(e, 'full_key', '')}': "
                        f"{str(e).splitlines()[0]}. Interpolations look like ${{results_dir}}/train.") from e
    ek.check_resolved(resolved.get(ek.KEY))
    redact.register(resolved.get(ek.KEY))
    redact.register_config(resolved)
    for key, f in iter_fields():
        node: Any = resolved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        fixed = _check_value(key, f, node)
        if fixed is not node and OmegaConf.select(cfg, key) == node:
            OmegaConf.update(cfg, key, fixed)


def compose_config(action: str | None = None, overrides: Sequence[str] = (), spec_file: str | None = None
                   ) -> DictConfig:
    """Build the validated experiment config.

    Args:
        action: the action it is for (kept for error messages and future per-action defaults).
        overrides: key=value strings; ``group=name`` (e.g. ``model=mit_b2``) switches a conf/ group.
        spec_file: optional TAO-format YAML spec, merged over the defaults before the overrides.
    Returns:
        an OmegaConf DictConfig in struct mode (unknown keys raise).
    """
    overrides, key = ek.take_key_override(list(overrides))  # the exact text typed, never Hydra-parsed
    groups = conf_groups()
    group_ovs = [o for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") in groups]
    key_ovs = [o for o in overrides if o not in group_ovs]
    _register_schema()
    try:
        with initialize_config_dir(config_dir=package_dir("conf"), version_base=None):
            cfg = compose(config_name="experiment", overrides=group_ovs)
    except HydraException as e:
        raise _group_error(group_ovs, groups, e) from e
    OmegaConf.set_struct(cfg, True)
    spec = None
    if spec_file:
        spec = load_spec_file(spec_file)
        _refuse_old_format(spec, spec_file)
        # TAO specs write `results_dir: ???` for "you must set this"; interpolations like ${results_dir}/export
        # would otherwise silently resolve to /export.
        if "results_dir" in spec.keys() and OmegaConf.is_missing(spec, "results_dir") and not any(
                o.lstrip("+").startswith("results_dir=") for o in key_ovs):
            raise UserError(f"results_dir is '???' in the spec file '{spec_file}': set it on the command line, e.g. "
                            "`results_dir=/path/to/results`.")
        try:
            cfg = OmegaConf.merge(cfg, spec)
        except OmegaConfBaseException as e:
            raise _omegaconf_error(e, f"spec file '{spec_file}'") from e
        _reapply_groups(cfg, group_ovs, spec, spec_file)
    apply_overrides(cfg, key_ovs)
    provenance.record(cfg, spec_file, spec, key_ovs, group_ovs)
    if key is not ek.UNSET:
        cfg[ek.KEY] = key
    validate(cfg)
    _unset_missing(cfg)
    resolve_batch_sizes(cfg)
    return cfg


def _refuse_old_format(spec: DictConfig, spec_file: str) -> None:
    from segformer_tao.config.upgrade import is_old_format

    markers = is_old_format(OmegaConf.to_container(spec, resolve=False))
    if markers:
        raise UserError(f"Spec file '{spec_file}' is in TAO's older SegFormer format (<= 5.5; it sets "
                        f"{', '.join(markers[:3])}). Convert it once with `segformer config upgrade {spec_file} > "
                        "upgraded.yaml` (the moved and dropped keys are listed), then run with -e upgraded.yaml.")


def _group_error(group_ovs: list[str], groups: Sequence[str], e: HydraException) -> UserError:
    """Name the bad `group=option` and list that group's options (Hydra lists the groups instead)."""
    for override in group_ovs:
        group, name = override.split("=", 1)
        group = group.lstrip("+~")
        options = group_options(group)
        if name and name not in options:
            close = difflib.get_close_matches(name, options, n=1)
            hint = f" Did you mean '{group}={close[0]}'?" if close else ""
            return UserError(f"'{override}': there is no {group} option '{name}'.{hint} Options: "
                             f"{', '.join(options)} (files under conf/{group}/).")
    return UserError(f"Cannot switch config group: {str(e).splitlines()[0]} Groups: {', '.join(sorted(groups))} "
                     "(files under conf/<group>/).")


def _reapply_groups(cfg: DictConfig, group_ovs: list[str], spec: DictConfig, spec_file: str) -> None:
    """A group chosen on the command line (``model=mit_b2``) wins over the spec file, like key=value overrides;
    otherwise a spec that sets model.backbone.type would silently turn ``model=...`` into a no-op."""
    for override in group_ovs:
        group, name = override.split("=", 1)
        path = os.path.join(package_dir("conf"), group, f"{name}.yaml")
        if group.startswith(("~", "+")) or group not in spec or not os.path.isfile(path):
            continue
        chosen = OmegaConf.load(path)
        shadowed = sorted(f"{group}.{k}" for k in _leaf_keys(chosen)
                          if OmegaConf.select(spec[group], k, default=None) is not None
                          and OmegaConf.select(spec[group], k) != OmegaConf.select(chosen, k))
        cfg[group] = OmegaConf.merge(cfg[group], chosen)
        if shadowed:  # stderr: `segformer config ... > spec.yaml` must stay valid YAML
            print(f"note: {override} on the command line replaces {', '.join(shadowed)} from {spec_file}",
                  file=sys.stderr)


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        dotted = f"{prefix}{k}"
        keys += _leaf_keys(v, f"{dotted}.") if isinstance(v, DictConfig) else [dotted]
    return keys


def _unset_missing(cfg: DictConfig) -> None:
    """A `???` left in the config (e.g. `key=???` on the command line) means unset: the action's required-key
    check then names it instead of OmegaConf failing on first access."""
    for key in sorted(OmegaConf.missing_keys(cfg)):
        OmegaConf.update(cfg, key, None)


mask_url_passwords = redact.mask_url_passwords


def to_yaml_without_secrets(cfg: DictConfig) -> str:
    """The composed config as YAML with encryption_key removed and every secret in its strings masked (URL passwords
    such as automl.storage's, credentials): for experiment.yaml, `segformer config` and AutoML trial specs."""
    return OmegaConf.to_yaml(OmegaConf.create(redact.strip_secrets(OmegaConf.to_container(cfg, resolve=True))))


__all__ = ["compose_config", "validate", "iter_fields", "all_keys", "suggest", "apply_overrides", "conf_groups",
           "group_options", "load_spec_file", "to_yaml_without_secrets", "mask_url_passwords", "package_dir",
           "ListConfig"]
