"""The loaded pipeline, kept between commands while nothing it was built from changed.

Loading a pipeline through DVC's API (walk the workspace for ``dvc.yaml`` files, parse,
interpolate and validate each, build every stage object and the graph) is most of what
``lauf-dvc status`` costs on a large project, and it is the same work every time the
project has not changed. After a full load, :func:`recording` stores the result (the
:class:`~lauf_dvc.dvc.load.pipeline.StageInfo` list and the ``lauf`` vars) in
``.dvc/tmp/lauf/pipeline.json`` with what the load depended on:

- every directory DVC's walk entered, with the names in it that decide the walk
  (sub-directories, ``dvc.yaml``/``.dvc`` files, ``.gitignore``, ``.dvcignore``), so a
  pipeline file added or removed anywhere DVC looks is noticed;
- every file read while loading (``dvc.yaml`` files, the params and vars files used for
  interpolation), the ignore files of those directories, ``.git/info/exclude`` and DVC's
  config files (system, global, repo and local), by size, mtime, ctime and inode;
- the versions of lauf-dvc, DVC and Python.

:func:`load` checks all of that (a listing per walked directory and a ``stat`` per file)
and returns the stored pipeline only if everything matches; a file changed within
:data:`RACY` seconds of the snapshot never matches (a change within one timestamp tick
could otherwise go unseen). Anything else (no snapshot, a mismatch, an unreadable
snapshot) means a full load through DVC, as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc import compat
from lauf_dvc.dvc.commit.atomic import write_json
from lauf_dvc.dvc.load import speedups

if TYPE_CHECKING:
    from dvc.repo import Repo

    from lauf_dvc.dvc.load.pipeline import StageInfo

log = logging.getLogger(__name__)

FILE = "pipeline.json"  # under .dvc/tmp/lauf
FORMAT = 1
RACY = 2.0  # seconds
_DECIDING = (".gitignore", ".dvcignore")


def load(root: Path, lauf_dir: Path) -> tuple[dict[str, Any], list[StageInfo], list[int]] | None:
    """``(lauf_vars, stages, snapshot)`` as the last full load found them, if nothing
    changed since; ``snapshot`` names the snapshot file read (:func:`file_stat` of it:
    what the stored verdicts were computed under, see
    :mod:`lauf_dvc.dvc.status.verdictcache`)."""
    from lauf_dvc.dvc.load.pipeline import StageInfo

    if not compat.caches():
        return None
    try:
        with open(lauf_dir / FILE, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            snap = json.loads(f.read())
        if snap.get("format") != FORMAT or snap.get("versions") != versions():
            return None
        if not _unchanged(snap, str(root)):
            return None
        stages = [StageInfo(**_stage_fields(s)) for s in snap["stages"]]
        return snap["lauf_vars"], stages, _stat_list(st)
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Recording:
    """What one full load read (see :func:`recording`)."""

    def __init__(self, root: str, config_files: Sequence[str] = ()) -> None:
        self.root = root
        self.config_files = list(config_files)  # DVC's, every level (system ... local)
        self.dirs: set[str] = set()
        self.files: set[str] = set()
        self.started = time.time()

    def save(
        self, lauf_dir: Path, lauf_vars: dict[str, Any], stages: Sequence[StageInfo]
    ) -> list[int] | None:
        """Store the loaded pipeline with what it depends on; never fails the caller.
        Returns the :func:`file_stat` of the snapshot written (None: none was)."""
        if not compat.caches():
            return None
        try:  # dvc.lock files are read too, but nothing loaded here comes from them
            files = {f for f in self.files if os.path.basename(f) != "dvc.lock"}
            dirs = {}
            for d in sorted(self.dirs):
                names = _deciding_names(d)
                dirs[self._rel(d)] = names
                files.update(os.path.join(d, n) for n in names if n in _DECIDING)
            git = os.path.join(self.root, ".git", "info", "exclude")
            files.update([git, *self.config_files])
            snap: dict[str, Any] = {
                "format": FORMAT,
                "versions": versions(),
                "time": self.started,
                "dirs": dirs,
                "files": {self._rel(f): file_stat(f) for f in sorted(files)},
                "lauf_vars": lauf_vars,
                "stages": [dataclasses.asdict(s) for s in stages],
            }
            fresh = self.started - RACY  # a directory changed since (a dvc.yaml added
            dir_times = [os.stat(d).st_mtime_ns / 1e9 for d in self.dirs]  # while DVC
            file_times = [st[1] / 1e9 for st in snap["files"].values() if st]  # walked)
            if any(t >= fresh for t in (*dir_times, *file_times)):
                (lauf_dir / FILE).unlink(missing_ok=True)  # too fresh to be trusted later
                return None
            write_json(lauf_dir / FILE, snap)
            return file_stat(lauf_dir / FILE)
        except (OSError, TypeError, ValueError) as exc:  # e.g. a meta value JSON cannot hold
            log.debug("pipeline not cached: %s", exc)
            with contextlib.suppress(OSError):
                (lauf_dir / FILE).unlink(missing_ok=True)
            return None

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)


@contextlib.contextmanager
def recording(repo: Repo) -> Iterator[Recording]:
    """Note every directory DVC walks and every file it reads through ``repo`` meanwhile."""
    rec = Recording(repo.root_dir, [os.path.abspath(f) for f in repo.config.files.values()])
    fs = repo.fs
    if getattr(fs, "protocol", None) != "local" or not compat.caches():
        yield rec
        return
    walk, open_ = fs.walk, fs.open

    def recorded_walk(path: Any, **kwargs: Any) -> Iterator[Any]:
        for entry in walk(path, **kwargs):
            rec.dirs.add(os.path.abspath(entry[0]))
            yield entry

    def recorded_open(path: Any, mode: str = "r", **kwargs: Any) -> Any:
        if "r" in mode:
            rec.files.add(os.path.abspath(os.fspath(path)))
        return open_(path, mode, **kwargs)

    fs.walk, fs.open = recorded_walk, recorded_open
    speedups.READ_HOOKS.append(rec.files.add)
    try:
        yield rec
    finally:
        speedups.READ_HOOKS.remove(rec.files.add)
        fs.walk, fs.open = walk, open_


def _unchanged(snap: dict[str, Any], root: str) -> bool:
    fresh = snap["time"] - RACY
    for rel, names in snap["dirs"].items():
        try:
            if _deciding_names(os.path.join(root, rel)) != names:
                return False
        except OSError:
            return False
    for rel, recorded in snap["files"].items():
        now = file_stat(os.path.join(root, rel))
        if now != recorded or (now is not None and now[1] / 1e9 >= fresh):
            return False
    return True


def _deciding_names(directory: str) -> list[str]:
    """The entries of ``directory`` that decide what DVC's walk finds."""
    from dvc.dvcfile import is_valid_filename

    names = []
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name in _DECIDING or is_valid_filename(entry.name):
                names.append(entry.name)
            elif entry.is_dir(follow_symlinks=False):
                names.append(entry.name + "/")
    return sorted(names)


def file_stat(path: str | Path) -> list[int] | None:
    """[size, mtime_ns, ctime_ns, inode] of ``path``; None if it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _stat_list(st)


def _stat_list(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def versions() -> list[str]:
    """What a stored cache was made by (lauf-dvc, DVC, Python): another maker, no use."""
    import dvc

    import lauf_dvc

    return [lauf_dvc.__version__, dvc.__version__, sys.version.split()[0]]


def _stage_fields(data: dict[str, Any]) -> dict[str, Any]:
    tuples = ("cmd", "deps", "outs", "params", "upstream")
    return {k: tuple(v) if k in tuples else v for k, v in data.items()}
