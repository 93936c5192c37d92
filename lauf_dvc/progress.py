"""What people see: live progress, summaries, status tables (rich). Nothing else prints."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from lauf_dvc.states import TaskState
from lauf_dvc.states import WorkerState as W

if TYPE_CHECKING:
    from lauf_dvc.dvc.project import Project, SyncReport
    from lauf_dvc.dvc.repro import ReproResult
    from lauf_dvc.scheduler.store import Store, TaskRow

S = TaskState
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

MARK = {S.COMPLETED: "[green]✓[/]", S.FAILED: "[red]✗[/]", S.KILLED: "[red]☠[/]",
        S.UPSTREAM_FAILED: "[yellow]-[/]", S.RUNNING: "[cyan]▶[/]"}  # fmt: skip


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


FINAL = frozenset({S.COMPLETED, S.FAILED, S.KILLED, S.UPSTREAM_FAILED})


class ProgressView:
    """Live view of a run: a bar, counts, elapsed time, an estimate of the time left, and
    one line per running stage with how long it has been running.

    On a terminal it redraws in place; elsewhere (CI, logs) it prints one line per stage
    that starts or ends, each end with the same counts, elapsed time and estimate.

    The estimate is the throughput so far: stages finished since the workers started
    (those found up to date before do not count) per second, applied to the stages left.

    It is fed the rows that changed since the last call (all of them the first time) and
    keeps its counts up to date from those: a call costs the changes, not the pipeline
    (10,000 stages followed by reading and counting every row at every end was quadratic).
    """

    def __init__(self, total: int, clock: Callable[[], float] = time.time) -> None:
        self.total = total
        self.clock = clock
        self.rows: dict[str, TaskRow] = {}
        self.counts: Counter[S] = Counter()
        self.running: dict[str, TaskRow] = {}
        self.live: Live | None = None
        self._first: float | None = None  # when the workers were first seen at work
        self._final_before: set[str] = set()  # stages already finished then
        self._finished = 0  # stages finished since, not counting those

    def update(self, changed: Sequence[TaskRow], started: float) -> None:
        first = self._first is None
        if first:
            self._first = self.clock()
        printed: list[TaskRow] = []
        for r in changed:
            old = self.rows.get(r.id)
            if old is not None:
                self.counts[old.state] -= 1
                if old.state in FINAL and old.id not in self._final_before:
                    self._finished -= 1
            self.rows[r.id] = r
            self.counts[r.state] += 1
            if r.state in FINAL and first:
                self._final_before.add(r.id)
            elif r.state in FINAL and r.id not in self._final_before:
                self._finished += 1
            if r.state == S.RUNNING:
                self.running[r.id] = r
            else:
                self.running.pop(r.id, None)
            if (old is None or old.state != r.state) and r.state in MARK and r.updated >= started:
                printed.append(r)
        # Started on first use, after the local workers were forked: a fork must not
        # happen while Live's refresh thread may hold a console lock.
        if self.live is None and console.is_terminal:
            self.live = Live(console=console, refresh_per_second=8, transient=True)
            self.live.start()
        if self.live is not None:
            self.live.update(self._table(started))
            return
        for r in printed:
            extra = f" ({r.reason})" if r.reason and r.state != S.RUNNING else ""
            where = f" [{self.progress_text(started)}]" if r.state in FINAL else ""
            console.print(f"{MARK[r.state]} {r.id}{extra}{where}")

    def progress_text(self, started: float) -> str:
        """``"3/8 done, 1 failed, 4.2s, ~6.0s left"``: counts, elapsed time, estimate."""
        now = self.clock()
        done = self.counts[S.COMPLETED]
        failed = self.counts[S.FAILED] + self.counts[S.KILLED]
        held = self.counts[S.UPSTREAM_FAILED]
        total = len(self.rows)
        todo = total - done - failed - held
        held_text = f", {held} not run" if held else ""
        text = f"{done}/{total} done, {failed} failed{held_text}, {_fmt_time(now - started)}"
        eta = self.estimate(todo, now)
        return f"{text}, ~{_fmt_time(eta)} left" if eta is not None else text

    def estimate(self, todo: int, now: float) -> float | None:
        """Seconds left at the throughput so far; None before a first stage finished."""
        if not todo or self._first is None or not self._finished:
            return None
        return (now - self._first) / self._finished * todo

    def _table(self, started: float) -> Table:
        now = self.clock()
        width = 30
        filled = int(width * self.counts[S.COMPLETED] / max(1, len(self.rows)))
        t = Table.grid(padding=(0, 1))
        bar = f"[green]{'█' * filled}[/][dim]{'░' * (width - filled)}[/]"
        t.add_row(f"{bar} {self.progress_text(started)}")
        for r in self.running.values():
            t.add_row(f"  [cyan]▶[/] {r.id} [dim]{_fmt_time(now - r.updated)}[/]")
        return t

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


#: What a shell's exit code says about a stage's command, and what to do.
EXIT_HINTS = {
    126: "command not executable: check its permissions, or fix the stage's cmd in dvc.yaml",
    127: "command not found: install it, or fix the stage's cmd in dvc.yaml",
}


def failure_text(reason: str | None, exit_code: Any) -> str:
    """A failed stage's reason, with what to do when the exit code says it."""
    text = reason or "failed"
    hint = EXIT_HINTS.get(exit_code) if isinstance(exit_code, int) else None
    return f"{text}, {hint}" if hint else text


