"""Progress output: a bar on a terminal; one plain line per N steps and per epoch, with ETA, everywhere else."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from pytorch_lightning.callbacks import TQDMProgressBar

from segformer_tao.data.synthetic import make_demo_dataset
from segformer_tao.engine import progress
from tests.conftest import REPO


class _Stdout:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Stdout(True))
    assert isinstance(progress.progress_bar(), TQDMProgressBar)
    monkeypatch.setattr(sys, "stdout", _Stdout(False))
    assert isinstance(progress.progress_bar(), progress.LineProgress)


def test_train_with_stdout_in_a_file_writes_lines_with_eta_not_a_bar(tmp_path):
    data = make_demo_dataset(tmp_path / "data", num_classes=3, size=32, train=10, val=2, test=1)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "segformer_tao.cli", "train", "-e", str(data / "spec.yaml"),
           f"results_dir={tmp_path}/results", "model=mit_b0", "dataset.segment.batch_size=2",
           "dataset.segment.workers=0", "train.num_epochs=2", "automl_policy=off", "dataset.segment.check=off",
           "wandb.enable=false"]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        assert subprocess.run(cmd, stdout=stdout, stderr=stderr, env=env, timeout=600).returncode == 0, err.read_text()
    text = out.read_text()
    assert "\r" not in text + err.read_text() and "it/s" not in text, text  # no redrawn bar anywhere
    lines = text.splitlines()
    assert lines[0].startswith("==> train precision: "), lines[0]  # what auto picked, and why, comes first
    epochs = [ln for ln in lines if re.match(r"Epoch \d+/2 done in ", ln)]
    assert [ln.split()[1] for ln in epochs] == ["1/2", "2/2"], text  # one line per epoch
    assert all("val_miou" in ln and re.search(r"ETA \d+:\d\d:\d\d$", ln) for ln in epochs), epochs
    steps = [ln for ln in lines if re.match(r"Epoch \d+/2 step \d+/5 ", ln)]
    # 5 steps per epoch: a line every ceil(5 / 10) = 1 step, but the epoch line stands for the last one
    assert [ln.split()[3] for ln in steps] == ["1/5", "2/5", "3/5", "4/5"] * 2, text
    assert all(re.search(r"loss [\d.]+ \| [\d.]+ s/step \| epoch ETA \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d$", ln)
               for ln in steps), steps
    log_txt = (tmp_path / "results" / "train" / "log.txt").read_text()
    assert "Epoch 2/2 done in " in log_txt  # the lines reach the results dir's log too
