"""Is a path on a network filesystem? (SQLite's WAL is unsafe there: ``lock: auto``.)

The mount table comes from :func:`psutil.disk_partitions` (``all=True``: network and
FUSE mounts have no device and are left out otherwise), read at call time. Tests, and a
user reporting what their cluster mounts, may pass the text of ``/proc/mounts`` instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

#: Filesystem types (the third column of /proc/mounts) that live on another machine, or
#: are shared between machines, and on which WAL's shared memory and fcntl locks are not
#: to be trusted. Any other ``fuse.*`` type counts as network too (see
#: :func:`is_network_filesystem`); the FUSE names here only document what is known.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "lustre", "gpfs", "beegfs",
        "fhgfs", "ceph", "glusterfs", "ocfs2", "gfs2", "panfs", "pvfs2", "orangefs", "9p",
        "davfs", "wekafs", "vboxsf", "fuse",
        "fuse.sshfs", "fuse.fuse-nfs", "fuse.ceph", "fuse.ceph-fuse", "fuse.cephfs",
        "fuse.glusterfs", "fuse.beegfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
        "fuse.juicefs", "fuse.davfs", "fuse.goofys", "fuse.mountpoint-s3", "fuse.blobfuse",
        "fuse.blobfuse2", "fuse.mfs", "fuse.quobyte", "fuse.daos", "fuse.cvmfs",
    }
)  # fmt: skip

#: FUSE filesystems known to be local to one machine (everything else under ``fuse.``
#: is treated as network: a wrong "network" only costs speed, a wrong "local" can
#: corrupt the database). ``fuseblk`` (ntfs-3g, exfat on a local disk) is not ``fuse.*``.
LOCAL_FUSE = frozenset(
    {
        "fuse.lxcfs", "fuse.portal", "fuse.snapfuse", "fuse.squashfuse", "fuse.squashfuse_ll",
        "fuse.fuse-overlayfs", "fuse.gvfsd-fuse",
    }
)  # fmt: skip

#: ``(mount point, filesystem type)``, in mount order.
MountTable = Sequence[tuple[str, str]]

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


def mount_table() -> list[tuple[str, str]]:
    """This machine's mounts, now (empty where psutil cannot read them)."""
    import psutil

    try:
        return [(p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]
    except OSError:
        return []


def _under(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem_type(path: str, mounts: str | MountTable) -> str | None:
    """The filesystem type of the mount holding the absolute ``path`` (None: no mount
    matches). The longest matching mount point wins; of equal ones, the later line (a
    later mount hides an earlier one on the same directory)."""
    table = parse_mounts(mounts) if isinstance(mounts, str) else mounts
    best: tuple[int, str] | None = None
    for mount_point, fstype in table:
        if _under(path, mount_point) and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), fstype)
    return best[1] if best else None


def is_network_filesystem(fstype: str) -> bool:
    """Network or shared, or FUSE not known to be local."""
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("nfs"):
        return True
    return fstype.startswith("fuse.") and fstype not in LOCAL_FUSE


def network_filesystem(path: Path, mounts: str | MountTable | None = None) -> str | None:
    """The type of the network filesystem ``path`` is on, or None (local, or unknown:
    no mount table on this system). ``path`` need not exist yet. ``mounts``: a
    /proc/mounts text or a :data:`MountTable`; None: this machine's, read now."""
    fstype = filesystem_type(os.path.realpath(path), mount_table() if mounts is None else mounts)
    return fstype if fstype is not None and is_network_filesystem(fstype) else None
