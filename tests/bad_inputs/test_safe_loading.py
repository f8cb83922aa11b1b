"""Safe loading: every torch.load uses weights_only=True, and a checkpoint carrying a pickle payload is refused
by every action that reads checkpoints, with a readable error, before the payload can run."""

from __future__ import annotations

import ast
import os
import pathlib

import pytest
import torch

from tests.bad_inputs.runner import run_cli_forked
from tests.bad_inputs.test_corpus import LABELS, TINY
from tests.conftest import REPO, assert_user_error

PACKAGE = pathlib.Path(REPO) / "segformer_tao"


def _calls(tree: ast.AST, owner: str, attr: str):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
                and isinstance(node.func.value, ast.Name) and node.func.value.id == owner):
            yield node


def test_every_torch_load_is_weights_only():
    """torch.load(..., weights_only=True) literally at every call; no pickle.load(s) or np.load(allow_pickle)."""
    seen, bad = 0, []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch", "load"):
            seen += 1
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                bad.append(f"{path}:{call.lineno} torch.load without weights_only=True")
        for attr in ("load", "loads", "Unpickler"):
            bad += [f"{path}:{c.lineno} pickle.{attr}" for c in _calls(tree, "pickle", attr)]
        for call in _calls(tree, "np", "load"):
            if any(k.arg == "allow_pickle" for k in call.keywords):
                bad.append(f"{path}:{call.lineno} np.load(allow_pickle=...)")
    assert seen >= 2, "expected the checkpoint and weights loaders to call torch.load"
    assert not bad, bad


class _Payload:
    """Pickles as a call to os.system: loading it without weights_only would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def evil(bad_paths) -> dict[str, str]:
    tmp = os.path.join(bad_paths["tmp"], "evil")
    os.makedirs(tmp, exist_ok=True)
    marker = os.path.join(tmp, "PAYLOAD_RAN")
    path = os.path.join(tmp, "evil.pth")
    state = {"model.backbone.patch_embed1.proj.weight": torch.zeros(1)}
    torch.save({"state_dict": state, "meta": _Payload(marker), "config": {"x": _Payload(marker)}}, path)
    return {"path": path, "marker": marker}


@pytest.fixture(scope="module")
def evil_torchao(bad_paths) -> dict[str, str]:
    """A real torchao INT8 state dict (its types come first in the pickle, so the checkpoint loader retries with
    its torchao allowlist) followed by the os.system payload."""
    pytest.importorskip("torchao", reason="torchao is not installed (pip install 'segformer_tao[torchao]')")
    from segformer_tao.model import torchao_int8

    tmp = os.path.join(bad_paths["tmp"], "evil_torchao")
    os.makedirs(tmp, exist_ok=True)
    linear = torch.nn.Sequential(torch.nn.Linear(8, 8))
    quantization = torchao_int8.require_torchao("test")
    quantization.quantize_(linear, quantization.Int8WeightOnlyConfig())
    state = {f"model.backbone.{k}": v for k, v in linear.state_dict().items()}
    marker = os.path.join(tmp, "PAYLOAD_RAN")
    path = os.path.join(tmp, "evil_torchao.pth")
    torch.save({"state_dict": state, "meta": _Payload(marker), "config": {"x": _Payload(marker)}}, path)
    return {"path": path, "marker": marker}


READERS = {
    "evaluate": ["evaluate", "dataset.segment.root_dir={data}", *LABELS, "evaluate.checkpoint={evil}"],
    "inference": ["inference", "dataset.segment.root_dir={data}", *LABELS, "inference.checkpoint={evil}"],
    "export": ["export", "dataset.segment.root_dir={data}", "export.checkpoint={evil}"],
    "pretrained_model": ["train", "dataset.segment.root_dir={data}", *LABELS, *TINY,
                         "train.pretrained_model_path={evil}"],
    "pretrained_backbone": ["train", "dataset.segment.root_dir={data}", *LABELS, *TINY,
                            "model.backbone.pretrained_backbone_path={evil}"],
    "resume": ["train", "dataset.segment.root_dir={data}", *LABELS, *TINY,
               "train.resume_training_checkpoint_path={evil}"],
}


@pytest.mark.parametrize("reader", list(READERS))
def test_malicious_checkpoint_is_refused(reader, bad_paths, evil):
    args = [a.replace("{data}", bad_paths["data"]).replace("{evil}", evil["path"]) for a in READERS[reader]]
    args.append(f"results_dir={bad_paths['tmp']}/evil_{reader}")
    result = run_cli_forked(*args)
    assert_user_error(result, "Refused to load", "evil.pth", "posix.system", "weights_only=True")
    assert not os.path.exists(evil["marker"]), "the pickle payload ran"


# Readers of our checkpoints allow torchao's INT8 types; the pretrained-weights readers allow none of them.
CHECKPOINT_READERS = ("evaluate", "inference", "export", "resume")


@pytest.mark.parametrize("reader", list(READERS))
def test_malicious_checkpoint_with_torchao_types_is_refused(reader, bad_paths, evil_torchao):
    args = [a.replace("{data}", bad_paths["data"]).replace("{evil}", evil_torchao["path"]) for a in READERS[reader]]
    args.append(f"results_dir={bad_paths['tmp']}/evil_torchao_{reader}")
    result = run_cli_forked(*args)
    refused = "posix.system" if reader in CHECKPOINT_READERS else "torchao.quantization.Int8Tensor"
    assert_user_error(result, "Refused to load", "evil_torchao.pth", refused)
    assert not os.path.exists(evil_torchao["marker"]), "the pickle payload ran"
