"""``lauf-dvc repro``: sync, start N local workers, follow them, summarise.

The workers are ordinary ``lauf-dvc worker`` processes (what a SLURM array runs), so
local and cluster runs share one code path; this process only syncs and watches.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lauf_dvc import termination
from lauf_dvc.config import spawn_workers
from lauf_dvc.dvc.load.plan import StageOptions
from lauf_dvc.dvc.project import Project, SyncReport, reconcile
from lauf_dvc.dvc.run.command import kill_commands_of
from lauf_dvc.dvc.run.runner import pull_run_cache
from lauf_dvc.dvc.work import RESTORED
from lauf_dvc.errors import ExitCode, LaufError
from lauf_dvc.resources import Capacity, Demand, demand_of, shortfall
from lauf_dvc.scheduler.store import Store, TaskRow
from lauf_dvc.scheduler.transitions import IGNORED
from lauf_dvc.scheduler.worker import default_identifier
from lauf_dvc.states import TaskState
from lauf_dvc.termination import Terminated

S = TaskState
POLL = 0.2
FULL_READ_EVERY = 25  # polls (5 s): see _follow
TERMINATE_GRACE = 15.0  # seconds workers have to stop their commands (they give them 5)
LOCAL_BACKOFF = 0.05  # local workers: the longest pause between polls while idle (s)


def fork_allowed() -> bool:
    """Fork local workers (cheap: they inherit the imports and the loaded pipeline) where
    fork is safe; macOS's system libraries are not fork-safe, so there (and with
    ``LAUF_DVC_SPAWN=1``) a worker is a new process."""
    return sys.platform.startswith("linux") and not spawn_workers()


@dataclass
class ReproResult:
    """What one ``repro`` did. ``reproduced``: the stages ``Repo.reproduce`` would return
    (ran, restored from the run cache, or verified), in the order they finished."""

    sync: SyncReport
    rows: list[TaskRow] = field(default_factory=list)
    reproduced: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # up to date (before, or found now)
    cut_off: list[str] = field(default_factory=list)  # of those, found up to date now
    ignored: list[str] = field(default_factory=list)  # failed, counted done (--ignore-errors)
    unfit: dict[str, str] = field(default_factory=dict)  # stage: what this host lacks for it
    worker_errors: list[str] = field(default_factory=list)
    worker_codes: list[int] = field(default_factory=list)  # exit codes of those workers
    elapsed: float = 0.0

    @property
    def failed(self) -> list[TaskRow]:
        return [r for r in self.rows if r.state in (S.FAILED, S.KILLED)]

    @property
    def ok(self) -> bool:
        """Every stage completed. A worker that died on the way (its stage was retried by
        the others) is reported in ``worker_errors`` but does not make the run fail."""
        return bool(self.rows) and all(r.state == S.COMPLETED for r in self.rows)

    @property
    def left(self) -> list[TaskRow]:
        """Stages still waiting to run when every worker was gone: nobody could take
        them (labels no worker had) or what they wait for."""
        return [r for r in self.rows if r.state in (S.PENDING, S.INVALIDATED)]

    @property
    def crashed(self) -> bool:
        """A worker died (not a stage's failure) and the run did not finish for it."""
        return bool(self.worker_errors) and not self.ok and not self.failed


def worker_command(ident: str, options: StageOptions) -> list[str]:
    """A local ``lauf-dvc worker`` joining the run in the database. ``-P``: the
    repository (its cwd) is not on its import path, so a user's ``copy.py`` or
    ``logging.py`` cannot shadow the standard library."""
    cmd = [sys.executable, "-P", "-m", "lauf_dvc", "worker", "--no-sync", "--identifier", ident]
    return [*cmd, *options.argv()]


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
    *,
    jobs: int | str,
    force: bool = False,
    overrides: Mapping[str, Any] | None = None,
    on_progress: Callable[[list[TaskRow], float], None] | None = None,
    options: StageOptions | None = None,
    fork: bool | None = None,
    on_start: Callable[[list[TaskRow], Mapping[str, str]], None] | None = None,
) -> ReproResult:
    """Run the selected stages with ``jobs`` local workers; returns what happened.

    ``options``: how each stage is reproduced (``force`` is folded into them).
    ``on_start``: called with the stages to run, once DVC said which, before any starts,
    and what this host lacks for those it can never run (``{stage: why}``).
    ``fork``: fork the workers from this process (fast: they inherit the loaded
    pipeline) instead of starting new ones; only safe in a single-threaded process that
    is ours (the command line), so the default is :func:`fork_allowed` and the Python
    API passes False.
    """
    store = project.store()
    started = time.time()
    opts = replace(options or StageOptions(), since=started)
    opts = replace(opts, force=opts.force or force)
    ident = f"{default_identifier()}:repro"
    # Register the graph, then let DVC say what is stale (failures of the last run retried).
    tasks = project.tasks()
    limits = project.settings.group_limits()
    store.sync_graph([t.spec() for t in tasks], worker=ident, limits=limits)
    report = reconcile(project, store, worker=ident, force=opts.force, reset_failures=True)
    result = ReproResult(report)
    rows = store.task_rows()
    todo = [r for r in rows if r.state != S.COMPLETED]
    shapes = {t.id: t.shape for t in tasks}
    capacity = project.settings.capacity()
    workers = local_workers(jobs, todo, shapes, capacity)
    for r in todo:  # what this host can never hold (a worker elsewhere may)
        why = shortfall(demand_of(shapes.get(r.id, "")), capacity, workers)
        if why:
            result.unfit[r.id] = why
    if on_start:
        on_start(todo, result.unfit)
    if todo:
        if opts.pull and opts.run_cache:
            pull_run_cache(project.root)
        deaths = _run_workers(
            project, store, jobs=workers, options=opts, overrides=overrides or {},
            on_progress=on_progress, started=started,
            fork=fork_allowed() if fork is None else fork,
        )  # fmt: skip
        result.worker_codes = [code for code, _ in deaths]
        result.worker_errors = [line for _, line in deaths]
    result.rows = store.task_rows()
    result.reproduced = store.reproduced_since(started)
    result.elapsed = time.time() - started
    reproduced = set(result.reproduced)
    for row in result.rows:
        if row.state != S.COMPLETED:
            continue
        if (row.reason or "").startswith(IGNORED) and row.updated >= started:
            result.ignored.append(row.id)
        elif row.id not in reproduced:  # up to date: before, or found so now
            result.skipped.append(row.id)
            if row.updated >= started:
                result.cut_off.append(row.id)
        elif row.reason == RESTORED:
            result.restored.append(row.id)
        else:
            result.ran.append(row.id)
    store.dispose()
    return result


