"""Secrets never shown: the encryption key, passwords inside URLs (``automl.storage``, ``mlflow.tracking_uri``) and
cloud credentials from the environment.

:func:`redact` is applied to every message the CLI prints (also those printed before logging starts), to every log
line, to job.json's command and error, to status.json messages, and to every string of a config written to a file
(experiment.yaml, `segformer config`, a checkpoint's stored config). Secrets are registered as soon as they are
seen (:func:`register`): the raw command line first, then the composed config.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

# Credentials the usual clients read from the environment (boto3/s3fs, W&B, MLflow).
ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_TRACKING_TOKEN")
MASK = "***"
MIN_TEXT = 4  # shorter secrets are not searched for in free text: they would match everywhere and hide nothing
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
# Query parameters that carry a credential: password=, access_token=, X-Amz-Signature=, X-Amz-Security-Token=,
# Azure's sig=, client_secret=, api_key= ... (the name, or its last _/-/. part).
_QUERY_SECRET = re.compile(r"([?&;](?:[\w.\-]*[_.\-])?(?:password|passwd|pwd|sslpassword|secret|token|signature|sig|"
                           r"api_?key|apikey|credential)=)[^&;#\s'\"]+", re.IGNORECASE)
_KNOWN: set[str] = set()
_LOCK = threading.Lock()


def _userinfo_password(url: str) -> tuple[int, int] | None:
    """Where the password of ``url`` (``scheme://user:password@host...``) lies, as (start, end) offsets: it runs to
    the host's '@' (the last one), so an unencoded '@', ':', '/', '#' or whitespace in it is covered too."""
    m = _SCHEME.match(url)
    if not m:
        return None
    at = url.rfind("@", m.end())
    colon = url.find(":", m.end(), at) if at > 0 else -1
    return (colon + 1, at) if colon >= 0 and colon + 1 < at else None


def is_url(text: str) -> bool:
    """True when ``text`` starts with ``scheme://``."""
    return _SCHEME.match(str(text)) is not None


def mask_url_value(value: str) -> str:
    """A value that is a URL as a whole (a config value, an argument): its password and credential-carrying query
    parameters replaced by ***, however the password is written (spaces, tabs, newlines, '/', '#')."""
    value = str(value)
    span = _userinfo_password(value)
    if span is not None:
        value = f"{value[:span[0]]}{MASK}{value[span[1]:]}"
    return _QUERY_SECRET.sub(rf"\1{MASK}", value)


def _mask_one_url(match: re.Match) -> str:
    return mask_url_value(match.group(0))


def mask_url_passwords(text: str) -> str:
    """``scheme://user:secret@host/db?password=x`` -> ``scheme://user:***@host/db?password=***`` anywhere in text
    (a URL in free text ends at whitespace: passwords holding some are hidden as registered secrets instead)."""
    return _URL.sub(_mask_one_url, str(text))


def url_passwords(text: str) -> list[str]:
    """The passwords and query credentials in ``text`` (a config value or one command-line argument), for exact
    redaction: each URL runs to the end of ``text``; the percent-decoded forms are included."""
    from urllib.parse import unquote

    text = str(text)
    found = []
    for m in _SCHEME.finditer(text):
        url = text[m.start():]
        span = _userinfo_password(url)
        if span is not None:
            found.append(url[span[0]:span[1]])
        found += [q.group(0).split("=", 1)[1] for q in _QUERY_SECRET.finditer(url)]
    found += [unquote(f) for f in found]
    return [f for f in dict.fromkeys(found) if f and f != MASK]


def register(*secrets: str | None) -> None:
    """Remember secrets to hide from now on (empty and None are ignored)."""
    with _LOCK:
        _KNOWN.update(s for s in secrets if isinstance(s, str) and s)


def env_secrets() -> list[str]:
    return [os.environ[n] for n in ENV_SECRETS if os.environ.get(n)]


def _secrets() -> list[str]:
    with _LOCK:
        known = list(_KNOWN)
    return sorted(set(known + env_secrets()), key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str) -> str:
    """``text`` with every registered secret, credential from the environment and URL password replaced by ***."""
    text = mask_url_passwords(str(text))
    for secret in _secrets():
        if len(secret) >= MIN_TEXT:
            text = text.replace(secret, MASK)
    return text


def redact_value(value: str) -> str:
    """A config string without secrets: a URL's password and credential parameters masked, and a value that IS a
    secret replaced. A secret that merely occurs inside a longer value (a key inside ``/data/projectkey1/ds``) is
    left: config files are read back (AutoML trial specs run again), and a rewritten path would break the run."""
    value = mask_url_value(value) if is_url(value) else mask_url_passwords(value)
    return MASK if value in _secrets() else value


def strip_secrets(obj: Any) -> Any:
    """Copy of a config container without any ``encryption_key`` entry (at any depth) and with every string
    :func:`redact_value`-ed (``automl.storage=postgresql://user:***@host/db``)."""
    if isinstance(obj, dict):
        return {k: strip_secrets(v) for k, v in obj.items() if k != "encryption_key"}
    if isinstance(obj, list | tuple):
        return [strip_secrets(v) for v in obj]
    if isinstance(obj, str):
        return redact_value(obj)
    return obj


def register_config(obj: Any) -> None:
    """Register the URL passwords found in any string of a config container (e.g. automl.storage)."""
    if isinstance(obj, dict):
        for v in obj.values():
            register_config(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            register_config(v)
    elif isinstance(obj, str):
        register(*url_passwords(obj))
