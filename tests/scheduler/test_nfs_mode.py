"""The NFS-safe SQLite mode: detecting a network filesystem, and ``lock: flufl`` itself."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from lauf_dvc import ConfigError, Graphband, Store, StoreError, Task
from lauf_dvc.config import SchedulerSettings
from lauf_dvc.netfs import (
    filesystem_type,
    is_network_filesystem,
    mount_table,
    network_filesystem,
)
from lauf_dvc.scheduler.engine import sqlite_lock_mode
from lauf_dvc.scheduler.locks import LockSet
from lauf_dvc.scheduler.store import TaskSpec
from lauf_dvc.scheduler.worker import IDLE_POLL_BUDGET, MAX_BACKOFF, Worker

MOUNTS = r"""sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime 0 0
fileserver:/export/home /home nfs4 rw,relatime,vers=4.2,hard,proto=tcp 0 0
/dev/sdb1 /home/local ext4 rw,relatime 0 0
10.0.0.5@o2ib:/scratch /scratch lustre rw,flock,lazystatfs 0 0
alice@laptop:/data /mnt/my\040data fuse.sshfs rw,nosuid,nodev 0 0
//nas/share /mnt/share cifs rw,vers=3.0 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
fileserver:/export/tmp /tmp nfs rw,vers=3 0 0
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/home/alice/repo/.dvc/tmp/lauf/lauf.sqlite", "nfs4"),
        ("/home", "nfs4"),
        ("/home/local/repo/db.sqlite", "ext4"),  # the longest mount point wins
        ("/homework/db.sqlite", "ext4"),  # a prefix of the name is not a parent directory
        ("/scratch/run/db.sqlite", "lustre"),
        ("/mnt/my data/db.sqlite", "fuse.sshfs"),  # octal escapes decoded
        ("/mnt/share/x", "cifs"),
        ("/tmp/db.sqlite", "nfs"),  # mounted over tmpfs later: the later mount hides it
        ("/var/db.sqlite", "ext4"),
    ],
)
def test_filesystem_type_is_the_longest_mount_point(path, fstype):
    assert filesystem_type(path, MOUNTS) == fstype


def test_only_network_filesystems_are_reported():
    assert network_filesystem(Path("/home/alice/db.sqlite"), MOUNTS) == "nfs4"
    assert network_filesystem(Path("/scratch/db.sqlite"), MOUNTS) == "lustre"
    assert network_filesystem(Path("/mnt/my data/db.sqlite"), MOUNTS) == "fuse.sshfs"
    assert network_filesystem(Path("/home/local/db.sqlite"), MOUNTS) is None
    assert network_filesystem(Path("/var/db.sqlite"), MOUNTS) is None
    assert filesystem_type("/x", "") is None


@pytest.mark.parametrize(
    "fstype",
    ["fuse.sshfs", "fuse.fuse-nfs", "fuse.glusterfs", "fuse.ceph", "fuse.ceph-fuse",
     "fuse.gcsfuse", "fuse.s3fs", "fuse.juicefs", "fuse.rclone", "fuse.mountpoint-s3",
     "fuse.someone-elses-fs", "fuse", "lustre", "gpfs", "beegfs", "ceph", "nfs4", "cifs"],
)  # fmt: skip
def test_network_and_unknown_fuse_filesystems_count_as_network(fstype):
    mounts = [("/", "ext4"), ("/shared", fstype)]
    assert network_filesystem(Path("/shared/repo/db.sqlite"), mounts) == fstype
    assert network_filesystem(Path("/home/db.sqlite"), mounts) is None


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay",
                                    "fuseblk", "fuse.lxcfs", "fuse.fuse-overlayfs"])  # fmt: skip
def test_local_filesystems_and_known_local_fuse_do_not(fstype):
    assert network_filesystem(Path("/data/db.sqlite"), [("/", "ext4"), ("/data", fstype)]) is None


def test_this_machines_mount_table_comes_from_psutil(tmp_path):
    table = mount_table()
    assert ("/", filesystem_type("/", table)) in table
    # the test's own folder: whatever it is on, the answer agrees with the table
    fstype = filesystem_type(os.path.realpath(tmp_path), table)
    expected = fstype if fstype is not None and is_network_filesystem(fstype) else None
    assert network_filesystem(tmp_path) == expected


def test_auto_is_flufl_on_a_network_filesystem_with_one_warning(caplog):
    nfs = "sqlite:////home/alice/auto-test/lauf.sqlite"
    with caplog.at_level(logging.WARNING, logger="lauf_dvc.scheduler.engine"):
        assert sqlite_lock_mode(nfs, "auto", mounts=MOUNTS) == "flufl"
        assert sqlite_lock_mode(nfs, "auto", mounts=MOUNTS) == "flufl"
    (warning,) = caplog.records
    assert "network filesystem (nfs4)" in warning.getMessage()
    assert sqlite_lock_mode(nfs, "wal", mounts=MOUNTS) == "wal"  # forced
    local = "sqlite:////home/local/lauf.sqlite"
    assert sqlite_lock_mode(local, "auto", mounts=MOUNTS) == "wal"
    assert sqlite_lock_mode(local, "flufl", mounts=MOUNTS) == "flufl"
    assert sqlite_lock_mode("postgresql+psycopg://u@h/db", "flufl") is None
    with pytest.raises(ConfigError, match="lock must be one of auto, wal, flufl"):
        sqlite_lock_mode(local, "nfs")


