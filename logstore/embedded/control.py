"""Coordination primitives for several processes sharing one store: lock bytes and a futex.

It holds what the shared control file ``CONTROL`` (logstore/embedded/controlfile.py)
is built on:

- The OFD lock bytes (:data:`LOCK_DMS`, :data:`LOCK_WRITE`, :data:`LOCK_FLUSH`,
  :data:`LOCK_COMPACT`, and one byte per process slot from
  :data:`LOCK_SLOT_BASE`), taken and dropped with
  :meth:`logstore.FileIO.lock_range` and :meth:`~logstore.FileIO.unlock_range`
  on a descriptor of that file. Lock bytes are only offsets: a lock on a byte
  does not stop reads or writes of it. OFD locks have no deadlock detection,
  so they are taken in one order: DMS, COMPACT, WRITE, FLUSH.
- :class:`Futex`: wait for a 4-byte word of a shared file to change, and
  change it (add 1) while waking every waiter, in one system call. It calls
  the ``futex`` system call through ``ctypes``; :func:`available` says
  whether that works here.

How the futex is used (the classic protocol, exact because the kernel does
the add): a waiter reads ``s = futex.value``, tests its condition, and if
it is not met calls ``futex.wait(s, timeout)``; a waker changes the
condition, then calls ``futex.wake()``. A wake between the read and the
wait changed the word, so the wait returns at once (:attr:`Wake.CHANGED`).
A read-modify-write of the word in Python by two wakers could lose an
increment, and with it a wake-up; ``FUTEX_WAKE_OP`` cannot.

Traps this module avoids: the futex system call number differs per machine
(:data:`SYS_FUTEX`); the word's address comes from a mapping of the file's
page that :class:`Futex` makes itself with libc's ``mmap`` (a ``ctypes``
object pointing into a Python ``mmap.mmap`` would export its buffer and
make its ``close()`` raise ``BufferError``); the futex must not be
process-private (no ``FUTEX_PRIVATE_FLAG``): a shared file mapping's futex
is keyed by the file and offset, so every process (every mapping) of the
file waits on the same futex.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import math
import mmap
import os
import platform
import sys
import threading

from logstore.errors import UnsupportedPlatformError

# -- lock bytes of CONTROL ----------------------------------------------------------------

LOCK_DMS = 0
"""Held shared by every live opener for as long as its store is open; exclusive by the first opener while it
sets up the shared state (a "dead man switch", like SQLite's): taking it exclusively proves no one else is open."""
LOCK_WRITE = 1
"""The write lock: held to catch up, frame and write a group of commits (and for maintenance)."""
LOCK_FLUSH = 2
"""The flush lock: held to ``fdatasync`` everything written so far (group commit across processes)."""
LOCK_COMPACT = 3
"""One compaction at a time across processes."""
LOCK_SLOT_BASE = 1024
"""Slot ``i``'s byte is ``LOCK_SLOT_BASE + i``, held exclusively by its owner while the store is open."""


def slot_lock_byte(slot: int) -> int:
    """The lock byte of process slot ``slot`` (``0 <= slot``)."""
    if slot < 0:
        raise ValueError(f"slot must be >= 0, got {slot}")
    return LOCK_SLOT_BASE + slot


# -- futex ------------------------------------------------------------------------------------

SYS_FUTEX = {"x86_64": 202, "aarch64": 98}
"""The ``futex`` system call's number by machine (``platform.machine()``): asm/unistd_64.h on x86_64, the
generic table (asm-generic/unistd.h) on aarch64. Other machines are not supported."""

FUTEX_WAIT = 0
FUTEX_WAKE = 1
FUTEX_WAKE_OP = 5

FUTEX_OP_ADD = 1
"""``FUTEX_WAKE_OP`` operation: ``*uaddr2 += oparg``."""
FUTEX_OP_CMP_EQ = 0
"""``FUTEX_WAKE_OP`` comparison: wake at ``uaddr2`` too if the old value equals ``cmparg``."""


def futex_op(op: int, oparg: int, cmp: int, cmparg: int) -> int:
    """Encode ``FUTEX_WAKE_OP``'s ``val3`` (linux/futex.h ``FUTEX_OP``).

    Bits 28-31 the operation, 24-27 the comparison, 12-23 ``oparg``, 0-11 ``cmparg``. The kernel then, as one
    atomic step under the futex locks: ``old = *uaddr2; *uaddr2 = old <op> oparg; wake up to val waiters on
    uaddr; if old <cmp> cmparg: wake up to val2 waiters on uaddr2`` (val2 is passed in the timeout argument).
    """
    return ((op & 0xF) << 28) | ((cmp & 0xF) << 24) | ((oparg & 0xFFF) << 12) | (cmparg & 0xFFF)


WAKE_OP_ADD_ONE = futex_op(FUTEX_OP_ADD, 1, FUTEX_OP_CMP_EQ, 0)
"""``val3`` of :meth:`Futex.wake`: add 1 to the word (0x10001000). With ``uaddr == uaddr2``, ``val`` = INT_MAX and
``val2`` = 0, every waiter on the word is woken and the comparison's outcome changes nothing."""

_INT_MAX = 0x7FFFFFFF


class Wake(enum.Enum):
    """Why :meth:`Futex.wait` returned. The caller re-reads the word and re-tests its condition in every case."""

    WOKEN = "woken"
    """A wake (or, rarely, a spurious return of the system call)."""
    CHANGED = "changed"
    """The word did not hold the expected value when the wait began (``EAGAIN``): it changed meanwhile."""
    TIMED_OUT = "timed out"
    INTERRUPTED = "interrupted"
    """A signal arrived (``EINTR``); its Python handler runs once the call has returned (and may raise)."""


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))  # time_t is a long on 64-bit Linux


