"""The fault-injecting file system layers for crash and I/O-error tests.

Four :class:`logstore.FileIO` subclasses: :class:`FaultFS` (below) models what is durable and
enumerates crash states; :class:`CrashIO` counts the mutating operations of one piece of work and
raises :class:`Crash` at a chosen one; :class:`FailingIO` fails one operation on segment files with
an ``OSError``; :class:`FullDisk` runs out of space on demand.

:class:`FaultFS` is a :class:`logstore.FileIO` (the engine's single I/O seam:
``logstore.open(path, io=...)``, ``logstore.embedded.verify.verify(path, io=...)``,
``logstore.embedded.repair.repair(path, io=...)``) in the style of RocksDB's
``FaultInjectionTestFS`` and SQLite's crash-test VFS. It performs every
operation on the real files, so the engine runs normally, and keeps beside
them a *shadow model of what is durable*:

- per file (followed through its open descriptors and its names): the content
  as of its last ``fsync``/``fdatasync``, the current content, and the list of
  writes and size changes (``pwrite``, ``fallocate``) made since;
- per directory: the names it holds now and the names as of its last
  ``fsync_dir``. A create, rename or unlink that its directory's
  ``fsync_dir`` did not follow may be undone by a crash; a file whose unlink
  is undone comes back with its durable content.

Everything under the root directory when the FaultFS is made counts as
durable (it is read into the model then). Operations on paths outside the
root are passed through untouched and uncounted.

Every operation that changes a file or a name is counted, from 1, and
recorded as an :class:`Op` with a *site*: ``"<operation>:<file kind>"``, e.g.
``"pwrite:segment"``, ``"rename:CHECKPOINT.tmp"``, ``"fsync_dir:segments"``
(see :func:`file_kind`). The counted operations are ``create`` (``open`` with
``O_CREAT``), ``pwrite``, ``fsync``, ``fdatasync``, ``fallocate``,
``rename``, ``unlink``, ``mkdir`` and ``fsync_dir``: every mutating
operation that :class:`~logstore.FileIO` has (``write_file_atomic`` is made
of them; ``open`` without ``O_CREAT``, reads, ``size``, ``mmap_read``,
``listdir``, ``exists`` and ``close`` change nothing durable); and the
byte-range lock operations ``lock`` and ``unlock`` (they change nothing
durable either, but where a crash or an error strikes among them matters).
A lock that waits is taken outside the FaultFS's own lock, so that another
thread's I/O (the holder's unlock among it) goes on meanwhile.

Faults:

- ``crash_at=N``: raise :class:`Crash` (a ``BaseException``, so that no
  ``except Exception`` of the engine swallows it) at operation N, after it
  is done (``crash_when="after"``, the default) or instead of it
  (``crash_when="before"``). From then on the FaultFS is *dead*: every
  mutating operation raises :class:`Crash` without doing anything, as if
  the process had been killed, while reads and ``close`` still work so that
  the test can drop the store (``store._abandon()``) and its descriptors.
- ``fail_at=N, errno=EIO|ENOSPC|..., persistent=False``: operation N (or,
  with ``site``, the first operation at or after N of that site) raises
  ``OSError(errno)`` without being done; with ``persistent=True`` every
  such operation from then on fails too.
- ``on_op``: a callback run after each counted operation (with the model
  updated), for tests that enumerate crash states in one run: the state
  after operation N is the state a crash after operation N leaves.
  ``on_fault``: a callback run just before an injected error is raised.

After a crash (or at any moment), :meth:`FaultFS.image` writes what a crash
would leave into a fresh directory, in one of these modes:

- ``"keep"``: a crash of the process only: everything written survives;
- ``"drop"``: every unsynced write and size change is lost (names as now);
- ``"pages"``: each dirty 4 KiB page of unsynced data is kept or lost
  independently (``rng`` decides), and a grown file keeps its new size or
  not;
- ``"torn"``: every unsynced write survives except the last one, which is
  cut to a random prefix, or a random prefix followed by non-zero garbage;
- ``"names"``: like ``"drop"``, and every directory operation that no
  ``fsync_dir`` of its directory followed is undone.

With nothing unsynced, every mode gives the same image. Simplifications:
``fdatasync`` counts as ``fsync`` (the engine relies on neither for
metadata other than the size), "the last write" of ``"torn"`` is the last
unsynced ``pwrite`` of any file, and the model follows files, not
directories, through renames (the engine renames only files).

Usage::

    fs = FaultFS(store_dir, crash_at=57)           # store_dir exists (empty, or a store)
    try:
        store = logstore.open(store_dir, io=fs)
        ...                                        # Crash, or StoreFailedError caused by it
    except (Crash, StoreFailedError):
        store._abandon()                           # nothing more is written
    fs.image(crash_dir, "pages", random.Random(1))
    logstore.open(crash_dir).close()               # recovery
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from logstore import FileIO
from logstore.embedded.fileio import KILL_SITES
from logstore.embedded.fileio import file_kind as engine_file_kind
from logstore.embedded.writer import role as writer_role

PAGE = 4096
MODES = ("keep", "drop", "pages", "torn", "names")
"""The crash-image modes of :meth:`FaultFS.image`, from the mildest crash to the harshest."""
COUNTED = tuple(site for site in KILL_SITES if site != "any")
"""The operations a FaultFS counts: every mutating operation of FileIO, and its byte-range lock operations."""


class Crash(BaseException):
    """The simulated death of the process at one file operation (see :class:`FaultFS`, :class:`CrashIO`).

    ``op``: the operation (an :class:`Op` of a FaultFS, the step name of a CrashIO), or None once dead.
    """

    def __init__(self, op: Op | str | None) -> None:
        super().__init__(f"simulated crash at {op}" if op is not None else "the process has crashed")
        self.op = op


@dataclass(frozen=True)
class Op:
    """One counted operation: its number (from 1), name, path(s) relative to the root, and site."""

    index: int
    name: str
    path: str
    kind: str
    target: str = ""  # rename: the new name
    thread: str = ""  # "logstore-writer" when made in the writer role (by any thread), else the thread's name

    @property
    def site(self) -> str:
        return f"{self.name}:{self.kind}"

    def __str__(self) -> str:
        where = f"{self.path} -> {self.target}" if self.target else self.path
        return f"op {self.index} {self.name} {where}"


def file_kind(rel: str) -> str:
    """The kind of a store file from its path relative to the store: ``segment``, ``CHECKPOINT.tmp``, ...

    The engine's kill points name files the same way (:func:`logstore.embedded.fileio.file_kind`); here the store
    directory itself is ``root``, everything inside ``lost+found/`` is ``lost+found``, and a file of no
    known kind is named by its base name (``LOCK``, a stray file).
    """
    if rel in ("", "."):
        return "root"
    parts = rel.split(os.sep)
    if len(parts) == 1 and parts[0] in ("segments", "streams", "lost+found"):
        return parts[0]
    if parts[0] == "lost+found":
        return "lost+found"
    kind = engine_file_kind(rel)
    return parts[-1] if kind == "other" else kind


class _File:
    """The model of one file: durable content, current content, and what changed since the last sync."""

    __slots__ = ("current", "durable", "pending")

    def __init__(self, content: bytes = b"") -> None:
        self.durable = bytearray(content)
        self.current = bytearray(content)
        # (sequence number, byte position, data) for a write; (sequence number, new size, None) for a size change.
        self.pending: list[tuple[int, int, bytes | None]] = []

    def write(self, seq: int, position: int, data: bytes) -> None:
        if not data:
            return
        end = position + len(data)
        if end > len(self.current):
            self.current.extend(bytes(end - len(self.current)))
        self.current[position:end] = data
        self.pending.append((seq, position, data))

    def resize(self, seq: int, size: int) -> None:
        if size == len(self.current):
            return
        if size > len(self.current):
            self.current.extend(bytes(size - len(self.current)))
        else:
            del self.current[size:]
        self.pending.append((seq, size, None))

    def sync(self) -> None:
        self.durable = bytearray(self.current)
        self.pending = []

    def last_write(self) -> int:
        """The sequence number of the last unsynced write, or -1."""
        for seq, _pos, data in reversed(self.pending):
            if data is not None:
                return seq
        return -1

    # -- what a crash leaves -------------------------------------------------------

    def pages(self, rng: random.Random) -> bytes:
        """Each dirty page kept or lost at random; a changed size kept or not."""
        if not self.pending:
            return bytes(self.durable)
        size = len(self.current) if len(self.current) == len(self.durable) or rng.random() < 0.5 else len(self.durable)
        out = bytearray(self.durable[:size])
        out.extend(bytes(size - len(out)))
        dirty: set[int] = set()
        for _seq, pos, data in self.pending:
            if data is not None:
                dirty.update(range(pos // PAGE, (pos + len(data) - 1) // PAGE + 1))
        for page in sorted(dirty):
            if rng.random() < 0.5:
                lo = page * PAGE
                hi = min(lo + PAGE, size)
                if lo < hi:
                    out[lo:hi] = self.current[lo:hi]
        return bytes(out)

    def torn(self, rng: random.Random) -> bytes:
        """Every unsynced change kept except the last write, cut to a prefix (maybe followed by garbage)."""
        out = bytearray(self.durable)
        last = max(range(len(self.pending)), key=lambda k: self.pending[k][0] if self.pending[k][2] else -1)
        for k, (_seq, pos, data) in enumerate(self.pending):
            if data is None:
                if pos > len(out):
                    out.extend(bytes(pos - len(out)))
                else:
                    del out[pos:]
                continue
            if k == last:
                whole = len(data)
                keep = rng.randrange(whole)  # a strict prefix: the write did not finish
                data = data[:keep]
                if rng.random() < 0.5:  # and garbage where the rest was going (never zero: not "unwritten")
                    data += bytes(rng.randint(1, 255) for _ in range(rng.randint(1, min(whole - keep, 64))))
            end = pos + len(data)
            if end > len(out):
                out.extend(bytes(end - len(out)))
            out[pos:end] = data
        return bytes(out)


class _Dir:
    """The model of one directory: the names it holds now and as of its last fsync."""

    __slots__ = ("durable", "names")

    def __init__(self) -> None:
        self.names: dict[str, _File | _Dir] = {}
        self.durable: dict[str, _File | _Dir] = {}


@dataclass
class _Fault:
    at: int
    errno: int
    persistent: bool
    site: str | None
    fired: int = 0
    failed: list[Op] = field(default_factory=list)


class FaultFS(FileIO):
    """A :class:`~logstore.FileIO` that models durability and injects crashes and errors (see the module doc).

    ``root`` is the directory whose crash images :meth:`image` writes (the
    store directory; it must exist). ``real_sync=False`` (the default) skips
    the real ``fsync`` system calls: durability is what the model says, and
    the real files never face a real crash, so a test runs faster.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        crash_at: int | None = None,
        crash_when: str = "after",
        fail_at: int | None = None,
        errno: int = errno_module.EIO,
        persistent: bool = False,
        site: str | None = None,
        on_op: Callable[[FaultFS, Op], None] | None = None,
        on_fault: Callable[[FaultFS, Op], None] | None = None,
        real_sync: bool = False,
    ) -> None:
        super().__init__()
        if crash_when not in ("before", "after"):
            raise ValueError(f"crash_when must be 'before' or 'after', got {crash_when!r}")
        self.root = os.path.abspath(os.fspath(root))
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"{self.root}: the FaultFS root must be an existing directory")
        self.crash_at = crash_at
        self.crash_when = crash_when
        self.fault = None if fail_at is None else _Fault(fail_at, errno, persistent, site)
        self.on_op = on_op
        self.on_fault = on_fault
        self.real_sync = real_sync
        self.count = 0
        self.ops: list[Op] = []
        self.crashed: Crash | None = None
        self._seq = 0
        self._lock = threading.RLock()
        self._fds: dict[int, _File] = {}
        self._paths: dict[int, str] = {}  # descriptor -> the file's current name (for the op's site)
        self._root = self._snapshot(self.root)

    # -- the model -------------------------------------------------------------------

    def _snapshot(self, path: str) -> _Dir:
        node = _Dir()
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                node.names[name] = self._snapshot(full)
            elif os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    node.names[name] = _File(f.read())
        node.durable = dict(node.names)
        return node

    def _rel(self, path: str) -> str | None:
        """``path`` relative to the root, or ``None`` if it lies outside it."""
        full = os.path.abspath(path)
        if full == self.root:
            return ""
        if not full.startswith(self.root + os.sep):
            return None
        return full[len(self.root) + 1 :]

    def _dir(self, rel: str) -> _Dir | None:
        node: _File | _Dir = self._root
        for part in rel.split(os.sep) if rel else []:
            if not isinstance(node, _Dir) or part not in node.names:
                return None
            node = node.names[part]
        return node if isinstance(node, _Dir) else None

    def _parent(self, rel: str) -> tuple[_Dir | None, str]:
        head, name = os.path.split(rel)
        return self._dir(head), name

    def _node(self, rel: str) -> _File | _Dir | None:
        parent, name = self._parent(rel)
        return None if parent is None else parent.names.get(name)

    # -- counting, crashing, failing ---------------------------------------------------

    def _begin(self, name: str, rel: str, target: str = "") -> Op:
        if self.crashed is not None:
            raise Crash(None)  # the process is dead: nothing more reaches the files
        self.count += 1
        thread = "logstore-writer" if getattr(writer_role, "writer", False) else threading.current_thread().name
        op = Op(self.count, name, rel, file_kind(rel), target, thread)
        self.ops.append(op)
        if self.crash_at == op.index and self.crash_when == "before":
            self.crashed = Crash(op)
            raise self.crashed
        fault = self.fault
        if (
            fault is not None
            and op.index >= fault.at
            and (fault.persistent or not fault.fired)
            and (fault.site is None or fault.site in (op.name, op.kind, op.site))
        ):
            fault.fired += 1
            fault.failed.append(op)
            if self.on_fault is not None:
                self.on_fault(self, op)
            raise OSError(fault.errno, f"{os.strerror(fault.errno)} (injected at {op})")
        return op

    @contextlib.contextmanager
    def _recorded(self, name: str, rel: str, target: str = "") -> Iterator[Op]:
        """Operation ``name`` on ``rel``, under the lock: counted (it may crash or fail) before the body, which
        does it and updates the model, and finished after it (it may crash there too)."""
        with self._lock:
            op = self._begin(name, rel, target)
            yield op
            self._end(op)

    def _end(self, op: Op) -> None:
        if self.crash_at == op.index and self.crash_when == "after":
            self.crashed = Crash(op)
            raise self.crashed
        if self.on_op is not None:
            self.on_op(self, op)

    @property
    def failed_ops(self) -> list[Op]:
        """The operations that an injected error failed."""
        return [] if self.fault is None else list(self.fault.failed)

    # -- FileIO: descriptors --------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        rel = self._rel(path)
        if rel is None:
            return super().open(path, flags, mode)
        with self._lock:
            op = self._begin("create", rel) if flags & os.O_CREAT else None
            fd = super().open(path, flags, mode)
            node = self._node(rel)
            if node is None and flags & os.O_CREAT:
                parent, name = self._parent(rel)
                assert parent is not None, f"{rel}: created in a directory the model does not know"
                node = parent.names[name] = _File()
            if isinstance(node, _File):
                if flags & os.O_TRUNC and flags & (os.O_WRONLY | os.O_RDWR):
                    self._seq += 1
                    node.resize(self._seq, 0)
                self._fds[fd] = node
                self._paths[fd] = rel
            if op is not None:
                self._end(op)
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self._fds.pop(fd, None)
            self._paths.pop(fd, None)
        super().close(fd)

    def _fd_rel(self, fd: int) -> str:
        return self._paths.get(fd, f"<fd {fd}>")

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        if fd not in self._fds:
            super().pwrite(fd, data, position)
            return
        with self._recorded("pwrite", self._fd_rel(fd)):
            super().pwrite(fd, data, position)
            self._seq += 1
            self._fds[fd].write(self._seq, position, bytes(data))

    def _sync(self, name: str, fd: int) -> None:
        if fd not in self._fds:
            getattr(super(), name)(fd)
            return
        with self._recorded(name, self._fd_rel(fd)):
            if self.real_sync:
                getattr(super(), name)(fd)
            else:
                self.syncs += 1
            self._fds[fd].sync()

    def fsync(self, fd: int) -> None:
        self._sync("fsync", fd)

    def fdatasync(self, fd: int) -> None:
        self._sync("fdatasync", fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if fd not in self._fds:
            super().fallocate(fd, offset, length)
            return
        with self._recorded("fallocate", self._fd_rel(fd)):
            super().fallocate(fd, offset, length)
            node = self._fds[fd]
            if offset + length > len(node.current):
                self._seq += 1
                node.resize(self._seq, offset + length)

    def lock_range(self, fd: int, byte: int, exclusive: bool, wait: bool) -> bool:
        if fd not in self._fds:
            return super().lock_range(fd, byte, exclusive, wait)
        with self._lock:
            op = self._begin("lock", self._fd_rel(fd))
        taken = super().lock_range(fd, byte, exclusive, wait)  # may block: not under self._lock
        with self._lock:
            self._end(op)
        return taken

    def unlock_range(self, fd: int, byte: int) -> None:
        if fd not in self._fds:
            super().unlock_range(fd, byte)
            return
        with self._lock:
            op = self._begin("unlock", self._fd_rel(fd))
            super().unlock_range(fd, byte)
            self._end(op)

    # -- FileIO: names ---------------------------------------------------------------------

    def rename(self, src: str, dst: str) -> None:
        rs, rd = self._rel(src), self._rel(dst)
        if rs is None or rd is None:
            assert rs is None and rd is None, f"rename across the FaultFS root: {src} -> {dst}"
            super().rename(src, dst)
            return
        with self._recorded("rename", rs, rd):
            super().rename(src, dst)
            sdir, sname = self._parent(rs)
            ddir, dname = self._parent(rd)
            assert sdir is not None and ddir is not None
            node = ddir.names[dname] = sdir.names.pop(sname)
            for fd, open_node in self._fds.items():  # descriptors follow their file to its new name
                if open_node is node:
                    self._paths[fd] = rd

    def _name_op(
        self, name: str, path: str, real: Callable[[str], None], change: Callable[[_Dir, str], object]
    ) -> None:
        """``real(path)``, which adds or removes a name; within the root (not the root itself), recorded as operation
        ``name`` and applied to the model by ``change(parent directory, name)``."""
        rel = self._rel(path)
        if rel is None or rel == "":
            real(path)
            return
        with self._recorded(name, rel):
            real(path)
            parent, base = self._parent(rel)
            assert parent is not None
            change(parent, base)

    def unlink(self, path: str) -> None:
        self._name_op("unlink", path, super().unlink, lambda parent, name: parent.names.pop(name, None))

    def mkdir(self, path: str) -> None:
        self._name_op("mkdir", path, super().mkdir, lambda parent, name: parent.names.__setitem__(name, _Dir()))

    def fsync_dir(self, path: str) -> None:
        rel = self._rel(path)
        if rel is None:
            super().fsync_dir(path)
            return
        with self._recorded("fsync_dir", rel):
            if self.real_sync:
                super().fsync_dir(path)
            else:
                self.syncs += 1
            node = self._dir(rel)
            if node is not None:
                node.durable = dict(node.names)

    # -- crash images --------------------------------------------------------------------

    def _walk(self, node: _Dir, rel: str, durable: bool) -> Iterator[tuple[str, _File | _Dir]]:
        """Every (path, node) under ``node``, parents first, by the durable or the current names."""
        names = node.durable if durable else node.names
        for name in sorted(names):
            child = names[name]
            path = os.path.join(rel, name) if rel else name
            yield path, child
            if isinstance(child, _Dir):
                yield from self._walk(child, path, durable)

    def image_files(self, mode: str, rng: random.Random | None = None) -> dict[str, bytes | None]:
        """What a crash in ``mode`` leaves: relative path -> content (``None`` for a directory), parents first."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode in ("pages", "torn") and rng is None:
            raise ValueError(f"mode {mode!r} needs an rng")
        with self._lock:
            entries = list(self._walk(self._root, "", durable=mode == "names"))
            torn_file: _File | None = None
            if mode == "torn":
                last = -1
                for _path, node in entries:
                    if isinstance(node, _File) and node.last_write() > last:
                        last, torn_file = node.last_write(), node
            out: dict[str, bytes | None] = {}
            for path, node in entries:
                if isinstance(node, _Dir):
                    out[path] = None
                elif mode == "keep" or (mode == "torn" and node is not torn_file):
                    out[path] = bytes(node.current)
                elif mode in ("drop", "names"):
                    out[path] = bytes(node.durable)
                elif mode == "pages":
                    assert rng is not None
                    out[path] = node.pages(rng)
                else:
                    assert rng is not None
                    out[path] = node.torn(rng)
            return out

    def image(
        self, dest: str | os.PathLike[str], mode: str, rng: random.Random | None = None
    ) -> dict[str, bytes | None]:
        """Write the crash image of ``mode`` into ``dest`` (created; must not exist) and return its files."""
        files = self.image_files(mode, rng)
        write_image(dest, files)
        return files

    def unsynced(self) -> int:
        """Bytes written and not yet synced, over every file the model knows."""
        with self._lock:
            seen: set[int] = set()
            total = 0
            for _path, node in self._walk(self._root, "", durable=False):
                if isinstance(node, _File) and id(node) not in seen:
                    seen.add(id(node))
                    total += sum(len(data) for _seq, _pos, data in node.pending if data is not None)
            return total


def write_image(dest: str | os.PathLike[str], files: dict[str, bytes | None]) -> None:
    """Write the files of :meth:`FaultFS.image_files` under ``dest``, which must not exist."""
    dest = os.fspath(dest)
    os.mkdir(dest, 0o700)
    for rel, content in files.items():
        path = os.path.join(dest, rel)
        if content is None:
            os.mkdir(path, 0o700)
        else:
            with open(path, "wb") as f:
                f.write(content)


# -- simpler layers: one fault each, no model of what is durable ---------------------------------------


class CrashIO(FileIO):
    """Counts the mutating file operations once armed and raises :class:`Crash` at number ``at``.

    A plain counter, for tests that stop one operation (a compaction, a repair) at each of its steps
    without a model of what is durable.
    """

    def __init__(self, at: int | None = None) -> None:
        super().__init__()
        self.at = at
        self.armed = False
        self.count = 0
        self.ops: list[str] = []

    def _step(self, what: str) -> None:
        if not self.armed:
            return
        self.count += 1
        self.ops.append(what)
        if self.count == self.at:
            raise Crash(what)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        self._step("pwrite")
        super().pwrite(fd, data, position)

    def fsync(self, fd: int) -> None:
        self._step("fsync")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._step("fdatasync")
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        self._step(f"fsync_dir {os.path.basename(path)}")
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        self._step(f"rename {os.path.basename(src)}")
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._step(f"unlink {os.path.basename(path)}")
        super().unlink(path)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if flags & os.O_CREAT:
            self._step(f"create {os.path.basename(path)}")
        return super().open(path, flags, mode)


class FailingIO(FileIO):
    """Fails the chosen operation on segment files once ``armed`` is set."""

    def __init__(self, op: str, code: int = errno_module.EIO) -> None:
        super().__init__()
        self.op = op
        self.code = code
        self.armed = threading.Event()
        self.failures = 0
        self.segment_fds: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if ".log" in os.path.basename(path):
            self.segment_fds.add(fd)
        return fd

    def _maybe_fail(self, op: str, fd: int) -> None:
        if self.armed.is_set() and op == self.op and fd in self.segment_fds:
            self.failures += 1
            raise OSError(self.code, os.strerror(self.code))

    def fdatasync(self, fd: int) -> None:
        self._maybe_fail("fdatasync", fd)
        super().fdatasync(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        self._maybe_fail("pwrite", fd)
        super().pwrite(fd, data, position)


class FullDisk(FileIO):
    """A file system that runs out of space on demand: ``full`` makes the chosen operations raise ENOSPC.

    ``where``: ``"extend"`` (a segment's reservation growing: ``fallocate`` past byte 0), ``"create"``
    (a new segment's first allocation), ``"name"`` (creating a new segment file at all: no room for its
    directory entry or inode), ``"index"`` (a ``pwrite`` to a catalog, checkpoint or position file), or
    ``"all"`` (every ``fallocate`` and ``pwrite``).
    """

    def __init__(self, where: str = "all", err: int = errno_module.ENOSPC) -> None:
        super().__init__()
        self.where = where
        self.err = err
        self.full = False
        self.largest: int | None = None  # with ``full``: only allocations above this many bytes fail
        self.refused: list[tuple[str, int]] = []
        self._paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if self.full and self.where == "name" and flags & os.O_CREAT and path.endswith(".log.tmp"):
            self.refused.append((path, 0))
            raise OSError(self.err, os.strerror(self.err) + " (create, injected)", path)
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        return fd

    def _refuse(self, what: str, fd: int, size: int) -> None:
        self.refused.append((self._paths.get(fd, "?"), size))
        raise OSError(self.err, os.strerror(self.err) + f" ({what}, injected)")

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if (
            self.full
            and (self.largest is None or length > self.largest)
            and (
                self.where == "all"
                or (self.where == "extend" and offset > 0)
                or (self.where == "create" and offset == 0)
            )
        ):
            self._refuse("fallocate", fd, length)
        super().fallocate(fd, offset, length)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        path = self._paths.get(fd, "")
        index = "catalog" in path or "CHECKPOINT" in path or path.endswith(".pos")
        if self.full and (self.where == "all" or (self.where == "index" and index)):
            self._refuse("pwrite", fd, len(data))
        super().pwrite(fd, data, position)
