"""Make DVC's in-place rewrites of ``dvc.lock`` and ``.dvc`` files (and of its path-lock
file) atomic.

DVC rewrites ``dvc.lock`` in place (dvc/utils/serialize/_common.py ``_dump_data`` opens
it with ``"w+"``): a worker killed mid-write leaves a torn file, and with it every other
stage's entry is lost; a ``.dvc`` file (a data source, an import) likewise.
``.dvc/tmp/rwlock`` (DVC's path locks) is rewritten the same way, and a torn one makes
every later stage fail ("JSON structure is corrupted").

All are written through the repository's filesystem object (``repo.fs.open``), so
:func:`install` shadows that one method on that one ``Repo``: a write to one of these
files goes to a temporary file under ``.dvc/tmp/lauf/atomic/`` instead, which replaces
the file (``os.replace``) when DVC closes it without an error. Whatever instant a
process dies at, the file holds either the old or the new content. Nothing of DVC is
copied or changed: the content is what DVC writes; only where it lands first differs.
:meth:`AtomicFiles.check` notices if a future DVC stops writing through ``repo.fs``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil

from lauf_dvc.faults import fault

if TYPE_CHECKING:
    from dvc.repo import Repo

log = logging.getLogger(__name__)

LOCKFILE = "dvc.lock"
RWLOCK = "rwlock"  # dvc/rwlock.py RWLOCK_FILE


class AtomicFiles:
    """The shim installed on one ``Repo`` (see :func:`install`)."""

    def __init__(self, repo: Repo) -> None:
        self.fs = repo.fs
        self.rwlock = os.path.join(repo.tmp_dir, RWLOCK)
        self.tmp_dir = Path(repo.tmp_dir) / "lauf" / "atomic"
        self.stage: str | None = None  # the stage whose dvc.lock entry is being dumped
        self.replaced = 0  # dvc.lock files put in place so far

    def open(self, path: Any, mode: str = "r", **kwargs: Any) -> IO[Any]:
        target = os.fspath(path)
        if "w" in mode and (_is_dvcfile(target) or target == self.rwlock):
            return _AtomicWriter(self, target, mode, kwargs)  # type: ignore[return-value]
        return type(self.fs).open(self.fs, path, mode, **kwargs)  # the class's own method

    def check(self, before: int) -> None:
        """After a dump: warn if dvc.lock was written without passing through here."""
        if self.replaced == before:
            log.warning(
                "dvc.lock was not written through repo.fs.open (a DVC change?): lauf-dvc "
                "cannot make it crash-safe; a worker killed while DVC writes it may tear it"
            )

    def clean(self) -> None:
        """Remove temporary files left by dead processes of this host."""
        host = socket.gethostname()
        for path in self.tmp_dir.glob("*.tmp"):
            owner, _, rest = path.name.partition(".")
            pid = rest.partition(".")[0]
            if owner == host and pid.isdigit() and not psutil.pid_exists(int(pid)):
                path.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON in ``path``, via a temporary file: a reader sees old or new, never half."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_dvcfile(path: str) -> bool:
    """dvc.lock, or a ``.dvc`` file: a stage's record, which a crash must not tear."""
    return os.path.basename(path) == LOCKFILE or path.endswith(".dvc")


def install(repo: Repo) -> AtomicFiles:
    """Route ``repo``'s writes of dvc.lock files and of its rwlock file through temporary
    files that replace them only when complete. Returns the installed shim."""
    shim = AtomicFiles(repo)
    shim.clean()
    repo.fs.open = shim.open  # an instance attribute: this Repo only
    return shim


def safe_reflink() -> None:
    """Make dvc_objects' ``reflink`` leave an existing destination alone when it fails.

    On Linux it opens the destination with ``O_CREAT | O_TRUNC`` and unlinks it when the
    clone fails (always, on ext4), and DVC's cache add tries it straight onto the
    object's final path. DVC commits one stage at a time; lauf's workers commit at once,
    outside DVC's repository lock, so two stages writing the same bytes raced: one
    worker's attempt truncated and deleted the object the other had just added, whose
    relink then failed ("unable to remove ... without a confirmation"). Here the clone
    goes to a temporary name beside the destination and replaces it only when made: the
    same file in the end, never an empty or missing one meanwhile. Once per process
    (compat item ``reflink-atomic``)."""
    from dvc_objects.fs import system

    from lauf_dvc.dvc import compat

    real = system.reflink
    if getattr(real, "lauf_atomic", False) or not compat.enabled("reflink-atomic"):
        return

    def reflink(src: Any, dst: Any) -> None:
        tmp = f"{os.fspath(dst)}.{uuid.uuid4().hex[:12]}.lauf.tmp"
        real(src, tmp)  # on failure it removes tmp itself, and raises
        try:
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    reflink.lauf_atomic = True  # type: ignore[attr-defined]
    reflink.lauf_real = real  # type: ignore[attr-defined]
    system.reflink = reflink


class _AtomicWriter:
    """A file object on a temporary file that replaces ``target`` on a clean close."""

    def __init__(self, shim: AtomicFiles, target: str, mode: str, kwargs: dict[str, Any]) -> None:
        self._shim = shim
        self._target = os.path.realpath(target)  # a symlinked dvc.lock stays a symlink
        self._is_lockfile = _is_dvcfile(target)
        folder = Path(self._target).parent
        shim.tmp_dir.mkdir(parents=True, exist_ok=True)
        if os.stat(shim.tmp_dir).st_dev != os.stat(folder).st_dev:  # rename needs one fs
            folder.mkdir(parents=True, exist_ok=True)
            tmp_dir = folder
        else:
            tmp_dir = shim.tmp_dir
        name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        self._tmp = tmp_dir / name
        self._file: IO[Any] = open(self._tmp, mode.replace("+", ""), **kwargs)  # noqa: SIM115
        self._writes = 0
        self._done = False

    def write(self, data: Any) -> int:
        written = self._file.write(data)
        self._writes += 1
        if self._writes == 1 and self._is_lockfile:  # the file is half-written: crash here
            self._file.flush()
            fault("during-dump", self._shim.stage)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _AtomicWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.flush()
            if self._is_lockfile:  # survive a power cut too, not only a killed process
                os.fsync(self._file.fileno())
            self._file.close()
            with contextlib.suppress(FileNotFoundError):  # a new dvc.lock: the umask's mode
                os.chmod(self._tmp, stat.S_IMODE(os.stat(self._target).st_mode))
            os.replace(self._tmp, self._target)
            self._shim.replaced += self._is_lockfile
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        if not self._done:
            self._done = True
            self._file.close()
            self._tmp.unlink(missing_ok=True)