class _Libc:
    """libc's ``syscall``, ``mmap`` and ``munmap`` with their argument types (a private ``CDLL`` of its own)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)  # the global namespace of the process: libc is in it
        self.syscall = libc.syscall
        # syscall(long number, ...): every argument is read as a long, so pass longs and pointers.
        self.syscall.restype = ctypes.c_long
        self.syscall.argtypes = (
            ctypes.c_long,  # the system call's number
            ctypes.c_void_p,  # uaddr
            ctypes.c_long,  # futex_op
            ctypes.c_long,  # val
            ctypes.c_void_p,  # timeout (or val2)
            ctypes.c_void_p,  # uaddr2
            ctypes.c_long,  # val3
        )
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
        self.munmap = libc.munmap
        self.munmap.restype = ctypes.c_int
        self.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)

    def futex(
        self, addr: int, op: int, val: int, timeout: ctypes.c_void_p | None = None, addr2: int = 0, val3: int = 0
    ) -> tuple[int, int]:
        """``syscall(SYS_futex, addr, op, val, timeout, addr2, val3)``: (result, errno)."""
        number = SYS_FUTEX[platform.machine()]
        result = int(self.syscall(number, addr, op, val, timeout, addr2 or None, val3))
        return result, (ctypes.get_errno() if result == -1 else 0)


_libc: _Libc | None = None
_libc_error: str | None = None
_libc_lock = threading.Lock()


def _load() -> _Libc:
    """The process's :class:`_Libc`, checked once by a harmless ``FUTEX_WAKE``; UnsupportedPlatformError if none."""
    global _libc, _libc_error  # loaded and probed once per process
    with _libc_lock:
        if _libc is None and _libc_error is None:
            _libc, _libc_error = _probe()
        if _libc is None:
            raise UnsupportedPlatformError(f"futex: {_libc_error}")
        return _libc


def _probe() -> tuple[_Libc | None, str | None]:
    """Load libc and wake no one on a private word: the loaded libc, or None and what is wrong."""
    if not sys.platform.startswith("linux"):
        return None, f"futexes are a Linux facility; this is {sys.platform}"
    machine = platform.machine()
    if machine not in SYS_FUTEX:
        return None, f"no futex system call number known for machine {machine!r} (known: {', '.join(SYS_FUTEX)})"
    try:
        libc = _Libc()
    except (OSError, AttributeError) as exc:
        return None, f"libc's syscall, mmap and munmap could not be loaded: {exc}"
    word = ctypes.c_uint32(0)
    result, err = libc.futex(ctypes.addressof(word), FUTEX_WAKE, 0)
    if result < 0:
        return None, f"the futex system call failed: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
    return libc, None


def available() -> bool:
    """Whether :class:`Futex` works here: Linux on a machine of :data:`SYS_FUTEX`, libc found, the call answers."""
    try:
        _load()
    except UnsupportedPlatformError:
        return False
    return True


