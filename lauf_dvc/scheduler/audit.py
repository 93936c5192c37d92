"""The audit trail read back: every task's runs, the workers' lanes, and the runs of the
pipeline, from the database alone (so a SLURM run reads like a local one, and a run
still going reads as far as it got). Read-only; :func:`read_trail` is the only query.

Words used here:

- an *attempt* is one worker's go at one task: from the ``running`` event of its claim
  to the event that ended it (``completed``, ``failed`` or ``killed``); one still going
  ends "now" and is marked running. A worker joining a running task (``max_workers``)
  has an attempt of its own that ends with the task's.
- a *run* is a stretch of time with workers at it: worker sessions (each from its
  registration to its last heartbeat, or now while it is alive) and attempts that
  overlap one another, transitively, form one run. It begins earlier if the process
  that started its workers (``lauf-dvc repro``: same host and pid, or the same
  identifier but for its last ``:`` field, see ``default_identifier``) wrote events
  just before them (its sync: new stages, invalidations, retried failures). A
  ``repro`` with nothing to do starts no worker and is no run.
"""

from __future__ import annotations

import itertools
import json
import time
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select

from lauf_dvc.scheduler.schema import edges, events, tasks, workers
from lauf_dvc.scheduler.store import Event, Store
from lauf_dvc.scheduler.transitions import IGNORED
from lauf_dvc.states import CLAIMABLE, TaskState
from lauf_dvc.states import WorkerState as W

S = TaskState
#: The reason of the ``running`` event a worker joining a running task writes (claims._take).
JOINED = "joined"
ENDS = frozenset({S.COMPLETED, S.FAILED, S.KILLED})


@dataclass(frozen=True)
class Session:
    """One worker's registration: from ``started`` to ``seen`` (its last heartbeat, or
    when it went offline). A worker registering again under the same id keeps only its
    latest session here; its older attempts still come from the events."""

    id: str
    host: str
    pid: int
    state: str  # alive | offline | dead
    started: float
    seen: float
    expires: float


@dataclass(frozen=True)
class Trail:
    """What the database holds of the past: the events (oldest first), the workers, the
    graph, and each task's current details (a failure's exit code and log tail)."""

    events: tuple[Event, ...]
    sessions: tuple[Session, ...]
    dependencies: Mapping[str, tuple[str, ...]]
    info: Mapping[str, Mapping[str, Any]]
    now: float


@dataclass(frozen=True)
class Attempt:
    """One worker's go at one task. ``why``: the reasons the task became pending or
    invalidated since it last completed (why it ran); ``ready``: when it was last made
    claimable with every dependency completed, if the trail says; ``number``: 1 for the
    first attempt since the task last completed, 2 for the next (a retry)..."""

    task: str
    worker: str
    start: float
    end: float  # the trail's ``now`` while it runs
    ended: TaskState  # completed, failed, killed; running while it goes on
    reason: str | None  # of the event that ended it (exit code 3, early cutoff: ...)
    why: tuple[str, ...] = ()
    ready: float | None = None
    number: int = 1
    joined: bool = False
    info: Mapping[str, Any] = field(default_factory=dict)  # a task's latest failure only

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def wait(self) -> float | None:
        """From ready to claimed (None if the trail does not say when it became ready)."""
        return None if self.ready is None else max(0.0, self.start - self.ready)


@dataclass(frozen=True)
class Run:
    """A run (see the module docstring); ``number`` counts from 1, oldest first.
    ``lanes``: a worker each, in the order they started; ``up_to_date``: the tasks
    found up to date without a worker (by the sync), in the order it found them;
    ``held_back``: those made upstream_failed (a dependency failed for good)."""

    number: int
    start: float
    end: float
    live: bool
    attempts: tuple[Attempt, ...]
    lanes: tuple[Session, ...]
    up_to_date: tuple[str, ...] = ()
    held_back: tuple[str, ...] = ()

    @property
    def wall(self) -> float:
        return max(0.0, self.end - self.start)


