"""status.json lines (segformer_tao.status): action outcome lines and JSON-safe values. TAO Core's own parser
reads real runs' files in tests/tao_core/test_status_parser.py."""

from __future__ import annotations

import json
import time

import pytest

from segformer_tao.errors import UserError
from segformer_tao.status import FAILURE, RUNNING, action_status, duration, read_status, write_status


def _strict(text: str) -> list[dict]:
    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    return [json.loads(line, parse_constant=reject) for line in text.splitlines()]


def test_user_error_ends_with_failure_line_carrying_its_message(tmp_path):
    msg = "dataset.segment.root_dir='/nope' does not exist. Set it to the folder holding images/ and masks/."
    with pytest.raises(UserError), action_status(str(tmp_path), "evaluate"):
        raise UserError(msg)
    lines = read_status(str(tmp_path))
    assert [ln["status"] for ln in lines] == ["STARTED", "FAILURE"]
    assert lines[-1]["message"] == msg and lines[-1]["verbosity"] == "ERROR"


def test_internal_error_names_its_kind_not_its_text(tmp_path):
    with pytest.raises(RuntimeError), action_status(str(tmp_path), "export"):
        raise RuntimeError("/home/user/private/path 1234")
    message = read_status(str(tmp_path))[-1]["message"]
    assert message.startswith("RuntimeError") and "private" not in message


def test_success_message_and_other_ranks(tmp_path):
    with action_status(str(tmp_path), "train") as outcome:
        outcome["message"] = "Train stopped early."
    with action_status(str(tmp_path / "rank1"), "train", enabled=False):
        pass
    assert [(ln["status"], ln["message"]) for ln in read_status(str(tmp_path))][-1] == ("SUCCESS",
                                                                                         "Train stopped early.")
    assert read_status(str(tmp_path / "rank1")) == []


def test_values_stay_strict_json_and_empty_groups_are_left_out(tmp_path):
    write_status(str(tmp_path), RUNNING, "x", epoch=3, graphical={"train_loss": float("nan"), "lr": 1e-4},
                 kpi={"val_miou": None}, categorical={"iou": {"a": 0.5, "b": None}, "acc": {"a": None}})
    (line,) = _strict((tmp_path / "status.json").read_text())
    assert line["graphical"] == {"train_loss": "nan", "lr": 1e-4}
    assert "kpi" not in line and line["categorical"] == {"iou": {"a": 0.5}}
    assert {"date", "time", "timestamp", "status", "verbosity", "message", "epoch"} <= set(line)
    time.strptime(line["date"], "%m/%d/%Y")  # TAO's StatusLogger format
    time.strptime(line["time"], "%H:%M:%S")
    assert line["status"] != FAILURE


def test_durations_read_like_taos():
    assert duration(3725.5) == "1:02:05.500000"
    time.strptime(duration(59.9).split(".")[0], "%H:%M:%S")  # how TAO's AutoML controller reads time_per_epoch


def test_unwritable_status_never_decides_the_outcome(tmp_path, monkeypatch):
    import segformer_tao.status as status

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(status.io, "append_line", disk_full)
    with pytest.raises(UserError, match="the real problem"), action_status(str(tmp_path), "train"):
        raise UserError("the real problem")
    with action_status(str(tmp_path), "train"):  # STARTED and SUCCESS unwritable: the action still succeeds
        pass
