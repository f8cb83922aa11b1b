"""Generate specs/ from the dataclass tree: JSON schemas, manifest, spec templates and skill_info.yaml.

`segformer schema` (and `make specs`) writes them; `segformer schema --check` fails when the committed files
differ from what the dataclasses generate (CI runs it).
"""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import sys
import tempfile
import types
import typing
from typing import Any

import yaml

from segformer_tao import __version__
from segformer_tao import io as sio
from segformer_tao.config.compose import package_dir
from segformer_tao.config.fields import META_KEYS
from segformer_tao.config.schema import (
    ACTION_SECTIONS,
    ACTIONS,
    REQUIRED_KEYS,
    ExperimentConfig,
)

DEPLOY_ACTIONS = ["gen_trt_engine", "evaluate", "inference"]
METRICS = ["val_miou", "val_mAcc", "val_acc"]


def _json_type(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        schema = _json_type(inner[0]) if len(inner) == 1 else {}
        if type(None) in args:
            t = schema.get("type")
            if isinstance(t, str):
                schema["type"] = [t, "null"]
        return schema
    if origin is list:
        item = args[0] if args else Any
        return {"type": "array", "items": _json_type(item)}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    return {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
            bool: {"type": "boolean"}}.get(tp, {})


def _leaf_schema(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    schema = _json_type(tp)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    schema["default"] = default
    md = f.metadata
    schema["description"] = md.get("description", "")
    for k in META_KEYS:  # "required" is a JSON Schema keyword; per-action required keys are listed at the top
        v = md.get(k)
        if k not in ("description", "required") and v is not None and v is not False and v != "":
            schema[k] = md[k]
    if md.get("automl_enabled") is not None:
        schema["automl_enabled"] = md["automl_enabled"]
    if md.get("valid_options") is not None:
        schema["enum"] = list(md["valid_options"]) + ([None] if "null" in schema.get("type", []) else [])
    for meta, std in (("valid_min", "minimum"), ("valid_max", "maximum")):
        v = md.get(meta)
        if isinstance(v, (int, float)) and md.get("valid_options") is None:
            schema[std] = v
    return schema


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            sub = _object_schema(f.default_factory)
            sub["description"] = f.metadata.get("description", "")
            props[f.name] = sub
        else:
            props[f.name] = _leaf_schema(f, hints[f.name])
    return {"type": "object", "properties": props, "additionalProperties": False}


def _defaults() -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(ExperimentConfig())))


def action_schema(action: str) -> dict[str, Any]:
    """JSON Schema of an action's spec (its sections only), with a top-level default = the template."""
    full = _object_schema(ExperimentConfig)
    sections = ACTION_SECTIONS[action]
    defaults = _defaults()
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"segformer {action}",
        "type": "object",
        "properties": {s: full["properties"][s] for s in sections},
        "additionalProperties": False,
        "default": {s: defaults[s] for s in sections},
        "required_keys": REQUIRED_KEYS[action],
    }
    if action == "train":
        schema["automl_default_parameters"] = automl_default_parameters()
        schema["automl_disabled_parameters"] = automl_disabled_parameters()
    return schema


def automl_default_parameters() -> list[str]:
    """Every key with ``automl_enabled=True``, in schema order (what TAO's schema generator lists)."""
    from segformer_tao.config.schema import iter_fields

    return [k for k, f in iter_fields() if f.metadata.get("automl_enabled") is True]


def automl_disabled_parameters() -> list[str]:
    from segformer_tao.config.schema import iter_fields

    return [k for k, f in iter_fields() if f.metadata.get("automl_enabled") is False]


def keys_for_action(action: str) -> list[tuple[str, Any, str]]:
    """(dotted key, default, description) of every leaf key of an action's sections."""
    from segformer_tao.config.schema import iter_fields

    sections = ACTION_SECTIONS[action]
    out = []
    for key, f in iter_fields():
        if key.split(".")[0] in sections:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            desc = f.metadata.get("description", "")
            options = f.metadata.get("valid_options")
            if options:
                desc = f"{desc} One of: {', '.join(map(str, options))}."
            out.append((key, default, desc))
    return out


def skill_info() -> dict[str, Any]:
    return {
        "name": "segformer",
        "version": __version__,
        "automl_enabled": True,
        "dataset_type": "segmentation",
        "formats": ["unet"],
        "monitored_metric": "val_miou",
        "metrics": METRICS,
        "actions": list(ACTIONS),
        "data_sources": {a: REQUIRED_KEYS[a] for a in ACTIONS},
        "schemas": {a: f"schemas/{a}.schema.json" for a in ACTIONS},
        "templates": {a: f"references/spec_template_{a}.yaml" for a in ACTIONS},
    }


def _template_yaml(action: str, deploy: bool = False) -> str:
    spec = action_schema(action)["default"]
    header = f"# segformer {action} spec template (generated by `segformer schema`; edit a copy).\n"
    if deploy:
        header = f"# segformer {action} spec template for TensorRT deployment (generated by `segformer schema`).\n"
        if action in ("evaluate", "inference"):
            spec[action]["trt_engine"] = "/path/to/model.engine"
        spec["dataset"]["segment"]["root_dir"] = "/path/to/dataset"
    return header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


def generate(out_dir: str) -> list[str]:
    """Write every generated file under out_dir; returns their relative paths."""
    files: dict[str, str] = {}
    for action in ACTIONS:
        files[f"schemas/{action}.schema.json"] = json.dumps(action_schema(action), indent=2) + "\n"
        files[f"references/spec_template_{action}.yaml"] = _template_yaml(action)
    for action in DEPLOY_ACTIONS:
        files[f"references/spec_template_deploy_{action}.yaml"] = _template_yaml(action, deploy=True)
    manifest = {"model": "segformer", "version": __version__,
                "actions": {a: {"schema": f"schemas/{a}.schema.json",
                                "template": f"references/spec_template_{a}.yaml",
                                "required_keys": REQUIRED_KEYS[a]} for a in ACTIONS},
                "deploy_templates": {a: f"references/spec_template_deploy_{a}.yaml" for a in DEPLOY_ACTIONS},
                "skill_info": "references/skill_info.yaml"}
    files["schemas/manifest.json"] = json.dumps(manifest, indent=2) + "\n"
    files["references/skill_info.yaml"] = ("# Generated by `segformer schema`; automl_enabled is the model's "
                                           "capability, per-run choice is automl_policy.\n"
                                           + yaml.safe_dump(skill_info(), sort_keys=False))
    for rel, text in files.items():
        sio.write_text(os.path.join(out_dir, rel), text)
    return sorted(files)


def main(argv: list[str]) -> int:
    """`segformer schema [--out DIR] [--check]`."""
    out = package_dir("specs")
    if "--out" in argv:
        out = argv[argv.index("--out") + 1]
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as tmp:
            stale = [rel for rel in generate(tmp)
                     if not os.path.isfile(os.path.join(out, rel))
                     or not filecmp.cmp(os.path.join(tmp, rel), os.path.join(out, rel), shallow=False)]
        if stale:
            print("specs/ is stale; run `make specs` and commit. Differs: " + ", ".join(stale), file=sys.stderr)
            return 1
        print(f"specs/ is up to date ({out})")
        return 0
    for rel in generate(out):
        print(os.path.join(out, rel))
    return 0
