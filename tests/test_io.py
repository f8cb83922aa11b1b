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


# ---------------------------------------------------------------- appends never follow links; one file-mode policy
def _plant_link(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    (results / name).symlink_to(victim)
    return results, victim


@pytest.mark.parametrize("name", ["status.json", "log.txt", "trial.log", ".segformer.lock"])
def test_appended_files_refuse_a_symlink_planted_at_their_name(tmp_path, name):
    """status.json, log.txt and trial logs are appended, the lock file is rewritten in place: a symbolic link at
    that name is a UserError naming the file, and the file it points at is left untouched."""
    import logging

    from segformer_tao import io, joblock, logs
    from segformer_tao.errors import UserError

    results, victim = _plant_link(tmp_path, name)
    path = str(results / name)
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(UserError, match="is a symbolic link") as err:
        if name == "status.json":
            io.append_line(path, '{"status": "STARTED"}')
        elif name == "log.txt":
            logs.setup_logging(str(results))
        elif name == "trial.log":
            io.open_append(path, binary=True)
        else:
            joblock.JobLock.acquire(str(results), "train", ["segformer", "train"])
    for h in root.handlers[len(before):]:
        root.removeHandler(h)
    assert path in str(err.value) and "results_dir" in str(err.value)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_output_file_gets_the_same_mode_from_the_umask(tmp_path, umask):
    """One policy (docs/security.md): 0666 minus the umask for atomic writes (checkpoints included) and appends
    alike; before, atomic writes were always 0600 (mkstemp) and appends followed the umask."""
    import stat

    import torch

    from segformer_tao import io
    from segformer_tao.engine.checkpoint import save_checkpoint

    old = os.umask(umask)
    try:
        io.write_text(str(tmp_path / "experiment.yaml"), "a: 1\n")
        io.write_json(str(tmp_path / "job.json"), {"a": 1})
        save_checkpoint(str(tmp_path / "model.pth"), {"state_dict": {"w": torch.zeros(2)}})
        save_checkpoint(str(tmp_path / "encrypted.pth"), {"state_dict": {"w": torch.zeros(2)}}, encryption_key="k")
        io.append_line(str(tmp_path / "status.json"), "{}")
        with io.open_append(str(tmp_path / "trial.log"), binary=True) as f:
            f.write(b"x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask) and len(modes) == 6, {k: oct(v) for k, v in modes.items()}
