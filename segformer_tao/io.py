"""One path helper for local files and s3:// (fsspec), atomic writes and at-rest encryption.

Every file the tool writes goes through :func:`atomic_write` (temp file + fsync + rename), so a killed run
never leaves a truncated file under its final name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec

from segformer_tao.errors import UserError


def is_remote(path: str) -> bool:
    """True for URLs such as ``s3://bucket/key`` (anything with a protocol other than file)."""
    return "://" in str(path) and not str(path).startswith("file://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path inside it) for a local path or URL."""
    fs, _, paths = fsspec.get_fs_token_paths(str(path))
    return fs, paths[0]


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def read_bytes(path: str) -> bytes:
    """Read a whole file (local or remote) as bytes; a missing file is a :class:`UserError`."""
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise UserError(f"File not found: '{path}'. Check the path (and the bucket name for s3://).") from e


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open ``path`` for writing so that readers only ever see the old or the complete new file.

    Local files: write to a temp file beside the target, fsync, then ``os.replace``. Remote (s3://)
    objects are uploaded in one PUT on close, which is already atomic. On any exception the temp file is
    removed and the old file (if any) is left untouched.
    """
    if is_remote(path):
        fs, p = filesystem(path)
        buf = io.BytesIO() if "b" in mode else io.StringIO()
        yield buf
        data = buf.getvalue()
        fs.pipe_file(p, data if isinstance(data, bytes) else data.encode("utf-8"))
        return
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except PermissionError as e:
        raise UserError(
            f"Cannot write '{path}': permission denied for directory '{directory}'. "
            "Choose a writable results_dir (e.g. results_dir=./results) or fix the directory's permissions."
        ) from e
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = path  # so "disk full while writing <file>" can name it
        raise


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_line(path: str, line: str) -> None:
    """Append one line (JSON-lines logs): a single write of a complete line, then fsync."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def makedirs(path: str) -> None:
    """Create a directory (local) or nothing (object stores have no directories)."""
    if is_remote(path):
        return
    try:
        os.makedirs(path, exist_ok=True)
    except (PermissionError, FileExistsError, NotADirectoryError) as e:
        raise UserError(
            f"Cannot create directory '{path}' ({e.strerror}). Choose a writable results_dir "
            "(e.g. results_dir=./results) or fix the path."
        ) from e
