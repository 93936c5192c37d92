"""Connections to the scheduler database: transactions, error wording, schema checks.

:class:`~lauf_dvc.scheduler.store.Store` builds every query on top of this.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from lauf_dvc.errors import SchemaVersionError, StoreError
from lauf_dvc.scheduler.engine import make_engine, mask_url
from lauf_dvc.scheduler.schema import SCHEMA_VERSION, meta, metadata


class Database:
    """One database URL; connects on first use and checks the schema version once."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self._engine = engine
        self._schema_checked = False

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.url)
        if not self._schema_checked:
            self._ensure_schema(self._engine)
            self._schema_checked = True
        return self._engine

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``, so two claims never race)."""
        with self._errors(), self.engine.connect() as plain:
            conn = plain.execution_options(lauf_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn driver errors into one-line :class:`StoreError`; never show a password."""
        try:
            yield
        except DBAPIError as exc:
            raise StoreError(f"database {mask_url(self.url)}: {_first_line(exc.orig)}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database {mask_url(self.url)}: {_first_line(exc)}") from exc

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _ensure_schema(self, engine: Engine) -> None:
        with self._errors(), engine.connect() as plain:
            conn = plain.execution_options(lauf_write=True)
            with conn.begin():
                if engine.dialect.name == "postgresql":  # serialise concurrent first starts
                    conn.execute(text("SELECT pg_advisory_xact_lock(74617566)"))
                have = set(engine.dialect.get_table_names(conn))
                if meta.name in have:
                    row = conn.execute(
                        select(meta.c.value).where(meta.c.key == "schema_version")
                    ).first()
                    found = row[0] if row else "unknown"
                    if found != str(SCHEMA_VERSION):
                        raise SchemaVersionError(
                            f"database {mask_url(self.url)} has lauf-dvc schema version {found}, "
                            f"this lauf-dvc needs {SCHEMA_VERSION}: delete it or use another --db"
                        )
                    return
                if have:
                    raise SchemaVersionError(
                        f"database {mask_url(self.url)} holds tables lauf-dvc did not create "
                        f"({', '.join(sorted(have)[:3])}): point --db at a new database"
                    )
                metadata.create_all(conn)
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))


def _first_line(exc: object) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
