"""Run and commit ONE DVC stage exactly as ``dvc repro`` does, safely beside other workers.

``dvc repro`` (dvc/stage/__init__.py ``Stage.reproduce``/``Stage.run``, dvc/stage/run.py
``run_stage``) does, for each stage, and so do we, in three phases:

1. under DVC's repository lock: read ``dvc.yaml``/``dvc.lock`` afresh, ask DVC whether
   the stage changed (not changed: skip; only missing data and ``--pull``: pull it),
   remove its outputs (``persist`` ones are only unprotected), try the run cache, save
   the dependencies' hashes;
2. without the repository lock: run each command line with the user's shell in the
   stage's ``wdir``, ``DVC_ROOT``/``DVC_STAGE`` set, output to a log file and a stream;
3. under the repository lock again: save, commit to the cache, save to the run cache and
   dump the stage's ``dvc.lock`` entry (``update_pipeline=False``).

A ``.dvc`` file (a ``dvc add`` data source, a ``dvc import``) runs no command: it is
reproduced by DVC's own ``Stage.reproduce`` and dumped, all under the repository lock,
exactly as ``dvc repro`` does it (:func:`_reproduce_whole`).

Every option of ``dvc repro`` that changes how a stage is reproduced (``--force``,
``--pull``, ``--allow-missing``, ``--no-commit``, ``--no-run-cache``) arrives as
:class:`~lauf_dvc.dvc.load.plan.StageOptions` and takes the branch ``Stage.reproduce``,
``Stage.run`` and ``run_stage`` take for it.

Like ``dvc repro``, the stage holds DVC's read/write path locks (``.dvc/tmp/rwlock``) on
its dependencies and outputs from phase 1 to phase 3, so a ``dvc`` command started by
hand cannot touch them meanwhile.

A process runs one stage at a time, and while DVC works (phases 1 and 3) the process's
working directory is the repository root (see :func:`lauf_dvc.dvc.load.pipeline.locked`).

A worker may be killed at any instant and nothing is lost: DVC's commit never marks a
stage done until its outputs are in the cache, ``dvc.lock`` is replaced atomically
(:mod:`lauf_dvc.dvc.commit.atomic`), DVC's locks die with their holder, and before a stage runs
again whatever a dead worker's run of it left running is killed
(:mod:`lauf_dvc.dvc.run.command`). A stage interrupted before its entry was written is
simply changed for DVC and runs again; one interrupted after it is found up to date.
The instants in between are the fault-injection points of :mod:`lauf_dvc.faults`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from lauf_dvc.dvc import compat, repolock
from lauf_dvc.dvc.commit import atomic, gitignore, group, lockfile
from lauf_dvc.dvc.load import single, speedups
from lauf_dvc.dvc.load.pipeline import (
    command_lines,
    dvc_errors,
    locked,
    make_repo,
    reword,
)
from lauf_dvc.dvc.load.plan import StageOptions, upstream_of
from lauf_dvc.dvc.load.single import collect_stage
from lauf_dvc.dvc.run.command import Output, kill_leftovers, run_command
from lauf_dvc.faults import after_call, armed, fault

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import PipelineStage, Stage

log = logging.getLogger(__name__)

Outcome = Literal["ran", "restored", "skipped", "failed"]
#: What a stage command never sees: stage commands are user code, and often log their
#: environment; the database URL may hold a password.
SECRET_ENV = frozenset({"LAUF_DVC_DB"})


@dataclass(frozen=True)
class StageResult:
    """What happened to one stage. A failing command is a result, never an exception.

    ``ran``: the stage was reproduced and its ``dvc.lock`` entry (or ``.dvc`` file)
    written (for a frozen stage or a data source: its outputs were verified and
    recorded, no command ran). ``restored``: reproduced from the run cache, entry
    written, no command ran. ``skipped``: DVC found it up to date (or, with
    ``--pull``, only its data missing, and pulled it). ``failed``: ``returncode``
    is the command's exit status, or ``None`` when DVC itself refused (a missing
    dependency or output, a path busy in another ``dvc`` process); ``log_tail`` ends
    with the reason.
    """

    address: str
    outcome: Outcome
    returncode: int | None
    duration: float
    log_path: Path | None
    log_tail: str
    lock_entry: dict[str, Any] | None = field(default=None, compare=False)  # dvc.lock entry
    reason: str = ""  # one line: why skipped / why failed
    lock_entry_written: bool = False  # this run wrote the stage's dvc.lock entry

    @property
    def reproduced(self) -> bool:
        """What ``Repo.reproduce`` returns the stage for: it was run, restored or
        verified, and its entry written (not: up to date, pulled, failed)."""
        return self.outcome in ("ran", "restored")


class _StageFailed(Exception):
    """Internal: DVC refused the stage (reported as a "failed" result)."""


def run_stage(
    root: str | Path,
    address: str,
    *,
    force: bool = False,
    log_dir: Path | None = None,
    stream: TextIO | None = None,
    run_cache: bool = True,
    options: StageOptions | None = None,
) -> StageResult:
    """Reproduce the stage at ``address`` (relative to the repository root) like ``dvc repro``.

    ``force`` runs it even when DVC finds it up to date (``dvc repro -f``); ``run_cache=False``
    never restores from the run cache (``--no-run-cache``); ``options``, if given,
    replaces both and says the rest (``--pull``, ``--allow-missing``, ``--no-commit``).
    The log goes to ``log_dir/<address>.log`` (see :func:`log_file`) and to ``stream``.

    Raises:
        PipelineError: not a DVC repository, unknown stage, broken ``dvc.yaml``.
    """
    with StageRunner(root) as runner:
        return runner.run(address, force=force, log_dir=log_dir, stream=stream,
                          run_cache=run_cache, options=options)  # fmt: skip


class StageRunner:
    """Runs stages of one repository, one at a time, reusing one DVC ``Repo`` object."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._repo: Repo | None = None
        self._atomic: atomic.AtomicFiles | None = None
        self.loader = single.StageLoader()  # dvc.yaml resolved once while unchanged

    @property
    def repo(self) -> Repo:
        if self._repo is None:
            self._repo = make_repo(self.root)
            speedups.keep_between_locks(self._repo)
            if compat.fast_path():  # dvc.lock: old or new, never torn
                self._atomic = atomic.install(self._repo)
                group.clean(self._repo)  # records of dead workers of this host
            atomic.safe_reflink()  # workers commit at once: no object deleted meanwhile
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None
            self._atomic = None

    def __enter__(self) -> StageRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        address: str,
        *,
        force: bool = False,
        log_dir: Path | None = None,
        stream: TextIO | None = None,
        run_cache: bool = True,
        options: StageOptions | None = None,
        env: Mapping[str, str] | None = None,
    ) -> StageResult:
        """See :func:`run_stage`. ``env``: set for the stage's command (its GPU ids...)."""
        repo = self.repo
        opts = options or StageOptions(force=force, run_cache=run_cache)
        job = _Job(repo, self._atomic, address, time.monotonic(), log_dir, stream, opts,
                   dict(env or {}), self.loader)  # fmt: skip
        if self._atomic is None:  # a DVC internal moved (lauf_dvc.dvc.compat)
            try:
                return _reproduce_public(job)
            except _StageFailed as exc:
                return job.failed(None, str(exc))
            finally:
                job.close()
        try:
            prepared = _prepare_when_free(job)
            if isinstance(prepared, StageResult):
                return prepared
            with prepared.paths_held():
                returncode = _execute(job, prepared)
                if returncode != 0:
                    return job.failed(returncode, f"command failed with exit code {returncode}")
                return _finish(job, prepared)
        except _StageFailed as exc:
            return job.failed(None, str(exc))
        finally:
            job.close()


