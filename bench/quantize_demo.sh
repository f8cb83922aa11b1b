#!/usr/bin/env bash
# INT8 accuracy on the demo set: reuse `make demo`'s model when present, else train a short one; export; quantize.
# quantize_report.json (FP32 vs INT8 mIoU and images/s, both ONNX Runtime) is copied to bench/results/; with the
# [openvino] extra also NNCF's INT8 IR report (quantize_openvino.json) and OpenVINO bf16 vs f32 mIoU
# (openvino_bf16.json; bf16 only where the CPU has it natively, else the evaluate notes f32).
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
if "$PY" -c "import openvino, nncf" 2>/dev/null; then
  "${SEG[@]}" quantize "${COMMON[@]}" parent_job="$OUT/export" quantize.backend=nncf \
    quantize.results_dir="$OUT/quantize_nncf" \
    dataset.segment.quant_calibration_dataset.images_dir="$DATA/images/train" | tail -2 | head -1
  cp "$OUT/quantize_nncf/quantize_report.json" bench/results/quantize_openvino.json
  for p in f32 bf16; do
    "${SEG[@]}" evaluate "${COMMON[@]}" parent_job="$OUT/export" evaluate.onnx_engine=openvino \
      evaluate.cpu_precision=$p evaluate.results_dir="$OUT/evaluate_ov_$p" | tail -1
  done
  "$PY" - "$OUT" <<'PY'
import json, sys
r = {p: json.load(open(f"{sys.argv[1]}/evaluate_ov_{p}/results.json")) for p in ("f32", "bf16")}
out = {p: {"mIoU": r[p]["mIoU"], "runtime": r[p]["runtime_label"]} for p in r}
out["miou_drop_points"] = 100 * (r["f32"]["mIoU"] - r["bf16"]["mIoU"])
json.dump(out, open("bench/results/openvino_bf16.json", "w"), indent=2)
print(f"{out['bf16']['runtime']} mIoU {out['bf16']['mIoU']:.4f} vs f32 {out['f32']['mIoU']:.4f}")
PY
else
  echo "OpenVINO/NNCF not installed (pip install '.[openvino]'): no NNCF INT8 or bf16 accuracy rows"
fi
