"""train -> evaluate -> inference on the real model (mit_b0) and the synthetic dataset, via run(cfg)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from segformer_tao.config import compose_config
from segformer_tao.data.synthetic import make_demo_dataset


def _cfg(action, root, out, *extra):
    cfg = compose_config(action, [f"dataset.segment.root_dir={root}", "dataset.segment.num_classes=3",
                                  "dataset.segment.label_transform=None", "dataset.segment.img_size=64",
                                  "dataset.segment.batch_size=4", "dataset.segment.workers=0",
                                  "model.backbone.type=mit_b0", "model.decode_head.decoder_params.embed_dim=64",
                                  "automl_policy=off", f"{action}.results_dir={out}", *extra])
    return cfg


@pytest.mark.slow
def test_train_evaluate_inference_end_to_end(tmp_path):
    from segformer_tao.actions import evaluate, inference, train

    # Split sizes differ so a wrong split mapping shows up in the counts (evaluate reads test_split = val,
    # inference reads predict_split = test by default).
    root = make_demo_dataset(tmp_path / "data", num_classes=3, size=64, train=4, val=3, test=2)
    # A test image larger than img_size exercises original-size outputs and the sliding window.
    big = np.asarray(Image.open(root / "images" / "test" / "0000.png").convert("RGB").resize((96, 80)))
    (root / "images" / "big").mkdir()
    Image.fromarray(big).save(root / "images" / "big" / "big.png")
    Image.fromarray(big[:60, :50]).save(root / "images" / "big" / "small.png")
    out = train.run(_cfg("train", root, tmp_path / "train", "train.num_epochs=1"))
    ckpt = out["artifacts"]["latest_checkpoint"]
    assert os.path.exists(ckpt) and out["metrics"]["val_miou"] is not None

    ev = evaluate.run(_cfg("evaluate", root, tmp_path / "eval", f"evaluate.checkpoint={ckpt}",
                           "evaluate.vis_after_n_batches=1", "dataset.segment.validation_split=train"))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["mIoU"] == pytest.approx(ev["metrics"]["mIoU"]) and len(results["per_class"]) == 3
    assert results["num_pixels"] == 3 * 64 * 64  # the 3 test_split (val) masks, at their own resolution
    for name in ("per_class.csv", "confusion_matrix.png"):
        assert (tmp_path / "eval" / name).exists()
    assert len(os.listdir(tmp_path / "eval" / "vis")) == 3

    inference.run(_cfg("inference", root, tmp_path / "inf_test", f"inference.checkpoint={ckpt}"))
    assert sorted(os.listdir(tmp_path / "inf_test" / "masks")) == ["0000.png", "0001.png"]  # images/test, not val

    inference.run(_cfg("inference", root, tmp_path / "inf", f"inference.checkpoint={ckpt}",
                       "inference.sliding_window=true", "inference.flip_tta=true",
                       "dataset.segment.predict_split=big"))
    mask = np.asarray(Image.open(tmp_path / "inf" / "masks" / "big.png"))
    assert mask.shape == (80, 96) and mask.max() < 3
    assert Image.open(tmp_path / "inf" / "overlays" / "big.png").size == (96, 80)
    assert np.asarray(Image.open(tmp_path / "inf" / "masks" / "small.png")).shape == (60, 50)
