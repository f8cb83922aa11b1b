"""Weight loading: layouts convert to identical models, mismatches fail or warn clearly."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from segformer_tao.errors import UserError
from segformer_tao.model import build_model
from segformer_tao.model.weights import detect_layout, load_pretrained
from tests.model.helpers import make_cfg
from tests.model.test_hf_parity import assert_parity, random_hf


def _model(backbone="mit_b0", num_classes=5, seed=1, **overrides):
    torch.manual_seed(seed)
    model = build_model(make_cfg(backbone, num_classes=num_classes, **overrides), load_weights=False).eval()
    with torch.no_grad():  # non-trivial BN statistics so buffer handling is tested
        model.decode_head.linear_fuse.bn.running_mean.normal_(0, 0.1)
        model.decode_head.linear_fuse.bn.running_var.uniform_(0.5, 1.5)
    return model


def _same_logits(a, b):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item() <= 1e-5


def test_state_dict_round_trip(tmp_path):
    model = _model()
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "ours.pth")
    fresh = _model()
    torch.manual_seed(2)
    fresh.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    assert not _same_logits(model, fresh)
    report = load_pretrained(fresh, str(tmp_path / "ours.pth"), part="full")
    assert report.layout == "native" and not report.missing and not report.unexpected
    assert _same_logits(model, fresh)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_tao_layout_with_fuse_bias(tmp_path):
    """TAO 6.x: Lightning ``model.`` prefix, ``decoder.``, ``linear_fuse.0`` conv with a bias, ``.1`` BN."""
    model = _model()
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("decode_head.", "decoder.").replace("linear_fuse.conv.", "linear_fuse.0.")
        sd["model." + k.replace("linear_fuse.bn.", "linear_fuse.1.")] = v.clone()
    bias = torch.randn(model.decode_head.embed_dim) * 0.1
    sd["model.decoder.linear_fuse.0.bias"] = bias
    sd["model.decoder.linear_fuse.1.running_mean"] += bias  # same function as the model above
    hparams = OmegaConf.create({"model": {"backbone": {"type": "mit_b0"}}, "lr": [1e-4]})
    torch.save({"state_dict": sd, "hyper_parameters": hparams}, tmp_path / "tao.pth")
    fresh = _model(seed=2)  # initialised differently: only the loaded weights can make it equal
    assert not _same_logits(model, fresh)
    report = load_pretrained(fresh, str(tmp_path / "tao.pth"), part="full")
    assert report.layout == "tao" and not report.missing and not report.unexpected, report
    assert _same_logits(model, fresh)


def test_nvlabs_imagenet_backbone_with_classifier(tmp_path):
    """NVlabs ImageNet MiT: bare keys plus a ``head`` classifier, wrapped or not."""
    model = _model()
    sd = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    sd.update({"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)})
    torch.save(sd, tmp_path / "mit_b0.pth")
    fresh = _model(seed=2)
    x = torch.randn(1, 3, 64, 64)
    assert not any(torch.allclose(a, b) for a, b in zip(model.backbone(x), fresh.backbone(x)))
    report = load_pretrained(fresh, str(tmp_path / "mit_b0.pth"), part="backbone")
    assert report.ignored == ["backbone.head.bias", "backbone.head.weight"]
    assert not report.missing and not report.unexpected
    assert all(torch.equal(a, b) for a, b in zip(model.backbone(x), fresh.backbone(x)))


def test_mmseg_backbone(tmp_path):
    """mmseg 1.x MiT: layers.{i}.{0,1,2}, packed in_proj, 1x1-conv FFN."""
    model = _model()
    sd = {}
    for k, v in model.backbone.state_dict().items():
        m = re.match(r"(patch_embed|block|norm)(\d)\.(.*)", k)
        i, rest = int(m[2]) - 1, m[3]
        if m[1] == "patch_embed":
            sd[f"backbone.layers.{i}.0.{rest.replace('proj.', 'projection.')}"] = v
        elif m[1] == "norm":
            sd[f"backbone.layers.{i}.2.{rest}"] = v
        else:
            j, name = rest.split(".", 1)
            for old, new in (("norm1.", "ln1."), ("norm2.", "ln2."), ("attn.proj.", "attn.attn.out_proj."),
                             ("mlp.fc1.", "ffn.layers.0."), ("mlp.dwconv.dwconv.", "ffn.layers.1."),
                             ("mlp.fc2.", "ffn.layers.4.")):
                name = name.replace(old, new)
            if name.startswith("ffn.layers.") and name.endswith("weight") and v.ndim == 2:
                v = v[:, :, None, None]
            sd[f"backbone.layers.{i}.1.{j}.{name}"] = v
    for key in [k for k in sd if ".attn.q." in k]:  # pack q and kv into in_proj
        kind = key.rsplit(".", 1)[1]
        kv = sd.pop(key.replace(".attn.q.", ".attn.kv."))
        sd[key.replace("attn.q." + kind, f"attn.attn.in_proj_{kind}")] = torch.cat([sd.pop(key), kv])
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "mmseg.safetensors")
    assert detect_layout(sd) == "mmseg"
    fresh = _model(seed=2)
    x = torch.randn(1, 3, 64, 64)
    assert not any(torch.allclose(a, b) for a, b in zip(model.backbone(x), fresh.backbone(x)))
    report = load_pretrained(fresh, str(tmp_path / "mmseg.safetensors"), part="backbone")
    assert not report.missing and not report.unexpected, report
    assert all(torch.allclose(a, b) for a, b in zip(model.backbone(x), fresh.backbone(x)))


def test_hf_encoder_only_as_backbone_path(tmp_path):
    """``nvidia/mit-b*`` SegformerForImageClassification, via model.backbone.pretrained_backbone_path."""
    from transformers import SegformerConfig, SegformerForImageClassification

    hf = SegformerForImageClassification(SegformerConfig(num_labels=10))
    hf.save_pretrained(tmp_path)
    model = build_model(make_cfg("mit_b0", **{"model.backbone.pretrained_backbone_path": str(tmp_path)}))
    report = load_pretrained(model, str(tmp_path), part="backbone")
    assert report.layout == "hf" and report.ignored == ["classifier.bias", "classifier.weight"]
    assert not report.missing and not report.unexpected


def test_wrong_backbone_is_a_user_error(tmp_path):
    hf = random_hf("mit_b0", (2, 2, 2, 2), 64)
    hf.save_pretrained(tmp_path)
    model = _model("mit_b2", embed_dim=64)
    with pytest.raises(UserError, match=r"look like 'mit_b0'.*model.backbone.type=mit_b0"):
        load_pretrained(model, str(tmp_path), part="backbone")


def test_class_count_change_reinitialises_classifier(tmp_path):
    hf = random_hf("mit_b0", (2, 2, 2, 2), 64, num_labels=150)
    hf.save_pretrained(tmp_path)
    model = _model("mit_b0", num_classes=5, embed_dim=64)
    with pytest.warns(UserWarning, match="150 classes"):
        report = load_pretrained(model, str(tmp_path), part="full")
    assert report.reinitialized == ["decode_head.linear_pred.weight", "decode_head.linear_pred.bias"]
    assert not report.missing and not report.unexpected
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 16, 16)


def test_hf_parity_survives_our_checkpoint(tmp_path):
    hf = random_hf("mit_b0", (2, 2, 2, 2), 64)
    hf.save_pretrained(tmp_path / "hf")
    model = build_model(make_cfg("mit_b0", num_classes=7, embed_dim=64,
                                 **{"train.pretrained_model_path": str(tmp_path / "hf")}))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ours.pth")
    again = build_model(make_cfg("mit_b0", num_classes=7, embed_dim=64,
                                 **{"train.pretrained_model_path": str(tmp_path / "ours.pth")}))
    assert_parity(hf, again)


def test_missing_file_and_garbage_are_user_errors(tmp_path):
    model = _model()
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(model, str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="Cannot read weights"):
        load_pretrained(model, str(tmp_path / "junk.pth"))


# ------------------------------------------------- Hugging Face shards: only files inside the model folder
def _sharded(folder, weight_map: dict) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_hf_shards_load_from_the_folder_and_from_a_hub_cache_snapshot(tmp_path):
    from segformer_tao.model.weights import read_state_dict

    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    save_file({"a": torch.ones(2)}, model / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(3)}, model / "sub" / "model-00002-of-00002.safetensors")
    _sharded(model, {"a": "model-00001-of-00002.safetensors", "b": "./sub/model-00002-of-00002.safetensors"})
    assert sorted(read_state_dict(str(model))) == ["a", "b"]
    # The hub cache: snapshots/<rev>/ holds links to ../../blobs/<hash>, outside the snapshot but inside models--*.
    cache = tmp_path / "hub" / "models--nvidia--mit-b0"
    (cache / "blobs").mkdir(parents=True)
    save_file({"a": torch.ones(2)}, cache / "blobs" / "0a1b")
    snapshot = cache / "snapshots" / "rev1"
    snapshot.mkdir(parents=True)
    (snapshot / "model-00001-of-00001.safetensors").symlink_to("../../blobs/0a1b")
    _sharded(snapshot, {"a": "model-00001-of-00001.safetensors"})
    assert list(read_state_dict(str(snapshot))) == ["a"]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "nested_dotdot"])
def test_hf_shard_outside_the_model_folder_is_refused(tmp_path, how):
    """A weight_map naming '../x', '/x' or a link leading out of the folder read that file before (its tensors
    came back); now a UserError naming the index and the shard."""
    from segformer_tao.model.weights import read_state_dict

    outside = tmp_path / "elsewhere.safetensors"
    save_file({"not_yours": torch.ones(1)}, outside)
    model = tmp_path / "model"
    model.mkdir()
    name = {"dotdot": "../elsewhere.safetensors", "absolute": str(outside), "symlink": "link.safetensors",
            "nested_dotdot": "sub/../../elsewhere.safetensors"}[how]
    if how == "symlink":
        (model / "link.safetensors").symlink_to(outside)
    _sharded(model, {"not_yours": name})
    with pytest.raises(UserError, match="not a file inside the model folder") as err:
        read_state_dict(str(model))
    assert f"'{name}'" in str(err.value) and "model.safetensors.index.json" in str(err.value)


def test_hf_shard_names_of_a_remote_folder_are_confined_by_name():
    from segformer_tao.model.weights import shard_path

    idx = "model.safetensors.index.json"
    assert shard_path("s3://bucket/models/b0/", idx, "model-1.safetensors") == "s3://bucket/models/b0/model-1.safetensors"
    for bad in ("../b1/model-1.safetensors", "/etc/passwd", "s3://other/model.safetensors", "a/../../x", ""):
        with pytest.raises(UserError, match="not a file inside the model folder"):
            shard_path("s3://bucket/models/b0", idx, bad)
