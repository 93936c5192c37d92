"""Real worker processes competing over one database: SQLite (WAL, and the NFS-safe
flufl mode) and PostgreSQL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from lauf_dvc import Store, TaskState
from lauf_dvc.scheduler.schema import events

WORKER = Path(__file__).with_name("proc_worker.py")
S = TaskState


def spawn(db: str, shape: str, n: int, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), db, shape, str(n), str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_workers(db: str, shape: str, n: int, out: Path, workers: int, *extra: str) -> None:
    procs = [spawn(db, shape, n, out, *extra) for _ in range(workers)]
    for p in procs:
        output, _ = p.communicate(timeout=240)
        assert p.returncode == 0, output


def check_run(db: str, out: Path, n: int, lock: str = "auto") -> None:
    """Exactly once, in dependency order, and no worker left while work remained."""
    markers = sorted(p.name for p in (out / "markers").iterdir())
    assert len(markers) == n  # O_EXCL: a second run would have crashed its worker
    store = Store(db, lock=lock)
    rows = store.task_rows()
    assert {r.state for r in rows} == {S.COMPLETED}
    # Event ids order the audit trail on every backend: a claim's event is written after
    # it saw its dependencies' completions committed. Times must agree.
    started: dict[str, tuple[int, float]] = {}
    completed: dict[str, tuple[int, float]] = {}
    query = select(events.c.id, events.c.task_id, events.c.state, events.c.time)
    with store.read() as conn:
        for e in conn.execute(query.order_by(events.c.id)):
            if e.state == S.RUNNING:
                started[e.task_id] = (e.id, e.time)
            elif e.state == S.COMPLETED:
                completed[e.task_id] = (e.id, e.time)
    store.dispose()
    for r in rows:
        for dep in r.dependencies:
            assert started[r.id] >= completed[dep], f"{r.id} started before {dep} completed"
    exits = [float(p.read_text()) for p in out.glob("exit-*")]
    assert exits and min(exits) >= max(t for _, t in completed.values())


@pytest.mark.slow
def test_four_workers_layered_dag_run_each_task_once(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_workers(db, "layered", 300, tmp_path, 4, "--sleep", "0.002")
    check_run(db, tmp_path, 300)
    workers = {(tmp_path / "markers" / f"t{i}").read_text() for i in range(300)}
    assert len(workers) > 1  # the work was shared


@pytest.mark.slow
def test_four_workers_on_a_chain_wait_instead_of_quitting(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_workers(db, "chain", 100, tmp_path, 4, "--sleep", "0.005")
    check_run(db, tmp_path, 100)


@pytest.mark.slow
def test_killed_worker_task_is_reaped_and_rerun(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    hb = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.0")
    victim = spawn(db, "slow", 1, tmp_path, *hb)
    first = tmp_path / "markers" / "slow.first"
    deadline = time.time() + 60
    while not first.exists():
        assert time.time() < deadline and victim.poll() is None, victim.communicate()[0]
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    rescuer = spawn(db, "slow", 1, tmp_path, *hb)
    output, _ = rescuer.communicate(timeout=60)
    assert rescuer.returncode == 0, output
    assert (tmp_path / "markers" / "slow.done").read_text() == str(rescuer.pid)
    trail = Store(db).history("slow")
    assert [e.state for e in trail] == [
        S.PENDING, S.RUNNING, S.KILLED, S.PENDING, S.RUNNING, S.COMPLETED,
    ]  # fmt: skip
    assert "stopped sending heartbeats" in trail[2].reason
    assert trail[1].worker != trail[4].worker


@pytest.mark.slow
def test_four_workers_in_nfs_safe_mode_run_each_task_once(tmp_path):
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_workers(db, "layered", 300, tmp_path, 4, "--lock", "flufl", "--sleep", "0.002")
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:  # a rollback journal, not WAL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not (tmp_path / "db.sqlite-wal").exists()
    locks = tmp_path / "db.sqlite.locks"
    assert locks.is_dir() and list(locks.iterdir()) == []  # every lock and claim released
    check_run(db, tmp_path, 300, lock="flufl")
    workers = {(tmp_path / "markers" / f"t{i}").read_text() for i in range(300)}
    assert len(workers) > 1


@pytest.mark.slow
def test_sixteen_workers_on_postgresql_random_dag(tmp_path, pg_url):
    n = 5000
    run_workers(pg_url, "random", n, tmp_path, 16)
    check_run(pg_url, tmp_path, n)
    workers = {(tmp_path / "markers" / f"t{i}").read_text() for i in range(n)}
    assert len(workers) > 8  # the work was shared
