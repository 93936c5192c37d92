"""What is stale, decided in one place, for Graphband tasks and DVC stages alike.

A sync is three steps:

1. **read**: the store's states and last fingerprints (:class:`Stored`), and what each
   task's fingerprinter finds now (:class:`Observed`): Graphband evaluates the tasks'
   ``fingerprint`` callables, the DVC adapter asks each stage's fingerprinter plugin;
2. **decide**: :func:`decide`, a pure function of those (no I/O, unit-tested without a
   database or a repository): which tasks are stale and why, with the cascade
   downstream, which completed tasks to invalidate, which waiting ones to adopt as
   up to date, which stored fingerprints to fill in;
3. **apply**: one store call, :meth:`lauf_dvc.scheduler.store.Store.apply_decision`.

At claim time :func:`cutoff` decides the early cutoff of a claimed task (its fingerprint
is back to the one it last completed with, or nothing upstream changed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lauf_dvc.states import CLAIMABLE, TaskState

S = TaskState


@dataclass(frozen=True)
class Stored:
    """A task as the store has it: its state and the fingerprint it last completed with."""

    state: TaskState
    last: str | None = None


@dataclass(frozen=True)
class Observed:
    """What a task's fingerprinter finds now.

    ``current``: the fingerprint now (None: the task has none). It is compared with
    ``recorded`` when ``external`` (the fingerprinter keeps its own record of what the
    outputs were made with, as ``dvc.lock`` does; None there: never made), else with the
    store's last fingerprint. ``reasons``: the fingerprinter's words for how they differ
    (empty: the core says which fingerprint changed). ``always``: stale whatever the
    fingerprint, and why (``always changed``, a file that vanished while it was read, a
    fingerprint that could not be computed); ``pinned``: up to date whatever it is, and
    why (``frozen``). ``keep``: what the store records of it (adopted as up to date, or
    in the event of its invalidation; default ``current``, nothing for an external
    record). ``source``: who compared (shown as ``up to date (...)``).
    """

    current: str | None
    recorded: str | None = None
    external: bool = False
    reasons: tuple[str, ...] = ()
    always: str | None = None
    pinned: str | None = None
    keep: str | None = field(default=None)
    source: str = "fingerprint"

    @property
    def kept(self) -> str | None:
        """What the store records of it: ``keep``; without an external record, else
        ``current`` (an external record's values are the fingerprinter's, not the store's)."""
        return self.keep if self.keep is not None or self.external else self.current


@dataclass
class Verdict:
    """One task's own verdict: stale or not, and why (upstream causes not included)."""

    stale: bool
    reasons: tuple[str, ...] = ()
    source: str = "fingerprint"


@dataclass
class Decision:
    """What a sync found and what the store is to do about it.

    ``verdicts``: each observed task's own verdict. ``stale``: every task that runs (or
    may run), with why: its own reasons, or the chain ``upstream b <- upstream a <- why``.
    ``invalidate``: completed tasks to invalidate, ``{id: (last fingerprint seen,
    current fingerprint, reason)}`` (the store cascades downstream). ``adopt``: waiting
    tasks found up to date with nothing upstream to run, ``{id: (fingerprint, reason)}``.
    ``baselines``: completed tasks whose store has no fingerprint yet, ``{id: current}``.
    ``forget``: the invalidated tasks forget their last fingerprint (``--force``).
    """

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)
    invalidate: dict[str, tuple[str | None, str | None, str]] = field(default_factory=dict)
    adopt: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)
    forget: bool = False

    def __bool__(self) -> bool:
        return bool(self.invalidate or self.adopt or self.baselines)


def changed(last: str | None, current: str | None) -> str:
    """The core's own words for a changed fingerprint."""
    return f"fingerprint changed {(last or '')[:12]} -> {(current or '')[:12]}"


Explain = Callable[[str | None, str], Sequence[str]]