def read_trail(store: Store, *, now: float | None = None) -> Trail:
    """Everything :func:`runs` needs, in one read transaction."""
    e, w = events.c, workers.c  # only the columns read here (later ones do not matter)
    with store.read() as conn:
        evs = conn.execute(
            select(e.id, e.task_id, e.state, e.fingerprint, e.worker, e.time, e.reason).order_by(
                e.id
            )
        ).all()
        ws = conn.execute(
            select(w.id, w.host, w.pid, w.state, w.started, w.heartbeat, w.expires).order_by(
                w.started
            )
        ).all()
        deps: dict[str, list[str]] = {}
        for t, d in conn.execute(select(edges.c.task, edges.c.dep).order_by(edges.c.dep)):
            deps.setdefault(t, []).append(d)
        infos = conn.execute(select(tasks.c.id, tasks.c.info).where(tasks.c.info.is_not(None)))
        info = {i: json.loads(text) for i, text in infos}
    return Trail(
        tuple(Event(r.id, r.task_id, S(r.state), r.fingerprint, r.worker, r.time, r.reason)
              for r in evs),
        tuple(Session(r.id, r.host, r.pid, r.state, r.started, r.heartbeat, r.expires)
              for r in ws),
        {t: tuple(d) for t, d in deps.items()},
        info,
        time.time() if now is None else now,
    )  # fmt: skip


# -- attempts ----------------------------------------------------------------------------


@dataclass
class _Open:
    worker: str
    start: float
    joined: bool
    ready: float | None
    number: int
    why: tuple[str, ...]


def attempts(trail: Trail) -> tuple[list[Attempt], list[tuple[float, str, TaskState]]]:
    """Every attempt in the trail (by start), and ``(time, task, state)`` of the other
    ends: completions without an attempt (found up to date by a sync) and tasks made
    ``upstream_failed``."""
    by_task: dict[str, list[Event]] = {}
    for e in trail.events:
        by_task.setdefault(e.task_id, []).append(e)
    done = {t: [e.time for e in evs if e.state == S.COMPLETED] for t, evs in by_task.items()}
    found: list[Attempt] = []
    adopted: list[tuple[float, str, TaskState]] = []
    for task, evs in by_task.items():
        deps = trail.dependencies.get(task, ())
        mine, theirs = _replay(task, evs, deps, done, trail.now)
        info = trail.info.get(task)  # the details of its latest failure, if it still holds
        last = max((a for a in mine if not a.joined), key=lambda a: a.start, default=None)
        if info and last is not None and last.ended == S.FAILED:
            mine = [replace(a, info=info) if a is last else a for a in mine]
        found += mine
        adopted += theirs
    found.sort(key=lambda a: (a.start, a.task, a.worker))
    adopted.sort()
    return found, adopted


def _replay(
    task: str,
    evs: Sequence[Event],
    deps: Sequence[str],
    done: Mapping[str, Sequence[float]],
    now: float,
) -> tuple[list[Attempt], list[tuple[float, str, TaskState]]]:
    """One task's events, oldest first, replayed into its attempts and other ends."""
    out: list[Attempt] = []
    adopted: list[tuple[float, str, TaskState]] = []
    why: list[str] = []
    since: float | None = None  # claimable since
    number = 0
    open_: list[_Open] = []
    for e in evs:
        if e.state == S.RUNNING:
            joined = e.reason == JOINED
            number += 0 if joined else 1
            ready = _ready(since, deps, done, e.time)
            open_.append(_Open(e.worker or "?", e.time, joined, ready, number, tuple(why)))
        elif e.state in ENDS and open_:
            out += [Attempt(task, o.worker, o.start, e.time, e.state, e.reason, o.why, o.ready,
                            o.number, o.joined) for o in open_]  # fmt: skip
            open_ = []
        elif e.state == S.UPSTREAM_FAILED or (
            e.state == S.COMPLETED and not (e.reason or "").startswith(IGNORED)
        ):
            adopted.append((e.time, task, e.state))
        if e.state == S.COMPLETED:
            why, number = [], 0
        elif e.state in CLAIMABLE:
            since = e.time
            if e.reason and e.reason not in why:
                why.append(e.reason)
    out += [Attempt(task, o.worker, o.start, max(now, o.start), S.RUNNING, None, o.why,
                    o.ready, o.number, o.joined) for o in open_]  # fmt: skip
    return out, adopted


