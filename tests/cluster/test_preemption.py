"""Preemption and restarts without SLURM: SIGTERM to a plain `segformer train`, the newest-complete-checkpoint rule,
the wall-clock checkpoint interval, and a torchrun elastic restart after a worker is killed mid-epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch

from segformer_tao.engine.checkpoint import save_checkpoint
from segformer_tao.engine.resume import newest_checkpoint
from segformer_tao.engine.trainer import find_resume_checkpoint
from segformer_tao.errors import UserError
from tests.cluster.conftest import (
    STEPS_PER_EPOCH,
    assert_same_weights,
    cli,
    env,
    job_status,
    periodic,
    statuses,
    train_args,
    wait_for_text,
    weights,
)
from tests.conftest import status_epochs


@pytest.mark.slow
def test_sigterm_to_a_plain_train_preempts_and_the_rerun_resumes_to_the_same_weights(cluster_data, reference,
                                                                                      tmp_path):
    train_dir = str(tmp_path / "out" / "train")
    cmd = cli(*train_args(cluster_data, str(tmp_path / "out")))
    log = tmp_path / "first.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env(), stdout=out, stderr=subprocess.STDOUT)
        wait_for_text(str(log), rf"Epoch 3/4 step 2/{STEPS_PER_EPOCH}", proc=proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 75, log.read_text()[-3000:]
    text = log.read_text()
    assert "SIGTERM received" in text and "internal error" not in text and "Traceback" not in text
    assert statuses(train_dir)[-1]["status"] == "PREEMPTED" and job_status(train_dir) == "preempted"
    epochs, step = periodic(train_dir)[-1]
    assert epochs == 2 and 2 * STEPS_PER_EPOCH < step < 3 * STEPS_PER_EPOCH, periodic(train_dir)  # mid-epoch 3

    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"(epoch 2 of 4 done, step {step};" in rerun.stdout
    starts, done = status_epochs(train_dir)
    assert starts == [0, 2] and done == [1, 2, 3, 4]  # epoch 3 finished once, by the resumed run
    assert_same_weights(reference, weights(train_dir))


def _payload(epochs: int, step: int) -> dict:
    return {"loops": {"fit_loop": {"epoch_progress": {"total": {"processed": epochs}}}}, "global_step": step,
            "epoch": epochs - 1, "state_dict": {}}


def _load(path: str) -> dict:
    from segformer_tao.engine.checkpoint import load_checkpoint

    return load_checkpoint(path)


def test_resume_takes_the_newest_complete_checkpoint_whatever_its_name(tmp_path):
    """Killed after model_epoch_030 was written but before latest was rewritten: resume from epoch 30; a truncated
    newer file is skipped (named in the reason); latest wins again once it is the newest."""
    d = str(tmp_path)
    save_checkpoint(os.path.join(d, "segformer_model_latest.pth"), _payload(20, 160))
    save_checkpoint(os.path.join(d, "model_epoch_020_step_00160.pth"), _payload(20, 160))
    save_checkpoint(os.path.join(d, "model_epoch_030_step_00240.pth"), _payload(30, 240))
    path, payload, why = newest_checkpoint(d, _load)
    assert os.path.basename(path) == "model_epoch_030_step_00240.pth" and payload["global_step"] == 240
    assert "30 epoch(s), step 240" in why

    save_checkpoint(os.path.join(d, "model_epoch_030_step_00250.pth"), _payload(30, 250))  # mid-epoch (preempted)
    good = open(os.path.join(d, "model_epoch_030_step_00250.pth"), "rb").read()
    with open(os.path.join(d, "model_epoch_031_step_00260.pth"), "wb") as f:  # cut short by hand (not our writer)
        f.write(good[: len(good) // 2])
    path, _, why = newest_checkpoint(d, _load)
    assert os.path.basename(path) == "model_epoch_030_step_00250.pth"
    assert "skipped unreadable model_epoch_031_step_00260.pth" in why

    save_checkpoint(os.path.join(d, "segformer_model_latest.pth"), _payload(32, 270))  # latest is the newest again
    assert os.path.basename(newest_checkpoint(d, _load)[0]) == "segformer_model_latest.pth"


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
    from omegaconf import OmegaConf

    save_checkpoint(str(tmp_path / "segformer_model_latest.pth"), _payload(2, 16), "the-key")
    cfg = OmegaConf.create({"train": {"resume_training_checkpoint_path": None}, "encryption_key": None})
    with pytest.raises(UserError, match="encrypted but no encryption_key"):
        find_resume_checkpoint(cfg, str(tmp_path))
    assert find_resume_checkpoint(cfg, str(tmp_path / "empty")) is None


def _workers(parent: int) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the processes torchrun started."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            found[int(environ[b"LOCAL_RANK"])] = int(pid)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return found


@pytest.mark.slow
def test_torchrun_restarts_the_group_after_a_worker_dies_and_it_resumes(cluster_data, tmp_path):
    train_dir = str(tmp_path / "out" / "train")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "segformer_tao.cli", *train_args(cluster_data, str(tmp_path / "out"), "train.num_gpus=2",
                                                  "train.checkpoint_interval=1", epochs=3)]
    log = tmp_path / "torchrun.txt"
    with open(log, "w") as out:
        # a store per round (docs/clusters.md): the agent's shared store keeps the dead round's gloo addresses
        proc = subprocess.Popen(cmd, env=env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"), stdout=out,
                                stderr=subprocess.STDOUT)
        wait_for_text(str(log), r"Epoch 2/3 step 2/4", proc=proc)  # 4 steps an epoch per rank
        workers = _workers(proc.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        deadline = time.monotonic() + 400
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    starts, done = status_epochs(train_dir)
    assert starts == [0, 1] and done == [1, 2, 3], (starts, done, text[-3000:])  # the restarted group resumed
    assert "Resuming training from" in text and "(epoch 1 of 3 done, step 4;" in text
    assert job_status(train_dir) == "done"


class _SlowSteps(pl.Callback):
    """Each training step takes 0.2 s longer, so that a wall-clock interval of 0.003 min (0.18 s) passes each step."""

    def on_train_batch_start(self, *args) -> None:  # before the step: counted by the decision at its end
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("minutes", [0.003, 0.0])
def test_wall_clock_interval_writes_mid_epoch_checkpoints(tmp_path, minutes):
    from segformer_tao.engine.datamodule import SegDataModule
    from segformer_tao.engine.trainer import train_model
    from tests.engine.conftest import RandomSegDataset, TinySegmenter, tiny_cfg

    cfg = tiny_cfg(tmp_path, "train.checkpoint_interval=5", f"train.checkpoint_interval_minutes={minutes}",
                   "train.num_epochs=2")
    torch.manual_seed(0)
    dm = SegDataModule(cfg, RandomSegDataset(12, mode="train"), RandomSegDataset(4, mode="eval", seed=1))
    train_model(cfg, str(tmp_path / "out"), TinySegmenter(), dm, callbacks=[_SlowSteps()])
    written = periodic(str(tmp_path / "out"))  # 12 images / batch 4: 3 steps an epoch; periodic: the last epoch only
    if minutes:
        assert {(0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (2, 6)} <= set(written), written
    else:
        assert written == [(2, 6)]