def local_workers(
    jobs: int | str, todo: Sequence[TaskRow], shapes: Mapping[str, str], capacity: Capacity
) -> int:
    """How many local workers to start: ``jobs``, or with ``auto`` as many as this host's
    capacity can keep busy; never more than could ever all have work (:func:`at_once`)."""
    most = at_once(todo)
    if jobs == "auto":
        demands = [demand_of(shapes.get(r.id, "")) for r in todo]
        most = min(most, slots(demands, capacity))
    else:
        most = min(int(jobs), most)
    return max(1, most)


def slots(demands: Sequence[Demand], capacity: Capacity) -> int:
    """An upper bound of how many of ``demands`` this host holds at once: its cores (the
    detected or declared count), and for each resource every one of them needs, what it
    has over the least any needs."""
    bound = capacity.cpus
    for name in {n for d in demands for n in d.needs()}:
        least = min(d.needs().get(name, 0) for d in demands)
        have = capacity.amount(name)
        if least > 0 and have is not None:
            bound = min(bound, have // least)
    return max(1, bound)


def at_once(todo: Sequence[TaskRow]) -> int:
    """An upper bound of how many of ``todo`` could ever run at the same time: all of
    them but one per task of their longest dependency chain after the first (tasks
    running together share no chain). A chain: 1; 1 -> 32 -> 1: 32."""
    ids = {r.id for r in todo}
    deps = {r.id: [d for d in r.dependencies if d in ids] for r in todo}
    depth: dict[str, int] = {}
    for start in deps:
        stack = [start]
        while stack:  # iterative: a 10,000-stage chain must not hit the recursion limit
            node = stack[-1]
            if node in depth:
                stack.pop()
                continue
            pending = [d for d in deps[node] if d not in depth]
            if pending:
                stack += pending
                continue
            depth[node] = 1 + max((depth[d] for d in deps[node]), default=0)
            stack.pop()
    return len(todo) - max(depth.values(), default=1) + 1


def _run_workers(
    project: Project,
    store: Store,
    *,
    jobs: int,
    options: StageOptions,
    overrides: Mapping[str, Any],
    on_progress: Callable[[list[TaskRow], float], None] | None,
    started: float,
    fork: bool,
) -> list[tuple[int, str]]:
    """Start the workers, follow them; ``(exit code, one line)`` of each that died."""
    logs = project.lauf_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    store.dispose()  # no pooled connection may cross a fork (SQLite forbids it)
    if fork:  # what is loaded by now (DVC, the pipeline) lives on: no collection walks it
        gc.freeze()  # again, in the parent or in the workers (nor copies their pages)
    procs: list[_Proc] = []
    try:
        for i in range(jobs):
            log_path = logs / f"worker-{i}.log"
            with _sigint_deferred(fork):  # a Ctrl-C now must not orphan a forked worker
                procs.append(_start(project, index=i, options=options, overrides=overrides,
                                    log_path=log_path, fork=fork))  # fmt: skip
        # poll every process each time round: a dead worker must be reaped at once, as
        # while it is a zombie its pid still holds DVC's path locks (dvc/rwlock.py)
        cursor, polls = -1, 0  # the first read: every row; then only those that changed
        # SQLite has one writer at a time: event ids are taken in commit order and the
        # cursor steps over nothing; only PostgreSQL needs the periodic full read
        gaps = store.engine.dialect.name != "sqlite"
        while running := [p for p in procs if p.poll() is None]:
            if on_progress:
                full = cursor < 0 or (gaps and polls % FULL_READ_EVERY == 0)
                cursor = _follow(store, -1 if full else cursor, on_progress, started)
                polls += 1
            _wait_any(running, POLL)
    except KeyboardInterrupt:
        _interrupt(procs, project, store)
        raise
    except Terminated as exc:
        _terminate(procs, project, store, exc)
        raise
    if on_progress:
        _follow(store, cursor, on_progress, started)
    # 1: a stage failed; 10: stages were left that no worker may take (both reported apart)
    deaths = [(p.returncode or 0, _death(p)) for p in procs if p.returncode not in (0, 1, 10)]
    for p in procs:
        p.last_words()  # closes the pipe of those that ended well
    return deaths


def _follow(
    store: Store, cursor: int, on_progress: Callable[[list[TaskRow], float], None], started: float
) -> int:
    """Tell ``on_progress`` the rows that changed after event ``cursor`` (-1: all).

    On PostgreSQL a transaction may commit after one that took a later event id, so a
    cursor can step over a change: there, every :data:`FULL_READ_EVERY` polls all rows
    are read again, which catches it (seconds late, on the display only; the summary
    reads all). On SQLite (one writer at a time) they are not: every 5 s a whole-table
    read cost the parent 0.4 s of CPU at 10,000 stages."""
    if cursor < 0:
        rows = store.task_rows()
        cursor = max((r.event_id for r in rows), default=0)
    else:
        rows, cursor = store.changed_rows(cursor)
    if rows:
        on_progress(rows, started)
    return cursor


def _wait_any(procs: list[_Proc], timeout: float) -> None:
    """Sleep ``timeout`` seconds, or less: wake the moment one of ``procs`` exits."""
    fds = [p.pidfd for p in procs if p.pidfd is not None]
    if len(fds) == len(procs):
        select.select(fds, [], [], timeout)
    else:
        time.sleep(timeout)


def _death(p: _Proc) -> str:
    """One line: how the worker ended, the last line it wrote (its exception), its log."""
    code = p.returncode or 0
    try:
        lines = p.log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    logged = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    last = p.last_words() or logged
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    return f"worker {p.pid} {how}: {last} (log: {p.log_path})"


@contextmanager
def _sigint_deferred(fork: bool) -> Iterator[None]:
    """Hold SIGINT back (a forked child inherits the mask and lifts it itself)."""
    if not fork:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending Ctrl-C is raised here


class _Proc:
    """A local worker process: forked from this one where the OS allows (it shares the
    imports and the loaded pipeline, so it starts in milliseconds), else a fresh
    ``lauf-dvc worker`` process. Either way it runs :func:`run_worker`, in its own
    session (so Ctrl-C reaches it only through :func:`_interrupt`)."""

    def __init__(
        self, pid: int, ident: str, log_path: Path, popen: subprocess.Popen[bytes] | None
    ) -> None:
        self.pid = pid
        self.ident = ident
        self.log_path = log_path
        self.returncode: int | None = None
        self._popen = popen
        self.pidfd: int | None = None  # readable once the process exits (Linux >= 5.3)
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(pid)
        #: a forked worker's last words (its error line), through a pipe: its log may be
        #: on the disk that filled up, and lose the line that says so
        self.words: int | None = None

    def last_words(self) -> str | None:
        """The line the worker ended with, sent through its pipe (None: none sent)."""
        if self.words is None:
            return None
        try:
            os.set_blocking(self.words, False)
            data = os.read(self.words, 65536)
        except OSError:
            data = b""
        finally:
            os.close(self.words)
            self.words = None
        lines = [line.strip() for line in data.decode(errors="replace").splitlines()]
        return next((line for line in reversed(lines) if line), None)

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._popen is not None:
                self.returncode = self._popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            if self.returncode is not None and self.pidfd is not None:
                os.close(self.pidfd)
                self.pidfd = None
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]


