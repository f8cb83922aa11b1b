"""Checks a call against the signatures pybind11 wrote into the real TensorRT bindings' docstrings
(``name(self: tensorrt.tensorrt.X, arg: type = default, ...) -> ret``, one line per overload): argument count,
keyword names and the argument types pybind11 would convert."""

from __future__ import annotations

import re

import numpy as np

FAILURES: list[str] = []
CALLS: set[str] = set()


def fail(message: str) -> None:
    FAILURES.append(message)
    raise TypeError(message)


_SIG = re.compile(r"^(?:\d+\.\s+)?(\w*)\((.*)\)\s*->\s*(.+)$")  # a property setter's has no name


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def signatures(func) -> list[list[tuple[str, str, bool]]]:
    """[(name, type, has_default)] per overload, ``self`` dropped."""
    sigs = []
    for line in (func.__doc__ or "").splitlines():
        m = _SIG.match(line.strip())
        if not m or m.group(2).startswith("*args"):
            continue
        params = []
        for part in _split_top(m.group(2)):
            name, _, rest = part.partition(":")
            typ, eq, _ = rest.partition("=")
            params.append((name.strip(), typ.strip(), bool(eq)))
        sigs.append([p for p in params if p[0] != "self"])
    return sigs


def check_set(real, owner: str, name: str, fset, value) -> None:
    """A property write: the value must convert to the setter's argument type (``(arg0: X, arg1: T) -> None``)."""
    for params in signatures(fset):
        if len(params) == 2 and not type_ok(real, params[1][1], value):
            fail(f"{owner}.{name} = {type(value).__name__}: the bindings' setter takes {params[1][1]}")


def type_ok(real, typ: str, value) -> bool:
    """Would pybind11 convert ``value`` to ``typ``? (the cases the project can hit; unknown types pass)."""
    if typ in ("str",):
        return isinstance(value, str)
    if typ in ("int", "typing.SupportsInt"):
        return isinstance(value, int | np.integer)
    if typ == "bool":
        return isinstance(value, bool | np.bool_)
    if typ in ("float", "typing.SupportsFloat"):
        return isinstance(value, int | float)
    if "Buffer" in typ or typ == "buffer":
        return isinstance(value, bytes | bytearray | memoryview)
    if typ.endswith((".Dims", ".Dims64", ".Dims32")) or typ == "tuple":
        return isinstance(value, tuple | list) and all(isinstance(d, int) for d in value)
    if typ.startswith(("List[", "list[", "collections.abc.Sequence[", "Sequence[")):
        return isinstance(value, list | tuple)
    if typ.startswith("tensorrt.tensorrt."):
        cls = real
        for part in typ[len("tensorrt.tensorrt."):].split("."):
            cls = getattr(cls, part, None)
        if not isinstance(cls, type):
            return True
        if isinstance(value, cls):
            return True
        mirror = getattr(type(value), "MIRRORS", None)
        return mirror is not None and issubclass(getattr(real, mirror), cls)
    return True


def check_call(real, owner: str, func, name: str, args: tuple, kwargs: dict) -> None:
    sigs = signatures(func)
    if not sigs:
        fail(f"{owner}.{name}: no signature in the bindings' docstring")
    problems = []
    for params in sigs:
        problem = _bind(real, params, args, kwargs)
        if problem is None:
            CALLS.add(f"{owner}.{name}")
            return
        problems.append(problem)
    fail(f"{owner}.{name}{_show(args, kwargs)} matches no signature of the bindings: {'; '.join(problems)}")


def _bind(real, params, args, kwargs) -> str | None:
    if len(args) > len(params):
        return f"{len(args)} positional arguments for {len(params)} parameters"
    bound = dict(zip([p[0] for p in params], args))
    for key, value in kwargs.items():
        if key not in [p[0] for p in params] or key in bound:
            return f"no keyword '{key}' (parameters {[p[0] for p in params]})"
        bound[key] = value
    for pname, typ, has_default in params:
        if pname not in bound:
            if not has_default:
                return f"missing '{pname}'"
        elif not type_ok(real, typ, bound[pname]):
            return f"'{pname}' needs {typ}, got {type(bound[pname]).__name__}"
    return None


def _show(args, kwargs) -> str:
    shown = [type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()]
    return "(" + ", ".join(shown) + ")"
