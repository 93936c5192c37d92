"""DVC's own locks on a shared filesystem: the checks docs/slurm.md promises.

DVC locks a repository with ``.dvc/tmp/lock`` and its path locks with
``.dvc/tmp/rwlock.lock``. By default both are ``zc.lockfile`` files (an fcntl lock,
which NFS and Lustre do not honour reliably between machines), left in place when
released. With ``core.hardlink_lock`` they are flufl hard-link locks: a held one is a
hard link to a claim file (two links) that is removed on release. A file with one link
there is a leftover of the default lock from before the switch, and DVC's hard-link
lock would wait for it forever (flufl refuses to break a lock file it did not write):
lauf-dvc says so at once instead of hanging. A repository on a network filesystem
without ``core.hardlink_lock`` gets a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lauf_dvc.errors import LockTimeout
from lauf_dvc.scheduler.netfs import network_filesystem

if TYPE_CHECKING:
    from dvc.repo import Repo

log = logging.getLogger(__name__)

#: DVC's lock files in ``.dvc/tmp``: the repository lock and the path locks' lock.
LOCK_FILES = ("lock", "rwlock.lock")
_checked: set[str] = set()


class StaleRepoLock(LockTimeout):
    """A lock file the hard-link lock would wait for forever (exit code 7)."""


def check(repo: Repo, *, mounts: str | None = None) -> None:
    """Check DVC's locking of ``repo`` once per process (``mounts``: a /proc/mounts text,
    for tests). Raises :class:`StaleRepoLock`; logs the network filesystem warning."""
    root = os.path.realpath(repo.root_dir)
    if root in _checked:
        return
    tmp = Path(repo.tmp_dir)
    if repo.config["core"].get("hardlink_lock", False):
        stale = [tmp / name for name in LOCK_FILES if _one_link(tmp / name)]
        if stale:
            shown = " ".join(os.path.relpath(p, root) for p in stale)
            raise StaleRepoLock(
                f"{shown}: left by DVC's default lock before core.hardlink_lock was switched "
                "on; DVC's hard-link lock would wait for it forever. When no dvc or lauf-dvc "
                f"command runs on this repository (on any machine), run `rm -f {shown}` in "
                f"{root}"
            )
    else:
        fstype = network_filesystem(Path(root), mounts)
        if fstype is not None:
            log.warning(
                "repository %s is on a network filesystem (%s), where DVC's default "
                "repository lock (fcntl) is unreliable between machines: run `dvc config "
                "core.hardlink_lock true` there, then `rm -f .dvc/tmp/lock "
                ".dvc/tmp/rwlock.lock` while no dvc command runs (see docs/slurm.md)",
                root,
                fstype,
            )
    _checked.add(root)


def _one_link(path: Path) -> bool:
    try:
        return os.stat(path).st_nlink == 1
    except FileNotFoundError:
        return False
