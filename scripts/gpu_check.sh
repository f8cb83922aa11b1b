#!/usr/bin/env bash
# The GPU acceptance check, one command on a CUDA machine with TensorRT (`pip install -e ".[trt]"`):
#   synthetic dataset -> train mit_b0 -> export (+ DeepStream files) -> quantize (Q/DQ) -> gen_trt_engine fp32, fp16,
#   fp16 with a fixed batch of 4 (padding), int8 from the Q/DQ ONNX (and from the legacy calibrator on TensorRT 10)
#   -> evaluate and inference with every engine against the PyTorch checkpoint -> pytest -m tensorrt -> bench/trt.py.
# Prints one table; exits 1 when an engine misses its limit (mIoU within 0.5 points of PyTorch for fp32/fp16,
# 1 point for int8) or a step fails.
# Usage: scripts/gpu_check.sh [work dir, default gpu_check]      (about 5 minutes on one GPU)
#        GPU_CHECK_DRY_RUN=1 scripts/gpu_check.sh /tmp/x          (CPU: ONNX Runtime stands in for every engine,
#                                                                  to check the script itself; no TensorRT rows)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY="${PY:-.venv/bin/python}"; else PY="${PY:-python3}"; fi
W=$(mkdir -p "${1:-gpu_check}" && cd "${1:-gpu_check}" && pwd)
DRY="${GPU_CHECK_DRY_RUN:-0}"
EPOCHS="${EPOCHS:-30}"
SEG=("$PY" -m segformer_tao.cli)
DATA="$W/dataset"
R="$W/results"
if [[ "$DRY" != 1 ]]; then
  "$PY" -c "import tensorrt, torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print('TensorRT', tensorrt.__version__, 'on', torch.cuda.get_device_name())" \
    || { echo "gpu_check: needs a CUDA GPU and TensorRT (pip install -e '.[trt]'); GPU_CHECK_DRY_RUN=1 checks the script on CPU." >&2; exit 2; }
else
  EPOCHS="${EPOCHS_DRY:-2}"
fi

echo "== dataset -> $DATA"
"$PY" - "$DATA" <<'PYEOF'
import sys
from segformer_tao.data.synthetic import make_demo_dataset
print(make_demo_dataset(sys.argv[1], num_classes=3, size=128, train=48, val=8, test=11, mask_format="ids"))
PYEOF
# test=11 with evaluate/inference batch 3: the last batch (2 images) is below the fixed-batch engine's 4.
COMMON=(-e "$DATA/spec.yaml" model=mit_b0 model.decode_head.decoder_params.embed_dim=256 dataset.segment.workers=0
        dataset.segment.test_split=test dataset.segment.predict_split=test)
echo "== train ($EPOCHS epochs)"
"${SEG[@]}" train "${COMMON[@]}" results_dir="$R" automl_policy=off dataset.segment.batch_size=8 \
  train.num_epochs="$EPOCHS" train.optim.lr=0.0015 train.optim.warmup_iters=6 train.checkpoint_interval="$EPOCHS"
CKPT="$R/train/segformer_model_latest.pth"
echo "== export + DeepStream files"
"${SEG[@]}" export "${COMMON[@]}" results_dir="$R" export.checkpoint="$CKPT" export.onnx_file="$W/model.onnx" \
  export.serialize_nvdsinfer=true
echo "== quantize (Q/DQ ONNX for TensorRT)"
"${SEG[@]}" quantize "${COMMON[@]}" results_dir="$R" quantize.model_path="$W/model.onnx" \
  dataset.segment.quant_calibration_dataset.images_dir="$DATA/images/train"
QDQ="$R/quantize/model_int8.onnx"

# name | data_type | onnx | extra gen_trt_engine overrides
ENGINES=("fp32|fp32|$W/model.onnx|" "fp16|fp16|$W/model.onnx|"
         "fp16_fixed4|fp16|$W/model.onnx|gen_trt_engine.batch_size=4"
         "int8_qdq|int8|$QDQ|")
if [[ "$DRY" != 1 ]] && "$PY" -c "import sys, tensorrt; sys.exit(not hasattr(tensorrt, 'IInt8EntropyCalibrator2'))"; then
  ENGINES+=("int8_calibrator|int8|$W/model.onnx|gen_trt_engine.tensorrt.calibration.cal_image_dir=[$DATA/images/train] gen_trt_engine.tensorrt.calibration.cal_batch_size=4 gen_trt_engine.tensorrt.calibration.cal_batches=8")
