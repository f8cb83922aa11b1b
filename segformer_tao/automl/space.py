"""The AutoML search space, read from the packaged train schema (``specs/schemas/train.schema.json``).

Searched keys: ``automl.parameters`` when set, else the schema's ``automl_default_parameters`` (every
``automl_enabled`` key, as TAO's schema lists them); minus ``automl.disabled_parameters``. Each key's schema
metadata decides how it is sampled:

- ``valid_options`` (+ ``option_weights``) and booleans: a categorical. With weights, Optuna samples a number
  u in [0, 1) and the option whose cumulative-weight interval holds u is used, so the prior follows the weights.
- numbers with ``automl_range`` ``[low, high, "log"|"linear"]`` (our metadata, for keys whose valid range is far
  wider than useful values, e.g. weight_decay valid in [0, 1]): that range, clipped to valid_min/valid_max.
- numbers with finite ``valid_min``/``valid_max``: uniform in [min, max] (ints: integers in it).
- numbers with an unbounded side (``valid_max: "inf"``, e.g. ``train.optim.lr``): log-uniform in
  [value / 10, value * 10] around the experiment's current value (the schema default unless overridden),
  clipped to the finite bound.
- ``math_cond`` (TAO's vocabulary): ``"> x"``, ``">= x"``, ``"< x"``, ``"<= x"`` tighten the bounds;
  ``"^ n"`` keeps powers of n only (ints); ``"/ n"`` with ``depends_on`` makes the key derived: value =
  the depended-on key's value // n (not searched).
- ``depends_on``: ``"<op> other.key"`` bounds the value by the other key's value in the same trial (TAO's
  relational form); a bare boolean ``other.key`` makes the key searched only in trials where that key is true.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from dataclasses import dataclass, replace

from omegaconf import DictConfig, OmegaConf

from segformer_tao.errors import UserError

UNBOUNDED_SPAN = 10.0  # an unbounded side searches value/10 .. value*10 (log scale)
_REL = re.compile(r"^\s*(>=|<=|>|<)\s*(\S+)\s*$")
_OP = re.compile(r"^\s*(>=|<=|>|<|\^|/)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Param:
    """One searched key. ``kind`` is "float", "int", "categorical" or "derived"."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    weights: tuple[float, ...] = ()
    relation: tuple[str, str] | None = None  # (op, other key): value op other's value
    enabled_by: str | None = None  # boolean key that must be true for this key to be searched
    divisor: int | None = None  # derived: value = other // divisor (other = relation[1])

    @property
    def parents(self) -> list[str]:
        return [k for k in ((self.relation or (None, None))[1], self.enabled_by) if k]


def load_train_schema(specs_dir: str | None = None) -> dict:
    """The packaged (or ``specs_dir``'s) train.schema.json."""
    from segformer_tao.automl.policy import TRAIN_SCHEMA, default_specs_dir

    path = os.path.join(specs_dir or default_specs_dir(), TRAIN_SCHEMA)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot read the AutoML train schema {path} ({e}). Run `make specs` to regenerate it.") from e


def schema_node(schema: dict, key: str) -> dict | None:
    """The JSON-schema node of a dotted key, or None when the schema has no such leaf."""
    node = schema
    for part in key.split("."):
        node = (node.get("properties") or {}).get(part)
        if node is None:
            return None
    return None if "properties" in node else node


def searched_keys(cfg: DictConfig, schema: dict) -> list[str]:
    """(automl.parameters or automl_default_parameters) - automl.disabled_parameters, in that order, unique."""
    disabled_by_schema = set(schema.get("automl_disabled_parameters", []))
    user_disabled = set(cfg.automl.disabled_parameters or [])
    chosen = list(cfg.automl.parameters or [])
    keys = [] if chosen else [k for k in schema.get("automl_default_parameters", []) if k not in user_disabled]
    for key in chosen:
        if key in disabled_by_schema:
            raise UserError(f"automl.parameters lists '{key}', which this model marks as not searchable "
                            "(automl_enabled: false in the train schema). Remove it from automl.parameters.")
        if schema_node(schema, key) is None:
            raise UserError(f"automl.parameters lists '{key}', which is not a key of the train schema. Use a "
                            "dotted key such as train.optim.lr (see specs/schemas/train.schema.json).")
        if key not in keys and key not in user_disabled:
            keys.append(key)
    return keys