def log_file(log_dir: Path, address: str) -> Path:
    """``log_dir/<address>.log``, made safe for any filesystem; distinct addresses never clash."""
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", address)[:120]
    if safe != address:
        safe += "-" + hashlib.sha1(address.encode()).hexdigest()[:8]
    return log_dir / f"{safe}.log"


# -- the three phases ---------------------------------------------------------------------


@dataclass
class _Job:
    repo: Repo
    atomic: atomic.AtomicFiles | None  # None: DVC's public path (see lauf_dvc.dvc.compat)
    address: str
    started: float
    log_dir: Path | None
    stream: TextIO | None
    options: StageOptions = field(default_factory=StageOptions)
    env: dict[str, str] = field(default_factory=dict)  # for the command, over the worker's
    loader: single.StageLoader | None = None
    _output: Output | None = None

    @property
    def log_path(self) -> Path | None:
        return log_file(self.log_dir, self.address) if self.log_dir is not None else None

    def output(self) -> Output:
        """The log, opened (truncated) on first use: a skipped stage keeps its last log."""
        if self._output is None:
            self._output = Output(self.log_path, self.stream)
        return self._output

    def close(self) -> None:
        if self._output is not None:
            self._output.close()

    def result(
        self, outcome: Outcome, stage: Any, reason: str, *, written: bool, code: int | None = None
    ) -> StageResult:
        return StageResult(self.address, outcome, code, time.monotonic() - self.started,
                           self.log_path if self._output else None, "", _lock_entry(stage),
                           reason, written)  # fmt: skip

    def failed(self, returncode: int | None, reason: str) -> StageResult:
        output = self.output()
        if returncode is None:  # DVC's verdict, not the command's: say it in the log too
            output.write_text(f"lauf-dvc: stage '{self.address}' failed: {reason}\n")
        return StageResult(self.address, "failed", returncode, time.monotonic() - self.started,
                           self.log_path, output.tail() or reason, None, reason)  # fmt: skip


