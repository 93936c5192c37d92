"""What people see: live progress, summaries, status tables (rich). Nothing else prints."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from lauf_dvc.states import TaskState

if TYPE_CHECKING:
    from lauf_dvc.dvc.project import Project, SyncReport
    from lauf_dvc.dvc.repro import ReproResult
    from lauf_dvc.scheduler.store import TaskRow

S = TaskState
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

MARK = {S.COMPLETED: "[green]✓[/]", S.FAILED: "[red]✗[/]", S.KILLED: "[red]☠[/]",
        S.UPSTREAM_FAILED: "[yellow]-[/]", S.RUNNING: "[cyan]▶[/]"}  # fmt: skip


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 120 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class ProgressView:
    """Live view of a run: a bar, one line per running stage, counts, elapsed and ETA.

    On a terminal it redraws in place; elsewhere (CI, logs) it prints one line per
    stage that starts or ends.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.seen: dict[str, S] = {}
        self.live: Live | None = None

    def update(self, rows: list[TaskRow], started: float) -> None:
        # Started on first use, after the local workers were forked: a fork must not
        # happen while Live's refresh thread may hold a console lock.
        if self.live is None and console.is_terminal:
            self.live = Live(console=console, refresh_per_second=8, transient=True)
            self.live.start()
        if self.live is not None:
            self.live.update(self._table(rows, started))
            return
        for r in rows:
            if self.seen.get(r.id) != r.state and r.state in MARK and r.updated >= started:
                extra = f" ({r.reason})" if r.reason and r.state != S.RUNNING else ""
                console.print(f"{MARK[r.state]} {r.id}{extra}")
            self.seen[r.id] = r.state

    def _table(self, rows: list[TaskRow], started: float) -> Table:
        now = time.time()
        done = sum(r.state == S.COMPLETED for r in rows)
        failed = sum(r.state in (S.FAILED, S.KILLED, S.UPSTREAM_FAILED) for r in rows)
        elapsed = now - started
        todo = len(rows) - done - failed
        fresh = max(1, sum(r.state == S.COMPLETED and r.updated >= started for r in rows))
        eta = f", ~{_fmt_time(elapsed / fresh * todo)} left" if todo and done else ""
        width = 30
        filled = int(width * done / max(1, len(rows)))
        t = Table.grid(padding=(0, 1))
        bar = f"[green]{'█' * filled}[/][dim]{'░' * (width - filled)}[/]"
        t.add_row(f"{bar} {done}/{len(rows)} done, {failed} failed, {_fmt_time(elapsed)}{eta}")
        for r in rows:
            if r.state == S.RUNNING:
                t.add_row(f"  [cyan]▶[/] {r.id} [dim]{_fmt_time(now - r.updated)}[/]")
        return t

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def print_summary(result: ReproResult) -> None:
    failed = result.failed
    upstream = [r.id for r in result.rows if r.state == S.UPSTREAM_FAILED]
    console.print(
        f"{len(result.rows)} stage(s): {len(result.ran)} ran, {len(result.skipped)} up to date "
        f"(early cutoff), {len(failed)} failed, {len(upstream)} not run "
        f"in {_fmt_time(result.elapsed)}"
    )
    for r in failed:
        console.print(f"[red]✗ {r.id}[/]: {r.reason}", markup=True)
        tail = str(r.info.get("log_tail", "")).rstrip().splitlines()[-10:]
        for line in tail:
            console.print(f"    {line}", markup=False)
        if r.info.get("log"):
            console.print(f"    (full log: {r.info['log']})", markup=False)
    if upstream:
        console.print(f"not run because an upstream stage failed: {', '.join(upstream)}")
    for err in result.worker_errors:
        err_console.print(f"lauf-dvc: {err}", markup=False)


def print_dry_run(project: Project, report: SyncReport) -> None:
    if not report.will_run:
        console.print("nothing to do: every stage is up to date")
        return
    console.print(f"would run {len(report.will_run)} of {len(project.stages)} stage(s):")
    for address, why in report.will_run.items():
        console.print(f"  {address}: {why}", markup=False)


def print_status(rows: list[dict[str, Any]]) -> None:
    t = Table(box=None, pad_edge=False)
    for col in ("stage", "state", "status"):
        t.add_column(col)
    for r in rows:
        status = f"[yellow]stale[/]: {r['reason']}" if r["stale"] else r["reason"]
        if r["state"] in ("failed", "killed", "upstream_failed"):
            status = f"[red]{r['reason']}[/]"
        t.add_row(r["stage"], r["state"], status)
    console.print(t)


def print_history(stage: str, rows: list[dict[str, Any]]) -> None:
    t = Table(title=stage, box=None, pad_edge=False)
    for col in ("time", "state", "worker", "reason", "fingerprint"):
        t.add_column(col)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
        fp = (r["fingerprint"] or "")[:20]
        t.add_row(when, r["state"], r["worker"] or "", r["reason"] or "", fp)
    console.print(t)


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
        err_console.print(f"✗ {address} (exit code {result.returncode})", markup=False)
    else:
        took = f" {_fmt_time(result.duration)}" if result is not None else ""
        label = "✓" if kind == "ran" else "= up to date:"
        err_console.print(f"{label} {address}{took}", markup=False)
    sys.stderr.flush()
