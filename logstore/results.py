"""What the calls of the messagestore API return beside envelopes, alike for both backends.

A field that only means something for the embedded store's files (``rolled``, ``unreached``,
``lost_found`` of :class:`CompactReport`) stays at its empty default in a PostgreSQL store's report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from logstore.envelope import Envelope


class StreamInfo(NamedTuple):
    """What ``store.stream_info`` returns."""

    first: int
    """The first readable offset."""
    head: int
    """The next unused offset."""
    deleted: bool
    """Deleted and not appended to since."""


class Location(NamedTuple):
    """One place a message is: what ``store.locate(message_id)`` returns a list of."""

    stream: str
    """The stream's name."""
    stream_offset: int
    """The message's offset in the stream."""
    global_offset: int
    """The message's global offset."""


class SubscriptionInfo(NamedTuple):
    """A durable subscription: what ``store.subscriptions()`` returns a list of."""

    name: str
    """The subscription's name."""
    category: str | None
    """The category it reads (None: the whole log)."""
    types: frozenset[str] | None
    """The types it reads (None: every type)."""
    size: int
    """How many members its group has (1 without a group)."""
    positions: tuple[int, ...]
    """Each member's saved position (index = member): the global offset its next subscription begins at."""


@dataclass(frozen=True)
class Unreached:
    """Removed messages whose envelopes a compaction left in a segment file, and why.

    ``path`` is the segment file, ``messages`` how many removed messages
    still have their envelope there, ``reason`` why this pass left them.
    """

    path: str
    messages: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.messages} removed message(s) still there: {self.reason}"


@dataclass
class CompactReport:
    """What ``compact`` did, and what it left.

    - ``rolled``: the active segment that compaction sealed in order to
      rewrite it (``None``: the active segment held no removed message, or
      ``roll=False``).
    - ``unreached``: every segment file in which removed messages still have
      their envelope after this pass, with their count and why
      (:class:`Unreached`). Empty means that no segment file holds a removed
      envelope any more.
    - ``lost_found``: the files in ``lost+found/`` (paths), which hold bytes
      that recovery or repair cut from the log; compaction never touches them.
    """

    segments_rewritten: int = 0
    segments_dropped: int = 0
    messages_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    rewritten: list[str] = field(default_factory=list)
    rolled: str | None = None
    unreached: list[Unreached] = field(default_factory=list)
    lost_found: list[str] = field(default_factory=list)

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def erased(self) -> bool:
        """No segment file holds the envelope of a removed message (``lost+found/`` aside)."""
        return not self.unreached


class RecordInfo(NamedTuple):
    """One log record as :func:`iter_records` yields it."""

    goff: int
    """Its global offset."""
    kind: str
    """``"message"``, ``"truncate"``, ``"delete"``, ``"retain"``, ``"removed"`` or ``"lost"``."""
    stream: str | None
    """The stream's name; ``None`` for a RETAIN record and a LOST record of no known stream."""
    offset: int | None
    """The record's stream offset field: a message's offset; for TRUNCATE the stream's new first
    retained offset, for DELETE its head; for RETAIN the global offset the log now starts at;
    ``None`` for a LOST record of no known stream."""
    envelope: Envelope | None
    """The decoded envelope of a message record (``None`` for other kinds, or when not decoded)."""
    readable: bool
    """Whether readers return it: a message not removed by truncation, deletion or retention."""
    payload_bytes: int
    """The envelope's encoded size in bytes (0 for records of other kinds)."""
