"""Tiny AutoML fixtures: a copy of the packaged specs/ and a demo dataset with MiT-b0-at-64px overrides."""

from __future__ import annotations

import shutil

import pytest

from segformer_tao.config.compose import package_dir
from tests.conftest import free_port


@pytest.fixture
def specs_copy(tmp_path):
    """A writable copy of the packaged specs/ folder."""
    dst = tmp_path / "specs"
    shutil.copytree(package_dir("specs"), dst)
    return dst


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from segformer_tao.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), train=4, val=2, test=1)


def tiny_overrides(root, results_dir, *extra: str) -> list[str]:
    """Overrides for a seconds-long trial: mit_b0, 64 px, 4 train / 2 val images, batch 2, no workers."""
    return [f"dataset.segment.root_dir={root}", "dataset.segment.img_size=64", "dataset.segment.batch_size=2",
            "dataset.segment.workers=0", "model.backbone.type=mit_b0", f"results_dir={results_dir}", *extra]


PG_USER, PG_PASSWORD = "automl", "s3cret-pw"


def _pg_bin(name: str) -> str | None:
    import glob

    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    return found if isinstance(found, str) else (found[0] if found else None)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 (password auth) in a temporary data dir, stopped at the end.

    Yields ``(host, port)``. Skips with the reason when the server or the psycopg driver is not installed
    (.ci/run installs Debian's ``postgresql`` package; `pip install -e ".[dev]"` installs psycopg).
    """
    import os
    import subprocess
    import tempfile

    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: `apt-get install postgresql` "
                    "(.ci/run does)")
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed: pip install 'segformer_tao[automl-pg]'")
    # initdb refuses to run as root: run the server as the postgres user the Debian package creates
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = tempfile.mkdtemp(prefix="segformer-pg-")
    data, pwfile, logfile = f"{base}/data", f"{base}/pw", f"{base}/server.log"
    with open(pwfile, "w") as f:
        f.write(PG_PASSWORD)
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(initdb, "-D", data, "-U", PG_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8")
    run(pg_ctl, "-D", data, "-l", logfile, "-w", "-t", "60", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c max_connections=100 -c fsync=off")
    try:
        yield "127.0.0.1", port
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server, request):
    """A fresh database on the test server: ``postgresql://automl:<password>@127.0.0.1:<port>/<db>``."""
    import re

    import psycopg

    host, port = postgres_server
    db = re.sub(r"\W", "_", request.node.name).lower()[:50]
    with psycopg.connect(host=host, port=port, user=PG_USER, password=PG_PASSWORD, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
        conn.execute(f'CREATE DATABASE "{db}"')
    return f"postgresql://{PG_USER}:{PG_PASSWORD}@{host}:{port}/{db}"
