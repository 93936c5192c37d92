"""The stored graph made equal to the tasks given (inside a transaction the caller,
:class:`~.store.Store`, opened): tasks added, retired or changed, their edges and
groups, and the ``waiting`` counts recomputed when the shape of the graph changed.
Idempotent, safe for many workers at once; the graph's digest is kept so that the usual
call (nothing changed) is one read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from lauf_dvc.resources import demand_of
from lauf_dvc.scheduler.schema import edges, events, groups, meta, tasks
from lauf_dvc.scheduler.transitions import TRANSITIONS_KEY, Now, Transition, at
from lauf_dvc.states import TaskState

S = TaskState
_DIGEST = select(meta.c.value).where(meta.c.key == "graph_hash")


@dataclass(frozen=True)
class TaskSpec:
    """What the store keeps of a task: its place in the graph and scheduling hints."""

    id: str
    dependencies: tuple[str, ...] = ()
    requirements: str = ""  # canonical: sorted labels joined by ","
    max_workers: int = 1
    priority: int = 0
    retries: int | None = None
    shape: str = ""  # what it holds while running (resources.Demand.shape)


def graph_hash(specs: Sequence[TaskSpec], limits: Mapping[str, int] | None = None) -> str:
    h = hashlib.sha256()
    for s in sorted(specs, key=lambda s: s.id):
        key = (s.id, sorted(s.dependencies), s.requirements, s.max_workers, s.priority, s.retries)
        h.update(repr(key + ((s.shape,) if s.shape else ())).encode())
    if limits:
        h.update(repr(sorted(limits.items())).encode())
    return h.hexdigest()


def stored_digest(conn: Connection) -> str | None:
    """The :func:`graph_hash` of the graph last stored."""
    return conn.execute(_DIGEST).scalar()


def record_digest(conn: Connection, digest: str) -> None:
    conn.execute(delete(meta).where(meta.c.key == "graph_hash"))
    conn.execute(insert(meta).values(key="graph_hash", value=digest))


def sync_graph(
    conn: Connection,
    specs: Sequence[TaskSpec],
    *,
    now: Now,
    worker: str | None,
    limits: Mapping[str, int] | None = None,
) -> bool:
    """Make the active graph equal to ``specs``. True if anything changed.

    Tasks not in ``specs`` are deactivated, not deleted: their history stays, and they
    come back as they were if a later graph names them again. ``limits``: how many tasks
    of each group may run at once (a group named by a task but not here: 1).
    """
    cols = (tasks.c.id, tasks.c.active, tasks.c.requirements, tasks.c.max_workers,
            tasks.c.priority, tasks.c.retries, tasks.c.shape)  # fmt: skip
    existing = {r.id: r for r in conn.execute(select(*cols))}
    wanted = {s.id for s in specs}
    retired = [i for i, r in existing.items() if i not in wanted and r.active]
    new = [s for s in specs if s.id not in existing]
    _insert_tasks(conn, new, now=now, worker=worker)
    for s in specs:
        r = existing.get(s.id)
        hints = (1, s.requirements, s.max_workers, s.priority, s.retries, s.shape)
        if r is not None and tuple(r)[1:] != hints:
            conn.execute(
                update(tasks)
                .where(tasks.c.id == s.id)
                .values(active=1, requirements=s.requirements, max_workers=s.max_workers,
                        priority=s.priority, retries=s.retries, shape=s.shape,
                        grp=demand_of(s.shape).group)
            )  # fmt: skip
    if retired:
        conn.execute(update(tasks).where(tasks.c.id.in_(retired)).values(active=0))
    _sync_groups(conn, specs, limits or {})
    edges_changed = _sync_edges(conn, specs)
    changed = bool(new or retired or edges_changed)
    if changed:
        _recount_waiting(conn)
    return changed


def _sync_groups(conn: Connection, specs: Sequence[TaskSpec], limits: Mapping[str, int]) -> None:
    named = {g for g in (demand_of(s.shape).group for s in specs) if g} | set(limits)
    have = dict(conn.execute(select(groups.c.name, groups.c.limit)).all())
    for name in sorted(named):
        limit = int(limits.get(name, 1))
        if name not in have:
            conn.execute(insert(groups).values(name=name, limit=limit))
        elif have[name] != limit:
            conn.execute(update(groups).where(groups.c.name == name).values(limit=limit))


def _insert_tasks(
    conn: Connection, new: Sequence[TaskSpec], *, now: Now, worker: str | None
) -> None:
    if not new:
        return
    now = at(now)
    seq0 = conn.execute(select(func.coalesce(func.max(tasks.c.seq), 0))).scalar_one()
    rows = [
        dict(
            id=s.id,
            seq=seq0 + i + 1,
            active=1,
            state=S.PENDING.value,
            waiting=0,
            requirements=s.requirements,
            shape=s.shape,
            grp=demand_of(s.shape).group,
            max_workers=s.max_workers,
            priority=s.priority,
            retries=s.retries,
            running=0,
            sealed=0,
            failed_count=0,
            killed_count=0,
            reason="new task",
            updated=now,
        )
        for i, s in enumerate(new)
    ]
    conn.execute(insert(tasks), rows)
    changes = conn.info.get(TRANSITIONS_KEY)
    if changes is not None:
        changes += [Transition(s.id, None, S.PENDING, "new task", worker, None, now) for s in new]
    conn.execute(
        insert(events),
        [
            dict(task_id=s.id, state=S.PENDING.value, worker=worker, time=now, reason="new task")
            for s in new
        ],
    )
    latest = select(func.max(events.c.id)).where(events.c.task_id == tasks.c.id)
    conn.execute(
        update(tasks).where(tasks.c.event_id.is_(None)).values(event_id=latest.scalar_subquery())
    )


def _sync_edges(conn: Connection, specs: Sequence[TaskSpec]) -> bool:
    """Replace the dependencies of the tasks in ``specs`` (others keep theirs)."""
    ids = [s.id for s in specs]
    have = {tuple(r) for r in conn.execute(select(edges.c.task, edges.c.dep))}
    have = {e for e in have if e[0] in set(ids)}
    want = {(s.id, d) for s in specs for d in s.dependencies}
    for task_id, dep in have - want:
        conn.execute(delete(edges).where(edges.c.task == task_id, edges.c.dep == dep))
    add = sorted(want - have)
    if add:
        conn.execute(insert(edges), [dict(task=t, dep=d) for t, d in add])
    return bool(add) or bool(have - want)


def _recount_waiting(conn: Connection) -> None:
    dep = tasks.alias("dep")
    count = (
        select(func.count())
        .select_from(edges.join(dep, dep.c.id == edges.c.dep))
        .where(edges.c.task == tasks.c.id, dep.c.state != S.COMPLETED.value)
        .scalar_subquery()
    )
    conn.execute(update(tasks).values(waiting=count))
