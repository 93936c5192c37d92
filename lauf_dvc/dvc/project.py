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
from lauf_dvc.dvc.pipeline import StageInfo, dvc_errors, reword
from lauf_dvc.dvc.plan import Selection
from lauf_dvc.dvc.verdictcache import StageVerdict
from lauf_dvc.errors import ConfigError, PipelineError
from lauf_dvc.scheduler.store import Store
from lauf_dvc.scheduler.worker import Task
from lauf_dvc.states import TaskState

if TYPE_CHECKING:
    from lauf_dvc.plugins import Hooks

log = logging.getLogger(__name__)
S = TaskState

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
    from lauf_dvc.dvc import pipecache, verdictcache
    from lauf_dvc.dvc.pipeline import load_locked, locked, open_repo, plan_locked

    root = find_root(start)
    lauf_dir = root / LAUF_DIR
    whole = not targets and (selection is None or selection.all_pipelines or from_store)
    cached = pipecache.load(root, lauf_dir) if whole or selection is not None else None
    if cached is not None:
        lauf_vars, stages = cached
        picked = stages if whole or selection is None else select_cached(root, stages, selection)
        if picked is not None:  # nothing the pipeline is built from changed since last time
            project = _project(root, cli, lauf_vars, picked)
            if from_store:
                project = project.restricted_to_store()
            dvc_stages = _dvc_judged(project) if prefetch_verdicts else set()
            if dvc_stages:  # DVC's verdicts: those still valid are kept, the others asked
                stage_list = [s for s in project.stages if s.address in dvc_stages]
                keys = verdictcache.Keys(root, stage_list)
                verdicts = verdictcache.load(lauf_dir, keys)
                if ask := dvc_stages - set(verdicts):
                    with open_repo(root) as repo, locked(repo):
                        verdicts.update(_verdicts_locked(repo, project.stages, ask))
                    verdictcache.save(lauf_dir, keys, verdicts)
                project._prefetched = verdicts
            return project
    # One Repo and one DVC index for settings, pipeline and (for `status`, `--dry`)
    # DVC's verdicts: each new Repo or lock re-parses every dvc.yaml and dvc.lock.
    # A full load: dvc.yaml may have changed in ways the stored verdicts do not key on
    # (an output's `cache`, `persist`...), so they go; status stores fresh ones below.
    verdictcache.forget(lauf_dir)
    with open_repo(root) as repo, pipecache.recording(repo) as rec, locked(repo):
        lauf_vars = read_lauf_vars(root, repo)
        every = load_locked(repo, () if selection is not None or from_store else targets)
        if selection is not None or from_store or not targets:
            rec.save(lauf_dir, lauf_vars, every)
        stages = every
        if selection is not None and not selection.all_pipelines:
            with dvc_errors(repo.root_dir):
                stages = plan_locked(repo, selection)
        project = _project(root, cli, lauf_vars, stages)
        if from_store:
            project = project.restricted_to_store()
        if prefetch_verdicts:
            dvc_stages = _dvc_judged(project)
            keys = verdictcache.Keys(root, [s for s in project.stages if s.address in dvc_stages])
            project._prefetched = _verdicts_locked(repo, project.stages, dvc_stages)
            verdictcache.save(lauf_dir, keys, project._prefetched)
    return project


