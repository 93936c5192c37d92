"""DVC's hard-link repository lock (``core.hardlink_lock``, what docs/slurm.md sets up)
held by a lauf worker that died: the others break it instead of waiting forever.

The lock is made as flufl makes it (a claim file, hard-linked as ``.dvc/tmp/lock``) and
described by a note as :func:`lauf_dvc.dvc.repolock.held` leaves one; the holder's
liveness comes from a real lauf database (a worker on another host) or from the process
table (this host). The end-to-end case, a worker SIGKILLed while it writes ``dvc.lock``,
is in test_crash.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lauf_dvc.dvc import repolock
from lauf_dvc.dvc.load.pipeline import locked, make_repo
from lauf_dvc.scheduler.store import Store


@pytest.fixture
def repo(dvc_repo, monkeypatch):
    root = dvc_repo({"dvc.yaml": "stages: {}\n"}, name="repo")
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.hardlink_lock", "true"],
                   cwd=root, check=True)  # fmt: skip
    monkeypatch.setattr(repolock, "_checked", set())
    monkeypatch.setattr(repolock, "WATCH_INTERVAL", 0.1)
    repo = make_repo(root)
    yield repo
    repolock.unregister_worker()
    repo.close()


def hold_as(repo, host: str, pid: int, worker: str | None, name: str = "lock") -> Path:
    """DVC's lock file ``name`` held as flufl holds it, and the note lauf leaves; returns
    the claim file."""
    tmp = Path(repo.tmp_dir)
    claim = tmp / "0123456789abcdef0123456789abcdef.lock"
    claim.write_text(str(claim))
    os.link(claim, tmp / name)
    note = {"claim": str(claim), "host": host, "pid": pid, "started": 1.0, "worker": worker}
    repolock.note_path(tmp / name).parent.mkdir(parents=True, exist_ok=True)
    repolock.note_path(tmp / name).write_text(json.dumps(note))
    return claim


def exited_pid() -> int:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(gone.stdout)


class Taker(threading.Thread):
    """Takes DVC's lock and lets go at once, as a worker does; ``got`` is set meanwhile."""

    def __init__(self, repo) -> None:
        super().__init__(daemon=True)
        self.repo, self.got = repo, threading.Event()

    def run(self) -> None:
        with locked(self.repo):
            self.got.set()


def take_lock(repo) -> Taker:
    taker = Taker(repo)
    taker.start()
    return taker


def dead_and_alive_workers(repo) -> Store:
    store = Store(f"sqlite:///{Path(repo.tmp_dir) / 'lauf' / 'lauf.sqlite'}")
    store.register_worker("node7:dead", host="node7", pid=1, labels="", timeout=60, now=0)
    store.register_worker("node8:alive", host="node8", pid=1, labels="", timeout=60)
    assert store.reap(reaper="me", max_killed_retries=2) == []  # node7's heartbeat is old
    assert store.worker_state("node7:dead") == "dead"
    return store


def test_a_lock_whose_holder_on_another_host_was_declared_dead_is_broken(repo, caplog):
    store = dead_and_alive_workers(repo)
    repolock.register_worker("me", lambda w: store.worker_state(w) in ("dead", "offline"))
    claim = hold_as(repo, "node7", 4242, "node7:dead")
    with caplog.at_level(logging.WARNING, logger="lauf_dvc.dvc.repolock"):
        taker = take_lock(repo)
        assert taker.got.wait(30), "still waiting for a dead worker's lock"
        taker.join(30)
    assert not claim.exists()  # its claim file went with it
    assert "holder worker node7:dead (pid 4242 on node7) was declared dead" in caplog.text
    assert not (Path(repo.tmp_dir) / "lock").exists()  # released again after use
    store.dispose()


