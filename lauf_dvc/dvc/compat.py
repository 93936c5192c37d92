"""DVC behind one seam: every DVC internal lauf uses, what for, since when, and what
happens without it.

DVC has no plugin API for running a stage, so lauf's fast path reaches into DVC: it
runs the command itself (so several run at once) and writes one ``dvc.lock`` entry
without re-rendering the file, and its caches trust that DVC reads every file through
calls lauf can watch. DVC may move any of these between minor releases. Each one is an
:class:`Item` below with a probe; :func:`check` runs the probes once per process (when
the first repository is opened, :func:`lauf_dvc.dvc.load.pipeline.make_repo`). Where a probe
fails, lauf says so in one warning line and does without:

- ``fast`` items: stages are reproduced by DVC's public path instead,
  ``stage.reproduce()`` then ``stage.dump(update_pipeline=False)`` under the repository
  lock (DVC itself releases the lock around the command, so stages still run in
  parallel; the command's output goes to the worker's output, not to the stage's log);
- ``cache`` items: the pipeline snapshot and the stored verdicts
  (:mod:`~lauf_dvc.dvc.load.pipecache`, :mod:`~lauf_dvc.dvc.status.verdictcache`) are off: every
  run loads the pipeline and asks DVC afresh (slower, never a stale answer);
- ``speed`` items: that one speed-up is off (DVC's own code runs; same results).

``LAUF_DVC_COMPAT_BREAK=name,name`` makes those probes fail (to test the fallbacks).
tests/dvc/test_compat.py asserts that on the DVC versions CI runs (the lowest that
``pyproject.toml`` allows and the newest) every probe succeeds.

The speed-ups themselves live beside the caches they serve (:mod:`.load.speedups`,
:mod:`.commit.atomic`, :mod:`.load.pipecache`, :mod:`.repolock`); each asks :func:`enabled` before
it patches anything, and the names it touches are the ones probed here.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lauf_dvc.errors import ConfigError

log = logging.getLogger(__name__)

Role = Literal["fast", "cache", "speed"]
BREAK_ENV = "LAUF_DVC_COMPAT_BREAK"


@dataclass(frozen=True)
class Item:
    name: str
    role: Role
    since: str  # the DVC version it was checked against first
    what: str  # what lauf uses it for
    without: str  # what happens where the probe fails
    probe: Callable[[], object]  # raises (or returns False) if the internal moved


def _params(func: Any, *names: str) -> bool:
    got = inspect.signature(func).parameters
    return all(n in got for n in names)


def _probe_repo_init() -> bool:
    from dvc.repo import Repo

    return _params(Repo.__init__, "_wait_for_lock")


def _probe_lock_depth() -> bool:
    from dvc.repo import Repo, lock_repo

    return "_lock_depth" in inspect.getsource(Repo.__init__) and callable(lock_repo)


def _probe_run() -> bool:
    from dvc.stage import run

    return (
        _params(run._make_cmd, "executable", "cmd")
        and callable(run._warn_if_fish)
        and callable(run.get_executable)
        and _params(run.prepare_kwargs, "stage")
    )


def _probe_wrapped(method: str) -> Callable[[], bool]:
    def probe() -> bool:
        from dvc.stage import Stage

        return callable(getattr(getattr(Stage, method), "__wrapped__", None))

    return probe


def _probe_lockfile() -> bool:
    from dvc.dvcfile import ProjectFile
    from dvc.stage.serialize import to_lockfile, to_single_stage_lockfile
    from dvc.utils.serialize._yaml import _get_yaml

    return (
        isinstance(inspect.getattr_static(ProjectFile, "_lockfile"), property)
        and callable(to_lockfile)
        and callable(to_single_stage_lockfile)
        and hasattr(_get_yaml(), "dump")
    )


def _probe_rwlock() -> bool:
    from dvc import rwlock

    return _params(rwlock.rwlock, "tmp_dir", "fs", "cmd", "read", "write", "hardlink") and (
        _params(rwlock.make_lock, "lockfile", "tmp_dir", "friendly", "hardlink_lock", "wait")
    )


def _probe_rwlock_reentrant() -> bool:
    import dvc.stage.decorators
    from dvc import rwlock

    source = inspect.getsource(dvc.stage.decorators)
    return (
        "from dvc.rwlock import rwlock" in source  # looked up at each call
        and 'cmd = " ".join(sys.argv)' in source
        and _params(rwlock.rwlock, "tmp_dir", "fs", "cmd", "read", "write", "hardlink")
    )


def _probe_reflink() -> bool:
    import sys

    from dvc_objects.fs import local, system, utils

    if sys.platform != "linux":
        return False  # macOS clonefile never truncates an existing destination
    return (
        "O_TRUNC" in inspect.getsource(getattr(system.reflink, "lauf_real", system.reflink))
        and "system.reflink(" in inspect.getsource(local.FsspecLocalFileSystem.reflink)
        and "system.reflink(" in inspect.getsource(utils.copyfile)
    )


def _probe_group_commit() -> bool:
    from dvc.output import Output
    from dvc.repo.scm_context import SCMContext

    source = inspect.getsource(Output.ignore)
    return (
        _params(SCMContext.ignore, "path")
        and _params(SCMContext.track_file, "paths")
        and isinstance(inspect.getattr_static(Output, "use_scm_ignore"), property)
        and "scm.is_tracked(self.fspath)" in source
        and "scm_context.ignore(self.fspath)" in source
    )


def _probe_dump_yaml() -> bool:
    import dvc.dvcfile

    return _params(dvc.dvcfile.dump_yaml, "path", "data", "fs")


def _probe_strictyaml() -> bool:
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils import strictyaml

    return COMPILED_LOCKFILE_SCHEMA is not None and _params(
        strictyaml.load, "path", "schema", "fs", "encoding", "round_trip"
    )


def _probe_localfs() -> bool:
    from dvc.fs import LocalFileSystem

    fs = LocalFileSystem()
    return fs.protocol == "local" and callable(fs.open) and callable(fs.walk)


def _probe_schema() -> bool:
    import voluptuous
    from dvc import schema

    vol = getattr(schema.vol, "_real", schema.vol)  # (speedups may have wrapped it)
    return vol is voluptuous and callable(schema.either_or)


def _probe_params() -> bool:
    from dvc.dependency import param

    return callable(param.load_path) and callable(param.ParamsDependency.read_params)


def _probe_reset() -> bool:
    from dvc.config import Config
    from dvc.repo import Repo

    source = inspect.getsource(Repo._reset)
    return "self.state.close()" in source and '"config"' in source and hasattr(Config, "files")


def _probe_stage_loader() -> bool:
    from dvc.dvcfile import ProjectFile
    from dvc.parsing import DataResolver
    from dvc.parsing.context import Context
    from dvc.stage.loader import StageLoader

    return (
        _params(StageLoader.__init__, "dvcfile", "data", "lockfile_data")
        and _params(DataResolver.__init__, "repo", "wdir", "d")
        and "resolver" in vars(ProjectFile)
        and "self.imports" in inspect.getsource(Context.__init__)
        and "self.resolver.resolve_one(name)" in inspect.getsource(StageLoader.__getitem__)
    )


def _probe_dulwich() -> bool:
    from dulwich import ignore

    manager = ignore.IgnoreFilterManager("/", [], False)
    patterns = ignore.IgnoreFilter([b"/x", b"!y"]).patterns
    return (
        callable(ignore.IgnoreFilter.append_pattern)
        and isinstance(manager._path_filters, dict)
        and manager._global_filters == []
        and manager._ignorecase is False
        and manager._top_path == "/"
        and [p.is_exclude for p in patterns] == [True, False]
        and callable(ignore.read_ignore_patterns)
    )


ITEMS: tuple[Item, ...] = (
    Item("repo-wait-for-lock", "speed", "3.61",
         "Repo(root, _wait_for_lock=True): a worker waits for DVC's repository lock instead "
         "of failing at once when another dvc command holds it",
         "the lock is taken without DVC's wait: lauf's own queue (a flock) still orders "
         "lauf's workers; a dvc command holding it long fails the stage", _probe_repo_init),
    Item("repo-lock-depth", "fast", "3.61",
         "repo._lock_depth and dvc.repo.lock_repo: take DVC's lock once per phase and "
         "re-enter it (DVC's own reentrancy counter)",
         "DVC's public path", _probe_lock_depth),
    Item("stage-run-command", "fast", "3.61",
         "dvc.stage.run._make_cmd, _warn_if_fish, get_executable, prepare_kwargs: run "
         "each command line exactly as DVC does (shell, env with DVC_ROOT/DVC_STAGE, "
         "wdir), without the repository lock and with output to the stage's log",
         "DVC's public path", _probe_run),
    Item("stage-commit-unlocked", "fast", "3.61",
         "Stage.commit.__wrapped__: commit outputs to the cache while holding only the "
         "stage's path locks (@rwlocked would assert the repository lock)",
         "DVC's public path", _probe_wrapped("commit")),
    Item("stage-status-unlocked", "speed", "3.61",
         "Stage.status.__wrapped__: read a stage's status without DVC's read locks on its "
         "paths, so status and a late worker's sync work while stages run",
         "stage.status() with DVC's read locks: a sync while a stage writes its outputs "
         "may fail with 'is busy'", _probe_wrapped("status")),
    Item("lockfile-entry", "fast", "3.61",
         "ProjectFile._lockfile, dvc.stage.serialize.to_lockfile / "
         "to_single_stage_lockfile, dvc.utils.serialize._yaml._get_yaml: write one "
         "stage's dvc.lock entry, byte-equal to DVC's dump, without re-rendering the file",
         "DVC's public path", _probe_lockfile),
    Item("rwlock", "fast", "3.61",
         "dvc.rwlock.rwlock (hold a stage's path locks across its three phases, as "
         "@rwlocked around Stage.reproduce does; the paths as dvc/stage/decorators.py "
         "_chain lists them) and dvc.rwlock.make_lock (break a path-lock file a dead "
         "worker left)", "DVC's public path", _probe_rwlock),
    Item("rwlock-reentrant", "speed", "3.61",
         "dvc.rwlock.rwlock, looked up by @rwlocked (dvc/stage/decorators.py) at each "
         "call: DVC's methods called while lauf holds the stage's path locks pass without "
         "editing .dvc/tmp/rwlock", "two edits of .dvc/tmp/rwlock for each such call "
         "(about eight a stage)", _probe_rwlock_reentrant),
    Item("reflink-atomic", "speed", "3.61",
         "dvc_objects.fs.system.reflink (Linux; looked up by LocalFileSystem.reflink and "
         "copyfile at each call): a failed clone never truncates or deletes an existing "
         "cache object another worker just added", "workers committing identical "
         "outputs at once may fail one stage (DVC's own reflink)", _probe_reflink),
    Item("group-commit", "speed", "3.61",
         "Output.ignore's two steps (scm.is_tracked, then scm_context.ignore; "
         "Output.use_scm_ignore) and SCMContext.track_file: the worker holding DVC's "
         "lock writes the .gitignore lines and dvc.lock entries of every saved stage "
         "waiting for it, in one rewrite", "one dvc.lock rewrite per stage",
         _probe_group_commit),
    Item("dvcfile-dump-yaml", "fast", "3.61",
         "dvc.dvcfile.dump_yaml: give a .dvc file's dump repo.fs, so it is replaced "
         "atomically", "DVC's public path", _probe_dump_yaml),
    Item("local-fs-calls", "fast", "3.61",
         "repo.fs.open / repo.fs.walk (instance attributes of DVC's LocalFileSystem): "
         "dvc.lock replaced atomically (never torn for a concurrent dvc status), and "
         "every file and folder DVC reads noted for the pipeline snapshot",
         "DVC's public path; snapshot and stored verdicts off",
         _probe_localfs),
    Item("strictyaml-load", "cache", "3.61",
         "dvc.utils.strictyaml.load and dvc.schema.COMPILED_LOCKFILE_SCHEMA: dvc.yaml and "
         "dvc.lock parsed and validated once per content (dvc.lock entry by entry), and "
         "noted for the pipeline snapshot", "snapshot and stored verdicts off; DVC parses "
         "every file every time", _probe_strictyaml),
    Item("schema-either-or", "speed", "3.61",
         "dvc.schema.vol: compile dvc.yaml's stage schema once per process, not once per "
         "stage validated", "DVC compiles it per stage (about 1 ms a stage)",
         _probe_schema),
    Item("params-load-path", "speed", "3.61",
         "dvc.dependency.param.load_path: a params file parsed once per status pass, not "
         "once per stage using it", "parsed once per stage", _probe_params),
    Item("dulwich-ignore", "speed", "3.61",
         "dulwich.ignore.IgnoreFilter.append_pattern and IgnoreFilterManager's "
         "_path_filters, _global_filters, _ignorecase (under DVC's scmrepo): .gitignore "
         "lines compiled once per process, DVC's own lines looked up in a set "
         "(lauf_dvc/dvc/commit/gitignore.py)", "every line compiled and matched for each "
         "output checked",
         _probe_dulwich),
    Item("repo-reset", "speed", "3.61",
         "Repo._reset (run whenever DVC's repository lock is taken or released) and "
         "Config.files: a worker keeps its configuration while no config file changed, "
         "and its state database open, from one stage to the next",
         "both rebuilt for every stage (about 10 ms a stage)", _probe_reset),
    Item("stage-loader", "speed", "3.61",
         "dvc.stage.loader.StageLoader, ProjectFile.resolver, dvc.parsing.DataResolver and "
         "Context.imports: a worker loads one stage with dvc.yaml resolved once (while "
         "it and the files it interpolates are unchanged) and only that stage's "
         "dvc.lock entry parsed", "every stage loaded through repo.stage.load_one (the "
         "whole dvc.yaml and dvc.lock read for each)", _probe_stage_loader),
)  # fmt: skip

BY_NAME = {item.name: item for item in ITEMS}


@dataclass(frozen=True)
class Report:
    failed: dict[str, str]  # item name -> why its probe failed

    def ok(self, name: str) -> bool:
        return name not in self.failed

    def role_ok(self, role: Role) -> bool:
        return not any(BY_NAME[name].role == role for name in self.failed)


_report: Report | None = None
_lock = threading.Lock()


def check() -> Report:
    """Probe every item (once per process); warn once, in one line, of those that failed."""
    global _report
    with _lock:
        if _report is None:
            _report = _run_probes()
            if _report.failed:
                log.warning("%s", describe(_report))
        return _report


def _run_probes() -> Report:
    from lauf_dvc.config import compat_broken

    broken = compat_broken()
    unknown = sorted(broken - set(BY_NAME))
    if unknown:  # a typo would otherwise test nothing, silently
        raise ConfigError(
            f"environment variable {BREAK_ENV}: unknown probe {unknown[0]!r} "
            f"(known: {', '.join(BY_NAME)})"
        )
    failed: dict[str, str] = {}
    for item in ITEMS:
        if item.name in broken:
            failed[item.name] = f"disabled by {BREAK_ENV}"
            continue
        try:
            if not item.probe():
                failed[item.name] = "not as lauf expects it"
        except Exception as exc:  # ImportError, AttributeError, TypeError...
            failed[item.name] = f"{type(exc).__name__}: {exc}"
    return Report(failed)


def describe(report: Report) -> str:
    """The warning line: which internals moved and what lauf does instead."""
    import dvc

    roles = {BY_NAME[n].role for n in report.failed}
    instead = []
    if "fast" in roles:
        instead.append("stages run through DVC's public path (stage.reproduce, then dump)")
    if "cache" in roles:
        instead.append("pipeline snapshot and stored verdicts off")
    if "speed" in roles:
        instead.append("some speed-ups off")
    names = ", ".join(f"{n} ({why})" for n, why in sorted(report.failed.items()))
    return (f"DVC {dvc.__version__}: lauf-dvc could not use {names}; "
            f"{'; '.join(instead)}: same results, slower")  # fmt: skip


def enabled(name: str) -> bool:
    """May the item ``name`` be used (its probe succeeded)?"""
    return check().ok(name)


def fast_path() -> bool:
    """May lauf run commands and write dvc.lock entries itself (every ``fast`` item)?"""
    return check().role_ok("fast")


def caches() -> bool:
    """May the pipeline snapshot and stored verdicts be trusted (every ``cache`` item)?"""
    return check().role_ok("cache") and enabled("local-fs-calls")


def reset() -> None:
    """Probe again on the next :func:`check` (tests that change the environment)."""
    global _report
    with _lock:
        _report = None


# -- the internals themselves, for the modules that use them ------------------------------


def repo_kwargs() -> dict[str, Any]:
    """Extra arguments for ``dvc.repo.Repo``: wait for DVC's lock where DVC can."""
    return {"_wait_for_lock": True} if enabled("repo-wait-for-lock") else {}


