"""A shared cache of file content hashes, valid while a file's stat is unchanged.

Keyed by (algorithm, path) and checked against size, ``mtime_ns`` and inode: a file
whose stat matches is not read again. A mismatch is never taken as proof of change,
only as the reason to hash the file again (the content may well be the same).

The cache is a small SQLite file every worker of the repository opens (WAL, short
transactions; a rollback journal on a network filesystem, where WAL's shared memory
does not reach the other machines). It is an optimisation only: a locked, unreadable
or corrupt cache costs hashing time, never a failed fingerprint.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lauf_dvc.netfs import MountTable, network_filesystem

log = logging.getLogger(__name__)

#: A file modified less than this long before hashing started is not cached: a second
#: write within the same timestamp tick would keep size and mtime (the "racily clean"
#: problem of git's index); 2 s also covers coarse filesystems and small clock skew.
RACY_NS = 2_000_000_000

_CHUNK = 500  # parameters per IN (...) query, well below SQLite's limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes (
    algo TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (algo, path)
) WITHOUT ROWID
"""


@dataclass
class CacheStats:
    """What the cache did since it was opened: the observable effect of caching."""

    hits: int = 0
    misses: int = 0
    stored: int = 0
    errors: int = 0


class StatCache:
    """``(algorithm, path) -> hash`` for files whose size, mtime_ns and inode are unchanged.

    Thread-safe; each process opens its own. Paths are used as given (pass absolute
    ones). ``racy_ns`` is the age below which a file is hashed but not cached.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        racy_ns: int = RACY_NS,
        timeout: float = 5.0,
        mounts: str | MountTable | None = None,
    ) -> None:
        """``mounts``: a /proc/mounts text or a mount table (tests), else this machine's, read
        on first use."""
        self.path = Path(path)
        self._mounts = mounts
        self.racy_ns = racy_ns
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._timeout = timeout
        self._broken = False

    # -- reading -------------------------------------------------------------------------

    def get_many(self, algo: str, items: Sequence[tuple[str, os.stat_result]]) -> dict[str, str]:
        """``{path: hash}`` for every item whose cached stat matches; misses are absent."""
        found: dict[str, str] = {}
        rows = self._select(algo, [p for p, _ in items])
        for path, st in items:
            row = rows.get(path)
            if row is not None and row[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
                found[path] = row[3]
        self.stats.hits += len(found)
        self.stats.misses += len(items) - len(found)
        return found

    def _select(self, algo: str, paths: list[str]) -> dict[str, tuple[int, int, int, str]]:
        rows: dict[str, tuple[int, int, int, str]] = {}
        con = self._connect()
        if con is None:
            return rows
        try:
            with self._lock:
                for i in range(0, len(paths), _CHUNK):
                    chunk = paths[i : i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    cursor = con.execute(
                        "SELECT path, size, mtime_ns, inode, hash FROM hashes "
                        f"WHERE algo = ? AND path IN ({marks})",
                        [algo, *chunk],
                    )
                    for path, size, mtime_ns, inode, value in cursor:
                        rows[path] = (size, mtime_ns, inode, value)
        except sqlite3.Error as exc:
            self._failed("read", exc)
        return rows

    # -- writing -------------------------------------------------------------------------

    def put_many(
        self,
        algo: str,
        items: Iterable[tuple[str, os.stat_result, str]],
        *,
        started_ns: int,
    ) -> None:
        """Remember ``(path, stat, hash)`` items hashed after ``started_ns`` (``time_ns()``).

        Files modified within ``racy_ns`` before ``started_ns`` are skipped (see
        :data:`RACY_NS`). A write that fails (database locked for longer than the
        timeout, read-only directory) is logged and dropped.
        """
        rows = [
            (algo, path, st.st_size, st.st_mtime_ns, st.st_ino, value)
            for path, st, value in items
            if st.st_mtime_ns <= started_ns - self.racy_ns
        ]
        con = self._connect() if rows else None
        if con is None:
            return
        try:
            with self._lock, con:
                con.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)", rows)
            self.stats.stored += len(rows)
        except sqlite3.Error as exc:
            self._failed("write", exc)

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        if self._con is not None or self._broken:
            return self._con
        with self._lock:
            if self._con is not None or self._broken:
                return self._con
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                con = sqlite3.connect(self.path, timeout=self._timeout, check_same_thread=False)
                con.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
                shared = network_filesystem(self.path, self._mounts) is not None
                con.execute(f"PRAGMA journal_mode = {'DELETE' if shared else 'WAL'}")
                con.execute("PRAGMA synchronous = NORMAL")
                with con:
                    con.execute(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                self._broken = True
                log.warning("stat cache %s unusable, hashing without it: %s", self.path, exc)
                return None
            self._con = con
            return con

    def _failed(self, what: str, exc: Exception) -> None:
        self.stats.errors += 1
        log.debug("stat cache %s: %s failed: %s", self.path, what, exc)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> StatCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
