"""ranks.launch and ranks.check_allocation on the variables each launcher really sets (values as SLURM 22.05,
torchrun 2.x, TAO's scripts and Lightning's subprocess launcher set them)."""

from __future__ import annotations

import pytest

from segformer_tao.errors import UserError
from segformer_tao.ranks import PER_NODE_TASKS, check_allocation, launch

SLURM_TASK_1 = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "segtrain", "SLURM_NTASKS": "4", "SLURM_NNODES": "2",
                "SLURM_NTASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_PROCID": "3",
                "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "2",
                "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}


def test_one_task_per_device_under_slurm_takes_slurm_ranks():
    got = launch(SLURM_TASK_1)
    assert (got.launcher, got.global_rank, got.local_rank, got.node_rank, got.world_size) == ("slurm", 3, 1, 1, 4)
    assert launch({**SLURM_TASK_1, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}).global_rank == 0
    # an interactive allocation (salloc's bash) is not one task per device: Lightning does not use SLURM there
    assert launch({**SLURM_TASK_1, "SLURM_JOB_NAME": "bash"}).launcher == "none"


def test_torchrun_wins_over_slurm_and_tao_variables():
    env = {**SLURM_TASK_1, "TORCHELASTIC_RUN_ID": "x", "RANK": "5", "LOCAL_RANK": "1", "GROUP_RANK": "2",
           "WORLD_SIZE": "8", "MASTER_ADDR": "n0", "MASTER_PORT": "29400"}
    got = launch(env)
    assert (got.launcher, got.global_rank, got.local_rank, got.node_rank, got.world_size, got.master_addr) == (
        "torchrun", 5, 1, 2, 8, "n0")


def test_one_process_per_node_and_lightning_children():
    node1 = {"WORLD_SIZE": "2", "NODE_RANK": "1", "NUM_GPU_PER_NODE": "4", "MASTER_ADDR": "n0"}
    assert (launch(node1).launcher, launch(node1).global_rank) == ("tao", 4)  # node 1's launcher process
    assert launch({"WORLD_SIZE": "2", "NODE_RANK": "0", "NUM_GPU_PER_NODE": "4"}).global_rank == 0
    child = {**node1, "LOCAL_RANK": "3"}  # Lightning's child 3 on node 1
    assert launch(child).global_rank == 7
    script = {**node1, PER_NODE_TASKS: "1", "SLURM_PROCID": "1", "SLURM_JOB_ID": "7"}  # SLURM_NTASKS hidden
    assert launch(script).launcher == "slurm-per-node"
    assert launch({}).global_rank == 0 and launch({"LOCAL_RANK": "1"}).global_rank == 1


def test_mismatched_allocations_name_both_sides():
    check_allocation(2, 2, SLURM_TASK_1)  # agrees
    with pytest.raises(UserError, match=r"runs 2 task\(s\) per node on 2 node\(s\).*train.num_gpus=1 and "
                                        r"train.num_nodes=2"):
        check_allocation(1, 2, SLURM_TASK_1)
    with pytest.raises(UserError, match="train.num_nodes=1"):
        check_allocation(2, 1, SLURM_TASK_1)
    with pytest.raises(UserError, match="not the same number on every node"):
        check_allocation(2, 2, {**SLURM_TASK_1, "SLURM_NTASKS": "3"})
    with pytest.raises(UserError, match="sees 1 GPU"):
        check_allocation(2, 2, {**SLURM_TASK_1, "CUDA_VISIBLE_DEVICES": "1"})
    with pytest.raises(UserError, match="starts 2 tasks per node"):
        check_allocation(4, 1, {PER_NODE_TASKS: "2", "SLURM_JOB_ID": "7", "WORLD_SIZE": "1", "NODE_RANK": "0"})
    check_allocation(4, 1, {PER_NODE_TASKS: "1", "WORLD_SIZE": "1", "NODE_RANK": "0"})
    batch = {k: v for k, v in SLURM_TASK_1.items() if not k.startswith("SLURM_STEP")}  # the batch script, no srun
    with pytest.raises(UserError, match="not in an srun step"):
        check_allocation(2, 2, batch)
    check_allocation(1, 1, {**batch, "SLURM_NTASKS": "1", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "1",
                            "SLURM_TASKS_PER_NODE": "1"})  # a one-task job may run in its batch script
    # `srun -n1` in a job of 2 tasks per node: the step's own layout counts
    check_allocation(1, 1, {**SLURM_TASK_1, "SLURM_NTASKS": "1", "SLURM_STEP_TASKS_PER_NODE": "1",
                            "SLURM_STEP_NUM_NODES": "1"})
    check_allocation(1, 1, {})  # no launcher: nothing to compare
    check_allocation(1, 1, {**SLURM_TASK_1, "TORCHELASTIC_RUN_ID": "x"})  # torchrun inside srun: torchrun decides
