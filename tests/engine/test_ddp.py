"""Real 2-process gloo DDP on the CPU: one node x 2 processes, and 2 "nodes" x 1 process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import free_port

ENTRY = os.path.join(os.path.dirname(__file__), "ddp_entry.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "NODE_RANK", "LOCAL_RANK",
                                                            "MASTER_ADDR", "MASTER_PORT", "NUM_GPU_PER_NODE")}
    env.update(PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", **extra)
    return env


def _check(tmp_path, prefix):
    outs = [json.loads((tmp_path / f"{prefix}.rank{r}.json").read_text()) for r in (0, 1)]
    assert all(o["metrics"]["world_size"] == 2 for o in outs)
    mious = [o["metrics"]["val_miou"] for o in outs]
    assert mious[0] is not None and mious[0] == mious[1]
    results = tmp_path / "ddp_results"
    ckpts = sorted(p for p in os.listdir(results) if p.endswith(".pth"))
    assert "model_epoch_002_step_00004.pth" in ckpts  # 12 images / (2 ranks x batch 4) -> 2 steps per epoch
    status = [json.loads(s) for s in (results / "status.json").read_text().splitlines()]
    assert [s["epoch"] for s in status if "graphical" in s] == [1, 2]  # written once, by rank 0


@pytest.mark.slow
def test_two_processes_on_one_node(tmp_path):
    cmd = [sys.executable, ENTRY, str(tmp_path), str(tmp_path / "single"), "train.num_gpus=2",
           "train.sync_batchnorm=true"]
    proc = subprocess.run(cmd, env=_env(MASTER_PORT=str(free_port())), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(tmp_path, "single")


@pytest.mark.slow
def test_two_nodes_one_process_each(tmp_path):
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        env = _env(WORLD_SIZE="2", NODE_RANK=str(node_rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   NUM_GPU_PER_NODE="1")
        cmd = [sys.executable, ENTRY, str(tmp_path), str(tmp_path / "multi")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    _check(tmp_path, "multi")


@pytest.mark.slow
def test_ddp_ranks_get_the_key_from_their_environment_not_their_command_line(tmp_path):
    """Lightning starts each extra rank with the parent's sys.argv: a literal encryption_key must not be on it."""
    import time

    from segformer_tao.data.synthetic import make_demo_dataset
    from segformer_tao.engine.checkpoint import is_encrypted

    data = make_demo_dataset(str(tmp_path / "data"), size=32, train=4, val=2, test=2)
    key = "Sup3r-ddp-Secret-7713"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segformer_tao.cli", "train", f"dataset.segment.root_dir={data}", "model=mit_b0",
         "dataset.segment.num_classes=3", "dataset.segment.label_transform=None", "dataset.segment.img_size=32",
         "dataset.segment.batch_size=2", "dataset.segment.workers=0", "train.num_epochs=1", "automl_policy=off",
         "train.num_gpus=2", f"results_dir={tmp_path / 'out'}", f"encryption_key={key}"],
        env=_env(MASTER_PORT=str(free_port())), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: dict[int, str] = {}
    while proc.poll() is None:  # every process started by the run, while it runs
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == proc.pid:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:  # empty once it exited (a zombie)
                        children[int(pid)] = f.read().decode(errors="replace") or children.get(int(pid), "")
            except (OSError, IndexError, ValueError):
                continue
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    ranks = [c for c in children.values() if "segformer_tao.cli" in c]
    assert ranks, f"no DDP rank seen among {children}"
    assert all(key not in c and "SEGFORMER_INHERITED_ENCRYPTION_KEY" in c for c in ranks), ranks  # \0-separated
    assert key not in out + err and "warning: encryption_key is on the command line" in err
    ckpts = list((tmp_path / "out" / "train").glob("*.pth"))
    assert ckpts and all(is_encrypted(p.read_bytes()[:32]) for p in ckpts)


@pytest.mark.slow
def test_killing_rank_0_takes_the_other_rank_with_it(tmp_path):
    """kill -9 of rank 0 alone (the `segformer train` the user started): the rank it started dies with it instead of
    waiting on a dead peer (issue 34, finding 11: rank 1 still ran 90 s later)."""
    import signal
    import time

    from segformer_tao.data.synthetic import make_demo_dataset

    data = make_demo_dataset(str(tmp_path / "data"), size=32, train=4, val=2, test=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "segformer_tao.cli", "train", f"dataset.segment.root_dir={data}", "model=mit_b0",
         "dataset.segment.num_classes=3", "dataset.segment.label_transform=None", "dataset.segment.img_size=32",
         "dataset.segment.batch_size=2", "dataset.segment.workers=0", "train.num_epochs=200", "automl_policy=off",
         "train.num_gpus=2", f"results_dir={tmp_path / 'out'}"],
        env=_env(MASTER_PORT=str(free_port())), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)

    def ranks() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if int(fields[1]) == proc.pid and fields[0] != "Z" and b"segformer_tao.cli" in f.read():
                        found.append(int(pid))
            except (OSError, IndexError, ValueError):
                continue
        return found

    try:
        deadline = time.monotonic() + 240
        while not (ranks() and (tmp_path / "out" / "train" / "status.json").exists()):  # both ranks are training
            assert proc.poll() is None and time.monotonic() < deadline, "the DDP run did not get going"
            time.sleep(0.2)
        rank1 = ranks()[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{rank1}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"rank 1 (pid {rank1}) outlived rank 0 by 5 s")
    finally:
        import contextlib

        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
