"""The scheduler database's API: every transaction, SQLite and PostgreSQL alike.

Workers hold no SQL: they call the methods of :class:`Store`; each public method is one
short transaction over a :class:`~.database.Database`. The statements live by role:
:mod:`.claims` (what a worker takes), :mod:`.transitions` (every task state change),
:mod:`.graphsync` (the stored graph); the read-only questions are here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine

from lauf_dvc.errors import StoreError
from lauf_dvc.resources import Capacity
from lauf_dvc.scheduler import claims, graphsync, transitions
from lauf_dvc.scheduler.claims import Claimed, Room, live_workers, requirements_key, why_not
from lauf_dvc.scheduler.database import Database
from lauf_dvc.scheduler.graphsync import TaskSpec, graph_hash
from lauf_dvc.scheduler.schema import (
    FAILED_SQL,
    TODO_SQL,
    assignments,
    edges,
    events,
    hosts,
    tasks,
    workers,
)
from lauf_dvc.scheduler.staleness import Decision
from lauf_dvc.scheduler.transitions import Applied, Now, Transition, at
from lauf_dvc.states import TaskState
from lauf_dvc.states import WorkerState as W

S = TaskState
__all__ = [
    "Applied",
    "Claimed",
    "Event",
    "Room",
    "Store",
    "TaskRow",
    "TaskSpec",
    "graph_hash",
    "requirements_key",
]


@dataclass(frozen=True)
class Event:
    """One row of a task's audit trail."""

    id: int
    task_id: str
    state: TaskState
    fingerprint: str | None
    worker: str | None
    time: float
    reason: str | None


@dataclass(frozen=True)
class TaskRow:
    """A task as stored now."""

    id: str
    state: TaskState
    reason: str | None
    fingerprint: str | None
    last_fingerprint: str | None
    failed_count: int
    killed_count: int
    info: dict[str, Any]
    updated: float
    dependencies: tuple[str, ...]
    event_id: int = 0  # its latest event (a :meth:`Store.changed_rows` cursor)


