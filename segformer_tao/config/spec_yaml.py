"""Reading a spec file's YAML without leaking the key in a syntax error or expanding an alias bomb.

PyYAML's problem mark quotes the offending source line, which may be the ``encryption_key`` line: errors here name
the line and column only. Aliases are shared nodes until OmegaConf copies every one of them, so a few hundred bytes
of nested aliases ("billion laughs") expand into billions of values: the expanded size is counted on the node graph
first (linear in the file) and refused beyond :data:`MAX_VALUES`.
"""

from __future__ import annotations

from typing import Any

import yaml

from segformer_tao.errors import UserError

MAX_VALUES = 100_000  # values (scalars, lists, mappings) a spec may expand to; TAO's largest specs hold ~300


def syntax_error(e: yaml.YAMLError, path: str) -> UserError:
    """The YAML error as one paragraph: what the parser expected and where, never the source text itself."""
    what = " ".join(str(p) for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    began = getattr(e, "context_mark", None)
    if began is not None and mark is not None and began.line != mark.line:
        where += f" (in what begins at line {began.line + 1})"
    return UserError(f"Spec file '{path}' is not valid YAML{where}: {what or type(e).__name__}. Fix the YAML syntax "
                     "there (quote a value that holds ':', '#', '@', '[' or a backslash).")


def compose(text: str, path: str) -> yaml.Node | None:
    """The node graph of ``text`` (SafeLoader); UserError for a syntax error or an expansion over the budget."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise syntax_error(e, path) from None
    if root is not None:
        try:
            expanded = _expanded_size(root, {}, set())
        except _Loop:
            raise _too_big(path, "refers to itself") from None
        except RecursionError:
            raise _too_big(path, "nests too deeply") from None
        if expanded > MAX_VALUES:
            raise _too_big(path, f"expands to more than {MAX_VALUES} values")
    return root


class _Loop(Exception):
    """A node that contains itself through an alias."""


def _too_big(path: str, why: str) -> UserError:
    return UserError(f"Spec file '{path}' {why} through YAML aliases (*name): refused, since expanding it would take "
                     "minutes and gigabytes. Write the values out, or use aliases only for a few values.")


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values ``node`` stands for once every alias is copied out (memoised per node: linear in the file)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _Loop
    if isinstance(node, yaml.ScalarNode):
        return 1
    open_nodes.add(key)
    children: list[Any] = node.value if isinstance(node, yaml.SequenceNode) else [
        n for pair in node.value for n in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes)
        if total > MAX_VALUES:
            break
    open_nodes.discard(key)
    sizes[key] = total
    return total


def load(text: str, path: str) -> Any:
    """``yaml.safe_load(text)`` with the checks above (the graph is composed once and then constructed)."""
    root = compose(text, path)
    if root is None:
        return None
    try:
        return yaml.SafeLoader("").construct_document(root)
    except yaml.YAMLError as e:
        raise syntax_error(e, path) from None
