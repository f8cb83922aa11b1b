"""``encryption_key`` is the exact text the user typed, in a spec file or on the command line, quoted or not.

Hydra's override grammar and YAML would otherwise change it before use (``a,b`` -> a sweep, ``0123`` -> 83 in YAML,
``yes`` -> True), so both are read here from their source text instead: the command-line override is taken out
before Hydra parses the others, and the spec file's scalar is read from the YAML node (its source text).

The recommended form keeps the key out of the command line and out of files:
``encryption_key='${oc.env:SEGFORMER_KEY}'`` with the key in the ``SEGFORMER_KEY`` environment variable. A literal key
on the command line is visible to other users (``ps``, ``/proc/<pid>/cmdline``): a warning says so, and the processes
this run starts (DDP ranks, AutoML trials) get it through their environment instead (:func:`scrub_argv`).
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping, MutableSequence, Sequence

import yaml

from segformer_tao.errors import UserError

KEY = "encryption_key"
ENV_FORM = "encryption_key='${oc.env:SEGFORMER_KEY}'"
# Where a parent hands a command-line key to the processes it starts (never on their command line).
INHERITED_ENV = "SEGFORMER_INHERITED_ENCRYPTION_KEY"
INHERITED_OVERRIDE = f"{KEY}=${{oc.env:{INHERITED_ENV}}}"
UNSET = object()
_PREFIXES = (f"{KEY}=", f"+{KEY}=", f"++{KEY}=")
_NULL = "null"


def _quote_hint() -> str:
    return (f"Quote it (encryption_key=\"'...'\" in the shell), or better keep it out of the command line: {ENV_FORM} "
            "with the key in the SEGFORMER_KEY environment variable.")


def is_key_override(override: str) -> bool:
    return override.startswith(_PREFIXES) or override == f"~{KEY}"


def typed_text(arg: str) -> str | None:
    """What follows ``encryption_key`` in a command-line argument, even a malformed one (for redaction)."""
    m = re.match(r"^[+~]*encryption_key\s*[=:]?(.*)$", arg, re.DOTALL)
    return m.group(1) if m else None


def take_key_override(overrides: Sequence[str]) -> tuple[list[str], object]:
    """Split the ``encryption_key`` overrides from the others. Returns (other overrides, the exact key: a string,
    None for ``~encryption_key`` or ``encryption_key=null``, or UNSET when not given; the last one wins)."""
    rest, value = [], UNSET
    for override in overrides:
        if not is_key_override(override):
            rest.append(override)
            continue
        value = None if override.startswith("~") else exact_override_value(override.split("=", 1)[1])
    return rest, value


def exact_override_value(raw: str) -> str | None:
    """The key a command-line value stands for: the text itself, or the inside of a Hydra-quoted value."""
    if raw == _NULL:
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        inner = raw[1:-1]
        if raw[0] in inner or "\\" in inner:
            raise UserError(f"encryption_key on the command line is quoted with {raw[0]} and also contains {raw[0]} "
                            f"or a backslash, so its exact text is ambiguous. {_quote_hint()}")
        return inner
    if raw == "":
        raise UserError("encryption_key= is empty on the command line. Give the key (recommended: "
                        f"{ENV_FORM} with the key in the SEGFORMER_KEY environment variable), or leave "
                        "encryption_key out (or encryption_key=null) to write unencrypted files.")
    return _literal(raw, "on the command line")


def _literal(text: str, where: str) -> str:
    """A key that is an interpolation as a whole (the env-var form) is kept; one that contains '${' elsewhere would be
    read as an interpolation and changed, so it is refused."""
    if "${" in text and not (text.startswith("${") and text.endswith("}") and text.count("${") == 1):
        raise UserError(f"encryption_key {where} contains '${{', which the config reads as an interpolation, so the "
                        f"key would not be used as typed. Put the key in an environment variable and use {ENV_FORM}.")
    return text


def spec_file_value(text: str, path: str) -> object:
    """The exact ``encryption_key`` of a spec file's text: the scalar as written (``0123``, ``yes`` stay text),
    None for YAML's null (``encryption_key:``, ``~``, ``null``), UNSET when the file does not set it."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return UNSET  # the normal loader reports the syntax error
    if not isinstance(root, yaml.MappingNode):
        return UNSET
    value: object = UNSET
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE and _merges_key(value_node, set()):
            raise UserError(f"encryption_key in spec file '{path}' comes through a YAML merge key (<<), which would "
                            "hand over the value as YAML reads it, not as written. Write encryption_key: '...' at the "
                            f"top level of the spec, or better use {ENV_FORM.replace('=', ': ', 1)}.")
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.value == KEY):
            continue
        if not isinstance(value_node, yaml.ScalarNode):
            raise UserError(f"encryption_key in spec file '{path}' is not a single value. Write it as one string, "
                            f"e.g. encryption_key: '...', or better use {ENV_FORM.replace('=', ': ', 1)}.")
        if value_node.style is None and value_node.tag == "tag:yaml.org,2002:null":
            value = None
        else:
            value = _literal(_as_written(value_node, text, path), f"in spec file '{path}'")
    return value


