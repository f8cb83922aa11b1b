"""What a trained model knows about itself wins: every action and runtime runs at the model's img_size and mean/std
when the spec leaves them out, warns (torch) or refuses (fixed-size file) an explicit different value, and records
what it used.

The reference is training's own validation on the same split: evaluate's mIoU must equal the best val_miou that the
training run logged, which it only does when evaluate preprocesses exactly as training did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from segformer_tao.data.synthetic import make_demo_dataset
from tests.conftest import REPO, assert_user_error, run_cli

TRAINED_SIZE = 96  # neither the schema's default (256) nor the demo's size
MEAN, STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]  # not the ImageNet defaults
# The dataset keys an evaluate spec needs, without img_size, mean/std, backbone or class count.
DATA = ["dataset.segment.workers=0", "dataset.segment.label_transform=None", "dataset.segment.batch_size=4",
        "automl_policy=off", "dataset.segment.test_split=val"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_truth")
    data = make_demo_dataset(root / "data", num_classes=3, size=64, train=8, val=4, test=2)
    train = run_cli("train", f"dataset.segment.root_dir={data}", f"results_dir={root}/results", *DATA,
                    "model=mit_b0", "dataset.segment.num_classes=3",
                    f"dataset.segment.img_size={TRAINED_SIZE}", f"dataset.segment.augmentation.mean={MEAN}",
                    f"dataset.segment.augmentation.std={STD}", "train.num_epochs=3", "train.optim.lr=0.002",
                    "train.validation_interval=1")
    assert train.returncode == 0, train.output
    status = [json.loads(line) for line in open(f"{root}/results/train/status.json")]
    best = max(s["kpi"]["val_miou"] for s in status if (s.get("kpi") or {}).get("val_miou") is not None)
    return root, data, best


def _evaluate(root, data, name, *extra):
    out = f"{root}/{name}"
    result = run_cli("evaluate", f"dataset.segment.root_dir={data}", f"results_dir={out}", *DATA, *extra)
    return result, out


def _miou(out: str) -> float:
    return json.load(open(f"{out}/evaluate/results.json"))["mIoU"]


@pytest.mark.slow
def test_every_action_runs_at_the_models_img_size_and_mean_std(trained):
    root, data, best = trained
    parent = f"parent_job={root}/results/train"
    result, out = _evaluate(root, data, "eval_torch", parent)
    assert result.returncode == 0, result.output
    assert "warning" not in result.output.lower(), result.output  # nothing was set against the model
    assert _miou(out) == pytest.approx(best, abs=1e-4)  # exactly what training's validation measured
    job = json.load(open(f"{out}/evaluate/job.json"))
    assert job["model"]["img_size"] == {"value": TRAINED_SIZE, "source": "model file"}
    assert job["model"]["mean"]["value"] == pytest.approx(MEAN) and job["model"]["backbone"]["value"] == "mit_b0"
    recorded = yaml.safe_load(open(f"{out}/evaluate/experiment.yaml"))  # a job records what it used
    assert recorded["dataset"]["segment"]["img_size"] == TRAINED_SIZE
    assert recorded["model"]["backbone"]["type"] == "mit_b0" and recorded["dataset"]["segment"]["num_classes"] == 3
    assert recorded["model"]["decode_head"]["decoder_params"]["embed_dim"] == 256  # mit_b0's, not the default 768

    exported = run_cli("export", f"dataset.segment.root_dir={data}", f"results_dir={root}/exp", *DATA, parent)
    assert exported.returncode == 0, exported.output
    onnx_file = json.load(open(f"{root}/exp/export/job.json"))["artifacts"]["onnx_file"]["path"]
    result, out = _evaluate(root, data, "eval_onnx", f"evaluate.onnx_file={onnx_file}")
    assert result.returncode == 0, result.output
    assert _miou(out) == pytest.approx(best, abs=1e-4)

    quantized = run_cli("quantize", f"dataset.segment.root_dir={data}", f"results_dir={root}/q", *DATA,
                        f"quantize.model_path={onnx_file}",
                        f"dataset.segment.quant_calibration_dataset.images_dir={data}/images/train")
    assert quantized.returncode == 0, quantized.output
    report = json.load(open(f"{root}/q/quantize/quantize_report.json"))
    assert report["fp32"]["mIoU"] == pytest.approx(best, abs=1e-4)  # the report runs at the model's size too


@pytest.mark.slow
def test_an_explicit_other_img_size_warns_on_torch_and_is_refused_by_a_fixed_size_file(trained):
    root, data, _ = trained
    parent = f"parent_job={root}/results/train"
    result, out = _evaluate(root, data, "eval_128", parent, "dataset.segment.img_size=128")
    assert result.returncode == 0, result.output
    assert "trained with img_size 96" in result.output
    assert "dataset.segment.img_size=128 (command line)" in result.output
    assert json.load(open(f"{out}/evaluate/job.json"))["model"]["img_size"] == {"value": 128,
                                                                                "source": "command line"}
    exported = run_cli("export", f"dataset.segment.root_dir={data}", f"results_dir={root}/fixed", *DATA, parent,
                       "export.input_height=128", "export.input_width=128")
    assert exported.returncode == 0, exported.output
    onnx_file = json.load(open(f"{root}/fixed/export/job.json"))["artifacts"]["onnx_file"]["path"]
    refused, _ = _evaluate(root, data, "eval_refused", f"evaluate.onnx_file={onnx_file}", "dataset.segment.img_size=64")
    assert_user_error(refused, "fixed input size 128x128", "dataset.segment.img_size=64 (command line)",
                      "export.dynamic_hw=true")
    # quantize of a fixed-size export with the training spec's own img_size calibrates at the file's size
    calib = f"dataset.segment.quant_calibration_dataset.images_dir={data}/images/train"
    quantized = run_cli("quantize", f"dataset.segment.root_dir={data}", f"results_dir={root}/qf", *DATA, calib,
                        f"quantize.model_path={onnx_file}", f"dataset.segment.img_size={TRAINED_SIZE}")
    assert quantized.returncode == 0, quantized.output
    assert json.load(open(f"{root}/qf/quantize/job.json"))["model"]["img_size"]["value"] == 128


@pytest.mark.slow
def test_onnx_runtime_evaluate_imports_neither_lightning_nor_transformers(trained):
    root, data, _ = trained
    onnx_dir = f"{root}/light"
    exported = run_cli("export", f"dataset.segment.root_dir={data}", f"results_dir={onnx_dir}", *DATA,
                       f"parent_job={root}/results/train")
    assert exported.returncode == 0, exported.output
    onnx_file = json.load(open(f"{onnx_dir}/export/job.json"))["artifacts"]["onnx_file"]["path"]
    args = [f"dataset.segment.root_dir={data}", f"results_dir={root}/light_eval", *DATA,
            f"evaluate.onnx_file={onnx_file}", "evaluate.onnx_engine=onnxruntime"]
    code = ("import sys\nfrom segformer_tao.cli import main\n"
            f"rc = main(['evaluate', *{args!r}])\n"
            "heavy = [m for m in ('pytorch_lightning', 'lightning', 'transformers', 'timm') if m in sys.modules]\n"
            "print('HEAVY', heavy)\nsys.exit(rc or (3 if heavy else 0))\n")
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
