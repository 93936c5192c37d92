"""A DVC repository as lauf sees it: settings, the selected stages, their tasks, and why
each is stale (asked of DVC itself, so lauf's verdict is ``dvc status``'s)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.config import ProjectSettings, StageSettings
from lauf_dvc.dvc.load.pipeline import StageInfo, dvc_errors, reword
from lauf_dvc.dvc.load.plan import Selection
from lauf_dvc.dvc.status import status
from lauf_dvc.dvc.status.verdictcache import StageVerdict
from lauf_dvc.errors import ConfigError, PipelineError
from lauf_dvc.fingerprint.model import reasons
from lauf_dvc.scheduler import staleness
from lauf_dvc.scheduler.staleness import Observed, Stored, Verdict
from lauf_dvc.scheduler.store import Store
from lauf_dvc.scheduler.worker import Task
from lauf_dvc.states import RETRYABLE, TaskState

if TYPE_CHECKING:
    from lauf_dvc.plugins import Hooks

log = logging.getLogger(__name__)
S = TaskState

#: DVC's verdicts for the stages given (a name of its own: tests count DVC's passes)
_verdicts_locked = status.verdicts_locked

LAUF_DIR = Path(".dvc") / "tmp" / "lauf"


def find_root(start: str | Path | None = None) -> Path:
    """The root of the DVC repository containing ``start`` (default: the cwd)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(start or os.getcwd())))
    except NotDvcRepoError:
        raise PipelineError(
            f"{start or os.getcwd()} is not inside a DVC repository: run `dvc init` first"
        ) from None


def read_lauf_vars(root: Path, repo: Any = None) -> dict[str, Any]:
    """The ``lauf`` entry of the root dvc.yaml's ``vars`` (as DVC resolves it), or {}."""
    from dvc.dvcfile import ProjectFile
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if not (root / "dvc.yaml").exists():
        return {}
    try:
        with contextlib.nullcontext(repo) if repo is not None else Repo(str(root)) as repo:
            context = ProjectFile(repo, str(root / "dvc.yaml")).resolver.context
            if "lauf" not in context:
                return {}
            value = context["lauf"].value  # unwrapped plain Python values
            if not isinstance(value, dict):
                raise PipelineError("dvc.yaml: vars entry 'lauf' must be a mapping")
            return value
    except DvcException as exc:  # a broken dvc.yaml: say where and what, as load_pipeline does
        raise PipelineError(reword(exc, str(root))) from None


@dataclass
class Project:
    """Everything a run needs to know, resolved once."""

    root: Path
    settings: ProjectSettings
    stages: list[StageInfo]
    stage_settings: dict[str, StageSettings] = field(default_factory=dict)
    _hooks: Hooks | None = field(default=None, repr=False, compare=False)
    _prefetched: dict[str, StageVerdict] | None = field(default=None, repr=False, compare=False)
    #: the pipeline snapshot these stages came from or were stored as
    #: (:func:`lauf_dvc.dvc.load.pipecache.load`); None: neither
    snapshot: list[int] | None = field(default=None, repr=False, compare=False)

    @property
    def lauf_dir(self) -> Path:
        return self.root / LAUF_DIR

    @property
    def log_dir(self) -> Path:
        return self.lauf_dir / "logs"

    @property
    def db_url(self) -> str:
        """The database URL; a relative SQLite path is relative to the repository root
        (as targets are not: every worker of the run, wherever started, must agree)."""
        url = self.settings.db or f"sqlite:///{self.lauf_dir / 'lauf.sqlite'}"
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rest = url.removeprefix("sqlite:///")
            if rest and not rest.startswith(":memory:"):
                return f"sqlite:///{self.root / rest}"
        return url

    def has_database(self) -> bool:
        """False only for a SQLite database file that does not exist yet."""
        url = self.db_url
        if not url.startswith("sqlite:///"):
            return True
        return Path(url.removeprefix("sqlite:///").partition("?")[0]).exists()

    def store(self) -> Store:
        """The scheduler database; every transition it commits goes to the plugins."""
        store = Store(self.db_url, lock=self.settings.lock)
        hooks = self.hooks()
        store.listeners.append(
            lambda t: hooks.task_state_changed(
                t.task_id, t.old, t.new, t.reason, t.worker, t.fingerprint
            )
        )
        return store

    def hooks(self) -> Hooks:
        """The plugin hooks of this project (one plugin manager per project object)."""
        if self._hooks is None:
            from lauf_dvc.plugins import Hooks, make_plugin_manager

            self._hooks = Hooks(make_plugin_manager(self.settings.disable_plugins))
        return self._hooks

    def fingerprinter(self, address: str) -> str:
        """The fingerprinter deciding whether ``address`` is stale (meta.lauf > project)."""
        return self.stage_settings[address].fingerprint or self.settings.fingerprint

    def restricted_to_store(self) -> Project:
        """This project with only the stages of the graph stored in its database (the
        run a worker joins), and their dependencies as stored (``repro -s`` orders
        them its own way); every stage if there is no database or no graph yet."""
        if not self.has_database():
            return self
        store = self.store()
        try:
            active = {row.id: row.dependencies for row in store.task_rows()}
        finally:
            store.dispose()
        if not active:
            return self
        kept = [replace(s, upstream=active[s.address]) for s in self.stages
                if s.address in active]  # fmt: skip
        return replace(
            self,
            stages=kept,
            stage_settings={s.address: self.stage_settings[s.address] for s in kept},
        )

    def tasks(self) -> list[Task[StageInfo]]:
        selected = {s.address for s in self.stages}
        out = []
        for stage in self.stages:
            ss = self.stage_settings[stage.address]
            out.append(
                Task(
                    stage.address,
                    data=stage,
                    dependencies=tuple(u for u in stage.upstream if u in selected),
                    requirements=frozenset(ss.requires),
                    max_workers=ss.max_workers,
                    priority=ss.priority,
                    retries=ss.retries,
                    resources=ss.demand(),
                    group=ss.group,
                )
            )
        return out