def test_a_lock_of_a_live_holder_is_waited_for_and_reported(repo, caplog, monkeypatch):
    store = dead_and_alive_workers(repo)
    repolock.register_worker("me", lambda w: store.worker_state(w) in ("dead", "offline"))
    monkeypatch.setattr(repolock, "REPORT_EVERY", 0.3)
    claim = hold_as(repo, "node8", 4242, "node8:alive")
    with caplog.at_level(logging.WARNING, logger="lauf_dvc.dvc.repolock"):
        taker = take_lock(repo)
        assert not taker.got.wait(1.5)  # a live holder keeps its lock
        assert "held by worker node8:alive (pid 4242 on node8)" in caplog.text
        assert "broke" not in caplog.text
        (Path(repo.tmp_dir) / "lock").unlink()  # the holder lets go: the waiter gets it
        claim.unlink()
        assert taker.got.wait(30)
        taker.join(30)
    store.dispose()


def test_a_lock_of_an_exited_process_on_this_host_is_broken(repo, caplog):
    hold_as(repo, socket.gethostname(), exited_pid(), None)
    with caplog.at_level(logging.WARNING, logger="lauf_dvc.dvc.repolock"):
        taker = take_lock(repo)
        assert taker.got.wait(30)
        taker.join(30)
    assert "has exited" in caplog.text


def test_a_note_about_an_earlier_lock_breaks_nothing(repo, caplog):
    """The lock is held by someone else than the note says (another claim): wait."""
    store = dead_and_alive_workers(repo)
    repolock.register_worker("me", lambda w: store.worker_state(w) in ("dead", "offline"))
    hold_as(repo, "node7", 4242, "node7:dead")
    (Path(repo.tmp_dir) / "lock").unlink()
    other = Path(repo.tmp_dir) / "fedcba9876543210fedcba9876543210.lock"
    other.write_text(str(other))
    os.link(other, Path(repo.tmp_dir) / "lock")  # a live dvc command holds it now
    taker = take_lock(repo)
    assert not taker.got.wait(1.0)
    assert (Path(repo.tmp_dir) / "lock").read_text() == str(other)
    (Path(repo.tmp_dir) / "lock").unlink()
    other.unlink()
    assert taker.got.wait(30)
    taker.join(30)
    store.dispose()


def test_dvcs_path_lock_guard_of_a_dead_holder_is_broken_and_of_a_live_one_kept(repo, caplog):
    """``rwlock.lock`` guards DVC's path-lock file; DVC gives up on it after 3 s."""
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    def path_locks() -> None:  # what a stage takes before its command runs
        with rwlock(repo.tmp_dir, repo.fs, "lauf-dvc worker", [], [repo.root_dir + "/out"],
                    True):  # fmt: skip
            pass

    hold_as(repo, socket.gethostname(), exited_pid(), None, name="rwlock.lock")
    with caplog.at_level(logging.WARNING, logger="lauf_dvc.dvc.repolock"):
        path_locks()
    assert "broke DVC's lock" in caplog.text and "rwlock.lock" in caplog.text
    assert not (Path(repo.tmp_dir) / "rwlock.lock").exists()  # taken and let go
    assert not repolock.note_path(Path(repo.tmp_dir) / "rwlock.lock").exists()

    store = dead_and_alive_workers(repo)
    repolock.register_worker("me", lambda w: store.worker_state(w) in ("dead", "offline"))
    hold_as(repo, "node8", 4242, "node8:alive", name="rwlock.lock")
    with pytest.raises(LockError):  # a live holder: DVC's own answer, after 3 s
        path_locks()
    assert (Path(repo.tmp_dir) / "rwlock.lock").exists()
    store.dispose()


def test_a_filesystem_without_flock_only_loses_the_queue(repo, monkeypatch):
    """lauf queues for DVC's lock on an flock; an NFS mount without a lock manager
    refuses it (ENOLCK): DVC's lock is then taken directly."""
    import errno
    import fcntl

    def refuse(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with locked(repo):
        assert (Path(repo.tmp_dir) / "lock").exists()  # DVC's lock, held
    assert not (Path(repo.tmp_dir) / "lock").exists()
