"""Training under a real one-node SLURM (slurmctld + slurmd + munge on localhost, 2 gloo processes on the CPU):
both launch conventions, a mismatched allocation, scancel --signal=TERM (preempted, resumed to the uninterrupted
run's weights) and --signal=USR1 with train.slurm_requeue (requeued, finished)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import pytest

from tests.cluster.conftest import (
    STEPS_PER_EPOCH,
    assert_same_weights,
    cli,
    env,
    job_status,
    periodic,
    sbatch,
    statuses,
    train_args,
    wait_for_job,
    wait_for_text,
    weights,
)
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _task_wrapper(tmp_path) -> str:
    """Runs its arguments and appends "<SLURM_PROCID> <exit code> <milliseconds>" to rc.txt: each rank's outcome."""
    path = tmp_path / "task.sh"
    # scancel --signal reaches this shell too: a trap (not inherited by the command) keeps it alive to write rc.txt
    path.write_text("#!/bin/bash\ntrap : TERM USR1\nstart=$(date +%s%N)\n\"$@\"\nrc=$?\n"
                    f"echo \"$SLURM_PROCID $rc $(( ($(date +%s%N) - start) / 1000000 ))\" >> {tmp_path}/rc.txt\n"
                    "exit $rc\n")
    path.chmod(0o755)
    return str(path)


def _segformer_command(tmp_path) -> str:
    """A `segformer` executable for scripts/train_multi_node.sh's SEGFORMER (one path)."""
    path = tmp_path / "segformer"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} -m segformer_tao.cli \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def _header(tmp_path, tasks_per_node: int, name: str = "segtrain") -> str:
    return (f"#!/bin/bash\n#SBATCH --job-name={name}\n#SBATCH --nodes=1\n#SBATCH --ntasks-per-node={tasks_per_node}\n"
            f"#SBATCH --output={tmp_path}/out.txt\n#SBATCH --open-mode=append\n")


def _ranks(tmp_path) -> list[tuple[int, int, float]]:
    lines = (tmp_path / "rc.txt").read_text().split("\n")
    return sorted((int(r), int(c), float(s)) for r, c, s in (ln.split() for ln in lines if ln.strip()))


