"""`segformer config upgrade`: a TAO <= 5.5 SegFormer spec becomes a current spec that trains."""

from __future__ import annotations

import pytest
import yaml

from segformer_tao.data.synthetic import make_demo_dataset
from tests.conftest import assert_user_error, run_cli
from tests.status_records import epoch_records


def _old_spec(root: str) -> dict:
    """TAO 5.x's train_isbi.yaml shape (mmseg-era keys), scaled down to a 4-image, 32 px dataset."""
    return {
        "encryption_key": "tlt_encode",
        "train": {"exp_config": {"manual_seed": 49}, "checkpoint_interval": 2, "logging_interval": 1, "max_iters": 4,
                  "resume_training_checkpoint_path": None, "validate": True, "validation_interval": 2,
                  "trainer": {"find_unused_parameters": True, "grad_clip": 0.0,
                              "sf_optim": {"lr": 0.0006, "betas": [0.9, 0.999], "weight_decay": 0.01,
                                           "paramwise_cfg": {"head": {"lr_mult": 10.0}}},
                              "lr_config": {"policy": "poly", "warmup_iters": 1}}},
        "model": {"input_height": 32, "input_width": 32, "pretrained_model_path": None,
                  "backbone": {"type": "mit_b0"}, "decode_head": {"decoder_params": {"embed_dim": 64},
                                                                  "dropout_ratio": 0.1}},
        "dataset": {
            "input_type": "rgb", "data_root": "/tlt-pytorch",
            "img_norm_cfg": {"mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5], "to_rgb": True},
            "train_dataset": {"img_dir": [f"{root}/images/train"], "ann_dir": [f"{root}/masks/train"],
                              "pipeline": {"augmentation_config": {"random_crop": {"cat_max_ratio": 0.75},
                                                                   "resize": {"ratio_range": [0.5, 2.0]},
                                                                   "random_flip": {"prob": 0.5}}}},
            "val_dataset": {"img_dir": f"{root}/images/val", "ann_dir": f"{root}/masks/val"},
            "palette": [{"seg_class": "foreground", "rgb": [0, 0, 0], "label_id": 0, "mapping_class": "foreground"},
                        {"seg_class": "background", "rgb": [255, 255, 255], "label_id": 1,
                         "mapping_class": "background"}],
            "repeat_data_times": 500, "batch_size": 2, "workers_per_gpu": 0,
        },
    }


def test_old_spec_upgrades_to_an_equivalent_spec(tmp_path):
    root = make_demo_dataset(tmp_path / "data", num_classes=2, size=32, train=4, val=2, test=1,
                             mask_format="binary255")
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(_old_spec(str(root))))
    result = run_cli("config", "upgrade", str(old))
    assert result.returncode == 0, result.output
    new = yaml.safe_load(result.stdout)
    seg = new["dataset"]["segment"]
    assert seg["root_dir"] == str(root) and (seg["train_split"], seg["validation_split"]) == ("train", "val")
    assert seg["img_size"] == 32 and seg["batch_size"] == 2 and seg["num_classes"] == 2
    assert seg["label_transform"] == "None" and seg["palette"][1]["rgb"] == [255, 255, 255]
    assert seg["augmentation"]["mean"] == [0.5, 0.5, 0.5] and seg["augmentation"]["std"] == [0.5, 0.5, 0.5]
    assert seg["augmentation"]["with_scale_random_crop"]["scale_range"] == [0.5, 2.0]
    train = new["train"]
    # 4 iterations of ceil(4 images / batch 2) = 2 per epoch -> 2 epochs; validation every 2 iterations -> 1 epoch
    assert (train["num_epochs"], train["validation_interval"]) == (2, 1)
    assert (train["checkpoint_interval"], train["checkpoint_interval_unit"]) == (2, "step")
    assert train["seed"] == 49 and train["optim"] == {"lr": 0.0006, "momentum": 0.9, "weight_decay": 0.01,
                                                      "decoder_lr_mult": 10.0, "warmup_iters": 1, "policy": "linear"}
    assert new["model"]["decode_head"] == {"decoder_params": {"embed_dim": 64}}
    report = result.stderr
    assert "tlt_encode" not in result.output and "dropped: encryption_key (not written" in report
    for line in ("moved:   train.trainer.sf_optim.lr -> train.optim.lr", "dropped: dataset.repeat_data_times",
                 "dropped: model.decode_head.dropout_ratio", "dropped: train.logging_interval",
                 "moved:   train.max_iters -> train.num_epochs"):
        assert line in report, report
    # Every old leaf is accounted for in the report.
    assert report.count("\n") + 1 >= 30

    upgraded = tmp_path / "upgraded.yaml"
    upgraded.write_text(result.stdout)
    direct = run_cli("train", "-e", str(old), f"results_dir={tmp_path}/direct")
    assert_user_error(direct, "old.yaml", "segformer config upgrade")
    for action in ("train", "evaluate", "inference", "export"):
        composed = run_cli("config", action, "-e", str(upgraded), f"results_dir={tmp_path}/out")
        assert composed.returncode == 0, composed.output


@pytest.mark.slow
def test_upgraded_spec_trains(tmp_path):
    root = make_demo_dataset(tmp_path / "data", num_classes=2, size=32, train=4, val=2, test=1,
                             mask_format="binary255")
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(_old_spec(str(root))))
    upgraded = tmp_path / "upgraded.yaml"
    upgraded.write_text(run_cli("config", "upgrade", str(old)).stdout)
    result = run_cli("train", "-e", str(upgraded), f"results_dir={tmp_path}/out", "automl_policy=off",
                     env={"WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.output
    epochs = epoch_records(tmp_path / "out" / "train")
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["val_miou"] is not None for e in epochs)
    assert (tmp_path / "out" / "train" / "segformer_model_latest.pth").exists()
