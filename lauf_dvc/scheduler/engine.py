"""Engine construction: the only place that knows SQLite from PostgreSQL settings."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import NullPool

from lauf_dvc.config import LOCK_MODES
from lauf_dvc.errors import ConfigError, StoreError
from lauf_dvc.netfs import MountTable, network_filesystem

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for the lock before giving up (ms).
SQLITE_BUSY_TIMEOUT_MS = 60_000
#: How long to wait for a PostgreSQL server to answer a connection (s); a URL's own
#: ``?connect_timeout=`` wins. Without it an unreachable host hangs for minutes.
PG_CONNECT_TIMEOUT = 10
#: Connections a worker keeps open: one. Its main thread and its heartbeat thread hold
#: it for a transaction at a time (milliseconds); when both need one at once, an overflow
#: connection is opened and closed again when given back. One per worker, not two, lets
#: the server's default ``max_connections`` (100) serve ~90 workers.
PG_POOL_SIZE = 1
PG_MAX_OVERFLOW = 3
#: A pooled connection idle longer than this (s) is tested before use.
PG_PING_AFTER_IDLE = 30.0

#: What to do when SQLite cannot write the database (file or directory read-only).
READ_ONLY_HINT = "; make the database file and its directory writable, or use another --db"

_warned: set[str] = set()


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for logs and error messages.
    Every form: ``user:PW@host``, and ``password=PW`` in the query string."""
    try:
        text = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL we can parse: still never print a password
        text = re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)
    return re.sub(r"(?i)(\bpassword=)[^&\s]*", r"\1***", text)


def secrets(url: str) -> list[str]:
    """Every password ``url`` holds (user:PW@, ?password=PW), and ``PGPASSWORD``'s: what
    no message may show."""
    found = []
    try:
        u = make_url(url)
        found += [str(u.password)] if u.password else []
        value = u.query.get("password")
        found += [value] if isinstance(value, str) else list(value or ())
    except Exception:
        pass
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    return [s for s in found if s]


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, or None (another backend, or in-memory)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def make_dir(directory: Path, what: str) -> None:
    """Create ``directory`` (and parents), or say in one line why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{what}: cannot create {directory}: {exc.strerror}") from None


def checked_url(url: str) -> str:
    """``url`` as lauf-dvc uses it, or one line saying why it cannot be.

    A plain ``postgresql://`` means the driver lauf-dvc installs (psycopg 3; SQLAlchemy's
    own default, psycopg2, is not installed); another driver is refused by name. A SQLite
    database in memory is refused: workers are processes, which cannot share one."""
    u = _parse(url)
    backend = u.get_backend_name()
    if backend == "postgresql":
        if "+" not in u.drivername:
            return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        if u.get_driver_name() != "psycopg":
            raise StoreError(
                f"database {mask_url(url)}: the driver {u.get_driver_name()!r} is not "
                "installed with lauf-dvc; use postgresql+psycopg://... (psycopg 3)"
            )
    if backend == "sqlite" and sqlite_path(url) is None:
        raise StoreError(
            f"database {url} is in memory: workers are separate processes and "
            "cannot share it; use a file, sqlite:///path/to/lauf.sqlite"
        )
    return url


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except Exception:
        raise StoreError(f"not a database URL: {mask_url(url)!r}") from None


#: Bytes 18 and 19 of a SQLite file (its "write" and "read" format versions): 1 for a
#: rollback journal, 2 for WAL. SQLite keeps the journal mode there, so it is a property
#: of the file that every process can read without opening the database or taking a lock.
_HEADER = b"SQLite format 3\x00"
_RECORDED = {1: "flufl", 2: "wal"}
JOURNALS = {"flufl": "DELETE", "wal": "WAL"}


def recorded_lock_mode(path: Path) -> str | None:
    """The lock mode a SQLite file was created with (``"wal"`` or ``"flufl"``, from its
    journal mode), or None: no file yet, an empty one, or not a SQLite file."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except FileNotFoundError:
        return None
    except OSError as exc:  # unreadable: SQLite's own error says it when it opens the file
        log.debug("cannot read the header of %s: %s", path, exc)
        return None
    if len(header) < 20 or not header.startswith(_HEADER) or header[18] != header[19]:
        return None
    return _RECORDED.get(header[18])


