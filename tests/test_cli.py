"""The `segformer` CLI: help, config printing, required keys, errors as one paragraph with exit code 2."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO, assert_user_error, run_cli


def test_help_lists_actions_and_keys():
    r = run_cli("--help")
    assert r.returncode == 0
    for action in ("train", "evaluate", "inference", "export", "quantize", "gen_trt_engine"):
        assert action in r.stdout
    r = run_cli("train", "--help")
    assert r.returncode == 0
    assert "train.optim.lr = 6e-05" in r.stdout and "dataset.segment.root_dir" in r.stdout


def test_config_prints_composed_yaml_without_secret():
    r = run_cli("config", "train", "encryption_key=s3cr3t-key", "train.num_epochs=4")
    assert r.returncode == 0, r.output
    assert "num_epochs: 4" in r.stdout
    assert "s3cr3t-key" not in r.output and "encryption_key" not in r.stdout


@pytest.mark.parametrize("args, needles", [
    (["fly"], ["Unknown action 'fly'"]),
    (["train"], ["dataset.segment.root_dir"]),
    (["evaluate", "dataset.segment.root_dir=/d"], ["evaluate.checkpoint", "parent_job"]),
    (["export", "dataset.segment.root_dir=/d"], ["export.checkpoint"]),
    (["quantize", "dataset.segment.root_dir=/d", "quantize.model_path=m.onnx"],
     ["dataset.segment.quant_calibration_dataset.images_dir"]),
    (["gen_trt_engine"], ["gen_trt_engine.onnx_file"]),
    (["train", "dataset.segment.root_dir=/d", "train.num_epoch=2"], ["train.num_epochs"]),
    (["train", "dataset.segment.root_dir=/d", "train.seed=x"], ["train.seed"]),
    (["train", "dataset.segment.root_dir=/d", "dataset.segment.num_classes=1"], ["num_classes", ">= 2"]),
    (["train", "dataset.segment.root_dir=/d", "train.precision=fp8"], ["train.precision", "bf16-mixed"]),
    (["train", "-e", "/does/not/exist.yaml"], ["/does/not/exist.yaml"]),
    (["evaluate", "parent_job=/does/not/exist", "dataset.segment.root_dir=/d"], ["parent_job"]),
])
def test_user_errors(args, needles):
    assert_user_error(run_cli(*args), *needles)


def test_unwritable_results_dir(tmp_path):
    # A path below a regular file cannot be created, even by root (unlike a chmod-ed directory).
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = run_cli("train", "dataset.segment.root_dir=/d", f"results_dir={blocker}/out")
    assert_user_error(r, str(blocker), "results_dir")


@pytest.mark.slow
def test_wheel_ships_conf_and_specs_and_runs_from_anywhere(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), REPO], check=True)
    wheel = glob.glob(str(wheel_dir / "segformer_tao-*.whl"))[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert "segformer_tao/conf/experiment.yaml" in names
    assert "segformer_tao/conf/model/mit_b0.yaml" in names
    assert "segformer_tao/specs/schemas/train.schema.json" in names
    assert "segformer_tao/specs/references/skill_info.yaml" in names
    entry = [n for n in names if n.endswith("entry_points.txt")][0]
    assert "segformer = segformer_tao.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-m", "segformer_tao.cli", "train", "--help"], cwd="/tmp", env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dataset.segment.root_dir" in r.stdout
    r = subprocess.run([str(target / "bin" / "segformer"), "--help"], cwd="/tmp", env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "gen_trt_engine" in r.stdout, r.stderr


def test_a_closed_pipe_stops_quietly():
    """`segformer train --help | head -1`: the reader goes away; no traceback, exit status as for SIGPIPE."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "segformer_tao.cli", "train", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the CLI (still importing) writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "internal error" not in err, err