def _insert_ignoring(conn: Connection, table: Any) -> Any:
    """INSERT that does nothing where the row exists (two workers of a host at once)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


class Store:
    """A handle on one scheduler database. Cheap to create; connects on first use.

    ``lock`` (SQLite: auto | wal | flufl) is how the file is locked, see
    :class:`~lauf_dvc.scheduler.database.Database`; every worker of a database must agree.
    """

    def __init__(
        self,
        url: str,
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        lock: str = "auto",
    ) -> None:
        #: The connections, transactions and schema checks.
        self.db = Database(url, engine=engine, lock=lock)
        self.clock = clock

    # -- the database it holds (for callers that run their own statements) -------------

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def sqlite_lock(self) -> str | None:
        """``wal`` or ``flufl`` for SQLite (None: PostgreSQL)."""
        return self.db.sqlite_lock

    @property
    def listeners(self) -> list[Callable[[Transition], None]]:
        """Called with each :class:`Transition` this process makes, after its commit."""
        return self.db.listeners

    def write(self, *, exclusive: bool = False) -> AbstractContextManager[Connection]:
        return self.db.write(exclusive=exclusive)

    def read(self) -> AbstractContextManager[Connection]:
        return self.db.read()

    def refresh_lock(self) -> None:
        self.db.refresh_lock()

    def dispose(self) -> None:
        self.db.dispose()

    def _now(self, now: float | None) -> Now:
        """An explicit time (tests), else the clock, read when the row is written."""
        return self.clock if now is None else now

    # -- workers -----------------------------------------------------------------------

    def register_worker(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        labels: str,
        timeout: float,
        now: float | None = None,
        capacity: Capacity | None = None,
        pool: str | None = None,
    ) -> None:
        """Add a worker, or revive an offline/dead one; a live one of that id is an error.
        ``capacity``: its host's, as it sees it (None: it counts no resources), shared
        with the workers of the same ``pool`` (default: the host)."""
        pool = pool or host
        now = at(self._now(now))
        values = dict(
            host=host,
            pid=pid,
            labels=labels,
            state=W.ALIVE,
            started=now,
            heartbeat=now,
            expires=now + timeout,
            capacity=capacity.to_json() if capacity is not None else None,
            pool=pool,
        )
        with self.write() as conn:
            if conn.execute(select(hosts.c.host).where(hosts.c.host == pool)).first() is None:
                conn.execute(_insert_ignoring(conn, hosts).values(host=pool))
            row = conn.execute(select(workers.c.state).where(workers.c.id == worker_id)).first()
            if row is None:
                conn.execute(insert(workers).values(id=worker_id, **values))
            elif row.state == W.ALIVE:
                raise StoreError(
                    f"a live worker named {worker_id!r} is already registered: "
                    "give every worker its own identifier"
                )
            else:
                conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))

    def heartbeat(self, worker_id: str, *, timeout: float, now: float | None = None) -> bool:
        """Prove ``worker_id`` alive. False if it was presumed dead and reaped meanwhile."""
        now = at(self._now(now))
        with self.write() as conn:
            res = conn.execute(
                update(workers)
                .where(workers.c.id == worker_id, workers.c.state == W.ALIVE)
                .values(heartbeat=now, expires=now + timeout)
            )
            return res.rowcount == 1

    def alive_on(self, host: str) -> list[tuple[str, int, float]]:
        """``(id, pid, started)`` of the workers registered alive on ``host``."""
        q = select(workers.c.id, workers.c.pid, workers.c.started).where(
            workers.c.state == W.ALIVE, workers.c.host == host
        )
        with self.read() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def alive_workers(self, *, now: float | None = None) -> int:
        """How many workers are alive (registered, heartbeat not expired)."""
        now = at(self._now(now))
        alive = select(func.count()).select_from(workers)
        alive = alive.where(workers.c.state == W.ALIVE, workers.c.expires >= now)
        with self.read() as conn:
            return conn.execute(alive).scalar_one()

    def worker_state(self, worker_id: str) -> str | None:
        """``alive``, ``offline`` (left), ``dead`` (reaped), or None (unknown)."""
        with self.read() as conn:
            return conn.execute(
                select(workers.c.state).where(workers.c.id == worker_id)
            ).scalar_one_or_none()

    def revive_worker(self, worker_id: str, *, timeout: float, now: float | None = None) -> None:
        """A worker presumed dead shows it is not: alive again (its old claims stay lost)."""
        now = at(self._now(now))
        with self.write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(state=W.ALIVE, heartbeat=now, expires=now + timeout)
            )

    def worker_offline(self, worker_id: str, *, now: float | None = None) -> None:
        now = at(self._now(now))
        with self.write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id, workers.c.state == W.ALIVE)
                .values(state=W.OFFLINE, heartbeat=now)
            )

    def reap(
        self,
        *,
        now: float | None = None,
        reaper: str | None,
        max_killed_retries: int,
        dead: Sequence[str] = (),
    ) -> list[str]:
        """Declare workers whose heartbeat expired dead, and those in ``dead`` (known dead
        another way: their process is gone); their running tasks become killed.

        Killed tasks within ``max_killed_retries`` go back to pending. Returns the killed ids.
        """
        now = at(self._now(now))
        expired = select(workers.c.id).where(
            workers.c.state == W.ALIVE,
            (workers.c.expires < now) | workers.c.id.in_(list(dead)),
        )
        with self.read() as conn:  # cheap and indexed: most calls find nothing
            if conn.execute(expired.limit(1)).first() is None:
                return []
        with self.write(exclusive=True) as conn:
            return transitions.reap(conn, expired, now=self._now(now), reaper=reaper,
                                    max_killed_retries=max_killed_retries)  # fmt: skip

    # -- the graph and its tasks ---------------------------------------------------------

    def sync_graph(
        self,
        specs: Sequence[TaskSpec],
        *,
        now: float | None = None,
        worker: str | None,
        limits: Mapping[str, int] | None = None,
    ) -> bool:
        """Make the stored graph equal to ``specs``; idempotent, safe for many workers at once.

        New tasks become pending; tasks no longer in ``specs`` are removed (unless running).
        ``limits``: how many tasks of each group may run at once. True if anything changed.
        """
        digest = graph_hash(specs, limits)
        with self.read() as conn:  # the usual case, and no lock: every worker has it right
            if graphsync.stored_digest(conn) == digest:
                return False
        with self.write(exclusive=True) as conn:
            if graphsync.stored_digest(conn) == digest:
                return False
            changed = graphsync.sync_graph(conn, specs, now=self._now(now), worker=worker,
                                           limits=limits)  # fmt: skip
            graphsync.record_digest(conn, digest)
            return changed

    def claim(
        self,
        worker: str,
        *,
        allowed: Sequence[str],
        now: float | None = None,
        join: bool = False,
        room: Room | None = None,
    ) -> Claimed | None:
        """Take the ready task of highest priority (FIFO among equals) that fits ``room``
        (the host's free capacity, see :class:`~.claims.Room`), or None.

        A read comes first, so idle workers polling an empty queue take no write lock.
        """
        room = room or Room()
        with self.read() as conn:
            if not claims.any_ready(conn, allowed, join, room):
                return None
        with self.write() as conn:
            return claims.claim(conn, worker, allowed=allowed, now=self._now(now), join=join,
                             room=room)  # fmt: skip

    def poll(
        self,
        worker: str,
        *,
        allowed: Sequence[str],
        now: float | None = None,
        join: bool = False,
        room: Room | None = None,
    ) -> Claimed | bool:
        """:meth:`claim`; when nothing is ready, :meth:`has_unfinished` (True: wait, work
        remains; False: nothing left), answered in the same read: an idle worker's poll is
        one short read transaction."""
        room = room or Room()
        with self.read() as conn:
            if not claims.any_ready(conn, allowed, join, room):
                return claims.unfinished(conn, allowed, at(self._now(now)), room)
        with self.write() as conn:
            claimed = claims.claim(conn, worker, allowed=allowed, now=self._now(now), join=join,
                                room=room)  # fmt: skip
        return True if claimed is None else claimed  # None: another worker was faster

    def complete(
        self,
        task_id: str,
        worker: str,
        *,
        now: float | None = None,
        fingerprint: str | None,
        reason: str | None = None,
        ran: bool = True,
    ) -> bool:
        """Record that ``worker`` finished ``task_id`` (``ran=False``: early cutoff).
        False if its claim had been lost."""
        with self.write() as conn:
            return transitions.complete(
                conn,
                task_id,
                worker,
                now=self._now(now),
                fingerprint=fingerprint,
                reason=reason,
                ran=ran,
            )

    def complete_and_claim(
        self,
        task_id: str,
        worker: str,
        *,
        now: float | None = None,
        fingerprint: str | None,
        allowed: Sequence[str],
        join: bool = False,
        ran: bool = True,
        reason: str | None = None,
        room: Room | None = None,
    ) -> tuple[bool, Claimed | None]:
        """:meth:`complete` then :meth:`claim` in one transaction: one commit per task."""
        with self.write() as conn:
            kept = transitions.complete(
                conn,
                task_id,
                worker,
                now=self._now(now),
                fingerprint=fingerprint,
                ran=ran,
                reason=reason,
            )
            nxt = claims.claim(conn, worker, allowed=allowed, now=self._now(now), join=join,
                            room=room)  # fmt: skip
            return kept, nxt

    def fail(
        self,
        task_id: str,
        worker: str,
        *,
        now: float | None = None,
        reason: str,
        budget: int,
        info: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        ignore: bool = False,
    ) -> bool:
        """Record that ``worker`` failed ``task_id``; it is retried while within ``budget``.
        ``ignore``: once out of retries it counts as done (see :func:`.transitions.end_attempt`)."""
        with self.write() as conn:
            return transitions.end_attempt(
                conn,
                task_id,
                worker,
                S.FAILED,
                now=self._now(now),
                reason=reason,
                worker=worker,
                budget=budget,
                info=info,
                fingerprint=fingerprint,
                ignore=ignore,
            )

    def kill(
        self, task_id: str, worker: str, *, now: float | None = None, reason: str, budget: int
    ) -> bool:
        """``worker`` gives ``task_id`` up unfinished (it is being stopped): killed, and
        pending again within ``budget`` killed retries."""
        with self.write() as conn:
            return transitions.end_attempt(conn, task_id, worker, S.KILLED, now=self._now(now),
                             reason=reason, worker=worker, budget=budget)  # fmt: skip

    def completed_fingerprints(self) -> dict[str, str | None]:
        """``{task id: fingerprint it last completed with}`` for every completed task."""
        q = select(tasks.c.id, tasks.c.last_fingerprint).where(
            tasks.c.state == S.COMPLETED.value, tasks.c.active == 1
        )
        with self.read() as conn:
            return {r[0]: r[1] for r in conn.execute(q)}

    def invalidate(
        self,
        changes: dict[str, tuple[str | None, str | None, str]],
        *,
        now: float | None = None,
        worker: str | None,
        forget_fingerprint: bool = False,
    ) -> list[str]:
        """Invalidate completed tasks and, transitively, every completed task downstream.

        ``changes`` maps a task id to ``(last fingerprint seen, current fingerprint, reason)``.
        A task is touched only if it is still completed with that last fingerprint, so two
        workers syncing at once agree. Returns every task id that became invalidated.
        """
        decision = Decision(invalidate=changes, forget=forget_fingerprint)
        return self.apply_decision(decision, now=now, worker=worker).invalidated

    def apply_decision(
        self, decision: Decision, *, now: float | None = None, worker: str | None
    ) -> Applied:
        """Carry out a :func:`~lauf_dvc.scheduler.staleness.decide` in one transaction.

        Each change is made only if the task is still as the decision saw it (completed
        with the last fingerprint it read; waiting, for an adoption; completed without a
        fingerprint, for a baseline), so two workers syncing at once agree.
        """
        if not decision:
            return Applied()
        with self.write(exclusive=True) as conn:
            return transitions.apply_decision(conn, decision, now=self._now(now), worker=worker)

    def force(
        self,
        task_ids: Sequence[str],
        *,
        now: float | None = None,
        worker: str | None,
        reason: str = "forced",
    ) -> list[str]:
        """Invalidate completed tasks so they run again even with an unchanged fingerprint."""
        q = select(tasks.c.id, tasks.c.last_fingerprint).where(
            tasks.c.id.in_(list(task_ids)), tasks.c.state == S.COMPLETED.value
        )
        with self.read() as conn:
            changes: dict[str, tuple[str | None, str | None, str]] = {
                r.id: (r.last_fingerprint, None, reason) for r in conn.execute(q)
            }
        return self.invalidate(changes, now=now, worker=worker, forget_fingerprint=True)

    def reset(
        self,
        task_ids: Sequence[str] | None = None,
        *,
        now: float | None = None,
        worker: str | None = None,
        reason: str = "reset by user",
    ) -> list[str]:
        """Put failed/killed tasks (all, or those named) back to pending with fresh retry
        budgets, and the upstream_failed tasks they held back unless another failure still
        does. Returns the ids that became pending."""
        with self.write(exclusive=True) as conn:
            return transitions.reset(conn, task_ids, now=self._now(now), worker=worker,
                                     reason=reason)  # fmt: skip

    # -- questions -----------------------------------------------------------------------

    def has_unfinished(
        self, allowed: Sequence[str], *, now: float | None = None, room: Room | None = None
    ) -> bool:
        """Is a task running, or waiting to run and claimable with these requirement keys
        and shapes, with a live worker able to start what it waits for (see
        :func:`.claims.unfinished`)?

        Index seeks (partial indexes), whatever the number of tasks.
        """
        with self.read() as conn:
            return claims.unfinished(conn, allowed, at(self._now(now)), room or Room())

    def stuck(self, limit: int = 20) -> list[tuple[str, str]]:
        """Tasks left to run, ``(id, requirement key)``, in graph order (for saying which
        tasks a run left behind because no worker could take them)."""
        return [(task_id, key) for task_id, key, _ in self.left_behind(limit)]

    def left_behind(self, limit: int = 20) -> list[tuple[str, str, str | None]]:
        """:meth:`stuck` with ``why``: what no live worker has (labels, resources) or
        None (it waits for such a task, or a live worker could take it)."""
        q = select(tasks.c.id, tasks.c.requirements, tasks.c.shape).where(text(TODO_SQL))
        with self.read() as conn:
            live = live_workers(conn, at(self._now(None)))
            rows = conn.execute(q.order_by(tasks.c.seq).limit(limit)).all()
        return [(r.id, r.requirements, why_not(r.requirements, r.shape, live)) for r in rows]

    def failed(self, limit: int = 20) -> list[str]:
        """Tasks failed or killed for good (retries are already back to pending)."""
        q = select(tasks.c.id).where(text(FAILED_SQL)).order_by(tasks.c.seq).limit(limit)
        with self.read() as conn:
            return list(conn.execute(q).scalars())

    def counts(self) -> dict[TaskState, int]:
        """How many tasks of the current graph are in each state."""
        q = select(tasks.c.state, func.count()).where(tasks.c.active == 1).group_by(tasks.c.state)
        with self.read() as conn:
            rows = conn.execute(q)
            return {S(state): n for state, n in rows}

    def task_rows(self, *, inactive: bool = False) -> list[TaskRow]:
        """Every task of the current graph (``inactive``: also those no longer in it)."""
        q = select(tasks).order_by(tasks.c.seq)
        if not inactive:
            q = q.where(tasks.c.active == 1)
        with self.read() as conn:
            deps: dict[str, list[str]] = {}
            for t, d in conn.execute(select(edges.c.task, edges.c.dep).order_by(edges.c.dep)):
                deps.setdefault(t, []).append(d)
            rows = conn.execute(q).all()
        return [self._row(r, tuple(deps.get(r.id, ()))) for r in rows]

    @staticmethod
    def _row(r: Any, deps: tuple[str, ...]) -> TaskRow:
        return TaskRow(
            r.id,
            S(r.state),
            r.reason,
            r.fingerprint,
            r.last_fingerprint,
            r.failed_count,
            r.killed_count,
            json.loads(r.info) if r.info else {},
            r.updated,
            deps,
            r.event_id or 0,
        )

    def changed_rows(self, after: int) -> tuple[list[TaskRow], int]:
        """The tasks of the current graph whose state changed after event ``after``, and
        the cursor for the next call: what someone following a run reads each time round
        instead of every row (the cost is the changes, not the pipeline). Without
        dependencies (see :meth:`task_rows`)."""
        q = select(tasks).where(tasks.c.active == 1, tasks.c.event_id > after)
        with self.read() as conn:
            rows = conn.execute(q.order_by(tasks.c.seq)).all()
        found = [self._row(r, ()) for r in rows]
        return found, max((r.event_id for r in found), default=after)

    def reproduced_since(self, since: float) -> list[str]:
        """The tasks of the current graph that really ran (completed with ``ran``) at or
        after ``since``, in the order they completed. One pass over the tasks."""
        q = (
            select(tasks.c.id)
            .select_from(tasks.join(events, events.c.id == tasks.c.changed_at))
            .where(tasks.c.active == 1, events.c.time >= since)
            .order_by(events.c.id)
        )
        with self.read() as conn:
            return list(conn.execute(q).scalars())

    def upstream_ran_since(self, task_id: str, since: float) -> bool:
        """Did a direct dependency of ``task_id`` really run at or after ``since``?"""
        dep = tasks.alias("dep")
        q = (
            select(edges.c.dep)
            .select_from(
                edges.join(dep, dep.c.id == edges.c.dep).join(
                    events, events.c.id == dep.c.changed_at
                )
            )
            .where(edges.c.task == task_id, events.c.time >= since)
            .limit(1)
        )
        with self.read() as conn:
            return conn.execute(q).first() is not None

    def history(self, task_id: str) -> list[Event]:
        q = select(events).where(events.c.task_id == task_id).order_by(events.c.id)
        with self.read() as conn:
            return [
                Event(r.id, r.task_id, S(r.state), r.fingerprint, r.worker, r.time, r.reason)
                for r in conn.execute(q)
            ]

    def run_starts(self) -> dict[str, float]:
        """When each task last started running (the time of its latest ``running`` event).

        With the task's ``updated`` time this gives how long its last run took (or has
        been taking). Tasks whose running events were all pruned are missing.
        """
        q = (
            select(events.c.task_id, func.max(events.c.time))
            .where(events.c.state == S.RUNNING.value)
            .group_by(events.c.task_id)
        )
        with self.read() as conn:
            return {task_id: started for task_id, started in conn.execute(q)}

    def workers(self) -> list[dict[str, Any]]:
        with self.read() as conn:
            held = {
                r[0]: r[1] for r in conn.execute(select(assignments.c.worker, assignments.c.task))
            }
            rows = conn.execute(select(workers).order_by(workers.c.started)).all()
        return [dict(r._mapping, task=held.get(r.id)) for r in rows]

    # -- maintenance ---------------------------------------------------------------------

    def prune_history(self, keep: int) -> int:
        """Delete all but the ``keep`` latest events of each task, never the event that set
        a task's current state (foreign keys stay valid). Returns how many were deleted."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        rank = func.row_number().over(partition_by=events.c.task_id, order_by=events.c.id.desc())
        ranked = select(events.c.id, rank.label("rn")).subquery()
        old = select(ranked.c.id).where(ranked.c.rn > keep)
        current = select(tasks.c.event_id).where(tasks.c.event_id.is_not(None))
        with self.write() as conn:
            res = conn.execute(
                delete(events).where(events.c.id.in_(old), events.c.id.not_in(current))
            )
            return res.rowcount