def _start(
    project: Project,
    *,
    index: int,
    options: StageOptions,
    overrides: Mapping[str, Any],
    log_path: Path,
    fork: bool,
) -> _Proc:
    ident = f"{default_identifier()}:local-{index}"
    if not fork:
        with open(log_path, "wb") as fh:
            popen = subprocess.Popen(
                worker_command(ident, options), cwd=project.root,
                env=worker_env(project, overrides), stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return _Proc(popen.pid, ident, log_path, popen)
    sys.stdout.flush()
    sys.stderr.flush()
    words, said = os.pipe()
    pid = os.fork()
    if pid:
        os.close(said)
        proc = _Proc(pid, ident, log_path, None)
        proc.words = words
        return proc
    code = int(ExitCode.INTERNAL)
    try:  # the child: never returns into the parent's code
        global _LAST_WORDS
        os.close(words)
        _LAST_WORDS = said
        os.setsid()
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        termination.install()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        code = _child(project, ident, options)
    finally:
        os._exit(code)


#: In a forked worker: the pipe its last words go to (see :meth:`_Proc.last_words`).
_LAST_WORDS: int | None = None


def _said(line: str, code: int) -> int:
    """Print ``line`` to the worker's log, and send it to the parent, and return
    ``code``, even if the log's disk is full (the exit code is what the parent reports:
    74 for a full disk, not 70; the line reaches it through the pipe)."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)
    if _LAST_WORDS is not None:
        with contextlib.suppress(OSError):
            os.write(_LAST_WORDS, (line + "\n").encode()[:4096])
    return code


def _child(project: Project, ident: str, options: StageOptions) -> int:
    from lauf_dvc.dvc.work import run_worker
    from lauf_dvc.progress import fresh_consoles, print_worker_event

    fresh_consoles()
    try:
        report = run_worker(project, identifier=ident, do_sync=False, options=options,
                            on_event=print_worker_event, max_backoff=LOCAL_BACKOFF)  # fmt: skip
    except LaufError as exc:
        return _said(f"lauf-dvc: error: {exc}", int(exc.exit_code))
    except KeyboardInterrupt:
        return _said("lauf-dvc: interrupted", int(ExitCode.INTERRUPTED))
    except Terminated as exc:
        return _said(f"lauf-dvc: terminated ({exc.name})", exc.exit_code)
    except BaseException:
        with contextlib.suppress(OSError):
            traceback.print_exc()
        return int(ExitCode.INTERNAL)
    finally:
        with contextlib.suppress(OSError):  # a full disk under the log: keep the exit code
            sys.stdout.flush()
            sys.stderr.flush()
    code = int(ExitCode.STAGE_FAILED if report.failed or report.stopped else ExitCode.OK)
    return _said(f"lauf-dvc: worker stopped: {report.stopped}", code) if report.stopped else code


def _interrupt(procs: list[_Proc], project: Project, store: Store) -> None:
    """First Ctrl-C: ask workers to stop (each fails its running stage with "interrupted",
    stops its command and exits 130). A second Ctrl-C meanwhile: kill them all now, and
    their commands. Either way, no stage is left running in the database."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        killed = [p for p in procs if p.poll() is None]
        for p in killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in killed:
            p.wait()
        kill_commands_of(project.lauf_dir / "commands", [p.pid for p in killed])
    _fail_held(store, {p.ident for p in procs})


def _terminate(procs: list[_Proc], project: Project, store: Store, exc: Terminated) -> None:
    """SIGTERM/SIGHUP on ``repro``: pass it to every worker (each stops its command and
    gives its stage back), wait for them, kill what is left after a grace period."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, exc.signum)
    deadline = time.monotonic() + TERMINATE_GRACE
    while (alive := [p for p in procs if p.poll() is None]) and time.monotonic() < deadline:
        _wait_any(alive, 0.1)
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    kill_commands_of(project.lauf_dir / "commands", [p.pid for p in alive])
    _fail_held(store, {p.ident for p in procs}, reason=f"terminated ({exc.name})")


def _fail_held(store: Store, idents: set[str], *, reason: str = "interrupted") -> None:
    """Fail (reason "interrupted") what the stopped workers still hold, take them offline.

    After a second Ctrl-C that is the stage each killed worker ran; after the first, each
    worker failed its own, except a claim that Ctrl-C cut short before it was handed out.
    """
    try:
        for worker in store.workers():
            if worker["id"] in idents:
                if worker["task"] is not None and reason == "interrupted":
                    store.fail(worker["task"], worker["id"], reason=reason, budget=0)
                elif worker["task"] is not None:  # terminated: the next run takes it
                    store.kill(worker["task"], worker["id"], reason=reason, budget=1)
                store.worker_offline(worker["id"])
    except LaufError as exc:  # they will be reaped when their heartbeats expire
        print(f"lauf-dvc: could not record the interruption: {exc}", file=sys.stderr)
    finally:
        store.dispose()
