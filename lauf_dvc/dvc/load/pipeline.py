"""Load a DVC pipeline through DVC's own API: every stage of every ``dvc.yaml``, in order.

Nothing here parses YAML: DVC reads the files (foreach/matrix expansion, ``vars``
interpolation, params from other files) and builds the graph, exactly as for
``dvc repro``. Every DVC error becomes a one-line :class:`PipelineError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc import compat
from lauf_dvc.errors import PipelineError

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import PipelineStage, Stage
    from networkx import DiGraph

    from lauf_dvc.dvc.load.plan import Selection

log = logging.getLogger(__name__)

PROJECT_FILE = "dvc.yaml"
LIST_HINT = "run `dvc stage list --all` to see the stages"


@dataclass(frozen=True)
class StageInfo:
    """One stage of the pipeline, as DVC resolved it; every path is relative to the repo root."""

    address: str  # as `dvc repro` accepts it from the root: "train", "sub/dvc.yaml:gen@x"
    dvcfile: str  # "dvc.yaml", "sub/dvc.yaml"
    name: str  # the name inside its file: "featurize@a"
    cmd: tuple[str, ...]  # command lines, each run on its own (as DVC does)
    wdir: str  # "." for the root
    deps: tuple[str, ...]  # dependency paths (params files are in `params`)
    outs: tuple[str, ...]  # outputs of every kind: outs, metrics, plots
    params: tuple[str, ...]  # "params.yaml:train.lr"; a bare file name tracks the whole file
    upstream: tuple[str, ...]  # addresses of the stages producing its dependencies (direct only)
    frozen: bool
    always_changed: bool
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)  # interpolated `meta`
    kind: str = "pipeline"  # "pipeline" (dvc.yaml), "data" (`dvc add`), "import" (.dvc)

    @property
    def is_pipeline(self) -> bool:
        return self.kind == "pipeline"


# -- public API ---------------------------------------------------------------------------


def load_pipeline(root: str | Path, targets: Sequence[str] = ()) -> list[StageInfo]:
    """Every stage of the repository at ``root``, upstream first: ``dvc.yaml`` stages and
    ``.dvc`` files (data sources and imports), as in DVC's own graph.

    Without targets: every stage (like ``dvc repro --all-pipelines``). With targets:
    those stages and everything upstream of them, as ``dvc repro TARGET...`` would
    consider (a frozen stage does not pull in its upstream). Targets are stage names,
    addresses (``sub/dvc.yaml:gen``), foreach/matrix group names, paths to a
    ``dvc.yaml`` or a ``.dvc`` file, here always relative to the repository root (the
    command line resolves a user's targets against the cwd, as DVC does: see
    :func:`plan_locked`).

    The order is topological and deterministic: among ready stages, the root ``dvc.yaml``
    first, then other files by path, each in file order. ``upstream`` lists the direct
    producers of a stage's dependencies, frozen stages included, so that no stage runs
    while something it reads is being written.

    Raises:
        PipelineError: broken ``dvc.yaml``, dependency cycle, output declared twice,
            unknown target, not a DVC repository. ``str()`` is one line.
    """
    with open_repo(root) as repo, locked(repo):
        return load_locked(repo, targets)


def load_locked(repo: Repo, targets: Sequence[str] = ()) -> list[StageInfo]:
    """:func:`load_pipeline` with an open repository whose lock the caller holds."""
    with dvc_errors(repo.root_dir):
        graph = repo.index.graph
        selected = select_stages(repo, graph, targets)
        return infos(repo, graph, selected)


def plan_locked(repo: Repo, selection: Selection) -> list[StageInfo]:
    """The stages ``dvc repro`` with ``selection`` would consider (see
    :func:`lauf_dvc.dvc.load.plan.steps`), upstream first. DVC's exceptions propagate."""
    from lauf_dvc.dvc.load.plan import single_item_order, steps

    planned = steps(repo, selection)
    stages = infos(repo, repo.index.graph, set(planned))
    if not selection.normalized().single_item:
        return stages
    # -s: no dependency is considered, and DVC runs the targets in the order given; of
    # two related targets, the later one waits for the earlier (unrelated ones: parallel)
    after = single_item_order(repo.index.graph, planned)
    by_address = {i.address: i for i in stages}
    return [  # in the order given, which the new dependencies follow
        replace(by_address[address_of(repo, stage)],
                upstream=tuple(sorted(address_of(repo, s) for s in after[stage])))
        for stage in planned
    ]  # fmt: skip


