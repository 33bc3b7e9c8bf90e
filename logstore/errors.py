"""Every exception logstore raises on purpose derives from :class:`LogStoreError`.

Bad arguments raise the built-in ``TypeError`` or ``ValueError`` with a message
that says which argument is wrong and why.
"""

from __future__ import annotations


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


class FormatVersionError(CorruptionError):
    """A file written by a format version this code does not read."""


class StoreLockedError(LogStoreError):
    """Another process (or another open store in this one) holds the writer lock."""


class StreamClosedError(LogStoreError):
    """The stream (or its store) was closed, possibly from another thread while waiting."""


class MessageTooLargeError(LogStoreError, ValueError):
    """An encoded envelope is larger than the store accepts."""

    def __init__(self, stream: str, offset: int | None, size: int, limit: int) -> None:
        at = "at logstore.ANY" if offset is None else f"offset {offset}"
        super().__init__(f"stream {stream!r} {at}: encoded envelope is {size} bytes, the limit is {limit} bytes")
        self.stream = stream
        self.offset = offset
        self.size = size
        self.limit = limit


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
