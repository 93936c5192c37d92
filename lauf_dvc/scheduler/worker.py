"""One worker: register, sync the graph, claim -> run -> complete, heartbeat, reap the dead.

The worker holds no SQL (that is :mod:`.store`) and knows nothing of DVC. Time comes
from the store's injectable clock, so tests of heartbeats and expiry never sleep.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psutil

from lauf_dvc.config import SchedulerSettings, worker_identifier
from lauf_dvc.errors import ConfigError, FailurePolicyStop, LaufError
from lauf_dvc.resources import (
    Capacity,
    Demand,
    demand_of,
    detect,
    parse_amount,
    pool_name,
    shortfall,
)
from lauf_dvc.scheduler import staleness
from lauf_dvc.scheduler.locks import LockSet
from lauf_dvc.scheduler.staleness import Observed, Stored
from lauf_dvc.scheduler.store import Claimed, Room, Store, TaskSpec, requirements_key
from lauf_dvc.states import TaskState

log = logging.getLogger(__name__)
T = TypeVar("T")

Fingerprint = str | Callable[[], str] | None

#: Idle polling backoff (seconds): start fast so a freed dependency is picked up at once.
MIN_BACKOFF = 0.005
MAX_BACKOFF = 0.2
#: What the idle polls of all workers together may cost, in polls per second, where every
#: poll is not cheap: with ``lock: flufl`` each takes the one lock file every worker shares
#: (a few round trips to an NFS server), and a server takes hundreds of connections.
#: An idle worker's longest pause grows with the number of live workers to keep to it:
#: 36 workers on NFS pause up to 1.8 s (a stage that becomes ready waits that long at
#: most; cluster stages take minutes), 16 or fewer on PostgreSQL are never slowed.
#: None: no limit (SQLite in WAL mode on a local disk: a poll is a 0.1 ms read).
IDLE_POLL_BUDGET: dict[str, float | None] = {"wal": None, "flufl": 20.0, "postgresql": 500.0}
#: Seconds a process may seem to start after it registered (clock granularity, a
#: database clock that is another host's): later, its pid belongs to another process.
PID_CLOCK_SLACK = 5.0


@dataclass(frozen=True)
class Task(Generic[T]):
    """A unit of work in a DAG.

    ``fingerprint`` is a string, or a zero-argument callable evaluated when the task is
    claimed (so it may read files its upstream just wrote); with fingerprints enabled a
    completed task whose fingerprint changed runs again, and so does everything downstream.
    ``retries`` overrides the worker's ``max_failed_retries`` for this task.
    ``resources`` (``{"cpus": 2, "gpus": 1, "mem": "16G", "licence": 1}``) is what it
    holds of its host's capacity while it runs; ``group``: at most the group's limit
    (:class:`Worker` ``groups``; 1 if not given) of its tasks run at once.
    """

    id: str
    data: T | None = None
    dependencies: tuple[str, ...] = ()
    requirements: frozenset[str] = frozenset()
    fingerprint: Fingerprint = field(default=None, compare=False)
    max_workers: int = 1
    priority: int = 0
    retries: int | None = None
    resources: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    group: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dependencies", tuple(sorted(set(self.dependencies))))
        object.__setattr__(self, "requirements", frozenset(self.requirements))
        if self.max_workers < 1:
            raise ValueError(f"task {self.id!r}: max_workers must be at least 1")
        try:
            amounts = {k: parse_amount(k, v) for k, v in (self.resources or {}).items()}
        except ValueError as exc:
            raise ValueError(f"task {self.id!r}: resources: {exc}") from None
        object.__setattr__(self, "_shape", Demand.of(amounts, self.group).shape)

    @property
    def shape(self) -> str:
        """What it holds while it runs (:class:`lauf_dvc.resources.Demand`, stored form)."""
        return self._shape  # type: ignore[attr-defined]

    def spec(self) -> TaskSpec:
        return TaskSpec(
            id=self.id,
            dependencies=self.dependencies,
            requirements=requirements_key(self.requirements),
            max_workers=self.max_workers,
            priority=self.priority,
            retries=self.retries,
            shape=self.shape,
        )


def default_identifier() -> str:
    return worker_identifier() or (f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")


def evaluate(fingerprint: Fingerprint) -> str | None:
    return fingerprint() if callable(fingerprint) else fingerprint


class Worker(Generic[T]):
    """The claim/complete protocol of one worker over a set of tasks.

    Use :meth:`start`, then :meth:`next_task` until it returns None, then :meth:`stop`.

    ``max_idle`` (seconds, None: no limit): :meth:`next_task` gives up and returns None
    once it has waited that long without claiming anything while the tasks left are
    blocked by tasks running elsewhere (:attr:`stopped_idle` then tells why). ``clock``
    measures that wait (monotonic seconds; tests pass a fake one).

    ``capacity``: what this worker's host offers (shared with every worker on it); None:
    detected if a task declares resources, else nothing is counted. ``groups``: how many
    tasks of each group may run at once, across all workers.
    """

    def __init__(
        self,
        tasks: Mapping[str, Task[T]],
        store: Store,
        settings: SchedulerSettings,
        *,
        identifier: str,
        labels: frozenset[str],
        locks: LockSet,
        max_idle: float | None = None,
        max_backoff: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        capacity: Capacity | None = None,
        groups: Mapping[str, int] | None = None,
    ) -> None:
        if max_idle is not None and max_idle < 0:
            raise ConfigError(f"max_idle must be >= 0 seconds, got {max_idle}")
        self.tasks = tasks
        self.store = store
        self.settings = settings
        self.identifier = identifier
        self.labels = labels
        self.locks = locks
        self.max_idle = max_idle
        self.max_backoff = max_backoff
        self.clock = clock
        self.stopped_idle = False
        keys = {requirements_key(t.requirements) for t in tasks.values()}
        self.allowed: Sequence[str] = sorted(
            k for k in keys if set(filter(None, k.split(","))) <= labels
        )
        self._join = any(t.max_workers > 1 for t in tasks.values())
        self.groups = dict(groups or {})
        shapes = {t.shape for t in tasks.values()} | {""}
        if capacity is None and shapes != {""}:
            capacity = detect()
        self.capacity = capacity
        self.room = Room(tuple(sorted(shapes)))
        if capacity is not None:  # shapes this host can never hold are not claimed here
            fits = [s for s in shapes if shortfall(demand_of(s), capacity, 1 << 30) is None]
            self.room = Room(tuple(sorted(fits)), pool_name(socket.gethostname()), capacity)
        self._heartbeat: _Heartbeat | None = None
        self._alive = 1  # live workers: counted at start, by every heartbeat, when idle
        self._claimed: Claimed | None = None
        self._fingerprint: str | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> list[str]:
        """Register, reap the dead, sync the graph and invalidate what changed.

        Returns the ids this call invalidated (empty with fingerprints off).
        """
        self.store.register_worker(
            self.identifier,
            host=socket.gethostname(),
            pid=os.getpid(),
            labels=requirements_key(self.labels),
            timeout=self.settings.heartbeat_timeout,
            capacity=self.capacity,
            pool=self.room.host,
        )
        self.reap(local=True)
        self.store_graph()
        invalidated = self.check_fingerprints() if self.settings.enable_fingerprints else []
        self.count_alive()
        self._heartbeat = _Heartbeat(self)
        self._heartbeat.start()
        return invalidated

    def store_graph(self) -> bool:
        """Make the stored graph this worker's tasks (idempotent; a hash compare if equal)."""
        specs = [t.spec() for t in self.tasks.values()]
        return self.store.sync_graph(specs, worker=self.identifier, limits=self.groups)

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.halt()
            self._heartbeat = None
        try:
            self.store.worker_offline(self.identifier)
        finally:
            self.store.dispose()

    def reap(self, *, local: bool = False) -> list[str]:
        """Reap the dead: heartbeats expired, and with ``local`` also the workers of this
        host whose process is gone (a worker that died of a full disk could not say so;
        its stages need not wait for its heartbeat to expire)."""
        return self.store.reap(
            reaper=self.identifier,
            max_killed_retries=self.settings.max_killed_retries,
            dead=self._gone_here() if local else (),
        )

    def _gone_here(self) -> list[str]:
        gone = []
        for ident, pid, started in self.store.alive_on(socket.gethostname()):
            if ident != self.identifier and not _process_alive(pid, started):
                gone.append(ident)
        return gone

    # -- fingerprints --------------------------------------------------------------------

    def check_fingerprints(self) -> list[str]:
        """Invalidate every completed task whose fingerprint changed, and its downstream:
        read (the completed tasks' fingerprints, now and stored) -> decide -> apply."""
        stored: dict[str, Stored] = {}
        observed: dict[str, Observed] = {}
        for task_id, last in self.store.completed_fingerprints().items():
            task = self.tasks.get(task_id)
            if task is None or task.fingerprint is None:
                continue
            stored[task_id] = Stored(TaskState.COMPLETED, last)
            try:
                observed[task_id] = Observed(evaluate(task.fingerprint))
            except Exception as exc:  # a user callable: its failure is a reason, not a crash
                observed[task_id] = Observed(
                    None, always=f"fingerprint could not be computed: {exc}"
                )
        graph = [(t, self.tasks[t].dependencies) for t in sorted(stored)]
        decision = staleness.decide(graph, stored, observed)
        return self.store.apply_decision(decision, worker=self.identifier).invalidated

    # -- the loop ------------------------------------------------------------------------

    def next_task(
        self,
        *,
        finished: bool,
        stop: Callable[[], bool] = lambda: False,
        fingerprint: str | None = None,
        ran: bool = True,
        reason: str | None = None,
    ) -> Task[T] | None:
        """Complete the task handed out last (if ``finished``) and hand out the next one.

        ``fingerprint`` replaces the one computed at claim time; ``ran=False`` records an
        early cutoff found by the caller (downstream tasks need not run because of it).
        Waits (with backoff) while the remaining tasks are blocked by tasks running
        elsewhere; returns None when nothing this worker may run remains, or when it
        waited longer than ``max_idle``.
        """
        backoff = MIN_BACKOFF
        idle_since: float | None = None
        self.stopped_idle = False
        claimed: Claimed | None = None
        if finished and self._claimed is not None:
            if fingerprint is not None:
                self._fingerprint = fingerprint
            claimed = self._complete_current(claim_next=not stop(), ran=ran, reason=reason)
        while True:
            if claimed is None:
                if stop():
                    return None
                self._check_policy()
                polled = self.store.poll(
                    self.identifier, allowed=self.allowed, join=self._join, room=self.room
                )
                if polled is False:  # nothing left this worker may run
                    return None
                claimed = None if polled is True else polled
            if claimed is None:
                idle_since = self.clock() if idle_since is None else idle_since
                if self._idle_too_long(idle_since):
                    return None
                time.sleep(backoff * random.uniform(0.75, 1.25))  # jitter: no lockstep polls
                if backoff < self.max_backoff <= backoff * 2:
                    self.count_alive()  # idle for a while: are we more than we were?
                backoff = min(backoff * 2, self.longest_pause())
                continue
            backoff, idle_since = MIN_BACKOFF, None
            task = self._prepare(claimed)
            if task is not None:
                return task
            claimed = None

    def count_alive(self) -> None:
        """Count the live workers (for :meth:`longest_pause`; only where polls are costly)."""
        if self._poll_budget() is not None:
            self._alive = self.store.alive_workers()

    def longest_pause(self) -> float:
        """The longest pause between two idle polls: ``max_backoff``, or longer when the
        live workers' polls together would exceed the backend's :data:`IDLE_POLL_BUDGET`."""
        budget = self._poll_budget()
        if budget is None:
            return self.max_backoff
        return max(self.max_backoff, self._alive / budget)

    def _poll_budget(self) -> float | None:
        return IDLE_POLL_BUDGET[self.store.sqlite_lock or "postgresql"]

    def _idle_too_long(self, since: float) -> bool:
        idle = self.clock() - since
        if self.max_idle is None or idle < self.max_idle:
            return False
        log.info(
            "worker %s: nothing to claim for %.1f s (max_idle %s s) while the tasks left "
            "wait for tasks running elsewhere: stopping",
            self.identifier,
            idle,
            self.max_idle,
        )
        self.stopped_idle = True
        return True

    def fail_current(self, reason: str, info: dict[str, Any] | None = None) -> None:
        """The task handed out last failed (retried within the budget)."""
        if self._claimed is None:
            return
        claimed, self._claimed = self._claimed, None
        self.store.fail(
            claimed.id,
            self.identifier,
            reason=reason,
            budget=self.settings.max_failed_retries,
            info=info,
            fingerprint=self._fingerprint,
            ignore=self.settings.failure_policy == "ignore",
        )

    def release_current(self, reason: str) -> None:
        """Give the task handed out last back (this worker is stopping: it is ``killed``,
        and pending again at once within the killed-retry budget, for another worker)."""
        if self._claimed is None:
            return
        claimed, self._claimed = self._claimed, None
        self.store.kill(claimed.id, self.identifier, reason=reason,
                        budget=self.settings.max_killed_retries)  # fmt: skip

    @property
    def current(self) -> Claimed | None:
        """The claim of the task handed out last, until it is completed or failed."""
        return self._claimed

    def _complete_current(
        self, *, claim_next: bool, ran: bool = True, reason: str | None = None
    ) -> Claimed | None:
        claimed, self._claimed = self._claimed, None
        assert claimed is not None
        if claim_next and self.settings.failure_policy != "stop":
            _, nxt = self.store.complete_and_claim(
                claimed.id,
                self.identifier,
                fingerprint=self._fingerprint,
                allowed=self.allowed,
                join=self._join,
                ran=ran,
                reason=reason,
                room=self.room,
            )
            return nxt
        self.store.complete(
            claimed.id, self.identifier, fingerprint=self._fingerprint, ran=ran, reason=reason
        )
        return None

    def _prepare(self, claimed: Claimed) -> Task[T] | None:
        """Fingerprint a claimed task; complete it at once on early cutoff. None = skip it."""
        self._claimed = claimed
        self._fingerprint = None
        task = self.tasks.get(claimed.id)
        if task is None:
            self.fail_current(
                f"task unknown to worker {self.identifier}: give every worker the same tasks"
            )
            return None
        if not self.settings.enable_fingerprints:
            return task
        if task.fingerprint is not None:
            try:
                self._fingerprint = evaluate(task.fingerprint)
            except Exception as exc:
                self.fail_current(f"fingerprint could not be computed: {exc}")
                return None
        why = staleness.cutoff(claimed.previous, claimed.last_fingerprint, self._fingerprint,
                     inputs_unchanged=claimed.inputs_unchanged and task.fingerprint is None,
                     joined=claimed.joined)  # fmt: skip
        if why is None:
            return task
        self._claimed = None
        self.store.complete(
            claimed.id,
            self.identifier,
            fingerprint=self._fingerprint,
            reason=why,
            ran=False,
        )
        return None

    def _check_policy(self) -> None:
        if self.settings.failure_policy == "stop":
            failed = self.store.failed()
            if failed:
                raise FailurePolicyStop(failed)


