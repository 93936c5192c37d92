"""DVC's verdicts on stages (stale or not, and why), kept while nothing DVC would look
at changed.

With the default ``dvc`` fingerprinter, lauf asks DVC itself whether each stage changed:
that builds DVC's index and checks every stage, as ``dvc status`` does. DVC's answer
for a stage depends only on the stage's definition, its ``dvc.lock`` entry, its
dependencies, parameter files and outputs on disk, and the cache files of its outputs;
DVC itself trusts a file's hash while its inode, size and mtime are unchanged (its
state database). So after asking DVC, lauf stores each verdict
(``.dvc/tmp/lauf/verdicts.json``) with a key made of:

- the pipeline snapshot it was computed under (:mod:`lauf_dvc.dvc.load.pipecache`: the
  stat of ``pipeline.json``). Stored verdicts are only used by a command whose pipeline
  came from that same snapshot, so they were computed with the same ``dvc.yaml`` files,
  DVC config and ignore files (settings the definition does not show, such as an
  output's ``cache`` or ``persist``, included); every full load drops them too;
- the stage's definition as loaded;
- the text of its entry in ``dvc.lock`` (DVC's shape only; otherwise nothing is kept);
- size, mtime, ctime and inode of every dependency, parameter file and output, and of
  every file below those that are directories;
- size, mtime, ctime and inode of every cache file DVC checked for the stage's outputs
  (a cached output's object; for a directory, its ``.dir`` object and the object of
  every file in it): an object removed from the cache is "not in cache" to DVC.

A stored verdict is used only when the key is the same and no file of the workspace in
it is younger than 2 s (a change within one timestamp tick is never missed); DVC is
asked for every other stage. ``always_changed`` stages, imports, and stages with a
remote dependency or output (a URL) are always asked.

``lauf-dvc status``, ``repro --dry`` and the sync of ``repro`` and ``worker`` use them.
A worker still asks DVC itself about each stage it is about to run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc import compat
from lauf_dvc.dvc.commit.atomic import write_json
from lauf_dvc.dvc.load.pipecache import RACY, file_stat, versions

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageVerdict:
    """Does one stage need to run, and why; ``source`` says who decided."""

    address: str
    changed: bool
    reasons: tuple[str, ...]
    source: str = "dvc status"
    #: the cache files DVC checked for the stage's outputs (absolute paths; a verdict
    #: from DVC only)
    objects: tuple[str, ...] = ()


FILE = "verdicts.json"  # under .dvc/tmp/lauf
FORMAT = 2


class Keys:
    """The current key of each stage (computed once per command), under the pipeline
    ``snapshot`` the stages came from (None: not from a snapshot; nothing is stored or
    used)."""

    def __init__(self, root: Path, stages: Iterable[StageInfo], snapshot: list[int] | None) -> None:
        self.root = root
        self.snapshot = snapshot
        self.time = time.time()
        self._blocks: dict[str, dict[str, str] | None] = {}
        self.keys: dict[str, Any] = {}
        if snapshot is None:
            return
        for stage in stages:
            if not stage.always_changed and stage.kind != "import":
                self.keys[stage.address] = self._key(stage)

    def _key(self, stage: StageInfo) -> Any:
        blocks = self._lock_blocks(stage.dvcfile)
        if blocks is None:
            return None
        files = [*stage.deps, *(p.split(":", 1)[0] for p in stage.params), *stage.outs]
        if any("://" in f for f in files):  # a remote file may change with nothing local
            return None
        parts: list[Any] = [_definition(stage), blocks.get(stage.name)]
        for rel in sorted(set(files)):
            parts.append([rel, _stats(self.root / rel)])
        return parts

    def _lock_blocks(self, dvcfile: str) -> dict[str, str] | None:
        """The entries of the dvc.lock next to ``dvcfile``, by stage name, as text; None
        if that file is not in the shape DVC writes (then nothing is cached)."""
        if dvcfile not in self._blocks:
            self._blocks[dvcfile] = _entries(self.root / Path(dvcfile).with_suffix(".lock"))
        return self._blocks[dvcfile]

    def fresh(self, key: Any) -> bool:
        """Whether a file in ``key`` changed within :data:`RACY` seconds of now."""
        limit = (self.time - RACY) * 1e9
        return any(t >= limit for _, stats in key[2:] for t in _times(stats))


def load(lauf_dir: Path, keys: Keys) -> dict[str, StageVerdict]:
    """The stored verdicts whose key still holds."""
    if not compat.caches() or keys.snapshot is None:
        return {}
    try:
        stored = json.loads((lauf_dir / FILE).read_text(encoding="utf-8"))
        if stored.get("format") != FORMAT or stored.get("versions") != versions():
            return {}
        if stored.get("snapshot") != keys.snapshot:  # another pipeline snapshot's
            return {}
        out = {}
        for address, entry in stored["stages"].items():
            key = keys.keys.get(address)
            if key is None or entry["key"] != key or keys.fresh(key):
                continue
            if any(file_stat(path) != st for path, st in entry["objects"]):
                continue
            objects = tuple(path for path, _ in entry["objects"])
            out[address] = StageVerdict(
                address, entry["changed"], tuple(entry["reasons"]), objects=objects
            )
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def forget(lauf_dir: Path) -> None:
    """Drop every stored verdict (the pipeline is being loaded afresh). Never fails the
    caller: stored verdicts name the snapshot they were computed under, so any left
    behind (a read-only ``.dvc/tmp/lauf``) are never taken for another pipeline."""
    with contextlib.suppress(OSError):
        (lauf_dir / FILE).unlink(missing_ok=True)


def save(lauf_dir: Path, keys: Keys, verdicts: Mapping[str, StageVerdict]) -> None:
    """Store ``verdicts`` (just computed by DVC) under the keys taken before asking DVC."""
    if not compat.caches() or keys.snapshot is None:
        return
    try:
        stages = {}
        for address, verdict in verdicts.items():
            key = keys.keys.get(address)
            if key is None or keys.fresh(key) or key != _recompute(keys, address):
                continue  # unknown, too fresh, or changed while DVC looked
            objects = [[path, file_stat(path)] for path in verdict.objects]
            if not verdict.changed and any(st is None for _, st in objects):
                continue  # an object DVC found is gone already
            stages[address] = {"key": key, "changed": verdict.changed,
                               "reasons": list(verdict.reasons), "objects": objects}  # fmt: skip
        write_json(lauf_dir / FILE, {"format": FORMAT, "versions": versions(),
                                     "snapshot": keys.snapshot, "stages": stages})  # fmt: skip
    except (OSError, TypeError, ValueError) as exc:
        log.debug("verdicts not cached: %s", exc)


def _recompute(keys: Keys, address: str) -> Any:
    """The key of ``address`` now (files only: definition and dvc.lock entry as before)."""
    key = keys.keys[address]
    return [*key[:2], *([rel, _stats(keys.root / rel)] for rel, _ in key[2:])]


def _entries(lock: Path) -> dict[str, str] | None:
    from lauf_dvc.dvc.commit.lockfile import entry_blocks, parse_entry

    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError):
        return None
    blocks = entry_blocks(text) if text else []
    if blocks is None:
        return None
    found = {}
    for block in blocks:
        first = block[2 : block.index("\n") - 1]  # "  name:" -> name (a plain YAML key)
        if first[:1] in ("'", '"'):  # quoted: let YAML read it
            parsed = parse_entry(block)
            if parsed is None:
                return None
            first = parsed[0]
        found[first] = block
    return found


def _times(stats: Any) -> Iterable[int]:
    """mtime and ctime (ns) of every file in a stats value of :func:`_stats`."""
    if not stats:
        return ()
    if isinstance(stats[0], list):  # a directory: one row per file
        return [t for row in stats for t in row[2:4]]
    return stats[1:3]


def _definition(stage: StageInfo) -> list[Any]:
    return [stage.address, list(stage.cmd), stage.wdir, list(stage.deps), list(stage.outs),
            list(stage.params), stage.frozen, stage.always_changed]  # fmt: skip


def _stats(path: Path) -> list[Any] | None:
    """[size, mtime_ns, ctime_ns, inode] of a file; for a directory, a list of
    [relative path, size, mtime_ns, ctime_ns, inode] of every file below it; None if absent."""
    if not os.path.isdir(path):
        return file_stat(path)
    out: list[Any] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if (st := file_stat(full)) is not None:
                out.append([os.path.relpath(full, path), *st])
    return out
