"""One path helper for local files and s3:// (fsspec), and atomic writes (encryption is crypto.py's).

Every file the tool writes goes through :func:`atomic_write` (temp file + fsync + rename), so a killed run
never leaves a truncated file under its final name; the JSON-lines logs are appended with :func:`open_append`.

File modes (one policy, docs/security.md "File permissions"): every file is created with mode ``FILE_MODE``
(0666) minus the process umask, as ``open()`` and every Unix tool do; run under ``umask 077`` to keep a results
dir private.
No file holds a secret (the encryption key and passwords are never written); checkpoints hold weights, which
``encryption_key`` protects at rest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import fsspec

from segformer_tao.errors import UserError

FILE_MODE = 0o666  # masked by the umask, like open(); see the module docstring
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


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
    except IsADirectoryError as e:
        raise UserError(f"'{path}' is a folder, where a file is expected. Give the file inside it (e.g. the .pth "
                        "checkpoint or .onnx model); for a job's results dir, use parent_job=<that folder>.") from e


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def sha256(path: str) -> str:
    """Hex sha256 of a file's bytes as stored (local or remote), read in 1 MiB chunks."""
    fs, p = filesystem(path)
    h = hashlib.sha256()
    with fs.open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def symlink_error(path: str, e: OSError) -> UserError | None:
    """O_NOFOLLOW refused a symbolic link at ``path`` (ELOOP on Linux, EMLINK on the BSDs): a UserError."""
    if e.errno not in (errno.ELOOP, errno.EMLINK) or not os.path.islink(path):
        return None
    return UserError(f"'{path}' is a symbolic link (to '{os.readlink(path)}'); segformer does not write through "
                     "links in a results dir, since a link planted there would make a job write into another file. "
                     "Remove the link, or choose another results_dir.")


def _create_exclusive(directory: str, base: str) -> tuple[int, str]:
    """A new temp file beside the target, created with FILE_MODE (the umask applies; mkstemp would force 0600)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", os.path.join(directory, f".{base}.*.tmp"))


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
        fd, tmp = _create_exclusive(directory, os.path.basename(path))
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


def open_append(path: str, binary: bool = False, encoding: str | None = "utf-8", errors: str | None = None):
    """Open a local file for appending (created with FILE_MODE minus the umask), never through a symbolic link
    at ``path`` (O_NOFOLLOW): a link there is a :class:`UserError` naming it. For status.json, log.txt, trial logs."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, FILE_MODE)
    except OSError as e:
        refused = symlink_error(path, e)
        if refused is not None:
            raise refused from None
        raise
    if binary:
        return os.fdopen(fd, "ab")
    return os.fdopen(fd, "a", encoding=encoding, errors=errors)


def append_line(path: str, line: str) -> None:
    """Append one line (JSON-lines logs): a single write of a complete line, then fsync."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open_append(path) as f:
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
