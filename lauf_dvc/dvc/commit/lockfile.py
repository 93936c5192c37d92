"""Write one stage's ``dvc.lock`` entry byte for byte as DVC does, in time independent of
the file's size.

DVC updates an entry (dvc/dvcfile.py ``Lockfile.dump_stages``) by parsing the whole
``dvc.lock`` in ruamel's round-trip mode, replacing the entry and dumping the whole
file again: about 4 ms per stage entry already in the file (a 1000-stage file: 1.8 s
for every stage), and DVC's repository lock is held meanwhile, so with parallel
workers it became the bottleneck of a pipeline.

Every entry DVC writes is a block of lines under ``stages:`` that starts with the
entry's key at an indentation of two spaces; all other lines of the entry are
indented further. :func:`dump_entry` renders the new entry with DVC's own dumper (in a
one-entry document, at the same depth, so at the same indentation and line width) and
replaces the old block's lines, or appends the block at the end of ``stages:`` for a
new entry, which is where the round trip puts it. The rest of the file is kept as it
is, as the round trip keeps it.

It only does so when the file has the shape DVC writes (``stages:`` followed by key
lines at two spaces, no comment lines, no tabs) and when the old block alone parses
to exactly one entry named like the stage; otherwise it returns False and the caller
lets DVC do the dump. tests/dvc/test_lockfile.py compares the result with DVC's own
dump over generated entries.
"""

from __future__ import annotations

import io
import logging
import re
from typing import TYPE_CHECKING, Any

from lauf_dvc.dvc import compat
from lauf_dvc.dvc.yamlparse import safe_yaml

if TYPE_CHECKING:
    from dvc.stage import PipelineStage

_HEADER = "stages:\n"
_COMMENT_OR_TAB = re.compile(r"^[ \t]*#|^ *\t", re.MULTILINE)
_KEY_LINE = re.compile(r"^  [^ ?:\n-][^\n]*:$", re.MULTILINE)  # an entry's first line
_ANY_KEY = re.compile(r"^  [^ \n]", re.MULTILINE)  # where an entry (or stages:) ends
# The same searches, for a whole file: a pattern starting with a literal newline is
# searched by the regex engine's fast scan for that character, ten times faster than "^"
# in multi-line mode (tried at every position); these run once per stage committed.
_TOP_KEY_AFTER_NL = re.compile(r"\n[^ \n]")


def _has_comment_or_tab(text: str) -> bool:
    return ("#" in text or "\t" in text) and _COMMENT_OR_TAB.search(text) is not None


def _has_quoted_key(text: str, start: int = 0, end: int | None = None) -> bool:
    """Does a line of ``text[start - 1:end]`` start with two spaces and a quote (a key DVC
    had to quote)?"""
    end = len(text) if end is None else end
    at = max(start - 1, 0)
    return _after_indent(text, "'", at, end) or _after_indent(text, '"', at, end)


def _after_indent(text: str, char: str, start: int, end: int, then: str = "") -> bool:
    """``text.find("\n  " + char + then, start, end) >= 0``, found from ``char``: a search
    for a pattern starting with a newline stops at every line (3 ms per MB), one for a
    character that is rare in dvc.lock at that character only."""
    at = text.find(char, start + 3, end)
    while at >= 0:
        if text.startswith("\n  ", at - 3) and text.startswith(then, at + 1, end):
            return True
        at = text.find(char, at + 1, end)
    return False


def _top_key_after(text: str, start: int) -> int:
    """Where the first line at or after ``start`` (a line start) that is not indented
    begins, or ``len(text)``."""
    found = _TOP_KEY_AFTER_NL.search(text, max(start - 1, 0))
    return found.start() + 1 if found else len(text)


def rendered(stage: PipelineStage) -> tuple[dict[str, Any], str]:
    """``stage``'s dvc.lock entry (``{name: data}``, DVC's ``to_lockfile``) and its lines
    as DVC writes them (:func:`render`): made from the stage alone, so before taking
    DVC's repository lock (rendering is most of an entry's cost)."""
    from dvc.stage.serialize import to_lockfile

    entry = to_lockfile(stage)
    return entry, render(entry)


