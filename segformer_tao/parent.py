"""Parent jobs: which artifact of an earlier job's results dir an action takes (TAO's ``parent_model`` mapping).

``parent_job=<results dir>`` fills the model key an action needs: evaluate/inference ``checkpoint``,
``onnx_file`` or ``trt_engine``, export ``checkpoint``, quantize ``model_path``, gen_trt_engine ``onnx_file``.
"""

from __future__ import annotations

import glob
import logging
import os

from omegaconf import DictConfig, OmegaConf

from segformer_tao import io as sio
from segformer_tao.errors import UserError
from segformer_tao.jobs import MONITORED_METRIC, find_checkpoints, read_job

log = logging.getLogger("segformer_tao")
# What each action takes from a parent job (TAO's parent_model mapping), as (key, artifact kind).
PARENT_KEYS = {
    "evaluate": {"checkpoint": "evaluate.checkpoint", "onnx": "evaluate.onnx_file", "engine": "evaluate.trt_engine"},
    "inference": {"checkpoint": "inference.checkpoint", "onnx": "inference.onnx_file",
                  "engine": "inference.trt_engine"},
    "export": {"checkpoint": "export.checkpoint"},
    "quantize": {"checkpoint": "quantize.model_path", "onnx": "quantize.model_path"},
    "gen_trt_engine": {"onnx": "gen_trt_engine.onnx_file"},
    "train": {},
}
# Which artifact a parent of a given action offers first.
PARENT_PREFERENCE = {"train": "checkpoint", "automl": "checkpoint", "export": "onnx", "quantize": "onnx",
                     "gen_trt_engine": "engine"}



def resolve_parent(action: str, parent_dir: str) -> tuple[str, str, str]:
    """Pick the artifact an action needs from a parent job's results dir.

    Returns (config key, path, reason). Raises UserError when the parent holds nothing usable.
    """
    if not os.path.isdir(parent_dir):
        raise UserError(f"parent_job '{parent_dir}' is not a directory. Give the results dir of a finished "
                        "train, export, quantize or gen_trt_engine job.")
    wanted = PARENT_KEYS[action]
    job = read_job(parent_dir) or {}
    best_model = os.path.join(parent_dir, "best_model")
    if os.path.isdir(best_model):  # an AutoML run: its best trial is the parent
        parent_dir, job = best_model, {"action": "automl"}
    parent_action = job.get("action")
    candidates: list[tuple[str, str, str]] = []
    recorded_files = [a["path"] for a in job.get("artifacts", {}).values() if isinstance(a, dict) and a.get("path")]
    # A quantize job's folder also holds its FP32 ONNX: only the files it recorded as artifacts are its output.
    int8_pth = [p for p in recorded_files if p.endswith(".pth")]
    ckpts = ({"quantized": int8_pth[-1]} if int8_pth else {}) if parent_action == "quantize" else \
        find_checkpoints(parent_dir)
    if "quantized" in ckpts and "checkpoint" in wanted:
        candidates.append(("checkpoint", ckpts["quantized"], "INT8 checkpoint of the quantize job (torchao)"))
    if "checkpoint" in wanted:
        if "best" in ckpts:
            candidates.append(("checkpoint", ckpts["best"], f"best-by-{MONITORED_METRIC} checkpoint"))
        if "latest" in ckpts:
            candidates.append(("checkpoint", ckpts["latest"], "latest checkpoint (no best-by-val_miou one)"))
    hf_config = (job.get("artifacts") or {}).get("huggingface_config")  # an export.format=huggingface job
    if action in ("evaluate", "inference") and isinstance(hf_config, dict) and hf_config.get("path"):
        candidates.append(("checkpoint", os.path.dirname(hf_config["path"]), "Hugging Face folder of the export job"))
    # evaluate/inference also run OpenVINO IRs (.xml) through their onnx_file key (quantize.backend=nncf writes one).
    onnx_exts = (".onnx", ".xml") if action in ("evaluate", "inference") else (".onnx",)
    for kind, exts in (("onnx", onnx_exts), ("engine", (".engine",))):
        if kind in wanted:
            files = sorted((f for ext in exts for f in glob.glob(os.path.join(parent_dir, "*" + ext))),
                           key=os.path.getmtime)
            # A quantize job also holds intermediate ONNX files; prefer the one it recorded as its artifact.
            recorded = [p for p in recorded_files if p.endswith(exts)]
            for path in (recorded or ([] if parent_action == "quantize" else files[-1:])):
                candidates.append((kind, path, f"{kind} file of the {parent_action or 'parent'} job"))
    if not candidates and parent_action == "quantize" and "quantized" in ckpts:
        raise UserError(f"parent_job '{parent_dir}' is a torchao quantize job: its output is a PyTorch INT8 "
                        f"checkpoint ({ckpts['quantized']}), and `segformer {action}` needs an ONNX. Run `segformer "
                        f"export parent_job={parent_dir}` first and use that export job, or quantize with "
                        "quantize.backend=onnxruntime, modelopt.onnx or modelopt.pytorch for a Q/DQ ONNX that "
                        "TensorRT builds in INT8.")
    if not candidates:
        looked = ", ".join(wanted) or "nothing: train takes no parent"
        raise UserError(f"parent_job '{parent_dir}' holds no artifact `segformer {action}` can use (looked for "
                        f"{looked}). Point parent_job at the results dir of a finished train/export/quantize job, "
                        "or set the model key explicitly.")
    preferred = PARENT_PREFERENCE.get(parent_action or "", "checkpoint")
    candidates.sort(key=lambda c: c[0] != preferred)
    kind, path, reason = candidates[0]
    return wanted[kind], path, reason


def apply_parent_job(action: str, cfg: DictConfig, command_line_keys: set[str] | frozenset[str] = frozenset()
                     ) -> None:
    """Fill the model key of ``action`` from cfg.parent_job unless the user set one explicitly.

    A key given on the command line (``command_line_keys``) always wins. A key that comes from the spec file and
    names a local file that does not exist (TAO's tutorial specs hard-code ``/results/.../model.pth``) yields to
    parent_job, with a note naming both.
    """
    if not cfg.parent_job or action == "train":
        return
    keys = sorted(set(PARENT_KEYS[action].values()))
    explicit = [k for k in keys if OmegaConf.select(cfg, k) not in (None, "")]
    stale = [k for k in explicit if k not in command_line_keys and _missing_local_file(OmegaConf.select(cfg, k))]
    if explicit and len(stale) < len(explicit):
        log.info("parent_job ignored for %s: %s is set explicitly", action,
                 next(k for k in explicit if k not in stale))
        return
    key, path, reason = resolve_parent(action, str(cfg.parent_job))
    for k in stale:
        log.info("note: %s='%s' from the spec file does not exist; using parent_job '%s' instead: %s = %s",
                 k, OmegaConf.select(cfg, k), cfg.parent_job, key, path)
        OmegaConf.update(cfg, k, None)
    OmegaConf.update(cfg, key, path)
    log.info("parent_job: %s = %s (%s)", key, path, reason)


def _missing_local_file(path: object) -> bool:
    return isinstance(path, str) and not sio.is_remote(path) and not os.path.exists(path)
