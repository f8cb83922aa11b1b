#!/usr/bin/env bash
# Train on one machine with all (or NUM_GPUS) of its GPUs; on a machine without GPUs, NUM_GPUS CPU processes (gloo).
#   NUM_GPUS=4 scripts/train_single_node.sh -e spec.yaml dataset.segment.root_dir=/data results_dir=/out
# Lightning starts one process per device itself; extra arguments go to `segformer train` unchanged.
#   SEGFORMER         the segformer command (default: segformer on PATH); one path, spaces allowed
set -euo pipefail
SEGFORMER="${SEGFORMER:-segformer}"
if [[ -z "${NUM_GPUS:-}" ]]; then
  NUM_GPUS=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
fi
export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
# A random free-ish port unless one is given, so two jobs on one machine do not collide.
export MASTER_PORT="${MASTER_PORT:-$((20000 + RANDOM % 20000))}"
unset WORLD_SIZE NODE_RANK  # single node: never read a cluster's multi-node settings by accident
exec "$SEGFORMER" train train.num_gpus="$NUM_GPUS" train.num_nodes=1 "$@"
