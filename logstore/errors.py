"""Every exception logstore raises on purpose derives from :class:`LogStoreError`.

Bad arguments raise the built-in ``TypeError`` or ``ValueError`` with a message
that says which argument is wrong and why.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from logstore.index.errors import FormatError, UnsupportedVersionError


class LogStoreError(Exception):
    """Base class of logstore's errors."""


class ConcurrencyError(LogStoreError):
    """Another writer got there first; retry with fresh state."""


class OffsetConflictError(ConcurrencyError):
    """``append_messages`` was given an offset that is not the stream's next unused one.

    Raised by ``append_messages`` (against the committed head plus the
    transaction's own appends) and again by ``commit()`` when another
    transaction committed to the stream first; in that case nothing of the
    transaction is written.
    """

    def __init__(self, stream: str, expected: int, given: int) -> None:
        super().__init__(f"stream {stream!r}: offset {given} is not the next unused offset, expected {expected}")
        self.stream = stream
        self.expected = expected
        self.given = given

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stream, self.expected, self.given))


class DuplicateMessageError(LogStoreError):
    """A transaction appends a ``message_id`` that its stream already holds at another offset.

    Raised by ``commit()``; nothing of the transaction is written. The check
    is per stream: the same message may be in other streams. A transaction
    whose every envelope is already committed at the same offsets of the same
    streams is a retry: ``commit()`` returns the original global offsets and
    writes nothing. A transaction that mixes such envelopes with new ones is
    not a retry of one commit, and raises this error too (``offset`` is then
    where the transaction put the already committed message, ``existing``
    where it is).

    ``stream`` names the stream, ``message_id`` the message, ``offset`` the
    stream offset the transaction gives it (``None`` at ``logstore.ANY``) and
    ``existing`` the stream offset where the stream already holds it (-1 for
    an id given twice in one transaction at ``ANY``); ``why`` says more when
    the id is not simply at another offset.
    """

    def __init__(self, stream: str, message_id: str, offset: int | None, existing: int, why: str = "") -> None:
        at = "at logstore.ANY" if offset is None else f"at offset {offset}"
        if existing == offset or existing < 0:
            message = f"stream {stream!r}: message {message_id!r} {at}"
        else:
            message = f"stream {stream!r}: message {message_id!r} {at} is already in the stream at offset {existing}"
        super().__init__(message + (f": {why}" if why else ""))
        self.stream = stream
        self.message_id = message_id
        self.offset = offset
        self.existing = existing
        self.why = why

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stream, self.message_id, self.offset, self.existing, self.why))


class CorruptionError(LogStoreError):
    """A file's bytes are not what the format says they must be.

    ``path`` and ``position`` (a byte offset in that file) say where; ``what``
    says what is wrong. Tail damage is cut at open; damage elsewhere needs
    ``logstore repair``.
    """

    def __init__(self, path: str, position: int, what: str, hint: str = "") -> None:
        message = f"{path} at byte {position}: {what}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)
        self.path = path
        self.position = position
        self.what = what
        self.hint = hint

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.position, self.what, self.hint))


class FormatVersionError(CorruptionError):
    """A file written by a format version this code does not read."""


@contextlib.contextmanager
def as_corruption(path: str, prefix: str = "", hint: str = "", *, versions_only: bool = False) -> Iterator[None]:
    """Re-raise the index layer's decoding errors for the file ``path`` as the engine's errors.

    An :class:`~logstore.index.errors.UnsupportedVersionError` becomes :class:`FormatVersionError` (without
    ``hint``: repair cannot make a newer format readable); any other
    :class:`~logstore.index.errors.FormatError` becomes :class:`CorruptionError` with ``hint``, or, with
    ``versions_only``, propagates unchanged for the caller to handle. ``prefix`` goes before the
    decoder's description (``"segment header: "``). The position is the decoder's, which is a position in
    ``path`` when the decoded buffer starts at the file's first byte.
    """
    try:
        yield
    except UnsupportedVersionError as exc:
        raise FormatVersionError(path, exc.position, prefix + exc.what) from None
    except FormatError as exc:
        if versions_only:
            raise
        raise CorruptionError(path, exc.position, prefix + exc.what, hint) from None


class StoreLockedError(LogStoreError):
    """Another process (or another open store in this one) holds the writer lock."""


class StreamClosedError(LogStoreError):
    """The stream (or its store) was closed, possibly from another thread while waiting."""


class SubscriptionBusyError(LogStoreError):
    """A member of a durable subscription is open already, in this process or another.

    One open subscription consumes a member at a time (``store.subscribe``); closing it, or the end of
    its process, frees the member. ``store.delete_subscription`` raises it too while a member is open.
    ``name`` and ``member`` say which.
    """

    def __init__(self, name: str, member: int, what: str) -> None:
        super().__init__(what)
        self.name = name
        self.member = member

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.member, str(self)))