def open_project(
    targets: Sequence[str] = (),
    cli: Mapping[str, Any] | None = None,
    start: str | Path | None = None,
    *,
    prefetch_verdicts: bool = False,
    selection: Selection | None = None,
    from_store: bool = False,
) -> Project:
    """Find the repository, read its settings and pipeline; every problem is one line.

    Which stages: with ``selection``, those ``dvc repro`` with these options would
    consider (targets relative to the cwd, as DVC reads them); with ``from_store``, the
    graph the run in the database holds (a worker joining a run that ``repro`` planned);
    else ``targets`` (relative to the root), or every stage.

    ``prefetch_verdicts``: also ask DVC now which stages changed (for a read-only look:
    ``status``, ``repro --dry``; a sync that writes must read states first).
    """
    from lauf_dvc.dvc.load import pipecache
    from lauf_dvc.dvc.load.pipeline import load_locked, locked, open_repo, plan_locked
    from lauf_dvc.dvc.status import verdictcache

    root = find_root(start)
    lauf_dir = root / LAUF_DIR
    whole = not targets and (selection is None or selection.all_pipelines or from_store)
    cached = pipecache.load(root, lauf_dir) if whole or selection is not None else None
    if cached is not None:
        lauf_vars, stages, snapshot = cached
        picked = stages if whole or selection is None else select_cached(root, stages, selection)
        if picked is not None:  # nothing the pipeline is built from changed since last time
            project = _project(root, cli, lauf_vars, picked)
            project.snapshot = snapshot
            if from_store:
                project = project.restricted_to_store()
            if prefetch_verdicts:
                project._prefetched = dvc_verdicts(project)
            return project
    # One Repo and one DVC index for settings, pipeline and (for `status`, `--dry`)
    # DVC's verdicts: each new Repo or lock re-parses every dvc.yaml and dvc.lock.
    # A full load: dvc.yaml may have changed in ways the stored verdicts do not key on
    # (an output's `cache`, `persist`...), so they go; status stores fresh ones below.
    verdictcache.forget(lauf_dir)
    with open_repo(root) as repo, pipecache.recording(repo) as rec, locked(repo):
        lauf_vars = read_lauf_vars(root, repo)
        every = load_locked(repo, () if selection is not None or from_store else targets)
        saved = None
        if selection is not None or from_store or not targets:
            saved = rec.save(lauf_dir, lauf_vars, every)
        stages = every
        if selection is not None and not selection.all_pipelines:
            with dvc_errors(repo.root_dir):
                stages = plan_locked(repo, selection)
        project = _project(root, cli, lauf_vars, stages)
        project.snapshot = saved
        if from_store:
            project = project.restricted_to_store()
        if prefetch_verdicts:
            project._prefetched = dvc_verdicts(project, repo)
    return project


def dvc_verdicts(project: Project, repo: Any = None) -> dict[str, StageVerdict]:
    """DVC's verdict on each stage of ``project`` its fingerprinter asks DVC about: those
    stored under the same key (:mod:`lauf_dvc.dvc.status.verdictcache`) as they are, the
    others asked of DVC (on ``repo``, held locked by this thread, if given) and stored."""
    from lauf_dvc.dvc.load.pipeline import locked, open_repo
    from lauf_dvc.dvc.status import verdictcache

    judged = _dvc_judged(project)
    if not judged:
        return {}
    lauf_dir = project.lauf_dir
    keys = verdictcache.Keys(
        project.root, [s for s in project.stages if s.address in judged], project.snapshot
    )
    verdicts = verdictcache.load(lauf_dir, keys)
    if ask := judged - set(verdicts):
        if repo is not None:
            verdicts.update(_verdicts_locked(repo, project.stages, ask))
        else:
            with open_repo(project.root) as opened, locked(opened):
                verdicts.update(_verdicts_locked(opened, project.stages, ask))
        verdictcache.save(lauf_dir, keys, verdicts)
    return verdicts


