"""The ``xxhash`` fingerprinter: xxh3-128 of file contents, with a shared stat cache.

A file's hash is read from the stat cache while its size, mtime_ns and inode are
unchanged; otherwise the file is read again (a new mtime with the same content gives
the same hash, so touching a file changes nothing). A directory's hash covers its
files' relative paths (sorted, POSIX separators) and their hashes.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from lauf_dvc.fingerprint.model import CMD, MISSING, Fingerprint, dep_key, json_value, out_key
from lauf_dvc.fingerprint.params import param_parts
from lauf_dvc.hookspecs import hookimpl

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo
    from lauf_dvc.fingerprint.context import FingerprintContext
    from lauf_dvc.fingerprint.statcache import StatCache

ALGORITHM = "xxh3-128"
CHUNK = 1 << 20
DIR_SUFFIX = ".dir"
#: Part value of a dependency lauf cannot read itself (a URL): it never changes.
EXTERNAL = "external"


def hash_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """xxh3-128 of the file's content, as 32 hex digits (always reads the file)."""
    hasher = xxhash.xxh3_128()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fobj:
        while n := fobj.readinto(buf):
            hasher.update(view[:n])
    return hasher.hexdigest()


class ContentHasher:
    """Hashes files and directories, reading only what the stat cache cannot vouch for.

    ``files_read`` and ``bytes_read`` count what was actually read; each path is
    hashed at most once per hasher (one hasher per :class:`FingerprintContext`).
    """

    def __init__(self, cache: StatCache | None = None) -> None:
        self.cache = cache
        self.files_read = 0
        self.bytes_read = 0
        self._memo: dict[str, str] = {}

    def hash_path(self, path: str | os.PathLike[str]) -> str:
        """``MISSING``, a file's hex digest, or a directory's digest + ``".dir"``."""
        key = os.fspath(path)
        if key not in self._memo:
            self._memo[key] = self._hash_path(key)
        return self._memo[key]

    def _hash_path(self, path: str) -> str:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return MISSING
        if stat.S_ISDIR(st.st_mode):
            return self._hash_dir(path)
        return self._hash_files([(path, st)])[path]

    def _hash_dir(self, root: str) -> str:
        entries = sorted(_walk(root))  # (relative posix path, absolute path, stat)
        hashes = self._hash_files([(full, st) for _, full, st in entries])
        digest = xxhash.xxh3_128()
        for rel, full, _ in entries:
            digest.update(f"{rel}\0{hashes[full]}\n".encode())
        return digest.hexdigest() + DIR_SUFFIX

    def _hash_files(self, items: list[tuple[str, os.stat_result]]) -> dict[str, str]:
        started = time.time_ns()
        found = self.cache.get_many(ALGORITHM, items) if self.cache else {}
        fresh: list[tuple[str, os.stat_result, str]] = []
        for path, st in items:
            if path in found:
                continue
            try:
                value = hash_file(path)
                after = os.stat(path)
            except FileNotFoundError:  # removed while we looked
                found[path] = MISSING
                continue
            self.files_read += 1
            self.bytes_read += after.st_size
            found[path] = value
            if _same_stat(st, after):  # not written to while we read it
                fresh.append((path, after, value))
        if self.cache and fresh:
            self.cache.put_many(ALGORITHM, fresh, started_ns=started)
        return found


def _same_stat(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)


def _walk(root: str, prefix: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    """Every regular file below ``root`` as (relative POSIX path, path, stat), unordered.

    Symlinks are followed to files, not into directories (as ``os.walk`` does).
    """
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):  # removed meanwhile
        return
    for entry in entries:
        rel = prefix + entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, rel + "/")
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:  # a dangling symlink, or removed meanwhile
            continue
        if stat.S_ISREG(st.st_mode):
            yield rel, entry.path, st


class XxhashFingerprinter:
    """Command, parameter values, and xxh3-128 of every dependency and output."""

    name = "xxhash"
    version = "1"

    def fingerprint(self, stage: StageInfo, ctx: FingerprintContext) -> Fingerprint:
        hasher = hasher_for(ctx)
        parts = {CMD: json_value(list(stage.cmd))}
        parts.update(param_parts(stage, ctx))
        for dep in stage.deps:
            parts[dep_key(dep)] = _hash(hasher, ctx.root, dep)
        for out in stage.outs:
            parts[out_key(out)] = _hash(hasher, ctx.root, out)
        return Fingerprint(self.name, self.version, parts)


def hasher_for(ctx: FingerprintContext) -> ContentHasher:
    """The context's :class:`ContentHasher` (created on first use, sharing its stat cache)."""
    hasher = ctx.cache.get(ALGORITHM)
    if hasher is None:
        hasher = ctx.cache[ALGORITHM] = ContentHasher(ctx.stat_cache)
    return hasher


def _hash(hasher: ContentHasher, root: Path, path: str) -> str:
    if "://" in path:
        return EXTERNAL
    return hasher.hash_path(root / path)


@hookimpl
def lauf_fingerprinters() -> list[XxhashFingerprinter]:
    return [XxhashFingerprinter()]
