"""Which file system a store directory lies on, and the refusal of network file systems.

Several processes share one store through a memory mapping of ``CONTROL``
and Linux open-file-description byte-range locks. Both work between the
processes of one machine only: a network file system (NFS, SMB, ...) does
not share one client's page cache or its kernel's locks with another
machine. A store on a network file system is therefore refused with
:class:`~logstore.errors.NetworkFileSystemError` (:func:`check_local`).

How the file system is found. Python's ``os.statvfs`` gives no file-system type, so it comes
from the mount table of this process's mount namespace,
``/proc/self/mountinfo`` (see proc(5)). Each line reads::

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue

mount id, parent id, ``major:minor`` of the file system's device, the root of
the mount within that file system, the mount point, the mount options, zero
or more optional fields ended by a lone ``-``, then the file-system type, the
source and the super-block options. The kernel writes a space, a tab, a
newline and a backslash in a path as the octal escapes ``\\040``, ``\\011``,
``\\012`` and ``\\134``; they are undone here. Fields are split at single
spaces and lines at newlines only: other bytes of a path (a carriage return)
come unescaped. Lines that do not have this shape are passed over.

The mount of a directory is chosen so (:func:`find_mount`):

1. the mounts whose ``major:minor`` is the device of ``os.stat(path)``
   (``os.major``/``os.minor`` of ``st_dev``); among several (a bind mount, or
   one file system mounted at several places), the one whose mount point is
   the longest prefix of the real path (``os.path.realpath``), else the last
   listed;
2. when no mount has that device (btrfs subvolumes and overlay file systems
   report a device of their own), the mount whose mount point is the longest
   prefix of the real path; of several at the same mount point, the last
   listed, which is the one mounted on top.

A path that does not exist yet is looked up through its nearest existing
ancestor (where it would be created). Prefixes compare whole path
components: ``/srv/a`` is a prefix of ``/srv/a/b``, not of ``/srv/ab``.

The network types (:data:`NETWORK_TYPES`) are ``nfs``, ``nfs4``, ``cifs``,
``smb3``, ``smbfs``, ``9p``, ``ceph``, ``glusterfs``, ``lustre``, ``afs``
and ``ncpfs``, and the FUSE file systems that reach another machine:
``fuse.sshfs``, ``fuse.glusterfs``, ``fuse.s3fs``, ``fuse.rclone`` and
``fuse.gcsfuse``. Other FUSE types are not refused: most are local, and the
check cannot tell. A cluster file system shared by block device (``gfs2``,
``ocfs2``) is not in the list either.

When the mount table cannot be read (no ``/proc``, as in some sandboxes
and containers), nothing is refused: the check is skipped, not failed.

The environment variable ``LOGSTORE_MOUNTINFO`` names another file to read
instead of ``/proc/self/mountinfo`` (when set and not empty), in the same
format: for tests, and for operators whose ``/proc`` shows a table other
than the one that matters. A file that lists no mounts (``/dev/null``) makes
every directory pass the check. A ``mountinfo`` argument given to the
functions here wins over the variable.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from logstore.errors import NetworkFileSystemError

MOUNTINFO = "/proc/self/mountinfo"
"""The mount table of this process's mount namespace: the default file read."""

MOUNTINFO_ENV = "LOGSTORE_MOUNTINFO"
"""The environment variable that names another mount table to read instead of :data:`MOUNTINFO`."""

NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "afs",
        "ncpfs",
        "fuse.sshfs",
        "fuse.glusterfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
    }
)
"""The file-system types (as mountinfo writes them) that a store is refused on."""

_ESCAPE = re.compile(rb"\\([0-7]{3})")


class Mount(NamedTuple):
    """One line of a mount table: what :func:`find_mount` needs of it."""

    major: int
    minor: int
    mount_point: str
    fstype: str
    source: str


def mountinfo_path(mountinfo: str | None = None) -> str:
    """The mount table to read: ``mountinfo`` if given, else ``$LOGSTORE_MOUNTINFO`` if set and not empty, else
    :data:`MOUNTINFO`."""
    if mountinfo is not None:
        return mountinfo
    return os.environ.get(MOUNTINFO_ENV) or MOUNTINFO


def unescape(field: bytes) -> str:
    """A mountinfo path field with its octal escapes (``\\040`` and the like) undone, as a file-system path."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


def parse_line(line: bytes) -> Mount | None:
    """The mount one line of a mount table describes, or ``None`` for a line without mountinfo's shape."""
    fields = line.split(b" ")
    try:
        dash = fields.index(b"-", 6)
    except ValueError:
        return None
    if len(fields) < dash + 3:
        return None
    major, sep, minor = fields[2].partition(b":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    fstype = fields[dash + 1].decode("ascii", "replace")
    return Mount(int(major), int(minor), unescape(fields[4]), fstype, unescape(fields[dash + 2]))


def read_mounts(mountinfo: str | None = None) -> list[Mount] | None:
    """Every mount of the table ``mountinfo`` (see :func:`mountinfo_path`), in its order; ``None`` if it cannot
    be read."""
    try:
        with open(mountinfo_path(mountinfo), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return [m for m in map(parse_line, data.split(b"\n")) if m is not None]


def _is_prefix(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def _longest_prefix(mounts: list[Mount], path: str) -> Mount | None:
    best: Mount | None = None
    for mount in mounts:  # ">=": of equal mount points, the last listed is the one on top
        if _is_prefix(mount.mount_point, path) and (best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount
    return best


def _existing_device(path: str) -> int:
    """``st_dev`` of ``path``, or of its nearest existing ancestor when it does not exist."""
    while True:
        try:
            return os.stat(path).st_dev
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent


def find_mount(path: str, mountinfo: str | None = None) -> Mount | None:
    """The mount that the directory ``path`` lies on, chosen as the module's docstring says.

    ``None`` when the mount table cannot be read or no mount in it holds
    ``path``. An ``OSError`` from ``os.stat`` other than a missing path (a
    permission denied) propagates.
    """
    mounts = read_mounts(mountinfo)
    if not mounts:
        return None
    real = os.path.realpath(path)
    dev = _existing_device(real)
    same_device = [m for m in mounts if (m.major, m.minor) == (os.major(dev), os.minor(dev))]
    if same_device:
        return _longest_prefix(same_device, real) or same_device[-1]
    return _longest_prefix(mounts, real)


def network_filesystem(path: str, mountinfo: str | None = None) -> str | None:
    """The file-system type (``"nfs4"``) when the directory ``path`` lies on a network file system, else ``None``.

    ``None`` too when the mount table cannot be read: the check is skipped.
    """
    mount = find_mount(path, mountinfo)
    if mount is None or mount.fstype not in NETWORK_TYPES:
        return None
    return mount.fstype


def check_local(path: str, mountinfo: str | None = None) -> None:
    """Raise :class:`~logstore.errors.NetworkFileSystemError` if the store directory ``path`` lies on a network
    file system (see :func:`network_filesystem`)."""
    mount = find_mount(path, mountinfo)
    if mount is not None and mount.fstype in NETWORK_TYPES:
        raise NetworkFileSystemError(path, mount.fstype, mount.mount_point)