def failed_line(failed: list[TaskRow]) -> str:
    """The one line on stderr that explains why a run exits 1."""
    if len(failed) == 1:
        r = failed[0]
        code = r.info.get("exit_code")
        todo = "then" if code in EXIT_HINTS else "see its log above, fix it, then"
        why = failure_text(r.reason, code).rstrip(".")
        return f"lauf-dvc: stage {r.id} failed: {why}; {todo} run `lauf-dvc repro` again"
    shown = ", ".join(f"{r.id} ({r.reason or 'failed'})" for r in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    return (
        f"lauf-dvc: {len(failed)} stages failed: {shown}{more}; see their logs above, fix "
        "them, then run `lauf-dvc repro` again"
    )


def requires_text(labels: Sequence[str]) -> str:
    return f"it requires label(s) {', '.join(labels)}"


def print_left(
    left: list[TaskRow],
    needs: Mapping[str, Sequence[str]],
    unfit: Mapping[str, str] | None = None,
) -> None:
    """Why each stage left behind did not run (one line each, on stdout), and one line
    on stderr (exit 10). ``unfit``: what the local host lacks for a stage."""
    ids = {r.id for r in left}
    unfit = unfit or {}
    for r in left:
        if needs.get(r.id):
            why = f"{requires_text(needs[r.id])}, which no worker had"
        elif unfit.get(r.id):
            why = f"it {unfit[r.id]}"
        else:
            waits = [d for d in r.dependencies if d in ids]
            why = f"it waits for {', '.join(waits)}" if waits else "no worker took it"
        console.print(f"[yellow]- {r.id}[/]: not run: {why}")
    labels = sorted({label for r in left for label in needs.get(r.id, ())})
    hint = f"; start `lauf-dvc worker --labels {','.join(labels)}`" if labels else ""
    err_console.print(
        f"lauf-dvc: error: {len(left)} stage(s) not run: no worker could take them or what "
        f"they wait for{hint}",
        markup=False,
    )


def print_summary(result: ReproResult, needs: Mapping[str, Sequence[str]] | None = None) -> None:
    """The end of a run; ``needs``: each stage's required labels."""
    failed = result.failed
    upstream = [r.id for r in result.rows if r.state == S.UPSTREAM_FAILED]
    held = len(upstream) + len(result.left)
    restored = f", {len(result.restored)} restored from run cache" if result.restored else ""
    ignored = f", {len(result.ignored)} failed (ignored)" if result.ignored else ""
    cut = f" ({len(result.cut_off)} by early cutoff)" if result.cut_off else ""
    console.print(
        f"{len(result.rows)} stage(s): {len(result.ran)} ran, {len(result.skipped)} up to date"
        f"{cut}{restored}, {len(failed)} failed{ignored}, {held} not run "
        f"in {_fmt_time(result.elapsed)}"
    )
    for r in failed:
        console.print(f"[red]✗ {r.id}[/]: {failure_text(r.reason, r.info.get('exit_code'))}")
        tail = str(r.info.get("log_tail", "")).rstrip().splitlines()[-10:]
        for line in tail:
            console.print(f"    {line}", markup=False)
        if r.info.get("log"):
            console.print(f"    (full log: {r.info['log']})", markup=False)
    if upstream:
        console.print(f"not run because an upstream stage failed: {', '.join(upstream)}")
    if result.crashed:  # nothing else went wrong: the crash is why the run did not finish
        more = len(result.worker_errors) - 1
        also = f" (and {more} more worker(s) crashed)" if more else ""
        err_console.print(f"lauf-dvc: error: {result.worker_errors[0]}{also}", markup=False)
        return
    for err in result.worker_errors:
        err_console.print(f"lauf-dvc: {err}", markup=False)
    if failed:
        err_console.print(failed_line(failed), markup=False)
    elif result.left:
        print_left(result.left, needs or {}, result.unfit)


def print_dry_run(project: Project, report: SyncReport) -> None:
    if not report.will_run:
        console.print("nothing to do: every stage is up to date")
        return
    console.print(f"would run {len(report.will_run)} of {len(project.stages)} stage(s):")
    for address, why in report.will_run.items():
        console.print(f"  {address}: {why}", markup=False)


def print_status(rows: list[dict[str, Any]]) -> None:
    """One line per stage: name, state, why (aligned columns; a plain ``Text``, not a
    ``Table``: rich's table layout took most of the time of a 1000-stage status)."""
    from rich.text import Text

    if not rows:
        return
    w_stage = max(5, *(len(r["stage"]) for r in rows))
    w_state = max(5, *(len(r["state"]) for r in rows))
    out = Text()
    out.append(f"{'stage':<{w_stage}}  {'state':<{w_state}}  status\n", style="bold")
    for r in rows:
        out.append(f"{r['stage']:<{w_stage}}  {r['state']:<{w_state}}  ")
        if r["state"] in ("failed", "killed", "upstream_failed"):
            out.append(r["reason"], style="red")
        elif r["stale"]:
            out.append("stale", style="yellow")
            out.append(f": {r['reason']}")
        else:
            out.append(r["reason"])
        out.append("\n")
    console.print(out, end="", soft_wrap=True)


def print_history(stage: str, rows: list[dict[str, Any]]) -> None:
    """A table; on a terminal the reasons wrap at word boundaries, elsewhere (a pipe, a
    log) each event is one line, whole."""
    cells = [
        (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])), r["state"],
         r["worker"] or "", r["reason"] or "", _short_fingerprint(r["fingerprint"]))
        for r in rows
    ]  # fmt: skip
    head = ("time", "state", "worker", "reason", "fingerprint")
    if not console.is_terminal:
        widths = [max(len(row[i]) for row in [head, *cells]) for i in range(len(head))]
        console.print(stage, markup=False)
        for row in [head, *cells]:
            line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
            console.print(line.rstrip(), markup=False)
        return
    t = Table(title=stage, title_justify="left", box=None, pad_edge=False)
    for col in head[:3]:
        t.add_column(col, no_wrap=True)
    t.add_column("reason", ratio=1)  # wrapped at word boundaries
    t.add_column("fingerprint", no_wrap=True)
    for row in cells:
        t.add_row(*row)
    console.print(t)


