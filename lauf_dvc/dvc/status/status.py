"""What DVC says of stages: which changed and why, as ``dvc status`` says it.

The DVC side of the ``dvc`` fingerprinter: :func:`verdicts_locked` asks DVC (under its
repository lock) for every stage in one pass over its index, and :func:`observed` turns
a verdict into what the core's staleness engine compares
(:class:`~lauf_dvc.scheduler.staleness.Observed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc.status.verdictcache import StageVerdict
from lauf_dvc.errors import PipelineError
from lauf_dvc.scheduler.staleness import Observed

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo

#: What a stage's outputs were made with, as far as DVC's comparison goes: "as its
#: dvc.lock entry records". DVC compares the workspace with that entry itself (hashes
#: through its state database, parameter values, the command, whether each output is in
#: the cache), so the ``dvc`` fingerprint of a stage is this record where DVC finds
#: nothing changed, and DVC's findings where it does.
RECORDED = "dvc.lock entry"
#: FingerprintContext.cache key: DVC verdicts already asked in this pass {address: verdict}
PREFETCHED = "dvc.verdicts"


def observed(verdict: StageVerdict) -> Observed:
    """A DVC verdict as the core compares it: the stage's record is its dvc.lock entry
    (none: never run), and its fingerprint now is that record unless DVC found changes."""
    never = verdict.reasons[:1] == ("never run",)
    current = "dvc status: " + "; ".join(verdict.reasons) if verdict.changed else RECORDED
    return Observed(
        current,
        recorded=None if never else RECORDED,
        external=True,
        reasons=verdict.reasons if verdict.changed else (),
        source=verdict.source,
    )


def dvc_verdicts(
    root: Path, stages: Sequence[StageInfo], only: set[str] | None = None, repo: Any = None
) -> dict[str, StageVerdict]:
    """Ask DVC (under its repo lock, as `dvc status` does) which stages changed and why
    (all of ``stages``, or those in ``only``); on ``repo`` if given (a repo this thread
    may already hold the lock of), else on a repository opened for this call."""
    import contextlib

    from lauf_dvc.dvc.load.pipeline import locked, open_repo

    opening = contextlib.nullcontext(repo) if repo is not None else open_repo(root)
    with opening as opened, locked(opened):
        return verdicts_locked(opened, stages, only)


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


#: Asked about at most one stage in this many, DVC loads each asked stage alone (with a
#: worker's :class:`~lauf_dvc.dvc.load.single.StageLoader`) instead of building its
#: whole index: a sync after one root's data changed asks about that stage only.
FEW = 20


def verdicts_locked(
    repo: Any, stages: Sequence[StageInfo], only: set[str] | None
) -> dict[str, StageVerdict]:
    from dvc.exceptions import DvcException

    from lauf_dvc.dvc.load.speedups import params_files_read_once

    try:
        # each params file parsed once, not once per stage naming it
        with params_files_read_once():
            if only is not None and len(only) * FEW <= len(stages):
                found = _few(repo, only)
                if found is not None:
                    return found
            return _all(repo, stages, only)
    except DvcException as exc:
        raise PipelineError(_one_line(exc)) from None


def _all(repo: Any, stages: Sequence[StageInfo], only: set[str] | None) -> dict[str, StageVerdict]:
    """In one pass over DVC's index (each dvc.yaml parsed once), not one load per stage."""
    from lauf_dvc.dvc.load.pipeline import address_of

    by_address = {address_of(repo, s): s for s in repo.index.stages}
    made = {str(o) for s in by_address.values() for o in s.outs}  # by some stage
    out: dict[str, StageVerdict] = {}
    for info in stages:
        if only is not None and info.address not in only:
            continue
        verdict = _verdict(info.address, by_address[info.address], made)
        assert verdict is not None  # (made is given)
        out[info.address] = verdict
    return out


def _few(repo: Any, only: set[str]) -> dict[str, StageVerdict] | None:
    """The stages in ``only``, each loaded alone; None if one was never run (its reasons
    need every stage's outputs: see :func:`_verdict`)."""
    from lauf_dvc.dvc.load.single import StageLoader, collect_stage

    loader = StageLoader()
    out: dict[str, StageVerdict] = {}
    for address in sorted(only):
        verdict = _verdict(address, collect_stage(repo, address, loader), None)
        if verdict is None:
            return None
        out[address] = verdict
    return out


def _verdict(address: str, stage: Any, made: set[str] | None) -> StageVerdict | None:
    """DVC's verdict on ``stage``; ``made``: every output some stage makes (None: not at
    hand, and then None for a stage never run, whose reasons need it)."""
    # a frozen stage too: DVC checks its outputs (a missing one is a change)
    try:
        status = _status_unlocked(stage).get(stage.addressing, [])
    except (FileNotFoundError, NotADirectoryError) as exc:
        return vanished(address, exc)
    reasons: tuple[str, ...] = ()
    if status and not _has_lock_entry(stage):  # and what will make it fail, if anything
        if made is None:
            return None
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
    return StageVerdict(address, bool(status), reasons, objects=_objects(stage))


def _objects(stage: Any) -> tuple[str, ...]:
    """The cache files DVC's status checks for ``stage``'s outputs (``Output.changed_cache``):
    each cached output's object and, for a directory, the object of every file in it; a
    directory whose ``.dir`` object is missing lists that object alone."""
    from dvc_data.hashfile.tree import Tree

    paths: list[str] = []
    for out in stage.outs:
        if not (out.use_cache and out.hash_info):
            continue
        obj = out.get_obj()
        if obj is None:  # its .dir object is not in the cache
            paths.append(out.cache.oid_to_path(out.hash_info.value))
            continue
        paths.append(out.cache.oid_to_path(obj.oid))
        if isinstance(obj, Tree):
            paths += [out.cache.oid_to_path(hi.value) for _, _, hi in obj]
    return tuple(paths)


def vanished(address: str, exc: OSError) -> StageVerdict:
    """A file that vanished while it was hashed: a running stage is rewriting it (its
    own outputs, or an upstream stage's that it depends on). That is a change, never an
    error: a worker joining a running pipeline must not die of it (issue 13). The stage
    reads as stale; one that is running is left alone by
    :func:`lauf_dvc.dvc.project.reconcile` anyway."""
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
    from lauf_dvc.dvc import compat

    return compat.status_unlocked(stage)


def _with_param_values(stage: Any, reasons: tuple[str, ...]) -> tuple[str, ...]:
    """Replace DVC's "params.yaml:train modified" by the values that changed
    ("params.yaml:train.lr 0.1 -> 0.01"), from dvc.lock's record and the params file."""
    from dvc.dependency import ParamsDependency

    from lauf_dvc.dvc.load.pipeline import _dep_path
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