@dataclass
class _Prepared:
    stage: PipelineStage
    job: _Job
    paths: _PathLocks

    @contextmanager
    def paths_held(self) -> Iterator[None]:
        """Release the path locks (under the repository lock, as DVC does) however we leave."""
        try:
            yield
        finally:
            if self.paths.held:  # (a successful _finish released them in its own lock)
                with locked(self.job.repo):
                    self.paths.release()


def _prepare(job: _Job) -> StageResult | _Prepared:
    """Phase 1, under the repository lock: collect the stage and take its path locks."""
    from dvc.exceptions import DvcException
    from dvc.stage import PipelineStage

    repo = job.repo
    with locked(repo):
        with dvc_errors(repo.root_dir, f"stage {job.address!r}"):
            stage = collect_stage(repo, job.address, job.loader)
        if not isinstance(stage, PipelineStage):  # a .dvc file: DVC's own path, whole
            try:
                return _reproduce_whole(job, stage)
            except (DvcException, OSError) as exc:
                raise _StageFailed(reword(exc, repo.root_dir)) from None
        kill_leftovers(_records(repo), job.address)  # a dead worker's run must not go on
        paths = _PathLocks(repo, stage)
        try:
            paths.acquire()
            verdict = _before_command(job, stage)
        except (DvcException, OSError) as exc:  # dvc repro: "failed to reproduce" the stage
            paths.release()
            raise _StageFailed(reword(exc, repo.root_dir)) from None
        except BaseException:
            paths.release()
            raise
        if verdict is not None:
            paths.release()
            return verdict
        return _Prepared(stage, job, paths)


#: How long a stage waits for paths another process holds (DVC's rwlock) before it fails
#: as ``dvc repro`` would at once: a terminated worker hands its stage back a moment
#: before its process is gone, and its entries go with the process (DVC drops entries of
#: dead pids), so the next worker must not fail the stage for that moment.
BUSY_WAIT = 10.0  # seconds
BUSY = "is busy, it is being blocked by"  # dvc/rwlock.py's LockError


def _prepare_when_free(job: _Job) -> StageResult | _Prepared:
    """:func:`_prepare`, again (without the repository lock meanwhile) while the stage's
    paths are busy, for up to :data:`BUSY_WAIT` seconds."""
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        try:
            return _prepare(job)
        except _StageFailed as exc:
            if BUSY not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def _upstream(job: _Job, stage: Stage) -> list[Stage] | None:
    """``Stage.reproduce``'s ``upstream``: read only by ``--allow-missing`` and ``--pull``."""
    if job.options.allow_missing or job.options.pull:
        return upstream_of(job.repo, stage)
    return None