def select_cached(
    root: Path, stages: Sequence[StageInfo], selection: Selection
) -> list[StageInfo] | None:
    """What :func:`~lauf_dvc.dvc.load.plan.steps` would select, from a stored pipeline, for
    the one common case DVC's planning needs no repository for: no targets (the
    ``dvc.yaml`` of the cwd) and no option. None: ask DVC (any other case, or a cwd
    without stages, where DVC's own error is the answer)."""
    sel = selection.normalized()
    if sel.targets or sel.recursive or sel.glob or sel.single_item or sel.pipeline:
        return None
    if sel.downstream:
        return None
    cwd = Path(sel.cwd or os.getcwd())
    dvcfile = Path(os.path.relpath(cwd / "dvc.yaml", root)).as_posix()
    by_address = {s.address: s for s in stages}
    todo = [s.address for s in stages if s.dvcfile == dvcfile]
    if not todo:
        return None
    picked: set[str] = set()
    while todo:  # everything upstream, through DVC's active graph (frozen: cut off)
        address = todo.pop()
        if address in picked:
            continue
        picked.add(address)
        if not by_address[address].frozen:
            todo += by_address[address].upstream
    return [s for s in stages if s.address in picked]


def _project(
    root: Path, cli: Mapping[str, Any] | None, lauf_vars: dict[str, Any], stages: list[StageInfo]
) -> Project:
    settings = ProjectSettings.resolve(cli, lauf_vars, source="dvc.yaml")
    stage_settings = {
        s.address: StageSettings.from_meta(s.meta, where=f"{s.dvcfile}:{s.name}") for s in stages
    }
    for s in stages:
        if stage_settings[s.address].max_workers > 1:
            # A DVC stage is one reproduction: DVC removes its outputs, write-locks them
            # and records one dvc.lock entry; copies of its command side by side are
            # nothing DVC can record (they killed each other's runs). Graphband tasks
            # keep max_workers.
            raise ConfigError(
                f"{s.dvcfile}:{s.name}: meta.lauf.max_workers: a DVC stage runs its command "
                "once; remove the key (spread the work inside the command, or make several "
                "stages with foreach)"
            )
    return Project(root, settings, stages, stage_settings)


def _dvc_judged(project: Project) -> set[str]:
    """The stages whose fingerprinter compares through DVC's status (prefetched by
    :func:`open_project` on the repository it has open and locked anyway)."""
    hooks = project.hooks()
    names = {project.fingerprinter(s.address) for s in project.stages}
    asks = {n for n in names if getattr(hooks.fingerprinter(n), "uses_dvc_status", False)}
    return {s.address for s in project.stages if project.fingerprinter(s.address) in asks}


# -- staleness: read (here) -> decide (lauf_dvc.scheduler.staleness) -> apply (the store) --


def observe(
    project: Project, rows: Mapping[str, Any], *, prefetched: bool = False
) -> dict[str, Observed]:
    """Read: what each stage's fingerprinter finds now (every fingerprinter alike).

    A fingerprinter with an ``observe`` method (the built-in ``dvc``: DVC's own status,
    against dvc.lock, for all its stages in one pass) observes its stages itself; for
    the others (``xxhash``, most plugins) the fingerprint now is compared with the one the
    stage last completed with, part by part (the reasons name the parameter, dependency
    or output). A stage that has no such fingerprint yet (never run by lauf with it) is
    judged once by its ``dvc.lock`` entry, as DVC would, and its fingerprint recorded
    when it is adopted or run.
    """
    from lauf_dvc.fingerprint import FingerprintContext

    hooks = project.hooks()
    groups: dict[str, list[StageInfo]] = {}
    for stage in project.stages:
        groups.setdefault(project.fingerprinter(stage.address), []).append(stage)
    out: dict[str, Observed] = {}
    by_lock: dict[str, str | None] = {}  # judged by their dvc.lock entry: {address: keep}
    with FingerprintContext(project.root, lauf_dir=project.lauf_dir) as ctx:
        if prefetched and project._prefetched is not None:
            ctx.cache[status.PREFETCHED] = project._prefetched
        elif project.snapshot is not None:  # those DVC would say the same of again
            ctx.cache[status.PREFETCHED] = dvc_verdicts(project)
        for name, stages in groups.items():
            found = hooks.observe(stages, ctx, name)
            if found is not None:
                out.update(found)
                continue
            for stage in stages:
                a = stage.address
                try:
                    fp = hooks.fingerprint(stage, ctx, name)
                except (FileNotFoundError, NotADirectoryError) as exc:  # see status.vanished
                    out[a] = status.observed(status.vanished(a, exc))
                    continue
                row = rows.get(a)
                stored = row.last_fingerprint if row is not None else None
                if stage.frozen:
                    out[a] = Observed(fp.to_json(), pinned="frozen", source=name)
                elif stored is None or _parse(stored) is None:
                    by_lock[a] = fp.to_json()
                elif stage.always_changed:
                    out[a] = Observed(fp.to_json(), always="always changed", source=name)
                else:
                    why = tuple(reasons(stored, fp))
                    out[a] = Observed(fp.to_json(), reasons=why, source=f"{fp.label} fingerprint")
        if by_lock:
            judged = [s for s in project.stages if s.address in by_lock]
            verdicts = dict(ctx.cache.get(status.PREFETCHED) or {})
            ask = set(by_lock) - set(verdicts)
            if ask:
                verdicts.update(status.dvc_verdicts(project.root, judged, ask))
            for a, keep in by_lock.items():
                out[a] = replace(status.observed(verdicts[a]), keep=keep)
    return out


