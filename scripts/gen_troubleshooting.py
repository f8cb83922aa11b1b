"""Generate docs/troubleshooting.md: every UserError / NotAvailableError the tool raises, grouped by action.

The catalogue is read from the source (the ``UserError(...)`` / ``NotAvailableError(...)`` calls under
segformer_tao/), so it cannot drift from the code: ``python scripts/gen_troubleshooting.py`` rewrites the doc,
``--check`` exits 1 when it is out of date (tests/bad_inputs/test_troubleshooting_doc.py runs that).
Parts of a message computed at run time are shown as ``<expression>``.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "segformer_tao"
DOC = ROOT / "docs" / "troubleshooting.md"
ERRORS = {"UserError": "user error", "NotAvailableError": "not available"}

# (section title, what the errors of this section are about, module path prefixes relative to segformer_tao/)
SECTIONS = [
    ("Command line and config (every action)",
     "The spec file or a key=value override is wrong. Fix the key or value named; `segformer <action> --help` "
     "lists every key with its default, `segformer config <action> ...` prints the composed config.",
     ["cli.py", "config/"]),
    ("Results directory, jobs and parent_job (every action)",
     "Where the results go and which earlier job an action continues from.",
     ["jobs.py", "parent.py", "joblock.py", "io.py", "logs.py", "ranks.py", "commands/jobs.py"]),
    ("Environment: memory, disk, permissions (every action)",
     "The machine, not the inputs: out of memory, disk full or file too large, permission denied.",
     ["errors.py"]),
    ("Datasets (train, evaluate, inference, quantize, `segformer dataset`)",
     "The dataset under dataset.segment.root_dir (local or s3://). `segformer dataset check ...` reports every "
     "problem at once; the dispatcher runs the same check before train and evaluate.",
     ["data/", "commands/dataset.py"]),
    ("train", "Training, resuming, checkpoints and the weights it starts from.",
     ["actions/train.py", "engine/trainer.py", "engine/callbacks.py", "engine/module.py", "engine/datamodule.py",
      "engine/distributed.py", "engine/metrics.py", "engine/visualize.py", "engine/preemption.py"]),
    ("Checkpoints and encryption (train, evaluate, inference, export, quantize)",
     "Reading a .pth: missing, truncated, encrypted with another key, not encrypted where it must be, or holding "
     "pickled code.",
     ["engine/checkpoint.py", "crypto.py"]),
    ("Model and pretrained weights (train, `segformer model`)",
     "model.backbone.type, model.backbone.pretrained_backbone_path and train.pretrained_model_path.",
     ["model/", "commands/model.py"]),
    ("train with AutoML (automl_policy=auto|on)", "The hyper-parameter search around train.", ["automl/"]),
    ("evaluate and inference", "Running a checkpoint, ONNX model, OpenVINO IR or TensorRT engine on a split.",
     ["actions/evaluate.py", "actions/inference.py", "deploy/runtime.py", "deploy/base.py", "deploy/onnx_io.py",
      "deploy/torch_runtime.py", "deploy/onnxruntime.py", "deploy/onnx_external.py",
      "deploy/cpu_select.py", "deploy/openvino.py", "deploy/hf_runtime.py"]),
    ("export", "Writing the ONNX model (and the OpenVINO IR), or the Hugging Face folder (export.format=huggingface).",
     ["actions/export.py", "deploy/onnx_export.py", "deploy/deepstream.py", "deploy/huggingface.py",
      "model/hf_format.py"]),
    ("quantize", "INT8 post-training quantization and its calibration images.",
     ["actions/quantize.py", "deploy/quantization.py", "deploy/quant_backends.py", "deploy/calibration.py"]),
    ("gen_trt_engine", "Building and running TensorRT engines (needs a CUDA GPU with TensorRT).",
     ["actions/gen_trt_engine.py", "deploy/tensorrt_build.py", "deploy/tensorrt.py"]),
]


class Sources:
    """What a message may refer to: module-level string constants and functions that return a message."""

    constants: dict[str, str] = {}
    builders: dict[str, ast.AST] = {}

    @classmethod
    def index(cls) -> None:
        for path in sorted(PACKAGE.rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                    cls.constants[node.targets[0].id] = node.value.value
                elif isinstance(node, ast.FunctionDef) and node.body and isinstance(node.body[-1], ast.Return):
                    value = node.body[-1].value
                    if isinstance(value, ast.JoinedStr | ast.BinOp) or (
                            isinstance(value, ast.Constant) and isinstance(value.value, str)):
                        cls.builders[node.name] = value


def _render(node: ast.AST) -> str:
    """A message template: literal text kept, run-time parts as <expression>."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in Sources.constants:
        return Sources.constants[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in Sources.builders:
        return _render(Sources.builders[node.func.id])
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace"
            and all(isinstance(a, ast.Constant) for a in node.args)):  # msg(...).replace("a", "b")
        return _render(node.func.value).replace(node.args[0].value, node.args[1].value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value.value, ast.Name) and value.value.id in Sources.constants:
                parts.append(Sources.constants[value.value.id])
            else:
                parts.append(_placeholder(value.value))
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _render(node.left) + _render(node.right)
    return _placeholder(node)