def select_cached(
    root: Path, stages: Sequence[StageInfo], selection: Selection
) -> list[StageInfo] | None:
    """What :func:`~lauf_dvc.dvc.plan.steps` would select, from a stored pipeline, for
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
    """The stages whose staleness DVC itself decides (the ``dvc`` fingerprinter)."""
    return {s.address for s in project.stages if project.fingerprinter(s.address) == "dvc"}


# -- staleness ---------------------------------------------------------------------------


def stage_verdicts(
    project: Project, rows: Mapping[str, Any], *, prefetched: bool = False
) -> tuple[dict[str, StageVerdict], dict[str, str]]:
    """Which stages are stale and why, and the current fingerprint of those that have one.

    A stage whose fingerprinter is ``dvc`` (the default) is judged by DVC itself, against
    dvc.lock, exactly as ``dvc status``. A stage with another fingerprinter (``xxhash``,
    a plugin's) is judged by comparing its fingerprint now with the one it last completed
    with, part by part (the reasons name the parameter, dependency or output); a stage
    that has no such fingerprint yet (never run by lauf with it) is asked of DVC once,
    and its current fingerprint recorded when it is adopted or run.
    """
    from lauf_dvc.fingerprint import FingerprintContext, reasons

    verdicts: dict[str, StageVerdict] = {}
    current: dict[str, str] = {}
    ask_dvc: set[str] = set()
    hooks = project.hooks()
    with FingerprintContext(project.root, lauf_dir=project.lauf_dir) as ctx:
        for stage in project.stages:
            a, name = stage.address, project.fingerprinter(stage.address)
            if name == "dvc":
                ask_dvc.add(a)
                continue
            try:
                fp = hooks.fingerprint(stage, ctx, name)
            except (FileNotFoundError, NotADirectoryError) as exc:  # see _vanished
                verdicts[a] = _vanished(a, exc)
                continue
            current[a] = fp.to_json()
            row = rows.get(a)
            stored = row.last_fingerprint if row is not None else None
            if stage.frozen:
                verdicts[a] = StageVerdict(a, False, ("frozen",), name)
            elif stored is None or _parse(stored) is None:
                ask_dvc.add(a)
            elif stage.always_changed:
                verdicts[a] = StageVerdict(a, True, ("always changed",), name)
            else:
                why = reasons(stored, fp)
                verdicts[a] = StageVerdict(a, bool(why), tuple(why), f"{fp.label} fingerprint")
    if ask_dvc and prefetched and project._prefetched is not None:
        verdicts.update({a: v for a, v in project._prefetched.items() if a in ask_dvc})
        ask_dvc -= set(project._prefetched)
    if ask_dvc:
        verdicts.update(dvc_verdicts(project, ask_dvc))
    return verdicts, current


def _parse(text: str) -> Any:
    from lauf_dvc.fingerprint import Fingerprint

    try:
        return Fingerprint.from_json(text)
    except ValueError:
        return None


def explain(status: list[Any]) -> tuple[str, ...]:
    """Turn ``Stage.status()`` entries into short human reasons."""
    reasons: list[str] = []
    for entry in status:
        if isinstance(entry, str):
            reasons.append({"changed checksum": "command or stage definition changed",
                            "changed command": "command changed"}.get(entry, entry))  # fmt: skip
            continue
        for kind, items in entry.items():
            noun = "dependency" if kind == "changed deps" else "output"
            for path, what in items.items():
                if isinstance(what, dict):  # params: {key: status}
                    reasons += [f"{path}:{key} {st}" for key, st in what.items()]
                else:
                    reasons.append(f"{noun} {path} {what}")
    return tuple(reasons)


def dvc_verdicts(project: Project, only: set[str] | None = None) -> dict[str, StageVerdict]:
    """Ask DVC (under its repo lock, as `dvc status` does) which stages changed and why
    (all selected stages, or those in ``only``)."""
    from lauf_dvc.dvc.pipeline import locked, open_repo

    with open_repo(project.root) as repo, locked(repo):
        return _verdicts_locked(repo, project.stages, only)


def _verdicts_locked(
    repo: Any, stages: Sequence[StageInfo], only: set[str] | None
) -> dict[str, StageVerdict]:
    from dvc.exceptions import DvcException

    from lauf_dvc.dvc.pipeline import address_of
    from lauf_dvc.dvc.speedups import params_files_read_once

    out: dict[str, StageVerdict] = {}
    try:
        # one pass over the index (each dvc.yaml parsed once), not one load per stage;
        # each params file parsed once, not once per stage naming it
        by_address = {address_of(repo, s): s for s in repo.index.stages}
        made = {str(o) for s in by_address.values() for o in s.outs}  # by some stage
        with params_files_read_once():
            for info in stages:
                if only is not None and info.address not in only:
                    continue
                out[info.address] = _verdict(info.address, by_address[info.address], made)
    except DvcException as exc:
        raise PipelineError(_one_line(exc)) from None
    return out


def _verdict(address: str, stage: Any, made: set[str]) -> StageVerdict:
    # a frozen stage too: DVC checks its outputs (a missing one is a change)
    try:
        status = _status_unlocked(stage).get(stage.addressing, [])
    except (FileNotFoundError, NotADirectoryError) as exc:
        return _vanished(address, exc)
    reasons: tuple[str, ...] = ()
    if status and not _has_lock_entry(stage):  # and what will make it fail, if anything
        # a missing dependency that no stage makes: not its own outputs, nor an upstream
        # stage's (not made yet either)
        gone = tuple(
            f"dependency {path} deleted"
            for entry in status
            if isinstance(entry, dict)
            for path, what in entry.get("changed deps", {}).items()
            if what == "deleted" and path not in made
        )
        reasons = ("never run", *gone)
    elif status:
        reasons = _with_param_values(stage, explain(status))
    return StageVerdict(address, bool(status), reasons)


def _vanished(address: str, exc: OSError) -> StageVerdict:
    """A file that vanished while it was hashed: a running stage is rewriting it (its
    own outputs, or an upstream stage's that it depends on). That is a change, never an
    error: a worker joining a running pipeline must not die of it (issue 13). The stage
    reads as stale; one that is running is left alone by :func:`sync` anyway."""
    path = exc.filename or str(exc)
    return StageVerdict(address, True, (f"{path} changed while it was read",))


def _status_unlocked(stage: Any) -> dict[str, Any]:
    """``Stage.status()`` without DVC's read locks on the stage's paths (we hold the repo lock).

    A stage that a worker is running holds write locks on its outputs from its start to its
    commit, so with ``@rwlocked`` any sync or ``lauf-dvc status`` while the pipeline runs
    (a worker joining late, a SLURM array job) failed with "'out' is busy". Reading without
    them is safe: dvc.lock is consistent under the repo lock, and a stage whose files are
    being rewritten only reads as changed, so it is never adopted as up to date.
    """
    from dvc.stage import Stage

    return Stage.status.__wrapped__(stage)


def _with_param_values(stage: Any, reasons: tuple[str, ...]) -> tuple[str, ...]:
    """Replace DVC's "params.yaml:train modified" by the values that changed
    ("params.yaml:train.lr 0.1 -> 0.01"), from dvc.lock's record and the params file."""
    from dvc.dependency import ParamsDependency

    from lauf_dvc.dvc.pipeline import _dep_path
    from lauf_dvc.fingerprint import Fingerprint, diff, json_value, param_key

    old: dict[str, str] = {}
    new: dict[str, str] = {}
    for dep in stage.deps:
        if not isinstance(dep, ParamsDependency):
            continue
        path = _dep_path(stage.repo, dep)
        recorded = dep.hash_info.value if isinstance(dep.hash_info.value, dict) else {}
        try:
            current = dep.read_params() if dep.exists else {}
        except Exception:  # unreadable params: DVC's own words stay
            return reasons
        for key in set(recorded) | set(current):
            if key in recorded:
                old[param_key(f"{path}:{key}")] = json_value(recorded[key])
            if key in current:
                new[param_key(f"{path}:{key}")] = json_value(current[key])
    if old == new:
        return reasons
    precise = diff(Fingerprint("params", "1", old), Fingerprint("params", "1", new))
    files = {k.split(":", 2)[1] for k in set(old) | set(new)}
    kept = [r for r in reasons if not any(r.startswith(f"{f}:") for f in files)]
    return tuple(precise + kept)


def _has_lock_entry(stage: Any) -> bool:
    outs_known = any(o.hash_info for o in stage.outs) if stage.outs else False
    deps_known = any(d.hash_info for d in stage.deps) if stage.deps else False
    return outs_known or deps_known or not (stage.outs or stage.deps)


@dataclass
class SyncReport:
    verdicts: dict[str, StageVerdict]
    will_run: dict[str, str]  # address -> the reason it runs (or may run)
    invalidated: list[str]
    adopted: list[str]


def sync(
    project: Project,
    store: Store | None,
    *,
    worker: str | None,
    force: bool = False,
    reset_failures: bool = False,
    dry: bool = False,
) -> SyncReport:
    """Bring the database in line with what DVC says is stale.

    Changed completed stages become invalidated (and their downstream); stages found
    up to date, with nothing upstream to run, are adopted as completed (so a
    `dvc repro -s X` elsewhere is seen). Each stage's fingerprinter decides (see
    :func:`stage_verdicts`). With ``dry`` nothing is written (``store`` None: there is no
    database yet, every stage is new).
    """
    if store is None and not dry:
        raise ValueError("sync needs a store unless dry")
    if reset_failures and not dry:
        assert store is not None  # a new run retries what failed in the last one
        store.reset(
            [r.id for r in store.task_rows() if r.state in (S.FAILED, S.KILLED)],
            worker=worker,
            reason="new run",
        )
    # States first, DVC second: a stage another worker is running reads as changed to DVC
    # (its outputs are being rewritten); read in this order, it is seen as running and
    # left alone even if it completes meanwhile, never as completed-and-changed (re-run).
    rows = {r.id: r for r in store.task_rows()} if store is not None else {}
    verdicts, current = stage_verdicts(project, rows, prefetched=dry)
    will_run: dict[str, str] = {}
    invalidated: list[str] = []
    adopted: list[str] = []
    for stage in project.stages:
        a = stage.address
        verdict = verdicts[a]
        state = rows[a].state if a in rows else S.PENDING
        upstream = next((u for u in stage.upstream if u in will_run), None)
        if force:
            will_run[a] = "forced"
        elif verdict.changed:
            will_run[a] = "; ".join(verdict.reasons) or "changed"
        elif upstream is not None:  # the chain of causes: upstream b <- upstream a <- why
            will_run[a] = f"upstream {upstream} <- {will_run[upstream]}"
        if dry or store is None or state == S.RUNNING:
            continue
        if a in will_run and state == S.COMPLETED and (force or verdict.changed):
            invalidated += store.invalidate(
                {a: (rows[a].last_fingerprint, None, will_run[a])},
                worker=worker,
                forget_fingerprint=force,
            )
        elif a not in will_run and state in (S.PENDING, S.INVALIDATED):
            reason = f"up to date ({verdict.source})"
            fp = current.get(a)
            if store.adopt_completed(a, fingerprint=fp, worker=worker, reason=reason):
                adopted.append(a)
    if not dry and invalidated:
        project.hooks().pipeline_synced(
            {a: will_run.get(a) or "upstream changed" for a in invalidated}, project.root
        )
    return SyncReport(verdicts, will_run, invalidated, adopted)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def status_rows(project: Project) -> list[dict[str, Any]]:
    """Every selected stage: its state in the database, whether it is stale, and why."""
    store = project.store() if project.has_database() else None  # a look creates nothing
    report = sync(project, store, worker=None, dry=True)
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
