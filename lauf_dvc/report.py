"""``lauf-dvc report``: what a run did, from its audit trail, as a short text or as one
self-contained HTML page (:mod:`lauf_dvc.report_html`).

Pure functions of :mod:`lauf_dvc.scheduler.audit`'s data: no database, no clock, no
printing here (``cli.py`` prints), so every figure can be checked on hand-made data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lauf_dvc.dvc.work import RESTORED, UP_TO_DATE
from lauf_dvc.scheduler.audit import (
    Attempt,
    CriticalPath,
    Run,
    Totals,
    critical_path,
    totals,
)
from lauf_dvc.states import TaskState

S = TaskState
#: What an attempt came to, in the order the legend shows them.
OUTCOMES = ("ran", "restored", "cut off", "failed", "killed", "running")


def outcome(a: Attempt) -> str:
    """``ran``, ``restored`` (from DVC's run cache), ``cut off`` (found up to date when
    claimed: early cutoff), ``failed``, ``killed`` or ``running``."""
    if a.ended == S.RUNNING:
        return "running"
    if a.ended in (S.FAILED, S.KILLED):
        return a.ended.value
    if a.reason == RESTORED:
        return "restored"
    if (a.reason or "").startswith(UP_TO_DATE):
        return "cut off"
    return "ran"


@dataclass(frozen=True)
class StageLine:
    """One task's attempts in a run, in the order they started."""

    task: str
    attempts: tuple[Attempt, ...]

    @property
    def own(self) -> tuple[Attempt, ...]:
        """Its attempts without the workers that joined one."""
        return tuple(a for a in self.attempts if not a.joined)

    @property
    def outcome(self) -> str:
        return outcome(self.own[-1] if self.own else self.attempts[-1])

    @property
    def time(self) -> float:
        return sum(a.duration for a in self.own)

    @property
    def wait(self) -> float | None:
        """How long its first attempt waited, ready, for a worker."""
        return self.own[0].wait if self.own else None

    @property
    def why(self) -> tuple[str, ...]:
        """Why it ran: the reasons of its first attempt, then the retries'."""
        seen: list[str] = []
        for a in self.own:
            seen += [r for r in a.why if r not in seen]
        return tuple(seen)

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.worker for a in self.attempts))


@dataclass(frozen=True)
class RunReport:
    """Everything the report shows of one run."""

    run: Run
    of: int  # how many runs the trail holds
    totals: Totals
    path: CriticalPath
    stages: tuple[StageLine, ...]  # by first start

    @property
    def failures(self) -> tuple[Attempt, ...]:
        return tuple(a for a in self.run.attempts if a.ended in (S.FAILED, S.KILLED))

    def counts(self) -> dict[str, int]:
        """Attempts by outcome (workers joining one not counted), every outcome present."""
        found = dict.fromkeys(OUTCOMES, 0)
        for a in self.run.attempts:
            if not a.joined:
                found[outcome(a)] += 1
        return found


def analyse(run: Run, dependencies: Mapping[str, Sequence[str]], of: int) -> RunReport:
    by_task: dict[str, list[Attempt]] = {}
    for a in run.attempts:
        by_task.setdefault(a.task, []).append(a)
    stages = tuple(StageLine(t, tuple(sorted(atts, key=lambda a: a.start)))
                   for t, atts in by_task.items())  # fmt: skip
    stages = tuple(sorted(stages, key=lambda s: (s.attempts[0].start, s.task)))
    return RunReport(run, of, totals(run), critical_path(run.attempts, dependencies), stages)


# -- words and numbers ---------------------------------------------------------------------


def seconds(value: float | None) -> str:
    """A duration as people read it: 0.04s, 3.21s, 45.3s, 2m05s, 1h02m."""
    if value is None:
        return "?"
    if value < 10:
        return f"{value:.2f}s"
    if value < 120:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def clock(t: float, *, date: bool = False) -> str:
    """A local time, to a tenth of a second (with the date if asked)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(t))
    return f"{stamp}.{int(t * 10) % 10}"


def percent(value: float | None) -> str:
    return "?" if value is None else f"{value * 100:.0f}%"


def headline(r: RunReport) -> str:
    """``run 2 of 2, started ...: 8 stage run(s) on 4 worker(s) in 6.40s (finished)``."""
    runs = sum(1 for a in r.run.attempts if not a.joined)
    state = "still running" if r.run.live else "finished"
    return (f"run {r.run.number} of {r.of}, started {clock(r.run.start, date=True)}: "
            f"{runs} stage run(s) on {len(r.run.lanes)} worker(s) in "
            f"{seconds(r.run.wall)} ({state})")  # fmt: skip


def counts_text(r: RunReport) -> str:
    found = r.counts()
    shown = ", ".join(f"{n} {name}" for name, n in found.items() if n or name in ("ran", "failed"))
    held = f", {len(r.run.held_back)} not run (upstream failed)" if r.run.held_back else ""
    return f"{shown}; {len(r.run.up_to_date)} found up to date without running{held}"


def time_text(r: RunReport) -> list[str]:
    t = r.totals
    return [
        f"stage time {seconds(t.busy)}, parallel efficiency {percent(t.efficiency)} "
        "(stage time / (wall time x workers))",
        f"first stage after {seconds(t.first_start)}; idle worker time: {seconds(t.before)} "
        "before the first stage,",
        f"  {seconds(t.between)} between stages ({seconds(t.latency)} with the next one "
        f"ready), {seconds(t.after)} after the last",
    ]


def path_text(r: RunReport) -> str:
    if not r.path.tasks:
        return "critical path: none (no stage ran)"
    return f"critical path {seconds(r.path.length)}: {' -> '.join(r.path.tasks)}"


def summary_text(reports: Sequence[RunReport], *, slowest: int = 5) -> str:
    """What ``lauf-dvc report`` prints without ``--html``: per run, its totals, the
    critical path, the slowest stages and the failures."""
    lines: list[str] = []
    for r in reports:
        if lines:
            lines.append("")
        lines += [headline(r), f"  {counts_text(r)}", *(f"  {x}" for x in time_text(r))]
        lines.append(f"  {path_text(r)}")
        top = sorted(r.stages, key=lambda s: (-s.time, s.task))[:slowest]
        if top:
            width = max(len(s.task) for s in top)
            lines.append("  slowest stages:")
            lines += [f"    {s.task:<{width}}  {seconds(s.time):>7}  {s.outcome:<8}  waited "
                      f"{seconds(s.wait)}" for s in top]  # fmt: skip
        for a in r.failures:
            log = a.info.get("log")
            where = f" (log: {log})" if log else ""
            lines.append(f"  {a.ended.value}: {a.task} (attempt {a.number}): "
                         f"{a.reason or a.ended.value}{where}")  # fmt: skip
        if r.run.held_back:
            lines.append(f"  not run (upstream failed): {', '.join(r.run.held_back)}")
    return "\n".join(lines) + "\n"