def _ready(
    since: float | None, deps: Sequence[str], done: Mapping[str, Sequence[float]], claim: float
) -> float | None:
    """When the task became claimable: made pending/invalidated, and its dependencies'
    latest completions before ``claim``; None if the trail knows neither."""
    known = [since] if since is not None else []
    for dep in deps:
        before = [t for t in done.get(dep, ()) if t <= claim]
        if before:
            known.append(max(before))
    return max(known) if known else None


# -- runs --------------------------------------------------------------------------------


def runs(trail: Trail) -> list[Run]:
    """The runs of the trail, oldest first (see the module docstring)."""
    found, ends = attempts(trail)
    starts = [a.start for a in found]
    by_time = sorted(trail.events, key=lambda e: (e.time, e.id))
    times = [e.time for e in by_time]
    end_times = [when for when, _, _ in ends]
    spans = [(s.started, _session_end(s, trail.now)) for s in trail.sessions]
    spans += [(a.start, a.end) for a in found]
    out: list[Run] = []
    previous_end = float("-inf")
    for start, end in _merge(spans):
        core = found[bisect_left(starts, start) : bisect_right(starts, end)]
        lanes = _lanes(trail.sessions, core, start, end, trail.now)
        gap = by_time[bisect_right(times, previous_end) : bisect_left(times, start)]
        start = _sync_start(gap, lanes, start)
        mine = tuple(found[bisect_left(starts, start) : bisect_right(starts, end)])
        live = any(a.ended == S.RUNNING for a in mine) or any(
            s.state == W.ALIVE and s.expires >= trail.now for s in lanes
        )
        marks = ends[bisect_left(end_times, start) : bisect_right(end_times, end)]
        up = tuple(t for _, t, state in marks if state == S.COMPLETED)
        held = tuple(dict.fromkeys(t for _, t, state in marks if state == S.UPSTREAM_FAILED))
        out.append(Run(len(out) + 1, start, end, live, mine, lanes, up, held))
        previous_end = end
    return out


def _session_end(s: Session, now: float) -> float:
    return max(now, s.seen) if s.state == W.ALIVE and s.expires >= now else s.seen


def _merge(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping (or touching) spans merged, in time order."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _lanes(
    sessions: Sequence[Session], mine: Sequence[Attempt], start: float, end: float, now: float
) -> tuple[Session, ...]:
    """The workers of the run ``[start, end]`` (``mine``: its attempts): their sessions,
    and for a worker whose row is of another session (its id reused), one made of its
    attempts."""
    lanes = {s.id: s for s in sessions if s.started <= end and _session_end(s, now) >= start}
    orphans: dict[str, list[Attempt]] = {}
    for a in mine:
        if a.worker not in lanes:
            orphans.setdefault(a.worker, []).append(a)
    for worker, theirs in orphans.items():
        last = max(a.end for a in theirs)
        lanes[worker] = Session(worker, "", 0, W.OFFLINE, theirs[0].start, last, last)
    return tuple(sorted(lanes.values(), key=lambda s: (s.started, s.id)))


def _sync_start(gap: Sequence[Event], lanes: Sequence[Session], before: float) -> float:
    """The first event in ``gap`` (the events since the run before, in time order) written
    by the process that started the lanes' workers; else ``before`` (the run's start)."""
    ids = {s.id for s in lanes}
    writers = [e for e in gap if e.worker and e.worker not in ids]
    if not writers:
        return before
    last = writers[-1].worker
    if not any(_same_origin(last, lane) for lane in ids):  # type: ignore[arg-type]
        return before
    return min(e.time for e in writers if e.worker == last)