def infos(repo: Repo, graph: DiGraph, selected: set[Stage]) -> list[StageInfo]:
    """``selected`` as :class:`StageInfo`, in lauf's deterministic topological order."""
    return [_info(repo, graph, stage) for stage in _ordered(repo, graph, selected)]


def address_of(repo: Repo, stage: Stage) -> str:
    """The stage's address relative to the repository root (DVC's is relative to the cwd)."""
    dvcfile = dvcfile_of(repo, stage)
    name = getattr(stage, "name", None)
    if name is None:
        return dvcfile
    return name if dvcfile == PROJECT_FILE else f"{dvcfile}:{name}"


def dvcfile_of(repo: Repo, stage: Stage) -> str:
    return _rel(repo, stage.path)


def resolve_target(repo: Repo, target: str) -> list[Stage]:
    """The stages ``target`` names, resolved from the repository root whatever the cwd.

    Mirrors ``repo.stage.collect(target)`` (what ``dvc repro`` uses), with the path part
    made absolute first because DVC resolves it against the process's working directory.
    """
    from dvc.exceptions import DvcException
    from dvc.stage.exceptions import StageFileDoesNotExistError, StageNotFound
    from dvc.utils import parse_target

    try:
        path, name = parse_target(target)
        path = os.path.join(repo.root_dir, path or PROJECT_FILE)  # an absolute path stays
        stages = repo.stage.load_all(path=path, name=name, accept_group=True)
    except StageNotFound as exc:
        where = _rel(repo, os.path.abspath(exc.file))
        raise PipelineError(
            f"unknown target {target!r}: no stage {exc.name!r} in {where}; {LIST_HINT}"
        ) from None
    except StageFileDoesNotExistError:
        raise PipelineError(
            f"unknown target {target!r}: neither a stage of {PROJECT_FILE} nor an existing "
            f"dvc.yaml (targets are relative to the repository root); {LIST_HINT}"
        ) from None
    except DvcException as exc:
        raise PipelineError(f"target {target!r}: {reword(exc, repo.root_dir)}") from None
    if not stages:
        raise PipelineError(f"unknown target {target!r}: it names no stage; {LIST_HINT}")
    return stages


def select_stages(repo: Repo, graph: DiGraph, targets: Sequence[str]) -> set[Stage]:
    """The stages ``dvc repro TARGETS`` would consider (all of them if none); targets
    relative to the root."""
    from dvc.repo.reproduce import get_active_graph
    from networkx import dfs_postorder_nodes

    if not targets:
        nodes: set[Stage] = set(graph.nodes)
    else:
        active = get_active_graph(graph)  # a frozen stage cuts off its upstream, as in repro
        nodes = set()
        for target in targets:
            for stage in resolve_target(repo, target):
                if stage not in active:
                    raise PipelineError(
                        f"target {target!r}: {address_of(repo, stage)} is not part of the "
                        "pipeline DVC sees (is its dvc.yaml .dvcignored?)"
                    )
                nodes.update(dfs_postorder_nodes(active, stage))
    return nodes


def missing_inputs(root: str | Path, stages: Sequence[StageInfo]) -> list[str]:
    """One warning per stage that depends on a file that does not exist and that no
    selected stage produces: as under ``dvc repro``, that stage fails when its turn
    comes (and, with ``--keep-going``, the branches that do not need it still run);
    the warning only says so before anything starts.

    Frozen stages are left out (their deps are not read), and so are deps outside the
    repository or not local (URLs, imports).
    """
    outs = _Produced(out for stage in stages for out in stage.outs)
    missing: dict[str, list[str]] = {}
    for stage in stages:
        if stage.frozen or not stage.is_pipeline:
            continue
        for dep in stage.deps:
            if (
                "://" not in dep
                and not dep.startswith("..")
                and not os.path.lexists(os.path.join(root, dep))
                and not outs.overlaps(dep)
            ):
                missing.setdefault(stage.address, []).append(dep)
    lines = [
        f"stage {address!r}: dependency {deps[0]!r} does not exist and no stage produces "
        f"it{f' (and {len(deps) - 1} more)' if len(deps) > 1 else ''}: the stage will "
        "fail; restore it (git checkout, dvc pull, --pull) or fix its deps"
        for address, deps in missing.items()
    ]
    return lines + _missing_params(Path(root), stages, outs)


