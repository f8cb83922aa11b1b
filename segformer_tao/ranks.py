"""Which process of a multi-process run this is: the one place that reads the launchers' rank variables.

Launchers (what :func:`launch` reports as ``launcher``):

- ``slurm``: one SLURM task per device (``srun segformer train`` under ``--ntasks-per-node=N``); ranks from
  ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NODEID``, as Lightning's SLURMEnvironment reads them. Lightning
  takes this path whenever ``SLURM_NTASKS`` is set and the job name is not ``bash``/``interactive``; so do we.
- ``torchrun``: torchrun (or torch.distributed.run) started every process: ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE`` (processes), ``GROUP_RANK``.
- ``slurm-per-node`` / ``tao``: one process per node (scripts/train_multi_node.sh, TAO's convention:
  ``WORLD_SIZE`` = nodes, ``NODE_RANK``, ``NUM_GPU_PER_NODE``); Lightning then starts the per-device processes,
  which it gives ``LOCAL_RANK`` and ``NODE_RANK``.
- ``none``: a plain process (Lightning may still start per-device children, which carry ``LOCAL_RANK``).

What only global rank 0 may do (the results-dir lock, job.json, status.json, logs, checkpoints) asks
:func:`is_primary`. No torch import here: the CLI asks before anything heavy is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from segformer_tao.errors import UserError

# Set by scripts/train_multi_node.sh: the SLURM tasks per node it saw before hiding SLURM's task variables.
PER_NODE_TASKS = "SEGFORMER_SLURM_TASKS_PER_NODE"
# A child Lightning started (its subprocess launcher sets these on top of the parent's environment).
_CHILD_VARIABLES = ("LOCAL_RANK", "NODE_RANK")


@dataclass(frozen=True)
class Launch:
    """What the launcher says about this process: ``global_rank`` (0 .. world_size-1), ``local_rank`` (on its
    node), ``node_rank``, ``world_size`` (processes; ``None`` when Lightning decides it later from train.num_gpus),
    ``master_addr`` / ``master_port`` (``None`` where the launcher leaves them to Lightning)."""

    launcher: str
    global_rank: int
    local_rank: int
    node_rank: int
    world_size: int | None
    master_addr: str | None
    master_port: str | None


def _int(env: Mapping[str, str], name: str, default: int = 0) -> int:
    return int(env.get(name, "") or default)


def slurm_managed(env: Mapping[str, str] | None = None) -> bool:
    """True when Lightning will treat this process as one SLURM task per device (its SLURMEnvironment.detect)."""
    env = os.environ if env is None else env
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def slurm_tasks_per_node(env: Mapping[str, str]) -> int:
    """Tasks per node of this srun step (``SLURM_STEP_TASKS_PER_NODE``, ``2`` or ``2(x3)``), else the job's
    (``SLURM_NTASKS_PER_NODE``, ``SLURM_TASKS_PER_NODE``), else tasks / nodes."""
    raw = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if raw:
        return int(raw.split("(")[0].split(",")[0])
    return max(1, _int(env, "SLURM_NTASKS", 1) // max(1, _int(env, "SLURM_NNODES", 1)))


def launch(env: Mapping[str, str] | None = None) -> Launch:
    """Read the launcher's variables (see the module docstring); ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if "TORCHELASTIC_RUN_ID" in env or "GROUP_RANK" in env:
        return Launch("torchrun", _int(env, "RANK"), _int(env, "LOCAL_RANK"), _int(env, "GROUP_RANK"),
                      _int(env, "WORLD_SIZE", 1), addr, port)
    if slurm_managed(env):
        return Launch("slurm", _int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID"), _int(env, "SLURM_NODEID"),
                      _int(env, "SLURM_NTASKS", 1), addr, port)
    local, node = _int(env, "LOCAL_RANK"), _int(env, "NODE_RANK")
    if PER_NODE_TASKS in env:
        name = "slurm-per-node"
    elif "WORLD_SIZE" in env and "LOCAL_RANK" not in env:
        name = "tao"
    else:
        name = "none"
    # Lightning's children: global rank = node * devices per node + local, devices from NUM_GPU_PER_NODE when set.
    per_node = _int(env, "NUM_GPU_PER_NODE", 1)
    rank = _int(env, "RANK", node * per_node + local) if any(v in env for v in _CHILD_VARIABLES) else 0
    return Launch(name, rank, local, node, None, addr, port)


def is_primary() -> bool:
    """False in the extra processes of a multi-process (DDP) run: only global rank 0 writes job files."""
    return launch().global_rank == 0


def check_allocation(num_gpus: int, num_nodes: int, env: Mapping[str, str] | None = None) -> None:
    """UserError (on every rank, before any process group is formed) when the launcher's allocation and
    train.num_gpus / train.num_nodes disagree: waiting for ranks that will never come would hang the job."""
    env = os.environ if env is None else env
    where = f"SLURM job {env.get('SLURM_JOB_ID', '?')}"
    if PER_NODE_TASKS in env and "LOCAL_RANK" not in env:
        tasks = int(env[PER_NODE_TASKS].split("(")[0] or 1)
        if tasks != 1:
            raise UserError(
                f"scripts/train_multi_node.sh runs one task per node, but {where} starts {tasks} tasks per node "
                f"(--ntasks-per-node={tasks}), so {tasks} independent trainings would compete for each node. Use "
                f"`#SBATCH --ntasks-per-node=1` with the script (it starts train.num_gpus processes per node), or "
                f"drop the script and run `srun segformer train train.num_gpus={tasks} ...` (one task per device).")
        return
    if not slurm_managed(env) or "TORCHELASTIC_RUN_ID" in env:
        return
    per_node, total = slurm_tasks_per_node(env), _int(env, "SLURM_NTASKS", 1)
    nodes = _int(env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_NNODES", 1))
    if "SLURM_STEP_ID" not in env and "SLURM_JOB_ID" in env and total > 1:
        raise UserError(
            f"`segformer train` runs in the batch script of {where} itself, not in an srun step, so 1 process would "
            f"wait for the {total} tasks the job asked for. Start it with `srun segformer train ...` (one task per "
            "device), or use scripts/train_multi_node.sh with `#SBATCH --ntasks-per-node=1`.")
    if per_node * nodes != total:
        raise UserError(
            f"{where} has {total} tasks on {nodes} node(s), not the same number on every node. Ask for "
            "`--ntasks-per-node=<devices per node>` with `--nodes=<nodes>`, so that every node runs one task per "
            "device.")
    if per_node != num_gpus or nodes != num_nodes:
        raise UserError(
            f"{where} runs {per_node} task(s) per node on {nodes} node(s) (one task per device), but "
            f"train.num_gpus={num_gpus} and train.num_nodes={num_nodes}. Make them agree: either "
            f"train.num_gpus={per_node} train.num_nodes={nodes}, or `#SBATCH --ntasks-per-node={num_gpus} "
            f"--nodes={num_nodes}`; for one task per node use scripts/train_multi_node.sh with --ntasks-per-node=1.")
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and len(visible) < num_gpus:  # Lightning picks device LOCAL_RANK of the ones this task sees
        raise UserError(
            f"{where}: this task sees {len(visible)} GPU(s) (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}) but "
            f"train.num_gpus={num_gpus} tasks share the node. Ask SLURM for `--gpus-per-node={num_gpus}` so that "
            "every task sees all of the node's GPUs (not --gpus-per-task).")
