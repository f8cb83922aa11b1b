#!/usr/bin/env bash
# Multi-host AutoML: the same command on every host joins one Optuna study in a shared database.
#   AUTOML_STORAGE    SQLAlchemy URL of the study, e.g. postgresql://user:password@db-host:5432/automl
#                     (every host needs `pip install "segformer_tao[automl-pg]"`)
#   AUTOML_TRIALS     automl.num_trials, counted across all hosts (default 20)
#   PARALLEL_TRIALS   trials at once on this host, each on train.num_gpus of its GPUs (default: one per GPU)
# Trials are shared out through the database (none runs twice); a host that dies mid-trial stops sending
# heartbeats and its trial is re-run by another host (automl.heartbeat_interval, default 60 s, dead after 3x).
# Each host waits for the others' trials, then writes automl_results.json and best_model/ from the shared study:
# put results_dir on a shared filesystem to get one best_model/ (otherwise the host that ran the best trial has it).
# SLURM: `srun --nodes=N --ntasks-per-node=1 scripts/automl_multi_host.sh -e spec.yaml results_dir=/shared/run1`.
# Extra arguments go to `segformer train` unchanged. Watch it: `optuna-dashboard "$AUTOML_STORAGE"`.
set -euo pipefail
SEGFORMER=${SEGFORMER:-segformer}
: "${AUTOML_STORAGE:?set AUTOML_STORAGE to the study database URL, e.g. postgresql://user:pw@db-host:5432/automl}"
if [[ -z "${PARALLEL_TRIALS:-}" ]]; then
  PARALLEL_TRIALS=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
fi
# The URL is read from the environment (${oc.env:...}), so its password stays out of `ps` listings; segformer
# masks it in every message, log line, job.json and experiment.yaml anyway.
echo "$(hostname): joining the AutoML study, ${PARALLEL_TRIALS} trial(s) at a time" >&2
export AUTOML_STORAGE
exec $SEGFORMER train automl_policy=on 'automl.storage=${oc.env:AUTOML_STORAGE}' \
  automl.num_trials="${AUTOML_TRIALS:-20}" automl.parallel_trials="$PARALLEL_TRIALS" "$@"