def _placeholder(node: ast.AST) -> str:
    """A run-time part as ``<name>`` (the name of what it shows, never source code); an optional phrase (``'x' if
    cond else ''``) as ``[x]``."""
    if isinstance(node, ast.IfExp):
        texts = [b.value for b in (node.body, node.orelse) if isinstance(b, ast.Constant) and isinstance(b.value, str)]
        if len(texts) == 2 and "" in texts:
            return f"[{''.join(texts).strip()}]"
        if len(texts) == 2:
            return f"<{texts[0].strip()} or {texts[1].strip()}>"
        return _placeholder(node.body)
    if isinstance(node, ast.JoinedStr):
        return f"[{_render(node).strip()}]"
    return f"<{_name_of(node)}>"


def _name_of(node: ast.AST) -> str:
    """The word a reader knows a value by: a variable's or attribute's name, a called function's (``len(x)``: the
    count of x), a joined list's items."""
    if isinstance(node, ast.Name):
        return node.id.lower() if node.id.isupper() else node.id.lstrip("_")
    if isinstance(node, ast.Attribute):
        return node.attr.lstrip("_")
    if isinstance(node, ast.Subscript):
        key = node.slice.value if isinstance(node.slice, ast.Constant) else None
        return key if isinstance(key, str) else _name_of(node.value)
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("join", "splitlines", "strip", "lower", "rstrip"):
            inner = node.args[0] if func.attr == "join" and node.args else func.value
            return _name_of(inner)
        if isinstance(func, ast.Name) and func.id in ("len",) and node.args:
            return f"number of {_name_of(node.args[0])}"
        if isinstance(func, ast.Name) and func.id in ("str", "repr", "int", "float", "sorted", "list", "map", "round",
                                                      "tuple", "set", "abs") and node.args:
            return _name_of(node.args[-1])
        return _name_of(func)
    if isinstance(node, ast.BoolOp):
        return _name_of(node.values[0])
    if isinstance(node, ast.BinOp | ast.Compare):
        return _name_of(node.left)
    if isinstance(node, ast.GeneratorExp | ast.ListComp):
        return _name_of(node.generators[0].iter)
    return "value"


def _functions(tree: ast.AST) -> dict[ast.AST, str]:
    """Every node -> the name of the innermost function (or class.method) that contains it."""
    owner: dict[ast.AST, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = name
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = f"{name}.{child.name}" if name else child.name
            owner[child] = inner
            visit(child, inner)

    visit(tree, "")
    return owner


def catalogue() -> list[dict]:
    """One entry per error construction: module, function, kind, message template."""
    Sources.index()
    entries = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        owner = _functions(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ERRORS and node.args:
                module = path.relative_to(PACKAGE).as_posix()
                message = " ".join(_render(node.args[0]).split())
                entries.append({"module": module, "function": owner.get(node, "") or "<module>",
                                "kind": ERRORS[node.func.id], "message": message})
    return entries


def _section(module: str) -> int:
    matches = [(len(p), i) for i, (_, _, prefixes) in enumerate(SECTIONS) for p in prefixes if module.startswith(p)]
    if not matches:
        raise SystemExit(f"{module} raises user errors but is in no section of {__file__}: add it to SECTIONS")
    return max(matches)[1]


def render() -> str:
    lines = ["# Troubleshooting", "",
             "<!-- Generated by scripts/gen_troubleshooting.py from the source; do not edit by hand. -->", "",
             "Every mistake the tool can diagnose ends with exit code 2 and one paragraph on stderr starting with "
             "`error:` that names the key, file or value at fault and the fix (no traceback; add `--debug` to see "
             "one). Optional components that are not installed (TensorRT, ModelOpt, torchao) also exit 2. Exit "
             "code 1 with a traceback is a bug: please report it with the `--debug` output.", "",
             "Below is every such message, grouped by where it comes from. `<...>` marks a part filled in at run "
             "time (the key's value, the file's path, ...). Search this page for a distinctive phrase of your "
             "message.", ""]
    grouped: dict[int, list[dict]] = {}
    for entry in catalogue():
        grouped.setdefault(_section(entry["module"]), []).append(entry)
    for index, (title, about, _) in enumerate(SECTIONS):
        if index not in grouped:
            continue
        lines += [f"## {title}", "", about, ""]
        for entry in grouped[index]:
            tag = " (not available)" if entry["kind"] == "not available" else ""
            lines += [f"- **{entry['module']}** `{entry['function']}`{tag}:", f"  > {entry['message']}", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/troubleshooting.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC} is out of date: run `python scripts/gen_troubleshooting.py`", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC} ({text.count('  > ')} messages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
