"""kill -9 anywhere: no truncated file under a final name, and re-running resumes to the same final weights.

A reference run trains uninterrupted. A second run is SIGKILLed at 10 seeded random moments (half anywhere, start-up
included; half inside the training loop, so re-runs resume whatever the machine's load), re-run after each kill;
after every kill each file must be readable, and the final weights must equal the reference bit for bit (CPU, seeded,
deterministic, no data-loader workers).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.engine.checkpoint import load_checkpoint, model_state_dict
from tests.conftest import REPO, status_epochs

KILLS = 10


def _train_cmd(data: str, results: str) -> list[str]:
    return [sys.executable, "-m", "segformer_tao.cli", "train", f"dataset.segment.root_dir={data}",
            f"results_dir={results}", "model=mit_b0", "dataset.segment.num_classes=3", "dataset.segment.img_size=32",
            "dataset.segment.label_transform=None", "dataset.segment.batch_size=2", "dataset.segment.workers=0",
            "train.num_epochs=6", "train.checkpoint_interval=1", "automl_policy=off", "train.seed=7",
            "dataset.segment.check=off"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def _assert_files_intact(results: str) -> None:
    for root, _, files in os.walk(results):
        for name in files:
            path = os.path.join(root, name)
            assert not name.endswith(".tmp") or name.startswith("."), f"temp file under a final name: {path}"
            if name.startswith("."):
                continue  # an in-flight temp file of the killed writer; never read by anyone
            if name.endswith(".pth"):
                load_checkpoint(path)  # raises on a truncated/corrupt checkpoint
            elif name == "job.json":
                with open(path) as f:
                    json.load(f)
            elif name == "status.json":
                with open(path) as f:
                    lines = f.read().splitlines()
                for line in lines:
                    json.loads(line)


def _wait_for_loop_start(train_dir: str, starts_before: int, proc: subprocess.Popen) -> float:
    """Poll status.json until one more training loop has started (or the process ended); returns the time."""
    while proc.poll() is None:
        try:
            if len(status_epochs(train_dir)[0]) > starts_before:
                break
        except (OSError, ValueError):
            pass  # not written yet, or a line being appended
        time.sleep(0.02)
    return time.monotonic()


def _weights(results: str) -> dict[str, torch.Tensor]:
    return model_state_dict(load_checkpoint(os.path.join(results, "train", "segformer_model_latest.pth")))


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_matches_uninterrupted_run(tmp_path):
    data = str(make_demo_dataset(tmp_path / "data", num_classes=3, size=32, train=4, val=2, test=2))
    ref = str(tmp_path / "reference")
    start = time.monotonic()
    proc = subprocess.Popen(_train_cmd(data, ref), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    loop_started = _wait_for_loop_start(os.path.join(ref, "train"), 0, proc) - start
    assert proc.wait() == 0
    duration = time.monotonic() - start
    window = max(duration - loop_started, 0.5)  # the training loop's share, after imports and set-up

    rng = random.Random(1234)
    killed = str(tmp_path / "killed")
    kills_landed = 0
    for i in range(KILLS):
        proc = subprocess.Popen(_train_cmd(data, killed), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        if i % 2:  # anywhere, start-up included (how long start-up takes depends on the machine's load)
            time.sleep(rng.uniform(0.1, 0.6) * duration)
        else:  # inside the training loop, so that re-runs have checkpoints to resume from whatever the load
            starts = len(status_epochs(os.path.join(killed, "train"))[0]) if os.path.exists(
                os.path.join(killed, "train", "status.json")) else 0
            _wait_for_loop_start(os.path.join(killed, "train"), starts, proc)
            time.sleep(rng.uniform(0.05, 0.5) * window)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills_landed += 1
        proc.wait()
        _assert_files_intact(killed)
    assert kills_landed >= KILLS // 2, "most kills must land while training runs"
    final = subprocess.run(_train_cmd(data, killed), env=_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    _assert_files_intact(killed)

    # Each re-run resumed instead of restarting (a seeded restart also ends with the same weights): every epoch
    # was logged once, in order (its checkpoint is saved before its status line, so a logged epoch is never
    # redone), and re-runs started where the last checkpoint left off.
    starts, trained = status_epochs(os.path.join(killed, "train"))
    assert trained == sorted(set(trained)) and trained[-1] == 6, trained
    assert starts == sorted(starts) and starts[-1] > 0, starts

    expected, got = _weights(ref), _weights(killed)
    assert expected.keys() == got.keys()
    mismatched = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not mismatched, f"{len(mismatched)} tensors differ after kill/resume, e.g. {mismatched[:3]}"
