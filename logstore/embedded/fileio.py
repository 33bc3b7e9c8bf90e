"""The I/O seam: every file operation of the engine goes through :class:`FileIO`.

Tests substitute a subclass to count operations, fail one, or drop what was
not synced. Every operation that reads or writes a file, syncs it, or makes,
renames or removes a name goes through it. The engine calls ``os`` directly
only for queries that change nothing and that no fault test needs to fail:
whether a path exists or is a directory or a link (store.py, repair.py,
verify.py), where a file's holes are (``SEEK_DATA``/``SEEK_HOLE`` in
segment.py, on a descriptor opened through the seam), verify's probe of the
``LOCK`` file for a live writer, and the probes of ``CONTROL``'s lock bytes
(``F_OFD_GETLK``, logstore/embedded/controlfile.py).
Files are created ``0600`` and directories ``0700``; paths are opened with
``O_NOFOLLOW`` so a planted symlink is refused, not followed.

Byte-range locks (for several processes sharing one store: ``CONTROL``'s
dead-man switch and process slots, logstore/embedded/controlfile.py).
:meth:`FileIO.lock_range` and :meth:`FileIO.unlock_range` take and drop a
Linux *open-file-description* lock (``F_OFD_SETLK``/``F_OFD_SETLKW``) on one
byte of a file. Unlike POSIX record locks (``F_SETLK``) such a lock belongs
to the open file description, not to the process: two ``open`` calls of one
file conflict even in one process; closing some other descriptor of the file
does not drop it; descriptors that share the description (``dup``, or a
``fork``) share the lock, so an unlock through any of them releases it for
all, while a close of one copy does not; the kernel drops it when the last
descriptor of the description is closed, a ``SIGKILL`` included. Taking a
lock of the other kind on a byte the same description holds converts it in
place. There is no deadlock detection: callers take locks in a fixed order.
A platform without OFD locks gets :class:`~logstore.errors.UnsupportedPlatformError`.

Kill points (crash testing). :func:`default_io` is what ``logstore.open``,
``verify`` and ``repair`` use when no ``io`` is given. It returns a plain
:class:`FileIO` unless the environment variable ``LOGSTORE_KILL_AT`` is set
(non-empty) when it is called; then it returns a :class:`KillPointIO`, which
sends the process ``SIGKILL`` at one chosen file operation. With the variable
unset nothing changes and nothing is added to any file operation. Syntax::

    LOGSTORE_KILL_AT=<site>[.<when>]:<n>[:<path-substring>]

- ``<site>``: ``create`` (``open`` with ``O_CREAT``), ``pwrite``, ``fsync``,
  ``fdatasync``, ``fallocate``, ``rename``, ``unlink``, ``mkdir``,
  ``fsync_dir``, ``lock``, ``unlock``, or ``any`` (each call of any of those
  counts). These are every file operation of :class:`FileIO` that changes a
  file or a name, but ``rmdir``, which only removes a new store whose
  creation failed; and the byte-range lock operations
  (:meth:`FileIO.lock_range`, counted whether or not the lock is granted,
  and :meth:`FileIO.unlock_range`).
- ``<when>``: ``before`` (the default: the operation is not done), ``after``
  (the operation returned), or, for ``pwrite`` and ``any`` only, ``torn``
  (the first half of the bytes, ``len(data) // 2``, is written, then the
  kill; with ``any``, operations other than ``pwrite`` are killed before).
- ``<n>``: kill at the n-th counted call (1 for the first), counted across
  the whole process from its first kill-point I/O object (every store, verify
  and repair opened by the process with the same variable value share one
  count), in every thread.
- ``<path-substring>``: count only calls whose path contains it (the rest of
  the value, ``:`` included). For ``rename`` either name may match; for
  operations on a descriptor (``pwrite``, ``fsync``, ``fdatasync``,
  ``fallocate``, ``lock``, ``unlock``) the path the descriptor was opened with.

Before dying, the process writes one line to its stderr:
``logstore: LOGSTORE_KILL_AT=<value>: SIGKILL <when> <site> #<n> <path>``.
A malformed value makes :func:`default_io` raise ``ValueError`` naming the
variable. Examples: ``fdatasync:3`` (before the third fdatasync),
``rename.after:2:CHECKPOINT`` (after the second rename to or from a path
containing ``CHECKPOINT``), ``pwrite.torn:10:segments/``.

Kill points may also be named by protocol step, like bbolt's failpoints::

    LOGSTORE_KILL_AT=<before|after>_<step>:<n>[:<path-substring>]

A step is one file operation on one kind of store file (:data:`KILL_STEPS`;
for ``rename``, the kind of the new name; for an operation on a descriptor,
the kind of the file's name now, so that a segment created as ``.log.tmp``
is a ``segment`` once renamed into place); ``<n>`` counts the calls of that
step only. Examples: ``before_sync_group:3`` (before the third ``fdatasync``
of a segment: the third group commit's sync, or a roll's), ``after_rename_catalog:1``
(the first new catalog in place, the checkpoint that names it not yet
written), ``before_rename_checkpoint:2``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import signal
import struct
import sys
import threading

from logstore.errors import UnsupportedPlatformError

# -- open-file-description locks -------------------------------------------------------

# ``struct flock`` as Linux declares it on x86_64, aarch64 and the other 64-bit machines of the generic
# layout: ``short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid;`` with a 64-bit
# ``off_t`` (``q``) and an ``int`` ``pid_t`` (``i``). ``@`` packs the fields with the platform's native
# alignment (4 bytes of padding after ``l_whence``), and the struct ends padded to its alignment, that of
# ``off_t``: 2 + 2 + 4 + 8 + 8 + 4 + 4 = 32 bytes on x86_64 and aarch64, derived here from ``struct``'s
# sizes rather than written down, and checked against the kernel by the tests (``F_OFD_GETLK`` reads it back).
_OFF_T_ALIGN = struct.calcsize("@bq") - struct.calcsize("@q")
_FLOCK_FIELDS = "@hhqqi"
FLOCK_FORMAT = _FLOCK_FIELDS + "x" * (-struct.calcsize(_FLOCK_FIELDS) % _OFF_T_ALIGN)
"""The ``struct`` format of Linux's ``struct flock`` here (32 bytes on x86_64 and aarch64)."""

