"""flufl.lock helpers: NFS-safe file locks that expire when their holder dies.

A lock's lifetime is the worker's heartbeat timeout; the heartbeat thread refreshes the
locks this process holds, so a lock outlives a long critical section but not a dead worker.
"""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import timedelta
from pathlib import Path

from flufl.lock import Lock

from lauf_dvc.scheduler.engine import sqlite_path


def lock_dir(db_url: str) -> Path:
    """Where the locks of the workers of one database live: beside a SQLite file, else
    ``.lauf-locks`` in the working directory (give PostgreSQL workers a shared cwd)."""
    path = sqlite_path(db_url)
    if path is not None:
        return path.with_name(path.name + ".locks")
    return Path(".lauf-locks")


def _file_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:12]}.lock"


class LockSet:
    """The flufl locks one worker hands out; refreshed together by its heartbeat."""

    def __init__(self, directory: Path, lifetime: float) -> None:
        self.directory = directory
        self.lifetime = timedelta(seconds=lifetime)
        self._locks: dict[str, Lock] = {}
        self._mutex = threading.Lock()

    def get(self, name: str) -> Lock:
        """The lock called ``name`` (one object per name; use it as a context manager)."""
        with self._mutex:
            lock = self._locks.get(name)
            if lock is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                lock = Lock(str(self.directory / _file_name(name)), lifetime=self.lifetime)
                self._locks[name] = lock
            return lock

    def refresh_held(self) -> None:
        """Extend every lock this process holds by one lifetime."""
        with self._mutex:
            held = [lock for lock in self._locks.values() if lock.is_locked]
        for lock in held:
            lock.refresh(self.lifetime, unconditionally=True)
