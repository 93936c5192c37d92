"""Task state changes, inside a transaction the caller (:class:`~.store.Store`) opened.

Every task state change goes through :func:`transition`: it checks the state machine,
updates ``WHERE id = :id AND state = :expected`` (raising if no row changed), appends one
event, and keeps the ``waiting`` counters of the dependents exact. Around it: how an
attempt ends (:func:`complete`, :func:`end_attempt`), what follows downstream
(:func:`cascade`), a staleness decision applied (:func:`apply_decision`), failures
reset (:func:`reset`) and dead workers' attempts ended (:func:`reap`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.engine import Connection

from lauf_dvc.errors import IllegalTransition
from lauf_dvc.scheduler.schema import FAILED_SQL, assignments, edges, events, tasks, workers
from lauf_dvc.scheduler.staleness import Decision
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


# Hot-path statements are built once: SQLAlchemy then only binds parameters, instead of
# re-coercing and re-hashing a fresh statement object on every call (3x faster per task).
_INSERT_EVENT = insert(events)
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
    if not release(conn, task_id, worker):
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


def release(conn: Connection, task_id: str, worker: str) -> bool:
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
    if not release(conn, task_id, holder):
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


# -- downstream ----------------------------------------------------------------------

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


# -- decisions, resets, the dead ---------------------------------------------------------


@dataclass
class Applied:
    """What :meth:`Store.apply_decision` changed."""

    invalidated: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)


def apply_decision(
    conn: Connection, decision: Decision, *, now: Now, worker: str | None
) -> Applied:
    """Carry out a :func:`~lauf_dvc.scheduler.staleness.decide`.

    Each change is made only if the task is still as the decision saw it (completed
    with the last fingerprint it read; waiting, for an adoption; completed without a
    fingerprint, for a baseline), so two workers syncing at once agree.
    """
    done = Applied()
    for task_id, (seen, current, reason) in sorted(decision.invalidate.items()):
        row = conn.execute(
            select(tasks.c.state, tasks.c.last_fingerprint).where(tasks.c.id == task_id)
        ).first()
        if row is None or row.state != S.COMPLETED or row.last_fingerprint != seen:
            continue
        forget = {"last_fingerprint": None, "built_at": None} if decision.forget else None
        transition(conn, task_id, S.COMPLETED, S.INVALIDATED, now=now, worker=worker,
                   reason=reason, fingerprint=current, values=forget)  # fmt: skip
        done.invalidated.append(task_id)
    for root in list(done.invalidated):
        done.invalidated += cascade(
            conn, root, S.INVALIDATED, now=now, worker=worker,
            reason=f"upstream {root} invalidated", only=[S.COMPLETED],
        )  # fmt: skip
    for task_id, (fingerprint, reason) in sorted(decision.adopt.items()):
        state = conn.execute(select(tasks.c.state).where(tasks.c.id == task_id)).scalar()
        if state not in CLAIMABLE:
            continue
        transition(conn, task_id, S(state), S.COMPLETED, now=now, worker=worker,
                   reason=reason, fingerprint=fingerprint,
                   values=dict(fingerprint=fingerprint, last_fingerprint=fingerprint),
                   stamp=built(ran=False))  # fmt: skip
        done.adopted.append(task_id)
    if decision.baselines:
        conn.execute(
            update(tasks)
            .where(tasks.c.id == bindparam("tid"), tasks.c.state == S.COMPLETED.value,
                   tasks.c.last_fingerprint.is_(None))
            .values(last_fingerprint=bindparam("fp")),
            [{"tid": k, "fp": v} for k, v in sorted(decision.baselines.items())],
        )  # fmt: skip
    return done


def reset(
    conn: Connection,
    task_ids: Sequence[str] | None,
    *,
    now: Now,
    worker: str | None,
    reason: str,
) -> list[str]:
    """Failed/killed tasks (all, or those named) back to pending with fresh retry
    budgets, and the upstream_failed tasks they held back unless another failure still
    does. Returns the ids that became pending."""
    q = select(tasks.c.id, tasks.c.state).where(text(FAILED_SQL)).order_by(tasks.c.seq)
    if task_ids is not None:
        q = q.where(tasks.c.id.in_(list(task_ids)))
    done: list[str] = []
    for row in conn.execute(q).all():
        transition(conn, row.id, S(row.state), S.PENDING, now=now, worker=worker,
                   reason=reason, values=dict(failed_count=0, killed_count=0))  # fmt: skip
        done.append(row.id)
        for task_id, state in downstream(conn, row.id):
            if state == S.UPSTREAM_FAILED and not held_back(conn, task_id):
                transition(conn, task_id, S.UPSTREAM_FAILED, S.PENDING, now=now,
                           worker=worker, reason=f"{reason} (upstream {row.id})")  # fmt: skip
                done.append(task_id)
    return done


def reap(
    conn: Connection, expired: Any, *, now: Now, reaper: str | None, max_killed_retries: int
) -> list[str]:
    """Declare the workers that ``expired`` (a query of worker ids) selects dead; their
    attempts end killed (pending again within ``max_killed_retries``). Returns the
    killed task ids."""
    killed: list[str] = []
    for gone in conn.execute(expired).scalars().all():
        conn.execute(update(workers).where(workers.c.id == gone).values(state=W.DEAD))
        held = select(assignments.c.task).where(assignments.c.worker == gone)
        for task_id in conn.execute(held).scalars().all():
            reason = f"worker {gone} stopped sending heartbeats"
            if end_attempt(conn, task_id, gone, S.KILLED, now=now, reason=reason,
                           worker=reaper, budget=max_killed_retries):  # fmt: skip
                killed.append(task_id)
    return killed
