#!/usr/bin/env bash
# Multi-host AutoML: the same command on every host joins one Optuna study in a shared database.
#   AUTOML_STORAGE    SQLAlchemy URL of the study, e.g. postgresql://user:password@db-host:5432/automl
#                     (every host needs `pip install "segformer_tao[automl-pg]"`)
#   AUTOML_TRIALS     automl.num_trials, counted across all hosts (default 20)
#   PARALLEL_TRIALS   trials at once on this host, each on train.num_gpus of its GPUs (default: one per GPU)
#   SEGFORMER         the segformer command (default: segformer on PATH); one path, spaces allowed
#   RESULTS_ROOT      optional: each host writes into $RESULTS_ROOT/<hostname> (one writer per results dir); on a
#                     shared filesystem a re-run trial resumes from the dead host's checkpoints and every host
#                     copies the best trial into its best_model/ (otherwise the host that ran it has it)
# Trials are shared out through the database (none runs twice); a host that dies mid-trial stops sending
# heartbeats and its trial is re-run by another host (automl.heartbeat_interval, default 60 s, dead after 3x).
# Each host waits for the others' trials, then writes automl_results.json from the shared study.
# SLURM: `RESULTS_ROOT=/shared/run1 srun --nodes=N --ntasks-per-node=1 scripts/automl_multi_host.sh -e spec.yaml`.
# Extra arguments go to `segformer train` unchanged. Watch it: `optuna-dashboard postgresql+psycopg://...` (same URL).
set -euo pipefail
SEGFORMER="${SEGFORMER:-segformer}"
: "${AUTOML_STORAGE:?set AUTOML_STORAGE to the study database URL, e.g. postgresql://user:pw@db-host:5432/automl}"
if [[ -z "${PARALLEL_TRIALS:-}" ]]; then
  PARALLEL_TRIALS=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
fi
# The URL is read from the environment (${oc.env:...}), so its password stays out of `ps` listings; segformer
# masks it in every message, log line, job.json and experiment.yaml anyway.
echo "$(hostname): joining the AutoML study, ${PARALLEL_TRIALS} trial(s) at a time" >&2
export AUTOML_STORAGE
RESULTS=()
if [[ -n "${RESULTS_ROOT:-}" ]]; then RESULTS=("results_dir=${RESULTS_ROOT}/$(hostname)"); fi
# shellcheck disable=SC2016  # ${oc.env:...} is for segformer (OmegaConf) to expand, not for the shell
exec "$SEGFORMER" train automl_policy=on 'automl.storage=${oc.env:AUTOML_STORAGE}' \
  automl.num_trials="${AUTOML_TRIALS:-20}" automl.parallel_trials="$PARALLEL_TRIALS" "${RESULTS[@]}" "$@"