OFD_LOCKS = (
    sys.platform.startswith("linux")
    and struct.calcsize("@l") == 8  # a 64-bit off_t with this layout: the 32-bit ABIs are not supported
    and all(hasattr(fcntl, name) for name in ("F_OFD_GETLK", "F_OFD_SETLK", "F_OFD_SETLKW"))
)
"""Whether this platform has open-file-description locks (Linux >= 3.15 on a 64-bit machine)."""

_NO_OFD = (
    "several processes sharing one store need Linux open-file-description locks (F_OFD_SETLK, Linux 3.15 or"
    " later, 64-bit)"
)


def pack_flock(lock_type: int, start: int, length: int = 1) -> bytes:
    """A ``struct flock`` for an OFD command: ``lock_type`` (``F_RDLCK``, ``F_WRLCK``, ``F_UNLCK``) at ``start``.

    ``length`` bytes from byte ``start``; ``l_whence`` is ``SEEK_SET`` and ``l_pid`` 0, as OFD commands require.
    """
    return struct.pack(FLOCK_FORMAT, lock_type, os.SEEK_SET, start, length, 0)


def unpack_flock(data: bytes) -> tuple[int, int, int, int, int]:
    """The fields of a ``struct flock``: (type, whence, start, length, pid); ``F_OFD_GETLK`` reports pid -1."""
    l_type, whence, start, length, pid = struct.unpack(FLOCK_FORMAT, data)
    return l_type, whence, start, length, pid


_FLOCKS: dict[tuple[str, int, int], tuple[int, bytes]] = {}
"""(command, lock type, byte) -> the fcntl command and its packed ``struct flock`` (a few bytes are ever locked)."""


