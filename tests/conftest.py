"""Shared test helpers: run the real `segformer` CLI in a subprocess and check how it fails."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_epochs(results_dir) -> tuple[list[int], list[int]]:
    """From a train results dir's status.json: (epochs already done when each training loop started, epochs
    finished, in order). Lines are told apart by their messages, which both status.json layouts share."""
    with open(os.path.join(results_dir, "status.json")) as f:
        lines = [json.loads(line) for line in f.read().splitlines()]
    starts = [ln["epoch"] for ln in lines
              if ln.get("message", "").startswith(("Training started", "Training loop started"))]
    done = [ln["epoch"] for ln in lines if re.fullmatch(r"Epoch \d+/\d+ done\.", ln.get("message", ""))]
    return starts, done


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, cwd: str | None = None, env: dict | None = None, timeout: float = 600) -> CliResult:
    """Run `python -m segformer_tao.cli ARGS` (the same code as the `segformer` console script)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("OMP_NUM_THREADS", "2")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "segformer_tao.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(result: CliResult, *needles: str) -> None:
    """Exit code 2, no traceback, and a message naming every needle (key, file, value, fix)."""
    assert result.returncode == 2, f"expected exit 2, got {result.returncode}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    # our own one-line warnings (e.g. a key on the command line) may come first
    message = "\n".join(ln for ln in result.stderr.strip().splitlines() if not ln.startswith("warning: ")).strip()
    assert message.startswith("error: "), result.output
    for needle in needles:
        assert needle in message, f"{needle!r} not in message: {message}"


@pytest.fixture
def cli():
    return run_cli


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3-compatible server (moto) on 127.0.0.1 for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip with a visible reason where no CUDA GPU is present (they never pass silently)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False here"))