def _unchanged(job: _Job, stage: Stage) -> StageResult | None:
    """The start of ``Stage.reproduce``: up to date (skip), or only missing data that
    ``--pull`` fetches (skip too); None: reproduce it."""
    from dvc.exceptions import CheckoutError

    opts = job.options
    if opts.force:
        return None
    upstream = _upstream(job, stage)
    if not stage.changed(opts.allow_missing, upstream):  # the early cutoff of Stage.reproduce
        log.info("stage %s didn't change, skipping", job.address)
        return job.result("skipped", stage, "up to date", written=False)
    if opts.pull and not stage.changed(True, upstream):
        try:
            log.info("Pulling data for %s", job.address)
            job.repo.pull(stage.addressing)
            stage.checkout()
            return job.result("skipped", stage, "pulled from the remote", written=False)
        except CheckoutError:
            log.info("Unable to pull data for %s", job.address)
    return None


def _reproduce_whole(job: _Job, stage: Stage) -> StageResult:
    """A ``.dvc`` file, under the repository lock, as ``dvc repro`` reproduces it
    (``Stage.reproduce``, then ``stage.dump(update_pipeline=False)``): a changed data
    source is verified, hashed and committed, an import re-imported unless frozen."""
    opts = job.options
    with job.repo.scm_context(quiet=True):
        done = stage.reproduce(
            upstream=_upstream(job, stage), force=opts.force, allow_missing=opts.allow_missing,
            pull=opts.pull, no_commit=opts.no_commit, run_cache=opts.run_cache,
        )  # fmt: skip
        if done is None:
            return job.result("skipped", stage, "up to date", written=False)
        _dump(job, stage, lambda: _dump_dvc_file(job.repo, stage))
    return job.result("ran", stage, "ran", written=True)


def _reproduce_public(job: _Job) -> StageResult:
    """DVC's public path, where a DVC internal lauf's fast path uses has moved
    (:mod:`lauf_dvc.dvc.compat`): under DVC's repository lock, ``Stage.reproduce`` then
    ``stage.dump(update_pipeline=False)``, as ``dvc repro`` (dvc/repo/reproduce.py
    ``_reproduce_stage``). DVC itself releases the lock while the command runs
    (``unlocked_repo``), so stages of several workers still run at once; lauf's lock
    queue is not taken (it would be held across the command). The command prints to
    the worker's output, as under ``dvc repro``; its environment gets the stage's
    resources and never lauf's secrets."""
    from dvc.exceptions import DvcException

    repo, opts = job.repo, job.options
    with compat.public_lock(repo), contextlib.chdir(repo.root_dir):
        with dvc_errors(repo.root_dir, f"stage {job.address!r}"):
            stage = collect_stage(repo, job.address)
        try:
            with repo.scm_context(quiet=True), _command_environ(job.env):
                done = stage.reproduce(
                    upstream=_upstream(job, stage), force=opts.force,
                    allow_missing=opts.allow_missing, pull=opts.pull,
                    no_commit=opts.no_commit, run_cache=opts.run_cache,
                )  # fmt: skip
                if done is None:
                    return job.result("skipped", stage, "up to date", written=False)
                stage.dump(update_pipeline=False)
        except (DvcException, OSError) as exc:
            raise _StageFailed(reword(exc, repo.root_dir)) from None
    return job.result("ran", stage, "ran", written=True)


@contextmanager
def _command_environ(env: Mapping[str, str]) -> Iterator[None]:
    """The process environment as the command is to see it (DVC's public path copies
    ``os.environ`` for it): ``env`` set, :data:`SECRET_ENV` removed; restored after."""
    saved = dict(os.environ)
    os.environ.update(env)
    for key in SECRET_ENV:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _dump_dvc_file(repo: Repo, stage: Stage) -> None:
    """``stage.dump()`` of a ``.dvc`` file, written through ``repo.fs`` (so atomically:
    :mod:`lauf_dvc.dvc.commit.atomic`). DVC's ``SingleStageFile.dump`` calls ``dump_yaml``
    without a filesystem, i.e. with ``open``; it is given ``repo.fs`` for this call
    (dvc/dvcfile.py, since DVC 2.0; without it the file would be written in place)."""
    import dvc.dvcfile

    plain = dvc.dvcfile.dump_yaml
    dvc.dvcfile.dump_yaml = lambda path, data, **kw: plain(path, data, fs=repo.fs, **kw)
    try:
        stage.dump(update_pipeline=False)
    finally:
        dvc.dvcfile.dump_yaml = plain


