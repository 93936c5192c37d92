"""Is a path on a network filesystem? (SQLite's WAL is unsafe there: ``lock: auto``.)

:func:`filesystem_type` is a pure function of a path and the text of ``/proc/mounts``;
:func:`network_filesystem` reads the real mount table at call time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Filesystem types (the third column of /proc/mounts) that live on another machine, or
#: are shared between machines, and on which WAL's shared memory and fcntl locks are not
#: to be trusted.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "lustre", "gpfs", "beegfs",
        "fhgfs", "ceph", "glusterfs", "ocfs2", "gfs2", "panfs", "pvfs2", "orangefs", "9p",
        "davfs", "fuse.sshfs", "fuse.ceph", "fuse.cephfs", "fuse.glusterfs", "fuse.beegfs",
        "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "fuse.davfs",
    }
)  # fmt: skip

MOUNTS = "/proc/mounts"

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` for each line of a /proc/mounts text, in order."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.append((_unescape(fields[1]), fields[2]))
    return out


def _under(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem_type(path: str, mounts: str) -> str | None:
    """The filesystem type of the mount holding the absolute ``path`` (None: no mount
    matches). The longest matching mount point wins; of equal ones, the later line (a
    later mount hides an earlier one on the same directory)."""
    best: tuple[int, str] | None = None
    for mount_point, fstype in parse_mounts(mounts):
        if _under(path, mount_point) and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), fstype)
    return best[1] if best else None


def is_network_filesystem(fstype: str) -> bool:
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("nfs")


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The type of the network filesystem ``path`` is on, or None (local, or unknown:
    no /proc/mounts on this system). ``path`` need not exist yet."""
    if mounts is None:
        try:
            mounts = Path(MOUNTS).read_text()
        except OSError:
            return None
    fstype = filesystem_type(os.path.realpath(path), mounts)
    return fstype if fstype is not None and is_network_filesystem(fstype) else None
