"""A real one-node SLURM on localhost (start_slurm.sh), a tiny dataset, the train command, and an uninterrupted
reference run whose final weights the interrupted-and-resumed runs must equal bit for bit (CPU, seeded, workers=0)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.engine.checkpoint import load_checkpoint, model_state_dict
from tests.conftest import REPO, free_port

START_SLURM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "start_slurm.sh")
EPOCHS = 4  # 16 images / batch 2: 8 steps per epoch in one process, 4 per rank in two
STEPS_PER_EPOCH = 8
_LAUNCHER_VARS = ("WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT", "NUM_GPU_PER_NODE",
                  "GROUP_RANK", "TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE")


def env(**extra: str) -> dict[str, str]:
    """This process's environment without launcher or SLURM variables, on the CPU, unbuffered output."""
    out = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS and not k.startswith("SLURM_")}
    out.update(PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               MASTER_PORT=str(free_port()), WANDB_MODE="disabled", **extra)
    return out


def train_args(data: str, results: str, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return ["train", f"dataset.segment.root_dir={data}", f"results_dir={results}", "model=mit_b0",
            "dataset.segment.num_classes=3", "dataset.segment.img_size=32", "dataset.segment.label_transform=None",
            "dataset.segment.batch_size=2", "dataset.segment.workers=0", f"train.num_epochs={epochs}",
            "train.checkpoint_interval=2", "automl_policy=off", "train.seed=7", "dataset.segment.check=off",
            "wandb.enable=false", *extra]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "segformer_tao.cli", *args]


def weights(train_dir: str) -> dict[str, torch.Tensor]:
    return model_state_dict(load_checkpoint(os.path.join(train_dir, "segformer_model_latest.pth")))


def assert_same_weights(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"{len(differ)} of {len(expected)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def statuses(train_dir: str) -> list[dict]:
    with open(os.path.join(train_dir, "status.json")) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def job_status(train_dir: str) -> str:
    with open(os.path.join(train_dir, "job.json")) as f:
        return json.load(f)["status"]


def periodic(train_dir: str) -> list[tuple[int, int]]:
    """(epochs, step) of the model_epoch_XXX_step_YYYYY.pth files, sorted."""
    found = [re.fullmatch(r"model_epoch_(\d+)_step_(\d+)\.pth", n) for n in os.listdir(train_dir)]
    return sorted((int(m.group(1)), int(m.group(2))) for m in found if m)


def wait_for_text(path: str, pattern: str, timeout: float = 240, proc: subprocess.Popen | None = None) -> None:
    """Poll a log file until ``pattern`` (a regex) appears in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                if re.search(pattern, f.read()):
                    return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {pattern!r} appeared in {path}")
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} did not appear in {path} within {timeout} s")


@pytest.fixture(scope="session")
def cluster_data(tmp_path_factory) -> str:
    return str(make_demo_dataset(tmp_path_factory.mktemp("cluster") / "data", num_classes=3, size=32, train=16,
                                 val=2, test=2))


@pytest.fixture(scope="session")
def reference(cluster_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of an uninterrupted single-process run."""
    results = str(tmp_path_factory.mktemp("reference"))
    proc = subprocess.run(cli(*train_args(cluster_data, results)), env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return weights(os.path.join(results, "train"))


@pytest.fixture(scope="session")
def slurm() -> None:
    """A running one-node SLURM; skipped (with the reason) only where slurm-wlm/munge cannot be installed."""
    proc = subprocess.run(["bash", START_SLURM], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"no SLURM on this machine: {proc.stderr.strip()}")
    assert proc.returncode == 0, f"start_slurm.sh failed:\n{proc.stdout}\n{proc.stderr}"


def sbatch(script: str, directory, environ: dict[str, str]) -> str:
    """Submit a batch script (text); returns the job id."""
    path = os.path.join(str(directory), "job.sbatch")
    with open(path, "w") as f:
        f.write(script)
    out = subprocess.run(["sbatch", "--parsable", path], env=environ, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def job_state(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def wait_for_job(job: str, timeout: float = 400, start_requeued: bool = True) -> dict[str, str]:
    """Until the job is over (COMPLETED, FAILED, CANCELLED, ...). A requeued job waits for its BeginTime in SLURM
    (about 2 minutes); ``start_requeued`` lets it start at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        if start_requeued and state.get("JobState") == "PENDING" and state.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    raise AssertionError(f"SLURM job {job} still {job_state(job).get('JobState')} after {timeout} s")
