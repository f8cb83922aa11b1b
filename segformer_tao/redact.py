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
MIN_IN_VALUE = 8  # in config values a secret is replaced inside a longer string only from this length on
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
_QUERY_SECRET = re.compile(r"([?&;](?:password|passwd|pwd|sslpassword|secret|token|api_key|apikey)=)[^&;#\s'\"]+",
                           re.IGNORECASE)
_KNOWN: set[str] = set()
_LOCK = threading.Lock()


def _mask_one_url(match: re.Match) -> str:
    url = match.group(0)
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")  # the password runs to the host's '@', so an unencoded '@', ':' or '/' in it is masked too
    userinfo = rest[:at] if at > 0 else ""
    if ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        rest = f"{user}:{MASK}{rest[at:]}"
    return _QUERY_SECRET.sub(rf"\1{MASK}", f"{scheme}://{rest}")


def mask_url_passwords(text: str) -> str:
    """``scheme://user:secret@host/db?password=x`` -> ``scheme://user:***@host/db?password=***`` anywhere in text."""
    return _URL.sub(_mask_one_url, str(text))


def url_passwords(text: str) -> list[str]:
    """The passwords inside the URLs of ``text`` (what :func:`mask_url_passwords` hides), for exact redaction."""
    found = []
    for url in _URL.findall(str(text)):
        rest = url.partition("://")[2]
        at = rest.rfind("@")
        if at > 0 and ":" in rest[:at]:
            found.append(rest[:at].split(":", 1)[1])
        found += [m.group(0).split("=", 1)[1] for m in _QUERY_SECRET.finditer(url)]
    return [f for f in found if f and f != MASK]


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
    """A config string without secrets, changed only where it holds one (a file such as a trial's spec is run
    again, so a short key must not turn ``onnx`` into ``***nx``)."""
    value = mask_url_passwords(value)
    for secret in _secrets():
        if value == secret or (len(secret) >= MIN_IN_VALUE and secret in value):
            value = value.replace(secret, MASK)
    return value


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
