"""DVC's own locks on a shared filesystem: the checks docs/slurm.md promises.

DVC locks a repository with ``.dvc/tmp/lock`` and its path locks with
``.dvc/tmp/rwlock.lock``. By default both are ``zc.lockfile`` files (an fcntl lock,
which NFS and Lustre do not honour reliably between machines), left in place when
released. With ``core.hardlink_lock`` they are flufl hard-link locks: a held one is a
hard link to a claim file (two links) that is removed on release. A file with one link
there is a leftover of the default lock from before the switch, and DVC's hard-link
lock would wait for it forever (flufl refuses to break a lock file it did not write):
lauf-dvc says so at once instead of hanging. A repository on a network filesystem
without ``core.hardlink_lock`` gets a warning.

A hard-link lock whose holder died (a worker killed while it wrote ``dvc.lock``) is
never released either: ``dvc`` waits for it forever. lauf-dvc takes DVC's lock through
:func:`held`, which leaves a note of who holds it (``.dvc/tmp/lauf/holders/lock.json``:
the lock's claim, host, pid and lauf worker) and, while it waits, looks every second
whether the holder the note names is dead (this host: its process is gone; another
host: the lauf database declared its worker dead). Then the lock is broken and the wait
goes on. Every minute of waiting is logged, with the holder when known. DVC's guard of
its path-lock file, ``rwlock.lock``, is noted and broken the same way (:func:`install`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc.commit.atomic import write_json
from lauf_dvc.errors import LockTimeout
from lauf_dvc.netfs import network_filesystem

if TYPE_CHECKING:
    from dvc.repo import Repo

log = logging.getLogger(__name__)

#: DVC's lock files in ``.dvc/tmp``: the repository lock and the path locks' lock.
LOCK_FILES = ("lock", "rwlock.lock")
WATCH_INTERVAL = 1.0  # seconds between looks at a held lock while waiting for it
REPORT_EVERY = 60.0  # seconds of waiting between two log lines about it
_checked: set[str] = set()
#: This process's lauf worker, and how to ask the database whether a worker is dead.
_worker: tuple[str, Callable[[str], bool]] | None = None


class StaleRepoLock(LockTimeout):
    """A lock file the hard-link lock would wait for forever (exit code 7)."""


def uses_hardlink(repo: Repo) -> bool:
    """Does ``repo`` lock with hard links (``core.hardlink_lock``)?"""
    return bool(repo.config["core"].get("hardlink_lock", False))


def check(repo: Repo, *, mounts: str | None = None) -> None:
    """Check DVC's locking of ``repo`` once per process (``mounts``: a /proc/mounts text,
    for tests). Raises :class:`StaleRepoLock`; logs the network filesystem warning."""
    root = os.path.realpath(repo.root_dir)
    if root in _checked:
        return
    tmp = Path(repo.tmp_dir)
    if uses_hardlink(repo):
        stale = [tmp / name for name in LOCK_FILES if _one_link(tmp / name)]
        if stale:
            shown = " ".join(os.path.relpath(p, root) for p in stale)
            raise StaleRepoLock(
                f"{shown}: left by DVC's default lock before core.hardlink_lock was switched "
                "on; DVC's hard-link lock would wait for it forever. When no dvc or lauf-dvc "
                f"command runs on this repository (on any machine), run `rm -f {shown}` in "
                f"{root}"
            )
    else:
        fstype = network_filesystem(Path(root), mounts)
        if fstype is not None:
            log.warning(
                "repository %s is on a network filesystem (%s), where DVC's default "
                "repository lock (fcntl) is unreliable between machines: run `dvc config "
                "core.hardlink_lock true` there, then `rm -f .dvc/tmp/lock "
                ".dvc/tmp/rwlock.lock` while no dvc command runs (see docs/slurm.md)",
                root,
                fstype,
            )
    _checked.add(root)


def _one_link(path: Path) -> bool:
    try:
        return os.stat(path).st_nlink == 1
    except FileNotFoundError:
        return False


# -- a holder that died -------------------------------------------------------------------


def register_worker(identifier: str, is_dead: Callable[[str], bool]) -> None:
    """From now on this process is lauf worker ``identifier``: its notes name it, and a
    note naming another worker is checked with ``is_dead`` (the lauf database)."""
    global _worker
    _worker = (identifier, is_dead)


def unregister_worker() -> None:
    global _worker
    _worker = None


@contextmanager
def held(repo: Repo) -> Iterator[None]:
    """DVC's repository lock (``dvc.repo.lock_repo``), waited for under watch, with a
    note of who holds it while held (hard-link lock only)."""
    from dvc.repo import lock_repo

    lockfile = Path(repo.tmp_dir) / "lock"
    hardlink = uses_hardlink(repo)
    watch = _Watch(lockfile, hardlink)
    watch.start()
    try:
        with lock_repo(repo):
            watch.halt()
            note = leave_note(lockfile) if hardlink else None
            try:
                yield
            finally:
                if note is not None:
                    note.unlink(missing_ok=True)
    finally:
        watch.halt()


def install() -> None:
    """Guard DVC's path-lock file (``.dvc/tmp/rwlock``) the same way: with the hard-link
    lock, DVC's ``rwlock.lock`` (held while DVC edits that file, twice per stage) is
    noted while held, and one that a dead holder left is broken (DVC gives up after
    3 s, which would fail the stage). Once per process."""
    import dvc.rwlock

    from lauf_dvc.dvc import compat

    if getattr(dvc.rwlock.make_lock, "lauf_noted", False) or not compat.enabled("rwlock"):
        return
    original = dvc.rwlock.make_lock

    def make_lock(lockfile: str, tmp_dir: str | None = None, friendly: bool = False,
                  hardlink_lock: bool = False, wait: bool = False) -> Any:  # fmt: skip
        lock = original(lockfile, tmp_dir=tmp_dir, friendly=friendly,
                        hardlink_lock=hardlink_lock, wait=wait)  # fmt: skip
        return _NotedLock(lock, Path(lockfile)) if hardlink_lock else lock

    make_lock.lauf_noted = True  # type: ignore[attr-defined]
    dvc.rwlock.make_lock = make_lock


class _NotedLock:
    """A DVC hard-link lock used as a context manager, noted while held; if taking it
    fails because its holder died, the lock is broken and taken again."""

    def __init__(self, lock: Any, lockfile: Path) -> None:
        self.lock, self.lockfile = lock, lockfile
        self.note: Path | None = None

    def __enter__(self) -> _NotedLock:
        from dvc.lock import LockError

        try:
            self.lock.lock()
        except LockError:
            if not break_if_dead(self.lockfile):
                raise
            self.lock.lock()
        self.note = leave_note(self.lockfile)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.note is not None:
            self.note.unlink(missing_ok=True)
        self.lock.unlock()


def note_path(lockfile: Path) -> Path:
    """Where lauf notes who holds ``lockfile`` (a lock file in ``.dvc/tmp``)."""
    return lockfile.parent / "lauf" / "holders" / f"{lockfile.name}.json"


def leave_note(lockfile: Path) -> Path | None:
    """Note that this process holds ``lockfile`` (just taken); the note's path, or None
    if it could not be written (only the recovery of a dead holder depends on it)."""
    path = note_path(lockfile)
    try:
        write_json(path, {"claim": lockfile.read_text(), "host": socket.gethostname(),
                          "pid": os.getpid(), "started": _started(os.getpid()),
                          "worker": _worker[0] if _worker else None})  # fmt: skip
    except OSError as exc:
        log.debug("no note of the holder of %s (%s)", lockfile, exc)
        return None
    return path


def current_note(lockfile: Path) -> dict[str, Any] | None:
    """The note about ``lockfile`` as it is held now (the same claim), or None."""
    try:
        claim = lockfile.read_text()
        note = json.loads(note_path(lockfile).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and note.get("claim") == claim else None


def break_if_dead(lockfile: Path) -> bool:
    """Break ``lockfile`` if the note says who holds it and that holder is dead."""
    note = current_note(lockfile)
    why = None if note is None else _dead(note)
    if why is None or current_note(lockfile) != note:  # alive, or it changed hands
        return False
    try:
        lockfile.unlink()
    except FileNotFoundError:
        return False
    assert note is not None
    claim = Path(note["claim"])
    if claim.is_absolute() and claim.parent == lockfile.parent:
        claim.unlink(missing_ok=True)
    note_path(lockfile).unlink(missing_ok=True)
    log.warning("broke DVC's lock %s: its holder %s %s", lockfile, _describe(note), why)
    return True


class _Watch(threading.Thread):
    """While this process waits for DVC's repository lock: break it if its holder died
    (hard-link lock), and say every :data:`REPORT_EVERY` seconds that it still waits."""

    def __init__(self, lockfile: Path, hardlink: bool) -> None:
        super().__init__(name="lauf-dvc-lock-watch", daemon=True)
        self.lockfile = lockfile
        self.hardlink = hardlink
        self._halt = threading.Event()

    def halt(self) -> None:
        self._halt.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join()

    def run(self) -> None:
        since = time.monotonic()
        report = since + REPORT_EVERY
        while not self._halt.wait(WATCH_INTERVAL):
            try:
                if self.hardlink and break_if_dead(self.lockfile):
                    continue
                if time.monotonic() >= report:
                    report += REPORT_EVERY
                    note = current_note(self.lockfile)
                    log.warning(
                        "waited %.0f s for DVC's repository lock %s, held by %s; if no dvc "
                        "or lauf-dvc command runs on this repository, delete that file",
                        time.monotonic() - since, self.lockfile,
                        _describe(note) if note else "another dvc command",
                    )  # fmt: skip
            except Exception as exc:  # the waiting goes on in any case
                log.debug("watching DVC's lock %s: %s", self.lockfile, exc)


def _dead(note: dict[str, Any]) -> str | None:
    """Why the holder a note names is dead, or None (alive, or not known)."""
    import psutil

    if note.get("host") == socket.gethostname():
        pid = note.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        try:
            proc = psutil.Process(pid)
            # a zombie, or the pid now belongs to a process started later
            gone = proc.status() == psutil.STATUS_ZOMBIE or (
                proc.create_time() != note.get("started"))  # fmt: skip
        except psutil.NoSuchProcess:
            gone = True
        except psutil.Error:  # not ours to look at: it exists, so it may be the holder
            return None
        return "has exited (it was killed)" if gone else None
    worker = note.get("worker")
    if worker and _worker is not None and _worker[1](worker):
        return "was declared dead by the lauf database (no heartbeat)"
    return None


def _describe(note: dict[str, Any]) -> str:
    who = f"worker {note['worker']}" if note.get("worker") else "lauf-dvc"
    return f"{who} (pid {note.get('pid')} on {note.get('host')})"


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None
