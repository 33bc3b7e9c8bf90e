"""Compaction: rewrite sealed segments without the messages that removals left in them.

Truncation and deletion make messages unreadable at once (readers skip them);
compaction reclaims their bytes. Each sealed segment that holds a removed
message is copied to ``segments/<first>.log.compact`` with every removed
message replaced by a REMOVED record: the same header fields, flags and
name, without the envelope (36 bytes plus the name, where the message had its
envelope too). Every global offset, stream offset and transaction boundary
stays where it was, so the indexes other than the segment's position file do
not change, and the copy has no reservation. Retention runs first: it
drops whole segments, which is cheaper than rewriting them.

Crash-safe steps for each segment (``Log.swap_segment`` does 3 to 5 in the
writer thread, between two commit groups):

1. Write the copy to ``<first>.log.compact``, in the calling thread, and
   fsync it. The old segment is sealed, so nothing changes under the copy.
2. Ask the writer thread to swap; it checks that the segment is still there.
3. Unlink the old position file, fsync the directory.
4. Rename the copy over ``<first>.log``, fsync the directory. This is the
   moment of the swap.
5. Checkpoint, which writes the new position file.

A crash before 4 leaves the old segment and a ``.compact`` file, which the
next writable open deletes; a crash after 4 leaves the new segment, whose
position file the next open rebuilds by walking it. Readers may run during
compaction: one that holds the old segment keeps reading its mapping or, once
it is closed, looks the segment up again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from index.header import HEADER_SIZE, MAGIC_SEGMENT, Header, decode_header, encode_header
from logstore.segment import (
    KIND_MESSAGE,
    KIND_REMOVED,
    RECORD_HEADER,
    RECORD_OVERHEAD,
    Segment,
    SegmentRetired,
    frame,
)

if TYPE_CHECKING:
    from logstore.store import Store

_CHUNK = 4 << 20


@dataclass
class CompactReport:
    """What ``compact`` did."""

    segments_rewritten: int = 0
    segments_dropped: int = 0
    messages_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    rewritten: list[str] = field(default_factory=list)

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after


def _log_bytes(store: Store) -> int:
    """The log's size as retention counts it: the sealed segment files and what the active one holds."""
    segments = store._log.segments
    return sum(seg.size for seg in segments[:-1]) + segments[-1].end


def compact_store(
    store: Store,
    progress: Callable[[int, int], None] | None = None,
    retention_age: float | None = None,
    retention_bytes: int | None = None,
) -> CompactReport:
    lg = store._log
    writer = store._writer
    report = CompactReport(bytes_before=_log_bytes(store))
    before = {seg.first for seg in lg.segments}
    writer.call(lambda: writer.apply_retention(retention_age, retention_bytes))
    report.segments_dropped = len(before - {seg.first for seg in lg.segments})
    sealed = lg.segments[:-1]
    first = lg.catalog.first.copy()  # removals only ever grow: an older copy is safe
    for done, seg in enumerate(sealed, start=1):
        tmp = seg.path + ".compact"
        try:
            removed = _removable(seg, first)
            if removed:
                positions, end = _write_copy(store, seg, first, tmp)
        except (ValueError, SegmentRetired):
            if not seg.closed:
                raise
            removed = 0  # retention dropped it while it was read (a roll in another thread)
            if lg.io.exists(tmp):
                lg.io.unlink(tmp)
        if removed:

            def swap(seg: Segment = seg, tmp: str = tmp, positions: list[int] = positions, end: int = end) -> bool:
                if seg not in lg.segments[:-1]:  # retention dropped it meanwhile
                    lg.io.unlink(tmp)
                    return False
                # The removals that the copy applies, and everything the checkpoint below will
                # cover, must be on disk before the copy replaces the segment.
                writer._sync()
                if seg.first >= lg.ckpt_last_first:
                    # Recovery walks only segments before the last checkpointed one: checkpoint first.
                    lg.checkpoint(clean=False)
                lg.swap_segment(seg, tmp, positions, end)
                return True

            if writer.call(swap):
                report.segments_rewritten += 1
                report.messages_removed += removed
                report.rewritten.append(seg.path)
        if progress is not None:
            progress(done, len(sealed))
    report.bytes_after = _log_bytes(store)
    return report


def _removable(seg: Segment, first: np.ndarray) -> int:
    """How many messages of ``seg`` lie below their stream's first retained offset."""
    buf = seg.view
    pos = HEADER_SIZE
    n = 0
    unpack = RECORD_HEADER.unpack_from
    for _ in range(seg.count):
        length, kind, _flags, _nlen, sid, soff, _goff = unpack(buf, pos)
        if kind == KIND_MESSAGE and soff < first[sid]:
            n += 1
        pos += length
    return n


def _write_copy(store: Store, seg: Segment, first: np.ndarray, path: str) -> tuple[list[int], int]:
    """Write the compacted copy of ``seg`` to ``path`` and fsync it; returns its positions and end."""
    io = store._log.io
    buf = seg.view
    old = decode_header(bytes(buf[:HEADER_SIZE]), MAGIC_SEGMENT)
    unpack = RECORD_HEADER.unpack_from
    records: list[bytes] = []
    positions: list[int] = []
    pos = HEADER_SIZE
    out = HEADER_SIZE
    for _ in range(seg.count):
        length, kind, flags, nlen, sid, soff, goff = unpack(buf, pos)
        if kind == KIND_MESSAGE and soff < first[sid]:
            rec = frame(sid, soff, goff, flags, bytes(buf[pos + 28 : pos + 28 + nlen]), b"", KIND_REMOVED)
        else:
            rec = bytes(buf[pos : pos + length])
        records.append(rec)
        positions.append(out)
        out += len(rec)
        pos += length
    assert all(len(r) >= RECORD_OVERHEAD for r in records)
    if io.exists(path):
        io.unlink(path)
    fd = io.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        io.pwrite(fd, encode_header(Header(MAGIC_SEGMENT, seg.store_id, seg.first, out, old.c)), 0)
        p = HEADER_SIZE
        chunk: list[bytes] = []
        size = 0
        for rec in records:
            chunk.append(rec)
            size += len(rec)
            if size >= _CHUNK:
                io.pwrite(fd, b"".join(chunk), p)
                p += size
                chunk, size = [], 0
        if chunk:
            io.pwrite(fd, b"".join(chunk), p)
        io.fsync(fd)
    finally:
        io.close(fd)
    return positions, out
