"""One stage loaded in time independent of the pipeline's size.

DVC loads a stage (``repo.stage.load_one``) by parsing and validating its whole
``dvc.yaml``, building a resolver over every stage in it, and parsing its whole
``dvc.lock``, for every stage a worker runs: O(pipeline) work per stage, O(pipeline²)
per run. :class:`StageLoader` keeps, per ``dvc.yaml``, what DVC built from it (the
parsed, validated contents and DVC's ``DataResolver``) for as long as nothing it was
built from changed: the file itself, the params file it reads by default and every
``vars`` file it imported (size, mtime, ctime and inode; a file modified within
:data:`RACY` seconds is never trusted), the ``parsing`` configuration and the working
directory (DVC's resolver keeps paths relative to it). The stage's
``dvc.lock`` entry is found by its key line
(:func:`lauf_dvc.dvc.commit.lockfile.entry_text`), parsed and validated alone by DVC's
lock-file schema, once per distinct text.

The stage is then built by DVC's own ``StageLoader[name]`` (the same interpolation,
the same stage object, the same lock data), given only its own entry. Wherever any of
that does not apply (another ``dvc.lock`` shape, a stage name DVC quotes, a DVC whose
internals moved: :mod:`lauf_dvc.dvc.compat`), :meth:`StageLoader.load` returns None and
the caller loads the stage through DVC's API, as before.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc import compat
from lauf_dvc.dvc.commit.lockfile import entry_text, parse_entry
from lauf_dvc.dvc.load.speedups import RACY, copy_yaml
from lauf_dvc.errors import PipelineError

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import PipelineStage, Stage

_DEFAULT_PARAMS = "params.yaml"  # dvc/dependency/param.py ParamsDependency.DEFAULT_PARAMS_FILE


def _stat(path: str, now: float) -> tuple[int, ...] | bool | None:
    """A file's identity (None: it does not exist; False: changed too recently)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    if now - st.st_mtime < RACY:  # (a change in the same mtime tick would go unseen)
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _Built:
    def __init__(self, contents: Any, resolver: Any, cwd: str) -> None:
        self.contents = contents
        self.resolver = resolver
        self.cwd = cwd  # DVC's resolver keeps paths relative to the working directory
        self.signature: tuple[Any, ...] = ()


class StageLoader:
    """Loads single stages of one repository (one per worker, one stage at a time)."""

    def __init__(self) -> None:
        self._built: dict[str, _Built] = {}  # dvc.yaml path -> what DVC built from it
        self._entries: dict[str, tuple[str, Any]] = {}  # entry text -> (name, data)

    def load(self, repo: Repo, dvcfile: str, name: str) -> PipelineStage | None:
        """Stage ``name`` of ``dvcfile`` (relative to the root) as ``repo.stage.load_one``
        loads it, or None where this does not apply. Raises DVC's errors as it does."""
        from dvc.dvcfile import ProjectFile, load_file
        from dvc.stage.loader import StageLoader as DvcStageLoader

        if not compat.enabled("stage-loader"):
            return None
        path = os.path.join(repo.root_dir, dvcfile)
        lock_data = self._lock_entry(os.path.join(os.path.dirname(path), "dvc.lock"), name)
        if lock_data is False:
            return None
        pf = load_file(repo, path)
        if not isinstance(pf, ProjectFile):
            return None
        built = self._resolved(repo, pf, path)
        if built is None:
            return None
        pf.__dict__["resolver"] = built.resolver  # DVC's cached_property, filled
        lock = {"stages": {name: lock_data}} if lock_data else {}
        stage: PipelineStage = DvcStageLoader(pf, built.contents, lock)[name]
        return stage

    def _resolved(self, repo: Repo, pf: Any, path: str) -> _Built | None:
        """What DVC builds from ``pf`` (a ``dvc.yaml``), kept while it stays valid."""
        from dvc.parsing import DataResolver

        parsing = repo.config.get("parsing", {})
        built = self._built.get(path)
        if built and built.signature == self._signature(path, built, parsing):
            return built
        self._built.pop(path, None)
        contents = pf.contents  # DVC's load: parse, validate, raise its errors
        built = _Built(contents, DataResolver(repo, repo.fs.parent(path), contents), os.getcwd())
        signature = self._signature(path, built, parsing)
        if signature is not None:  # (None: a file changed a moment ago: use, do not keep)
            built.signature = signature
            if len(self._built) >= 64:
                self._built.clear()
            self._built[path] = built
        return built

    def _signature(self, path: str, built: _Built, parsing: Any) -> tuple[Any, ...] | None:
        now = time.time()
        files = {path, os.path.join(os.path.dirname(path), _DEFAULT_PARAMS)}
        for imported in built.resolver.context.imports:  # relative to the cwd it was built in
            files.add(os.path.join(built.cwd, imported))
        found = []
        for file in sorted(files):
            st = _stat(file, now)
            if st is False:
                return None
            found.append((file, st))
        return (os.getcwd(), repr(parsing), tuple(found))

    def _lock_entry(self, lock_path: str, name: str) -> dict[str, Any] | bool | None:
        """The stage's ``dvc.lock`` entry (None: it has none; False: read it DVC's way)."""
        from dvc.schema import COMPILED_LOCKFILE_SCHEMA

        try:
            with open(lock_path, encoding="utf-8") as fd:
                text = fd.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return False
        block = entry_text(text, name)
        if block is None:
            return False
        if not block:
            return None
        hit = self._entries.get(block)
        if hit is None:
            parsed = parse_entry(block)
            if parsed is None or parsed[0] != name:
                return False
            try:
                COMPILED_LOCKFILE_SCHEMA({"schema": "2.0", "stages": {parsed[0]: parsed[1]}})
            except Exception:  # invalid: DVC reports it, with its own message
                return False
            if len(self._entries) > 10_000:
                self._entries.clear()
            hit = self._entries[block] = parsed
        return copy_yaml(hit[1])


def collect_stage(repo: Repo, address: str, loader: StageLoader | None = None) -> Stage:
    """The one stage at ``address`` (relative to the root), freshly loaded: a ``dvc.yaml``
    stage or a ``.dvc`` file; through ``loader`` (a worker's) where it applies.

    The address is split as :func:`~lauf_dvc.dvc.load.pipeline.address_of` built it, not
    parsed as a target: a stage DVC accepts may be named ``a:b``, which no target can
    name (``a:b`` means stage ``b`` of a file ``a``)."""
    from dvc.exceptions import DvcException

    from lauf_dvc.dvc.load.pipeline import address_of, resolve_target

    dvcfile, name = split_address(address)
    try:
        quick = loader.load(repo, dvcfile, name) if loader and name else None
        if quick is not None and address_of(repo, quick) == address:
            return quick
        found = [repo.stage.load_one(path=os.path.join(repo.root_dir, dvcfile), name=name)]
    except (DvcException, KeyError):  # not there (any more): say it as a target would
        found = resolve_target(repo, address)
    if len(found) != 1 or address_of(repo, found[0]) != address:
        names = ", ".join(address_of(repo, s) for s in found[:3])
        raise PipelineError(
            f"{address!r} is not one stage (it names {len(found)}: {names}); "
            "pass a single stage's address, e.g. `sub/dvc.yaml:train@x`"
        )
    return found[0]


def split_address(address: str) -> tuple[str, str | None]:
    """``(dvcfile, name)`` of an address (``name`` None for a ``.dvc`` file)."""
    found = re.match(r"(.*?(?:^|/)dvc\.yaml):(.+)$", address)
    if found:
        return found[1], found[2]
    if address.endswith(".dvc"):
        return address, None
    return "dvc.yaml", address