def dump_entry(stage: PipelineStage, entry: tuple[dict[str, Any], str] | None = None) -> bool:
    """Write ``stage``'s entry (``entry``: from :func:`rendered`, or made now) into its
    ``dvc.lock`` as ``stage.dump(update_pipeline=False)`` would; False (nothing written)
    where this fast path does not apply."""
    lockfile = compat.lockfile_of(stage.dvcfile)
    fs = stage.repo.fs
    try:
        with fs.open(lockfile.path, encoding="utf-8") as fd:
            text = fd.read()
    except FileNotFoundError:
        return False  # DVC writes the header ("Generating lock file"): let it
    data, block = entry if entry is not None else rendered(stage)
    spliced = splice(text, stage.name, data, block)
    if spliced is None:
        return False
    new_text, modified = spliced
    with fs.open(lockfile.path, "w+", encoding="utf-8") as fd:  # as DVC: always rewritten
        fd.write(new_text)
    if modified:
        # DVC's own message and git tracking (dvc/dvcfile.py Lockfile.dump_stages)
        logging.getLogger("dvc.dvcfile").info("Updating lock file '%s'", lockfile.relpath)
        stage.repo.scm_context.track_file(lockfile.relpath)
    return True


def splice(
    text: str, name: str, entry: dict[str, Any], block: str | None = None
) -> tuple[str, bool] | None:
    """``text`` (a ``dvc.lock``) with ``entry`` (``{name: data}``; ``block``: its
    :func:`render`, if made already) put in, and whether the entry changed; None if
    ``text`` does not have the shape DVC writes."""
    block = render(entry) if block is None else block
    spliced = splice_many(text, [(name, entry, block)])
    if spliced is None or spliced[1][0] is None:
        return None
    return spliced[0], spliced[1][0]


def splice_many(
    text: str, items: list[tuple[str, dict[str, Any] | None, str]], end: int | None = None
) -> tuple[str, list[bool | None], int] | None:
    """``text`` (a ``dvc.lock``) with each of ``items`` (name, ``{name: data}`` or None if
    not known, :func:`render` of it) put in, in order, as that many :func:`splice` calls
    would (the file's shape checked and its end found once: at 10,000 entries these scans
    cost more than the rewrite), and per item whether its entry changed (None: that item
    could not be put in here, e.g. a key DVC writes as ``? ``; data unknown: changed
    unless its lines are the same). None if ``text`` does not have the shape DVC writes.

    ``end``: where the stages block ends, known from an earlier call whose result this
    ``text`` is (see :func:`checked_blocks`): the whole-file checks are skipped (at
    10,000 entries they cost a third of a rewrite). Also returned: that end in the result."""
    if not text.endswith("\n"):
        return None
    start = text.find("\n" + _HEADER)
    if start < 0:
        return None
    start += 1 + len(_HEADER)  # first character of the first entry
    if end is None or not start <= end <= len(text):
        if _has_comment_or_tab(text):
            return None
        end = _top_key_after(text, start)  # the end of the stages block
    outcome: list[bool | None] = []
    for name, entry, block in items:
        spliced = _splice_one(text, start, end, name, entry, block)
        if spliced is None:
            outcome.append(None)
            continue
        new_text, modified = spliced
        end += len(new_text) - len(text)
        text = new_text
        outcome.append(modified)
    return text, outcome, end


def checked_blocks(blocks: list[str]) -> bool:
    """Do entry lines (:func:`render`'s) keep a file's shape as :func:`splice_many`'s
    whole-file checks want it (no comment or tab-led line)? Then a result of splicing
    them into a checked file needs no check again."""
    return not any(_has_comment_or_tab(block) for block in blocks)


def _splice_one(
    text: str, start: int, end: int, name: str, entry: dict[str, Any] | None, block: str
) -> tuple[str, bool] | None:
    key_line = block[: block.index("\n") + 1]
    if not _KEY_LINE.fullmatch(key_line[:-1]):
        return None  # e.g. a "? " key (longer than 128 characters)
    from ruamel.yaml import YAMLError

    try:
        old_start = _find_line(text, key_line, start, end)
        if old_start < 0:
            # The entry may still be there, spelled differently (quoted): DVC's dumper
            # writes a name the same way each time, so only a quoted key line can be it.
            # Checked by a scan for one, not by parsing every key: a new entry must not
            # cost the whole file (every stage of a first run is a new entry).
            quoted = _has_quoted_key(text, start, end)
            if quoted and name in _existing_keys(text[start:end]):
                return None  # let DVC do it
            return text[:end] + block + text[end:], True
        next_key = _ANY_KEY.search(text, old_start + 1, end)
        old_end = next_key.start() if next_key else end
        old_lines = text[old_start:old_end]
        old = _load(old_lines)
    except YAMLError:
        return None
    if not isinstance(old, dict) or list(old) != [name]:
        return None
    modified = old_lines != block if entry is None else old[name] != entry[name]
    return text[:old_start] + block + text[old_end:], modified


