"""Copying a store between backends, record for record: the neutral half of ``logstore migrate``.

A backend takes part through two small interfaces, which each backend implements in a module of
its own (:mod:`logstore.embedded.export` and :mod:`logstore.embedded.importer` for a store directory,
:mod:`logstore.postgres.migration` for a PostgreSQL schema):

- a :class:`Source` hands out its log as :class:`RawRecord` s in global order, with the exact
  envelope bytes, and its streams as :class:`StreamState` s in order of first commit;
- a :class:`Destination` marks itself as an unfinished copy of one source (:meth:`Destination.start`,
  which refuses a store that holds anything else), takes the records in batches, each written
  atomically and whole (:meth:`Destination.write`), then the durable subscriptions with their
  positions (:meth:`Destination.put_subscriptions`), and after the copy is checked drops its mark
  (:meth:`Destination.unmark`).

Global offsets are kept, so a subscription's positions (global offsets) mean the same in the copy:
its definition and every member's position are copied as they are when the records have been.

:func:`migrate` drives a copy (and a resumed one: it goes on at the destination's global head);
:func:`compare` checks a copy against its source and names the first difference.

What a record is, on both sides (``RawRecord.kind``):

- ``"message"``: a message at its stream offset, with its envelope bytes;
- ``"truncate"`` / ``"delete"``: a truncation or deletion, ``offset`` the stream's new first offset;
- ``"removed"``: a global offset that held a message of ``stream`` at ``offset`` which compaction
  reclaimed (a directory's REMOVED record; a PostgreSQL row that ``compact`` deleted, its stream
  and offset worked out by :func:`logstore.postgres.migration.assign_removed`);
- ``"lost"``, ``"retain"``: a directory's LOST and RETAIN records (``stream`` may be ``None``).

Global offsets that no record names (a PostgreSQL gap nothing accounts for, a directory's offsets
below its log start) are holes: a source skips them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from logstore.results import SubscriptionInfo

KINDS = ("message", "truncate", "delete", "removed", "lost", "retain")
"""The kinds of :class:`RawRecord`."""

GONE_KINDS = frozenset({"removed", "lost", "retain"})
"""Kinds that readers never return and that hold no envelope: a copy keeps them as holes or markers."""


class RawRecord(NamedTuple):
    """One record of a log as a migration copies it."""

    goff: int
    """Its global offset."""
    kind: str
    """One of :data:`KINDS`."""
    stream: str | None
    """The stream's name (``None`` for a RETAIN record and a LOST record of no known stream)."""
    offset: int | None
    """A message's stream offset; for a truncation or deletion the stream's new first offset."""
    payload: bytes | None = None
    """The envelope's msgpack bytes, exactly as stored (messages only)."""
    tx_end: bool | None = None
    """Whether it ends its transaction; ``None`` where the source does not record transactions."""


class StreamState(NamedTuple):
    """A stream's state as ``stream_info`` reports it, and where it began."""

    name: str
    first: int
    head: int
    deleted: bool
    first_goff: int | None
    """The global offset of its first message (``None``: not known; a directory's retention dropped it)."""


class MigrationError(Exception):
    """A copy that cannot be made or go on: a destination in use, a record the destination cannot hold."""


class NotEmptyError(MigrationError):
    """The destination holds a store that is not an unfinished copy of this source."""


class Source(Protocol):
    """The read side of a migration (a store opened read-only)."""

    where: str
    """The store, for messages (a path, or a URL without its password and the schema)."""

    @property
    def identity(self) -> str:
        """The store's id: a copy in progress is marked with it, and only resumed from the same source."""
        ...

    @property
    def global_head(self) -> int:
        """The next unused global offset."""
        ...

    def streams(self) -> list[StreamState]:
        """Every stream ever written, in order of first commit."""
        ...

    def records(self, start: int, end: int) -> Iterator[RawRecord]:
        """The records at global offsets ``start`` .. ``end - 1`` in order, holes left out."""
        ...

    def holes(self) -> list[tuple[int, int]]:
        """The ranges ``(start, end)`` of global offsets that hold no record (see :func:`compare`)."""
        ...

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Every durable subscription, sorted by name, with each member's position."""
        ...


