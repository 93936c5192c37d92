"""``lauf_dvc.reproduce``: ``Repo.reproduce`` with parallel workers.

Same keyword arguments as DVC's ``Repo.reproduce``, same return value (the stages
reproduced, as DVC ``Stage`` objects, here in the order they finished) and the same
exceptions (``ReproductionError`` naming the failed stages and chained to the cause,
and whatever DVC raises while collecting the targets: ``StageNotFound``,
``CyclicGraphError``, ``OverlappingOutputPathsError``, ...), so code written against
DVC keeps working. Workers are always started as new processes: the caller's process
(a notebook, a threaded program) is never forked.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc.load.plan import ON_ERROR, Selection, StageOptions, check_on_error, targets_list
from lauf_dvc.errors import ConfigError, WorkerCrashed

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

    from lauf_dvc.dvc.project import Project
    from lauf_dvc.dvc.repro import ReproResult

log = logging.getLogger(__name__)

#: ``Repo.reproduce``'s keyword arguments that say how each stage is reproduced.
_STAGE_KWARGS = ("force", "force_downstream", "pull", "allow_missing", "no_commit", "run_cache")


def reproduce(
    targets: str | Iterable[str] | None = None,
    *,
    jobs: int | None = None,
    root: str | os.PathLike[str] | None = None,
    repo: Repo | None = None,
    recursive: bool = False,
    pipeline: bool = False,
    all_pipelines: bool = False,
    downstream: bool = False,
    single_item: bool = False,
    glob: bool = False,
    on_error: str | None = "fail",
    dry: bool = False,
    interactive: bool = False,
    db: str | None = None,
    **kwargs: Any,
) -> list[Stage]:
    """Reproduce the pipeline like ``Repo(root).reproduce(targets, **kwargs)``, with
    ``jobs`` parallel workers (default: the project's ``jobs`` setting, 4).

    ``targets`` are relative to the current directory, as for DVC (default: its
    ``dvc.yaml``). ``repo``: an open ``dvc.repo.Repo`` to reproduce (the returned
    stages then belong to it, so they compare equal to its own); else the repository
    at ``root`` (default: the one around the current directory). ``db``: the scheduler
    database URL (default: SQLite under ``.dvc/tmp/lauf``). The other keywords are
    ``Repo.reproduce``'s: ``force``, ``force_downstream``, ``pull``, ``allow_missing``,
    ``no_commit``, ``run_cache`` and the selection flags above; ``dry=True`` is DVC's
    own dry run (nothing runs, so DVC answers it itself). ``interactive`` is refused.

    Returns the stages reproduced (ran, restored from the run cache, or verified), in
    the order they finished. Raises ``dvc.exceptions.ReproductionError`` if a stage
    failed (unless ``on_error="ignore"``), DVC's own exceptions for bad targets or a
    broken pipeline, and :class:`~lauf_dvc.LaufError` subclasses for lauf's own
    problems (an unreachable database, a crashed worker).
    """
    if "repro_fn" in kwargs:
        raise TypeError(
            "reproduce() cannot take repro_fn: it is DVC's in-process hook, and lauf runs "
            "stages in worker processes; call Repo.reproduce for it"
        )
    unknown = set(kwargs) - set(_STAGE_KWARGS)
    if unknown:
        raise TypeError(f"reproduce() got unexpected keyword argument(s): {sorted(unknown)}")
    on_error = check_on_error(on_error)
    selection = Selection(
        targets=targets_list(targets), recursive=recursive, glob=glob, single_item=single_item,
        pipeline=pipeline, all_pipelines=all_pipelines, downstream=downstream, cwd=os.getcwd(),
    )  # fmt: skip
    options = StageOptions(**{k: bool(kwargs[k]) for k in _STAGE_KWARGS if k in kwargs})
    with _opened(repo, root) as dvc_repo:
        if interactive or dvc_repo.config["core"].get("interactive", False):
            raise ConfigError(
                "interactive reproduction is not supported: stages run in parallel workers, "
                "which cannot ask before each one (core.interactive or interactive=True)"
            )
        if dry:
            return _dvc_dry_run(dvc_repo, selection, options, on_error)
        project = _plan(dvc_repo, selection, {"jobs": jobs, "db": db}, on_error)
        result = _run(project, jobs, options, on_error)
        return _outcome(dvc_repo, result, on_error)


@contextmanager
def _opened(repo: Repo | None, root: str | os.PathLike[str] | None) -> Iterator[Repo]:
    if repo is not None:
        yield repo
        return
    from dvc.repo import Repo

    with Repo(os.fspath(root) if root is not None else None) as opened:
        yield opened


def _plan(repo: Repo, selection: Selection, cli: dict[str, Any], on_error: str) -> Project:
    """The stages to run, planned by DVC under its lock, as a lauf project."""
    from dvc.repo import lock_repo

    from lauf_dvc.dvc.load.pipeline import missing_inputs, plan_locked
    from lauf_dvc.dvc.project import _project, read_lauf_vars

    root = Path(repo.root_dir)
    policy = None if on_error == "fail" else ON_ERROR[on_error]
    with lock_repo(repo):
        lauf_vars = read_lauf_vars(root, repo)
        stages = plan_locked(repo, selection)
    project = _project(root, {**cli, "failure_policy": policy}, lauf_vars, stages)
    for line in missing_inputs(root, stages):
        log.warning("%s", line)
    return project


def _run(project: Project, jobs: int | None, options: StageOptions, on_error: str) -> ReproResult:
    from lauf_dvc.dvc.repro import repro

    policy = None if on_error == "fail" else ON_ERROR[on_error]
    return repro(project, jobs=jobs or project.settings.jobs, options=options,
                 overrides={"failure_policy": policy}, fork=False)  # fmt: skip


def _outcome(repo: Repo, result: ReproResult, on_error: str) -> list[Stage]:
    """``Repo.reproduce``'s answer: the reproduced stages, or its exception."""
    from dvc.exceptions import DvcException, ReproductionError
    from dvc.repo import lock_repo
    from dvc.stage.exceptions import StageCmdFailedError
    from dvc.utils import humanize

    from lauf_dvc.dvc.load.pipeline import address_of

    with lock_repo(repo):  # fresh stage objects: what the workers wrote
        by_address = {address_of(repo, s): s for s in repo.index.stages}
    failed = result.failed
    if failed and on_error != "ignore":
        stages = [by_address[r.id] for r in failed if r.id in by_address]
        names = humanize.join(repr(s.addressing) for s in stages)
        segment = " stages:" if len(stages) > 1 else ""
        cause: Exception | None = None
        if len(failed) == 1 and on_error == "fail":
            row, stage = failed[0], stages[0] if stages else None
            code = row.info.get("exit_code")
            if code is not None and stage is not None:
                cause = StageCmdFailedError(stage.cmd, code)
            else:
                cause = DvcException(row.reason or "failed")
        raise ReproductionError(f"failed to reproduce{segment} {names}") from cause
    if result.crashed:
        raise WorkerCrashed("; ".join(result.worker_errors))
    return [by_address[a] for a in result.reproduced if a in by_address]


def _dvc_dry_run(
    repo: Repo, selection: Selection, options: StageOptions, on_error: str
) -> list[Stage]:
    """``dry=True``: DVC's own dry run (it runs nothing, so there is nothing to spread)."""
    from dvc.repo.reproduce import reproduce as dvc_reproduce

    kwargs = {k: getattr(options, k) for k in _STAGE_KWARGS}
    with contextlib.chdir(selection.cwd or os.getcwd()):
        return dvc_reproduce(
            repo, list(selection.targets) or None, recursive=selection.recursive,
            pipeline=selection.pipeline, all_pipelines=selection.all_pipelines,
            downstream=selection.downstream, single_item=selection.single_item,
            glob=selection.glob, on_error=on_error, dry=True, **kwargs,
        )  # fmt: skip
