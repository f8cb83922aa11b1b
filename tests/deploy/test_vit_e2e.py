"""A TAO-format spec naming a ViT backbone trains through the CLI; its export matches PyTorch in ONNX Runtime."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.conftest import run_cli

SPECS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "specs")


@pytest.mark.slow
@pytest.mark.parametrize("spec,backbone", [("tao_vit_train_spec.yaml", "vit_small_dinov3"),
                                           ("tao_radio_train_spec.yaml", "c_radio_v2_vit_base_patch16_224")])
def test_tao_vit_spec_trains_exports_and_onnxruntime_matches_torch(tmp_path, spec, backbone):
    from segformer_tao.data.synthetic import make_demo_dataset
    from segformer_tao.deploy.onnxruntime import make_session
    from segformer_tao.engine.checkpoint import load_model_from_checkpoint

    spec = os.path.join(SPECS, spec)
    data = str(make_demo_dataset(str(tmp_path / "data"), size=32, train=2, val=2, test=2))
    results = str(tmp_path / "results")
    # the spec as TAO users write it; only paths, sizes and epochs change (demo data: 3 classes, 32 px)
    common = [f"results_dir={results}", f"dataset.segment.root_dir={data}", "dataset.segment.num_classes=3",
              "dataset.segment.img_size=32", "dataset.segment.batch_size=2", "dataset.segment.workers=0",
              "dataset.segment.label_transform=None", "automl_policy=off"]
    train = run_cli("train", "-e", spec, *common, "train.num_epochs=1", "train.checkpoint_interval=1")
    assert train.returncode == 0, train.output[-3000:]
    ckpt = f"{results}/train/segformer_model_latest.pth"
    assert os.path.exists(ckpt)
    export = run_cli("export", "-e", spec, *common, "export.input_width=32", "export.input_height=32")
    assert export.returncode == 0, export.output[-3000:]
    onnx_path = f"{results}/export/segformer.onnx"

    model, _ = load_model_from_checkpoint(ckpt, "tlt_encode")  # the spec's encryption_key
    assert model.backbone_name == backbone
    session = make_session(onnx_path)
    for batch in (1, 3):  # TAO's default export has a dynamic batch
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = model.eval()(x).numpy()
        got = session.run(["output"], {"input": x.numpy()})[0]
        assert got.shape == want.shape == (batch, 3, 8, 8)
        assert np.abs(got - want).max() <= 1e-4


def test_export_refuses_dynamic_hw_and_sizes_a_vit_cannot_take():
    from segformer_tao.actions.export import check_vit_geometry
    from segformer_tao.deploy.onnx_export import ExportSettings
    from segformer_tao.errors import UserError

    with pytest.raises(UserError, match=r"export.dynamic_hw=true is not available .*vit_small_dinov3"):
        check_vit_geometry("vit_small_dinov3", ExportSettings(64, 64, dynamic_hw=True))
    with pytest.raises(UserError, match=r"export.input_width=300 .*vit_giant_nvdinov2.*multiple of 224"):
        check_vit_geometry("vit_giant_nvdinov2", ExportSettings(224, 300))
    check_vit_geometry("vit_small_dinov3", ExportSettings(64, 96))  # non-square is fine
    check_vit_geometry("mit_b0", ExportSettings(64, 64, dynamic_hw=True))  # MiT keeps dynamic H/W
