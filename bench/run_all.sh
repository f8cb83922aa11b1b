#!/usr/bin/env bash
# `make bench`: every benchmark with bounded settings (< 15 minutes on 2 CPU cores), then one summary table.
# Each script measures ours and the reference in the same run and writes bench/results/<name>.json.
# On a GPU machine the same scripts run on CUDA; add `pip install ".[trt]"` for TensorRT rows (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SIZE=${BENCH_SIZE:-512}
mkdir -p bench/results

echo "== train: ours vs Hugging Face training loop (mit_b0, ${SIZE}px, 2 and 150 classes)"
for classes in 2 150; do
  "$PY" bench/train.py --img-size "$SIZE" --batch-size 2 --steps 3 --warmup 1 --repeats 1 \
    --num-classes "$classes" --out "bench/results/train_${classes}.json"
done
echo "== model: PyTorch inference, ours vs Hugging Face eager (batch 1)"
"$PY" bench/model.py --size "$SIZE" --batch 1 --iters 3 --warmup 1 --channels-last --out bench/results/model.json
echo "== deploy: torch eager / ONNX Runtime FP32 / INT8 vs this machine's limit"
"$PY" bench/deploy.py --size "$SIZE" --seconds 5
echo "== data: training input pipeline vs model training throughput"
"$PY" bench/data.py --img-size "$SIZE" --images 16 --batches 4
echo "== quantize: INT8 vs FP32 mIoU on the demo set"
bash bench/quantize_demo.sh
echo "== quantize backends: every backend's INT8 artifact side by side (images/s, mIoU, size) vs ORT FP32"
"$PY" bench/quant_backends.py --rounds 3
echo "== leaks: memory, fds and threads over a long tiny training and inference"
"$PY" bench/leaks.py --epochs 40 --images 300
echo "== TensorRT: engines fp32/fp16/int8 vs PyTorch on the GPU (skipped without tensorrt and CUDA)"
"$PY" bench/trt.py --size "$SIZE"
"$PY" bench/summary.py