fi

run_eval() {  # name, model override...
  local name=$1; shift
  "${SEG[@]}" evaluate "${COMMON[@]}" results_dir="$R/check/$name" evaluate.batch_size=3 "${@/#/evaluate.}"
  "${SEG[@]}" inference "${COMMON[@]}" results_dir="$R/check/$name" inference.batch_size=3 "${@/#/inference.}"
}
echo "== evaluate + inference: PyTorch"
run_eval torch checkpoint="$CKPT"
for spec in "${ENGINES[@]}"; do
  IFS='|' read -r name dtype onnx extra <<<"$spec"
  echo "== $name"
  if [[ "$DRY" == 1 ]]; then  # the script's plumbing only: ONNX Runtime runs the ONNX the engine would be built from
    run_eval "$name" onnx_file="$onnx"
    continue
  fi
  set -f  # $extra holds several overrides, split on spaces; [..] lists in them are not globs
  # shellcheck disable=SC2086
  "${SEG[@]}" gen_trt_engine "${COMMON[@]}" results_dir="$R/engines/$name" gen_trt_engine.onnx_file="$onnx" \
    gen_trt_engine.trt_engine="$W/engines/$name.engine" gen_trt_engine.tensorrt.data_type="$dtype" \
    gen_trt_engine.tensorrt.min_batch_size=1 gen_trt_engine.tensorrt.opt_batch_size=3 \
    gen_trt_engine.tensorrt.max_batch_size=8 gen_trt_engine.timing_cache="$W/engines/timing.cache" $extra
  set +f
  run_eval "$name" trt_engine="$W/engines/$name.engine"
done

PYTEST=skipped; BENCH=skipped
if [[ "$DRY" != 1 ]]; then
  echo "== pytest -m tensorrt"
  if "$PY" -m pytest -q -m tensorrt tests/deploy -p no:cacheprovider; then PYTEST=passed; else PYTEST=FAILED; fi
  echo "== bench/trt.py"
  if "$PY" bench/trt.py --size 512 --seconds 3; then BENCH="bench/results/trt.json"; else BENCH=FAILED; fi
fi

"$PY" - "$R/check" "$W/engines" "$PYTEST" "$BENCH" "${ENGINES[@]}" <<'PYEOF'
import json, os, sys
import numpy as np
from PIL import Image
check, engines, pytest_status, bench = sys.argv[1:5]
names = [s.split("|")[0] for s in sys.argv[5:]]
def load(name):
    res = json.load(open(f"{check}/{name}/evaluate/results.json"))
    masks = f"{check}/{name}/inference/masks"
    return res["mIoU"], {f: np.asarray(Image.open(os.path.join(masks, f))) for f in sorted(os.listdir(masks))}
ref_miou, ref_masks = load("torch")
print(f"\n{'runtime':<18}{'mIoU':>8}{'vs torch (points)':>19}{'limit':>7}{'masks equal':>13}{'engine json dtypes':>22}  result")
print(f"{'torch':<18}{ref_miou:>8.4f}{'':>19}{'':>7}{'':>13}{'':>22}")
failed = pytest_status == "FAILED" or bench == "FAILED"
for name in names:
    miou, masks = load(name)
    delta = 100 * (miou - ref_miou)
    limit = 1.0 if name.startswith("int8") else 0.5
    same = np.mean([np.mean(masks[f] == ref_masks[f]) for f in ref_masks])
    info = f"{engines}/{name}.engine.json"
    dtypes = ",".join(t["dtype"] for t in json.load(open(info))["io"]) if os.path.exists(info) else "-"
    ok = abs(delta) <= limit and masks.keys() == ref_masks.keys()
    failed |= not ok
    print(f"{name:<18}{miou:>8.4f}{delta:>+19.2f}{limit:>7.1f}{100 * same:>12.2f}%{dtypes:>22}  {'ok' if ok else 'FAIL'}")
print(f"pytest -m tensorrt: {pytest_status}; bench: {bench}")
print("gpu_check:", "FAILED" if failed else "passed")
sys.exit(1 if failed else 0)
PYEOF
