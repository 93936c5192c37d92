"""The iterator API: ``for task in Graphband(tasks): ...``.

Every process (or SLURM job) builds a Graphband over the same tasks and the same database
and iterates; each task is handed to exactly one of them, after all its dependencies
completed. Leaving the loop body with an exception or ``break`` marks the current task
failed; :meth:`Graphband.close` completes it and stops.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from flufl.lock import Lock

from lauf_dvc.config import SchedulerSettings, host_capacity, read_setting
from lauf_dvc.errors import PipelineError
from lauf_dvc.scheduler.locks import LockSet, lock_dir
from lauf_dvc.scheduler.store import Store
from lauf_dvc.scheduler.worker import Task, Worker, default_identifier

T = TypeVar("T")

DEFAULT_DB = "sqlite:///graphband.sqlite"


def topological_order(tasks: dict[str, Task[T]]) -> list[str]:
    """Ids in an order where every task comes after its dependencies.

    Raises :class:`PipelineError` naming an unknown dependency or a cycle.
    """
    for task in tasks.values():
        for dep in task.dependencies:
            if dep not in tasks:
                raise PipelineError(f"task {task.id!r} depends on unknown task {dep!r}")
    sorter = graphlib.TopologicalSorter({t.id: t.dependencies for t in tasks.values()})
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise PipelineError(f"dependency cycle: {cycle}") from None


class Graphband(Generic[T]):
    """Run a DAG of tasks with any number of independent workers sharing a database.

    Settings left as ``None`` are read from ``LAUF_DVC_<NAME>`` when the Graphband is
    built, else take their defaults (fingerprints off, failure_policy "continue",
    heartbeat every 10 s, dead after 60 s, 0 retries after a failure, 2 after a kill,
    ``lock`` auto, no ``max_idle``).

    ``lock`` (SQLite): ``wal`` on a local disk, ``flufl`` on a network filesystem (a
    rollback journal and an NFS-safe lock file around every transaction), ``auto``
    (flufl if the database file is on a network filesystem, with a warning).
    ``max_idle``: stop iterating after waiting that many seconds without being able to
    claim anything while the tasks left wait for tasks running elsewhere
    (:attr:`stopped_idle` is then True).
    ``resources`` (``"cpus=8,gpus=2,mem=64G,licence=1"`` or a mapping, else
    ``LAUF_DVC_RESOURCES``): this host's capacity, in place of what is detected, for tasks
    that declare ``resources``; ``groups``: how many tasks of each group run at once.
    """

    def __init__(
        self,
        tasks: Iterable[Task[T]],
        *,
        db: str = DEFAULT_DB,
        identifier: str | None = None,
        labels: Iterable[str] = (),
        enable_fingerprints: bool | None = None,
        failure_policy: str | None = None,
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        max_failed_retries: int | None = None,
        max_killed_retries: int | None = None,
        disabled: bool | None = None,
        lock_path: str | None = None,
        lock: str | None = None,
        max_idle: float | None = None,
        clock: Callable[[], float] | None = None,
        resources: Mapping[str, Any] | str | None = None,
        groups: Mapping[str, int] | None = None,
    ) -> None:
        self._tasks: dict[str, Task[T]] = {}
        for task in tasks:
            if task.id in self._tasks:
                raise PipelineError(f"task id {task.id!r} appears twice")
            self._tasks[task.id] = task
        self._order = topological_order(self._tasks)
        self.settings = SchedulerSettings.resolve(
            enable_fingerprints=enable_fingerprints,
            failure_policy=failure_policy,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            max_failed_retries=max_failed_retries,
            max_killed_retries=max_killed_retries,
        )
        self.disabled: bool = read_setting("disabled", disabled)
        self.lock_mode: str = read_setting("lock", lock)
        self.max_idle: float | None = read_setting("max_idle", max_idle)
        self.db = db
        self.identifier = identifier or default_identifier()
        self.labels = frozenset(labels)
        self._store = (
            Store(db, lock=self.lock_mode)
            if clock is None
            else Store(db, lock=self.lock_mode, clock=clock)
        )
        lifetime = self.settings.heartbeat_timeout
        self._locks = LockSet(lock_dir(db) if lock_path is None else Path(lock_path), lifetime)
        self._worker = Worker(
            self._tasks,
            self._store,
            self.settings,
            identifier=self.identifier,
            labels=self.labels,
            locks=self._locks,
            max_idle=self.max_idle,
            capacity=host_capacity(resources),
            groups=groups,
        )
        self._closing = False
        self._running = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def lock(self) -> Lock:
        """A lock shared by every worker of this database, for the user's own resources."""
        return self._locks.get("global")

    def task_lock(self, task_id: str) -> Lock:
        """A lock for one task id (e.g. around files several co-workers of a task write)."""
        return self._locks.get(f"task:{task_id}")

    @property
    def has_more_jobs(self) -> bool:
        """Is anything left that this worker could run, now or once running tasks finish?

        Answered from two index seeks, not a scan. False when disabled.
        """
        if self.disabled:
            return False
        self._worker.store_graph()  # so that it is true before the first iteration too
        return self._store.has_unfinished(self._worker.allowed, room=self._worker.room)

    @property
    def stopped_idle(self) -> bool:
        """Did the last iteration end because of ``max_idle`` (work was left)?"""
        return self._worker.stopped_idle

    def close(self) -> None:
        """Complete the task being processed and stop iterating."""
        self._closing = True

    def __enter__(self) -> Graphband[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True

    def __iter__(self) -> Iterator[Task[T]]:
        if self.disabled:
            yield from (self._tasks[i] for i in self._order)
            return
        if self._running:
            raise RuntimeError("a Graphband can be iterated by one loop at a time")
        self._running = True
        self._closing = False
        worker = self._worker
        worker.start()
        try:
            finished = False
            while (
                task := worker.next_task(finished=finished, stop=lambda: self._closing)
            ) is not None:
                try:
                    yield task
                except GeneratorExit:
                    worker.fail_current("the loop body raised an exception or used break")
                    raise
                finished = True
        finally:
            self._running = False
            worker.stop()