class MessageTooLargeError(LogStoreError, ValueError):
    """An encoded envelope is larger than the store accepts."""

    def __init__(self, stream: str, offset: int | None, size: int, limit: int) -> None:
        at = "at logstore.ANY" if offset is None else f"offset {offset}"
        super().__init__(f"stream {stream!r} {at}: encoded envelope is {size} bytes, the limit is {limit} bytes")
        self.stream = stream
        self.offset = offset
        self.size = size
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.stream, self.offset, self.size, self.limit))


class StoreClosedError(LogStoreError):
    """The store was used after ``close()``."""


class StoreFailedError(LogStoreError):
    """A write or fsync failed; the store refuses further writes until it is reopened.

    A commit whose fsync failed is never acknowledged: its ``commit()`` raises
    this error (chained to the ``OSError``), and so does every later one.
    Reopening the store runs recovery, which keeps or cuts the unacknowledged
    tail by what actually reached the disk.
    """


class ReadOnlyError(LogStoreError):
    """A write was attempted on a store opened with ``readonly=True``."""


class StoreForkedError(LogStoreError):
    """A store (or a stream, or a transaction of it) was used in a process other than the one that opened it.

    A store does not cross ``fork()``: the child holds copies of the parent's
    in-memory state (stream heads, the writer's queue and locks, what readers
    decoded ahead) that go stale at the parent's next commit, and no writer
    thread. Every method of the store, of its streams and of its transactions
    raises this error in the child; ``close()`` there only drops the child's
    copies of the descriptors and mappings. Open the store in the child after
    the fork instead (with gunicorn ``--preload`` or multiprocessing's
    ``fork`` start method: in each worker, not before the fork).
    """


class OutOfSpaceError(LogStoreError, OSError):
    """The file system had no room (``ENOSPC``, or ``EDQUOT`` for a quota) for a file the store writes.

    Raised when a segment is created or its reservation extended, and when
    the checkpoint, the catalog or an index file is written. It is an
    ``OSError`` too, with ``errno`` and ``filename`` kept, so code that
    handles a full disk as an ``OSError`` still does. ``path`` is the file,
    ``requested`` the bytes asked for, ``free`` the bytes free for this
    user on that file system (``None`` if unknown), ``option`` the option
    that changes the size asked for (``None`` if none does). The message
    says all of it.

    A commit whose reservation could not be extended raises it directly:
    nothing of the commit was written and the store stays usable. Where
    bytes were already written (a segment roll in the middle of a group, a
    checkpoint) the store fails instead, and the commits raise
    :class:`StoreFailedError` chained to this error.
    """

    def __init__(
        self,
        path: str,
        requested: int,
        err: int,
        what: str,
        free: int | None = None,
        option: str | None = None,
        strerror: str | None = None,
    ) -> None:
        message = f"{path}: out of space {what}: {strerror or os.strerror(err)} ({errno_name(err)}); "
        message += f"{requested} bytes asked for"
        if free is not None:
            message += f", {free} bytes free on that file system"
        message += "; free some space"
        if option is not None:
            message += f", or open the store with a smaller {option}"
        OSError.__init__(self, err, message, path)
        self.message = message
        self.what = what
        self.path = path
        self.requested = requested
        self.free = free
        self.option = option
        self.strerror_text = strerror

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.path, self.requested, self.errno, self.what, self.free, self.option, self.strerror_text)
        return (type(self), args)


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errno values that mean "no room": :class:`OutOfSpaceError` is raised for them."""


def errno_name(err: int) -> str:
    return errno.errorcode.get(err, f"errno {err}")


class UnsupportedPlatformError(LogStoreError, OSError):
    """This platform lacks a system facility that the store needs for what was asked.

    Several processes sharing one store need Linux's open-file-description
    locks (``F_OFD_SETLK``, Linux 3.15 or later, on a 64-bit machine). It is
    an ``OSError`` too (``errno`` ``ENOTSUP``); the message says what is
    missing and for which file.
    """

    def __init__(self, message: str) -> None:
        OSError.__init__(self, errno.ENOTSUP, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message,))


class NetworkFileSystemError(LogStoreError):
    """The store directory lies on a network file system (NFS, SMB, ...), where a store is refused.

    Several processes of one store coordinate through a shared memory
    mapping and kernel byte-range locks, which a network file system does not
    share between machines. ``path`` is the store directory, ``fstype`` the
    file-system type as the mount table writes it (``"nfs4"``),
    ``mount_point`` where that file system is mounted. Found from
    ``/proc/self/mountinfo`` (see logstore/embedded/mounts.py); without ``/proc`` the
    check is skipped.
    """

    def __init__(self, path: str, fstype: str, mount_point: str) -> None:
        super().__init__(
            f"{path}: the store is on a network file system ({fstype}, mounted at {mount_point}); "
            "several processes coordinate through shared memory and kernel byte-range locks, "
            "which a network file system does not share across machines, so a store must live "
            "on a local file system"
        )
        self.path = path
        self.fstype = fstype
        self.mount_point = mount_point

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.fstype, self.mount_point))
