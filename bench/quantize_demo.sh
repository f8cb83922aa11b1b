#!/usr/bin/env bash
# INT8 accuracy on the demo set: reuse `make demo`'s model when present, else train a short one; export; quantize.
# quantize_report.json (FP32 vs INT8 mIoU and images/s, both ONNX Runtime) is copied to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
SEG=("$PY" -m segformer_tao.cli)
DATA=demo_data/dataset
OUT=bench/results/quantize_demo
if [[ ! -f "$DATA/spec.yaml" ]]; then
  "$PY" -m segformer_tao.cli dataset demo "$DATA" --classes 3 --size 128 --train 48 --val 8 --test 4 >/dev/null
fi
COMMON=(-e "$DATA/spec.yaml" results_dir="$OUT" model=mit_b0 dataset.segment.workers=0)
PARENT=demo_data/results/train
if [[ ! -f "$PARENT/segformer_model_best.pth" ]]; then
  "${SEG[@]}" train "${COMMON[@]}" automl_policy=off train.num_epochs=${BENCH_EPOCHS:-8} train.optim.lr=0.0015 \
    dataset.segment.batch_size=8 > "$OUT.train.log" 2>&1
  PARENT="$OUT/train"
fi
"${SEG[@]}" export "${COMMON[@]}" parent_job="$PARENT" > "$OUT.export.log" 2>&1
"${SEG[@]}" quantize "${COMMON[@]}" parent_job="$OUT/export" \
  dataset.segment.quant_calibration_dataset.images_dir="$DATA/images/train" | tail -2
cp "$OUT/quantize/quantize_report.json" bench/results/quantize.json