class Destination(Protocol):
    """The write side of a migration."""

    where: str

    def start(self, source: Source) -> int:
        """Mark the destination as a copy of ``source`` in progress and return where to go on (its global head).

        Raises :class:`NotEmptyError` if it holds records or streams and is not an unfinished copy of
        ``source``, and :class:`MigrationError` if the source holds what it cannot represent.
        """
        ...

    def write(self, records: Sequence[RawRecord], end: int) -> None:
        """Write ``records`` (in global order, from the destination's head on) atomically and whole;
        afterwards the destination's global head is ``end`` (past any holes that follow them)."""
        ...

    def finish(self) -> None:
        """What follows the last batch (a directory compacts its placeholders of removed messages)."""
        ...

    def put_subscriptions(self, subscriptions: Sequence[SubscriptionInfo]) -> None:
        """Make the destination's durable subscriptions exactly ``subscriptions`` (definitions and positions),
        replacing what an earlier run of this copy wrote."""
        ...

    def as_source(self) -> Source:
        """The destination read as a source, for :func:`compare`."""
        ...

    def unmark(self) -> None:
        """Drop the mark of an unfinished copy: the destination is an ordinary store again."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Difference:
    """The first place where a copy differs from its source."""

    goff: int | None
    """The global offset of the differing record (``None`` for a difference in the streams or the head)."""
    what: str

    def __str__(self) -> str:
        return self.what if self.goff is None else f"global offset {self.goff}: {self.what}"


@dataclass
class MigrateReport:
    """What :func:`migrate` did. ``resumed_at``: the destination's head when this run began (0: a fresh copy)."""

    source: str
    destination: str
    resumed_at: int = 0
    global_head: int = 0
    records: int = 0
    """Records written by this run (messages, truncations, deletions and markers)."""
    messages: int = 0
    control: int = 0
    removed: int = 0
    payload_bytes: int = 0
    batches: int = 0
    streams: int = 0
    subscriptions: int = 0
    """Durable subscriptions copied (their definitions and every member's position)."""
    copy_seconds: float = 0.0
    verify_seconds: float = 0.0
    verified: bool = False
    difference: Difference | None = None
    notes: list[str] = field(default_factory=list)


BATCH_RECORDS = 2000
"""Most records in one destination batch."""
BATCH_BYTES = 8 << 20
"""Most envelope bytes in one destination batch (a larger envelope makes a batch of its own)."""


def batches(
    records: Iterator[RawRecord], end: int, max_records: int = BATCH_RECORDS, max_bytes: int = BATCH_BYTES
) -> Iterator[tuple[list[RawRecord], int]]:
    """Cut ``records`` into batches of whole transactions: ``(records, end of the batch)``.

    A batch ends at a transaction's end (every record ends one where the source records no
    transactions) once it holds ``max_records`` records or ``max_bytes`` envelope bytes; the last
    batch's end is ``end``, the others' the global offset after their last record.
    """
    batch: list[RawRecord] = []
    size = 0
    for rec in records:
        batch.append(rec)
        size += len(rec.payload) if rec.payload is not None else 0
        if (len(batch) >= max_records or size >= max_bytes) and rec.tx_end is not False:
            yield batch, rec.goff + 1
            batch, size = [], 0
    yield batch, end  # the last one, maybe empty: the destination's head still moves past trailing holes


def migrate(
    source: Source,
    destination: Destination,
    *,
    progress: Callable[[int, int], None] | None = None,
    max_records: int = BATCH_RECORDS,
    max_bytes: int = BATCH_BYTES,
) -> MigrateReport:
    """Copy ``source`` into ``destination`` (or go on with an unfinished copy), then check the copy.

    ``progress(done, total)`` is called after each batch with global offsets copied (this run and
    earlier ones) and the source's head. The destination keeps its mark of an unfinished copy
    until the check passes: a copy that differs is reported (``report.difference``) and stays
    marked, so nothing mistakes it for a finished one.
    """
    report = MigrateReport(source.where, destination.where)
    head = source.global_head
    report.global_head = head
    at = destination.start(source)
    report.resumed_at = at
    if at > head:
        raise MigrationError(
            f"{destination.where}: its global head {at} is past the source's ({head}): not a copy of {source.where}"
        )
    t0 = time.monotonic()
    if progress is not None:
        progress(at, head)
    for batch, end in batches(source.records(at, head), head, max_records, max_bytes):
        destination.write(batch, end)
        report.batches += 1
        report.records += len(batch)
        for rec in batch:
            if rec.kind == "message":
                report.messages += 1
                report.payload_bytes += len(rec.payload or b"")
            elif rec.kind in ("truncate", "delete"):
                report.control += 1
            else:
                report.removed += 1
        if progress is not None:
            progress(end, head)
    destination.finish()
    subscriptions = source.subscriptions()
    destination.put_subscriptions(subscriptions)
    report.subscriptions = len(subscriptions)
    report.copy_seconds = time.monotonic() - t0
    t1 = time.monotonic()
    report.difference = compare(source, destination.as_source())
    report.verify_seconds = time.monotonic() - t1
    report.streams = len(source.streams())
    if report.difference is None:
        report.verified = True
        destination.unmark()
    return report


def _settled(rec: RawRecord, firsts: dict[str, int]) -> tuple[object, ...]:
    """What a reader can tell of a record: a removed message (below its stream's first offset) and every
    marker read as a hole, whose bytes a copy need not keep."""
    if rec.kind in GONE_KINDS:
        return ("hole",)
    stream, offset = rec.stream, rec.offset
    if rec.kind == "message" and stream is not None and offset is not None and offset < firsts.get(stream, 0):
        return ("hole",)
    return (rec.kind, rec.stream, rec.offset, rec.payload)


