#!/usr/bin/env bash
# Multi-node training, one invocation per node (TAO's environment convention):
#   WORLD_SIZE        number of nodes                  (SLURM: $SLURM_NNODES)
#   NODE_RANK         this node's index, 0..WORLD_SIZE-1 (SLURM: $SLURM_NODEID)
#   NUM_GPU_PER_NODE  processes (GPUs) per node         (default: GPUs visible on this node)
#   MASTER_ADDR       address of node 0                 (SLURM: first host of $SLURM_JOB_NODELIST)
#   MASTER_PORT       a free TCP port on node 0         (default 29500)
#   SEGFORMER         the segformer command (default: segformer on PATH); one path, spaces allowed
# SLURM: `srun --nodes=N --ntasks-per-node=1 scripts/train_multi_node.sh -e spec.yaml ...` (one task per node;
# Lightning starts the per-GPU processes on each node). Extra arguments go to `segformer train` unchanged.
set -euo pipefail
SEGFORMER="${SEGFORMER:-segformer}"
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  export WORLD_SIZE="${WORLD_SIZE:-${SLURM_NNODES}}"
  export NODE_RANK="${NODE_RANK:-${SLURM_NODEID}}"
  if [[ -z "${MASTER_ADDR:-}" ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    export MASTER_ADDR
  fi
  # One srun task per node here; hide SLURM's task variables so Lightning launches the per-GPU processes itself.
  # What the allocation asked for goes on, so that `segformer train` refuses --ntasks-per-node > 1 on every task.
  export SEGFORMER_SLURM_TASKS_PER_NODE="${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}"
  unset SLURM_NTASKS SLURM_NTASKS_PER_NODE
fi
: "${WORLD_SIZE:?set WORLD_SIZE to the number of nodes}"
: "${NODE_RANK:?set NODE_RANK to the index of this node (0..WORLD_SIZE-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of node 0}"
export MASTER_PORT="${MASTER_PORT:-29500}"
if [[ -z "${NUM_GPU_PER_NODE:-}" ]]; then
  NUM_GPU_PER_NODE=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
fi
export NUM_GPU_PER_NODE
echo "node ${NODE_RANK}/${WORLD_SIZE}: ${NUM_GPU_PER_NODE} process(es), master ${MASTER_ADDR}:${MASTER_PORT}" >&2
exec "$SEGFORMER" train train.num_nodes="$WORLD_SIZE" train.num_gpus="$NUM_GPU_PER_NODE" "$@"
