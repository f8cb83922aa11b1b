"""``tao_core_path``: a directory holding TAO Core (``nvidia_tao_core`` from PyPI's nvidia-tao-core) for the tests
that check our files with TAO's own code.

TAO Core is a test-only dependency, installed without its dependencies (they are its API server's and clash
with ours): ``make install`` puts it into ``<venv>/tao-core`` (``pip install --no-deps --target``); where that
is missing the fixture installs it the same way into a temporary directory. If it cannot be installed the test
fails with pip's reason: a check that cannot run is never reported as passed or skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TAO_CORE = "nvidia-tao-core==7.3.0"  # the TAO release whose schema we follow (also pinned in the Makefile)


def _holds_tao_core(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "nvidia_tao_core", "microservices", "utils", "handler_utils.py"))


@pytest.fixture(scope="session")
def tao_core_path(tmp_path_factory) -> str:
    for candidate in (os.environ.get("SEGFORMER_TAO_CORE_DIR", ""), os.path.join(sys.prefix, "tao-core")):
        if candidate and _holds_tao_core(candidate):
            return candidate
    target = str(tmp_path_factory.mktemp("tao-core"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
           "--target", target, TAO_CORE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not _holds_tao_core(target):
        pytest.fail(f"cannot install {TAO_CORE} (needed to check status.json with TAO's own StatusParser): "
                    f"pip exited with {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}", pytrace=False)
    return target
