"""Where each config value came from: the spec file, the command line, or the schema's default.

:func:`segformer_tao.config.compose.compose_config` records the keys the user set; actions ask :func:`source_of`
whether a value was chosen by the user (and then it may override what a model file says) or is only a default
(and then the model's own value wins, see :mod:`segformer_tao.model.meta`).
"""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

_ATTR = "_segformer_sources"  # kept on the DictConfig object itself (not a config key: never saved or validated)


def leaf_keys(node: DictConfig | ListConfig | object, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a config node (a list is one leaf)."""
    if not isinstance(node, DictConfig):
        return [prefix.rstrip(".")] if prefix else []
    keys: list[str] = []
    for k in node.keys():
        keys += leaf_keys(node._get_node(k), f"{prefix}{k}.")
    return keys


def record(cfg: DictConfig, spec_file: str | None, spec: DictConfig | None, overrides: Iterable[str],
           groups: Iterable[str] = ()) -> None:
    """Remember which keys the spec file and the command line set (``overrides`` are ``key=value`` strings,
    ``groups`` the ``group=option`` ones: every key of a group switched on the command line counts as set there)."""
    sources: dict[str, str] = {}
    if spec is not None:
        for key in leaf_keys(spec):
            sources[key] = f"spec file '{spec_file}'"
    for override in groups:
        group = override.split("=", 1)[0].lstrip("+~")
        node = OmegaConf.select(cfg, group)
        for key in leaf_keys(node, f"{group}.") if isinstance(node, DictConfig) else [group]:
            sources[key] = f"command line ({override.split('=', 1)[0]}=...)"
    for override in overrides:
        if "=" in override:
            sources[override.split("=", 1)[0].lstrip("+~")] = "command line"
    cfg.__dict__[_ATTR] = sources


def default_of(key: str) -> object:
    """The schema's default value of a dotted key, also inside a dict-valued key (``model.decode_head.decoder_params.
    embed_dim``); None for a key the schema does not define."""
    import dataclasses

    from segformer_tao.config.schema import iter_fields

    for name, f in iter_fields():
        if key == name or key.startswith(name + "."):
            if f.default is not dataclasses.MISSING:
                value = f.default
            else:
                value = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            for part in key[len(name):].strip(".").split(".") if key != name else []:
                value = value.get(part) if isinstance(value, dict) else None
            return value
    return None


def source_of(cfg: DictConfig, key: str) -> str | None:
    """'spec file ...' or 'command line' when the user set ``key`` (or a section above it), None for a schema default.

    A config built without :func:`record` (a copy, or made in code) counts a value that differs from the schema's
    default as set ("the config").
    """
    sources = cfg.__dict__.get(_ATTR)
    if sources is None:
        return None if OmegaConf.select(cfg, key) == default_of(key) else "the config"
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        found = sources.get(".".join(parts[:i]))
        if found:
            return found
    return None