def render(entry: dict[str, Any]) -> str:
    """The lines DVC writes for ``entry`` under ``stages:`` (two-space indented)."""
    out = io.StringIO()
    compat.yaml_dumper().dump({"stages": entry}, out)
    text = out.getvalue()
    assert text.startswith(_HEADER), text[:40]
    return text[len(_HEADER) :]


def _find_line(text: str, line: str, start: int, end: int) -> int:
    at = start
    while True:
        found = text.find(line, at, end)
        if found < 0 or found == start or text[found - 1] == "\n":
            return found
        at = found + 1


def _existing_keys(block: str) -> set[str]:
    """The entry names of a stages block (parsing only its key lines)."""
    keys = "".join(m.group(0) + " null\n" for m in _KEY_LINE.finditer(block))
    parsed = _load(keys)
    return set(parsed) if isinstance(parsed, dict) else set()


def _dedent(lines: str) -> str:
    return "".join(line[2:] + "\n" for line in lines.splitlines())


def _load(text: str) -> Any:
    return safe_yaml().load(_dedent(text))


_PLAIN_HEADER = "schema: '2.0'\n" + _HEADER


def entry_blocks(text: str) -> list[str] | None:
    """The entries of a ``dvc.lock`` as DVC writes it (``schema: '2.0'``, then only
    ``stages:``), each as its lines of text; None for any other shape."""
    if not text.startswith(_PLAIN_HEADER) or not text.endswith("\n"):
        return None
    body = text[len(_PLAIN_HEADER) :]
    if _has_comment_or_tab(body) or _top_key_after(body, 1) < len(body) or body[:1] != " ":
        return None
    starts = [m.start() for m in _ANY_KEY.finditer(body)]
    if not starts or starts[0] != 0:
        return None
    blocks = [body[a:b] for a, b in zip(starts, [*starts[1:], len(body)], strict=True)]
    if not all(_KEY_LINE.match(block) for block in blocks):
        return None
    return blocks


def parse_entry(block: str) -> tuple[str, Any] | None:
    """One entry's lines (from :func:`entry_blocks`) parsed: (name, data), or None."""
    from ruamel.yaml import YAMLError

    try:
        parsed = _load(block)
    except YAMLError:
        return None
    if not isinstance(parsed, dict) or len(parsed) != 1:
        return None
    ((name, data),) = parsed.items()
    return (name, data) if isinstance(name, str) else None


_BLOCK_END = re.compile(r"^ {0,3}[^ \n]", re.MULTILINE)  # a line no entry's content has


def entry_text(text: str, name: str) -> str | None:
    """The lines of ``name``'s entry in ``text`` (a ``dvc.lock`` as DVC writes it), found
    by its key line alone, in time independent of the number of entries; ``""`` if
    ``text`` has no entry of that name; None if this cannot tell (another shape, a key
    DVC had to quote or write as ``? ``): read the file whole then.

    Inside ``stages:`` only an entry's first line is indented by exactly two spaces
    (everything else of an entry, block scalars included, by four or more), so the
    key line ``"  <name>:"`` is that entry's start and the next line indented by less
    than four spaces is its end. The caller parses the block and checks its one key."""
    if not text.startswith(_PLAIN_HEADER) or not text.endswith("\n"):
        return None
    key = f"  {name}:\n"
    if not _KEY_LINE.fullmatch(key[:-1]) or name != name.strip() or "#" in name:
        return None
    at = _find_line(text, key, len(_PLAIN_HEADER), len(text))
    if at < 0:
        if _has_quoted_key(text) or _after_indent(text, "?", 0, len(text), " "):
            return None  # it may be there, spelled otherwise
        return ""
    end = _BLOCK_END.search(text, at + len(key))
    return text[at : end.start() if end else len(text)]