def _short_fingerprint(text: str | None) -> str:
    """12 hex digits of a stored fingerprint (the digest of the JSON form)."""
    if not text:
        return ""
    from lauf_dvc.fingerprint import Fingerprint

    try:
        return Fingerprint.from_json(text).digest[:12]
    except ValueError:  # stored by an older version, or by hand: show its start
        return text[:12]


def fresh_consoles() -> None:
    """In a forked worker: consoles with fresh locks, writing to the (redirected) fds."""
    global console, err_console
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    console = Console(highlight=False, soft_wrap=True)
    err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_worker_event(kind: str, address: str, result: Any) -> None:
    if kind == "started":
        err_console.print(f"▶ {address}", markup=False)
    elif kind == "failed":
        why = f"exit code {result.returncode}" if result.returncode is not None else result.reason
        err_console.print(f"✗ {address} ({failure_text(why, result.returncode)})", markup=False)
    else:
        took = f" {_fmt_time(result.duration)}" if result is not None else ""
        label = "✓" if kind == "ran" else "= up to date:"
        err_console.print(f"{label} {address}{took}", markup=False)
    sys.stderr.flush()


# -- lauf-dvc watch ------------------------------------------------------------------------

#: The order stages are listed in by ``watch``: what needs attention first.
WATCH_ORDER = (S.RUNNING, S.FAILED, S.KILLED, S.UPSTREAM_FAILED, S.PENDING, S.INVALIDATED,
               S.COMPLETED)  # fmt: skip
STATE_STYLE = {S.RUNNING: "cyan", S.FAILED: "red", S.KILLED: "red", S.UPSTREAM_FAILED: "yellow",
               S.COMPLETED: "green"}  # fmt: skip
#: Workers that stopped (offline) longer ago than this are left out of ``watch``.
GONE_AFTER = 60.0


@dataclass(frozen=True)
class Snapshot:
    """What ``lauf-dvc watch`` shows, read from the database at ``now``."""

    where: str  # the database, password masked
    rows: list[TaskRow]
    workers: list[dict[str, Any]]  # Store.workers(): id, host, pid, state, heartbeat, task...
    starts: dict[str, float]  # task -> when it last started running
    now: float

    @classmethod
    def read(cls, store: Store) -> Snapshot:
        from lauf_dvc.scheduler.engine import mask_url

        rows, workers, starts = store.task_rows(), store.workers(), store.run_starts()
        return cls(mask_url(store.url), rows, workers, starts, time.time())

    def duration(self, row: TaskRow) -> float | None:
        """How long the stage's last run took (running: has taken so far); None if it
        did not run (pending, or completed without running: up to date, early cutoff)."""
        start = self.starts.get(row.id)
        if start is None or row.state in (S.PENDING, S.INVALIDATED, S.UPSTREAM_FAILED):
            return None
        if row.state == S.RUNNING:
            return self.now - start
        if row.state == S.COMPLETED and row.reason:  # adopted or cut off: nothing ran
            return None
        return row.updated - start if row.updated >= start else None


