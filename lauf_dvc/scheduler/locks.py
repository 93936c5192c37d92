"""flufl.lock helpers: NFS-safe file locks that expire when their holder dies.

A lock's lifetime is the worker's heartbeat timeout; the heartbeat thread refreshes the
locks this process holds, so a lock outlives a long critical section but not a dead worker.

:class:`TransactionLock` serialises every transaction on a SQLite database that lives on
a network filesystem (``lock: flufl``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from flufl.lock import Lock, NotLockedError, TimeOutError

from lauf_dvc.errors import LockTimeout
from lauf_dvc.scheduler.engine import make_dir, sqlite_path

log = logging.getLogger(__name__)

#: Lifetime of the transaction lock (s). A transaction takes milliseconds (a first sync
#: of a large graph on a slow NFS server: seconds), so a live holder never loses the lock
#: to expiry; the lifetime only matters when a worker dies inside a transaction, and then
#: the others wait this long, once, before breaking the lock. The heartbeat refreshes it
#: as well, should a transaction ever take longer.
TRANSACTION_LOCK_LIFETIME = 60.0
#: Give up waiting for the transaction lock after this long (s): well past the lifetime,
#: so a dead holder's lock is broken first and only a live but hung one times out.
TRANSACTION_LOCK_TIMEOUT = 300.0
#: Polling of a busy transaction lock: from 1 ms, doubling, to 50 ms (flufl.lock's own
#: default sleeps 0.01-2 s, far longer than the transaction it waits for).
POLL_MIN = 0.001
POLL_MAX = 0.05


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


class _PollingLock(Lock):
    """A flufl lock that polls at millisecond scale, with jitter, backing off."""

    _delay = POLL_MIN

    def lock(self, timeout: timedelta | int | None = None) -> None:
        self._delay = POLL_MIN
        super().lock(timeout)

    def _sleep(self) -> None:
        time.sleep(self._delay * random.uniform(0.5, 1.5))
        self._delay = min(self._delay * 2, POLL_MAX)


class TransactionLock:
    """One NFS-safe lock file that every transaction on a database holds, reads included
    (fcntl locks, which SQLite relies on, are unreliable on NFS).

    Threads of one process queue on a process-local mutex first, so only one of them at
    a time polls the lock file; the lock is reentrant within a thread. Get it with
    :func:`transaction_lock`, which hands every thread of a process the same object.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._depth = 0
        self._lock: _PollingLock | None = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def refresh(self) -> None:
        """Extend the lock by one lifetime if a thread of this process holds it (called
        from the heartbeat: a transaction may take longer than the lifetime and keep it)."""
        lock = self._lock
        if self._depth > 0 and lock is not None:
            try:
                lock.refresh(unconditionally=True)  # a lock released meanwhile: a no-op
            except OSError as exc:  # the heartbeat must go on
                log.warning("could not refresh database lock %s: %s", self.path, exc)

    def _acquire(self) -> None:
        if self._lock is None:
            make_dir(self.path.parent, "database lock")
            self._lock = _PollingLock(
                str(self.path), lifetime=timedelta(seconds=TRANSACTION_LOCK_LIFETIME)
            )
        try:
            self._lock.lock(timeout=timedelta(seconds=TRANSACTION_LOCK_TIMEOUT))
        except TimeOutError:
            raise LockTimeout(
                f"database lock {self.path} still held after {TRANSACTION_LOCK_TIMEOUT:.0f} s:"
                " is a worker hung? if no worker runs, delete that file"
            ) from None

    def _release(self) -> None:
        assert self._lock is not None
        try:
            self._lock.unlock()
        except NotLockedError:
            log.warning(
                "database lock %s expired while held (a transaction took longer than %.0f s)",
                self.path,
                TRANSACTION_LOCK_LIFETIME,
            )
            self._lock.unlock(unconditionally=True)


_TRANSACTION_LOCKS: dict[tuple[int, str], TransactionLock] = {}
_TRANSACTION_LOCKS_MUTEX = threading.Lock()


def transaction_lock(path: Path) -> TransactionLock:
    """The :class:`TransactionLock` of ``path`` for this process (a forked child gets its
    own: the pid is part of the key, as it is of flufl's claim file)."""
    key = (os.getpid(), str(path))
    with _TRANSACTION_LOCKS_MUTEX:
        lock = _TRANSACTION_LOCKS.get(key)
        if lock is None:
            lock = _TRANSACTION_LOCKS[key] = TransactionLock(path)
        return lock
