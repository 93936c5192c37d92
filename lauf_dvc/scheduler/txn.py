"""Statements that run inside a transaction the caller (:class:`~.store.Store`) opened.

Every task state change goes through :func:`transition`: it checks the state machine,
updates ``WHERE id = :id AND state = :expected`` (raising if no row changed), appends one
event, and keeps the ``waiting`` counters of the dependents exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.engine import Connection

from lauf_dvc.errors import IllegalTransition
from lauf_dvc.resources import Capacity, Usage, demand_of, fit
from lauf_dvc.scheduler.schema import (
    READY_SQL,
    RUNNING_SQL,
    assignments,
    edges,
    events,
    groups,
    hosts,
    tasks,
    workers,
)
from lauf_dvc.states import CLAIMABLE, RETRYABLE, TaskState, check_transition, sql_in
from lauf_dvc.states import WorkerState as W

#: ``Connection.info`` key of the transitions a write transaction made (see Transition).
TRANSITIONS_KEY = "lauf_transitions"
#: How the reason of a failure completed under failure policy "ignore" begins.
IGNORED = "failed, ignored"


@dataclass(frozen=True)
class Transition:
    """One state change, reported to :attr:`Database.listeners` after its commit."""

    task_id: str
    old: TaskState | None
    new: TaskState
    reason: str | None
    worker: str | None
    fingerprint: str | None
    time: float


log = logging.getLogger(__name__)
S = TaskState

#: A time, or a clock read at the moment a row is written (so that a claim that waited
#: for the write lock is stamped after the completion it waited for).
Now = float | Callable[[], float]


def at(now: Now) -> float:
    return now() if callable(now) else now


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


# Hot-path statements are built once: SQLAlchemy then only binds parameters, instead of
# re-coercing and re-hashing a fresh statement object on every call (3x faster per task).
_INSERT_EVENT = insert(events)
_INSERT_ASSIGNMENT = insert(assignments)
_DELETE_ASSIGNMENT = delete(assignments).where(
    assignments.c.task == bindparam("b_task"), assignments.c.worker == bindparam("b_worker")
)
_STATE_OF = select(tasks.c.state).where(tasks.c.id == bindparam("b_id"))
_RUNNING_OF = select(tasks.c.running, tasks.c.state).where(tasks.c.id == bindparam("b_id"))
_DEPENDENTS = select(edges.c.task).where(edges.c.dep == bindparam("b_dep"))
_WAITING = (
    update(tasks)
    .where(tasks.c.id.in_(_DEPENDENTS))
    .values(waiting=tasks.c.waiting - bindparam("b_delta"))
)
# PostgreSQL locks the rows of a multi-row UPDATE in whatever order its plan visits them:
# two completions sharing dependents could each wait for the other (a deadlock, and one
# of them aborted). Locking them in id order (in the same statement) makes every such
# wait one-way. SQLite has one writer at a time, and maybe no UPDATE ... FROM (< 3.33).
_LOCKED_DEPENDENTS = (
    select(tasks.c.id)
    .where(tasks.c.id.in_(_DEPENDENTS))
    .order_by(tasks.c.id)
    .with_for_update()
    .subquery("locked")
)
_WAITING_IN_ORDER = (
    update(tasks)
    .where(tasks.c.id == _LOCKED_DEPENDENTS.c.id)
    .values(waiting=tasks.c.waiting - bindparam("b_delta"))
)
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
_SET_STATE: dict[tuple[bool, tuple[str, ...], tuple[str, ...]], Any] = {}
_EVENT_COLS = ("task_id", "state", "fingerprint", "worker", "time", "reason")


def _set_state(keys: tuple[str, ...], stamp: tuple[str, ...], *, with_event: bool) -> Any:
    """``UPDATE tasks SET state, event_id, reason, updated, *keys, *stamp WHERE id AND
    state``. ``with_event`` (PostgreSQL): the event is inserted by the same statement, in
    a ``WITH ... INSERT ... RETURNING`` (one round trip, not two); else ``b_event_id``
    is the id of the event inserted before."""
    stmt = _SET_STATE.get((with_event, keys, stamp))
    if stmt is None:
        cols = ("state", "reason", "updated", *keys)
        values: dict[str, Any] = {c: bindparam(f"b_{c}") for c in cols}
        stmt = update(tasks).where(
            tasks.c.id == bindparam("b_id"), tasks.c.state == bindparam("b_expected")
        )
        if with_event:
            new = (
                insert(events)
                .values({c: bindparam(f"e_{c}") for c in _EVENT_COLS})
                .returning(events.c.id)
                .cte("new_event")
            )
            event_id: Any = select(new.c.id).scalar_subquery()
            stmt = stmt.add_cte(new)
        else:
            event_id = bindparam("b_event_id")
        values.update(dict.fromkeys(("event_id", *stamp), event_id))
        stmt = stmt.values(values)
        _SET_STATE[(with_event, keys, stamp)] = stmt
    return stmt


def transition(
    conn: Connection,
    task_id: str,
    expected: TaskState,
    new: TaskState,
    *,
    now: Now,
    worker: str | None,
    reason: str | None,
    fingerprint: str | None = None,
    values: dict[str, Any] | None = None,
    stamp: tuple[str, ...] = (),
) -> None:
    """The one way a task changes state: checked, conditional on ``expected``, logged.

    ``values``: more columns to set; ``stamp``: columns to set to the new event's id.
    """
    check_transition(task_id, expected, new)
    now = at(now)
    event = dict(task_id=task_id, state=new.value, fingerprint=fingerprint, worker=worker,
                 time=now, reason=reason)  # fmt: skip
    extra = values or {}
    params = {f"b_{k}": v for k, v in extra.items()}
    params.update(b_id=task_id, b_expected=expected.value, b_state=new.value,
                  b_reason=reason, b_updated=now)  # fmt: skip
    with_event = conn.dialect.name == "postgresql"
    if with_event:
        params.update({f"e_{k}": v for k, v in event.items()})
    else:
        inserted = conn.execute(_INSERT_EVENT, event).inserted_primary_key
        assert inserted is not None
        params["b_event_id"] = inserted[0]
    stmt = _set_state(tuple(sorted(extra)), stamp, with_event=with_event)
    res = conn.execute(stmt, params)
    if res.rowcount != 1:  # (PostgreSQL: the event is rolled back with the transaction)
        actual = conn.execute(_STATE_OF, {"b_id": task_id}).scalar()
        raise IllegalTransition(task_id, actual, new, f"expected it to be {expected}")
    changes = conn.info.get(TRANSITIONS_KEY)
    if changes is not None:
        changes.append(Transition(task_id, expected, new, reason, worker, fingerprint, now))
    delta = int(new == S.COMPLETED) - int(expected == S.COMPLETED)
    if delta:
        waiting = _WAITING_IN_ORDER if conn.dialect.name == "postgresql" else _WAITING
        conn.execute(waiting, {"b_dep": task_id, "b_delta": delta})


# -- claiming ------------------------------------------------------------------------


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
        conn.execute(_INSERT_EVENT, joined)
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


# -- finishing -----------------------------------------------------------------------


def complete(
    conn: Connection,
    task_id: str,
    worker: str,
    *,
    now: Now,
    fingerprint: str | None,
    reason: str | None = None,
    ran: bool = True,
) -> bool:
    """``worker`` finished ``task_id``. False if its claim was lost (it was presumed dead).

    ``ran=False`` records an early cutoff: downstream tasks need not run because of it.
    """
    if not _release(conn, task_id, worker):
        return False
    row = conn.execute(_RUNNING_OF, {"b_id": task_id}).one()
    if row.state != S.RUNNING:  # a co-worker failed it meanwhile
        return True
    if row.running > 1:  # others still on it: the last one out completes it
        conn.execute(
            update(tasks).where(tasks.c.id == task_id).values(running=tasks.c.running - 1, sealed=1)
        )
        return True
    transition(
        conn,
        task_id,
        S.RUNNING,
        S.COMPLETED,
        now=now,
        worker=worker,
        reason=reason,
        fingerprint=fingerprint,
        # a completion ends the run: retry budgets count failures since the last success
        values=dict(
            running=0,
            fingerprint=fingerprint,
            last_fingerprint=fingerprint,
            info=None,
            failed_count=0,
            killed_count=0,
        ),
        stamp=built(ran),
    )
    return True


def built(ran: bool) -> tuple[str, ...]:
    """The columns that stamp a completion with its event id (a clock every database agrees
    on): ``built_at``, and ``changed_at`` too if the task really ran."""
    return ("built_at", "changed_at") if ran else ("built_at",)


def _release(conn: Connection, task_id: str, worker: str) -> bool:
    gone = conn.execute(_DELETE_ASSIGNMENT, {"b_task": task_id, "b_worker": worker})
    if gone.rowcount == 0:
        log.warning(
            "task %s: claim of %s was lost (presumed dead); result dropped", task_id, worker
        )
        return False
    return True


def end_attempt(
    conn: Connection,
    task_id: str,
    holder: str,
    state: TaskState,
    *,
    now: Now,
    reason: str | None,
    worker: str | None,
    budget: int,
    info: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    ignore: bool = False,
) -> bool:
    """``holder`` stops working on a task abnormally: ``state`` is failed or killed.

    Within ``budget`` retries (a task's own ``retries`` wins for failures) the task goes
    back to pending; past it, everything downstream becomes upstream_failed, unless
    ``ignore`` (failure policy "ignore"): then the failed task is completed, its failure
    kept in the audit trail and in ``info``, and its dependents run.
    """
    if not _release(conn, task_id, holder):
        return False
    row = conn.execute(
        select(tasks.c.state, tasks.c.retries, tasks.c.failed_count, tasks.c.killed_count).where(
            tasks.c.id == task_id
        )
    ).one()
    if row.state != S.RUNNING:
        return False
    count_col = "failed_count" if state == S.FAILED else "killed_count"
    count = getattr(row, count_col)
    if state == S.FAILED and row.retries is not None:
        budget = row.retries
    values = {"running": 0, count_col: count + 1, "info": json.dumps(info) if info else None}
    transition(
        conn,
        task_id,
        S.RUNNING,
        state,
        now=now,
        worker=worker,
        reason=reason,
        fingerprint=fingerprint,
        values=values,
    )
    if count < budget:
        retry = f"retry {count + 1} of {budget} after: {reason}"
        transition(conn, task_id, state, S.PENDING, now=now, worker=worker, reason=retry)
    elif ignore and state == S.FAILED:
        transition(conn, task_id, S.FAILED, S.COMPLETED, now=now, worker=worker,
                   reason=f"{IGNORED}: {reason}", stamp=built(ran=False))  # fmt: skip
    else:
        cascade(
            conn,
            task_id,
            S.UPSTREAM_FAILED,
            now=now,
            worker=worker,
            reason=f"upstream {task_id} {state.value}",
            only=CLAIMABLE,
        )
    return True


# -- the graph -----------------------------------------------------------------------

_DOWNSTREAM = text("""
    WITH RECURSIVE down(id, depth) AS (
        SELECT task, 1 FROM lauf_edges WHERE dep = :root
        UNION
        SELECT e.task, d.depth + 1 FROM lauf_edges e JOIN down d ON e.dep = d.id
    )
    SELECT t.id, t.state, min(d.depth) AS depth FROM down d
    JOIN lauf_tasks t ON t.id = d.id GROUP BY t.id, t.state ORDER BY depth, t.id
""")

_HELD_BACK = text(f"""
    WITH RECURSIVE up(id) AS (
        SELECT dep FROM lauf_edges WHERE task = :root
        UNION SELECT e.dep FROM lauf_edges e JOIN up u ON e.task = u.id
    )
    SELECT 1 FROM up JOIN lauf_tasks t ON t.id = up.id
    WHERE {sql_in(RETRYABLE, "t.state")} LIMIT 1
""")


def downstream(conn: Connection, task_id: str) -> list[tuple[str, str]]:
    """Every task downstream of ``task_id`` (transitively) with its state, nearest first."""
    return [(r.id, r.state) for r in conn.execute(_DOWNSTREAM, {"root": task_id})]


def held_back(conn: Connection, task_id: str) -> bool:
    """Does a failed or killed task stand anywhere upstream of ``task_id``?"""
    return conn.execute(_HELD_BACK, {"root": task_id}).first() is not None


def cascade(
    conn: Connection,
    root: str,
    new: TaskState,
    *,
    now: Now,
    worker: str | None,
    reason: str,
    only: Iterable[TaskState],
) -> list[str]:
    """Move every task downstream of ``root`` that is in one of ``only`` to ``new``."""
    allowed = {s.value for s in only}
    hit = []
    if conn.dialect.name == "postgresql":  # lock in id order, as transition() does
        ids = sorted(i for i, state in downstream(conn, root) if state in allowed)
        conn.execute(
            select(tasks.c.id).where(tasks.c.id.in_(ids)).order_by(tasks.c.id).with_for_update()
        ).all()
    for task_id, state in downstream(conn, root):
        if state in allowed:
            transition(conn, task_id, S(state), new, now=now, worker=worker, reason=reason)
            hit.append(task_id)
    return hit


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
