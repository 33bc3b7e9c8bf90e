"""The store's lock: a ``flock`` of the file ``LOCK`` in the store's directory.

Every writable store holds it shared for as long as it is open (:func:`take_store_lock`; the open that
creates the store holds it exclusively until the store exists), so any number of processes may write a
store at once (they coordinate through ``CONTROL``, logstore/embedded/controlfile.py). ``logstore repair`` takes
it exclusively (:func:`take_writer_lock`), and so did logstore versions that allowed one writer process:
either refuses the other. ``logstore verify`` probes it exclusively and drops it at once
(:func:`writer_is_live`). ``flock`` locks belong to the open file description, so a second open of
``LOCK``, in this process or another, conflicts as another process's would.

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
import time

from logstore.embedded import layout
from logstore.embedded.fileio import FileIO
from logstore.errors import StoreLockedError


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


LOCK_WAIT = 0.5
"""Seconds a writable open waits for ``LOCK`` while another opener holds it exclusively: a store being created
(milliseconds), a ``logstore verify`` probe (microseconds). ``logstore repair`` holds it for longer: the open then
fails with :class:`StoreLockedError`."""
LOCK_PAUSE = 0.002


def take_store_lock(io: FileIO, path: str, exclusive: bool, busy: str, wait: float = LOCK_WAIT) -> int:
    """Lock ``LOCK`` of the store directory ``path`` for a writable open: shared (every writable open holds it
    so while its store is open), or ``exclusive`` (an open that creates the store; :func:`share_store_lock`
    then makes it shared). Returns the descriptor. Raises :class:`StoreLockedError` ``"{path}: {busy}"``
    after ``wait`` seconds.
    """
    fd = io.open(layout.lock_path(path), os.O_RDWR | os.O_CREAT)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise StoreLockedError(f"{path}: {busy}")
            time.sleep(LOCK_PAUSE)
    except BaseException:
        io.close(fd)
        raise


def share_store_lock(fd: int) -> None:
    """Turn an exclusive hold of ``LOCK`` into a shared one (once the store exists; not atomic, which is fine
    then: whoever takes it in between finds the store made)."""
    fcntl.flock(fd, fcntl.LOCK_SH)


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

    A missing or unreadable ``LOCK`` means no writer. The probe takes the lock exclusively and drops it at
    once (a writable open that meets the probe waits the microseconds it lasts); it never creates the file.
    """
    try:
        fd = os.open(layout.lock_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