def _before_command(job: _Job, stage: PipelineStage) -> StageResult | None:
    """``Stage.reproduce`` and ``Stage.run`` up to the command; None: go and run it."""
    from dvc.stage.cache import RunCacheNotFoundError
    from dvc.stage.run import _pull_missing_deps
    from dvc.stage.utils import check_missing_outputs

    repo, opts = job.repo, job.options
    skip = _unchanged(job, stage)
    if skip is not None:
        return skip
    if stage.frozen:  # Stage.run: no command; verify the outputs and record them
        log.warning("%s is frozen: its outputs are verified, not reproduced", job.address)
        check_missing_outputs(stage)
        _commit(job, stage)
        return job.result("ran", stage, "frozen: outputs verified", written=True)
    stage.remove_outs(ignore_remove=False, force=False)  # persist outputs: only unprotected
    if opts.force:  # dvc/stage/run.py run_stage: no run cache, no early dependency save
        return None
    if opts.pull:
        _pull_missing_deps(stage)
    try:
        repo.stage_cache.restore(stage, run_cache=opts.run_cache, pull=opts.pull)
    except RunCacheNotFoundError:
        stage.save_deps()
        return None
    _commit(job, stage)
    return job.result("restored", stage, "restored from run cache", written=True)


def _execute(job: _Job, prepared: _Prepared) -> int:
    """Phase 2, no repository lock: each command line in the user's shell, as DVC runs it."""
    from dvc.env import DVC_STAGE

    _make_cmd, _warn_if_fish, get_executable, prepare_kwargs = compat.run_parts()

    stage = prepared.stage
    kwargs = prepare_kwargs(stage)  # cwd=wdir, env with DVC_ROOT and DVC_STAGE, close_fds
    kwargs["env"][DVC_STAGE] = job.address  # DVC's is relative to the cwd; ours to the root
    kwargs["env"].update(job.env)
    for key in [k for k in kwargs["env"] if k in SECRET_ENV]:
        del kwargs["env"][key]  # the scheduler's database URL (with its password) is ours
    executable = get_executable()
    _warn_if_fish(executable)
    output = job.output()
    fault("before-command", job.address)
    output.write_text(f"Running stage '{job.address}':\n")  # what dvc repro prints
    for line in command_lines(stage):
        output.write_text(f"> {line}\n")
        returncode = run_command(_make_cmd(executable, line), kwargs, output,
                                 address=job.address, records=_records(job.repo))  # fmt: skip
        if returncode != 0:
            return returncode
    return 0


def _finish(job: _Job, prepared: _Prepared) -> StageResult:
    """Phase 3: save and commit the outputs to the cache with only the stage's path locks
    held, then, under the repository lock, add the ``.gitignore`` entries, dump the
    ``dvc.lock`` entry and release the path locks (one acquisition, not two)."""
    from dvc.exceptions import DvcException

    stage = prepared.stage
    try:
        fault("before-commit", job.address)
        posted = None
        # An armed during-dump kills this worker in its own rewrite: posted only under the
        # lock, its entry cannot be written by another holder first (faults.py).
        late = armed("during-dump", job.address)
        with contextlib.chdir(job.repo.root_dir), _ignores_deferred(stage):
            _save(job, stage)
            entry = lockfile.rendered(stage)  # the stage's alone: before the lock
            if not late:
                posted = group.post(job.repo, stage, entry)  # for whoever holds the lock next
        with locked(job.repo):
            if late:
                with contextlib.chdir(job.repo.root_dir):
                    posted = group.post(job.repo, stage, entry)
            if posted is None:
                _record(job, stage, ignore=True, entry=entry)
            else:
                _record_group(job, stage, posted)
            prepared.paths.release()
    except (DvcException, OSError) as exc:
        if posted is not None:
            group.withdraw(posted)
        why = reword(exc, job.repo.root_dir)
        raise _StageFailed(f"the command succeeded but DVC could not save it: {why}") from None
    return job.result("ran", stage, "ran", written=True, code=0)


