"""Table definitions (SQLAlchemy Core). Queries live in :mod:`lauf_dvc.scheduler.store`.

The current state of a task is a column, never derived from the event history.
``waiting`` counts the dependencies that are not completed; it is kept exact by the
transition function so that "ready" is an indexed predicate (``waiting = 0``) and a
claim never looks at dependencies.
"""

from __future__ import annotations

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

#: Bump when a table changes; a database of another version is refused with a clear error.
SCHEMA_VERSION = 1

#: The ready predicate, written literally: SQLite uses a partial index only when the
#: query repeats the index's WHERE terms with literal values.
READY_SQL = "state IN ('pending', 'invalidated') AND waiting = 0 AND active = 1"
TODO_SQL = "state IN ('pending', 'invalidated') AND active = 1"
FAILED_SQL = "state IN ('failed', 'killed') AND active = 1"

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
Index(
    "ix_tasks_ready",
    tasks.c.requirements,
    tasks.c.priority.desc(),
    tasks.c.seq,
    sqlite_where=text(READY_SQL),
    postgresql_where=text(READY_SQL),
)
# No plain index on ``state``: SQLite would prefer it to the partial indexes and sort.
Index(
    "ix_tasks_todo",
    tasks.c.requirements,
    sqlite_where=text(TODO_SQL),
    postgresql_where=text(TODO_SQL),
)
Index(
    "ix_tasks_running",
    tasks.c.seq,
    sqlite_where=text("state = 'running'"),
    postgresql_where=text("state = 'running'"),
)
Index(
    "ix_tasks_failed",
    tasks.c.seq,
    sqlite_where=text(FAILED_SQL),
    postgresql_where=text(FAILED_SQL),
)
Index(
    "ix_tasks_joinable",
    tasks.c.priority.desc(),
    tasks.c.seq,
    sqlite_where=text("state = 'running' AND max_workers > 1"),
    postgresql_where=text("state = 'running' AND max_workers > 1"),
)

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
)
Index("ix_workers_alive", workers.c.state, workers.c.expires)

assignments = Table(
    "lauf_assignments",
    metadata,
    Column("task", String, ForeignKey("lauf_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("worker", String, ForeignKey("lauf_workers.id"), primary_key=True),
    Column("since", Float, nullable=False),
)
Index("ix_assignments_worker", assignments.c.worker)

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