def _ofd_fcntl(fd: int, command: str, lock_type: int, byte: int) -> None:
    """``fcntl(fd, F_OFD_<command>, flock)`` on one byte; :class:`UnsupportedPlatformError` without OFD locks."""
    if not OFD_LOCKS:
        raise UnsupportedPlatformError(f"fd {fd}, byte {byte}: {_NO_OFD}; this is {sys.platform}")
    if byte < 0:
        raise ValueError(f"byte must be >= 0, got {byte}")
    key = (command, lock_type, byte)
    args = _FLOCKS.get(key)
    if args is None:
        args = _FLOCKS[key] = (getattr(fcntl, "F_OFD_" + command), pack_flock(lock_type, byte))
    try:
        # CPython's fcntl.fcntl retries on EINTR after running the signal handlers (PEP 475): a handler that
        # raises (KeyboardInterrupt) ends a blocked F_OFD_SETLKW with its exception, the lock not taken.
        fcntl.fcntl(fd, *args)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a kernel before 3.15 does not know the command
            where = f"fd {fd}, byte {byte}"
            raise UnsupportedPlatformError(f"{where}: {_NO_OFD}: F_OFD_{command} failed with EINVAL") from exc
        raise


class FileIO:
    """Plain POSIX file operations, with counters for tests and tools.

    ``records_read`` counts log records decoded (by recovery scans and reads);
    ``syncs`` counts fsync/fdatasync calls; ``locks`` counts byte-range lock
    calls (:meth:`lock_range` and :meth:`unlock_range`).
    """

    def __init__(self) -> None:
        self.records_read = 0
        self.syncs = 0
        self.locks = 0

    # -- descriptors -------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, position)
            view = view[n:]
            position += n

    def pread(self, fd: int, size: int, position: int) -> bytes:
        return os.pread(fd, size, position)

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self.syncs += 1
        os.fsync(fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def mmap_read(self, fd: int, length: int) -> mmap.mmap:
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ)

    def mmap_private(self, fd: int, length: int) -> mmap.mmap:
        """A private writable mapping of the first ``length`` bytes of ``fd``'s file (the catalog's arrays):
        stores into it copy the page in this process and never reach the file."""
        return mmap.mmap(fd, length, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def mmap_shared(self, fd: int, length: int) -> mmap.mmap:
        """A shared read-write mapping of the first ``length`` bytes of ``fd``'s file (``CONTROL``).

        Stores into it are memory shared with every process that maps the file, not file I/O: nothing
        counts them, and they are never synced. The mapping keeps a duplicate of ``fd`` until it is
        closed, and with it the open file description (and its byte-range locks).
        """
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    # -- byte-range locks ----------------------------------------------------------

    def lock_range(self, fd: int, byte: int, exclusive: bool, wait: bool) -> bool:
        """Lock byte ``byte`` of ``fd``'s file through its open file description (an OFD lock, see above).

        ``exclusive``: a write lock, else a shared (read) lock; the description's own lock on that byte, if
        any, is converted in place. ``wait``: block until the lock is granted (``F_OFD_SETLKW``; the GIL is
        released meanwhile, and a signal handler that raises ends the wait with its exception). Returns
        ``True`` once the lock is held; ``False`` only with ``wait=False`` when another open file
        description holds a conflicting lock (never an exception for that). Raises
        :class:`~logstore.errors.UnsupportedPlatformError` without OFD locks, ``OSError`` otherwise.
        """
        self.locks += 1
        try:
            _ofd_fcntl(fd, "SETLKW" if wait else "SETLK", fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, byte)
        except OSError as exc:
            if not wait and exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def unlock_range(self, fd: int, byte: int) -> None:
        """Drop the lock ``fd``'s open file description holds on byte ``byte`` (nothing if it holds none).

        It drops it for every descriptor sharing the description: a forked child must close its copy
        of a descriptor, never unlock through it.
        """
        self.locks += 1
        _ofd_fcntl(fd, "SETLK", fcntl.F_UNLCK, byte)

    # -- names -----------------------------------------------------------------

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def free_space(self, path: str) -> int | None:
        """Bytes free for this user on the file system of ``path``; ``None`` if that cannot be known."""
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.syncs += 1
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    # -- whole files -------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        fd = self.open(path, os.O_RDONLY)
        try:
            return self.read_fd(fd)
        finally:
            self.close(fd)

    def read_fd(self, fd: int) -> bytes:
        """Every byte of the open file ``fd``."""
        size = self.size(fd)
        chunks = []
        position = 0
        while position < size:
            chunk = self.pread(fd, size - position, position)
            if not chunk:
                break
            chunks.append(chunk)
            position += len(chunk)
        return b"".join(chunks)

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync directory."""
        tmp = path + ".tmp"
        if self.exists(tmp):
            self.unlink(tmp)
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            self.pwrite(fd, data, 0)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.rename(tmp, path)
        self.fsync_dir(os.path.dirname(path) or ".")


# -- kill points ---------------------------------------------------------------------

KILL_AT_ENV = "LOGSTORE_KILL_AT"
"""The environment variable that arms a kill point; see the module docstring."""
KILL_SITES = (
    "create",
    "pwrite",
    "fsync",
    "fdatasync",
    "fallocate",
    "rename",
    "unlink",
    "mkdir",
    "fsync_dir",
    "lock",
    "unlock",
    "any",
)
"""The site names ``LOGSTORE_KILL_AT`` accepts (``any`` counts every one of the others)."""
KILL_WHEN = ("before", "after", "torn")
KILL_STEPS: dict[str, tuple[str, str]] = {
    "create_segment": ("create", "segment.tmp"),  # a new segment (creation, roll), made under a temporary name
    "rename_segment": ("rename", "segment"),  # a new, compacted or repaired segment put in place
    "write_group": ("pwrite", "segment"),  # a commit group's records (and a segment's header)
    "sync_group": ("fdatasync", "segment"),  # a group commit's sync; its commits are acknowledged after it
    "grow_segment": ("fallocate", "segment"),  # a segment's reservation growing ahead of the writer
    "unlink_segment": ("unlink", "segment"),  # retention, compaction or repair dropping a segment
    "write_position": ("pwrite", "pos"),  # a position file's entries, at a checkpoint
    "sync_position": ("fsync", "pos"),
    "write_catalog": ("pwrite", "catalog.tmp"),  # the next catalog generation, before its rename
    "sync_catalog": ("fsync", "catalog.tmp"),
    "rename_catalog": ("rename", "catalog"),  # the new catalog in place; CHECKPOINT still names the old one
    "write_checkpoint": ("pwrite", "CHECKPOINT.tmp"),
    "sync_checkpoint": ("fsync", "CHECKPOINT.tmp"),
    "rename_checkpoint": ("rename", "CHECKPOINT"),  # the checkpoint's commit point
    "sync_dir_segments": ("fsync_dir", "segments"),  # a segment's creation, rename or removal made durable
    "sync_dir_store": ("fsync_dir", "store"),  # a catalog or CHECKPOINT rename made durable
}
"""The protocol steps ``LOGSTORE_KILL_AT`` names as ``before_<step>`` or ``after_<step>``: step -> (site, file kind)."""


def file_kind(path: str, directory: bool = False) -> str:
    """The kind of store file ``path`` names, by its last component: ``segment``, ``catalog.tmp``, ``pos``, ...

    A ``directory`` is ``segments``, ``streams`` or ``lost+found`` by name, else the ``store`` itself.
    """
    base = os.path.basename(path.rstrip(os.sep))
    if directory:
        return base if base in ("segments", "streams", "lost+found") else "store"
    if base.startswith("catalog."):
        return "catalog.tmp" if base.endswith(".tmp") else "catalog"
    for suffix, kind in (
        (".log.tmp", "segment.tmp"),
        (".log.compact", "segment.compact"),
        (".log.repair", "segment.repair"),
        (".log", "segment"),
        (".pos", "pos"),
        (".runs", "runs"),
    ):
        if base.endswith(suffix):
            return kind
    return base if base in ("CHECKPOINT", "CHECKPOINT.tmp", "CONTROL") else "other"


class KillPoint:
    """A parsed ``LOGSTORE_KILL_AT`` value and its process-wide call count."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        head, sep, rest = spec.partition(":")
        site, dot, when = head.partition(".")
        if not dot:
            when = "before"
        step: str | None = None
        moment, underscore, named = head.partition("_")
        if underscore and moment in ("before", "after") and not dot:
            step, when = named, moment
        count, _, substring = rest.partition(":")
        problem = None
        if not sep:
            problem = "no ':<n>'"
        elif step is not None and step not in KILL_STEPS:
            problem = f"unknown protocol step {step!r} (steps: {', '.join(KILL_STEPS)})"
        elif step is None and site not in KILL_SITES:
            problem = f"unknown site {site!r} (sites: {', '.join(KILL_SITES)})"
        elif when not in KILL_WHEN:
            problem = f"unknown moment {when!r} (before, after or torn)"
        elif when == "torn" and site not in ("pwrite", "any"):
            problem = "'torn' applies to pwrite (or any) only"
        elif not (count.isascii() and count.isdigit() and int(count) >= 1):
            problem = f"the call number must be an integer >= 1, got {count!r}"
        elif ":" in rest and not substring:
            problem = "empty path substring after the second ':'"
        if problem is not None:
            raise ValueError(
                f"{KILL_AT_ENV}={spec!r}: {problem}; expected <site>[.before|.after|.torn]:<n>[:<path-substring>]"
                " or <before|after>_<step>:<n>[:<path-substring>]"
            )
        self.step = step
        self.site = site if step is None else KILL_STEPS[step][0]
        self.when = when
        self.n = int(count)
        self.substring = substring
        self.calls = 0
        """Calls counted so far (of the site, on matching paths)."""
        self.site_calls: dict[str, int] = dict.fromkeys(KILL_SITES[:-1], 0)
        """Calls of every site on matching paths so far (tests use it to choose ``n``)."""
        self.step_calls: dict[str, int] = dict.fromkeys(KILL_STEPS, 0)
        """Calls of every protocol step on matching paths so far."""
        self._lock = threading.Lock()

    def reached(self, site: str, paths: tuple[str, ...], name: str | None = None) -> bool:
        """Count one call of ``site`` on ``paths``; whether it is the one to kill at.

        ``name``: the file's name now, if not the last of ``paths`` (a descriptor's file renamed since its open).
        """
        if self.substring and not any(self.substring in p for p in paths):
            return False
        kind = file_kind(name or paths[-1], site in ("mkdir", "fsync_dir"))  # rename: the new name
        with self._lock:
            self.site_calls[site] += 1
            hit = False
            for step, (step_site, step_kind) in KILL_STEPS.items():
                if step_site == site and step_kind == kind:
                    self.step_calls[step] += 1
                    hit = hit or step == self.step
            if self.step is not None:
                if not hit:
                    return False
            elif self.site not in (site, "any"):
                return False
            self.calls += 1
            return self.calls == self.n

    def kill(self, when: str, site: str, paths: tuple[str, ...]) -> None:
        """Write the stderr line and SIGKILL this process."""
        what = site if self.step is None else f"{site} ({self.step})"
        line = f"logstore: {KILL_AT_ENV}={self.spec}: SIGKILL {when} {what} #{self.n} {' -> '.join(paths)}\n"
        with contextlib.suppress(OSError):
            os.write(2, line.encode("utf-8", "backslashreplace"))
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(128 + signal.SIGKILL)  # not reached: SIGKILL cannot be caught


_kill_point: KillPoint | None = None
_kill_point_lock = threading.Lock()


def kill_point(spec: str) -> KillPoint:
    """The process's :class:`KillPoint` for ``spec`` (one shared count per value); ``ValueError`` if malformed."""
    global _kill_point  # noqa: PLW0603 - one count per process, shared by every store it opens
    with _kill_point_lock:
        if _kill_point is None or _kill_point.spec != spec:
            _kill_point = KillPoint(spec)
        return _kill_point


class KillPointIO(FileIO):
    """:class:`FileIO` that SIGKILLs the process at the file operation ``point`` names (see the module docstring)."""

    def __init__(self, point: KillPoint) -> None:
        super().__init__()
        self.point = point
        self._paths: dict[int, str] = {}  # open descriptors -> the paths they were opened with
        self._names: dict[int, str] = {}  # open descriptors -> their files' names now (followed through renames)

    def _fd_path(self, fd: int) -> tuple[str]:
        return (self._paths.get(fd, f"<fd {fd}>"),)

    def _before(self, site: str, paths: tuple[str, ...], fd: int | None = None) -> bool:
        """Count the call; kill now if it is the one and the moment is before; whether to kill after it."""
        point = self.point
        if not point.reached(site, paths, None if fd is None else self._names.get(fd)):
            return False
        if point.when == "before" or (point.when == "torn" and site != "pwrite"):
            point.kill("before", site, paths)
        return True

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        kill = bool(flags & os.O_CREAT) and self._before("create", (path,))
        fd = super().open(path, flags, mode)
        self._paths[fd] = self._names[fd] = path
        if kill:
            self.point.kill("after", "create", (path,))
        return fd

    def close(self, fd: int) -> None:
        self._paths.pop(fd, None)
        self._names.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        paths = self._fd_path(fd)
        if not self._before("pwrite", paths, fd):
            super().pwrite(fd, data, position)
            return
        if self.point.when == "torn":
            super().pwrite(fd, memoryview(data)[: len(data) // 2], position)
            self.point.kill("torn", "pwrite", paths)
        super().pwrite(fd, data, position)
        self.point.kill("after", "pwrite", paths)

    def fdatasync(self, fd: int) -> None:
        paths = self._fd_path(fd)
        kill = self._before("fdatasync", paths, fd)
        super().fdatasync(fd)
        if kill:
            self.point.kill("after", "fdatasync", paths)

    def fsync(self, fd: int) -> None:
        paths = self._fd_path(fd)
        kill = self._before("fsync", paths, fd)
        super().fsync(fd)
        if kill:
            self.point.kill("after", "fsync", paths)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        paths = self._fd_path(fd)
        kill = self._before("fallocate", paths, fd)
        super().fallocate(fd, offset, length)
        if kill:
            self.point.kill("after", "fallocate", paths)

    def rename(self, src: str, dst: str) -> None:
        kill = self._before("rename", (src, dst))
        super().rename(src, dst)
        for fd, name in list(self._names.items()):
            if name == src:
                self._names[fd] = dst
        if kill:
            self.point.kill("after", "rename", (src, dst))

    def unlink(self, path: str) -> None:
        kill = self._before("unlink", (path,))
        super().unlink(path)
        if kill:
            self.point.kill("after", "unlink", (path,))

    def lock_range(self, fd: int, byte: int, exclusive: bool, wait: bool) -> bool:
        paths = self._fd_path(fd)
        kill = self._before("lock", paths, fd)
        taken = super().lock_range(fd, byte, exclusive, wait)
        if kill:
            self.point.kill("after", "lock", paths)
        return taken

    def unlock_range(self, fd: int, byte: int) -> None:
        paths = self._fd_path(fd)
        kill = self._before("unlock", paths, fd)
        super().unlock_range(fd, byte)
        if kill:
            self.point.kill("after", "unlock", paths)

    def mkdir(self, path: str) -> None:
        kill = self._before("mkdir", (path,))
        super().mkdir(path)
        if kill:
            self.point.kill("after", "mkdir", (path,))

    def fsync_dir(self, path: str) -> None:
        kill = self._before("fsync_dir", (path,))
        super().fsync_dir(path)
        if kill:
            self.point.kill("after", "fsync_dir", (path,))


def default_io() -> FileIO:
    """The engine's I/O layer when the caller gives none: :class:`FileIO`, or :class:`KillPointIO` when armed.

    Raises ``ValueError`` (naming ``LOGSTORE_KILL_AT``) if the variable is set to a malformed value.
    """
    spec = os.environ.get(KILL_AT_ENV, "")
    if not spec:
        return FileIO()
    return KillPointIO(kill_point(spec))