def _assert_two_process_success(train_dir: str, state: dict, tmp_path) -> None:
    out = (tmp_path / "out.txt").read_text()
    assert state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0", out[-3000:]
    with open(os.path.join(train_dir, "job.json")) as f:
        job = json.load(f)
    assert job["status"] == "done" and job["metrics"]["world_size"] == 2, job
    assert (2, 2 * STEPS_PER_EPOCH // 2) in periodic(train_dir)  # 16 images / (2 ranks x batch 2): 4 steps an epoch
    assert [s["status"] for s in statuses(train_dir)][-1] == "SUCCESS"
    assert "MEMBER: 2/2" in out and "is in use" not in out


def test_one_task_per_device_srun_segformer_train(slurm, cluster_data, tmp_path):
    """Lightning's convention: --ntasks-per-node=2 and `srun segformer train train.num_gpus=2`."""
    wrapper = _task_wrapper(tmp_path)
    cmd = shlex.join([wrapper, *cli(*train_args(cluster_data, str(tmp_path / "out"), "train.num_gpus=2",
                                                 epochs=2))])
    job = sbatch(_header(tmp_path, 2) + f"srun {cmd}\n", tmp_path, env())
    state = wait_for_job(job, timeout=240)  # about 40 s; a rank waiting for a lost peer would wait forever
    assert [(r, c) for r, c, _ in _ranks(tmp_path)] == [(0, 0), (1, 0)]
    _assert_two_process_success(str(tmp_path / "out" / "train"), state, tmp_path)


def test_one_task_per_node_with_the_script(slurm, cluster_data, tmp_path):
    """TAO's convention: --ntasks-per-node=1 and scripts/train_multi_node.sh, Lightning starts 2 processes."""
    script = os.path.join(REPO, "scripts", "train_multi_node.sh")
    args = shlex.join(train_args(cluster_data, str(tmp_path / "out"), epochs=2)[1:])
    job = sbatch(_header(tmp_path, 1) + f"srun {script} {args}\n", tmp_path,
                 env(NUM_GPU_PER_NODE="2", SEGFORMER=_segformer_command(tmp_path)))
    state = wait_for_job(job)
    _assert_two_process_success(str(tmp_path / "out" / "train"), state, tmp_path)


def test_mismatched_allocation_exits_2_on_every_rank_within_a_minute(slurm, cluster_data, tmp_path):
    """--ntasks-per-node=2 with train.num_gpus=1, and the one-task-per-node script under --ntasks-per-node=2."""
    wrapper = _task_wrapper(tmp_path)
    direct = shlex.join([wrapper, *cli(*train_args(cluster_data, str(tmp_path / "a"), "train.num_gpus=1"))])
    script = shlex.join([wrapper, os.path.join(REPO, "scripts", "train_multi_node.sh"),
                         *train_args(cluster_data, str(tmp_path / "b"))[1:]])
    job = sbatch(_header(tmp_path, 2) + f"srun {direct}\necho == >> {tmp_path}/rc.txt\nsrun {script}\n", tmp_path,
                 env(NUM_GPU_PER_NODE="1", SEGFORMER=_segformer_command(tmp_path)))
    started = time.monotonic()
    wait_for_job(job, timeout=300)
    out = (tmp_path / "out.txt").read_text()
    first, second = ((tmp_path / "rc.txt").read_text().split("==\n"))
    for part in (first, second):
        ranks = sorted(tuple(ln.split()) for ln in part.strip().splitlines())
        assert [(r, c) for r, c, _ in ranks] == [("0", "2"), ("1", "2")], out[-3000:]
        assert all(int(ms) < 60_000 for *_, ms in ranks), ranks
    assert time.monotonic() - started < 300
    assert out.count("runs 2 task(s) per node on 1 node(s) (one task per device), but train.num_gpus=1") == 2, out
    assert out.count("scripts/train_multi_node.sh runs one task per node, but SLURM job") == 2, out
    assert "Traceback" not in out and "internal error" not in out


def test_scancel_term_mid_epoch_preempts_and_the_rerun_resumes_to_the_same_weights(slurm, cluster_data, reference,
                                                                                    tmp_path):
    wrapper = _task_wrapper(tmp_path)
    train_dir = str(tmp_path / "out" / "train")
    cmd = shlex.join([wrapper, *cli(*train_args(cluster_data, str(tmp_path / "out")))])
    job = sbatch(_header(tmp_path, 1) + f"srun {cmd}\n", tmp_path, env())
    wait_for_text(str(tmp_path / "out.txt"), rf"Epoch 3/4 step 3/{STEPS_PER_EPOCH}")
    os.system(f"scancel --signal=TERM {job}")
    wait_for_job(job, start_requeued=False)
    assert _ranks(tmp_path)[0][1] == 75, (tmp_path / "out.txt").read_text()[-3000:]
    last = statuses(train_dir)[-1]
    assert last["status"] == "PREEMPTED" and "internal error" not in last["message"], last
    assert job_status(train_dir) == "preempted"
    (epochs, step), last_periodic = periodic(train_dir)[-1], (2, 2 * STEPS_PER_EPOCH)
    assert epochs == 2 and step > last_periodic[1] and step % STEPS_PER_EPOCH, periodic(train_dir)  # mid-epoch 3

    job = sbatch(_header(tmp_path, 1) + f"srun {cmd}\n", tmp_path, env())  # the same job again, no flag
    state = wait_for_job(job)
    out = (tmp_path / "out.txt").read_text()
    assert state["JobState"] == "COMPLETED", out[-3000:]
    assert f"(epoch 2 of 4 done, step {step};" in out
    assert_same_weights(reference, weights(train_dir))


def test_scancel_usr1_with_requeue_requeues_the_job_and_it_finishes(slurm, cluster_data, tmp_path):
    train_dir = str(tmp_path / "out" / "train")
    cmd = shlex.join(cli(*train_args(cluster_data, str(tmp_path / "out"), "train.slurm_requeue=true", epochs=3)))
    job = sbatch(_header(tmp_path, 1, "segrequeue") + 'echo "attempt ${SLURM_RESTART_COUNT:-0}"\n' + f"srun {cmd}\n",
                 tmp_path, env())
    wait_for_text(str(tmp_path / "out.txt"), rf"Epoch 2/3 step 2/{STEPS_PER_EPOCH}")
    os.system(f"scancel --signal=USR1 {job}")
    state = wait_for_job(job)
    out = (tmp_path / "out.txt").read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", out[-3000:]
    assert "attempt 0" in out and "attempt 1" in out and f"SLURM job {job} requeued" in out
    assert [s["status"] for s in statuses(train_dir) if s["status"] not in ("RUNNING",)] == [
        "STARTED", "PREEMPTED", "STARTED", "SUCCESS"]
    assert "Resuming training from" in out.split("attempt 1")[1]
    assert job_status(train_dir) == "done"
