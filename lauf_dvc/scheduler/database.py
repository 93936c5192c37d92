"""Connections to the scheduler database: transactions, error wording, schema checks.

:class:`~lauf_dvc.scheduler.store.Store` builds every query on top of this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from sqlalchemy import insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from lauf_dvc.errors import SchemaVersionError, StorageFull, StoreError
from lauf_dvc.scheduler.engine import (
    READ_ONLY_HINT,
    checked_url,
    make_engine,
    mask_url,
    secrets,
    sqlite_lock_mode,
    sqlite_path,
)
from lauf_dvc.scheduler.locks import TransactionLock, lock_dir, transaction_lock
from lauf_dvc.scheduler.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    meta,
    metadata,
    partial_indexes,
    tasks,
)
from lauf_dvc.scheduler.transitions import TRANSITIONS_KEY, Transition

#: PostgreSQL advisory lock keys ("lauf" in ASCII, then 1, 2), held to the end of a
#: transaction.
SCHEMA_LOCK_KEY = 0x6C617566_01
GRAPH_LOCK_KEY = 0x6C617566_02
_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


class Database:
    """One database URL; connects on first use and checks the schema version once.

    ``lock`` (SQLite only): ``wal`` for a local disk; ``flufl`` for a network filesystem
    (a rollback journal, and every transaction, reads included, inside an NFS-safe lock
    file beside the database); ``auto``: flufl if the file is on a network filesystem.
    """

    def __init__(self, url: str, *, engine: Engine | None = None, lock: str = "auto") -> None:
        self.url = url if engine is not None else checked_url(url)
        self.lock = lock
        self._engine = engine
        self._schema_checked = False
        self._resolved = False
        self._sqlite_lock: str | None = None
        self._txn_lock: TransactionLock | None = None
        #: Called with each :class:`Transition` this process makes, after its commit.
        self.listeners: list[Callable[[Transition], None]] = []

    @property
    def engine(self) -> Engine:
        if not self._resolved:
            self._resolve()
        assert self._engine is not None
        if not self._schema_checked:
            self._ensure_schema(self._engine)
            self._schema_checked = True
        return self._engine

    def _resolve(self) -> None:
        """Decide the locking (``auto`` looks at the mount table now), build the engine."""
        self._sqlite_lock = sqlite_lock_mode(self.url, self.lock)
        if self._sqlite_lock == "flufl" and sqlite_path(self.url) is not None:
            self._txn_lock = transaction_lock(lock_dir(self.url) / "transactions.lock")
        if self._engine is None:
            self._engine = make_engine(self.url, lock=self._sqlite_lock)
        self._resolved = True

    @property
    def sqlite_lock(self) -> str | None:
        """How this SQLite database is locked (``"wal"`` or ``"flufl"``; None: PostgreSQL)."""
        self.engine  # noqa: B018 (resolves the setting on first use)
        return self._sqlite_lock

    @contextmanager
    def write(self, *, exclusive: bool = False) -> Iterator[Connection]:
        """A write transaction (SQLite: ``BEGIN IMMEDIATE``, so two claims never race).

        ``exclusive``: also one at a time on PostgreSQL (an advisory lock), for changes to
        the whole graph that concurrent workers would otherwise both try (a first sync).
        """
        engine = self.engine
        with self._errors(), self._serialised(), self._connect(engine) as plain:
            conn = plain.execution_options(lauf_write=True)
            changes: list[Transition] = []
            conn.info[TRANSITIONS_KEY] = changes
            try:
                with conn.begin():
                    if exclusive and engine.dialect.name == "postgresql":
                        conn.execute(_ADVISORY_LOCK, {"key": GRAPH_LOCK_KEY})
                    yield conn
            finally:
                conn.info.pop(TRANSITIONS_KEY, None)
        if changes and self.listeners:  # only after the commit: never report a rollback
            for change in changes:
                for listener in self.listeners:
                    listener(change)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        engine = self.engine
        with self._errors(), self._serialised(), self._connect(engine) as conn, conn.begin():
            yield conn

    def refresh_lock(self) -> None:
        """Extend the transaction lock if this process holds it (heartbeat; flufl only)."""
        if self._txn_lock is not None:
            self._txn_lock.refresh()

    def _serialised(self) -> AbstractContextManager[None]:
        return self._txn_lock.hold() if self._txn_lock is not None else nullcontext()

    def _connect(self, engine: Engine) -> Connection:
        """A connection, or one line saying why there is none (unreachable server, wrong
        credentials, no such database, unwritable file)."""
        try:
            return engine.connect()
        except DBAPIError as exc:
            raise StoreError(
                self._message(_first_line(exc.orig), "cannot connect to database")
            ) from exc

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn driver errors into one-line :class:`StoreError`; never show a password."""
        try:
            yield
        except DBAPIError as exc:
            detail = _first_line(exc.orig)
            kind = StorageFull if "disk is full" in detail.lower() else StoreError
            raise kind(self._message(detail)) from exc
        except SQLAlchemyError as exc:
            raise StoreError(self._message(_first_line(exc))) from exc

    def _message(self, detail: str, what: str = "database") -> str:
        for password in secrets(self.url):  # a driver may echo the connection string
            detail = _scrub(detail, password)
        hint = _hint(detail, connecting=what != "database")
        return f"{what} {mask_url(self.url)}: {detail}{hint}"

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _ensure_schema(self, engine: Engine) -> None:
        """Check the schema version; create the tables in an empty database. Concurrent
        first starts are serialised (PostgreSQL: an advisory lock; SQLite: the write
        lock); the usual case, tables there, takes no lock."""
        partial_indexes(engine.dialect.name)
        with self._errors(), self._serialised(), self._connect(engine) as conn:
            with conn.begin():
                if self._schema_ok(conn):
                    return
            conn = conn.execution_options(lauf_write=True)
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.execute(_ADVISORY_LOCK, {"key": SCHEMA_LOCK_KEY})
                found = self._schema_ok(conn, upgrade=True)
                if found is True:
                    return
                if found is False:
                    metadata.create_all(conn)
                    conn.execute(
                        insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION))
                    )
                    return
                _upgrade(conn, found)

    def _schema_ok(self, conn: Connection, *, upgrade: bool = False) -> bool | int:
        """True: our tables, of our version. False: an empty database. An older version
        this one upgrades: that version (only with ``upgrade``; else False, to be asked
        again under the lock). Else raise."""
        have = set(conn.dialect.get_table_names(conn))
        if meta.name in have:
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
            found = row[0] if row else "unknown"
            if found.isdigit() and int(found) in MIGRATIONS:
                return int(found) if upgrade else False
            if found != str(SCHEMA_VERSION):
                raise SchemaVersionError(
                    f"database {mask_url(self.url)} has lauf-dvc schema version {found}, "
                    f"this lauf-dvc needs {SCHEMA_VERSION}: delete it or use another --db"
                )
            return True
        if have:
            raise SchemaVersionError(
                f"database {mask_url(self.url)} holds tables lauf-dvc did not create "
                f"({', '.join(sorted(have)[:3])}): point --db at a new database"
            )
        return False