def _process_alive(pid: int, started: float) -> bool:
    """Is ``pid`` (on this host) the process that registered at ``started``? A pid reused
    by a later process is not; one we may not inspect counts as alive."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
    return created <= started + PID_CLOCK_SLACK


class _Heartbeat(threading.Thread):
    """Proves the worker alive, refreshes its locks, and reaps dead workers."""

    def __init__(self, worker: Worker[Any]) -> None:
        super().__init__(name=f"lauf-heartbeat-{worker.identifier}", daemon=True)
        self.worker = worker
        self._halt = threading.Event()

    def run(self) -> None:
        w = self.worker
        while not self._halt.wait(w.settings.heartbeat_interval):
            try:
                w.store.refresh_lock()  # first: a long transaction may hold it right now
                alive = w.store.heartbeat(w.identifier, timeout=w.settings.heartbeat_timeout)
                if not alive:  # we were presumed dead (suspended?): come back to life
                    log.error(
                        "worker %s was presumed dead; its running task was retried elsewhere",
                        w.identifier,
                    )
                    w.store.revive_worker(w.identifier, timeout=w.settings.heartbeat_timeout)
                w.locks.refresh_held()
                w.reap()
                w.count_alive()
            except LaufError as exc:  # a flaky database must not kill the worker
                log.warning("heartbeat of %s failed: %s", w.identifier, exc)

    def halt(self) -> None:
        self._halt.set()
        self.join()
