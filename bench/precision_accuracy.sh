#!/usr/bin/env bash
# bf16-mixed vs fp32 training accuracy (issue 25, train.precision=auto): the same seeded trainings in both precisions
# on (1) the demo set with scripts/demo.sh's settings and (2) a 150-class synthetic set (64 px, 600 images); the two
# precisions train side by side so machine load hits both alike. Prints and writes
# bench/results/precision_accuracy.json: final/best val_miou per run, the demo's evaluate mIoU (evaluate runs fp32)
# and the bf16 - fp32 differences in mIoU points. Not part of `make bench` (tens of minutes on 2 loaded cores).
# Settings: EPOCHS (demo, 20), EPOCHS150 (150 classes, 20), SEED (1234; another seed needs another PRECISION_DIR),
# PRECISION_DIR (work folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${PRECISION_DIR:-bench/results/precision}
mkdir -p "$OUT" bench/results
"$PY" - "$OUT" <<'PYEOF'
import os, sys
from segformer_tao.data.synthetic import make_demo_dataset
out = sys.argv[1]
if not os.path.exists(f"{out}/demo/spec.yaml"):  # scripts/demo.sh's dataset
    make_demo_dataset(f"{out}/demo", num_classes=3, size=128, train=48, val=8, test=4, mask_format="ids")
if not os.path.exists(f"{out}/c150/spec.yaml"):
    make_demo_dataset(f"{out}/c150", num_classes=150, size=64, train=600, val=100, test=4, mask_format="ids")
PYEOF
SEGFORMER=("$PY" -m segformer_tao.cli)
MODEL=(model=mit_b0 model.decode_head.decoder_params.embed_dim=256 dataset.segment.workers=0 automl_policy=off
       train.seed="${SEED:-1234}")

train_both() {  # name spec [overrides...]: train (and for the demo evaluate) in fp32 and bf16-mixed side by side
  local name=$1 spec=$2
  shift 2
  for precision in 32 bf16-mixed; do
    (
      results="$OUT/${name}_$precision"
      [[ -f "$results/train/segformer_model_latest.pth" ]] && [[ -f "$results/done" ]] && exit 0
      "${SEGFORMER[@]}" train -e "$spec" results_dir="$results" "${MODEL[@]}" train.precision="$precision" "$@" \
        > "$OUT/${name}_$precision.log"
      if [[ $name == demo ]]; then
        "${SEGFORMER[@]}" evaluate -e "$spec" results_dir="$results" "${MODEL[@]}" parent_job="$results/train" \
          > /dev/null
      fi
      touch "$results/done"
      echo "$name $precision: $(head -n1 "$OUT/${name}_$precision.log")"
    ) &
  done
  wait
}

echo "== demo (3 classes, 128 px, scripts/demo.sh's settings), fp32 and bf16-mixed"
train_both demo "$OUT/demo/spec.yaml" dataset.segment.batch_size=8 train.num_epochs="${EPOCHS:-20}" \
  train.optim.lr=0.0015 train.optim.warmup_iters=6 train.checkpoint_interval=8
echo "== 150 classes (64 px, 600 train / 100 val images), fp32 and bf16-mixed"
train_both c150 "$OUT/c150/spec.yaml" dataset.segment.batch_size=16 train.num_epochs="${EPOCHS150:-20}" \
  train.optim.lr=0.002 train.optim.warmup_iters=10 train.checkpoint_interval=100
"$PY" - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
def run(name):
    status = [json.loads(s) for s in open(f"{out}/{name}/train/status.json")]
    val = [s["kpi"]["val_miou"] for s in status if (s.get("kpi") or {}).get("val_miou") is not None]
    row = {"final_val_miou": round(val[-1], 4), "best_val_miou": round(max(val), 4), "epochs": len(val)}
    try:
        row["evaluate_miou"] = round(json.load(open(f"{out}/{name}/evaluate/results.json"))["mIoU"], 4)
    except FileNotFoundError:
        pass
    return row
res = {f"{d}_{p}": run(f"{d}_{p}") for d in ("demo", "c150") for p in ("32", "bf16-mixed")}
for d in ("demo", "c150"):
    a, b = res[f"{d}_32"], res[f"{d}_bf16-mixed"]
    res[f"{d}_bf16_minus_fp32_points"] = {k: round(100 * (b[k] - a[k]), 2) for k in a if k.endswith("miou")}
print(json.dumps(res, indent=1))
json.dump(res, open("bench/results/precision_accuracy.json", "w"), indent=1)
PYEOF
