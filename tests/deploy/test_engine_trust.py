"""TensorRT engines are executable code: one loads only when its sha256 is the one its gen_trt_engine job
recorded (<engine>.json, job.json), or when the user says it is trusted. The check runs before TensorRT is
imported, so all of it is tested here on CPU with fake engine bytes."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from segformer_tao.deploy import runtime, tensorrt
from segformer_tao.errors import UserError
from tests.deploy.conftest import deploy_cfg

ENGINE = b"\x7fplan\x00" * 50  # stands in for a serialized engine: only its bytes matter to the check


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _built(tmp_path, name="model.engine"):
    """An engine written the way gen_trt_engine writes it (engine + <engine>.json)."""
    path = str(tmp_path / name)
    tensorrt.write_engine(path, ENGINE, {"tensorrt_version": "10.x", "io": []})
    return path


def _check(path, **kwargs):
    with open(path, "rb") as f:
        return tensorrt.check_engine_trusted(path, f.read(), **kwargs)


def test_write_engine_records_the_sha256_of_the_written_file(tmp_path):
    path = _built(tmp_path)
    with open(f"{path}.json") as f:
        assert json.load(f)["sha256"] == _sha(ENGINE)
    assert _check(path) == _sha(ENGINE)


def test_an_engine_without_a_build_record_is_refused_unless_trusted(tmp_path, caplog):
    path = str(tmp_path / "downloaded.engine")
    with open(path, "wb") as f:
        f.write(ENGINE)
    with pytest.raises(UserError) as err:
        _check(path, trust_key="inference.trust_engine")
    message = str(err.value)
    for needle in (path, "no build record", _sha(ENGINE), "segformer gen_trt_engine", "inference.trust_engine=true"):
        assert needle in message, message
    with caplog.at_level(logging.WARNING, logger="segformer_tao"):
        assert _check(path, trusted=True, trust_key="inference.trust_engine") == _sha(ENGINE)
    assert "inference.trust_engine=true" in caplog.text and path in caplog.text


def test_an_engine_changed_after_its_build_is_refused(tmp_path):
    path = _built(tmp_path)
    with open(path, "ab") as f:
        f.write(b"appended")
    with pytest.raises(UserError) as err:
        _check(path)
    message = str(err.value)
    for needle in (path, f"{path}.json", _sha(ENGINE), _sha(ENGINE + b"appended"), "evaluate.trust_engine=true"):
        assert needle in message, message


def _job(folder, engine_path, sha):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(json.dumps({"action": "gen_trt_engine", "artifacts": {
        "trt_engine": {"path": str(engine_path), "bytes": len(ENGINE), "sha256": sha}}}))


def test_job_json_records_count_beside_the_engine_and_in_parent_job(tmp_path):
    """An engine written elsewhere (gen_trt_engine.trt_engine=...) is found in its job's job.json (parent_job);
    every record found must match: one job.json that recorded other bytes is enough to refuse."""
    engine_dir = tmp_path / "engines"
    engine_dir.mkdir()
    path = str(engine_dir / "model.engine")
    with open(path, "wb") as f:
        f.write(ENGINE)  # no <engine>.json at all (deleted, or an engine from before the sidecar held the hash)
    job_dir = tmp_path / "gen_job"
    _job(job_dir, path, _sha(ENGINE))
    with pytest.raises(UserError, match="no build record"):
        _check(path)  # the job that built it is not known without parent_job
    assert _check(path, job_dirs=[str(job_dir)]) == _sha(ENGINE)
    _job(engine_dir, path, _sha(b"another build"))
    with pytest.raises(UserError, match=f"'{engine_dir / 'job.json'}' records {_sha(b'another build')}"):
        _check(path, job_dirs=[str(job_dir)])


def test_runtime_checks_before_tensorrt_is_imported(tmp_path, monkeypatch):
    """open_runtime -> TrtRuntime refuses an unrecorded engine without touching TensorRT; with
    evaluate.trust_engine=true it goes on to TensorRT (here: a stand-in require_tensorrt that records the call)."""
    reached = []

    class Reached(Exception):
        pass

    def fake_require():
        reached.append(True)
        raise Reached

    monkeypatch.setattr(tensorrt, "require_tensorrt", fake_require)
    path = str(tmp_path / "foreign.engine")
    with open(path, "wb") as f:
        f.write(ENGINE)
    cfg = deploy_cfg("evaluate", tmp_path, f"evaluate.trt_engine={path}")
    with pytest.raises(UserError, match="evaluate.trust_engine=true"):
        runtime.open_runtime(cfg, "evaluate")
    assert reached == []
    cfg = deploy_cfg("inference", tmp_path, f"inference.trt_engine={path}", "inference.trust_engine=true")
    with pytest.raises(Reached):
        runtime.open_runtime(cfg, "inference")
    built = _built(tmp_path, "ours.engine")
    with pytest.raises(Reached):
        runtime.open_runtime(deploy_cfg("evaluate", tmp_path, f"evaluate.trt_engine={built}"), "evaluate")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    unrecorded = str(elsewhere / "model.engine")
    with open(unrecorded, "wb") as f:
        f.write(ENGINE)
    _job(tmp_path / "gen_job", unrecorded, _sha(ENGINE))  # its job.json, found through parent_job
    with pytest.raises(Reached):
        runtime.open_runtime(deploy_cfg("evaluate", tmp_path, f"evaluate.trt_engine={unrecorded}",
                                        f"parent_job={tmp_path}/gen_job"), "evaluate")
    assert len(reached) == 3