def public_lock(repo: Any) -> Any:
    """DVC's repository lock as ``dvc repro`` takes it (``lock_repo``: with fresh caches),
    or the lock object itself where that moved."""
    try:
        from dvc.repo import lock_repo
    except ImportError:
        return repo.lock
    return lock_repo(repo)


def lock_depth(repo: Any) -> int:
    return int(getattr(repo, "_lock_depth", 0))


def status_unlocked(stage: Any) -> dict[str, Any]:
    """``Stage.status()`` without DVC's read locks on the stage's paths (the caller holds
    the repository lock); DVC's locked ``status()`` if that moved."""
    from dvc.stage import Stage

    if enabled("stage-status-unlocked"):
        result: dict[str, Any] = Stage.status.__wrapped__(stage)
        return result
    return dict(stage.status())


def commit_unlocked(stage: Any, **kwargs: Any) -> None:
    """``Stage.commit``'s body, with only the stage's path locks held."""
    from dvc.stage import Stage

    Stage.commit.__wrapped__(stage, **kwargs)


def run_parts() -> tuple[Any, Any, Any, Any]:
    """``(_make_cmd, _warn_if_fish, get_executable, prepare_kwargs)`` of dvc.stage.run."""
    from dvc.stage.run import _make_cmd, _warn_if_fish, get_executable, prepare_kwargs

    return _make_cmd, _warn_if_fish, get_executable, prepare_kwargs


def lockfile_of(dvcfile: Any) -> Any:
    """The ``Lockfile`` object of a ``ProjectFile`` (its dvc.lock)."""
    return dvcfile._lockfile


def yaml_dumper() -> Any:
    """DVC's ruamel YAML instance, configured as DVC dumps dvc.lock."""
    from dvc.utils.serialize._yaml import _get_yaml

    return _get_yaml()


def rwlock_paths(items: Any) -> list[str]:
    """The paths ``@rwlocked`` locks for these deps or outs (dvc/stage/decorators.py
    ``_chain``: not those of other repositories or databases)."""
    from dvc.dependency.db import AbstractDependency
    from dvc.dependency.repo import RepoDependency

    skip = (RepoDependency, AbstractDependency)
    return [item.fs_path for item in items if not isinstance(item, skip)]
