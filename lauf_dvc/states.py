"""Task states and the transitions allowed between them: the whole state machine, in one place.

States are stored as their lowercase string values; never rename one.

::

    pending ──claim──> running ──> completed ──(fingerprint changed)──> invalidated
       ^                  │  └──> failed ──(retry / reset)──┐              │
       │                  └─────> killed ──(retry / reset)──┤              │
       └────────────────────────────────────────────────────┘   (claimable again)
    pending | invalidated ──(a dependency failed for good)──> upstream_failed ──(reset)──> pending
    failed ──(for good, failure_policy "ignore": its dependents run anyway)──> completed
"""

from __future__ import annotations

import enum

from lauf_dvc.errors import IllegalTransition


class TaskState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    INVALIDATED = "invalidated"
    UPSTREAM_FAILED = "upstream_failed"


S = TaskState

#: Every allowed (from, to) pair. ``None`` as origin is a task's creation.
TRANSITIONS: frozenset[tuple[TaskState | None, TaskState]] = frozenset(
    {
        (None, S.PENDING),
        (None, S.COMPLETED),  # adopted as already done (e.g. DVC says the stage is up to date)
        (S.PENDING, S.RUNNING),
        (S.INVALIDATED, S.RUNNING),
        (S.RUNNING, S.COMPLETED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.KILLED),
        (S.COMPLETED, S.INVALIDATED),
        (S.PENDING, S.UPSTREAM_FAILED),
        (S.INVALIDATED, S.UPSTREAM_FAILED),
        (S.FAILED, S.PENDING),  # automatic retry within the budget, or reset
        (S.KILLED, S.PENDING),
        (S.UPSTREAM_FAILED, S.PENDING),  # the failed upstream was reset
        (S.PENDING, S.COMPLETED),  # adopted: found up to date without running (e.g. `dvc repro -s`)
        (S.INVALIDATED, S.COMPLETED),  # adopted: fingerprint back to the last completed one
        (S.FAILED, S.COMPLETED),  # failed for good under failure_policy "ignore": counts as done
    }
)

#: States a worker may claim (given every dependency is completed).
CLAIMABLE: frozenset[TaskState] = frozenset({S.PENDING, S.INVALIDATED})
#: States a new run (or ``lauf-dvc reset``) puts back to pending: the task's own failure.
RETRYABLE: frozenset[TaskState] = frozenset({S.FAILED, S.KILLED})


def sql_in(states: frozenset[TaskState] | set[TaskState], column: str = "state") -> str:
    """An SQL predicate on ``column`` for these states, for partial indexes and raw SQL
    (always the same text for the same set: the states in declaration order; one state
    as ``=``, so the partial indexes of existing databases still match)."""
    values = [s.value for s in TaskState if s in states]
    if len(values) == 1:
        return f"{column} = '{values[0]}'"
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class WorkerState(enum.StrEnum):
    """A worker's row: ``alive`` while it heartbeats, ``offline`` once it stopped
    cleanly, ``dead`` once another worker reaped it (its heartbeat expired, or its
    process is gone). Stored as these strings; never rename one."""

    ALIVE = "alive"
    OFFLINE = "offline"
    DEAD = "dead"


def check_transition(task_id: str, current: TaskState | None, new: TaskState) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> new`` is allowed."""
    if (current, new) not in TRANSITIONS:
        raise IllegalTransition(task_id, current, new, "not allowed by the state machine")