def _commit(job: _Job, stage: PipelineStage) -> None:
    """The end of ``Stage.run`` plus ``_reproduce_stage``'s dump, all under the lock the
    caller holds (a frozen stage, a run-cache restore)."""
    with job.repo.scm_context(quiet=True), gitignore.fast(job.repo):
        _save(job, stage)  # (Output.save adds the output to .gitignore)
        _record(job, stage, ignore=False)


def _save(job: _Job, stage: PipelineStage) -> None:
    """``Stage.save`` and ``Stage.commit``: hash deps and outputs, save the run cache, move
    the outputs into the cache. Only the stage's own outputs (path-locked) and the
    content-addressed cache are written, so this needs no repository lock: hashing a
    large output no longer holds up every other worker's bookkeeping."""
    opts = job.options
    no_cache_outs = any(not o.use_cache for o in stage.outs if not (o.is_metric or o.is_plot))
    stage.save(allow_missing=opts.allow_missing, run_cache=not opts.no_commit and not no_cache_outs)
    if opts.no_commit:  # --no-commit: hashes recorded, nothing moved into the cache
        return
    first = stage.outs[0] if stage.outs else None
    with after_call(first, "commit", "during-save", job.address):
        if job.repo.lock.is_locked:
            stage.commit(allow_missing=opts.allow_missing)
        else:  # Stage.commit's body: @rwlocked would only re-enter the path locks we
            compat.commit_unlocked(stage, allow_missing=opts.allow_missing)  # hold


def _record(
    job: _Job, stage: PipelineStage, *, ignore: bool, entry: tuple[Any, str] | None = None
) -> None:
    """Under the repository lock: the outputs' ``.gitignore`` entries (if ``_save`` ran
    with them deferred) and the stage's ``dvc.lock`` entry.

    The entry is written by :func:`lauf_dvc.dvc.commit.lockfile.dump_entry` (DVC's bytes, in time
    independent of the file's size) or, where that does not apply, by DVC. Either way it
    replaces dvc.lock atomically (see :mod:`lauf_dvc.dvc.commit.atomic`), so a worker killed
    anywhere in here leaves the stage without an entry (or with its old one) and its
    outputs changed: DVC sees it as changed and it runs again. ``entry``: the entry made
    already (:func:`lauf_dvc.dvc.commit.lockfile.rendered`).
    """
    with job.repo.scm_context(quiet=True):  # .gitignore entries for the outputs, autostage
        if ignore:
            with gitignore.fast(job.repo):
                stage.ignore_outs()
        write = lambda: lockfile.dump_entry(stage, entry) or stage.dump(update_pipeline=False)  # noqa: E731
        _dump(job, stage, write)


def _record_group(job: _Job, stage: PipelineStage, posted: group.Record) -> None:
    """:func:`_record` by group commit (:mod:`lauf_dvc.dvc.commit.group`): this stage's
    entry and ``.gitignore`` lines and those of every stage waiting, in one rewrite;
    nothing if another worker wrote them already. Where that cannot write the entry, DVC
    dumps it."""

    def write() -> str:
        done = group.commit(job.repo, stage, posted)
        if done == "dvc":
            stage.dump(update_pipeline=False)
        return done

    with job.repo.scm_context(quiet=True):
        _dump(job, stage, write)


def _dump(job: _Job, stage: Stage, write: Any) -> None:
    """Write the stage's entry (``write()``), atomically, checking it went through
    :mod:`lauf_dvc.dvc.commit.atomic` (unless ``write()`` says ``"found"``: a group
    commit whose entry another worker wrote)."""
    assert job.atomic is not None  # the fast path
    job.atomic.stage, before = job.address, job.atomic.replaced
    try:
        done = write()
    finally:
        job.atomic.stage = None
    if done != "found":
        job.atomic.check(before)


@contextmanager
def _ignores_deferred(stage: PipelineStage) -> Iterator[None]:
    """``Output.save`` adds the output to ``.gitignore`` (a file other stages' outputs
    share): outside the repository lock that waits for :func:`_record`."""
    for out in stage.outs:
        out.ignore = _no_ignore
    try:
        yield
    finally:
        for out in stage.outs:
            del out.ignore


def _no_ignore() -> None:
    pass


def _records(repo: Repo) -> Path:
    """Where running commands are recorded (see :mod:`lauf_dvc.dvc.run.command`)."""
    return Path(repo.tmp_dir) / "lauf" / "commands"