def _upgrade(conn: Connection, version: int) -> None:
    """Bring a database of an older schema ``version`` to this one, in the caller's
    transaction (so a failed upgrade changes nothing): its history is kept."""
    while version < SCHEMA_VERSION:
        for statement in MIGRATIONS[version]:
            conn.execute(text(statement))
        version += 1
    metadata.create_all(conn)  # new tables (with their indexes)
    for index in tasks.indexes:  # and the indexes the statements dropped to rebuild
        index.create(conn, checkfirst=True)
    conn.execute(
        meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
    )


#: What to do when a SQLite file is not a database (garbage, truncated, damaged).
DAMAGED_HINT = (
    ": it is not a lauf-dvc database, or it is damaged; delete it while no worker runs "
    "(only the run history is lost: DVC's dvc.lock and cache are apart) and run again"
)
#: What to do when a server cannot be reached (READ_ONLY_HINT: when a file cannot be written).
UNREACHABLE_HINT = (
    "; check that the server is up and the URL is right (--db, LAUF_DVC_DB or vars lauf.db)"
)


def _hint(detail: str, *, connecting: bool) -> str:
    low = detail.lower()
    if "file is not a database" in low or "malformed" in low:
        return DAMAGED_HINT
    if "disk is full" in low:
        return "; free space on its disk (nothing was lost: the stage runs again)"
    if "readonly" in low or "read-only" in low or "unable to open database file" in low:
        return READ_ONLY_HINT
    return UNREACHABLE_HINT if connecting else ""


def _scrub(text: str, password: str) -> str:
    """``text`` without ``password`` where a connection string would show it (anywhere,
    if it is long enough not to be part of ordinary words)."""
    for shown in (f":{password}@", f"password={password}", f"password='{password}'"):
        text = text.replace(shown, shown.replace(password, "***"))
    return text.replace(password, "***") if len(password) >= 8 else text


def _first_line(exc: object) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