def _missing_params(root: Path, stages: Sequence[StageInfo], outs: _Produced) -> list[str]:
    """A warning per stage whose ``params`` name a key its params file lacks (DVC:
    "Parameters ... are missing" when the stage runs). Files a stage produces, or that
    do not parse, are left to DVC."""
    from dvc.fs import LocalFileSystem
    from dvc.utils.serialize import load_path

    fs = LocalFileSystem()
    loaded: dict[str, Any] = {}
    lines = []
    for stage in stages:
        if stage.frozen or not stage.is_pipeline:
            continue
        for entry in stage.params:
            path, _, key = entry.partition(":")
            if not key or outs.overlaps(path):
                continue
            if path not in loaded:
                try:
                    loaded[path] = load_path(str(root / path), fs)
                except Exception:  # missing file (a dependency warning), or unparsable
                    loaded[path] = None
            if loaded[path] is not None and not _has_key(loaded[path], key):
                lines.append(
                    f"stage {stage.address!r}: parameter {key!r} is not in {path}: the stage "
                    "will fail; add it there or fix the stage's params"
                )
                break
    return lines


def _has_key(values: Any, key: str) -> bool:
    for part in key.split("."):
        if isinstance(values, dict) and part in values:
            values = values[part]
        elif isinstance(values, list) and part.isdigit() and int(part) < len(values):
            values = values[int(part)]
        else:
            return False
    return True


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