_MERGE = "tag:yaml.org,2002:merge"


def _merges_key(node: yaml.Node, seen: set[int]) -> bool:
    """True when the mappings a ``<<`` merges (one, or a list of them, themselves merging others) set the key."""
    if id(node) in seen:
        return False
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        return any(_merges_key(n, seen) for n in node.value)
    if not isinstance(node, yaml.MappingNode):
        return False
    return any(isinstance(k, yaml.ScalarNode) and (k.value == KEY or (k.tag == _MERGE and _merges_key(v, seen)))
               for k, v in node.value)


def _as_written(node: yaml.ScalarNode, text: str, path: str) -> str:
    """The scalar's text between its quotes (or unquoted) in the file, or a UserError when YAML would read another
    value from it: escape sequences, a block scalar, a line fold, or a '#' comment cutting an unquoted key short."""
    def refuse(why: str) -> UserError:
        return UserError(f"encryption_key in spec file '{path}' (line {node.start_mark.line + 1}) {why}, so the key "
                         "used would not be the text written. Write it on one line in single quotes (encryption_key: "
                         "'...'; a quote inside is doubled: ''), or better use "
                         f"{ENV_FORM.replace('=', ': ', 1)}.")

    if node.style in ("|", ">"):
        raise refuse("is a block scalar (| or >), which adds or folds line breaks")
    source = re.sub(r"^(?:[&!]\S*\s+)*", "", text[node.start_mark.index:node.end_mark.index])  # minus &anchor, !tag
    if "\n" in source or "\r" in source:
        raise refuse("spans more than one line, which YAML folds into spaces")
    if node.style == '"':
        inner = source[1:-1]
        if "\\" in inner:
            raise refuse("is in double quotes with a backslash, which YAML reads as an escape sequence")
    elif node.style == "'":
        inner = source[1:-1].replace("''", "'")
    else:
        inner = source
        line_rest = text[node.end_mark.index:].split("\n", 1)[0]
        if line_rest.lstrip().startswith("#"):
            raise refuse("is unquoted and followed by ' #', which starts a YAML comment (quote the key if '#' is "
                         "part of it)")
    if inner != node.value:
        raise refuse("is read by YAML as a different text")
    return node.value


def check_resolved(value: object) -> None:
    """The key after interpolation (e.g. from the environment): unset, or a non-empty string."""
    if value is None:
        return
    if not isinstance(value, str):
        raise UserError(f"encryption_key resolves to a {type(value).__name__}, not text. Quote it in the spec file "
                        f"(encryption_key: '...') or use {ENV_FORM}.")
    if value == "":
        raise UserError("encryption_key is empty (e.g. an empty SEGFORMER_KEY environment variable). Give the key, or "
                        "leave encryption_key unset (null) to write unencrypted files.")


def literal_on_command_line(argv: Sequence[str]) -> bool:
    """True when argv carries the key itself (not the environment-variable form)."""
    for arg in argv:
        if arg.startswith(_PREFIXES):
            raw = arg.split("=", 1)[1].strip("'\"")
            if raw not in ("", _NULL) and not (raw.startswith("${") and raw.endswith("}")):
                return True
    return False


def literal_key_warning() -> str:
    return ("warning: encryption_key is on the command line, where other users of this machine can read it (ps, "
            f"/proc) and the shell history keeps it. Prefer {ENV_FORM} with the key in the SEGFORMER_KEY environment "
            "variable (processes this run starts get the key through their environment, not their command line).")


def scrub_argv(argv: MutableSequence[str], environ: MutableMapping[str, str] = os.environ) -> bool:
    """Replace a literal key in ``argv`` (in place; e.g. ``sys.argv``, which Lightning re-runs for each DDP rank)
    by the interpolation of :data:`INHERITED_ENV`, and put the exact key in ``environ``. Returns True if it did."""
    done = False
    for i, arg in enumerate(argv):
        if not arg.startswith(_PREFIXES) or not literal_on_command_line([arg]):
            continue
        try:
            value = exact_override_value(arg.split("=", 1)[1])
        except UserError:
            continue  # refused when the config is composed
        if value is None or value.startswith("${"):
            continue
        environ[INHERITED_ENV] = value
        argv[i] = INHERITED_OVERRIDE
        done = True
    return done