def _types(node: dict) -> set[str]:
    t = node.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def _number(v) -> float | None:
    """A finite bound, or None for missing/"inf"/"-inf"."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _categorical(key: str, node: dict, options: list) -> Param:
    weights = node.get("option_weights")
    if weights:
        if len(weights) != len(options) or min(weights) < 0 or sum(weights) <= 0:
            raise UserError(f"The train schema's option_weights for '{key}' ({weights}) must be one non-negative "
                            f"weight per option ({options}). Fix the field's metadata and run `make specs`.")
        total = float(sum(weights))
        return Param(key, "categorical", choices=tuple(options), weights=tuple(w / total for w in weights))
    return Param(key, "categorical", choices=tuple(options))


def _numeric_bounds(key: str, node: dict, current) -> tuple[float, float, bool]:
    """(low, high, log) of a number key from valid_min/valid_max and the current value."""
    lo, hi = _number(node.get("valid_min")), _number(node.get("valid_max"))
    if node.get("automl_range"):
        low, high, scale = node["automl_range"]
        low, high = max(low, lo) if lo is not None else low, min(high, hi) if hi is not None else high
        return low, high, scale == "log" and low > 0
    if lo is not None and hi is not None:
        return lo, hi, False
    center = _number(current)
    if center is None or center <= 0:
        raise UserError(f"Cannot derive a search range for '{key}': its valid range is unbounded and its value is "
                        f"{current!r}. Give it a positive value (the search spans value/10..value*10) or remove it "
                        "from automl.parameters.")
    low, high = center / UNBOUNDED_SPAN, center * UNBOUNDED_SPAN
    low, high = max(low, lo) if lo is not None else low, min(high, hi) if hi is not None else high
    return low, high, low > 0


def _apply_math_cond(key: str, cond: str, low: float, high: float, is_int: bool) -> tuple[float, float, tuple]:
    """Tighten (low, high) by a comparison; ``^ n`` returns the allowed powers as choices."""
    m = _OP.match(cond)
    if not m:
        raise UserError(f"The train schema's math_cond '{cond}' of '{key}' is not understood (use '> x', '>= x', "
                        "'< x', '<= x', '^ n' or '/ n'). Fix the field's metadata and run `make specs`.")
    op, x = m.group(1), float(m.group(2))
    step = 1 if is_int else 0
    if op in (">", ">="):
        low = max(low, (x + step if is_int else math.nextafter(x, math.inf)) if op == ">" else x)
    elif op in ("<", "<="):
        high = min(high, (x - step if is_int else math.nextafter(x, -math.inf)) if op == "<" else x)
    elif op == "^":
        powers, p = [], 1
        while p <= high and x > 1:
            if p >= low:
                powers.append(p)
            p *= int(x)
        return low, high, tuple(powers)
    return low, high, ()


def build_param(key: str, node: dict, current) -> Param:
    """The Param of one key from its schema node; ``current`` is the experiment's value of the key."""
    depends = (node.get("depends_on") or "").strip()
    cond = (node.get("math_cond") or "").strip()
    relation = enabled_by = None
    if depends:
        rel = _REL.match(depends)
        if rel:
            relation = (rel.group(1), rel.group(2))
        elif cond.startswith("/"):
            m = _OP.match(cond)
            return Param(key, "derived", relation=("/", depends), divisor=int(float(m.group(2))) if m else 1)
        elif "depends_on" in cond:  # TAO's "> depends_on": the operator lives in math_cond
            relation = (cond.split()[0], depends)
            cond = ""
        else:
            enabled_by = depends
    options = [o for o in node.get("valid_options") or [] if o is not None]
    types = _types(node)
    if options:
        param = _categorical(key, node, options)
    elif "boolean" in types:
        param = _categorical(key, node, [True, False])
    elif types & {"number", "integer"}:
        is_int = "integer" in types and "number" not in types
        low, high, log = _numeric_bounds(key, node, current)
        powers: tuple = ()
        if cond:
            low, high, powers = _apply_math_cond(key, cond, low, high, is_int)
        if is_int:
            low, high = math.ceil(low), math.floor(high)
        if powers:
            param = Param(key, "categorical", choices=powers)
        elif low > high:
            raise UserError(f"'{key}' has an empty search range [{low}, {high}] after math_cond '{cond}'. Fix "
                            "the key's valid_min/valid_max/math_cond metadata.")
        else:
            param = Param(key, "int" if is_int else "float", low=low, high=high, log=log)
    else:
        raise UserError(f"'{key}' cannot be searched: it is a {node.get('type')} without valid_options. Remove it "
                        "from automl.parameters or give it numeric bounds or options.")
    return replace(param, relation=relation, enabled_by=enabled_by)