class _Produced:
    """The outputs of the selected stages, for :func:`_overlaps` against all of them in
    time independent of their number (a dep checked against each output in turn made
    the start of a 10,000-stage run quadratic: minutes)."""

    def __init__(self, outs: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.folders: set[str] = set()  # every folder an output is in
        for out in outs:
            self.exact.add(out)
            parts = out.rstrip("/").split("/")
            self.exact.add("/".join(parts))
            self.folders.update("/".join(parts[:n]) for n in range(1, len(parts)))

    def overlaps(self, path: str) -> bool:
        """``any(_overlaps(path, out) for out in outs)``."""
        if path in self.exact:
            return True
        parts = path.rstrip("/").split("/")
        if "/".join(parts) in self.folders:  # an output is inside path
            return True
        return any("/".join(parts[:n]) in self.exact for n in range(1, len(parts) + 1))


# -- DVC plumbing shared with the runner ------------------------------------------------


def make_repo(root: str | Path) -> Repo:
    """A ``dvc.repo.Repo`` for ``root`` whose lock waits for other ``dvc`` processes."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    from lauf_dvc.dvc import compat, repolock
    from lauf_dvc.dvc.load import speedups

    compat.check()  # once per process: one warning line if a DVC internal moved
    speedups.install()
    repolock.install()
    try:
        repo = Repo(os.path.abspath(root), **compat.repo_kwargs())
    except NotDvcRepoError:
        raise PipelineError(
            f"{root} is not inside a DVC repository: run `dvc init` there first"
        ) from None
    except DvcException as exc:
        raise PipelineError(f"{root}: {reword(exc, os.fspath(root))}") from None
    try:
        repolock.check(repo)  # before anything waits for DVC's lock
    except BaseException:
        repo.close()
        raise
    return repo


@contextmanager
def open_repo(root: str | Path) -> Iterator[Repo]:
    """:func:`make_repo`, closed on exit."""
    repo = make_repo(root)
    try:
        yield repo
    finally:
        repo.close()


@contextmanager
def locked(repo: Repo) -> Iterator[None]:
    """Hold DVC's repository lock (what every ``dvc`` command takes), with fresh caches,
    and the repository root as the working directory.

    ``dvc.lock`` is rewritten in place, so it is only ever read under this lock. Parts of
    DVC resolve paths against the cwd (the run cache builds its stages from a relative
    ``dvc.yaml``, dvc/stage/cache.py ``_create_stage``), as ``dvc`` run inside the
    repository would: the cwd changes for the whole process, so call this from one
    thread at a time and use absolute paths in other threads meanwhile.
    """
    from dvc.repo import lock_repo

    from lauf_dvc.dvc import repolock

    if compat.lock_depth(repo):  # re-entered
        with lock_repo(repo), contextlib.chdir(repo.root_dir):
            yield
        return
    asked = time.monotonic()
    # lock_repo resets DVC's caches; repolock.held breaks the lock of a holder that died
    with _queued(repo), repolock.held(repo), contextlib.chdir(repo.root_dir):
        got = time.monotonic()
        try:
            yield
        finally:
            log.debug("repository lock: waited %.0f ms, held %.0f ms",
                      1000 * (got - asked), 1000 * (time.monotonic() - got))  # fmt: skip


@contextmanager
def _queued(repo: Repo) -> Iterator[None]:
    """Wait in line (a blocking ``flock``) before trying DVC's repository lock.

    DVC's lock is a ``zc.lockfile`` polled every 0.5 s: with several workers contending,
    most of a stage's time went to sleeping between polls. lauf workers first queue on
    an OS lock that wakes the next waiter the instant it is released, so at most one lauf
    process at a time polls DVC's lock (and usually gets it on the first try). Other
    ``dvc`` commands still just take DVC's lock as always. The queue only saves time:
    where the filesystem refuses ``flock`` (an NFS mount without a lock manager:
    ``ENOLCK``), lauf goes straight to DVC's lock.
    """
    import fcntl

    path = Path(repo.tmp_dir) / "lauf" / "repo.queue"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            log.debug("no queue for DVC's lock (%s): taking it directly", exc)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextmanager
def dvc_errors(root: str, what: str = "") -> Iterator[None]:
    """Turn DVC's exceptions into a one-line PipelineError (``what`` prefixes the message)."""
    from dvc.exceptions import DvcException

    try:
        yield
    except DvcException as exc:
        message = reword(exc, root)
        raise PipelineError(f"{what}: {message}" if what else message) from None


def reword(exc: BaseException, root: str) -> str:
    """One line, paths relative to the repository root, saying what is wrong and what to do."""
    from dvc.exceptions import CyclicGraphError, OutputDuplicationError
    from dvc.exceptions import OverlappingOutputPathsError as Overlap
    from dvc.parsing import ResolveError
    from dvc.stage.exceptions import StageFileDoesNotExistError, StageNotFound
    from dvc.utils.strictyaml import YAMLSyntaxError, YAMLValidationError

    target = getattr(exc, "lauf_target", "")  # set by plan.steps: the target at fault
    if isinstance(exc, StageNotFound) and target is not None:
        where = _rel_root(root, os.path.abspath(exc.file))
        return f"unknown target {target!r}: no stage {exc.name!r} in {where}; {LIST_HINT}"
    if isinstance(exc, StageFileDoesNotExistError):
        if target is None:  # the default target: the dvc.yaml of the cwd
            cwd = getattr(exc, "lauf_cwd", os.getcwd())
            return (
                f"there is no {PROJECT_FILE} in {cwd}: give targets, run it where a "
                f"{PROJECT_FILE} is, or use -P for every pipeline"
            )
        return (
            f"unknown target {target!r}: no such dvc.yaml or .dvc file (targets are "
            f"relative to the current directory); {LIST_HINT}"
        )
    if isinstance(exc, YAMLSyntaxError):
        return _yaml_syntax(exc, root)
    if isinstance(exc, YAMLValidationError):
        return _yaml_schema(exc, root)
    if isinstance(exc, OutputDuplicationError):
        stages = sorted(address_of(s.repo, s) for s in exc.stages)
        common = set.intersection(*({o.fs_path for o in s.outs} for s in exc.stages))
        out = _rel_root(root, min(common)) if common else exc.output
        return (
            f"output {out!r} is declared by {' and '.join(stages)}: "
            "an output may belong to one stage only, remove it from all but one"
        )
    if isinstance(exc, Overlap):
        a, b = exc.parent, exc.overlapping_out
        return (
            f"outputs {_rel_root(root, a.fs_path)!r} ({address_of(a.stage.repo, a.stage)}) and "
            f"{_rel_root(root, b.fs_path)!r} ({address_of(b.stage.repo, b.stage)}) overlap: "
            "track them separately or as one directory"
        )
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {_rel_root(root, exc.filename)}"
    text = _rootify(_one_line(str(exc)), root)
    if isinstance(exc, CyclicGraphError):  # DVC lists the stages in set order: sort them
        names = sorted(n.strip() for n in text.rstrip(".").rpartition(": ")[2].split(","))
        return (
            f"dependency cycle between stages {', '.join(names)}: each needs, through its "
            "deps, an output of another; remove one of those deps to break the cycle"
        )
    if isinstance(exc, ResolveError):
        return f"{text}; fix the interpolation (see `vars` and params files)"
    return text


# -- helpers ----------------------------------------------------------------------------


def _ordered(repo: Repo, graph: DiGraph, selected: set[Stage]) -> list[PipelineStage]:
    """Upstream first; ties broken by (root dvc.yaml first, file path, position in file)."""
    from networkx import lexicographical_topological_sort

    position = {stage: i for i, stage in enumerate(repo.index.stages)}

    def key(stage: Stage) -> tuple[bool, str, int]:
        dvcfile = dvcfile_of(repo, stage)
        return (dvcfile != PROJECT_FILE, dvcfile, position.get(stage, 0))

    # DVC's edges go from a stage to the stages it depends on: reverse for upstream first.
    sub = graph.subgraph(selected).reverse(copy=True)
    return list(lexicographical_topological_sort(sub, key=key))


def _info(repo: Repo, graph: DiGraph, stage: Stage) -> StageInfo:
    from dvc.dependency import ParamsDependency
    from dvc.stage import PipelineStage

    params: list[str] = []
    deps: list[str] = []
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            path = _dep_path(repo, dep)
            params += [f"{path}:{key}" for key in dep.params] if dep.params else [path]
        else:
            deps.append(_dep_path(repo, dep))
    upstream = sorted({address_of(repo, up) for up in graph.successors(stage)})
    address = address_of(repo, stage)
    if isinstance(stage, PipelineStage):
        kind = "pipeline"
    else:
        kind = "import" if stage.is_import else "data"
    return StageInfo(
        address=address,
        dvcfile=dvcfile_of(repo, stage),
        name=stage.name if isinstance(stage, PipelineStage) else address,
        cmd=tuple(command_lines(stage)),
        wdir=_rel(repo, stage.wdir),
        deps=tuple(deps),
        outs=tuple(_dep_path(repo, out) for out in stage.outs),
        params=tuple(params),
        upstream=tuple(upstream),
        frozen=bool(stage.frozen),
        always_changed=bool(stage.always_changed),
        meta=dict(stage.meta or {}),
        kind=kind,
    )


def command_lines(stage: Stage) -> list[str]:
    """The command lines DVC runs one by one (a multi-line string is split, as DVC does)."""
    cmd = stage.cmd
    if not cmd:
        return []
    return list(cmd) if isinstance(cmd, list) else cmd.splitlines()


def _dep_path(repo: Repo, item: Any) -> str:
    """A dep/out path relative to the root; URLs and paths outside the repo stay as written."""
    if item.protocol != "local" or not item.fs_path:
        return str(item.def_path)
    rel = _rel(repo, item.fs_path)
    return str(item.def_path) if rel.startswith("..") else rel


def _rel(repo: Repo, path: str) -> str:
    return _rel_root(repo.root_dir, path)


def _rel_root(root: str, path: str) -> str:
    return Path(os.path.relpath(os.path.abspath(path), root)).as_posix()


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown DVC error"


def _rootify(text: str, root: str) -> str:
    """DVC prints paths relative to the cwd; make them relative to the repository root."""
    prefix = os.path.relpath(root)
    if prefix == os.curdir:
        return text.replace(f"'.{os.sep}", "'")
    for head in (f".{os.sep}{prefix}{os.sep}", f"{prefix}{os.sep}"):
        text = text.replace(head, "")
    return text


def _yaml_syntax(exc: Any, root: str) -> str:
    # ``relpath`` since DVC 3.62 or so; 3.61 has only ``path`` (the file as given)
    where = _rel_root(root, os.path.abspath(getattr(exc, "relpath", None) or exc.path))
    cause = exc.exc.__cause__ if exc.exc is not None else None
    problem = getattr(cause, "problem", None)
    mark = getattr(cause, "problem_mark", None)
    detail = f": {problem}" if problem else ""
    if mark is not None:
        detail += f" at line {mark.line + 1}, column {mark.column + 1}"
    return f"{where}: invalid YAML{detail}{exc.hint}; fix the syntax"


def _yaml_schema(exc: Any, root: str) -> str:
    where = _rel_root(root, os.path.abspath(exc.path)) if exc.path else "dvc.yaml"
    errors = list(getattr(exc.exc, "errors", []))
    first = errors[0] if errors else exc.exc
    detail = getattr(first, "error_message", None) or str(first)
    path = " -> ".join(str(p) for p in getattr(first, "path", []))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    at = f" at {path}" if path else ""
    return f"{where}: {detail}{at}{more}; see https://dvc.org/doc/user-guide/project-structure/dvcyaml-files"