def test_flufl_mode_uses_a_rollback_journal_and_releases_its_lock(tmp_path):
    path = tmp_path / "db.sqlite"
    store = Store(f"sqlite:///{path}", lock="flufl")
    store.sync_graph([TaskSpec("a"), TaskSpec("b", ("a",))], worker=None)
    assert store.sqlite_lock == "flufl"
    store.register_worker("w", host="h", pid=1, labels="", timeout=10)
    assert store.claim("w", allowed=[""]).id == "a"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    locks = tmp_path / "db.sqlite.locks"
    assert locks.is_dir() and list(locks.iterdir()) == []  # lock and claim files gone
    with store.write():
        assert (locks / "transactions.lock").exists()
        with store.read():  # reentrant within a thread
            pass
    assert list(locks.iterdir()) == []


def test_threads_of_one_process_share_the_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    Store(url, lock="flufl").sync_graph([TaskSpec(f"t{i}") for i in range(60)], worker=None)
    taken: dict[str, list[str]] = {}

    def drain(name: str) -> None:
        store = Store(url, lock="flufl")
        store.register_worker(name, host="h", pid=1, labels="", timeout=10)
        mine = taken.setdefault(name, [])
        while (claimed := store.claim(name, allowed=[""])) is not None:
            mine.append(claimed.id)
            store.complete(claimed.id, name, fingerprint=None)

    threads = [threading.Thread(target=drain, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [i for ids in taken.values() for i in ids]
    assert sorted(done) == sorted(f"t{i}" for i in range(60))  # each exactly once


def header(path: Path) -> tuple[int, int]:
    """Bytes 18 and 19 of a SQLite file: (1, 1) rollback journal, (2, 2) WAL."""
    data = path.read_bytes()[:20]
    return data[18], data[19]


@pytest.mark.parametrize(("created", "other"), [("flufl", "wal"), ("wal", "flufl")])
def test_a_database_keeps_the_lock_mode_it_was_created_with(created, other, tmp_path):
    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"
    first = Store(url, lock=created)
    first.sync_graph([TaskSpec("a")], worker=None)
    recorded = header(path)
    assert recorded == {"flufl": (1, 1), "wal": (2, 2)}[created]
    with first.read():  # open (a WAL worker keeps it so) while the others look
        follower = Store(url)  # the default, lock: auto, follows the file
        assert follower.sqlite_lock == created and follower.counts()["pending"] == 1
        follower.dispose()
        with pytest.raises(StoreError) as err:
            Store(url, lock=other).counts()
    message = (
        f"database {url} was created with lock: {created}, this process has lock: {other}: "
        f"set lock: {created} or auto (which follows the database), or delete the file while "
        "no worker runs to start over in the other mode (only the run history is lost)"
    )
    assert str(err.value) == message
    first.dispose()
    assert header(path) == recorded  # nobody switched the journal mode
    if created == "flufl":
        assert not Path(f"{path}-wal").exists()


def test_auto_on_a_network_filesystem_follows_a_wal_database_made_there(tmp_path):
    """A database's mode is read from the file before the mount table is consulted: the
    file is the record (no warning, no switch), whatever auto would pick for a new one."""
    path = tmp_path / "db.sqlite"
    Store(f"sqlite:///{path}", lock="wal").sync_graph([TaskSpec("a")], worker=None)
    mounts = f"server:/export {tmp_path} nfs4 rw 0 0\n"
    assert sqlite_lock_mode(f"sqlite:///{path}", "auto", mounts=mounts) == "wal"
    assert sqlite_lock_mode(f"sqlite:///{tmp_path / 'new.sqlite'}", "auto", mounts=mounts) == (
        "flufl"
    )


def test_graphband_lock_setting_comes_from_argument_or_environment(sqlite_url, monkeypatch):
    assert Graphband([Task("a")], db=sqlite_url).lock_mode == "auto"
    monkeypatch.setenv("LAUF_DVC_LOCK", "flufl")
    gb = Graphband([Task("a")], db=sqlite_url)
    assert gb.lock_mode == "flufl" and [t.id for t in gb] == ["a"]
    assert gb.store.sqlite_lock == "flufl"
    assert Graphband([Task("a")], db=sqlite_url, lock="wal").lock_mode == "wal"
    monkeypatch.setenv("LAUF_DVC_LOCK", "nfs")
    with pytest.raises(ConfigError, match="LAUF_DVC_LOCK"):
        Graphband([Task("a")], db=sqlite_url)


# -- idle polling where a poll is costly -------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "alive", "pause"),
    [
        ("wal", 100, MAX_BACKOFF),  # a local read: never slowed
        ("flufl", 3, MAX_BACKOFF),  # few workers: as fast as on a local disk
        ("flufl", 36, 36 / IDLE_POLL_BUDGET["flufl"]),  # 1.8 s: the lock file is shared
        ("postgresql", 16, MAX_BACKOFF),
        ("postgresql", 300, 300 / IDLE_POLL_BUDGET["postgresql"]),
    ],
)
def test_idle_pause_grows_with_the_live_workers_where_a_poll_is_costly(
    backend, alive, pause, tmp_path, request
):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else (
        f"sqlite:///{tmp_path / 'db.sqlite'}")  # fmt: skip
    store = Store(url, lock="auto" if backend == "postgresql" else backend)
    for i in range(alive):
        store.register_worker(f"w{i}", host="h", pid=i, labels="", timeout=60)
    store.register_worker("gone", host="h", pid=0, labels="", timeout=-1)  # expired: not counted
    store.register_worker("left", host="h", pid=0, labels="", timeout=60)
    store.worker_offline("left")
    assert store.alive_workers() == alive
    worker = Worker({}, store, SchedulerSettings(), identifier="w0", labels=frozenset(),
                    locks=LockSet(tmp_path / "locks", 60))  # fmt: skip
    assert worker.longest_pause() == MAX_BACKOFF  # before counting: one worker
    worker.count_alive()
    assert worker.longest_pause() == pytest.approx(max(MAX_BACKOFF, pause))
    store.dispose()