def _ordered(params: list[Param]) -> list[Param]:
    """Keys another key depends on come first (stable otherwise)."""
    by_key = {p.key: p for p in params}
    done: dict[str, Param] = {}
    visiting: set[str] = set()

    def visit(p: Param) -> None:
        if p.key in done:
            return
        if p.key in visiting:
            raise UserError(f"AutoML depends_on forms a cycle through '{p.key}'. Fix the depends_on metadata.")
        visiting.add(p.key)
        for parent in p.parents:
            if parent in by_key:
                visit(by_key[parent])
        done[p.key] = p

    for p in params:
        visit(p)
    return list(done.values())


def build_space(cfg: DictConfig, schema: dict) -> list[Param]:
    """Every searched key as a Param, parents before the keys that depend on them."""
    params = []
    for key in searched_keys(cfg, schema):
        node = schema_node(schema, key)
        if node is None:
            raise UserError(f"The train schema lists AutoML parameter '{key}' but has no such key. Run `make specs`.")
        params.append(build_param(key, node, OmegaConf.select(cfg, key, default=node.get("default"))))
    return _ordered(params)


def _weighted(u: float, p: Param):
    cumulative, acc = [], 0.0
    for w in p.weights:
        acc += w
        cumulative.append(acc)
    return p.choices[min(bisect.bisect_right(cumulative, u), len(p.choices) - 1)]


def _relation_bounds(p: Param, other: float) -> tuple[float, float]:
    op = p.relation[0]
    low, high = p.low, p.high
    if op in (">", ">="):
        low = max(low, other + (1 if p.kind == "int" else 0) if op == ">" else other)
    else:
        high = min(high, other - (1 if p.kind == "int" else 0) if op == "<" else other)
    return low, high


def sample(trial, space: list[Param], cfg: DictConfig) -> dict:
    """Suggest a value for every active Param on an Optuna trial; returns {dotted key: value}."""
    values: dict = {}

    def current(key: str):
        return values[key] if key in values else OmegaConf.select(cfg, key)

    for p in space:
        if p.enabled_by and not current(p.enabled_by):
            continue
        if p.kind == "derived":
            values[p.key] = int(current(p.relation[1])) // max(1, p.divisor)
        elif p.kind == "categorical" and p.weights:
            values[p.key] = _weighted(trial.suggest_float(p.key, 0.0, 1.0), p)
        elif p.kind == "categorical":
            values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        else:
            low, high = (p.low, p.high) if p.relation is None else _relation_bounds(p, float(current(p.relation[1])))
            if p.kind == "int":
                low, high = math.ceil(low), math.floor(high)
            low = min(low, high)  # the other key's value leaves no room: keep this key at its bound
            suggest = trial.suggest_int if p.kind == "int" else trial.suggest_float
            values[p.key] = suggest(p.key, low, high, log=p.log and low > 0)
    return values