def _parse(text: str) -> Any:
    from lauf_dvc.fingerprint import Fingerprint

    try:
        return Fingerprint.from_json(text)
    except ValueError:
        return None


@dataclass
class SyncReport:
    verdicts: dict[str, Verdict]
    will_run: dict[str, str]  # address -> the reason it runs (or may run)
    invalidated: list[str]
    adopted: list[str]


def reconcile(
    project: Project,
    store: Store | None,
    *,
    worker: str | None,
    force: bool = False,
    reset_failures: bool = False,
    dry: bool = False,
) -> SyncReport:
    """Bring the database in line with what the stages' fingerprinters find.

    Read (the stored states, then :func:`observe`), decide
    (:func:`lauf_dvc.scheduler.staleness.decide`, the engine Graphband uses too), apply
    (one store call): changed completed stages become invalidated (and their
    downstream); stages found up to date, with nothing upstream to run, are adopted as
    completed (so a `dvc repro -s X` elsewhere is seen). With ``dry`` nothing is written
    (``store`` None: there is no database yet, every stage is new).
    """
    if store is None and not dry:
        raise ValueError("sync needs a store unless dry")
    if reset_failures and not dry:
        assert store is not None  # a new run retries what failed in the last one
        store.reset(
            [r.id for r in store.task_rows() if r.state in RETRYABLE],
            worker=worker,
            reason="new run",
        )
    # States first, DVC second: a stage another worker is running reads as changed to DVC
    # (its outputs are being rewritten); read in this order, it is seen as running and
    # left alone even if it completes meanwhile, never as completed-and-changed (re-run).
    rows = {r.id: r for r in store.task_rows()} if store is not None else {}
    observed = observe(project, rows, prefetched=dry)
    stored = {a: Stored(r.state, r.last_fingerprint) for a, r in rows.items()}
    graph = [(s.address, s.upstream) for s in project.stages]
    decision = staleness.decide(graph, stored, observed, force=force)
    if dry:  # what would happen, nothing written
        return SyncReport(decision.verdicts, decision.stale, [], [])
    assert store is not None
    done = store.apply_decision(decision, worker=worker)
    if done.invalidated:
        project.hooks().pipeline_synced(
            {a: decision.stale.get(a) or "upstream changed" for a in done.invalidated},
            project.root,
        )
    return SyncReport(decision.verdicts, decision.stale, done.invalidated, done.adopted)


def status_rows(project: Project) -> list[dict[str, Any]]:
    """Every selected stage: its state in the database, whether it is stale, and why."""
    store = project.store() if project.has_database() else None  # a look creates nothing
    report = reconcile(project, store, worker=None, dry=True)
    db = {r.id: r for r in store.task_rows()} if store is not None else {}
    rows = []
    for stage in project.stages:
        a = stage.address
        row = db.get(a)
        state = row.state.value if row else "new"
        reason = report.will_run.get(a, "up to date")
        if row is not None and row.state in (S.FAILED, S.KILLED, S.UPSTREAM_FAILED, S.RUNNING):
            reason = row.reason or row.state.value
            if row.state == S.FAILED and row.info.get("exit_code") is not None:
                reason = f"failed with exit code {row.info['exit_code']}"
        entry: dict[str, Any] = dict(stage=a, state=state, stale=a in report.will_run,
                                     reason=reason)  # fmt: skip
        if row is not None and row.info.get("log"):
            entry["log"] = row.info["log"]
        rows.append(entry)
    if store is not None:
        store.dispose()
    return rows
