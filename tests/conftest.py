"""Shared fixtures: real databases (a SQLite file, a PostgreSQL server started here)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator

import pytest

# tests/cluster starts SLURM's daemons as root: collected only by `make test-cluster`
# (which sets this), not skipped by the dozen in every `make test`.
collect_ignore = [] if os.environ.get("LAUF_DVC_TEST_CLUSTER") == "1" else ["cluster"]
# tests/browser needs Debian's chromium and graphviz: only `make test-browser` sets this.
if os.environ.get("LAUF_DVC_TEST_BROWSER") != "1":
    collect_ignore.append("browser")


@pytest.fixture(scope="session", autouse=True)
def _dvc_logs_to_pytest() -> None:
    """Importing ``dvc`` gives its loggers console handlers bound to the ``sys.stdout`` of
    that moment: if that is the first test's ``capsys`` stream, every later DVC log line
    in this process fails on a closed file. Import it once here and drop those handlers
    (as ``lauf-dvc`` itself does); DVC's records still reach pytest's log capture."""
    import dvc.logger  # noqa: F401

    for name in ("dvc", "dvc_objects", "dvc_data"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """A real PostgreSQL server for this test process (pgserver ships the binaries)."""
    import pgserver

    # Short path: the server's unix socket lives there (limit ~100 characters).
    root = tempfile.mkdtemp(prefix="lauf-pg-")
    server = pgserver.get_server(root, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def _pg_url(server: object, database: str) -> str:
    base = server.get_uri()  # type: ignore[attr-defined]
    # postgresql://postgres:@/postgres?host=/tmp/...
    prefix, _, query = base.partition("?")
    prefix = prefix.rsplit("/", 1)[0]
    return f"{prefix.replace('postgresql://', 'postgresql+psycopg://')}/{database}?{query}"


@pytest.fixture
def pg_url(pg_server: object) -> str:
    """A fresh, empty PostgreSQL database."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name};")  # type: ignore[attr-defined]
    return _pg_url(pg_server, name)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'lauf.sqlite'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """Each storage contract test runs once per backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")