def verdict(obs: Observed | None, stored: Stored | None, explain: Explain | None = None) -> Verdict:
    """One task's own verdict from what its fingerprinter found and what the store has.

    ``explain(baseline, current)``: reasons for a changed fingerprint (e.g. which
    parameter or file changed); default: :func:`changed`.
    """
    state = stored.state if stored is not None else S.PENDING
    last = stored.last if stored is not None else None
    if obs is None:  # nothing to compare: a completed task stays done, others run
        return Verdict(state != S.COMPLETED, () if state == S.COMPLETED else ("never run",))
    if obs.always is not None:
        return Verdict(True, (obs.always, *obs.reasons), obs.source)
    if obs.pinned is not None:
        return Verdict(False, (obs.pinned,), obs.source)
    baseline = obs.recorded if obs.external else last
    if obs.current is None or baseline is None:
        if not obs.external and state == S.COMPLETED:
            return Verdict(False, (), obs.source)  # its first fingerprint is the baseline
        return Verdict(True, obs.reasons or ("never run",), obs.source)
    if obs.current == baseline:
        return Verdict(False, (), obs.source)
    why = tuple(obs.reasons) or tuple(explain(baseline, obs.current) if explain else ())
    return Verdict(True, why or (changed(baseline, obs.current),), obs.source)


def decide(
    graph: Sequence[tuple[str, Sequence[str]]],
    stored: Mapping[str, Stored],
    observed: Mapping[str, Observed],
    *,
    force: bool = False,
    explain: Explain | None = None,
) -> Decision:
    """Decide what is stale (see the module docstring).

    ``graph``: ``(task id, its dependencies)`` in dependency order (a dependency before
    its dependents); only these tasks are decided on. Only tasks in ``observed`` are
    judged by a fingerprint; the others keep their state (a completed one stays done, a
    waiting one runs). A running task is judged but never touched: its run decides.
    """
    out = Decision(forget=force)
    for task_id, deps in graph:
        row = stored.get(task_id)
        state = row.state if row is not None else S.PENDING
        last = row.last if row is not None else None
        obs = observed.get(task_id)
        own = verdict(obs, row, explain)
        if obs is not None:
            out.verdicts[task_id] = own
        upstream = next((d for d in deps if d in out.stale), None)
        if force:
            out.stale[task_id] = "forced"
        elif own.stale and (obs is not None or state != S.COMPLETED):
            out.stale[task_id] = "; ".join(own.reasons) or "changed"
        elif upstream is not None:  # the chain of causes: upstream b <- upstream a <- why
            out.stale[task_id] = f"upstream {upstream} <- {out.stale[upstream]}"
        if state == S.RUNNING or row is None:
            continue
        if state == S.COMPLETED and (force or (own.stale and obs is not None)):
            current = obs.kept if obs is not None else None
            out.invalidate[task_id] = (last, current, out.stale[task_id])
        elif task_id not in out.stale and state in CLAIMABLE and obs is not None:
            if obs.external or last is not None or obs.pinned is not None:  # vouched for
                out.adopt[task_id] = (obs.kept, f"up to date ({own.source})")
        elif (
            state == S.COMPLETED and obs is not None and not obs.external
            and last is None and obs.current is not None and not own.stale
        ):  # fmt: skip
            out.baselines[task_id] = obs.current
    return out


def cutoff(
    previous: TaskState,
    last: str | None,
    current: str | None,
    *,
    inputs_unchanged: bool,
    joined: bool = False,
) -> str | None:
    """The early cutoff of a claimed task: why it completes without running, or None.

    Only an invalidated task is cut off (a pending one never ran; one joined by another
    worker runs as its peers do): when its fingerprint now is the one it last completed
    with (the upstream re-ran and produced the same), or, without a fingerprint, when no
    dependency changed since it last completed.
    """
    if previous != S.INVALIDATED or joined:
        return None
    if current is not None:
        return "early cutoff: fingerprint unchanged" if current == last else None
    return "early cutoff: no dependency changed" if inputs_unchanged else None
