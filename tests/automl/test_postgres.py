"""Workers sharing one study in a real PostgreSQL server on 127.0.0.1 (started by the postgres_server fixture)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from segformer_tao.automl import search, storage
from tests.automl.conftest import PG_PASSWORD, tiny_overrides
from tests.conftest import REPO, CliResult, assert_user_error

pytestmark = pytest.mark.slow


def _args(demo_root, results, url: str, *extra: str) -> list[str]:
    return ["train", "-e", str(demo_root / "spec.yaml"), *tiny_overrides(demo_root, results),
            "dataset.segment.img_size=32", "automl_policy=on", f"automl.storage={url}", "automl.sampler=tpe",
            "automl.max_epochs=1", *extra]


def _worker(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "segformer_tao.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name=search.STUDY_NAME, storage=storage.rdb_url(url))


def test_two_workers_share_one_study_and_a_killed_workers_trial_is_retried(demo_root, tmp_path, pg_url):
    """Two workers, one study, automl.num_trials=4: worker A is SIGKILLed in its second trial; B notices (heartbeat
    every 2 s, dead after 6 s), re-runs that trial, and both wait for each other so exactly 4 trials complete."""
    results = tmp_path / "res"
    out = results / "b" / "train"  # each worker has its own results dir (one writer per folder), as on many hosts
    a = _worker(_args(demo_root, results / "a", pg_url, "automl.num_trials=4", "automl.heartbeat_interval=2"))
    b = _worker(_args(demo_root, results / "b", pg_url, "automl.num_trials=4", "automl.heartbeat_interval=2"))
    host = socket.gethostname()
    deadline, victim = time.time() + 400, None
    while victim is None:  # A's second trial, once it is training
        assert a.poll() is None, a.stdout.read()[-3000:]
        assert time.time() < deadline, "worker A never started a second trial"
        time.sleep(0.5)
        try:
            trials = [t for t in _study(pg_url).get_trials() if t.user_attrs.get("host") == f"{host}:{a.pid}"]
        except KeyError:  # the study is not created yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("trial_dir")]
        if running and any(t.state == TrialState.COMPLETE for t in trials):
            victim = running[0]
    a.send_signal(signal.SIGKILL)
    a.wait()
    b_out, _ = b.communicate(timeout=400)
    assert b.returncode == 0, b_out[-3000:]

    trials = _study(pg_url).get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == victim.params and retries[0].user_attrs["host"] == f"{host}:{b.pid}"
    # resumed in the killed trial's own dir, in A's results dir (reachable here, as on a shared filesystem)
    assert retries[0].user_attrs["trial_dir"] == victim.user_attrs["trial_dir"]
    assert victim.user_attrs["trial_dir"].startswith(str(results / "a"))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({t.user_attrs["trial_dir"] for t in complete}) == 4  # none ran twice
    assert {t.user_attrs["host"] for t in complete} == {f"{host}:{a.pid}", f"{host}:{b.pid}"}
    assert {t.user_attrs["devices"] for t in complete} == {"cpu x1 threads"}  # OMP_NUM_THREADS=1, in process

    report = json.loads((out / "automl_results.json").read_text())
    assert report["counts"]["complete"] == 4 and report["counts"]["fail"] == 1
    assert {r["host"] for r in report["trials"] if r["state"] == "complete"} == {f"{host}:{a.pid}", f"{host}:{b.pid}"}
    best = max(complete, key=lambda t: t.value)
    assert report["best_trial"] == best.number and report["best_val_miou"] == pytest.approx(best.value)
    assert os.listdir(out / "best_model") and json.loads((out / "best_model" / "trial.json").read_text())[
        "val_miou"] == pytest.approx(best.value)
    assert (out / "best_model" / "segformer_model_best.pth").read_bytes() == \
        open(os.path.join(best.user_attrs["trial_dir"], "segformer_model_best.pth"), "rb").read()
    # the storage password is in no file and no output
    for folder, _, files in os.walk(results):
        for name in files:
            assert PG_PASSWORD.encode() not in open(os.path.join(folder, name), "rb").read(), (folder, name)
    assert PG_PASSWORD not in b_out and "automl:***@" in b_out
    assert "automl:***@" in (out / "experiment.yaml").read_text()


def _no_results(results) -> None:
    assert not results.exists() or not any(results.rglob("*")), sorted(results.rglob("*"))


def _main(capsys, args: list[str]) -> CliResult:
    """`segformer ARGS` in this process (these refusals happen before any model is built)."""
    from segformer_tao.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


@pytest.mark.parametrize("case", ["wrong_password", "unreachable"])
def test_a_database_that_cannot_be_opened_is_a_user_error_that_writes_nothing(demo_root, tmp_path, pg_url, case,
                                                                               capsys):
    bad = pg_url.replace(PG_PASSWORD, "not-the-pw") if case == "wrong_password" else \
        f"postgresql://automl:{PG_PASSWORD}@127.0.0.1:1/nodb"  # port 1: nothing listens
    res = _main(capsys, _args(demo_root, tmp_path / "res", bad))
    assert_user_error(res, "automl.storage='postgresql://automl:***@127.0.0.1:", "cannot be opened",
                      "password authentication failed" if case == "wrong_password" else "127.0.0.1")
    assert PG_PASSWORD not in res.output and "not-the-pw" not in res.output
    _no_results(tmp_path / "res")


def test_a_missing_driver_is_a_user_error_that_names_the_extra(demo_root, tmp_path, pg_url, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # an environment without psycopg: importing it fails
    res = _main(capsys, _args(demo_root, tmp_path / "res", pg_url))
    assert_user_error(res, "automl.storage='postgresql://automl:***@", "psycopg driver",
                      'pip install "segformer_tao[automl-pg]"')
    assert PG_PASSWORD not in res.output
    _no_results(tmp_path / "res")


def test_a_study_with_another_search_space_is_refused_before_anything_is_written(demo_root, tmp_path, pg_url, capsys):
    from segformer_tao.automl.space import build_space, load_train_schema
    from segformer_tao.config import compose_config

    other = compose_config("train", tiny_overrides(demo_root, tmp_path / "x", f"automl.storage={pg_url}",
                                                   "automl.disabled_parameters=[train.optim.momentum]"))
    search.open_study(other, str(tmp_path / "x"), build_space(other, load_train_schema()))  # another worker's study
    res = _main(capsys, _args(demo_root, tmp_path / "res", pg_url))
    assert_user_error(res, "postgresql://automl:***@", "another search space",
                      "only in this experiment: train.optim.momentum")
    assert PG_PASSWORD not in res.output
    _no_results(tmp_path / "res")
