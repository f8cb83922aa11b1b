"""No secrets in outputs, beyond tests/test_jobs.py (which greps a train/evaluate/export/quantize chain for the
encryption key): here TensorBoard is on, an AWS secret sits in the environment, the decrypted checkpoint payload is
searched too, and so are the messages of a failed run given a wrong key."""

from __future__ import annotations

import os

from tests.bad_inputs.runner import run_cli_forked
from tests.bad_inputs.test_corpus import LABELS, TINY
from tests.conftest import assert_user_error

KEY = "Enc-K3y-5581-secret"
AWS_SECRET = "aws-S3cr3t-0f-the-env-7731"
WRONG_KEY = "Wr0ng-K3y-2290"


def _grep_tree(root: str, needles: list[bytes]) -> list[str]:
    hits, seen = [], 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                data = f.read()
            seen += 1
            hits += [f"{path}: {n!r}" for n in needles if n in data]
    assert seen, f"no files under {root}"
    return hits


def test_no_secret_in_any_output(bad_paths):
    res = os.path.join(bad_paths["tmp"], "secrets")
    env = {"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_ACCESS_KEY_ID": "AKIA-test-id"}
    common = [f"dataset.segment.root_dir={bad_paths['data']}", *LABELS, f"results_dir={res}", f"encryption_key={KEY}"]
    train = run_cli_forked("train", *common, *TINY, "train.tensorboard.enabled=true", env=env)
    assert train.returncode == 0, train.output[-3000:]
    train_dir = os.path.join(res, "train")
    written = {os.path.splitext(n)[1] for _, _, fs in os.walk(train_dir) for n in fs}
    assert {".yaml", ".json", ".txt", ".csv", ".pth"} <= written, written
    assert any(n.startswith("events.out.tfevents") for _, _, fs in os.walk(train_dir) for n in fs), "no TensorBoard"
    ckpt = os.path.join(train_dir, "segformer_model_best.pth")
    evaluate = run_cli_forked("evaluate", *common, f"evaluate.checkpoint={ckpt}", env=env)
    assert evaluate.returncode == 0, evaluate.output[-3000:]
    wrong = run_cli_forked("evaluate", *common[:-1], f"encryption_key={WRONG_KEY}", f"evaluate.checkpoint={ckpt}",
                           f"evaluate.results_dir={res}/wrong_key", env=env)
    assert_user_error(wrong, "encryption_key is wrong")

    needles = [KEY.encode(), AWS_SECRET.encode(), WRONG_KEY.encode()]
    assert _grep_tree(res, needles) == []
    for result in (train, evaluate, wrong):
        for needle in (KEY, AWS_SECRET, WRONG_KEY):
            assert needle not in result.output
    # Resume state goes through our CheckpointIO with weights_only=True: Lightning has nothing to warn about.
    assert "`weights_only` was not set" not in train.output

    from segformer_tao.engine.checkpoint import load_checkpoint

    payload = load_checkpoint(ckpt, KEY)  # the key protects the file; it must not be stored inside it either
    assert KEY not in repr(payload) and AWS_SECRET not in repr(payload)
    assert "encryption_key" not in repr(payload.get("config", {}))
