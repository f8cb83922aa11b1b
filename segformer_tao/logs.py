"""Log setup: stdout plus ``<results_dir>/log.txt``, every line through :func:`segformer_tao.redact.redact`."""

from __future__ import annotations

import logging
import os

from segformer_tao import io as sio
from segformer_tao import redact


class _RedactSecrets(logging.Filter):
    """Every log line through :func:`redact.redact` (registered secrets, cloud credentials, URL passwords)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


class _LogFileHandler(logging.FileHandler):
    """A FileHandler that opens log.txt through :func:`segformer_tao.io.open_append` (no symlinks, FILE_MODE)."""

    def _open(self):
        return sio.open_append(self.baseFilename, encoding=self.encoding, errors=self.errors)


def install_redaction(handlers: list[logging.Handler] | None = None) -> None:
    """Add the redacting filter to the root logger's handlers (once each)."""
    for h in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, _RedactSecrets) for f in h.filters):
            h.addFilter(_RedactSecrets())


def setup_logging(out_dir: str, secrets: list[str] | None = None) -> None:
    """Log to stdout and <out_dir>/log.txt; known secrets are replaced by *** in both."""
    redact.register(*(secrets or []))
    root = logging.getLogger()
    handler = _LogFileHandler(os.path.join(out_dir, "log.txt"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    install_redaction()


def redact_in_logs(secrets: list[str]) -> None:
    """Replace these secrets by *** in every log line and message from now on (e.g. a storage URL's password)."""
    redact.register(*secrets)
    install_redaction()
