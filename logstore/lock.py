"""The store's writer lock: an exclusive ``flock`` of the file ``LOCK`` in the store's directory.

One writer per directory: a store opened for writing and ``logstore repair`` take the lock
exclusively (:func:`take_writer_lock`) and hold it until they are done; ``logstore verify``
probes it with a shared lock that it drops at once (:func:`writer_is_live`). ``flock`` locks
belong to the open file description, so a second open of ``LOCK``, in this process or another,
cannot take the lock while the first holds it.

Release rules: the holder releases with :func:`release_writer_lock` (``LOCK_UN``, then close),
so that copies of the descriptor a forked child still holds do not keep the lock alive. A
forked child drops its copy with :func:`drop_lock_in_child` and never unlocks: its descriptor
shares the parent's open file description, and an unlock through it would release the
parent's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from logstore import layout
from logstore.errors import StoreLockedError
from logstore.fileio import FileIO


def take_writer_lock(io: FileIO, path: str, busy: str) -> int:
    """Open (creating it if need be) and lock ``LOCK`` in the store directory ``path``; return its descriptor.

    Raises :class:`StoreLockedError` ``"{path}: {busy}"`` if another open file description holds the
    lock; an ``OSError`` from opening the file propagates.
    """
    fd = io.open(layout.lock_path(path), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        io.close(fd)
        raise StoreLockedError(f"{path}: {busy}") from None
    except BaseException:
        io.close(fd)
        raise
    return fd


def release_writer_lock(io: FileIO, fd: int) -> None:
    """Release the lock taken by :func:`take_writer_lock` and close its descriptor (in the process that took it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        io.close(fd)


def drop_lock_in_child(io: FileIO, fd: int) -> None:
    """In a forked child: close the child's copy of the lock's descriptor, leaving the lock with the parent."""
    with contextlib.suppress(OSError):
        io.close(fd)


def writer_is_live(path: str) -> bool:
    """Whether an open file description holds the writer lock of the store in ``path`` right now.

    A missing or unreadable ``LOCK`` means no writer. The probe takes a shared lock and drops it at
    once; it never creates the file.
    """
    try:
        fd = os.open(layout.lock_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
