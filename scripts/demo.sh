#!/usr/bin/env bash
# The demo: synthetic dataset -> train mit_b0 on the CPU -> evaluate -> inference, in a few minutes on 2 cores.
# Usage: scripts/demo.sh [extra `segformer train` overrides]     Outputs: ${DEMO_DIR:-demo_data}/
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY="${PY:-.venv/bin/python}"; else PY="${PY:-python3}"; fi
DEMO_DIR="${DEMO_DIR:-demo_data}"
DATA="$DEMO_DIR/dataset"
RESULTS="$DEMO_DIR/results"
SEGFORMER=("$PY" -m segformer_tao.cli)
start=$(date +%s)

echo "== 1/4 synthetic dataset -> $DATA"
"$PY" - "$DATA" <<'PYEOF'
import sys
from segformer_tao.data.synthetic import make_demo_dataset
print(make_demo_dataset(sys.argv[1], num_classes=3, size=128, train=48, val=8, test=4, mask_format="ids"))
PYEOF

# mit_b0 from scratch (no downloads): a slim decoder (embed_dim 256, as the original SegFormer-B0), a higher
# LR than TAO's fine-tuning default, and no AutoML so the run takes minutes.
COMMON=(-e "$DATA/spec.yaml" results_dir="$RESULTS" model=mit_b0
        model.decode_head.decoder_params.embed_dim=256 dataset.segment.workers=0)
echo "== 2/4 train"
"${SEGFORMER[@]}" train "${COMMON[@]}" automl_policy=off dataset.segment.batch_size=8 train.num_epochs="${EPOCHS:-20}" \
  train.optim.lr=0.0015 train.optim.warmup_iters=6 train.checkpoint_interval=8 "$@"
echo "== 3/4 evaluate"
"${SEGFORMER[@]}" evaluate "${COMMON[@]}" parent_job="$RESULTS/train" evaluate.vis_after_n_batches=1
echo "== 4/4 inference"
"${SEGFORMER[@]}" inference "${COMMON[@]}" parent_job="$RESULTS/train" inference.flip_tta=true

"$PY" - "$RESULTS" "$start" <<'PYEOF'
import json, sys, time
res, start = sys.argv[1], int(sys.argv[2])
status = [json.loads(s) for s in open(f"{res}/train/status.json")]
val = [s["kpi"]["val_miou"] for s in status if "val_miou" in s.get("kpi", {})]  # TAO's schema: scores in kpi
ev = json.load(open(f"{res}/evaluate/results.json"))
print(f"""
Demo finished in {time.time() - start:.0f} s.
  final val_miou (train):  {val[-1]:.4f}   (best {max(val):.4f})
  evaluate mIoU:           {ev['mIoU']:.4f}   overall accuracy {ev['overall_accuracy']:.4f}
Outputs:
  checkpoints, status.json, training_curves.png, logs/  {res}/train/
  results.json, per_class.csv, confusion_matrix.png, vis/  {res}/evaluate/
  masks/ (label ids), overlays/                           {res}/inference/""")
PYEOF
