"""A Hugging Face SegFormer folder (``config.json`` + weights + ``preprocessor_config.json``) as a PyTorch runtime.

``evaluate.checkpoint=<folder>`` / ``inference.checkpoint=<folder>`` run it like one of our checkpoints: the
network is our MiT SegFormer built from ``config.json``, its weights come through model/weights.py's Hugging Face
loader (no missing or unexpected key allowed), and the metadata every runtime carries comes from the folder:
class names from ``id2label``, ignore index from ``semantic_loss_ignore_index``, img_size and mean/std from the
image processor, the palette from the ``segformer_tao`` entry that ``export.format=huggingface`` writes (else the
default colours). Reads folders exported by us and MiT SegFormers from the Hub alike; transformers is not needed.
"""

from __future__ import annotations

import json
import logging

import torch

from segformer_tao import io
from segformer_tao.deploy.base import Runtime
from segformer_tao.errors import UserError
from segformer_tao.model.meta import ModelMeta, default_colors

log = logging.getLogger("segformer_tao")
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"


def is_hf_folder(path: str) -> bool:
    """True when ``path`` (local or s3://) is a folder holding a transformers ``config.json``."""
    fs, p = io.filesystem(path)
    return fs.isdir(p) and fs.exists(f"{p.rstrip('/')}/{CONFIG}")


def _read_json(path: str, name: str) -> dict:
    file = f"{path.rstrip('/')}/{name}"
    if not io.exists(file):
        raise UserError(f"'{path}' has no {name}; a Hugging Face SegFormer folder needs config.json and "
                        "preprocessor_config.json (what `segformer export export.format=huggingface` and the Hub's "
                        "SegFormer models have). Add the file, or point the checkpoint key at a .pth.")
    try:
        data = json.loads(io.read_text(file))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"'{file}' is not valid JSON ({e}). Re-export or re-download the folder.") from e
    if not isinstance(data, dict):
        raise UserError(f"'{file}' holds {type(data).__name__}, not a JSON object. Re-export or re-download it.")
    return data


def preprocessing_meta(pre: dict, path: str) -> dict:
    """img_size and mean/std (0-1 units, applied to x/255 as data/transforms.normalize does) of an image processor.

    The processor computes (x * f - mean) / std with f = rescale_factor (1 when do_rescale is false); that is
    (x / 255 - mean / (255 f)) / (std / (255 f)), exactly.
    """
    size = pre.get("size") or {}
    height, width = size.get("height"), size.get("width")
    if not pre.get("do_resize", True) or not height or height != width:
        raise UserError(f"'{path}/{PREPROCESSOR}' resizes to {size} (do_resize={pre.get('do_resize', True)}); "
                        "segformer_tao runs models at one square img_size. Set \"size\": {\"height\": S, \"width\": "
                        "S} with the size the model was trained at.")
    scale = 255.0 * (float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0)
    normalize = pre.get("do_normalize", True)
    mean = [float(v) for v in pre.get("image_mean", [0.485, 0.456, 0.406])] if normalize else [0.0] * 3
    std = [float(v) for v in pre.get("image_std", [0.229, 0.224, 0.225])] if normalize else [1.0] * 3
    if pre.get("do_reduce_labels"):
        log.warning("warning: '%s/%s' sets do_reduce_labels=true (label 0 ignored, the others shifted down by one); "
                    "segformer_tao reads masks as class ids as they are.", path, PREPROCESSOR)
    return {"img_size": int(height), "mean": [m / scale for m in mean], "std": [s / scale for s in std]}


def read_hf_folder(path: str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ModelMeta]:
    """(our SegFormer with the folder's weights, in eval mode on ``device``; runtime meta) for a Hugging Face
    SegFormer folder. UserError when a config field, a tensor or the image processor does not fit."""
    from segformer_tao.model.hf_format import model_from_hf_config
    from segformer_tao.model.weights import load_pretrained

    path = str(path).rstrip("/")
    config = _read_json(path, CONFIG)
    pre = preprocessing_meta(_read_json(path, PREPROCESSOR), path)
    model = model_from_hf_config(config, path)
    report = load_pretrained(model, path, part="full")
    if report.layout != "hf" or report.missing or report.unexpected or report.reinitialized:
        raise UserError(f"The weights in '{path}' do not fit its config.json ({report.layout} layout; missing "
                        f"{report.missing[:3]}, unexpected {report.unexpected[:3]}, re-initialised "
                        f"{report.reinitialized[:2]}). Re-export or re-download the folder.")
    n = model.num_classes
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    ours = config.get("segformer_tao") if isinstance(config.get("segformer_tao"), dict) else {}
    palette = ours.get("palette")
    meta = ModelMeta(num_classes=n, class_names=[id2label.get(i, f"class_{i}") for i in range(n)],
                     palette=palette if isinstance(palette, list) and len(palette) >= n else default_colors(n),
                     backbone=model.backbone_name, embed_dim=model.decode_head.embed_dim,
                     ignore_index=int(config.get("semantic_loss_ignore_index", 255)), **pre,
                     extra={"format": "huggingface"})
    return model.to(device).eval(), meta


class HfRuntime(Runtime):
    """A Hugging Face SegFormer folder run with PyTorch through our model (CUDA when available)."""

    name = "torch"

    def __init__(self, folder: str, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.meta = read_hf_folder(folder, self.device)
        self.path = folder

    @property
    def label(self) -> str:
        return "torch (Hugging Face folder)"

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device, torch.float32)).float().cpu()
