"""Load SegFormer weights from every common layout into our model, converting keys explicitly.

Layouts (detected from the keys, converted to ours = NVlabs names under ``backbone.`` / ``decode_head.``):

- ``native``: NVlabs SegFormer ``.pth`` (``backbone.patch_embed1...``, ``decode_head.linear_c1...``), NVlabs
  ImageNet encoders (no prefix, ``head.*`` classifier), timm-created backbones, our own checkpoints.
- ``tao``: TAO 6.x (``model.backbone.*``, ``model.decoder.*``; ``linear_fuse.0`` conv with bias, ``.1`` BN).
- ``hf``: Hugging Face ``nvidia/mit-b*`` encoders and ``segformer-b*-finetuned-*`` models (safetensors or
  ``pytorch_model.bin``; hub names, and the renamed names of transformers >= 5).
- ``mmseg``: mmsegmentation 1.x MiT (``layers.{i}.{0,1,2}``, packed ``attn.attn.in_proj_*``); its decode head
  is a different design, so only the backbone converts.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import typing
import warnings
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode
from torch import nn

from segformer_tao import io as sio
from segformer_tao.errors import UserError, load_failure_reason, refused_pickle
from segformer_tao.model.backbones import infer_backbone

__all__ = ["LoadReport", "read_state_dict", "detect_layout", "convert_state_dict", "load_pretrained"]

_HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "pytorch_model.bin.index.json")
# Keys that exist in published checkpoints but have no counterpart by design (ImageNet classifiers, mmseg's
# unused conv_seg): dropped and listed in the report as ignored, never an error.
# TAO's NVCLIP backbones also carry the CLIP text tower and logit scale/bias (everything under
# ``backbone.model.`` but the vision tower), which segmentation never runs. Only keys the model lacks are dropped.
_IGNORED = re.compile(
    r"^(backbone\.(head|head_dist|norm)\.|classifier\.|decode_head\.conv_seg\.|backbone\.model\.(?!visual\.))")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: layout, loaded/missing/unexpected/ignored/re-initialised keys."""

    path: str
    layout: str
    part: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # ViT-Adapter modules a bare ViT checkpoint cannot hold

    def __str__(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        lines = [f"Loaded {self.loaded} tensors ({self.part}) from {self.path} [layout: {self.layout}]"]
        for name in ("missing", "unexpected", "ignored", "reinitialized", "fresh"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {few(keys)}")
        return "\n".join(lines)


def _load_bytes(data: bytes, name: str) -> dict:
    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    # Lightning/TAO checkpoints pickle their OmegaConf hyper-parameters; allow those types, nothing else.
    safe = [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any, dict, list, int,
            collections.defaultdict]
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        refused = refused_pickle(name, e)
        if refused is not None:
            raise refused from e
        raise UserError(
            f"Cannot read weights file '{name}': {load_failure_reason(e)}. Expected a PyTorch checkpoint "
            "(.pth/.pt/.ckpt/.bin, loadable with weights_only=True) or a .safetensors file.") from e


def _confinement_root(folder: str) -> str:
    """The folder shards must stay in: the model folder, or for a Hugging Face cache snapshot
    (``models--org--name/snapshots/<rev>``, whose files link to ``../../blobs/``) the ``models--*`` folder."""
    real = os.path.realpath(folder)
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots" and os.path.basename(os.path.dirname(parent)).startswith("models--"):
        return os.path.dirname(parent)
    return real


def shard_path(folder: str, index: str, shard: str) -> str:
    """The path of ``shard`` (a file name from the Hugging Face index ``index`` in ``folder``), confined to
    ``folder``: a relative name without ``..``, and locally, symbolic links resolved, still inside the folder (or
    its Hugging Face cache entry). s3:// and other remote folders are checked on the name alone. UserError else."""
    parts = shard.replace("\\", "/").split("/")
    outside = (not shard or shard.startswith(("/", "\\")) or "://" in shard or re.match(r"^[A-Za-z]:", shard)
               or any(p in ("..", "") for p in parts) or parts[-1] == "." or "\x00" in shard)  # '.': the folder
    joined = f"{str(folder).rstrip('/')}/{'/'.join(p for p in parts if p != '.')}"
    if not outside and not sio.is_remote(folder):
        root = _confinement_root(folder)
        outside = os.path.commonpath([os.path.realpath(joined), root]) != root
    if outside:
        raise UserError(f"'{folder}/{index}' names the shard '{shard}', which is not a file inside the model folder "
                        f"'{folder}' (an absolute path, a '..' or a symbolic link leading out of it). Shards must lie "
                        "in the folder of their index: re-download the model, or fix the index's weight_map.")
    return joined


def _read_hf_dir(path: str) -> dict:
    fs, root = sio.filesystem(path)
    for fname in _HF_FILES:
        if not fs.exists(f"{root}/{fname}"):
            continue
        if not fname.endswith(".index.json"):
            return _load_bytes(sio.read_bytes(f"{path}/{fname}"), fname)
        weight_map = json.loads(sio.read_text(f"{path}/{fname}")).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"'{path}/{fname}' has no weight_map (tensor name -> shard file). Re-download the "
                            "model, or point the weights path at a single checkpoint file.")
        merged: dict = {}
        for shard in sorted({str(v) for v in weight_map.values()}):
            merged.update(_load_bytes(sio.read_bytes(shard_path(path, fname, shard)), shard))
        return merged
    raise UserError(f"Directory '{path}' has none of {', '.join(_HF_FILES)}. Point the weights path at a "
                    "Hugging Face model directory or at a checkpoint file.")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read tensors from a checkpoint file or Hugging Face directory (local or s3://).

    Unwraps ``{"state_dict": ...}`` (Lightning, TAO, mmseg, ours) and ``{"model": ...}`` (NVlabs ImageNet)
    containers and strips a DistributedDataParallel ``module.`` prefix.
    """
    fs, p = sio.filesystem(path)
    if not fs.exists(p):
        raise UserError(f"Weights file '{path}' does not exist. Check "
                        "model.backbone.pretrained_backbone_path / train.pretrained_model_path.")
    obj = _read_hf_dir(path) if fs.isdir(p) else _load_bytes(sio.read_bytes(path), str(path))
    for container in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(container), dict):
            obj = obj[container]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not sd:
        raise UserError(f"'{path}' contains no tensors (not a model checkpoint).")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    """Name the key layout of ``sd``: 'hf', 'tao', 'mmseg' or 'native'."""
    keys = list(sd)
    if any(re.search(r"(^|\.)(encoder\.(patch_embeddings|block)|stages\.\d+\.patch_embeddings)\.", k)
           for k in keys):
        return "hf"
    if any(re.search(r"(^|\.)layers\.\d+\.0\.projection\.", k) for k in keys):
        return "mmseg"
    if any(k.startswith(("model.decoder.", "decoder.")) or ".linear_fuse.0." in k for k in keys):
        return "tao"
    return "native"


def _split_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every key a ``backbone.`` / ``decode_head.`` prefix (bare keys are a backbone checkpoint)."""
    if all(k.startswith("model.") for k in sd):  # a Lightning module holding the network as ``model``
        sd = {k[len("model."):]: v for k, v in sd.items()}
    sd = {("decode_head." + k[len("decoder."):] if k.startswith("decoder.") else k): v for k, v in sd.items()}
    if not any(k.startswith(("backbone.", "decode_head.")) for k in sd):
        sd = {f"backbone.{k}": v for k, v in sd.items()}
    return sd


def _from_tao(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in _split_prefix(sd).items():
        k = k.replace("decode_head.linear_fuse.0.", "decode_head.linear_fuse.conv.")
        out[k.replace("decode_head.linear_fuse.1.", "decode_head.linear_fuse.bn.")] = v
    bias = out.pop("decode_head.linear_fuse.conv.bias", None)
    if bias is not None and "decode_head.linear_fuse.bn.running_mean" in out:
        # BN(Wx + b) == BN'(Wx) with running_mean' = running_mean - b: exact in eval, irrelevant in train.
        out["decode_head.linear_fuse.bn.running_mean"] = out["decode_head.linear_fuse.bn.running_mean"] - bias
    return out


_HF_NEW_TO_HUB = [  # transformers >= 5 module names -> hub (save_pretrained) names
    (r"stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj\.", "attention.self.query."),
    (r"attention\.k_proj\.", "attention.self.key."),
    (r"attention\.v_proj\.", "attention.self.value."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"attention\.sequence_reduction\.sequence_reduction\.", "attention.self.sr."),
    (r"attention\.sequence_reduction\.layer_norm\.", "attention.self.layer_norm."),
    (r"mlp\.fc1\.", "mlp.dense1."), (r"mlp\.fc2\.", "mlp.dense2."),
    (r"layernorm_before\.", "layer_norm_1."), (r"layernorm_after\.", "layer_norm_2."),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
]
_HF_HUB_TO_OURS = [  # hub stage/block indices are 0-based, NVlabs module names 1-based
    (r"^(segformer\.)?encoder\.patch_embeddings\.(\d+)\.layer_norm\.",
     lambda m: f"backbone.patch_embed{int(m[2]) + 1}.norm."),
    (r"^(segformer\.)?encoder\.patch_embeddings\.(\d+)\.proj\.",
     lambda m: f"backbone.patch_embed{int(m[2]) + 1}.proj."),
    (r"^(segformer\.)?encoder\.block\.(\d+)\.", lambda m: f"backbone.block{int(m[2]) + 1}."),
    (r"^(segformer\.)?encoder\.layer_norm\.(\d+)\.", lambda m: f"backbone.norm{int(m[2]) + 1}."),
    (r"\.layer_norm_1\.", ".norm1."), (r"\.layer_norm_2\.", ".norm2."),
    (r"\.attention\.self\.query\.", ".attn.q."), (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."), (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."), (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"^decode_head\.linear_c\.(\d+)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}."),
    (r"^decode_head\.linear_fuse\.", "decode_head.linear_fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
]


def _from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for pat, rep in _HF_NEW_TO_HUB + _HF_HUB_TO_OURS:
            k = re.sub(pat, rep, k)
        out[k] = v
    for key in [k for k in out if ".attention.self.key." in k]:  # NVlabs packs key and value rows as kv
        value = out.pop(key.replace(".self.key.", ".self.value."))
        out[key.replace(".attention.self.key.", ".attn.kv.")] = torch.cat([out.pop(key), value], 0)
    return out


def _from_mmseg(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in _split_prefix(sd).items():
        m = re.match(r"backbone\.layers\.(\d+)\.(\d)\.(.*)", k)
        if not m:
            out[k] = v  # mmseg's decode head has no counterpart: reported as unexpected
            continue
        stage, part, rest = int(m[1]) + 1, m[2], m[3]
        if part == "0":
            out[f"backbone.patch_embed{stage}.{rest.replace('projection.', 'proj.')}"] = v
        elif part == "2":
            out[f"backbone.norm{stage}.{rest}"] = v
        else:
            _mmseg_block(out, f"backbone.block{stage}.", rest, v)
    return out


def _mmseg_block(out: dict, prefix: str, rest: str, v: torch.Tensor) -> None:
    j, name = rest.split(".", 1)
    p = f"{prefix}{j}."
    ffn = {"ffn.layers.0.": "mlp.fc1.", "ffn.layers.1.": "mlp.dwconv.dwconv.", "ffn.layers.4.": "mlp.fc2."}
    if name.startswith("attn.attn.in_proj_"):  # rows: [query; key; value]
        kind = name.rsplit("_", 1)[1]
        c = v.shape[0] // 3
        out[f"{p}attn.q.{kind}"], out[f"{p}attn.kv.{kind}"] = v[:c], v[c:]
        return
    for old, new in ffn.items():
        if name.startswith(old):
            linear = new != "mlp.dwconv.dwconv." and name.endswith("weight")
            out[p + new + name[len(old):]] = v.flatten(1) if linear else v  # 1x1 conv -> Linear
            return
    for old, new in (("attn.attn.out_proj.", "attn.proj."), ("ln1.", "norm1."), ("ln2.", "norm2.")):
        name = name.replace(old, new)
    out[p + name] = v


def convert_state_dict(sd: dict[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """Convert ``sd`` (any supported layout) to our full-model keys (``backbone.*`` / ``decode_head.*``)."""
    layout = layout or detect_layout(sd)
    if layout == "hf":
        return _from_hf(sd)
    if layout == "tao":
        return _from_tao(sd)
    if layout == "mmseg":
        return _from_mmseg(sd)
    return _fan_fixups(_split_prefix(sd))


def _fan_fixups(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVlabs FAN releases: ``pos_embeder`` -> ``pos_embed``; packed class-attention qkv -> q, k, v."""
    out = {k.replace("backbone.pos_embeder.", "backbone.pos_embed."): v for k, v in sd.items()}
    for key in [k for k in out if re.match(r"backbone\.cls_attn_blocks\.\d+\.attn\.qkv\.", k)]:
        for name, part in zip("qkv", out.pop(key).chunk(3, dim=0)):
            out[key.replace(".attn.qkv.", f".attn.{name}.")] = part
    return out


def load_pretrained(model: nn.Module, path: str, *, part: str = "backbone") -> LoadReport:
    """Load weights from ``path`` into a :class:`~segformer_tao.model.SegFormer`.

    part="backbone" loads only ``backbone.*``; part="full" loads backbone and head. A classifier whose class
    count differs is re-initialised with a warning; any other shape or key mismatch in the backbone (e.g.
    mit_b0 weights into mit_b2) raises UserError naming the variant the weights belong to.
    """
    if part not in ("backbone", "full"):
        raise ValueError(f"part must be 'backbone' or 'full', got {part!r}")
    src = read_state_dict(path)
    layout = detect_layout(src)
    sd = convert_state_dict(src, layout)
    report = LoadReport(path=str(path), layout=layout, part=part)
    sd, vit_only = _convert_vit(model, sd, report)
    target = model.state_dict()
    report.ignored = sorted(report.ignored + [k for k in sd if _IGNORED.match(k) and k not in target])
    keep = ("backbone.", "decode_head.") if part == "full" else ("backbone.",)
    sd = {k: v for k, v in sd.items() if k not in report.ignored and k.startswith(keep)}
    if not any(k.startswith("backbone.") for k in sd):
        raise UserError(f"'{path}' has no backbone weights we recognise (layout '{layout}'); it is not a "
                        "SegFormer/MiT/FAN/ViT checkpoint.")
    _check_backbone(model, sd, target, path, vit_only)
    _reinit_classifier(model, sd, target, report)
    _check_head_shapes(model, sd, target, path)
    result = model.load_state_dict(sd, strict=False)
    scope = "" if part == "full" else "backbone."
    report.missing = sorted(k for k in result.missing_keys
                            if k.startswith(scope) and k not in report.reinitialized)
    if vit_only:
        report.fresh = [k for k in report.missing if _is_adapter(model, k)]
        report.missing = [k for k in report.missing if k not in report.fresh]
    report.unexpected = sorted(result.unexpected_keys)
    report.loaded = len(sd) - len(report.unexpected)
    if report.missing or report.unexpected:
        warnings.warn(str(report), stacklevel=2)
    return report


def _check_head_shapes(model: nn.Module, sd: dict, target: dict, path: str) -> None:
    """Raise UserError naming the first head tensor whose shape differs: which module, which width, which key."""
    bad = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if not bad:
        return
    key, have, want = bad[0], tuple(sd[bad[0]].shape), tuple(target[bad[0]].shape)
    m = re.fullmatch(r"decode_head\.linear_c(\d)\.proj\.weight", key)
    if m and have[0] == want[0]:  # same decoder width: the backbone output feeding this projection differs
        stage = int(m[1])
        name = getattr(model, "backbone_name", "") or type(model.backbone).__name__
        in_index = list(getattr(model, "in_index", range(4)))
        downsample = getattr(model.backbone, "feat_downsample", None)
        setting = "" if downsample is None else f" with model.backbone.feat_downsample={downsample}"
        raise UserError(
            f"Weights in '{path}' do not fit the decode head: decode_head.linear_c{stage}.proj takes {have[1]} "
            f"input channels in the checkpoint but {want[1]} in this model (backbone output {in_index[stage - 1]} "
            f"of model.backbone.type={name}{setting}, model.decode_head.in_index={in_index}). Use the backbone "
            "settings and in_index the checkpoint was trained with.")
    if m or re.fullmatch(r"decode_head\.(linear_fuse\.(conv|bn)\.\w+|linear_pred\.weight)", key):
        raise UserError(
            f"Weights in '{path}' do not fit the decode head: {key} is {have} in the checkpoint but {want} in this "
            f"model (decoder width {model.decode_head.embed_dim}). Set model.decode_head.decoder_params.embed_dim "
            "to the value the checkpoint was trained with.")
    raise UserError(f"Weights in '{path}' do not fit the model: {key} is {have} in the checkpoint but {want} in "
                    "this model.")


def _is_adapter(model: nn.Module, key: str) -> bool:
    return key.startswith("backbone.") and model.backbone.is_adapter_key(key[len("backbone."):])


def _convert_vit(model: nn.Module, sd: dict, report: LoadReport) -> tuple[dict, bool]:
    """ViT-Adapter backbones: convert the ViT's own layout (timm, Meta DINOv3, NV-DINOv2, open_clip) to ours.

    Returns the state dict and whether it holds only the ViT (no adapter keys: a pretrained ViT, not a TAO model).
    """
    backbone = getattr(model, "backbone", None)
    if not hasattr(backbone, "convert_pretrained"):
        return sd, False
    bare = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    try:
        bare, dropped = backbone.convert_pretrained(bare)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"The weights in '{report.path}' cannot be converted for model.backbone.type="
                        f"{model.backbone_name}: {e}.") from e
    report.ignored += sorted(f"backbone.{k}" for k in dropped)
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {**rest, **{f"backbone.{k}": v for k, v in bare.items()}}, not any(map(backbone.is_adapter_key, bare))


def _check_backbone(model: nn.Module, sd: dict, target: dict, path: str, vit_only: bool = False) -> None:
    """Raise UserError when the checkpoint's backbone is not the model's (missing/extra/misshapen keys).

    ``vit_only``: the weights are a bare ViT for a ViT-Adapter, so only the ViT's keys must match.
    """
    def backbone_keys(keys) -> set[str]:  # BN step counters are optional in every layout
        return {k for k in keys if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}

    want, have = backbone_keys(target), backbone_keys(sd)
    if vit_only:
        want = {k for k in want if not _is_adapter(model, k)}
    misshapen = [k for k in have & want if sd[k].shape != target[k].shape]
    if not (want - have or have - want or misshapen):
        return
    name = getattr(model, "backbone_name", "") or type(model.backbone).__name__
    found = infer_backbone({k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")})
    hint = f"they look like '{found}'" if found else "they match no supported backbone"
    detail = (f"{len(want - have)} missing (e.g. {sorted(want - have)[:2]}), {len(have - want)} unexpected "
              f"(e.g. {sorted(have - want)[:2]}), {len(misshapen)} with another shape (e.g. {misshapen[:2]})")
    fix = f"set model.backbone.type={found}" if found else "use weights made for this backbone"
    raise UserError(f"The backbone weights in '{path}' do not fit model.backbone.type={name}: {hint} "
                    f"({detail}). Either {fix} or point the path at {name} weights.")


def _reinit_classifier(model: nn.Module, sd: dict, target: dict, report: LoadReport) -> None:
    """Drop a classifier trained for another class count and keep the model's fresh one (with a warning)."""
    w = sd.get("decode_head.linear_pred.weight")
    if w is None or w.shape == target["decode_head.linear_pred.weight"].shape:
        return
    for k in ("decode_head.linear_pred.weight", "decode_head.linear_pred.bias"):
        sd.pop(k, None)
        report.reinitialized.append(k)
    warnings.warn(f"'{report.path}' has a classifier for {w.shape[0]} classes but the model has "
                  f"{model.num_classes}; the classifier (decode_head.linear_pred) is re-initialised.",
                  stacklevel=3)
