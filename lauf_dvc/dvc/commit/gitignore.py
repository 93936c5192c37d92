"""Answer DVC's "is this output already git-ignored?" in time independent of how many
outputs the ``.gitignore`` files list.

For every output it saves, DVC asks (``Output.ignore`` -> scmrepo ``Git.ignore`` ->
``is_ignored``) and appends ``/name`` to the folder's ``.gitignore`` if not. scmrepo's
dulwich backend builds its ``IgnoreFilterManager`` anew whenever DVC's repository lock is
taken or released (``Repo._reset``), so for every stage: each ``.gitignore`` up the path
is read and every line of it matched, in turn, against the path and each of its parent
folders. In a folder of 1000 outputs that was 3 ms per stage (10,000: 30), under DVC's
repository lock, which every worker waits for.

The lines DVC writes are anchored literals (``/name``, ``/sub/name``: no glob character,
no backslash, no space). :func:`fast_is_ignored` reads each ``.gitignore`` on the path
(as dulwich does) and splits it: those literal lines go into a set, looked up for the
path and each of its parent folders (what such a line matches: the entry, and all under
it as a folder); every other line goes to a dulwich filter (the same dulwich, its own
matching and rules), compiled once per distinct set of such lines. Without a negated
pattern (``!``) in any file that applies, git ignores a path when any pattern matches it
or a parent folder, so the two answers combine by "or" and the result is dulwich's.

Where that does not hold it answers None and the caller asks scmrepo as before: a
negated pattern anywhere on the path or in the global excludes, ``core.ignorecase``, a
``.gitignore`` that is a symbolic link or unreadable, a path outside the repository or
asked about as a folder (trailing slash), a dulwich without the internals used
(compat item ``dulwich-ignore``). tests/dvc/test_gitignore.py compares the answers with
scmrepo's own over generated ``.gitignore`` files and paths.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_NOT_LITERAL = frozenset(b"*?[]\\! \t\r")
_CACHE_SIZE = 256


def _split(data: bytes) -> tuple[frozenset[bytes], tuple[bytes, ...]]:
    """A ``.gitignore``'s anchored literal lines (without the leading ``/``) and its other
    lines (comments and blank lines included: dulwich drops them)."""
    literals: list[bytes] = []
    others: list[bytes] = []
    for line in data.split(b"\n"):
        if _is_literal(line):
            literals.append(line[1:])
        elif line.strip():
            others.append(line)
    return frozenset(literals), tuple(others)


def _is_literal(line: bytes) -> bool:
    if len(line) < 2 or line[0] != 0x2F or line[-1] == 0x2F:  # "/x", not "/", not "/x/"
        return False
    if not _NOT_LITERAL.isdisjoint(line):
        return False
    return all(part not in (b"", b".", b"..") for part in line[1:].split(b"/"))


def _negation_reaches(compiled: Any, below: list[bytes]) -> bool:
    """Does a negated pattern of ``compiled`` match the path (``below``: its parts
    relative to the filter's folder) or one of its parent folders?"""
    negated = [p for p in compiled.patterns if not p.is_exclude]
    if not negated:
        return False
    for n in range(1, len(below) + 1):
        rel = b"/".join(below[:n])
        for candidate in (rel, rel + b"/"):
            if any(p.match(candidate) for p in negated):
                return True
    return False


class _Parsed:
    __slots__ = ("data", "literals", "others")

    def __init__(self, data: bytes, literals: frozenset[bytes], others: tuple[bytes, ...]):
        self.data, self.literals, self.others = data, literals, others


_FILTERS: dict[tuple[bytes, ...], Any] = {}
_READ: dict[bytes, _Parsed] = {}


class FastIgnores:
    """One repository's ``is_ignored``, fast where it can be (see the module's text)."""

    def __init__(self, scm: Any) -> None:
        from dulwich.ignore import IgnoreFilter, IgnoreFilterManager

        self._filter_cls = IgnoreFilter
        self._manager_cls = IgnoreFilterManager
        self.root = scm.root_dir  # paths relative to it, as scmrepo's is_ignored
        full = IgnoreFilterManager.from_repo(scm.dulwich.repo)  # global excludes, ignorecase
        self._top = full._top_path  # where dulwich reads .gitignore files
        self._globals: list[Any] = list(full._global_filters)
        self._ignorecase = bool(full._ignorecase)
        self._negated = any(not p.is_exclude for f in self._globals for p in f.patterns)
        # kept from one instance (one stage) to the next: both are keyed by content
        self._filters = _FILTERS  # the other lines -> their dulwich filter
        self._read = _READ  # .gitignore path -> what it held, split

    def is_ignored(self, path: str) -> bool | None:
        """Whether git ignores ``path`` (absolute), as scmrepo's ``is_ignored`` answers;
        None: this cannot tell, ask scmrepo."""
        if self._ignorecase or self._negated or path.endswith(os.sep):
            return None
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return None
        parts = os.fsencode(rel).split(os.fsencode(os.sep))
        filters: dict[str, Any] = {}
        found: list[frozenset[bytes]] = []
        for depth in range(len(parts)):  # the .gitignore of the root and of each folder
            folder = b"/".join(parts[:depth])
            loaded = self._load(folder)
            if loaded is None:
                return None
            literals, others = loaded
            if others is not None and _negation_reaches(others, parts[depth:]):
                return None  # a negation that matches it or a parent (it may win in git)
            found.append(literals)
            filters[os.fsdecode(folder)] = others
        for depth, literals in enumerate(found):  # no negation: any match ignores
            below = parts[depth:]
            for n in range(1, len(below) + 1):  # the path itself or a parent folder listed
                if b"/".join(below[:n]) in literals:
                    return True
        manager = self._manager_cls(self._top, self._globals, False)
        manager._path_filters.update(filters)  # dulwich loads no file itself
        return bool(manager.is_ignored(os.fsdecode(b"/".join(parts))))

    def _load(self, folder: bytes) -> tuple[frozenset[bytes], Any] | None:
        path = os.path.join(os.fsencode(self._top), folder, b".gitignore")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return frozenset(), None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                return None  # a symlinked .gitignore: dulwich skips it with a warning
            raise
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        literals, others = self._parsed(path, data)
        if not others:
            return literals, None
        compiled = self._filters.get(others)
        if compiled is None:
            if len(self._filters) >= _CACHE_SIZE:
                self._filters.clear()
            from dulwich.ignore import read_ignore_patterns

            patterns = read_ignore_patterns(io.BytesIO(b"\n".join(others)))  # as dulwich reads
            compiled = self._filter_cls(patterns, False, path=os.fsdecode(path))
            self._filters[others] = compiled
        return literals, compiled

    def _parsed(self, path: bytes, data: bytes) -> tuple[frozenset[bytes], tuple[bytes, ...]]:
        """``_split(data)``; where ``data`` only added lines to what this file held when
        last read (DVC appends), only those lines are split."""
        last = self._read.get(path)
        if last is not None and last.data == data:
            return last.literals, last.others
        if last is not None and last.data.endswith(b"\n") and data.startswith(last.data):
            more_literals, more_others = _split(data[len(last.data) :])
            parsed = _Parsed(data, last.literals | more_literals, last.others + more_others)
        else:
            parsed = _Parsed(data, *_split(data))
        if len(self._read) >= _CACHE_SIZE:
            self._read.clear()
        self._read[path] = parsed
        return parsed.literals, parsed.others


@contextmanager
def fast(repo: Any) -> Iterator[None]:
    """While inside: ``repo.scm.is_ignored`` answered by :class:`FastIgnores` where it can
    (DVC's ``Stage.ignore_outs`` and the rest of scmrepo's ``ignore`` run as they are)."""
    from lauf_dvc.dvc import compat

    scm = repo.scm
    if not compat.enabled("dulwich-ignore") or type(scm).__name__ != "Git":
        yield
        return
    fast_ignores = FastIgnores(scm)
    real = scm.is_ignored

    def is_ignored(path: Any) -> bool:
        answer = fast_ignores.is_ignored(os.fspath(path))
        return real(path) if answer is None else answer

    scm.is_ignored = is_ignored
    try:
        yield
    finally:
        del scm.is_ignored
