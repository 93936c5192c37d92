"""One lauf-dvc worker: claim a stage, run it as `dvc repro` would, record the outcome.

Used by ``lauf-dvc worker`` (a SLURM array job) and by the N local processes that
``lauf-dvc repro -j N`` starts: the same code path either way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lauf_dvc.dvc import repolock
from lauf_dvc.dvc.load.pipeline import StageInfo
from lauf_dvc.dvc.load.plan import StageOptions
from lauf_dvc.dvc.project import Project, reconcile
from lauf_dvc.dvc.run.runner import StageResult, StageRunner
from lauf_dvc.errors import FailurePolicyStop, LaufError
from lauf_dvc.faults import fault
from lauf_dvc.resources import command_env, demand_of
from lauf_dvc.scheduler.locks import LockSet
from lauf_dvc.scheduler.worker import MAX_BACKOFF, Worker, default_identifier
from lauf_dvc.states import WorkerState as W
from lauf_dvc.termination import Terminated

log = logging.getLogger(__name__)


@dataclass
class WorkerReport:
    identifier: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the worker stopped early, if it did
    left: str | None = None  # why it left while stages remained: --max-tasks, --max-idle
    stuck: list[str] = field(default_factory=list)  # left: no live worker could take them


def completion_fingerprint(
    project: Project, stage: StageInfo, result: StageResult, repo: Any = None
) -> str | None:
    """The fingerprint a stage completes with (stored, and shown in its history): its
    fingerprinter's, from the ``dvc.lock`` entry the run wrote or found where the
    fingerprinter reads that (``dvc``: nothing re-hashed), else computed now from the
    files the stage just wrote."""
    from lauf_dvc.fingerprint import FingerprintContext

    name = project.fingerprinter(stage.address)
    with FingerprintContext(project.root, lauf_dir=project.lauf_dir, dvc_repo=repo) as ctx:
        found = project.hooks().completed(stage, ctx, name, result.lock_entry)
    return found.to_json() if found is not None else None


def run_worker(
    project: Project,
    *,
    identifier: str | None = None,
    labels: frozenset[str] = frozenset(),
    do_sync: bool = True,
    force: bool = False,
    max_tasks: int | None = None,
    on_event: Callable[[str, str, Any], None] | None = None,
    max_idle: float | None = None,
    max_backoff: float = MAX_BACKOFF,
    options: StageOptions | None = None,
) -> WorkerReport:
    """Work until nothing this worker may run is left (or ``max_tasks`` were run).

    ``options``: how each stage is reproduced (``dvc repro``'s options); ``force`` is
    theirs too, kept as a keyword of its own.

    ``max_backoff``: the longest pause (seconds) between two polls while everything left
    waits on stages running elsewhere (default: the scheduler's, sized for many workers
    on one database; local workers of ``repro`` poll faster).
    """
    ident = identifier or default_identifier()
    opts = options or StageOptions()
    opts = replace(opts, force=opts.force or force, since=opts.since or time.time())
    store = project.store()
    settings = project.settings.scheduler()
    locks = LockSet(project.lauf_dir / "locks", settings.heartbeat_timeout)
    tasks = {t.id: t for t in project.tasks()}
    worker: Worker[StageInfo] = Worker(
        tasks, store, settings, identifier=ident, labels=labels, locks=locks,
        max_idle=max_idle, max_backoff=max_backoff,
        capacity=project.settings.capacity(), groups=project.settings.group_limits(),
    )  # fmt: skip
    report = WorkerReport(ident)
    worker.start()
    # a dvc.lock writer that died holding DVC's hard-link lock: others may break it
    repolock.register_worker(ident, lambda w: store.worker_state(w) in (W.DEAD, W.OFFLINE))
    try:
        fault("worker-crash")
        if do_sync:  # any worker may start first: sync once at a time, idempotently
            with locks.get("sync"):
                reconcile(project, store, worker=ident, force=opts.force)
        _loop(project, worker, report, options=opts, max_tasks=max_tasks,
              on_event=on_event)  # fmt: skip
        if worker.stopped_idle:
            report.left = (f"nothing to claim for {max_idle:g} s while the stages left wait "
                           "for stages running elsewhere (--max-idle)")  # fmt: skip
        elif report.left is None and not report.failed:
            _stuck(store, report)
    except FailurePolicyStop as exc:
        report.stopped = str(exc)
    except KeyboardInterrupt:
        worker.fail_current("interrupted")
        report.stopped = "interrupted"
        raise
    except Terminated as exc:  # scancel, preemption, timeout: another worker takes it now
        worker.release_current(f"terminated ({exc.name}) in worker {ident}")
        report.stopped = f"terminated ({exc.name})"
        raise
    finally:
        repolock.unregister_worker()
        worker.stop()
    return report


def _loop(
    project: Project,
    worker: Worker[StageInfo],
    report: WorkerReport,
    *,
    options: StageOptions,
    max_tasks: int | None,
    on_event: Callable[[str, str, Any], None] | None,
) -> None:
    done = 0
    hooks = project.hooks()
    with StageRunner(project.root) as runner:
        task = worker.next_task(finished=False)
        while task is not None:
            stage = task.data
            assert stage is not None  # project.tasks() gives every task its stage
            if on_event:
                on_event("started", task.id, None)
            hooks.stage_started(stage, worker.identifier)
            result = _run(runner, project, task.id, options=_forced(worker, task.id, options),
                          env=_held(worker))  # fmt: skip
            fingerprint = None
            if result.outcome != "failed":
                try:
                    fingerprint = completion_fingerprint(project, stage, result, runner.repo)
                except LaufError as exc:  # e.g. a plugin's fingerprinter raised
                    result = replace(result, outcome="failed", reason=str(exc),
                                     log_tail=f"lauf-dvc: {exc}")  # fmt: skip
            if on_event:
                on_event(result.outcome, task.id, result)
            done += 1
            limit = max_tasks is not None and done >= max_tasks
            if result.outcome == "failed":
                report.failed.append(task.id)
                worker.fail_current(_failure_reason(result), _failure_info(result))
                hooks.stage_finished(stage, result.outcome, result.duration,
                                     result.returncode, worker.identifier)  # fmt: skip
                task = None if limit else worker.next_task(finished=False)
                continue
            (report.ran if result.reproduced else report.skipped).append(task.id)
            fault("after-dump", task.id)  # dvc.lock written, the database not yet told
            task = worker.next_task(
                finished=True,
                stop=(lambda: True) if limit else (lambda: False),
                fingerprint=fingerprint,
                ran=result.reproduced,
                reason=completion_reason(result),
            )
            hooks.stage_finished(stage, result.outcome, result.duration, result.returncode,
                                 worker.identifier)  # fmt: skip
    if max_tasks is not None and done >= max_tasks:
        report.left = f"ran {max_tasks} stage(s) (--max-tasks)"


#: How the reason of a stage found up to date (not run) begins; one reproduced from DVC's
#: run cache has :data:`RESTORED` as its reason, one that ran has none.
UP_TO_DATE = "early cutoff"
RESTORED = "restored from run cache"


def completion_reason(result: StageResult) -> str | None:
    """The reason its completion is recorded with (the audit trail, the summary)."""
    if result.outcome == "ran":
        return None
    if result.outcome == "restored":
        return RESTORED
    return f"{UP_TO_DATE}: {result.reason}"


def _forced(worker: Worker[StageInfo], address: str, options: StageOptions) -> StageOptions:
    """``--force-downstream``: a stage is forced once a stage it depends on was
    reproduced in this run (``Repo.reproduce``'s ``force_state``)."""
    if options.force or not options.force_downstream or options.since is None:
        return options
    if worker.store.upstream_ran_since(address, options.since):
        return replace(options, force=True)
    return options


def _stuck(store: Any, report: WorkerReport) -> None:
    """Stages left with no worker alive that may start them (or what they wait for)."""
    left = store.left_behind()
    if left:
        report.stuck = [task for task, _, _ in left]
        needs = sorted({label for _, key, _ in left for label in key.split(",") if label})
        shown = ", ".join(report.stuck[:5]) + (" ..." if len(left) > 5 else "")
        labels = f" (they need label(s) {', '.join(needs)})" if needs else ""
        waits = [f"{task} waits: {why}" for task, key, why in left if why and not key]
        labels += "".join(f"; {w}" for w in waits[:3])
        report.left = (f"{len(left)} stage(s) left that no live worker may take{labels}, "
                       f"nor what they wait for: {shown}")  # fmt: skip


def _failure_reason(result: StageResult) -> str:
    if result.returncode is not None:
        return f"exit code {result.returncode}"
    if result.reason:  # DVC refused it (or lauf could not run it): its words, once
        return result.reason
    lines = result.log_tail.strip().splitlines()
    return lines[-1] if lines else "failed"


def _failure_info(result: StageResult) -> dict[str, Any]:
    return dict(
        exit_code=result.returncode,
        log=str(result.log_path or ""),
        log_tail=result.log_tail[-4000:],
    )


def _held(worker: Worker[StageInfo]) -> dict[str, str]:
    """The environment that gives a stage's command what its claim holds (GPU ids, cores)."""
    claimed = worker.current
    if claimed is None:
        return {}
    return command_env(demand_of(claimed.shape), claimed.devices, os.environ)


def _run(
    runner: StageRunner,
    project: Project,
    address: str,
    *,
    options: StageOptions,
    env: dict[str, str] | None = None,
) -> StageResult:
    """Run one stage; an unexpected error fails that stage, not the whole worker."""
    try:
        return runner.run(address, options=options, log_dir=project.log_dir, env=env)
    except Exception as exc:
        log.exception("stage %s: lauf-dvc could not run it", address)
        message = exc if isinstance(exc, LaufError) else f"{type(exc).__name__}: {exc}"
        return StageResult(address, "failed", None, 0.0, None, f"lauf-dvc: {message}",
                           reason=str(message))  # fmt: skip
