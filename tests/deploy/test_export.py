"""export: a tiny mit_b0 checkpoint -> ONNX, parity with PyTorch, dynamic axes, DeepStream files, bad inputs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
import yaml

from segformer_tao.actions import export
from segformer_tao.deploy.onnxruntime import OrtRuntime, make_session
from segformer_tao.errors import UserError
from tests.deploy.conftest import IMG, NUM_CLASSES, deploy_cfg


def _export_cfg(tmp_path, checkpoint, *overrides):
    return deploy_cfg("export", tmp_path, f"export.checkpoint={checkpoint}", f"export.input_height={IMG}",
                      f"export.input_width={IMG}", *overrides)


def _torch_logits(checkpoint, x):
    from segformer_tao.engine.checkpoint import load_model_from_checkpoint

    model, _ = load_model_from_checkpoint(checkpoint)
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.slow
def test_dynamic_batch_and_hw_match_torch(tmp_path, tiny_checkpoint):
    cfg = _export_cfg(tmp_path, tiny_checkpoint, "export.dynamic_hw=true")
    result = export.run(cfg)
    path = result["artifacts"]["onnx_file"]
    assert path == f"{tmp_path}/results/export/tiny.onnx"  # default path inside results_dir
    assert result["metrics"]["max_abs_diff"] <= 1e-4
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = make_session(path)
    for batch, (h, w) in [(1, (IMG, IMG)), (3, (IMG, IMG)), (1, (96, 128)), (3, (96, 128))]:
        x = torch.randn(batch, 3, h, w)
        got = session.run(["output"], {"input": x.numpy()})[0]
        assert got.shape == (batch, NUM_CLASSES, h // 4, w // 4)  # TAO's 1/4-resolution logits
        np.testing.assert_allclose(got, _torch_logits(tiny_checkpoint, x), atol=1e-4, rtol=0)


def test_static_size_full_resolution_output_and_deepstream(tmp_path, tiny_checkpoint):
    onnx_file = f"{tmp_path}/out/model.onnx"
    cfg = _export_cfg(tmp_path, tiny_checkpoint, f"export.onnx_file={onnx_file}", "export.full_resolution_output=true",
                      "export.serialize_nvdsinfer=true", "export.simplify=false")
    result = export.run(cfg)
    runtime = OrtRuntime(onnx_file, num_classes=NUM_CLASSES, img_size=IMG)
    x = torch.randn(3, 3, IMG, IMG)
    out = runtime.predict(x)  # batch 3 through a graph traced at batch 2
    assert out.shape == (3, NUM_CLASSES, IMG, IMG)
    # our own ONNX Runtime session against PyTorch's logits resized like the graph's Resize (bilinear, half-pixel)
    got = make_session(onnx_file).run(["output"], {"input": x.numpy()})[0]
    ref = torch.nn.functional.interpolate(torch.from_numpy(_torch_logits(tiny_checkpoint, x)), size=(IMG, IMG),
                                          mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert runtime.meta.class_names == ["c0", "c1", "c2"] and runtime.meta.img_size == IMG
    ds = yaml.safe_load(open(result["artifacts"]["nvdsinfer_config"]))["property"]
    # the DeepStream form (tests/deploy/test_deepstream.py checks its masks): its own ONNX, normalizing inside
    assert ds["onnx-file"] == "model.nvdsinfer.onnx" and ds["num-detected-classes"] == NUM_CLASSES
    assert ds["infer-dims"] == f"3;{IMG};{IMG}" and ds["net-scale-factor"] == 1.0
    assert open(result["artifacts"]["labels"]).read().splitlines() == ["c0", "c1", "c2"]


def test_fixed_batch_onnx(tmp_path, tiny_checkpoint):
    cfg = _export_cfg(tmp_path, tiny_checkpoint, "export.batch_size=1")
    path = export.run(cfg)["artifacts"]["onnx_file"]
    dims = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, IMG, IMG]
    assert OrtRuntime(path, num_classes=NUM_CLASSES).predict(torch.randn(3, 3, IMG, IMG)).shape[0] == 3


def test_missing_checkpoint(tmp_path):
    cfg = _export_cfg(tmp_path, f"{tmp_path}/nope.pth")
    with pytest.raises(UserError, match="export.checkpoint"):
        export.run(cfg)


def test_checkpoint_of_another_model(tmp_path):
    path = str(tmp_path / "foreign.pth")
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict()}, path)
    with pytest.raises(UserError, match="not a segformer_tao checkpoint"):
        export.run(_export_cfg(tmp_path, path))


def test_unwritable_output_dir(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # works as root too, unlike chmod
    cfg = _export_cfg(tmp_path, tiny_checkpoint, f"export.onnx_file={blocker}/sub/m.onnx")
    with pytest.raises(UserError, match=r"Cannot write export.onnx_file=.*cannot be created \(Not a directory\)"):
        export.run(cfg)


def test_read_only_output_dir(tmp_path, tiny_checkpoint):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: directory permissions are not enforced, so a read-only folder is writable")
        with pytest.raises(UserError, match="not writable"):
            export.run(_export_cfg(tmp_path, tiny_checkpoint, f"export.onnx_file={locked}/m.onnx"))
    finally:
        os.chmod(locked, 0o700)


def test_opset_too_low(tmp_path, tiny_checkpoint):
    with pytest.raises(UserError, match="opset_version=9"):
        export.run(_export_cfg(tmp_path, tiny_checkpoint, "export.opset_version=9"))


def test_opset_below_what_the_graph_needs(tmp_path, tiny_checkpoint):
    # Passes our floor (11) but attention (scaled_dot_product_attention) needs opset 14: the exporter's own
    # refusal becomes a UserError naming the key.
    with pytest.raises(UserError, match="opset_version=13.*version 14"):
        export.run(_export_cfg(tmp_path, tiny_checkpoint, "export.opset_version=13"))


def test_older_opset_without_layernorm_op(tmp_path, tiny_checkpoint):
    # opset 14-16 have no LayerNormalization: the exporter decomposes it and parity must still hold.
    result = export.run(_export_cfg(tmp_path, tiny_checkpoint, "export.opset_version=14"))
    path = result["artifacts"]["onnx_file"]
    assert onnx.load(path).opset_import[0].version == 14
    assert not any(n.op_type == "LayerNormalization" for n in onnx.load(path).graph.node)
    x = torch.randn(2, 3, IMG, IMG)  # checked with our own session, not export's self-reported difference
    got = make_session(path).run(["output"], {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, _torch_logits(tiny_checkpoint, x), atol=1e-4, rtol=0)


def test_export_refuses_an_onnx_that_differs_from_torch(tmp_path, tiny_checkpoint, monkeypatch):
    """The parity check must look at the ONNX: a graph traced from other weights is refused, and not written."""
    from segformer_tao.deploy import onnx_export
    from segformer_tao.model import build_model

    torch.manual_seed(123)
    other = build_model(deploy_cfg("export", tmp_path), load_weights=False).eval()
    trace = onnx_export.export_onnx_bytes
    monkeypatch.setattr(onnx_export, "export_onnx_bytes", lambda model, settings: trace(other, settings))
    cfg = _export_cfg(tmp_path, tiny_checkpoint)
    with pytest.raises(UserError, match="exported ONNX differs from PyTorch by"):
        export.run(cfg)
    assert not os.path.exists(f"{tmp_path}/results/export/tiny.onnx")
