"""Make DVC's own work cost what it should, without changing what it computes.

- ``dvc.schema.either_or`` builds and compiles a fresh ``voluptuous.Schema`` for every
  stage of every ``dvc.yaml`` it validates (``vol.Schema(schema)(data)`` inside the
  validator), about 1 ms per stage: a 1000-stage ``dvc.yaml`` costs a second to
  validate, each time it is loaded, and a worker loads it for every stage it runs. The
  schema it compiles is always one of two module constants, so :func:`install` gives
  that function a ``voluptuous`` whose ``Schema`` compiles each such constant once per
  process and then reuses it. The validation is DVC's (same schema, same errors).
- :class:`_YamlCache`: ``dvc.yaml`` and ``dvc.lock`` parsed and validated once per
  distinct content (``dvc.lock`` entry by entry), not for every stage a worker runs.
- :func:`params_files_read_once`: a params file parsed once per status pass instead of
  once per stage that uses it.
- :func:`_compile_ignore_patterns_once`: ``.gitignore`` lines compiled once per process
  (dulwich's ``IgnoreFilter``), not for each output DVC checks.
- :func:`keep_between_locks`: a worker's ``Repo`` keeps its configuration (while no
  config file changed) and its state database open from one hold of DVC's repository
  lock to the next, instead of rebuilding both for every stage.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

from lauf_dvc.dvc.commit.lockfile import entry_blocks, parse_entry

_installed = False
_lock = threading.Lock()
READ_HOOKS: list[Callable[[str], None]] = []  # told each file _YamlCache reads (pipecache)


def install() -> None:
    """Idempotent; call before DVC validates anything (``make_repo`` does)."""
    global _installed
    with _lock:
        if _installed:
            return
        import voluptuous
        from dvc import schema
        from dvc.utils import strictyaml

        from lauf_dvc.dvc import compat

        if compat.enabled("schema-either-or"):
            schema.vol = _CachingVoluptuous(voluptuous)
        if compat.enabled("strictyaml-load"):
            strictyaml.load = _YamlCache(strictyaml.load).load
        if compat.enabled("dulwich-ignore"):
            _compile_ignore_patterns_once()
        _installed = True


def _compile_ignore_patterns_once() -> None:
    """Each ``.gitignore`` line compiled once per process, not each time the file is read.

    For every output it commits, DVC asks git whether the path is already ignored
    (``Output.ignore`` -> scmrepo -> dulwich's ``IgnoreFilterManager``), which reads the
    ``.gitignore`` files up the tree and compiles every line of them into a regular
    expression: a folder of 1000 outputs cost about 30 ms per stage, growing with the
    pipeline. A compiled ``dulwich.ignore.Pattern`` is immutable (its text, flags and
    regex), so filters may share them; the matching is dulwich's.
    """
    try:
        from dulwich import ignore
    except ImportError:  # pragma: no cover - dulwich is how DVC's scmrepo reads git
        return
    real = ignore.IgnoreFilter.append_pattern
    if getattr(real, "_lauf_cached", False):
        return
    compiled: dict[tuple[bytes, bool], Any] = {}

    def append_pattern(self: Any, pattern: bytes) -> None:
        key = (pattern, bool(self._ignorecase))
        hit = compiled.get(key)
        if hit is None:
            before = len(self._patterns)
            real(self, pattern)  # dulwich's: compiles, or logs a malformed line and skips
            if len(self._patterns) > before and len(compiled) < 100_000:
                compiled[key] = self._patterns[-1]
            return
        self._patterns.append(hit)

    append_pattern._lauf_cached = True  # type: ignore[attr-defined]
    ignore.IgnoreFilter.append_pattern = append_pattern  # type: ignore[method-assign]


class _CachingVoluptuous(types.ModuleType):
    """``voluptuous`` itself, except ``Schema(x)`` with no options is compiled once per x."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        self._compiled: dict[int, tuple[Any, Any]] = {}  # id(x) -> (x, Schema(x))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Schema(self, schema: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self._real.Schema(schema, *args, **kwargs)
        cached = self._compiled.get(id(schema))
        if cached is None or cached[0] is not schema:  # (keep x alive: its id stays its own)
            cached = (schema, self._real.Schema(schema))
            self._compiled[id(schema)] = cached
        return cached[1]


@contextlib.contextmanager
def params_files_read_once() -> Iterator[None]:
    """While inside: DVC parses each params file once, not once per stage that uses it.

    ``ParamsDependency.read_params`` (dvc/dependency/param.py) loads and parses the whole
    params file for every stage that names one of its keys: for ``dvc status`` of N
    stages sharing one params.yaml that is N parses of a file that grows with N. Within
    this block, ``load_path`` there returns the data parsed on first use, as long as the
    file's size, mtime and inode are unchanged (checked on every call). ``read_param_file``
    only reads the data it gets (it deep-copies what it returns for given keys); use this
    for read-only passes (status, sync), one thread at a time.
    """
    from dvc.dependency import param

    from lauf_dvc.dvc import compat

    if not compat.enabled("params-load-path"):
        yield
        return
    real = param.load_path
    cache: dict[str, tuple[tuple[int, int, int], Any]] = {}

    def load_path(fs_path: str, fs: Any, **kwargs: Any) -> Any:
        if kwargs or getattr(fs, "protocol", None) != "local":
            return real(fs_path, fs, **kwargs)
        try:
            st = os.stat(fs_path)
        except OSError:
            return real(fs_path, fs)
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        hit = cache.get(fs_path)
        if hit is not None and hit[0] == key:
            return hit[1]
        data = real(fs_path, fs)
        cache[fs_path] = (key, data)
        return data

    param.load_path = load_path
    try:
        yield
    finally:
        param.load_path = real


class _YamlCache:
    """``dvc.utils.strictyaml.load`` (how DVC reads and validates dvc.yaml and dvc.lock)
    with the work done once per distinct content.

    A worker loads every ``dvc.yaml`` and ``dvc.lock`` of the pipeline afresh for each
    stage it runs (another process may have changed them), and DVC parses and validates
    them whole: time that grows with the pipeline, spent under the repository lock. Here:

    - a file whose text is the one seen last time is not parsed or validated again;
    - a ``dvc.lock`` in the shape DVC writes (see :mod:`lauf_dvc.dvc.commit.lockfile`) is parsed
      entry by entry, each distinct entry text parsed and validated once (by DVC's own
      lock-file schema, on a one-entry document): after a stage commits, only its entry.

    Callers always get fresh objects (a deep copy of plain dicts and lists), exactly what
    a parse would return. Anything unusual (round-trip loads, other filesystems, a file
    that fails to parse or validate) goes to DVC's own function, which raises its errors.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.files: dict[tuple[str, int], tuple[str, Any]] = {}  # (path, id(schema))
        self.entries: dict[str, tuple[str, Any]] = {}  # entry text -> (name, data)

    def load(self, path: str, schema: Any = None, fs: Any = None, encoding: str = "utf-8",
             round_trip: bool = False) -> Any:  # fmt: skip
        if round_trip or schema is None or getattr(fs, "protocol", None) != "local":
            return self.real(path, schema, fs, encoding, round_trip)
        for hook in READ_HOOKS:
            hook(os.path.abspath(path))
        try:
            with open(path, encoding=encoding) as fd:
                text = fd.read()
        except (OSError, UnicodeDecodeError):
            return self.real(path, schema, fs, encoding)
        key = (path, id(schema))
        hit = self.files.get(key)
        if hit is not None and hit[0] == text:
            return copy_yaml(hit[1]), text
        data = self._lockfile(text, schema) if path.endswith("dvc.lock") else None
        if data is None:
            data, text = self.real(path, schema, fs, encoding)
        if len(self.files) > 256:
            self.files.clear()
        self.files[key] = (text, copy_yaml(data))
        return data, text

    def _lockfile(self, text: str, schema: Any) -> dict[str, Any] | None:
        from dvc.schema import COMPILED_LOCKFILE_SCHEMA

        if schema is not COMPILED_LOCKFILE_SCHEMA:
            return None
        blocks = entry_blocks(text)
        if blocks is None:
            return None
        stages: dict[str, Any] = {}
        for block in blocks:
            hit = self.entries.get(block)
            if hit is None:
                parsed = parse_entry(block)
                if parsed is None:
                    return None
                try:
                    schema({"schema": "2.0", "stages": {parsed[0]: parsed[1]}})
                except Exception:  # invalid: DVC reports it, with its own message
                    return None
                hit = self.entries[block] = parsed
            if hit[0] in stages:  # a duplicate key: DVC's parser refuses the file
                return None
            stages[hit[0]] = copy_yaml(hit[1])
        if len(self.entries) > 100_000:
            self.entries.clear()
        return {"schema": "2.0", "stages": stages}


def copy_yaml(value: Any) -> Any:
    """A deep copy of parsed YAML (dicts, lists, scalars), much faster than ``deepcopy``."""
    if isinstance(value, dict):
        return {k: copy_yaml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_yaml(v) for v in value]
    return value


def _config_signature(config: Any) -> tuple[Any, ...] | None:
    """What DVC's configuration was read from, as ``stat`` sees it (None: do not trust a
    copy: a file changed within :data:`RACY` seconds, or the files are not local)."""
    now = time.time()
    found: list[Any] = []
    for level, path in sorted(config.files.items()):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            found.append((level, None))
            continue
        except (OSError, TypeError, ValueError):
            return None
        if now - st.st_mtime < RACY:
            return None  # changed a moment ago: a change within one tick could go unseen
        found.append((level, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(found)


#: A config file changed this recently (seconds) is read again, whatever its ``stat``.
RACY = 2.0


def keep_between_locks(repo: Any) -> None:
    """Make ``repo._reset()`` (run by ``dvc.repo.lock_repo`` whenever DVC's repository
    lock is taken and released) keep two things it would otherwise rebuild per stage:

    - the configuration (``repo.config``: four files read and validated, about 5 ms),
      as long as none of its files changed (size, mtime, ctime, inode);
    - the state database (``repo.state``, the hash cache): DVC closes its SQLite
      connections, the next use opens them again (connect, settings, pragmas). The
      database is shared safely between processes either way; it is closed with the
      ``Repo`` (``repo.close()``).

    Everything else ``_reset`` drops (the index, ``.dvcignore``, git's caches) it still
    drops: another process may have changed what they were built from.
    """
    from lauf_dvc.dvc import compat

    if not compat.enabled("repo-reset") or getattr(repo, "_lauf_kept", False):
        return
    real = repo._reset
    kept: dict[str, Any] = {}

    def _reset() -> None:
        config = repo.__dict__.get("config")
        if config is not None:
            signature = _config_signature(config)
            if signature is not None and kept.get("signature") in (None, signature):
                kept.update(config=config, signature=signature)
            else:
                kept.clear()
        state = repo.state
        state.close = _no_close  # an instance attribute, for this call only
        try:
            real()
        finally:
            del state.close
        config = kept.get("config")
        if config is not None and _config_signature(config) == kept.get("signature"):
            repo.__dict__["config"] = config
        else:
            kept.clear()

    repo._reset = _reset
    repo._lauf_kept = True


def _no_close() -> None:
    pass
