#!/usr/bin/env bash
# bf16-mixed vs fp32 training accuracy (issue 25, train.precision=auto): the same seeded runs in both precisions on
# (1) the demo set (scripts/demo.sh's data and settings) and (2) a 150-class synthetic set; prints and writes
# bench/results/precision_accuracy.json with final/best val_miou per run (and the demo's evaluate mIoU).
# Long (tens of minutes on 2 cores). Settings: EPOCHS (demo, 20), EPOCHS150 (150 classes, 12), TRAIN150 (images, 240).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${PRECISION_DIR:-bench/results/precision}
mkdir -p "$OUT" bench/results
"$PY" - "$OUT" "${TRAIN150:-240}" <<'PYEOF'
import os, sys
from segformer_tao.data.synthetic import make_demo_dataset
out, n150 = sys.argv[1], int(sys.argv[2])
if not os.path.exists(f"{out}/demo/spec.yaml"):
    make_demo_dataset(f"{out}/demo", num_classes=3, size=128, train=48, val=8, test=4, mask_format="ids")
if not os.path.exists(f"{out}/c150/spec.yaml"):
    make_demo_dataset(f"{out}/c150", num_classes=150, size=128, train=n150, val=48, test=4, mask_format="ids")
PYEOF
SEGFORMER=("$PY" -m segformer_tao.cli)
for precision in 32 bf16-mixed; do
  common=(-e "$OUT/demo/spec.yaml" results_dir="$OUT/demo_$precision" model=mit_b0
          model.decode_head.decoder_params.embed_dim=256 dataset.segment.workers=0)
  echo "== demo, train.precision=$precision"
  "${SEGFORMER[@]}" train "${common[@]}" automl_policy=off dataset.segment.batch_size=8 \
    train.num_epochs="${EPOCHS:-20}" train.optim.lr=0.0015 train.optim.warmup_iters=6 train.checkpoint_interval=8 \
    train.precision="$precision" > "$OUT/demo_$precision.log"
  head -n1 "$OUT/demo_$precision.log"
  "${SEGFORMER[@]}" evaluate "${common[@]}" parent_job="$OUT/demo_$precision/train" > /dev/null
  echo "== 150 classes, train.precision=$precision"
  "${SEGFORMER[@]}" train -e "$OUT/c150/spec.yaml" results_dir="$OUT/c150_$precision" model=mit_b0 \
    model.decode_head.decoder_params.embed_dim=256 dataset.segment.workers=0 automl_policy=off \
    dataset.segment.batch_size=8 train.num_epochs="${EPOCHS150:-12}" train.optim.lr=0.0015 \
    train.optim.warmup_iters=6 train.checkpoint_interval=100 train.precision="$precision" > "$OUT/c150_$precision.log"
done
"$PY" - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
def run(name):
    status = [json.loads(s) for s in open(f"{out}/{name}/train/status.json")]
    val = [s["kpi"]["val_miou"] for s in status if s.get("kpi", {}).get("val_miou") is not None]
    done = [s for s in status if "Epoch" in s.get("message", "")]
    row = {"final_val_miou": val[-1], "best_val_miou": max(val), "train_s": done[-1].get("elapsed_s")}
    try:
        row["evaluate_miou"] = json.load(open(f"{out}/{name}/evaluate/results.json"))["mIoU"]
    except FileNotFoundError:
        pass
    return row
res = {f"{d}_{p}": run(f"{d}_{p}") for d in ("demo", "c150") for p in ("32", "bf16-mixed")}
for d in ("demo", "c150"):
    a, b = res[f"{d}_32"], res[f"{d}_bf16-mixed"]
    res[f"{d}_diff_points"] = {k: round(100 * (b[k] - a[k]), 2) for k in a if k != "train_s"}
print(json.dumps(res, indent=1))
json.dump(res, open("bench/results/precision_accuracy.json", "w"), indent=1)
PYEOF
