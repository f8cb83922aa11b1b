"""Atomic writes: a write that fails half-way (disk full) leaves the previous file whole and no temp file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# In a child process (the limit would hit pytest too): files may grow to 4 KiB, then writes fail with EFBIG.
CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from segformer_tao import io
try:
    getattr(io, sys.argv[1])(sys.argv[2], "x" * 100_000 if sys.argv[1] == "write_text" else b"x" * 100_000)
except OSError as e:
    print("failed:", e.strerror)
"""


@pytest.mark.parametrize("writer", ["write_bytes", "write_text"])
def test_a_failed_write_keeps_the_old_file(tmp_path, writer):
    target = tmp_path / "segformer_model_latest.pth"
    old = b"previous complete file\n" * 50
    target.write_bytes(old)
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", CHILD, writer, str(target)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("failed: File too large"), out.stdout + out.stderr
    assert target.read_bytes() == old  # never truncated nor half-overwritten
    assert os.listdir(tmp_path) == [target.name]  # the temp file was removed