def sqlite_lock_mode(url: str, lock: str, *, mounts: str | MountTable | None = None) -> str | None:
    """What ``lock`` (auto | wal | flufl) means for this URL: ``"wal"`` or ``"flufl"``
    for SQLite, None for another backend.

    A database that exists keeps the mode it was created with: ``auto`` follows it, the
    other mode is refused (:class:`StoreError`), so no process ever switches a file's
    journal mode (on a network filesystem that is how a database gets corrupted). For
    a new database ``auto`` is flufl on a network filesystem (``mounts``: a /proc/mounts
    text or a mount table, else this machine's, read now), with one warning per database
    and process."""
    if lock not in LOCK_MODES:
        raise ConfigError(f"lock must be one of {', '.join(LOCK_MODES)}, got {lock!r}")
    if _parse(url).get_backend_name() != "sqlite":
        return None
    path = sqlite_path(url)
    if path is None:  # in memory: one process, no file to lock
        return "wal"
    recorded = recorded_lock_mode(path)
    if recorded is not None:
        if lock not in ("auto", recorded):
            raise StoreError(
                f"database {mask_url(url)} was created with lock: {recorded}, this process "
                f"has lock: {lock}: set lock: {recorded} or auto (which follows the database), "
                "or delete the file while no worker runs to start over in the other mode "
                "(only the run history is lost)"
            )
        return recorded
    if lock != "auto":
        return lock
    fstype = network_filesystem(path, mounts)
    if fstype is None:
        return "wal"
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning(
            "database %s is on a network filesystem (%s): SQLite's WAL is unsafe there, "
            "using a rollback journal and a lock file around every transaction (lock: "
            "flufl); set lock: flufl to silence this, or use PostgreSQL for many workers",
            path,
            fstype,
        )
    return "flufl"


def make_engine(url: str, *, lock: str | None = "wal") -> Engine:
    """An engine for ``url``; ``lock`` is the resolved SQLite mode (see
    :func:`sqlite_lock_mode`), ignored for PostgreSQL."""
    u = _parse(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, flufl=lock == "flufl")
    if backend == "postgresql":
        args: dict[str, Any] = {}
        if "connect_timeout" not in u.query:
            args["connect_timeout"] = PG_CONNECT_TIMEOUT
        if "application_name" not in u.query:
            args["application_name"] = "lauf-dvc"
        engine = create_engine(
            url, pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW, connect_args=args
        )
        _ping_when_idle(engine)
        return engine
    raise StoreError(f"unsupported database {mask_url(url)!r}: use sqlite:/// or postgresql://")


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use if it sat idle longer than
    :data:`PG_PING_AFTER_IDLE` (a server restart, a firewall dropping idle connections
    during a long stage), not on every checkout: a ping is one more round trip per
    transaction, a tenth of a claim's cost."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info["lauf_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("lauf_idle_since", None)
        if since is None or time.monotonic() - since < PG_PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # the pool retries with a fresh connection
            raise DisconnectionError(f"idle connection is gone: {exc}") from exc


def _sqlite_engine(url: str, *, flufl: bool) -> Engine:
    """WAL on a local disk. ``flufl``: a rollback journal, full fsync, and no pool:
    every transaction opens the file after taking the lock file and closes it before
    letting go, so NFS's close-to-open consistency shows it the last writer's pages."""
    path = sqlite_path(url)
    if path is not None:
        make_dir(path.parent, f"database {path}")
    mode_name = "flufl" if flufl else "wal"
    journal, synchronous = JOURNALS[mode_name], "FULL" if flufl else "NORMAL"
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        **({"poolclass": NullPool} if flufl else {}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        try:
            # The journal mode is chosen once, by whoever creates the file; after that it
            # is only read (sqlite_lock_mode picked the file's own mode for this engine).
            if path is None or cur.execute("PRAGMA page_count").fetchone()[0] == 0:
                cur.execute(f"PRAGMA journal_mode = {journal}")
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
        except sqlite3.OperationalError as exc:  # "unable to open database file": read-only
            cur.close()
            dbapi_conn.close()
            raise StoreError(f"database {mask_url(url)}: {exc}{READ_ONLY_HINT}") from None
        if path is not None and mode.upper() != journal:
            # another process created the file in the other mode at the same moment
            cur.close()
            dbapi_conn.close()
            found = {v: k for k, v in JOURNALS.items()}.get(mode.upper(), mode)
            raise StoreError(
                f"database {mask_url(url)} was created with lock: {found}, this process "
                f"has lock: {mode_name}: every process of a database must use the same lock "
                "setting"
            )
        cur.execute(f"PRAGMA synchronous = {synchronous}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock up front: no deadlock-prone read-then-upgrade.
        write = conn.get_execution_options().get("lauf_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
