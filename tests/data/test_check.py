"""Dataset check and the `segformer dataset` CLI."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from segformer_tao.commands.dataset import main
from segformer_tao.data.check import check_dataset
from segformer_tao.errors import UserError
from tests.data.conftest import make_cfg


def test_check_clean_dataset_writes_report(demo_cfg, tmp_path, capsys):
    report = check_dataset(demo_cfg, ["train", "val", "predict"], report_path=str(tmp_path / "r.json"))
    assert report["ok"] and json.loads((tmp_path / "r.json").read_text())["ok"]
    train = report["splits"][0]
    assert train["pairs"] == 6 and train["checked"] == 6 and not train["sampled"]
    assert set(train["class_pixels"]) == {"0", "1", "2", "3"} and sum(train["class_pixels"].values()) == 6 * 48 * 48
    assert report["splits"][2]["images"] == 2
    assert "train: 6 pairs" in capsys.readouterr().out


def test_check_finds_every_problem(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "d")
    mask = np.array(Image.open(root / "masks/train/0003.png"))
    mask[0, 0] = 9
    Image.fromarray(mask).save(root / "masks/train/0003.png")
    (root / "images/val/0001.png").write_bytes(b"junk")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks/val/0002.png")
    (root / "images/test/0000.png").unlink()
    cfg = make_cfg(root, num_classes=4, label_transform="None", test_split="test")
    with pytest.raises(UserError) as e:
        check_dataset(cfg, ["train", "val", "test"], mode="full", report_path=str(tmp_path / "r.json"), quiet=True)
    msg = str(e.value)
    assert "masks/train/0003.png' has values [9]" in msg
    assert "images/val/0001.png" in msg and "10x10" in msg and "without an image" in msg
    kinds = sorted(p["kind"] for p in json.loads((tmp_path / "r.json").read_text())["problems"])
    assert kinds == ["bad_mask", "size_mismatch", "unpaired", "unreadable"]


def test_check_missing_and_empty_splits(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "d")
    for f in (root / "images/val").iterdir():
        f.unlink()
    cfg = make_cfg(root, num_classes=4, label_transform="None", train_split="nope")
    with pytest.raises(UserError, match=r"images/nope' does not exist.*images/val' holds no"):
        check_dataset(cfg, ["train", "val"], quiet=True)


def test_check_sample_mode_caps_checked_pairs(demo_cfg, monkeypatch):
    monkeypatch.setattr("segformer_tao.data.check.SAMPLE_SIZE", 4)
    report = check_dataset(demo_cfg, ["train"], quiet=True)
    assert report["splits"][0]["checked"] == 4 and report["splits"][0]["sampled"]
    assert check_dataset(demo_cfg, ["train"], mode="off")["splits"] == []


def test_cli_demo_then_check_names_planted_bad_mask(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--classes", "3", "--size", "32", "--train", "4", "--val", "2",
                 "--test", "1", "--mask-format", "rgb"]) == 0
    spec = tmp_path / "demo" / "spec.yaml"
    assert main(["check", "-e", str(spec), f"results_dir={tmp_path}/res"]) == 0
    assert json.loads((tmp_path / "res" / "dataset_report.json").read_text())["ok"]
    bad = tmp_path / "demo" / "masks" / "val" / "0001.png"
    mask = np.array(Image.open(bad))
    mask[3, 3] = (7, 7, 9)
    Image.fromarray(mask).save(bad)
    with pytest.raises(UserError, match=r"masks/val/0001\.png' has colours not in dataset\.segment\.palette: "
                                        r"\(7, 7, 9\)"):
        main(["check", "-e", str(spec), f"results_dir={tmp_path}/res", "--full"])


def test_cli_demo_binary_masks_read_with_norm(tmp_path):
    main(["demo", str(tmp_path / "b"), "--classes", "2", "--size", "24", "--train", "2", "--val", "1", "--test", "1",
          "--mask-format", "binary255"])
    assert set(np.unique(np.array(Image.open(tmp_path / "b/masks/train/0000.png")))) <= {0, 255}
    assert main(["check", "-e", str(tmp_path / "b/spec.yaml"), f"results_dir={tmp_path}/res"]) == 0


def test_palette_naming_fewer_classes_than_num_classes_warns(demo_root, caplog):
    palette = [{"label_id": i, "seg_class": f"c{i}", "mapping_class": f"c{i}", "rgb": [i, i, i]} for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        check_dataset(make_cfg(demo_root, num_classes=4, label_transform="None", palette=palette), quiet=True)
    assert "palette" not in caplog.text  # 4 ids for 4 classes: fine
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        check_dataset(make_cfg(demo_root, num_classes=6, label_transform="None", palette=palette), quiet=True)
    assert "num_classes=6 but dataset.segment.palette names 4 class id(s) (0, 1, 2, 3)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):  # TAO's default palette is not the user's
        check_dataset(make_cfg(demo_root, num_classes=4, label_transform="None"), quiet=True)
    assert "palette" not in caplog.text


def test_check_reports_every_kind_of_problem_at_once(demo_root, tmp_path):
    root = shutil.copytree(demo_root, tmp_path / "d")
    (root / "masks/train/0000.png").unlink()  # unpaired image
    (root / "images/train/0001.png").write_bytes(b"not a png")  # corrupt image
    Image.fromarray(np.full((24, 24), 9, np.uint8)).save(root / "masks/train/0002.png")  # wrong size and value
    Image.fromarray(np.full((48, 48), 9, np.uint8)).save(root / "masks/train/0003.png")  # wrong value only
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(root / "masks/train/0004.png")
    with pytest.raises(UserError) as info:
        check_dataset(make_cfg(root, num_classes=4, label_transform="None"), ["train"], mode="full", quiet=True)
    msg = str(info.value)
    for needle in ("[unpaired]", "0000.png", "[unreadable]", "0001.png", "[size_mismatch]", "24x24", "[bad_mask]",
                   "The same for 2 more file(s): 0003.png, 0004.png"):
        assert needle in msg, (needle, msg)
    assert msg.count("[bad_mask]") == 1  # one full example per kind, not the same fix three times


def test_train_checks_the_dataset_before_training(demo_root, tmp_path):
    """`segformer train` runs the check first: a bad validation mask stops it before any epoch, with the report."""
    from tests.bad_inputs.runner import run_cli_forked
    from tests.conftest import assert_user_error

    root = shutil.copytree(demo_root, tmp_path / "d")
    Image.fromarray(np.full((48, 48), 9, np.uint8)).save(root / "masks/val/0001.png")  # class 9 of 4
    results = tmp_path / "res"
    r = run_cli_forked("train", f"dataset.segment.root_dir={root}", "dataset.segment.num_classes=4",
                       "dataset.segment.label_transform=None", "model=mit_b0", "dataset.segment.img_size=32",
                       "dataset.segment.batch_size=2", "dataset.segment.workers=0", "train.num_epochs=1",
                       "automl_policy=off", f"results_dir={results}")
    assert_user_error(r, "Dataset check of", "masks/val/0001.png", "[9]")
    assert json.loads((results / "train" / "dataset_report.json").read_text())["ok"] is False
    # no epoch ran: status.json holds only STARTED and the FAILURE naming the check, and no checkpoint exists
    lines = [json.loads(line) for line in (results / "train" / "status.json").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["STARTED", "FAILURE"] and "Dataset check" in lines[-1]["message"]
    assert not list((results / "train").glob("*.pth"))