def watch_view(snap: Snapshot) -> Group:
    """Workers, stages by state with durations, and failures with their reasons."""
    counts = {state: sum(r.state == state for r in snap.rows) for state in WATCH_ORDER}
    summary = ", ".join(f"{n} {state.value}" for state, n in counts.items() if n)
    when = time.strftime("%H:%M:%S", time.localtime(snap.now))
    head = f"[bold]lauf-dvc watch[/] {snap.where} at {when}: {len(snap.rows)} stage(s)"
    return Group(
        head + (f": {summary}" if summary else ""),
        _workers_table(snap),
        _stages_table(snap),
        *_failures(snap),
    )


def _workers_table(snap: Snapshot) -> Table | str:
    t = Table(title="workers", title_justify="left", box=None, pad_edge=False)
    for col in ("worker", "host", "pid", "state", "heartbeat", "stage"):
        t.add_column(col)
    hidden = 0
    by_id = {r.id: r for r in snap.rows}
    for w in snap.workers:
        state = w["state"]
        if state == W.ALIVE and w["expires"] < snap.now:
            state = "late"  # about to be presumed dead
        if state == W.OFFLINE and snap.now - w["heartbeat"] > GONE_AFTER:
            hidden += 1
            continue
        task = w.get("task")
        doing = ""
        if task is not None:
            took = snap.duration(by_id[task]) if task in by_id else None
            doing = f"{task} ({_fmt_time(took)})" if took is not None else task
        style = {W.ALIVE: "green", "late": "yellow", W.DEAD: "red"}.get(state, "dim")
        t.add_row(w["id"], w["host"], str(w["pid"]), f"[{style}]{state}[/]",
                  f"{_fmt_time(max(0.0, snap.now - w['heartbeat']))} ago", doing)  # fmt: skip
    gone = f"{hidden} worker(s) that finished earlier not shown" if hidden else ""
    if not t.row_count:
        return f"workers: none running{f' ({gone})' if gone else ''}"
    if gone:
        t.caption, t.caption_justify = gone, "left"
    return t


def _stages_table(snap: Snapshot) -> Table:
    t = Table(title="stages", title_justify="left", box=None, pad_edge=False)
    for col in ("stage", "state", "duration", "reason"):
        t.add_column(col)
    done = {r.id for r in snap.rows if r.state == S.COMPLETED}
    order = {state: i for i, state in enumerate(WATCH_ORDER)}
    for r in sorted(snap.rows, key=lambda r: order[r.state]):  # stable: pipeline order within
        took = snap.duration(r)
        reason = r.reason or ""
        if r.state in (S.PENDING, S.INVALIDATED):
            waiting = [d for d in r.dependencies if d not in done]
            reason = f"waits for {', '.join(waiting[:3])}{' ...' if len(waiting) > 3 else ''}" \
                if waiting else (reason or "ready")  # fmt: skip
        elif r.state in (S.FAILED, S.KILLED):
            reason = failure_text(r.reason, r.info.get("exit_code"))
        style = STATE_STYLE.get(r.state, "")
        state = f"[{style}]{r.state.value}[/]" if style else r.state.value
        t.add_row(r.id, state, _fmt_time(took) if took is not None else "", reason)
    return t


def _failures(snap: Snapshot) -> list[Table]:
    failed = [r for r in snap.rows if r.state in (S.FAILED, S.KILLED)]
    if not failed:
        return []
    t = Table(title="failures", title_justify="left", box=None, pad_edge=False)
    t.add_column("stage")
    t.add_column("reason", ratio=1)
    t.add_column("log", overflow="fold")
    for r in failed:
        t.add_row(f"[red]{r.id}[/]", failure_text(r.reason, r.info.get("exit_code")),
                  _near(str(r.info.get("log") or "")))  # fmt: skip
    return [t]


def _near(path: str) -> str:
    """``path`` relative to the working directory when it is below it."""
    if not path:
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def print_watch(snap: Snapshot) -> None:
    console.print(watch_view(snap))


def live_watch(read: Callable[[], Snapshot], interval: float) -> None:
    """Redraw :func:`watch_view` every ``interval`` seconds until Ctrl-C (on a terminal;
    elsewhere print a snapshot every ``interval`` seconds)."""
    if not console.is_terminal:
        while True:
            print_watch(read())
            time.sleep(interval)
    with Live(watch_view(read()), console=console, auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(watch_view(read()), refresh=True)
