#!/usr/bin/env bash
# `make bench`: every benchmark with bounded settings, then one summary table (bench/summary.py).
# Each script measures ours and the reference in the same run, alternating for 3 rounds (median, min-max; goals
# judged by bench/compare.py), and writes bench/results/<name>.json.
# BENCH_QUICK=1: one round of each, a smoke run that never claims pass/FAIL.
# BENCH_EXTRA=1: also training at 1024x1024 and with mit_b2 (150 classes).
# On a GPU machine the same scripts run on CUDA; add `pip install ".[trt]"` for TensorRT rows (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SIZE=${BENCH_SIZE:-512}
QUICK=()
[[ "${BENCH_QUICK:-0}" == 1 ]] && QUICK=(--quick)
mkdir -p bench/results

echo "== train: ours vs Hugging Face training loop (mit_b0, ${SIZE}px, 2 and 150 classes)"
for classes in 2 150; do
  "$PY" bench/train.py --img-size "$SIZE" --batch-size 2 --steps 3 --warmup 1 --rounds 3 "${QUICK[@]}" \
    --num-classes "$classes" --out "bench/results/train_${classes}.json"
done
if [[ "${BENCH_EXTRA:-0}" == 1 ]]; then
  echo "== train at 1024x1024 and with mit_b2 (150 classes)"
  "$PY" bench/train.py --img-size 1024 --steps 2 --warmup 1 "${QUICK[@]}" --out bench/results/train_150_1024.json
  "$PY" bench/train.py --backbone mit_b2 --steps 2 --warmup 1 "${QUICK[@]}" --out bench/results/train_150_b2.json
fi
echo "== model: PyTorch inference, ours vs Hugging Face eager (batch 1)"
"$PY" bench/model.py --size "$SIZE" --batch 1 --iters 3 --warmup 1 --channels-last "${QUICK[@]}" \
  --out bench/results/model.json
echo "== deploy: torch eager / ONNX Runtime FP32 / INT8 vs this machine's limit"
"$PY" bench/deploy.py --size "$SIZE" --rounds 3 --seconds 2 "${QUICK[@]}"
echo "== data: training input pipeline vs model training throughput"
"$PY" bench/data.py --img-size "$SIZE" --images 16 --batches 4 "${QUICK[@]}"
echo "== quantize: INT8 vs FP32 mIoU on the demo set"
bash bench/quantize_demo.sh
echo "== quantize backends: every backend's INT8 artifact side by side (images/s, mIoU, size) vs ORT FP32"
"$PY" bench/quant_backends.py --rounds 3
echo "== pipeline: segformer inference/evaluate end to end vs the same runtime's model alone"
"$PY" bench/pipeline.py --rounds 3 "${QUICK[@]}"
echo "== leaks: memory, fds and threads over a long tiny training and inference"
"$PY" bench/leaks.py --epochs 40 --images 300
echo "== TensorRT: engines fp32/fp16/int8 vs PyTorch on the GPU (skipped without tensorrt and CUDA)"
"$PY" bench/trt.py --size "$SIZE"
"$PY" bench/summary.py
