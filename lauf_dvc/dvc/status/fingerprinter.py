"""The ``dvc`` fingerprinter: DVC's own hashes, so lauf's verdict is ``dvc status``'s.
(Registered as a plugin by :mod:`lauf_dvc.builtin.dvc_fingerprint`.)

Dependencies and outputs are hashed by DVC (``Output.get_hash()``: md5 of files, the
``.dir`` md5 of directories, honouring ``.dvcignore`` and the hash name recorded in
``dvc.lock``) through DVC's state database, which skips files whose inode, mtime and
size are unchanged. Parameter values are read by DVC's ``ParamsDependency``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lauf_dvc.errors import PipelineError
from lauf_dvc.fingerprint.model import CMD, MISSING, Fingerprint, dep_key, json_value, out_key
from lauf_dvc.fingerprint.model import param_key as _param_key

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

    from lauf_dvc.dvc.load.pipeline import StageInfo
    from lauf_dvc.fingerprint.context import FingerprintContext
    from lauf_dvc.scheduler.staleness import Observed

_INDEX = "dvc.stages"  # FingerprintContext.cache key: {address: Stage}


class DvcFingerprinter:
    """Command, parameter values (read by DVC) and DVC's md5 of every dependency and output."""

    name = "dvc"
    version = "1"
    #: Its stages are observed through DVC's status: ``open_project`` asks DVC for them
    #: on the repository it holds locked anyway (``status``, ``repro --dry``).
    uses_dvc_status = True

    def observe(self, stages: Sequence[StageInfo], ctx: FingerprintContext) -> dict[str, Observed]:
        """What DVC finds of ``stages`` (``dvc status``, in one pass over DVC's index):
        their record is their ``dvc.lock`` entry, and their fingerprint now equals it
        exactly when DVC finds nothing changed (see :data:`lauf_dvc.dvc.status.status.RECORDED`:
        hashes through DVC's state database, parameter values, the command, whether each
        output is in the cache)."""
        from lauf_dvc.dvc.status import status

        verdicts = dict(ctx.cache.get(status.PREFETCHED) or {})
        if ask := {s.address for s in stages} - set(verdicts):
            verdicts.update(status.dvc_verdicts(ctx.root, stages, ask, repo=ctx.dvc_repo()))
        return {s.address: status.observed(verdicts[s.address]) for s in stages}

    def completed(
        self, stage: StageInfo, entry: Mapping[str, Any] | None, ctx: FingerprintContext
    ) -> Fingerprint | None:
        """What ``stage`` completed with, read from the ``dvc.lock`` entry its run wrote
        or found (:func:`from_lock_entry`: nothing hashed again); None without one."""
        return from_lock_entry(stage, entry) if entry else None

    def fingerprint(self, stage: StageInfo, ctx: FingerprintContext) -> Fingerprint:
        from dvc.dependency import ParamsDependency

        from lauf_dvc.dvc.load.pipeline import dvc_errors

        repo = ctx.dvc_repo()
        dvc_stage = _stages(ctx, repo).get(stage.address)
        if dvc_stage is None:
            raise PipelineError(
                f"stage {stage.address} is no longer in the pipeline DVC sees; sync again"
            )
        parts = {CMD: json_value(list(stage.cmd))}
        with dvc_errors(repo.root_dir, f"stage {stage.address}"):
            for dep in dvc_stage.deps:
                if isinstance(dep, ParamsDependency):
                    parts.update(_params(repo, dep))
                else:
                    parts[dep_key(_path(repo, dep))] = _hash(dep)
            for out in dvc_stage.outs:
                parts[out_key(_path(repo, out))] = _hash(out)
        return Fingerprint(self.name, self.version, parts)


def _stages(ctx: FingerprintContext, repo: Repo) -> dict[str, Stage]:
    """Every stage (``dvc.yaml`` stages and ``.dvc`` files) by address, loaded once per
    context under DVC's repo lock (``dvc.lock``, which holds the hash names, is
    rewritten in place)."""
    index = ctx.cache.get(_INDEX)
    if index is None:
        from lauf_dvc.dvc.load.pipeline import address_of, dvc_errors, locked

        with locked(repo), dvc_errors(repo.root_dir):
            index = {address_of(repo, s): s for s in repo.index.stages}
        ctx.cache[_INDEX] = index
    return index


def _path(repo: Repo, item: Any) -> str:
    from lauf_dvc.dvc.load.pipeline import _dep_path  # the same path StageInfo lists

    return _dep_path(repo, item)


def _hash(item: Any) -> str:
    """DVC's hash value of a dependency or output (``MISSING`` if it does not exist)."""
    if not item.exists:
        return MISSING
    value = item.get_hash().value
    return str(value) if value else MISSING


def _params(repo: Repo, dep: Any) -> dict[str, str]:
    path = _path(repo, dep)
    if not dep.exists:
        keys = [f"{path}:{key}" for key in dep.params] if dep.params else [path]
        return {_param_key(k): MISSING for k in keys}
    values = dep.read_params()
    if not dep.params:
        return {_param_key(path): json_value(values)}
    return {
        _param_key(f"{path}:{key}"): json_value(values[key]) if key in values else MISSING
        for key in dep.params
    }


def from_lock_entry(stage: StageInfo, entry: Mapping[str, Any]) -> Fingerprint:
    """The ``dvc`` fingerprint a stage's ``dvc.lock`` entry records (what it ran with).

    Same parts as :meth:`DvcFingerprinter.fingerprint` computes from the workspace, read
    from the entry a worker just wrote: no file is hashed again. Paths in ``dvc.lock``
    are relative to the stage's ``wdir``; parts use paths relative to the repo root.
    """
    import posixpath

    def rel(path: str) -> str:
        return posixpath.normpath(posixpath.join(stage.wdir, path))

    def value(item: Mapping[str, Any]) -> str:
        name = item.get("hash", "md5")
        found = item.get(name) or item.get("md5")
        return str(found) if found else MISSING

    parts = {CMD: json_value(list(stage.cmd))}
    whole = {p for p in stage.params if ":" not in p}
    for path, values in (entry.get("params") or {}).items():
        if rel(path) in whole:
            parts[_param_key(rel(path))] = json_value(values)
        else:
            parts.update({_param_key(f"{rel(path)}:{k}"): json_value(v) for k, v in values.items()})
    for item in entry.get("deps") or ():
        parts[dep_key(rel(item["path"]))] = value(item)
    for item in entry.get("outs") or ():
        parts[out_key(rel(item["path"]))] = value(item)
    return Fingerprint(DvcFingerprinter.name, DvcFingerprinter.version, parts)
