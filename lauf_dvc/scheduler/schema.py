"""Table definitions (SQLAlchemy Core). Queries live in :mod:`.store`, :mod:`.claims`,
:mod:`.transitions` and :mod:`.graphsync`.

The current state of a task is a column, never derived from the event history.
``waiting`` counts the dependencies that are not completed; it is kept exact by the
transition function so that "ready" is an indexed predicate (``waiting = 0``) and a
claim never looks at dependencies.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from lauf_dvc.states import CLAIMABLE, RETRYABLE, TaskState, sql_in

#: Bump when a table changes; a database of another version is refused with a clear error.
SCHEMA_VERSION = 2
#: Versions :func:`~lauf_dvc.scheduler.database.Database` upgrades in place (their
#: statements are in :data:`MIGRATIONS`); an older or newer one is refused.
MIGRATIONS = {
    1: [  # 1 -> 2: resources (shape, group, devices, capacity, hosts, groups)
        "ALTER TABLE lauf_tasks ADD COLUMN shape VARCHAR DEFAULT '' NOT NULL",
        "ALTER TABLE lauf_tasks ADD COLUMN grp VARCHAR",
        "ALTER TABLE lauf_assignments ADD COLUMN devices TEXT",
        "ALTER TABLE lauf_workers ADD COLUMN capacity TEXT",
        "ALTER TABLE lauf_workers ADD COLUMN pool VARCHAR",
        "DROP INDEX ix_tasks_ready",
    ],
}

#: The ready predicate, written literally: SQLite uses a partial index only when the
#: query repeats the index's WHERE terms with literal values.
READY_SQL = f"{sql_in(CLAIMABLE)} AND waiting = 0 AND active = 1"
TODO_SQL = f"{sql_in(CLAIMABLE)} AND active = 1"
FAILED_SQL = f"{sql_in(RETRYABLE)} AND active = 1"
RUNNING_SQL = sql_in({TaskState.RUNNING})

metadata = MetaData()

meta = Table(
    "lauf_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

tasks = Table(
    "lauf_tasks",
    metadata,
    Column("id", String, primary_key=True),
    Column("seq", Integer, nullable=False),  # insertion order: FIFO among equal priorities
    Column("state", String(16), nullable=False),
    Column("active", Integer, nullable=False),  # 0: not in the current graph (kept for history)
    Column("waiting", Integer, nullable=False),  # dependencies not completed
    Column("requirements", String, nullable=False),  # sorted, comma-joined labels
    # what it holds while running (resources.Demand.shape; "": one core), and its group
    Column("shape", String, nullable=False, server_default=""),
    Column("grp", String),
    Column("max_workers", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("retries", Integer),  # per-task failed-retry budget; NULL = the worker's setting
    Column("running", Integer, nullable=False),  # workers currently on it
    Column("sealed", Integer, nullable=False),  # 1 once a worker finished it: nobody joins
    Column("fingerprint", Text),  # evaluated at the latest claim
    Column("last_fingerprint", Text),  # the one it last completed with
    Column("built_at", Integer),  # event id of its last completion (ran or cut off)
    Column("changed_at", Integer),  # event id of the last completion where it really ran
    Column("failed_count", Integer, nullable=False),
    Column("killed_count", Integer, nullable=False),
    Column("reason", Text),  # why it is in its current state
    Column("info", Text),  # JSON details of the current state (exit code, log tail, ...)
    Column("updated", Float, nullable=False),
    Column("event_id", Integer, ForeignKey("lauf_events.id", use_alter=True, name="fk_task_event")),
)
# The partial indexes of ``tasks``, built for the dialects in use (see :func:`partial_indexes`).
# No plain index on ``state``: SQLite would prefer it to the partial indexes and sort.
_PARTIAL: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("ix_tasks_ready", ("requirements", "shape", "-priority", "seq"), READY_SQL),
    ("ix_tasks_todo", ("requirements",), TODO_SQL),
    ("ix_tasks_running", ("seq",), RUNNING_SQL),
    ("ix_tasks_failed", ("seq",), FAILED_SQL),
    ("ix_tasks_joinable", ("-priority", "seq"), f"{RUNNING_SQL} AND max_workers > 1"),
)
_partial_for: set[str] = set()
_partial_lock = threading.Lock()


def partial_indexes(dialect: str) -> None:
    """Attach the partial indexes to ``tasks`` with their ``WHERE`` for ``dialect`` (and
    every dialect asked for before), before anything creates them.

    Built on demand, not at import: a ``postgresql_where`` makes SQLAlchemy import its
    PostgreSQL dialect with every driver module (asyncpg and asyncio among them, about
    0.1 s), which a SQLite user's every command would pay at start-up."""
    with _partial_lock:
        if dialect in _partial_for:
            return
        _partial_for.add(dialect)
        for index in [i for i in tasks.indexes if i.name in {p[0] for p in _PARTIAL}]:
            tasks.indexes.discard(index)
        for name, columns, where in _PARTIAL:
            exprs = [tasks.c[c[1:]].desc() if c[0] == "-" else tasks.c[c] for c in columns]
            wheres: dict[str, Any] = {f"{d}_where": text(where) for d in sorted(_partial_for)}
            Index(name, *exprs, **wheres)


edges = Table(
    "lauf_edges",
    metadata,
    Column("task", String, ForeignKey("lauf_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("dep", String, ForeignKey("lauf_tasks.id", ondelete="CASCADE"), primary_key=True),
)
Index("ix_edges_dep", edges.c.dep, edges.c.task)

workers = Table(
    "lauf_workers",
    metadata,
    Column("id", String, primary_key=True),
    Column("host", String, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("labels", String, nullable=False),
    Column("state", String(16), nullable=False),  # alive | offline | dead
    Column("started", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("expires", Float, nullable=False),  # heartbeat + the worker's own timeout
    Column("capacity", Text),  # its host's, as it sees it (resources.Capacity.to_json)
    # whose capacity it shares: its host, or its SLURM job's allocation on that host
    Column("pool", String),
)
Index("ix_workers_alive", workers.c.state, workers.c.expires)

assignments = Table(
    "lauf_assignments",
    metadata,
    Column("task", String, ForeignKey("lauf_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("worker", String, ForeignKey("lauf_workers.id"), primary_key=True),
    Column("since", Float, nullable=False),
    Column("devices", Text),  # the GPU ids it holds, comma-joined
)
Index("ix_assignments_worker", assignments.c.worker)

# One row per capacity pool (a host, or a SLURM job's allocation on it): a claim that
# counts a pool's free capacity locks its row first (PostgreSQL), so two workers of one
# host never both take the last GPU.
hosts = Table("lauf_hosts", metadata, Column("host", String, primary_key=True))

# Concurrency groups: at most ``limit`` tasks of a group run at once, across all hosts.
groups = Table(
    "lauf_groups",
    metadata,
    Column("name", String, primary_key=True),
    Column("limit", Integer, nullable=False),
)

events = Table(
    "lauf_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String, ForeignKey("lauf_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("state", String(16), nullable=False),
    Column("fingerprint", Text),
    Column("worker", String),
    Column("time", Float, nullable=False),
    Column("reason", Text),
)
Index("ix_events_task", events.c.task_id, events.c.id)
