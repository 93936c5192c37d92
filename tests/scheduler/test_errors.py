"""A database that cannot be used: one line, exit code 5, no password, nothing written."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from lauf_dvc import ExitCode, Graphband, SchemaVersionError, Store, StoreError, Task
from lauf_dvc.scheduler import engine as engine_module
from lauf_dvc.scheduler.schema import SCHEMA_VERSION, events, tasks, workers

SECRET = "s3cret-Pa55"


def tasks_ab() -> list[Task]:
    return [Task("a"), Task("b", dependencies=["a"])]


def check_one_line(err: StoreError) -> str:
    message = str(err)
    assert "\n" not in message and SECRET not in message
    assert err.exit_code == ExitCode.STORE == 5
    return message


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never answers: what a hung or firewalled host does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_unreachable_server():
    url = f"postgresql+psycopg://lauf:{SECRET}@127.0.0.1:{closed_port()}/lauf"
    with pytest.raises(StoreError) as err:
        list(Graphband(tasks_ab(), db=url))
    message = check_one_line(err.value)
    assert message.startswith("cannot connect to database postgresql+psycopg://lauf:***@127.0.0.1")
    assert "Connection refused" in message


@pytest.mark.timeout(60)
def test_a_silent_server_times_out(silent_server, monkeypatch):
    url = f"postgresql+psycopg://lauf:{SECRET}@127.0.0.1:{silent_server}/lauf"
    with pytest.raises(StoreError, match="timeout expired") as err:  # the URL's own timeout
        Store(f"{url}?connect_timeout=2").counts()  # (libpq's minimum)
    check_one_line(err.value)
    monkeypatch.setattr(engine_module, "PG_CONNECT_TIMEOUT", 2)  # the default, shortened
    with pytest.raises(StoreError, match="timeout expired") as err:
        list(Graphband(tasks_ab(), db=url))
    check_one_line(err.value)


@pytest.fixture
def password_role(pg_server) -> str:
    """A role that must give its password (the test server trusts everyone else)."""
    hba = Path(pg_server.pgdata) / "pg_hba.conf"
    line = "local all lauf_pw scram-sha-256\n"
    if line not in hba.read_text():
        pg_server.psql(
            "DO $$ BEGIN CREATE ROLE lauf_pw LOGIN PASSWORD 'right-pass';"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        )
        hba.write_text(line + hba.read_text())
        pg_server.psql("SELECT pg_reload_conf();")
    return "lauf_pw"


def test_wrong_credentials(pg_url, password_role):
    base, _, query = pg_url.partition("?")
    database = base.rsplit("/", 1)[1]
    right = f"postgresql+psycopg://{password_role}:right-pass@/{database}?{query}"
    wrong = f"postgresql+psycopg://{password_role}:{SECRET}@/{database}?{query}"
    with pytest.raises(StoreError) as err:
        list(Graphband(tasks_ab(), db=wrong))
    message = check_one_line(err.value)
    assert f"{password_role}:***@" in message
    assert "password authentication failed" in message
    with create_engine(pg_url).connect() as conn:  # nothing was created
        assert not conn.execute(
            text("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'lauf%'")
        ).scalar()
    store = Store(right)  # the role works with its password: the error was the password
    with pytest.raises(StoreError, match="permission denied"):  # (it may not create tables)
        store.counts()


def test_another_schema_version_writes_nothing(db_url):
    store = Store(db_url)
    assert [t.id for t in Graphband(tasks_ab(), db=db_url)] == ["a", "b"]
    with store.write() as conn:
        conn.execute(text("UPDATE lauf_meta SET value = '999' WHERE key = 'schema_version'"))
    store.dispose()
    raw = create_engine(db_url)

    def snapshot() -> tuple[int, ...]:
        with raw.connect() as conn:
            return tuple(
                conn.execute(select(func.count()).select_from(t)).scalar()
                for t in (tasks, events, workers)
            )

    before = snapshot()
    more = [*tasks_ab(), Task("c", dependencies=["b"])]
    with pytest.raises(SchemaVersionError) as err:
        list(Graphband(more, db=db_url))
    message = check_one_line(err.value)
    assert "schema version 999" in message and f"needs {SCHEMA_VERSION}" in message
    assert snapshot() == before
    raw.dispose()


def test_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError) as err:
        list(Graphband(tasks_ab(), db=f"sqlite:///{path}"))
    assert "file is not a database" in check_one_line(err.value)
    assert path.read_text().startswith("these are my notes")


def test_a_short_password_does_not_mangle_the_message():
    url = f"postgresql+psycopg://lauf:x@127.0.0.1:{closed_port()}/lauf"
    with pytest.raises(StoreError, match="Connection refused") as err:
        Store(url).counts()
    assert "lauf:***@" in str(err.value)
