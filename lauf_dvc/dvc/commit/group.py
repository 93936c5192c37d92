"""Group commit of ``dvc.lock`` entries: the worker that holds DVC's repository lock writes
every entry that is waiting for it in one rewrite.

Each stage's entry has to end up in ``dvc.lock``, a file as large as the pipeline that is
rewritten whole (read, checked, spliced, written, synced: about 20 ms at 10,000 entries on
a 2-core VM), under DVC's repository lock, which every worker needs in turn. Written
once per stage, that made the cost per stage grow with the pipeline and the lock the
bottleneck of a large run.

So a worker whose stage is saved posts its entry first (:func:`post`: a small record
under ``.dvc/tmp/lauf/commit/<lockfile>/``, the entry's lines as DVC writes them, and the
outputs to git-ignore), and only then waits for the lock. In its turn (:func:`commit`)
it takes its own record and every other record posted since ``dvc.lock`` was last
written, adds their ``.gitignore`` lines, and writes all the entries in one rewrite
(:func:`lauf_dvc.dvc.commit.lockfile.splice_many`); then removes those records. A worker
whose record someone else wrote has only to check, in its turn, that its entry is there.
The more workers wait, the more entries one rewrite carries: the cost per stage falls
where it used to grow. Beside the records the holder keeps a digest of the file it wrote
and where its stages block ends (``lockfile.shape``): the next holder that reads the
same bytes skips the whole-file shape checks, which at 10,000 entries cost a third of
the rewrite.

Nothing changes for a reader: ``dvc.lock`` is replaced atomically as before, each rewrite
holds whole entries as DVC writes them, and a stage reports success only after its
entry is in the file. A record is a stage whose outputs are saved and committed; the
order is DVC's (``.gitignore`` lines, then the ``dvc.lock`` entry).

Crash safety, at every instant:

- a poster killed before its turn: its record is written by the next holder if posted
  after ``dvc.lock``'s last rewrite (the stage is complete: outputs saved and in the
  cache), or left (the stage has no entry and runs again). Records of dead processes of
  this host are removed when a worker starts (:func:`clean`).
- a holder killed after its rewrite, before it removed the records: they are older than
  ``dvc.lock`` now, so no other holder writes them again (a later write of that stage,
  e.g. by ``dvc repro``, is never overwritten with an old entry). Their posters, alive,
  find their record and write it again (the same lines).
- a record replaced meanwhile (a stage run again after its worker died): the poster whose
  record is gone checks its own lines are in ``dvc.lock`` and writes them if not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import xxhash

from lauf_dvc.dvc import compat
from lauf_dvc.dvc.commit import atomic, gitignore, lockfile

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

log = logging.getLogger(__name__)

_VERSION = 1


@dataclass
class Record:
    """One stage's posted entry (see the module's text)."""

    path: Path  # the record's file
    lockfile: str  # the dvc.lock, relative to the repository's root
    name: str  # the stage's name in it
    block: str  # its entry's lines as DVC writes them (lockfile.render)
    ignores: list[str]  # outputs to git-ignore, relative to the root
    entry: dict[str, Any] | None = None  # ``{name: data}``: the poster's own only
    inode: int | None = None  # of the record's file as read or written
    mtime_ns: int = 0


def _folder(repo: Repo, lockfile_rel: str) -> Path:
    key = hashlib.sha1(lockfile_rel.encode()).hexdigest()[:12]
    return Path(repo.tmp_dir) / "lauf" / "commit" / key


def post(repo: Repo, stage: PipelineStage, entry: tuple[dict[str, Any], str]) -> Record | None:
    """Post ``stage``'s entry (``entry``: :func:`lockfile.rendered`) for the next holder of
    DVC's lock; None where group commit does not apply (the caller writes it itself).

    Checks what ``Output.ignore`` checks before it git-ignores an output (an output git
    tracks already fails the stage, as in DVC), since the holder that writes this record
    may be another process."""
    from dvc.output import OutputAlreadyTrackedError

    if not compat.enabled("group-commit"):
        return None
    root = repo.root_dir
    lock = compat.lockfile_of(stage.dvcfile)
    lock_rel = os.path.relpath(os.path.abspath(lock.path), root)
    if lock_rel.startswith(os.pardir):
        return None
    ignores = []
    for out in stage.outs:
        if not out.use_scm_ignore:
            continue
        if repo.scm.is_tracked(out.fspath):
            raise OutputAlreadyTrackedError(out)
        ignores.append(os.path.relpath(out.fspath, root))
    data, block = entry
    folder = _folder(repo, lock_rel)
    name_key = hashlib.sha1(f"{lock_rel}\0{stage.name}".encode()).hexdigest()[:24]
    path = folder / f"{name_key}.json"
    body = {
        "v": _VERSION,
        "lockfile": lock_rel,
        "name": stage.name,
        "block": block,
        "ignores": ignores,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    atomic.write_json(path, body)  # a holder never reads half a record
    st = path.stat()
    record = Record(path, lock_rel, stage.name, block, ignores, data)
    record.inode, record.mtime_ns = st.st_ino, st.st_mtime_ns
    return record


def withdraw(record: Record) -> None:
    """Remove ``record`` if it is still the one posted (the stage failed meanwhile)."""
    _unlink_if_same(record)


def commit(repo: Repo, stage: PipelineStage, own: Record) -> str:
    """Under DVC's repository lock: write ``own`` and every other record waiting (see the
    module's text; ``own``: :func:`post`'s for ``stage``). ``"wrote"``; ``"found"`` (another
    worker wrote it); ``"dvc"``: ``own`` is not in ``dvc.lock``, the caller lets DVC dump
    the stage (a file of another shape, a new dvc.lock, a key DVC writes otherwise);
    its ``.gitignore`` lines are added either way."""
    from dvc.exceptions import DvcException

    root = repo.root_dir
    lock_path = os.path.join(root, own.lockfile)
    try:
        lock_mtime = os.stat(lock_path).st_mtime_ns
    except FileNotFoundError:
        lock_mtime = None
    mine = _still_posted(own)
    if not mine:
        if lock_mtime is not None and _is_written(lock_path, own):
            return "found"  # another holder wrote it (and its .gitignore lines)
        log.debug("record of %s replaced or gone, and not in dvc.lock: writing it", own.name)
    with gitignore.fast(repo):
        for rel in own.ignores:
            repo.scm_context.ignore(os.path.join(root, rel))
        records = [own]
        for record in _waiting(own, lock_mtime) if lock_mtime is not None else []:
            try:
                for rel in record.ignores:
                    repo.scm_context.ignore(os.path.join(root, rel))
            except (DvcException, OSError) as exc:  # its own poster meets it, and fails
                log.debug("record of %s left to its poster: %s", record.name, exc)
                continue
            records.append(record)
    if lock_mtime is None:  # DVC writes the header ("Generating lock file"): let it
        _unlink_if_same(own)
        return "dvc"
    fs = repo.fs
    shape = own.path.parent / _SHAPE
    with fs.open(lock_path, encoding="utf-8") as fd:
        text = fd.read()
    items = [(r.name, r.entry, r.block) for r in records]
    spliced = lockfile.splice_many(text, items, end=_known_end(shape, text))
    if spliced is None:  # another shape: DVC dumps ours; the others' posters do theirs
        _unlink_if_same(own)
        return "dvc"
    new_text, outcome, end = spliced
    written = [r for r, o in zip(records, outcome, strict=True) if o is not None]
    if written:
        with fs.open(lock_path, "w+", encoding="utf-8") as fd:  # as DVC: always rewritten
            fd.write(new_text)
        if lockfile.checked_blocks([r.block for r in written]):
            _write_shape(shape, new_text, end)
        else:
            shape.unlink(missing_ok=True)
        if any(outcome):
            rel = compat.lockfile_of(stage.dvcfile).relpath
            # DVC's own message and git tracking (dvc/dvcfile.py Lockfile.dump_stages)
            logging.getLogger("dvc.dvcfile").info("Updating lock file '%s'", rel)
            repo.scm_context.track_file(rel)
    for record in written:
        _unlink_if_same(record)
    if outcome[0] is None:
        _unlink_if_same(own)
        return "dvc"
    return "wrote"


def clean(repo: Repo) -> None:
    """Remove records and temporary files left by dead processes of this host."""
    base = Path(repo.tmp_dir) / "lauf" / "commit"
    if not base.is_dir():
        return
    host = socket.gethostname()
    for path in base.glob("*/*"):
        if path.suffix == ".tmp":  # atomic.write_json's "<name>.<pid>.tmp"
            pid = path.name.rsplit(".", 2)[-2] if path.name.count(".") >= 2 else ""
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                path.unlink(missing_ok=True)
            continue
        body = _read_body(path) or {}
        owner = body.get("pid")
        ours = body.get("host") == host and isinstance(owner, int) and owner > 0
        if ours and not psutil.pid_exists(owner):
            path.unlink(missing_ok=True)


# -- helpers ---------------------------------------------------------------------------

#: Beside the records: a digest of the dvc.lock last written here (from a checked file
#: and checked entries) and where its stages block ends. A file read with that digest is
#: that one: the next rewrite skips the whole-file checks (6 ms at 10,000 entries; the
#: digest, 1).
_SHAPE = "lockfile.shape"


def _digest(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def _known_end(shape: Path, text: str) -> int | None:
    try:
        body = json.loads(shape.read_text(encoding="utf-8"))
        digest, end = body["digest"], body["end"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return end if isinstance(end, int) and digest == _digest(text) else None


def _write_shape(shape: Path, text: str, end: int) -> None:
    try:
        atomic.write_json(shape, {"digest": _digest(text), "end": end})
    except OSError:
        shape.unlink(missing_ok=True)


def _still_posted(record: Record) -> bool:
    try:
        return record.path.stat().st_ino == record.inode
    except FileNotFoundError:
        return False


def _unlink_if_same(record: Record) -> None:
    """Remove the record's file if it is still the one read or written (a stage run again
    may have posted a new one under the same name meanwhile)."""
    with contextlib.suppress(FileNotFoundError):
        if record.path.stat().st_ino == record.inode:
            record.path.unlink()


def _is_written(lock_path: str, record: Record) -> bool:
    try:
        with open(lock_path, encoding="utf-8") as fd:
            text = fd.read()
    except OSError:
        return False
    return lockfile.entry_text(text, record.name) == record.block


def _read_body(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("v") == _VERSION else None


def _waiting(own: Record, lock_mtime: int) -> list[Record]:
    """The other records of ``own``'s dvc.lock posted after it was last written, oldest
    first."""
    found: list[Record] = []
    try:
        entries = list(os.scandir(own.path.parent))
    except FileNotFoundError:
        return found
    for item in entries:
        if not item.name.endswith(".json") or item.name == own.path.name:
            continue
        try:
            st = item.stat()
        except FileNotFoundError:
            continue
        if st.st_mtime_ns <= lock_mtime:
            continue  # written already by a holder that died before removing it, or
            # posted just before the last rewrite: its poster writes it in its turn
        body = _read_body(Path(item.path))
        if body is None or body.get("lockfile") != own.lockfile:
            continue
        name, block, ignores = body.get("name"), body.get("block"), body.get("ignores")
        if not (isinstance(name, str) and isinstance(block, str) and isinstance(ignores, list)):
            continue
        ignored = [str(i) for i in ignores]
        record = Record(Path(item.path), own.lockfile, name, block, ignored)
        record.inode, record.mtime_ns = st.st_ino, st.st_mtime_ns
        found.append(record)
    found.sort(key=lambda r: r.mtime_ns)
    return found
