"""Listing and reading dataset files on local disk or s3:// (fsspec/s3fs), with clear errors and a local cache.

S3 endpoint and credentials come from the usual AWS environment variables (AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...). Remote calls use bounded
timeouts and a retry budget, then fail with a :class:`UserError` that names the object (or bucket, endpoint).

Retry budget: every listing and object read gets AWS_MAX_ATTEMPTS tries (the AWS SDKs' own setting; default 5)
against transient faults (dropped connections, 5xx, throttling, timeouts of SEGFORMER_S3_TIMEOUT_S seconds,
default 60), with jittered exponential backoff. The budget is counted here, around the whole read, and botocore's
and s3fs's own retries are set to one try: botocore's end when the response headers arrive (a connection lost in
the body is not retried), s3fs nests two retry loops of 5 over botocore's, and neither can say how often an object
was tried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import PurePosixPath
from typing import TypeVar

import fsspec

from segformer_tao import io
from segformer_tao.errors import UserError

log = logging.getLogger("segformer_tao")
T = TypeVar("T")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff")
_READ_BATCH = 64  # files fetched per concurrent request batch
DEFAULT_ATTEMPTS = 5
_BACKOFF_S, _BACKOFF_CAP_S = 0.2, 10.0  # first retry waits up to 0.2 s, doubling, never more than 10 s
_JITTER = random.Random()  # own generator: retries must not shift the seeded training RNG (same run, same result)
# S3 error codes worth another try besides any 5xx (throttling and request timeouts come back as 4xx too)
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "RequestLimitExceeded", "ServiceUnavailable", "InternalError"}


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
            "config_kwargs": {"connect_timeout": min(5.0, timeout_s()), "read_timeout": timeout_s(),
                              "retries": {"total_max_attempts": 1, "mode": "standard"}},  # the budget is ours
            # dataset files are small: one GET each, without the HEAD s3fs sends first to split big files
            "max_concurrency": 1,
        }
    fs, path = fsspec.core.url_to_fs(url, **options)
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs's nested retry loops: one try each, see the module docstring
    return fs, path


def max_attempts() -> int:
    """Tries per S3 request (AWS_MAX_ATTEMPTS, as the AWS SDKs read it; default 5, at least 1)."""
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_ATTEMPTS))
    except ValueError:
        raise UserError(f"AWS_MAX_ATTEMPTS='{os.environ['AWS_MAX_ATTEMPTS']}' is not a whole number. Set it to the "
                        "number of tries per S3 request, e.g. AWS_MAX_ATTEMPTS=5, or unset it.") from None


def timeout_s() -> float:
    """Seconds an S3 response may stall before the try counts as failed (SEGFORMER_S3_TIMEOUT_S, default 60)."""
    try:
        return float(os.environ.get("SEGFORMER_S3_TIMEOUT_S") or 60)
    except ValueError:
        raise UserError(f"SEGFORMER_S3_TIMEOUT_S='{os.environ['SEGFORMER_S3_TIMEOUT_S']}' is not a number of "
                        "seconds. Set it to e.g. 60, or unset it.") from None


def is_transient(err: BaseException) -> bool:
    """True for faults another try may cure: lost connections, timeouts, 5xx and throttling answers."""
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError | UserError):
        return False
    if "Credential" in type(err).__name__ or "ParamValidation" in type(err).__name__:
        return False
    response = getattr(err, "response", None) or getattr(err.__cause__, "response", None)
    if isinstance(response, dict):  # an answer from the server (s3fs turns it into an OSError with it as cause)
        status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        return status >= 500 or (response.get("Error") or {}).get("Code") in _TRANSIENT_CODES
    if isinstance(err, OSError | TimeoutError | ConnectionError):
        return True
    return any(c.__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3")
               for c in type(err).__mro__)


def with_retries(call: Callable[[], T], url: str) -> T:
    """``call()`` with up to :func:`max_attempts` tries when it fails transiently; after that a UserError that
    names ``url`` and the number of tries. Other failures are raised as they are, at once."""
    budget = max_attempts()
    for attempt in range(1, budget + 1):
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == budget:
                raise remote_error(e, url, tries=attempt) from e
            delay = _JITTER.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_S * 2 ** (attempt - 1)))
            log.warning("S3: reading '%s' failed (%s), try %d of %d; retrying in %.2f s", url,
                        _short(e), attempt, budget, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def remote_error(err: BaseException, url: str, tries: int | None = None) -> UserError:
    """Translate an fsspec/s3fs/botocore exception about ``url`` into one readable :class:`UserError`.

    ``tries``: how often the read was tried when a transient fault outlasted the retry budget."""
    name = type(err).__name__
    text = str(err)
    endpoint = _endpoint() or "the default AWS endpoint"
    if tries is not None and "EndpointConnection" not in name and not isinstance(err, ConnectionRefusedError):
        return UserError(
            f"Reading '{url}' from {endpoint} failed {tries} times in a row (last: {_short(err)}): the S3 server "
            f"keeps failing. Check the server and the network, or raise the retry budget AWS_MAX_ATTEMPTS (now "
            f"{tries}) or the stall timeout SEGFORMER_S3_TIMEOUT_S (now {timeout_s():g} s). Files already written "
            "are intact: run the same command again (train resumes from its last checkpoint).")
    if "Credential" in name or "credentials" in text.lower() and "Unable to locate" in text:
        return UserError(
            f"No S3 credentials found to read '{url}'. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE) in the environment, and AWS_ENDPOINT_URL for a non-AWS S3 server.")
    if "Endpoint" in name or "Connect" in name or "Timeout" in name or isinstance(err, ConnectionError | OSError) \
            and not isinstance(err, FileNotFoundError | PermissionError):
        return UserError(
            f"Cannot reach the S3 endpoint {endpoint} to read '{url}' ({_short(err)}) after "
            f"{tries or 'bounded'} {'try' if tries == 1 else 'tries'}. Check AWS_ENDPOINT_URL, the network and "
            "that the server is running.")
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
        return with_retries(lambda: fs.ls(path, detail=False), url)
    except UserError:
        raise
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
        return with_retries(lambda: fs.cat_file(path), url)
    except UserError:
        raise
    except Exception as e:
        raise remote_error(e, url) from e


def read_many(urls: Sequence[str]) -> Iterable[tuple[str, bytes]]:
    """Yield (url, bytes) for many files; remote files are fetched concurrently in batches."""
    remote = [u for u in urls if io.is_remote(u)]
    for u in urls:
        if not io.is_remote(u):
            yield u, read_bytes(u)
    for start in range(0, len(remote), _READ_BATCH):
        yield from _read_batch(remote[start:start + _READ_BATCH])


def _read_batch(batch: Sequence[str]) -> Iterable[tuple[str, bytes]]:
    """One concurrent request per file; the files that failed transiently are fetched again, each within the
    retry budget (tries counted per file, as in :func:`with_retries`)."""
    fs, _ = open_fs(batch[0])
    pending = {open_fs(u)[1]: u for u in batch}
    got: dict[str, bytes] = {}
    budget = max_attempts()
    for attempt in range(1, budget + 1):
        try:
            data = fs.cat(list(pending), on_error="return")
        except Exception as e:  # the whole call failed: every pending file failed this try
            data = dict.fromkeys(pending, e)
        failed = {}
        for p, value in data.items():
            if isinstance(value, BaseException):
                if not is_transient(value):
                    raise remote_error(value, pending[p]) from value
                failed[p] = value
            else:
                got[p] = value
        pending = {p: u for p, u in pending.items() if p in failed}
        if not pending:
            break
        if attempt == budget:
            p, err = next(iter(failed.items()))
            raise remote_error(err, pending[p], tries=attempt) from err
        delay = _JITTER.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_S * 2 ** (attempt - 1)))
        log.warning("S3: %d of %d files failed (%s), try %d of %d; retrying in %.2f s", len(pending), len(batch),
                    _short(next(iter(failed.values()))), attempt, budget, delay)
        time.sleep(delay)
    for u in batch:
        yield u, got[open_fs(u)[1]]


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
