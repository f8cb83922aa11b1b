"""encryption_key is the exact text typed (spec file or command line, quoted or not), a literal key on the command line
is warned about and kept off the command lines of the processes a run starts (DDP ranks, AutoML trials)."""

from __future__ import annotations

import os
import sys

import pytest

from segformer_tao.config import compose_config
from segformer_tao.errors import UserError
from tests.conftest import run_cli

TYPED = ["0123", "yes", "a,b", "1e3", "true", "[x]", "k=v", "Sup3r'Secret", " pad "]
WRITTEN = [("0123", "0123"), ("yes", "yes"), ("1e3", "1e3"), ("0x1F", "0x1F"), ("'0123'", "0123"), ('"a,b"', "a,b"),
           ("on", "on"), ("", None), ("~", None), ("null", None), ("'null'", "null")]


def test_command_line_key_is_the_text_typed():
    from segformer_tao.config import encryption_key as ek

    for typed in TYPED:
        assert ek.take_key_override([f"encryption_key={typed}", "train.num_epochs=2"]) == (["train.num_epochs=2"],
                                                                                           typed)
    for typed in ("a,b", "0123", "yes"):  # through the whole composition
        assert compose_config("train", [f"encryption_key={typed}"]).encryption_key == typed


def test_quoted_command_line_key_is_its_inside():
    for typed, key in [("'a,b'", "a,b"), ('"0123"', "0123"), ("'null'", "null"), ("null", None)]:
        assert compose_config("train", [f"encryption_key={typed}"]).encryption_key == key


def test_spec_file_key_is_the_scalar_as_written(tmp_path):
    from segformer_tao.config import encryption_key as ek

    for written, key in WRITTEN:
        assert ek.spec_file_value(f"encryption_key: {written}\ntrain: {{num_epochs: 3}}\n", "s.yaml") == key, written
    spec = tmp_path / "spec.yaml"
    for written, key in [("0123", "0123"), ("yes", "yes"), ("", None)]:
        spec.write_text(f"encryption_key: {written}\ntrain:\n  num_epochs: 3\n")
        cfg = compose_config("train", [], str(spec))
        assert cfg.encryption_key == key and cfg.train.num_epochs == 3


def test_the_key_written_in_a_spec_opens_what_the_same_key_on_the_command_line_wrote(tmp_path):
    from segformer_tao.engine.checkpoint import load_checkpoint, save_checkpoint

    spec = tmp_path / "spec.yaml"
    spec.write_text("encryption_key: 0123\n")
    save_checkpoint(str(tmp_path / "c.pth"), {"w": [1]}, compose_config("train", [], str(spec)).encryption_key)
    assert load_checkpoint(str(tmp_path / "c.pth"), compose_config("evaluate", ["encryption_key=0123"])
                           .encryption_key) == {"w": [1]}


def test_environment_variable_form(monkeypatch):
    from segformer_tao.config import encryption_key as ek

    monkeypatch.setenv("SEGFORMER_KEY", "0123,yes")
    assert compose_config("train", ["encryption_key=${oc.env:SEGFORMER_KEY}"]).encryption_key == "0123,yes"
    assert not ek.literal_on_command_line(["encryption_key=${oc.env:SEGFORMER_KEY}"])
    assert ek.literal_on_command_line(["encryption_key=abc"])


def test_unrecoverable_keys_are_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("encryption_key:\n  a: 1\n")
    with pytest.raises(UserError, match="not a single value"):
        compose_config("train", [], str(spec))
    with pytest.raises(UserError, match="contains '\\$\\{'"):
        compose_config("train", ["encryption_key=ab${cd}"])
    with pytest.raises(UserError, match="ambiguous"):
        compose_config("train", ["encryption_key='a'b'"])
    with pytest.raises(UserError, match="is empty"):
        compose_config("train", ["encryption_key="])


def test_literal_key_warned_and_scrubbed_from_ddp_children(monkeypatch):
    """Lightning starts each DDP rank with sys.argv: after the scrub it carries no key, the environment does."""
    from lightning_fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd

    from segformer_tao.config import encryption_key as ek

    env: dict[str, str] = {}
    argv = ["segformer", "train", "encryption_key=Sup3r-ps-Secret", "train.num_gpus=2"]
    monkeypatch.setattr(sys, "argv", argv)
    assert ek.scrub_argv(sys.argv, env)
    assert "Sup3r-ps-Secret" not in " ".join(_basic_subprocess_cmd())
    assert env == {ek.INHERITED_ENV: "Sup3r-ps-Secret"}
    monkeypatch.setenv(ek.INHERITED_ENV, env[ek.INHERITED_ENV])  # what the child inherits
    assert compose_config("train", sys.argv[2:]).encryption_key == "Sup3r-ps-Secret"


def test_cli_warns_about_a_literal_key_and_never_prints_it():
    result = run_cli("config", "train", "encryption_key=Sup3r-cli-Secret")
    assert result.returncode == 0, result.output
    assert "warning: encryption_key is on the command line" in result.stderr and "SEGFORMER_KEY" in result.stderr
    assert "Sup3r-cli-Secret" not in result.output
    quiet = run_cli("config", "train", "encryption_key=${oc.env:SEGFORMER_KEY}", env={"SEGFORMER_KEY": "Sup3r-env"})
    assert quiet.returncode == 0 and "warning" not in quiet.stderr and "Sup3r-env" not in quiet.output


def test_automl_trial_child_gets_the_key_through_its_environment(tmp_path, monkeypatch):
    """A parallel AutoML trial runs `segformer train -e trial_spec.yaml` in a child: the spec holds no key, so the
    child must get it (else its checkpoints are written in clear), and never on its command line."""
    import subprocess

    import optuna

    from segformer_tao.automl import workers

    seen = {}

    class FakeProc:
        def __init__(self, cmd, env, **kwargs):
            seen.update(cmd=cmd, env=env)

        def wait(self):
            return 2

    monkeypatch.setattr(subprocess, "Popen", FakeProc)
    cfg = compose_config("train", ["encryption_key=Sup3r-trial-Secret", "automl_policy=off"])
    trial = optuna.create_study().ask()
    with pytest.raises(UserError):
        workers.run_child(trial, cfg, str(tmp_path), workers.Slot(0, threads=1), {"url": None})
    assert "Sup3r-trial-Secret" not in " ".join(seen["cmd"])
    assert "Sup3r-trial-Secret" not in (tmp_path / workers.TRIAL_SPEC).read_text()
    monkeypatch.setattr(os, "environ", seen["env"])
    child = compose_config("train", seen["cmd"][seen["cmd"].index("-e") + 2:], str(tmp_path / workers.TRIAL_SPEC))
    assert child.encryption_key == "Sup3r-trial-Secret"
