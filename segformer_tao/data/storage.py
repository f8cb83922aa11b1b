"""Listing and reading dataset files on local disk or s3:// (fsspec/s3fs), with clear errors and a local cache.

S3 endpoint and credentials come from the usual AWS environment variables (AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...). Remote calls use bounded
timeouts and retries, then fail with a :class:`UserError` that names the bucket or endpoint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

import fsspec

from segformer_tao import io
from segformer_tao.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")
_READ_BATCH = 64  # files fetched per concurrent request batch


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def open_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URL; s3:// gets bounded timeouts and retries."""
    if not io.is_remote(url):
        return io.filesystem(url)
    options = {}
    if url.startswith(("s3://", "s3a://")):
        client_kwargs = {"endpoint_url": _endpoint()} if _endpoint() else {}
        options = {
            "client_kwargs": client_kwargs,
            "config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                              "retries": {"max_attempts": 3, "mode": "standard"}},
        }
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def remote_error(err: BaseException, url: str) -> UserError:
    """Translate an fsspec/s3fs/botocore exception about ``url`` into one readable :class:`UserError`."""
    name = type(err).__name__
    text = str(err)
    endpoint = _endpoint() or "the default AWS endpoint"
    if "Credential" in name or "credentials" in text.lower() and "Unable to locate" in text:
        return UserError(
            f"No S3 credentials found to read '{url}'. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE) in the environment, and AWS_ENDPOINT_URL for a non-AWS S3 server.")
    if "Endpoint" in name or "Connect" in name or "Timeout" in name or isinstance(err, ConnectionError | OSError) \
            and not isinstance(err, FileNotFoundError | PermissionError):
        return UserError(
            f"Cannot reach the S3 endpoint {endpoint} to read '{url}' ({name}: {text.splitlines()[0][:200]}) "
            "after bounded retries. Check AWS_ENDPOINT_URL, the network and that the server is running.")
    if isinstance(err, PermissionError):
        return UserError(f"Access denied reading '{url}' at {endpoint}: the credentials were rejected or lack "
                         "permission. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy.")
    return UserError(f"Cannot read '{url}' ({name}: {text.splitlines()[0][:200] if text else ''}). Check the path.")


def _bucket_exists(fs: fsspec.AbstractFileSystem, bucket: str) -> bool:
    try:
        return bool(fs.exists(bucket))
    except Exception:  # noqa: BLE001 - any failure here means we cannot confirm the bucket
        return False


def _missing_bucket_error(fs: fsspec.AbstractFileSystem, url: str) -> UserError | None:
    """A UserError when ``url``'s bucket does not exist (remote only), else None."""
    if not io.is_remote(url):
        return None
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if _bucket_exists(fs, bucket):
        return None
    return UserError(f"S3 bucket '{bucket}' does not exist at {_endpoint() or 'the default AWS endpoint'} "
                     f"(reading '{url}'). Check the bucket name in the path and AWS_ENDPOINT_URL.")


def _ls(url: str) -> list[str] | None:
    """Names in directory ``url`` (None when it does not exist); remote failures -> UserError."""
    fs, path = open_fs(url)
    try:
        return fs.ls(path, detail=False)
    except FileNotFoundError:
        err = _missing_bucket_error(fs, url)
        if err is not None:
            raise err from None
        return None
    except NotADirectoryError:
        return None
    except Exception as e:
        if io.is_remote(url):
            raise remote_error(e, url) from e
        raise


def is_dir(url: str) -> bool:
    """True when ``url`` is a directory holding something (or a non-empty s3 prefix)."""
    return bool(_ls(url))


def list_files(url: str, exts: Sequence[str]) -> dict[str, str]:
    """Map file stem -> full path/URL for the files in directory ``url`` with one of ``exts`` (lower case).

    One listing call per directory. Raises UserError for a missing directory (naming it) and for two files
    with the same stem (e.g. ``a.png`` and ``a.jpg``), since pairing by stem would be ambiguous.
    """
    entries = _ls(url)
    if entries is None:
        raise FileNotFoundError(url)
    prefix = url.split("://", 1)[0] + "://" if io.is_remote(url) else ""
    found: dict[str, str] = {}
    for entry in sorted(entries):
        p = PurePosixPath(entry)
        if p.suffix.lower() not in exts or p.name.startswith("."):
            continue
        if p.stem in found:
            raise UserError(f"Two files share the stem '{p.stem}' in '{url}': '{PurePosixPath(found[p.stem]).name}' "
                            f"and '{p.name}'. Images and masks are paired by file stem; keep one of them.")
        found[p.stem] = prefix + entry if prefix else os.path.join(url, p.name)
    return found


def read_bytes(url: str) -> bytes:
    """Read one file (local or remote); remote failures -> UserError naming the file."""
    if not io.is_remote(url):
        try:
            with open(url, "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise UserError(f"File not found: '{url}'. Was it deleted after the dataset was listed?") from e
    fs, path = open_fs(url)
    try:
        return fs.cat_file(path)
    except Exception as e:
        raise remote_error(e, url) from e


def read_many(urls: Sequence[str]) -> Iterable[tuple[str, bytes]]:
    """Yield (url, bytes) for many files; remote files are fetched concurrently in batches."""
    remote = [u for u in urls if io.is_remote(u)]
    for u in urls:
        if not io.is_remote(u):
            yield u, read_bytes(u)
    for start in range(0, len(remote), _READ_BATCH):
        batch = remote[start:start + _READ_BATCH]
        fs, _ = open_fs(batch[0])
        paths = [open_fs(u)[1] for u in batch]
        try:
            data = fs.cat(paths, on_error="raise")
        except Exception as e:
            raise remote_error(e, batch[0]) from e
        for u, p in zip(batch, paths):
            yield u, data[p]


def cache_files(urls: Sequence[str], cache_dir: str) -> list[str]:
    """Mirror remote files under ``cache_dir`` (download only the missing ones, concurrently); local paths back.

    The cache key is the full URL, so two datasets never collide; files are written atomically, so a killed
    download never leaves a truncated file that a later run would trust.
    """
    local = [_cache_path(u, cache_dir) for u in urls]
    missing = [u for u, p in zip(urls, local) if io.is_remote(u) and not os.path.exists(p)]
    targets = {u: _cache_path(u, cache_dir) for u in missing}
    for url, data in read_many(missing):
        io.write_bytes(targets[url], data)
    return [p if io.is_remote(u) else u for u, p in zip(urls, local)]


def _cache_path(url: str, cache_dir: str) -> str:
    """Local cache file for a URL: <cache_dir>/<host+path>, with a short hash guarding odd characters."""
    no_proto = url.split("://", 1)[-1]
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]
    parent, name = os.path.split(no_proto)
    return os.path.join(os.path.expanduser(cache_dir), parent, f"{digest}_{name}")