def _same_origin(a: str, b: str) -> bool:
    """Two identifiers of one process (``host:pid:...``), or one identifier's children
    (``NAME:repro`` and ``NAME:local-0``)."""
    pa, pb = a.split(":"), b.split(":")
    return (len(pa) > 2 and pa[:2] == pb[:2]) or (len(pa) > 1 and pa[:-1] == pb[:-1])


# -- what a run took -----------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalPath:
    """The chain of dependent tasks with the longest total attempt time."""

    tasks: tuple[str, ...]
    length: float


def critical_path(
    attempts: Sequence[Attempt], dependencies: Mapping[str, Sequence[str]]
) -> CriticalPath:
    """Among the tasks with attempts, each weighing the time of its attempts (retries
    included, joined workers not), the heaviest chain along ``dependencies``: what the
    run could not have been shorter than with any number of workers. Ties: the chain
    ending later, then the first task name."""
    weight: dict[str, float] = {}
    last_end: dict[str, float] = {}
    for a in attempts:
        if not a.joined:
            weight[a.task] = weight.get(a.task, 0.0) + a.duration
            last_end[a.task] = max(last_end.get(a.task, a.end), a.end)
    best: dict[str, tuple[float, str | None]] = {}  # task -> (chain weight, previous)
    expanded: set[str] = set()
    for task in sorted(weight, key=lambda t: (last_end[t], t)):
        stack = [task]
        while stack:  # iterative: a 10,000-task chain must not hit the recursion limit
            node = stack[-1]
            if node in best:
                stack.pop()
                continue
            deps = [d for d in dependencies.get(node, ()) if d in weight]
            todo = [d for d in deps if d not in best]
            if todo and node not in expanded:  # (expanded twice: a cycle, cut here)
                expanded.add(node)
                stack += todo
                continue
            prev = max((d for d in deps if d in best),
                       key=lambda d: (best[d][0], last_end[d], d), default=None)  # fmt: skip
            best[node] = (weight[node] + (best[prev][0] if prev else 0.0), prev)
            stack.pop()
    if not best:
        return CriticalPath((), 0.0)
    end = max(best, key=lambda t: (best[t][0], last_end[t], t))
    chain: list[str] = []
    link: str | None = end
    while link is not None:
        chain.append(link)
        link = best[link][1]
    return CriticalPath(tuple(reversed(chain)), best[end][0])


@dataclass(frozen=True)
class Totals:
    """Where a run's worker time went. Per lane (worker), from the run's start to its end:
    ``before`` its first attempt (the sync, starting the worker), ``busy`` in attempts,
    ``between`` them and ``after`` its last one; these add up to ``wall * workers``.
    ``latency``: the part of ``between`` in which the worker's next task was already
    ready (claiming, bookkeeping). ``efficiency``: busy / (wall * workers)."""

    wall: float
    workers: int
    busy: float
    before: float
    between: float
    after: float
    latency: float
    first_start: float | None  # seconds from the run's start to its first attempt

    @property
    def efficiency(self) -> float | None:
        capacity = self.wall * self.workers
        return self.busy / capacity if capacity > 0 else None


def totals(run: Run) -> Totals:
    busy = before = between = after = latency = 0.0
    by_worker: dict[str, list[Attempt]] = {}
    for a in run.attempts:  # (in start order)
        by_worker.setdefault(a.worker, []).append(a)
    for lane in run.lanes:
        mine = by_worker.get(lane.id, [])
        if not mine:
            before += run.wall
            continue
        busy += sum(a.duration for a in mine)
        before += mine[0].start - run.start
        after += max(0.0, run.end - max(a.end for a in mine))
        for done, next_ in itertools.pairwise(mine):
            gap = max(0.0, next_.start - done.end)
            between += gap
            if next_.ready is not None:
                latency += min(gap, max(0.0, next_.start - max(done.end, next_.ready)))
    first = min((a.start for a in run.attempts), default=None)
    return Totals(run.wall, len(run.lanes), busy, before, between, after, latency,
                  None if first is None else first - run.start)  # fmt: skip
