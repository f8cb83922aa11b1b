"""Our MiT SegFormer <-> Hugging Face transformers' ``SegformerForSemanticSegmentation`` (``config.json`` + names).

``to_hf_state_dict`` is the inverse of ``weights._from_hf``, key by key: our NVlabs names become the Hub names that
``save_pretrained`` writes and every transformers version reads (``segformer.encoder.block.{i}.{j}.attention.self.
query``, ...; transformers >= 5 renames them to its module names on load). Our ``attn.kv`` rows [0, C) are the keys,
[C, 2C) the values. The head needs no unfolding: we store ``linear_c*``/``linear_fuse``/``bn`` as published and fold
them only in ``forward`` (see head.py). ``hf_config`` writes the ``config.json`` fields; ``model_from_hf_config``
builds our network back from one (any MiT-shaped SegformerConfig, e.g. the Hub's ``nvidia/segformer-b*``).
"""

from __future__ import annotations

import re

import torch

from segformer_tao.errors import UserError
from segformer_tao.model.backbones.mit import MIT_ARCHS
from segformer_tao.model.head import SegFormerHead
from segformer_tao.model.segformer import SegFormer, create_backbone

__all__ = ["to_hf_state_dict", "hf_config", "model_from_hf_config", "check_exportable"]

# Fixed by our MiT (mit.py): every published SegFormer encoder uses them.
MIT_FIXED = {"num_channels": 3, "num_encoder_blocks": 4, "sr_ratios": [8, 4, 2, 1], "patch_sizes": [7, 3, 3, 3],
             "strides": [4, 2, 2, 2], "mlp_ratios": [4, 4, 4, 4], "hidden_act": "gelu", "reshape_last_stage": True}

_BLOCK = {  # ours (after backbone.block{i}.{j}.) -> Hub (after segformer.encoder.block.{i-1}.{j}.)
    "norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
    "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm", "attn.proj": "attention.output.dense",
    "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.dense2",
}
_RULES = [  # (our key, full match) -> Hub key; 1-based NVlabs stage numbers become 0-based indices
    (r"backbone\.patch_embed(\d)\.proj\.(weight|bias)",
     lambda m: f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}.proj.{m[2]}"),
    (r"backbone\.patch_embed(\d)\.norm\.(weight|bias)",
     lambda m: f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}.layer_norm.{m[2]}"),
    (r"backbone\.block(\d)\.(\d+)\.(" + "|".join(re.escape(k) for k in _BLOCK) + r")\.(weight|bias)",
     lambda m: f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}.{_BLOCK[m[3]]}.{m[4]}"),
    (r"backbone\.norm(\d)\.(weight|bias)", lambda m: f"segformer.encoder.layer_norm.{int(m[1]) - 1}.{m[2]}"),
    (r"decode_head\.linear_c(\d)\.proj\.(weight|bias)", lambda m: f"decode_head.linear_c.{int(m[1]) - 1}.proj.{m[2]}"),
    (r"decode_head\.linear_fuse\.conv\.weight", lambda m: "decode_head.linear_fuse.weight"),
    (r"decode_head\.linear_fuse\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)",
     lambda m: f"decode_head.batch_norm.{m[1]}"),
    (r"decode_head\.linear_pred\.(weight|bias)", lambda m: f"decode_head.classifier.{m[1]}"),
]
_KV = re.compile(r"backbone\.block(\d)\.(\d+)\.attn\.kv\.(weight|bias)")