def _lock_entry(stage: Any) -> dict[str, Any] | None:
    """The stage's dvc.lock entry as DVC serialises it, or a ``.dvc`` file's content
    (None if it has none yet)."""
    from dvc.stage import PipelineStage
    from dvc.stage.serialize import to_single_stage_lockfile

    try:
        if not isinstance(stage, PipelineStage):
            return _plain(stage.dumpd())
        return _plain(to_single_stage_lockfile(stage))
    except (AssertionError, AttributeError, TypeError):  # nothing recorded for some item
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- DVC's path locks ---------------------------------------------------------------------


class _PathLocks:
    """DVC's rwlock on the stage's dependencies (read) and outputs (write).

    ``dvc repro`` holds it around the whole stage (``@rwlocked`` on ``Stage.reproduce``);
    we do too, across the three phases. Entries are keyed by pid and command line, so
    DVC's own ``@rwlocked`` methods called meanwhile in this process re-enter freely.
    """

    def __init__(self, repo: Repo, stage: PipelineStage) -> None:
        from dvc.rwlock import rwlock

        _reentrant_rwlock()
        paths = compat.rwlock_paths
        hardlink = repolock.uses_hardlink(repo)
        cmd = " ".join(sys.argv)  # what @rwlocked uses: the same owner re-enters
        read, write = paths(stage.deps), paths(stage.outs)
        self._key = (os.getpid(), repo.tmp_dir, cmd)
        self._paths = (frozenset(read), frozenset(write))
        self._cm: AbstractContextManager[None] = rwlock(
            repo.tmp_dir, repo.fs, cmd, read, write, hardlink
        )
        self.held = False

    def acquire(self) -> None:
        self._cm.__enter__()
        self.held = True
        _HELD[self._key] = self._paths

    def release(self) -> None:
        if self.held:
            self.held = False
            _HELD.pop(self._key, None)
            self._cm.__exit__(None, None, None)


#: The path locks this process holds through :class:`_PathLocks`:
#: (pid, tmp_dir, cmd) -> (paths read, paths written).
_HELD: dict[tuple[int, str, str], tuple[frozenset[str], frozenset[str]]] = {}


def _reentrant_rwlock() -> None:
    """DVC's ``@rwlocked`` methods called while :class:`_PathLocks` holds the stage's
    paths (``Stage.changed`` and the two it calls, ``remove_outs``, ``checkout``...) lock
    nothing new: the same owner (pid and command line) already holds every path they ask
    for. DVC still edits ``.dvc/tmp/rwlock`` twice for each (take its lock file, read and
    validate the JSON, write it back), adding entries that can block no one and removing
    them again: eight edits per stage, under DVC's repository lock. Here such a call
    passes at once, leaving the file as it would be after it. Anything not already held
    goes to DVC's ``rwlock`` as before. Once per process (compat item
    ``rwlock-reentrant``)."""
    import dvc.rwlock

    real = dvc.rwlock.rwlock
    if getattr(real, "lauf_reentrant", False) or not compat.enabled("rwlock-reentrant"):
        return

    @contextmanager
    def rwlock(
        tmp_dir: str, fs: Any, cmd: str, read: Any, write: Any, hardlink: Any
    ) -> Iterator[None]:
        held = _HELD.get((os.getpid(), tmp_dir, cmd))
        if (
            held is not None
            and held[1].issuperset(write)
            and held[0].union(held[1]).issuperset(read)
        ):
            yield
            return
        with real(tmp_dir, fs, cmd, read, write, hardlink):
            yield

    rwlock.lauf_reentrant = True  # type: ignore[attr-defined]
    dvc.rwlock.rwlock = rwlock


def pull_run_cache(root: str | Path) -> None:
    """``dvc repro --pull``'s first step: fetch the run cache from the default remote
    (a remote that has none, or no remote, is a warning, as in DVC)."""
    from dvc.stage.cache import RunCacheNotSupported

    with contextlib.closing(make_repo(root)) as repo, locked(repo):
        log.debug("Pulling run cache")
        try:
            repo.stage_cache.pull(None)
        except RunCacheNotSupported as exc:
            log.warning("Failed to pull run cache: %s", exc)
