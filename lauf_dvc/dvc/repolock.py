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
:func:`held`, which leaves a note of who holds it (``.dvc/tmp/lauf/repo-lock.json``:
the lock's claim, host, pid and lauf worker) and, while it waits, looks every second
whether the holder the note names is dead (this host: its process is gone; another
host: the lauf database declared its worker dead). Then the lock is broken and the wait
goes on. Every minute of waiting is logged, with the holder when known.
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

from lauf_dvc.dvc.atomic import write_json
from lauf_dvc.errors import LockTimeout
from lauf_dvc.scheduler.netfs import network_filesystem

if TYPE_CHECKING:
    from dvc.repo import Repo

log = logging.getLogger(__name__)

#: DVC's lock files in ``.dvc/tmp``: the repository lock and the path locks' lock.
LOCK_FILES = ("lock", "rwlock.lock")
NOTE = "repo-lock.json"  # in .dvc/tmp/lauf/: who holds DVC's repository lock
WATCH_INTERVAL = 1.0  # seconds between looks at a held lock while waiting for it
REPORT_EVERY = 60.0  # seconds of waiting between two log lines about it
_checked: set[str] = set()
#: This process's lauf worker, and how to ask the database whether a worker is dead.
_worker: tuple[str, Callable[[str], bool]] | None = None


class StaleRepoLock(LockTimeout):
    """A lock file the hard-link lock would wait for forever (exit code 7)."""


def check(repo: Repo, *, mounts: str | None = None) -> None:
    """Check DVC's locking of ``repo`` once per process (``mounts``: a /proc/mounts text,
    for tests). Raises :class:`StaleRepoLock`; logs the network filesystem warning."""
    root = os.path.realpath(repo.root_dir)
    if root in _checked:
        return
    tmp = Path(repo.tmp_dir)
    if repo.config["core"].get("hardlink_lock", False):
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

    hardlink = bool(repo.config["core"].get("hardlink_lock", False))
    watch = _Watch(repo, hardlink)
    watch.start()
    try:
        with lock_repo(repo):
            watch.halt()
            note = _leave_note(repo) if hardlink else None
            try:
                yield
            finally:
                if note is not None:
                    note.unlink(missing_ok=True)
    finally:
        watch.halt()


def _leave_note(repo: Repo) -> Path | None:
    path = Path(repo.tmp_dir) / "lauf" / NOTE
    try:
        claim = (Path(repo.tmp_dir) / "lock").read_text()
        write_json(path, {"claim": claim, "host": socket.gethostname(), "pid": os.getpid(),
                          "started": _started(os.getpid()),
                          "worker": _worker[0] if _worker else None})  # fmt: skip
    except OSError as exc:  # only the recovery of a dead holder depends on it
        log.debug("no note of DVC's lock holder (%s)", exc)
        return None
    return path


class _Watch(threading.Thread):
    """While this process waits for DVC's lock: break it if its holder died (hard-link
    lock), and say every :data:`REPORT_EVERY` seconds that it still waits, for whom."""

    def __init__(self, repo: Repo, hardlink: bool) -> None:
        super().__init__(name="lauf-dvc-lock-watch", daemon=True)
        self.lock = Path(repo.tmp_dir) / "lock"
        self.note = Path(repo.tmp_dir) / "lauf" / NOTE
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
                note = self._note()
                if self.hardlink and note is not None and self._break_if_dead(note):
                    continue
                if time.monotonic() >= report:
                    report += REPORT_EVERY
                    log.warning(
                        "waited %.0f s for DVC's repository lock %s, held by %s; if no dvc "
                        "or lauf-dvc command runs on this repository, delete that file",
                        time.monotonic() - since, self.lock,
                        _describe(note) if note else "another dvc command",
                    )  # fmt: skip
            except Exception as exc:  # the waiting goes on in any case
                log.debug("watching DVC's lock %s: %s", self.lock, exc)

    def _note(self) -> dict[str, Any] | None:
        """The note, if it is about the lock as it is now (the same claim)."""
        try:
            claim = self.lock.read_text()
            note = json.loads(self.note.read_text())
        except (OSError, ValueError):
            return None
        return note if isinstance(note, dict) and note.get("claim") == claim else None

    def _break_if_dead(self, note: dict[str, Any]) -> bool:
        why = _dead(note)
        if why is None or self._note() != note:  # alive, or the lock changed hands
            return False
        try:
            self.lock.unlink()
        except FileNotFoundError:
            return False
        claim = Path(note["claim"])
        if claim.is_absolute() and claim.parent == self.lock.parent:
            claim.unlink(missing_ok=True)
        self.note.unlink(missing_ok=True)
        log.warning("broke DVC's repository lock %s: its holder %s %s",
                    self.lock, _describe(note), why)  # fmt: skip
        return True


def _dead(note: dict[str, Any]) -> str | None:
    """Why the holder a note names is dead, or None (alive, or not known)."""
    import psutil

    if note.get("host") == socket.gethostname():
        pid = note.get("pid")
        try:
            proc = psutil.Process(pid)
            gone = proc.status() == psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, ValueError, TypeError):
            gone = True
        else:
            gone = gone or _started(pid) != note.get("started")  # the pid was reused
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
