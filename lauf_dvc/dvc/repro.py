"""``lauf-dvc repro``: sync, start N local workers, follow them, summarise.

The workers are ordinary ``lauf-dvc worker`` processes (what a SLURM array runs), so
local and cluster runs share one code path; this process only syncs and watches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lauf_dvc.dvc.project import Project, SyncReport, sync
from lauf_dvc.scheduler.store import Store, TaskRow
from lauf_dvc.scheduler.worker import default_identifier
from lauf_dvc.states import TaskState

S = TaskState
POLL = 0.2


@dataclass
class ReproResult:
    sync: SyncReport
    rows: list[TaskRow] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    worker_errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def failed(self) -> list[TaskRow]:
        return [r for r in self.rows if r.state in (S.FAILED, S.KILLED)]

    @property
    def ok(self) -> bool:
        return (
            bool(self.rows)
            and all(r.state == S.COMPLETED for r in self.rows)
            and not (self.worker_errors)
        )


def worker_command(targets: Sequence[str], *, index: int, force: bool) -> list[str]:
    ident = f"{default_identifier()}:local-{index}"
    cmd = [sys.executable, "-m", "lauf_dvc", "worker", "--no-sync", "--identifier", ident]
    if force:
        cmd.append("--force")
    return [*cmd, *targets]


def worker_env(project: Project, overrides: Mapping[str, Any]) -> dict[str, str]:
    """Children read their settings like any worker; the parent's choices win via env."""
    env = dict(os.environ)
    env["LAUF_DVC_DB"] = project.db_url
    for key, value in overrides.items():
        if value is not None:
            env[f"LAUF_DVC_{key.upper()}"] = str(value)
    return env


def repro(
    project: Project,
    targets: Sequence[str],
    *,
    jobs: int,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    on_progress: Callable[[list[TaskRow], float], None] | None = None,
) -> ReproResult:
    """Run the selected stages with ``jobs`` local workers; returns what happened."""
    store = project.store()
    started = time.time()
    ident = f"{default_identifier()}:repro"
    # Register the graph, then let DVC say what is stale (failures of the last run retried).
    store.sync_graph([t.spec() for t in project.tasks()], worker=ident)
    report = sync(project, store, worker=ident, force=force, reset_failures=True)
    result = ReproResult(report)
    todo = [r for r in store.task_rows() if r.state not in (S.COMPLETED,)]
    if todo:
        result.worker_errors = _run_workers(project, targets, store, jobs=jobs, force=force,
                                            overrides=overrides or {}, on_progress=on_progress,
                                            started=started)  # fmt: skip
    result.rows = store.task_rows()
    result.elapsed = time.time() - started
    for row in result.rows:
        if row.state == S.COMPLETED and row.updated >= started:
            (result.skipped if row.reason else result.ran).append(row.id)
    store.dispose()
    return result


def _run_workers(
    project: Project,
    targets: Sequence[str],
    store: Store,
    *,
    jobs: int,
    force: bool,
    overrides: Mapping[str, Any],
    on_progress: Callable[[list[TaskRow], float], None] | None,
    started: float,
) -> list[str]:
    logs = project.lauf_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    env = worker_env(project, overrides)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for i in range(jobs):
        log_path = logs / f"worker-{i}.log"
        with open(log_path, "wb") as fh:
            procs.append((subprocess.Popen(
                worker_command(targets, index=i, force=force), cwd=project.root, env=env,
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            ), log_path))  # fmt: skip
    try:
        while any(p.poll() is None for p, _ in procs):
            if on_progress:
                on_progress(store.task_rows(), started)
            time.sleep(POLL)
    except KeyboardInterrupt:
        _interrupt([p for p, _ in procs])
        raise
    if on_progress:
        on_progress(store.task_rows(), started)
    errors = []
    for p, log_path in procs:
        if p.returncode not in (0, 1):  # 1: a stage failed, reported per stage
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            errors.append(f"worker {p.pid} exited with {p.returncode}: {tail[0]}")
    return errors


def _interrupt(procs: list[subprocess.Popen[bytes]]) -> None:
    """First Ctrl-C: ask workers to stop (running stages are marked failed); second: kill."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
