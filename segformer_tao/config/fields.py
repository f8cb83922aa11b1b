"""The one way to declare a spec key: a dataclass field carrying TAO's schema metadata.

Everything users see about a key (CLI help, JSON schema, templates, AutoML search space, validation) is
derived from these fields, so a key's facts live in exactly one place.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

# The metadata vocabulary of TAO Core's schemas (nvidia_tao_core.config.utils.types), plus `automl_enabled` and our
# `automl_range`.
META_KEYS = (
    "description",
    "display_name",
    "valid_min",
    "valid_max",
    "valid_options",
    "option_weights",
    "math_cond",
    "depends_on",
    "popular",
    "automl_enabled",
    "automl_range",
    "required",
    "regex",
)


def spec(
    default: Any,
    description: str,
    *,
    valid_min: float | int | str | None = None,
    valid_max: float | int | str | None = None,
    valid_options: list[Any] | None = None,
    option_weights: list[float] | None = None,
    math_cond: str | None = None,
    depends_on: str | None = None,
    popular: bool = False,
    automl_enabled: bool | None = None,
    automl_range: tuple[float, float, str] | None = None,
    display_name: str | None = None,
    required: bool = False,
    regex: str | None = None,
) -> Any:
    """Declare a spec key with its default and metadata.

    ``valid_max="inf"`` means unbounded (TAO's convention). ``automl_enabled=True`` lets AutoML search the key;
    ``False`` forbids it; ``None`` leaves it out of AutoML. ``automl_range=(low, high, "log"|"linear")`` is the
    range AutoML samples a number from when the valid range is far wider than useful values (TAO's weight_decay is
    valid in [0, 1], but AdamW with 0.5 only wastes a trial); validation still uses valid_min/valid_max.
    """
    if automl_range is not None:
        low, high, scale = automl_range
        if not (low < high and scale in ("log", "linear") and (scale == "linear" or low > 0)):
            raise ValueError(f"automl_range {automl_range!r}: need low < high, scale log|linear, low > 0 for log")
    if valid_options is not None and default is not None and default not in valid_options:
        raise ValueError(f"default {default!r} not in valid_options {valid_options}")
    metadata = {
        "description": description,
        "display_name": display_name,
        "valid_min": valid_min,
        "valid_max": valid_max,
        "valid_options": list(valid_options) if valid_options is not None else None,
        "option_weights": option_weights,
        "math_cond": math_cond,
        "depends_on": depends_on,
        "popular": popular,
        "automl_enabled": automl_enabled,
        "automl_range": list(automl_range) if automl_range is not None else None,
        "required": required,
        "regex": regex,
    }
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def group(cls: type, description: str) -> Any:
    """Declare a nested group of keys (a dataclass)."""
    return dataclasses.field(default_factory=cls, metadata={"description": description, "group": True})
