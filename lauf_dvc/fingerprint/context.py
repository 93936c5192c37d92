"""What a fingerprinter is, and the context it computes fingerprints in."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lauf_dvc.fingerprint.statcache import StatCache

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo
    from lauf_dvc.fingerprint.model import Fingerprint

#: Where lauf keeps its files inside a repository (the scheduler database lives there too).
LAUF_DIR = Path(".dvc") / "tmp" / "lauf"
STAT_CACHE_FILE = "statcache.sqlite"


@runtime_checkable
class Fingerprinter(Protocol):
    """Computes the fingerprint of a stage. Register instances with ``lauf_fingerprinters``.

    ``name`` is what users select (``vars: [{lauf: {fingerprint: NAME}}]`` or a stage's
    ``meta.lauf.fingerprint``); bump ``version`` whenever the same inputs would produce
    other parts, so stored fingerprints are recognised as not comparable.
    """

    name: str
    version: str

    def fingerprint(self, stage: StageInfo, ctx: FingerprintContext) -> Fingerprint:
        """The fingerprint of ``stage`` as its inputs are on disk now.

        Raise for what the fingerprinter cannot read (lauf reports it as a PluginError
        naming the plugin); a missing dependency is a part valued ``MISSING``, not an error.
        """
        ...


class _Unset:
    pass


_UNSET: Any = _Unset()


class FingerprintContext:
    """One snapshot of a repository for computing fingerprints, with its caches.

    Make one per pass (a sync over every stage, or one stage just completed) and close
    it: within a context each params file is read once and each path hashed once, so
    a file changed during the pass may not be seen until the next context.

    ``stat_cache``: default a shared :class:`StatCache` in ``<lauf_dir>/statcache.sqlite``
    opened on first use; ``None`` disables it. ``dvc_repo``: an open ``dvc.repo.Repo``
    to use; default: opened on first use, closed with this context. The ``dvc``
    fingerprinter takes DVC's repository lock on it (re-entrant) to read ``dvc.lock``:
    a caller that already holds the lock must pass the repo it holds it on, since a
    second ``Repo`` in the same process would wait for that lock forever.
    ``cache`` is scratch space where fingerprinters keep per-pass state.
    Use a context from one thread at a time.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        lauf_dir: str | Path | None = None,
        stat_cache: StatCache | None = _UNSET,
        dvc_repo: Any = None,  # a dvc.repo.Repo
    ) -> None:
        self.root = Path(root).resolve()
        self.lauf_dir = Path(lauf_dir) if lauf_dir is not None else self.root / LAUF_DIR
        self._stat_cache = stat_cache
        self._own_stat_cache = stat_cache is _UNSET
        self._repo = dvc_repo
        self._own_repo = dvc_repo is None
        self._params: dict[str, Any] = {}
        self.cache: dict[str, Any] = {}

    @property
    def stat_cache(self) -> StatCache | None:
        if self._stat_cache is _UNSET:
            self._stat_cache = StatCache(self.lauf_dir / STAT_CACHE_FILE)
        return self._stat_cache

    def params(self, path: str) -> Any:
        """The parsed params file ``path`` (relative to the root), read once per context.

        Read with DVC's own loaders (YAML, JSON, TOML, Python by extension, YAML else).
        ``None`` if the file does not exist.

        Raises:
            PipelineError: the file cannot be parsed.
        """
        if path not in self._params:
            from lauf_dvc.dvc.load.params import load_params_file

            self._params[path] = load_params_file(self.root, path)
        return self._params[path]

    def dvc_repo(self) -> Any:  # a dvc.repo.Repo
        """An open ``dvc.repo.Repo`` for the root (not locked: lock it to read dvc.lock)."""
        if self._repo is None:
            from lauf_dvc.dvc.load.pipeline import make_repo

            self._repo = make_repo(self.root)
        return self._repo

    def close(self) -> None:
        if self._own_repo and self._repo is not None:
            self._repo.close()
            self._repo = None
        if self._own_stat_cache and isinstance(self._stat_cache, StatCache):
            self._stat_cache.close()
        for value in self.cache.values():  # fingerprinters may keep closeable things
            if hasattr(value, "close"):
                with contextlib.suppress(Exception):
                    value.close()
        self.cache.clear()

    def __enter__(self) -> FingerprintContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