def _describe(rec: RawRecord | None) -> str:
    if rec is None:
        return "nothing (a hole)"
    if rec.kind == "message":
        size = len(rec.payload or b"")
        return f"a message of {rec.stream!r} at offset {rec.offset} ({size} envelope bytes)"
    if rec.kind in ("truncate", "delete"):
        return f"a {rec.kind} of {rec.stream!r} (first offset {rec.offset})"
    return f"a {rec.kind} record"


def compare(source: Source, copy: Source) -> Difference | None:
    """The first difference between ``copy`` and ``source``, or ``None`` when it is exact.

    Compared: the global head; every stream's first offset, head and deleted flag, and the order of
    the streams (``stream_names()``'s order); the durable subscriptions (each one's category, types,
    group size and members' positions); and record by record, every message's global offset,
    stream, stream offset and envelope bytes, and every truncation and deletion. A message that its
    stream's first offset removed and a hole (a compacted message, a marker, a gap) count as the
    same: no reader can tell them apart, and PostgreSQL and a directory reclaim removed messages
    differently.
    """
    if source.global_head != copy.global_head:
        return Difference(None, f"global head {copy.global_head}, the source's is {source.global_head}")
    src_streams = source.streams()
    difference = _compare_streams(src_streams, copy.streams()) or _compare_subscriptions(
        source.subscriptions(), copy.subscriptions()
    )
    if difference is not None:
        return difference
    firsts = {s.name: s.first for s in src_streams}
    head = source.global_head
    a_iter, b_iter = source.records(0, head), copy.records(0, head)
    a, b = next(a_iter, None), next(b_iter, None)
    while a is not None or b is not None:
        goff = min(r.goff for r in (a, b) if r is not None)
        ra = a if a is not None and a.goff == goff else None
        rb = b if b is not None and b.goff == goff else None
        sa = _settled(ra, firsts) if ra is not None else ("hole",)
        sb = _settled(rb, firsts) if rb is not None else ("hole",)
        if sa != sb:
            if ra is not None and rb is not None and ra.kind == rb.kind == "message" and sa[:3] == sb[:3]:
                pa, pb = ra.payload or b"", rb.payload or b""
                k = next((i for i, (x, y) in enumerate(zip(pa, pb, strict=False)) if x != y), min(len(pa), len(pb)))
                what = f"envelope bytes differ at byte {k} ({len(pb)} bytes, the source's {len(pa)})"
                return Difference(goff, f"{_describe(rb)}: {what}")
            return Difference(goff, f"the copy has {_describe(rb)}, the source {_describe(ra)}")
        if ra is not None:
            a = next(a_iter, None)
        if rb is not None:
            b = next(b_iter, None)
    return None


def _compare_streams(src_streams: list[StreamState], dst_streams: list[StreamState]) -> Difference | None:
    """The first difference between two stores' streams (their states and order), or ``None``."""
    src_by_name = {s.name: s for s in src_streams}
    dst_by_name = {s.name: s for s in dst_streams}
    for s in src_streams:
        d = dst_by_name.get(s.name)
        if d is None:
            return Difference(None, f"stream {s.name!r} is missing")
        if (d.first, d.head, d.deleted) != (s.first, s.head, s.deleted):
            return Difference(
                None,
                f"stream {s.name!r}: first {d.first}, head {d.head}, deleted {d.deleted};"
                f" the source has first {s.first}, head {s.head}, deleted {s.deleted}",
            )
    for d in dst_streams:
        if d.name not in src_by_name:
            return Difference(None, f"stream {d.name!r} is not in the source")
    src_order = [s.name for s in src_streams]
    dst_order = [s.name for s in dst_streams]
    if src_order != dst_order:
        k = next(i for i, (a, b) in enumerate(zip(src_order, dst_order, strict=True)) if a != b)
        return Difference(None, f"streams in another order: {dst_order[k]!r} where the source has {src_order[k]!r}")
    return None


def _compare_subscriptions(source: list[SubscriptionInfo], copy: list[SubscriptionInfo]) -> Difference | None:
    """The first difference between two stores' subscriptions (each list sorted by name), or ``None``."""
    src = {info.name: info for info in source}
    dst = {info.name: info for info in copy}
    for name in sorted(src.keys() | dst.keys()):
        a, b = src.get(name), dst.get(name)
        if b is None:
            return Difference(None, f"subscription {name!r} is missing")
        if a is None:
            return Difference(None, f"subscription {name!r} is not in the source")
        if a != b:
            return Difference(
                None,
                f"subscription {name!r}: category {b.category!r}, types {_types(b)}, group size {b.size},"
                f" positions {list(b.positions)}; the source has category {a.category!r}, types {_types(a)},"
                f" group size {a.size}, positions {list(a.positions)}",
            )
    return None


def _types(info: SubscriptionInfo) -> str:
    return "all" if info.types is None else repr(sorted(info.types))[:200]
