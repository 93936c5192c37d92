"""Claims: which ready task a worker takes, within its host's free resources, and
whether a worker with nothing to take should wait (inside a transaction the caller,
:class:`~.store.Store`, opened).

A claim is index seeks only: one ready query per requirement key and shape (the partial
index of ready tasks is ordered by priority), the host's usage counted from the
assignments of its pool's workers, and on PostgreSQL the host's and groups' rows locked
so that concurrent claims of one host count one after the other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection

from lauf_dvc.resources import Capacity, Usage, demand_of, fit, never_fits
from lauf_dvc.scheduler.schema import (
    READY_SQL,
    RUNNING_SQL,
    TODO_SQL,
    assignments,
    edges,
    events,
    groups,
    hosts,
    tasks,
    workers,
)
from lauf_dvc.scheduler.transitions import Now, at, transition
from lauf_dvc.states import TaskState
from lauf_dvc.states import WorkerState as W

S = TaskState


@dataclass(frozen=True)
class Claimed:
    """A task a worker now holds. ``previous`` tells a fresh claim from a re-run."""

    id: str
    previous: TaskState
    last_fingerprint: str | None
    joined: bool = False  # another worker already runs it (max_workers > 1)
    inputs_unchanged: bool = False  # re-run, and no dependency ran since it last completed
    shape: str = ""  # what it holds (resources.demand_of), and the GPU ids it got:
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Room:
    """What a claim may take: tasks of these ``shapes`` (the ones that can ever fit the
    worker's host), and, with a ``capacity``, only those that fit what ``host`` (the
    capacity pool: a host, or a SLURM job's allocation on it) has free now. The default
    (one core each, nothing counted) is a worker of the core alone."""

    shapes: tuple[str, ...] = ("",)
    host: str | None = None
    capacity: Capacity | None = None

    @property
    def counted(self) -> bool:
        """Must a claim count the host's usage? Not when every shape is the default one
        core on detected cores: a host runs one such task per idle worker, always."""
        if self.capacity is None or self.host is None:
            return False
        return self.capacity.cpus_declared or any(s != "" for s in self.shapes)


def requirements_key(labels: Iterable[str]) -> str:
    """The canonical stored form of a set of labels."""
    return ",".join(sorted(set(labels)))


def labels_of(key: str) -> frozenset[str]:
    """The labels of a stored requirement key."""
    return frozenset(filter(None, key.split(",")))


_INSERT_ASSIGNMENT = insert(assignments)
_INSERT_JOINED = insert(events)
_COLS = (
    tasks.c.id,
    tasks.c.state,
    tasks.c.last_fingerprint,
    tasks.c.priority,
    tasks.c.seq,
    tasks.c.shape,
)
_ORDER = (tasks.c.priority.desc(), tasks.c.seq)
# The ready query repeats the partial index's predicate literally so SQLite uses it: one
# index seek, already in priority order, whatever the number of tasks.
_READY = (
    select(*_COLS)
    .where(
        text(READY_SQL),
        tasks.c.requirements == bindparam("b_key"),
        tasks.c.shape == bindparam("b_shape"),
    )
    .order_by(*_ORDER)
    .limit(1)
)
_JOINABLE = (
    select(*_COLS)
    .where(
        text(f"{RUNNING_SQL} AND max_workers > 1"),
        tasks.c.sealed == 0,
        tasks.c.running < tasks.c.max_workers,
        tasks.c.requirements.in_(bindparam("b_keys", expanding=True)),
    )
    .order_by(*_ORDER)
    .limit(8)
)


def candidates(
    allowed: Sequence[str], join: bool, *, shapes: Sequence[str] = ("",), lock: bool = False
) -> list[Any]:
    """``(query, params)`` for the next task to run: tasks to join first, then ready ones,
    one ready query (an index seek) per requirement key and shape. ``lock``: PostgreSQL
    row locks, skipping locked."""
    ready = _READY.with_for_update(skip_locked=True) if lock else _READY
    out: list[tuple[Any, dict[str, Any]]] = [
        (ready, {"b_key": key, "b_shape": shape}) for key in allowed for shape in shapes
    ]
    if join:
        joinable = _JOINABLE.with_for_update(skip_locked=True) if lock else _JOINABLE
        out.insert(0, (joinable, {"b_keys": list(allowed)}))
    return out


def claim(
    conn: Connection,
    worker: str,
    *,
    allowed: Sequence[str],
    now: Now,
    join: bool,
    room: Room | None = None,
) -> Claimed | None:
    lock = conn.dialect.name == "postgresql"
    fitting = free_shapes(conn, room or Room(), lock=lock)
    if not fitting:
        return None
    rows: list[Any] = []
    for q, params in candidates(allowed, join, shapes=list(fitting), lock=lock):
        rows += conn.execute(q, params).all()
    # Joinable (running) tasks first, then by priority, then first come first served.
    rows.sort(key=lambda r: (r.state != S.RUNNING, -r.priority, r.seq))
    for row in rows:
        if row.shape not in fitting:  # a task to join that does not fit
            continue
        devices = fitting[row.shape]
        if _take(conn, row, worker, now, devices):
            unchanged = row.state == S.INVALIDATED and not _inputs_changed(conn, row.id)
            return Claimed(row.id, S(row.state), row.last_fingerprint, row.state == S.RUNNING,
                           unchanged, row.shape, devices)  # fmt: skip
    return None


_HOST_LOCK = select(hosts.c.host).where(hosts.c.host == bindparam("b_host")).with_for_update()
_HOST_USAGE = (
    select(tasks.c.shape, assignments.c.devices)
    .select_from(
        assignments.join(workers, workers.c.id == assignments.c.worker).join(
            tasks, tasks.c.id == assignments.c.task
        )
    )
    .where(workers.c.pool == bindparam("b_host"))
)
_HOST_WORKERS = select(func.count()).where(
    workers.c.pool == bindparam("b_host"), workers.c.state == W.ALIVE
)
_GROUP_LIMITS = (
    select(groups.c.name, groups.c.limit)
    .where(groups.c.name.in_(bindparam("b_names", expanding=True)))
    .order_by(groups.c.name)
)
_GROUP_RUNNING = (
    select(tasks.c.grp, func.count())
    .where(text(RUNNING_SQL), tasks.c.grp.in_(bindparam("b_names", expanding=True)))
    .group_by(tasks.c.grp)
)


def free_shapes(conn: Connection, room: Room, *, lock: bool) -> dict[str, tuple[str, ...]]:
    """The shapes of ``room`` a claim may take now, each with the GPU ids it would get:
    those that fit what the host has free and whose group is below its limit. ``lock``
    (PostgreSQL): lock the host's row, then the groups' (in name order: no deadlock),
    so that concurrent claims count one after the other."""
    if not room.counted:
        return {shape: () for shape in room.shapes}
    assert room.host is not None and room.capacity is not None
    names = sorted({g for g in (demand_of(s).group for s in room.shapes) if g})
    if lock:
        conn.execute(_HOST_LOCK, {"b_host": room.host})
    limits: dict[str, int] = {}
    running: dict[str, int] = {}
    if names:
        q = _GROUP_LIMITS.with_for_update() if lock else _GROUP_LIMITS
        limits = dict(conn.execute(q, {"b_names": names}).all())
        running = dict(conn.execute(_GROUP_RUNNING, {"b_names": names}).all())
    usage = Usage(workers=conn.execute(_HOST_WORKERS, {"b_host": room.host}).scalar_one())
    for shape, devices in conn.execute(_HOST_USAGE, {"b_host": room.host}):
        usage.add(shape, devices)
    out = {}
    for shape in room.shapes:
        group = demand_of(shape).group
        if group and running.get(group, 0) >= limits.get(group, 1):
            continue
        devices = fit(demand_of(shape), room.capacity, usage)
        if devices is not None:
            out[shape] = devices
    return out


def _inputs_changed(conn: Connection, task_id: str) -> bool:
    """Has any dependency really run since ``task_id`` last completed (or is that unknown)?"""
    me = tasks.alias("me")
    dep = tasks.alias("dep")
    q = (
        select(me.c.id)
        .select_from(me.join(edges, edges.c.task == me.c.id).join(dep, dep.c.id == edges.c.dep))
        .where(
            me.c.id == task_id,
            me.c.built_at.is_(None) | (func.coalesce(dep.c.changed_at, 0) > me.c.built_at),
        )
        .limit(1)
    )
    built = conn.execute(select(tasks.c.built_at).where(tasks.c.id == task_id)).scalar()
    return built is None or conn.execute(q).first() is not None


def _take(conn: Connection, row: Any, worker: str, now: Now, devices: tuple[str, ...] = ()) -> bool:
    now = at(now)
    if row.state == S.RUNNING:  # join a task that allows several workers
        mine = select(assignments.c.task).where(
            assignments.c.task == row.id, assignments.c.worker == worker
        )
        if conn.execute(mine).first() is not None:
            return False
        conn.execute(update(tasks).where(tasks.c.id == row.id).values(running=tasks.c.running + 1))
        joined = dict(task_id=row.id, state=S.RUNNING.value, fingerprint=None, worker=worker,
                      time=now, reason="joined")  # fmt: skip
        conn.execute(_INSERT_JOINED, joined)
    else:
        reason = "re-run" if row.state == S.INVALIDATED else None
        transition(
            conn,
            row.id,
            S(row.state),
            S.RUNNING,
            now=now,
            worker=worker,
            reason=reason,
            values=dict(running=1, sealed=0),
        )
    held = ",".join(devices) or None
    conn.execute(_INSERT_ASSIGNMENT, dict(task=row.id, worker=worker, since=now, devices=held))
    return True


# -- nothing to claim: wait, or leave? ----------------------------------------------------

_RUNNING_ANY = select(tasks.c.id).where(text(RUNNING_SQL)).limit(1)
_TODO_ANY = (
    select(tasks.c.id)
    .where(
        text(TODO_SQL),
        tasks.c.requirements.in_(bindparam("b_keys", expanding=True)),
        tasks.c.shape.in_(bindparam("b_shapes", expanding=True)),
    )
    .limit(1)
)


def any_ready(conn: Connection, allowed: Sequence[str], join: bool, room: Room) -> bool:
    shapes = list(free_shapes(conn, room, lock=False))
    return any(conn.execute(q, p).first() for q, p in candidates(allowed, join, shapes=shapes))


_READY_KEYS = select(tasks.c.requirements, tasks.c.shape).where(text(READY_SQL)).distinct()
_LIVE = select(workers.c.labels, workers.c.pool, workers.c.capacity).where(
    workers.c.state == W.ALIVE, workers.c.expires >= bindparam("b_now")
)


@dataclass(frozen=True)
class LiveWorker:
    labels: frozenset[str]
    host: str  # its capacity pool
    capacity: Capacity | None  # None: registered without one (takes default shapes only)


def live_workers(conn: Connection, now: float) -> list[tuple[LiveWorker, int]]:
    """Each distinct live worker kind, with how many live workers share its host."""
    rows = [
        LiveWorker(labels_of(r.labels), r.pool or "", Capacity.from_json(r.capacity))
        for r in conn.execute(_LIVE, {"b_now": now})
    ]
    per_host = Counter(w.host for w in rows)
    return [(w, per_host[w.host]) for w in set(rows)]


def why_not(key: str, shape: str, live: Sequence[tuple[LiveWorker, int]]) -> str | None:
    """Why no live worker can ever take a task of requirement ``key`` and ``shape``
    (None: one can)."""
    needs = labels_of(key)
    labelled = [(w, n) for w, n in live if needs <= w.labels]
    if not labelled:
        return f"requires label(s) {', '.join(sorted(needs))}" if needs else "no live worker"
    if shape == "":
        return None
    caps = [(w.capacity, n) for w, n in labelled if w.capacity is not None]
    if not caps:
        return f"needs {demand_of(shape).describe()}, and no live worker counts resources"
    return never_fits(demand_of(shape), caps)


def unfinished(conn: Connection, allowed: Sequence[str], now: float, room: Room) -> bool:
    """Is there work this worker must wait for? A task running somewhere, or one it may
    take that waits for others, as long as someone can make progress: with nothing
    running, only a ready task that this worker or another live one may take (by its
    labels and its host's capacity) makes waiting worth it. Else the tasks left can never
    start (they need labels or resources no live worker has, or wait for such tasks):
    nothing is left, say so."""
    if conn.execute(_RUNNING_ANY).first() is not None:
        return True
    todo = {"b_keys": list(allowed), "b_shapes": list(room.shapes)}
    if conn.execute(_TODO_ANY, todo).first() is None:
        return False
    keys = {tuple(r) for r in conn.execute(_READY_KEYS)}
    if any(k in allowed and s in room.shapes for k, s in keys):
        return True  # ready for this worker: another one was just faster to claim it
    live = live_workers(conn, now)
    return any(why_not(key, shape, live) is None for key, shape in keys)