class Futex:
    """A 4-byte word at byte ``offset`` of the file open as ``fd``, used as a futex shared by every process.

    ``offset`` must be a multiple of 8 (the kernel needs 4; 8 keeps the word inside one aligned 8-byte word
    of the file) and the word must lie inside the file. The page holding it is mapped ``MAP_SHARED`` by
    libc's ``mmap``, apart from any Python mapping of the file; :meth:`close` unmaps it. ``fd`` may be
    closed once the futex is made. The word is a little-endian ``u32`` of the file on x86_64 and aarch64
    (the machine's order), wrapping from 2**32 - 1 to 0.

    Raises :class:`~logstore.errors.UnsupportedPlatformError` where :func:`available` is false.
    """

    def __init__(self, fd: int, offset: int) -> None:
        if offset < 0 or offset % 8:
            raise ValueError(f"futex word offset must be a non-negative multiple of 8, got {offset}")
        size = os.fstat(fd).st_size
        if offset + 4 > size:
            raise ValueError(f"futex word at byte {offset} lies past the end of the file ({size} bytes)")
        libc = _load()
        page = offset - offset % mmap.PAGESIZE
        base = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, page)
        if base is None or base == ctypes.c_void_p(-1).value:  # MAP_FAILED
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of the futex word's page at byte {page}: {os.strerror(err)}")
        self._libc = libc
        self._base: int = base
        self._address: int = base + offset - page
        self._word = ctypes.c_uint32.from_address(self._address)  # points into the mapping; owns nothing
        self.offset = offset

    @property
    def closed(self) -> bool:
        return self._base == 0

    def _addr(self) -> int:
        if self._base == 0:
            raise ValueError(f"futex at byte {self.offset}: used after close()")
        return self._address

    @property
    def value(self) -> int:
        """The word now (one aligned 4-byte load)."""
        self._addr()
        return int(self._word.value)

    def wait(self, expected: int, timeout: float | None) -> Wake:
        """Sleep while the word equals ``expected``, at most ``timeout`` seconds (``None``: no limit).

        ``FUTEX_WAIT`` compares and sleeps atomically with respect to :meth:`wake`, so a wake made after
        the caller read ``expected`` is never missed: the wait returns :attr:`Wake.CHANGED` at once. The
        GIL is released while the thread sleeps; an idle waiter uses no CPU. A signal ends the wait
        (:attr:`Wake.INTERRUPTED`); the signal's Python handler runs when this returns, so a
        ``KeyboardInterrupt`` goes through.
        """
        addr = self._addr()
        spec: ctypes.c_void_p | None = None
        if timeout is not None:
            timeout = max(0.0, timeout)
            fraction, whole = math.modf(timeout)
            ts = _Timespec(int(whole), min(999_999_999, int(fraction * 1e9)))  # relative, CLOCK_MONOTONIC
            spec = ctypes.cast(ctypes.pointer(ts), ctypes.c_void_p)
        result, err = self._libc.futex(addr, FUTEX_WAIT, expected & 0xFFFFFFFF, spec)
        if result == 0:
            return Wake.WOKEN
        if err == errno.EAGAIN:
            return Wake.CHANGED
        if err == errno.ETIMEDOUT:
            return Wake.TIMED_OUT
        if err == errno.EINTR:
            return Wake.INTERRUPTED
        raise OSError(err, f"FUTEX_WAIT on the word at byte {self.offset}: {os.strerror(err)}")

    def wake(self) -> int:
        """Add 1 to the word and wake every process and thread waiting on it, atomically; the number woken.

        ``FUTEX_WAKE_OP`` with ``uaddr == uaddr2`` and :data:`WAKE_OP_ADD_ONE`: the kernel adds 1 (wrapping)
        and wakes up to INT_MAX waiters, under its futex locks, so concurrent wakes from any number of
        processes never lose an increment.
        """
        addr = self._addr()
        # val2 (0: how many to wake at uaddr2 when the comparison holds) goes in the timeout argument.
        result, err = self._libc.futex(addr, FUTEX_WAKE_OP, _INT_MAX, None, addr, WAKE_OP_ADD_ONE)
        if result < 0:
            raise OSError(err, f"FUTEX_WAKE_OP on the word at byte {self.offset}: {os.strerror(err)}")
        return int(result)

    def wake_waiters(self) -> int:
        """Wake every process and thread waiting on the word, leaving it as it is (``FUTEX_WAKE``)."""
        addr = self._addr()
        result, err = self._libc.futex(addr, FUTEX_WAKE, _INT_MAX, None)
        if result < 0:
            raise OSError(err, f"FUTEX_WAKE on the word at byte {self.offset}: {os.strerror(err)}")
        return int(result)

    def close(self) -> None:
        """Unmap the word's page (idempotent). No thread of this process may be waiting on it."""
        if self._base:
            base, self._base = self._base, 0
            self._libc.munmap(base, mmap.PAGESIZE)

    def __enter__(self) -> Futex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