def to_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our full-model state dict (``backbone.*``, ``decode_head.*``; MiT) -> Hub-named tensors (contiguous copies).

    Raises ValueError naming every key no rule converts (nothing is dropped silently).
    """
    out: dict[str, torch.Tensor] = {}
    unmatched = []
    for key, value in sd.items():
        m = _KV.fullmatch(key)
        if m:
            prefix = f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}.attention.self."
            keys, values = value.chunk(2, dim=0)  # NVlabs packs [keys; values] rows
            out[f"{prefix}key.{m[3]}"], out[f"{prefix}value.{m[3]}"] = keys, values
            continue
        for pattern, rename in _RULES:
            m = re.fullmatch(pattern, key)
            if m:
                out[rename(m)] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ValueError(f"{len(unmatched)} tensors have no Hugging Face name: {', '.join(sorted(unmatched)[:8])}")
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}


def check_exportable(model: torch.nn.Module, source: str) -> str:
    """The MiT variant name of ``model``; UserError for what transformers' SegFormer cannot hold (FAN, ViT, other
    in_index, align_corners=True). ``source`` names the checkpoint in messages."""
    name = str(getattr(model, "backbone_name", "") or "")
    if name not in MIT_ARCHS:
        families = {"fan_": "FAN (Fully Attentional Network)", "vit_": "ViT-Adapter", "c_radio": "C-RADIO"}
        family = next((f for prefix, f in families.items() if name.lower().startswith(prefix)), name or "unknown")
        raise UserError(
            f"export.format=huggingface cannot export '{source}': its backbone is {name} ({family}), and Hugging Face "
            "transformers has no such architecture (its SegformerForSemanticSegmentation is the MiT encoder only). "
            "Export MiT checkpoints (model.backbone.type=mit_b0..mit_b5) to Hugging Face; for this one use "
            "export.format=onnx.")
    if list(model.in_index) != [0, 1, 2, 3] or model.decode_head.align_corners:
        raise UserError(
            f"export.format=huggingface cannot export '{source}': it was trained with model.decode_head.in_index="
            f"{list(model.in_index)} and align_corners={model.decode_head.align_corners}, and transformers' SegFormer "
            "head always takes the four stages [0, 1, 2, 3] and resizes with align_corners=False. Use "
            "export.format=onnx for this checkpoint.")
    return name


def hf_config(model: SegFormer, class_names: list[str], ignore_index: int, extra: dict | None = None) -> dict:
    """``config.json`` of transformers' SegformerConfig for ``model`` (an MiT SegFormer; see check_exportable).

    ``extra`` is stored under ``segformer_tao`` (transformers keeps unknown config keys as attributes).
    """
    backbone = model.backbone
    name = check_exportable(model, "model")
    arch = MIT_ARCHS[name]
    labels = {str(i): str(n) for i, n in enumerate(class_names)}
    config = {
        "architectures": ["SegformerForSemanticSegmentation"], "model_type": "segformer",
        **MIT_FIXED, "depths": list(backbone.depths), "hidden_sizes": list(backbone.embed_dims),
        "num_attention_heads": list(arch["num_heads"]), "decoder_hidden_size": int(model.decode_head.embed_dim),
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout_prob": 0.1,
        "drop_path_rate": 0.1, "layer_norm_eps": 1e-6, "initializer_range": 0.02,
        "num_labels": int(model.num_classes), "id2label": labels, "label2id": {n: int(i) for i, n in labels.items()},
        "semantic_loss_ignore_index": int(ignore_index),
    }
    if len(set(labels.values())) != len(labels):
        raise UserError(f"Class names {list(labels.values())} repeat a name; Hugging Face's label2id needs each "
                        "class name once. Give every class its own name in dataset.segment.palette and retrain.")
    if extra:
        config["segformer_tao"] = extra
    return config


def _variant(config: dict, path: str) -> tuple[str, tuple[int, ...]]:
    widths, heads = tuple(config.get("hidden_sizes", ())), tuple(config.get("num_attention_heads", ()))
    depths = tuple(config.get("depths", ()))
    family = [n for n, a in MIT_ARCHS.items() if a["embed_dims"] == widths and a["num_heads"] == heads]
    if not family or len(depths) != 4:
        raise UserError(f"'{path}/config.json' describes a SegFormer encoder (hidden_sizes={list(widths)}, "
                        f"num_attention_heads={list(heads)}, depths={list(depths)}) that matches no MiT variant "
                        f"(mit_b0: {list(MIT_ARCHS['mit_b0']['embed_dims'])}, mit_b1..b5: "
                        f"{list(MIT_ARCHS['mit_b1']['embed_dims'])}). Use a folder of an MiT SegFormer.")
    exact = [n for n in family if MIT_ARCHS[n]["depths"] == depths]
    return (exact or family)[0], depths


def model_from_hf_config(config: dict, path: str) -> SegFormer:
    """Our SegFormer (random weights) for a transformers ``config.json`` dict read from ``path``; UserError when the
    config is not a SegformerForSemanticSegmentation our MiT can compute."""
    if config.get("model_type") != "segformer":
        raise UserError(f"'{path}/config.json' has model_type={config.get('model_type')!r}, not 'segformer'. Point "
                        "the checkpoint key at a Hugging Face SegFormer folder (or at a .pth from `segformer train`).")
    for key, want in MIT_FIXED.items():
        have = config.get(key, want)
        if (list(have) if isinstance(have, list | tuple) else have) != want:
            raise UserError(f"'{path}/config.json' sets {key}={have!r}; segformer_tao's MiT computes {key}={want!r} "
                            "only (as every published SegFormer), so this model cannot run here.")
    name, depths = _variant(config, path)
    num_labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)
    backbone = create_backbone(name, depths=depths) if depths != MIT_ARCHS[name]["depths"] else create_backbone(name)
    head = SegFormerHead(backbone.out_channels, int(config.get("decoder_hidden_size", 256)), num_labels)
    return SegFormer(backbone, head, backbone_name=name)
