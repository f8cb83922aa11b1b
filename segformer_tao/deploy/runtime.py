"""Which runtime runs an action's model, and the model facts it runs with.

:func:`open_runtime` picks the runtime from the action's model key (``trt_engine`` -> TensorRT, ``onnx_file`` ->
ONNX Runtime or OpenVINO, ``checkpoint`` -> PyTorch). :func:`open_for_action` also applies the one rule of
:func:`segformer_tao.model.meta.decide` (the model's img_size, mean/std, palette, classes and backbone win over
schema defaults), writes the decision into the config and records it in the job.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from segformer_tao.deploy.base import Runtime
from segformer_tao.errors import UserError
from segformer_tao.model import meta as model_meta

MODEL_KEYS = ("trt_engine", "onnx_file", "checkpoint")  # first one set wins, in this order


def model_key(cfg: DictConfig, action: str) -> str:
    """``<action>.<key>='<path>'`` of the model an action runs, for messages."""
    section = cfg[action]
    key = next((k for k in MODEL_KEYS if section.get(k)), "checkpoint")
    return f"{action}.{key}='{section.get(key)}'"


def open_runtime(cfg: DictConfig, action: str) -> Runtime:
    """The runtime for ``cfg[action]``: ``trt_engine`` -> TensorRT, ``onnx_file`` -> ONNX Runtime or OpenVINO
    (``onnx_engine``, see deploy/cpu_select.py), ``checkpoint`` -> PyTorch (first one set wins, in that order)."""
    section = cfg[action]
    if section.get("trt_engine"):
        from segformer_tao.deploy.tensorrt import TrtRuntime

        return TrtRuntime(str(section.trt_engine), trusted=bool(section.get("trust_engine")),
                          trust_key=f"{action}.trust_engine", parent_job=cfg.get("parent_job"))
    if section.get("onnx_file"):
        from segformer_tao.deploy.cpu_select import open_onnx_runtime

        return open_onnx_runtime(str(section.onnx_file), cfg, action)
    if section.get("checkpoint"):
        from segformer_tao.deploy.hf_runtime import HfRuntime, is_hf_folder
        from segformer_tao.deploy.torch_runtime import TorchRuntime

        if is_hf_folder(str(section.checkpoint)):  # a transformers SegFormer folder (export.format=huggingface)
            return HfRuntime(str(section.checkpoint))
        return TorchRuntime(str(section.checkpoint), cfg.get("encryption_key"),
                            strict=bool(cfg.get("encryption_strict")))
    raise UserError(f"`{action}` needs a model: set {action}.checkpoint (a .pth from train), {action}.onnx_file "
                    f"or {action}.trt_engine, or parent_job=<results dir of a train/export job>.")


def settle(cfg: DictConfig, meta: model_meta.ModelMeta, model: str,
           size_problem: Callable[[int], str | None] | None = None) -> model_meta.Decision:
    """Decide the facts a model file runs with (:func:`segformer_tao.model.meta.decide`), write them into ``cfg``
    and record them in this job's job.json and experiment.yaml. ``model`` names the file's key for messages."""
    from segformer_tao import jobs

    decision = model_meta.decide(cfg, meta, model, size_problem)
    model_meta.apply(cfg, decision)
    jobs.record_model(cfg, decision.record())
    return decision


def open_for_action(cfg: DictConfig, action: str) -> Runtime:
    """:func:`open_runtime`, then :func:`settle`: the runtime, with the config and ``runtime.meta`` holding what it
    runs with."""
    runtime = open_runtime(cfg, action)
    runtime.meta = settle(cfg, runtime.meta, model_key(cfg, action), runtime.size_problem).meta
    return runtime
