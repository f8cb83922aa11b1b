"""Where and how many processes train: accelerator, devices per node, nodes, strategy.

Cluster conventions (TAO's): ``WORLD_SIZE`` = number of nodes, ``NUM_GPU_PER_NODE`` = processes per node,
``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``. torchrun and SLURM launches are passed through to Lightning.
On a machine without CUDA, ``train.num_gpus=N`` runs N CPU processes with the gloo backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from segformer_tao.errors import NotAvailableError, UserError
from segformer_tao.ranks import check_allocation, slurm_managed

_TOPOLOGY_ENV = "SEGFORMER_TAO_TOPOLOGY"  # "devices,nodes" handed from the launching process to its children


@dataclass(frozen=True)
class Topology:
    accelerator: str  # "gpu" | "cpu"
    devices: int | list[int]  # per node: a count or explicit GPU ids
    num_nodes: int

    @property
    def world_size(self) -> int:
        per_node = len(self.devices) if isinstance(self.devices, list) else self.devices
        return per_node * self.num_nodes


def resolve_topology(cfg: DictConfig) -> Topology:
    """Read train.num_gpus/gpu_ids/num_nodes, overridden by the launcher's environment when present."""
    tr = cfg.train
    cuda = torch.cuda.is_available()
    env = os.environ
    check_allocation(int(tr.num_gpus), int(tr.num_nodes))
    if _TOPOLOGY_ENV in env:
        devices, nodes = (int(v) for v in env[_TOPOLOGY_ENV].split(","))
    elif "TORCHELASTIC_RUN_ID" in env or "GROUP_RANK" in env:  # torchrun started every process already
        devices = int(env.get("LOCAL_WORLD_SIZE", 1))
        nodes = max(1, int(env.get("WORLD_SIZE", devices)) // devices)
    elif slurm_managed():
        nodes = int(env.get("SLURM_NNODES", tr.num_nodes))
        devices = int(str(env.get("SLURM_NTASKS_PER_NODE", tr.num_gpus)).split("(")[0])
    elif "WORLD_SIZE" in env and "LOCAL_RANK" not in env:  # TAO multi-node: WORLD_SIZE counts nodes
        nodes = int(env["WORLD_SIZE"])
        devices = int(env.get("NUM_GPU_PER_NODE", torch.cuda.device_count() if cuda else tr.num_gpus))
    else:
        devices, nodes = int(tr.num_gpus), int(tr.num_nodes)
    if not cuda:
        return Topology("cpu", devices, nodes)
    available = torch.cuda.device_count()
    gpu_ids = [int(g) for g in tr.gpu_ids or []]
    if len(gpu_ids) == devices and nodes == 1 and _TOPOLOGY_ENV not in env:
        bad = [g for g in gpu_ids if g >= available]
        if bad:
            raise UserError(f"train.gpu_ids={gpu_ids} names GPU(s) {bad} but this machine has {available} GPU(s). "
                            f"Use ids 0..{available - 1} or set train.num_gpus and train.gpu_ids consistently.")
        return Topology("gpu", gpu_ids, nodes)
    if devices > available:
        raise NotAvailableError(f"train.num_gpus={devices} but only {available} GPU(s) are visible. Lower "
                                "train.num_gpus (and NUM_GPU_PER_NODE) or check CUDA_VISIBLE_DEVICES.")
    return Topology("gpu", devices, nodes)


def export_topology(topo: Topology) -> dict[str, str | None]:
    """Make children launched by Lightning see the same topology; returns the env values to restore after."""
    per_node = len(topo.devices) if isinstance(topo.devices, list) else topo.devices
    old = {_TOPOLOGY_ENV: os.environ.get(_TOPOLOGY_ENV)}
    if topo.world_size > 1:
        os.environ[_TOPOLOGY_ENV] = f"{per_node},{topo.num_nodes}"
        if "WORLD_SIZE" in os.environ and "LOCAL_RANK" not in os.environ:
            old["WORLD_SIZE"] = os.environ["WORLD_SIZE"]
            os.environ["WORLD_SIZE"] = str(topo.world_size)  # torch expects processes, TAO's env gave nodes
    return old


def restore_env(old: dict[str, str | None]) -> None:
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def cluster_plugins() -> list:
    """Lightning's SLURMEnvironment without its auto-requeue under one SLURM task per device: preemption signals
    (SIGTERM, SIGUSR1) are ours (:mod:`segformer_tao.engine.preemption`), requeue is train.slurm_requeue."""
    if not slurm_managed():
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def build_strategy(cfg: DictConfig, topo: Topology, checkpoint_io):
    """DDP (find_unused_parameters=True, gloo on CPU / nccl on GPU) when more than one process; else single."""
    from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

    if topo.world_size > 1:
        backend = "nccl" if topo.accelerator == "gpu" else "gloo"
        return DDPStrategy(find_unused_parameters=True, process_group_backend=backend, checkpoint_io=checkpoint_io)
    device = torch.device("cuda", topo.devices[0] if isinstance(topo.devices, list) else 0) \
        if topo.accelerator == "gpu" else torch.device("cpu")
    return SingleDeviceStrategy(device=device, checkpoint_io=checkpoint_io)
