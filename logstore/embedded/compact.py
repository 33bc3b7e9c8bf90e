"""Compaction: erase the envelopes of removed messages from the segment files.

Truncation and deletion make messages unreadable at once (readers skip them);
compaction erases their envelopes and reclaims their bytes. Each segment that
holds a removed message is copied to ``segments/<first>.log.compact`` with
every removed message replaced by a REMOVED record: the same header fields,
flags and name, without the envelope (36 bytes plus the name, where the
message had its envelope too). Every global offset, stream offset and
transaction boundary stays where it was, so the indexes other than the
segment's position file do not change, and the copy has no
reservation. Retention runs first: it drops whole segments, which is cheaper than
rewriting them.

Only sealed segments are rewritten. When the active segment holds a removed
message, compaction first seals it through the writer role
(``Writer.roll_now``: the roll a full segment gets, between two commit
groups), then rewrites it like the others. It rolls only then: a store with
nothing removed in its active segment gets no new segment. ``roll=False``
leaves the active segment alone; the report then names it.

Crash-safe steps (``Log.swap_segment`` does 4 to 6 in the writer role,
between two commit groups):

1. If the active segment holds a removed message: roll. In the writer role,
   fdatasync the active segment, create the next one (``.tmp``, renamed into
   place, directory fsynced); the checkpoint that records the sealed segment
   follows in the same turn of the role.
2. For each sealed segment with removed messages: write the copy to
   ``<first>.log.compact``, in the calling thread, and fsync it. The segment
   is sealed, so nothing changes under the copy.
3. Ask the writer role to swap; it checks that the segment is still there.
4. Unlink the old position file, fsync the directory.
5. Rename the copy over ``<first>.log``, fsync the directory. This is the
   moment of the swap.
6. Checkpoint, which writes the new position file.

A crash during 1 is a crash during a roll: the next open removes a ``.tmp``
file or finds the new, empty segment after the old one, which is then a
sealed segment holding removed messages (the next compaction rewrites it).
A crash before 5 leaves the old segment and a ``.compact`` file, which the
next writable open deletes; a crash after 5 leaves the new segment, whose
position file the next open rebuilds by walking it. Readers may run during
compaction: one that holds the old segment keeps reading its mapping or, once
it is closed, looks the segment up again.

What compaction erases and what it cannot reach: after it, no segment file
holds the envelope of a message removed before it began, and neither does
any other file the store manages (the ``.compact`` copies never hold one;
position files, run files, the catalog and the checkpoint hold offsets and
names, never envelopes). The stream's name remains, in the catalog, in the
TRUNCATE or DELETE record and in each REMOVED record. ``CompactReport.unreached``
names every segment file that still holds removed envelopes after the pass
(removed after the pass began, or the active segment with ``roll=False``),
with the count and why; ``lost_found`` names the files of ``lost+found/``,
which compaction never touches. A file replaced by rename frees its blocks
without overwriting them: the device may still hold the old bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from logstore.embedded import layout
from logstore.embedded.record import KIND_MESSAGE, KIND_REMOVED, RECORD_HEADER, RECORD_OVERHEAD, frame
from logstore.embedded.segment import Segment, SegmentRetired
from logstore.embedded.walk import Damage, counted, walk
from logstore.errors import CorruptionError, OutOfSpaceError
from logstore.index.header import HEADER_SIZE, SegmentHeader
from logstore.results import CompactReport, Unreached

if TYPE_CHECKING:
    from logstore.embedded.log import Log
    from logstore.embedded.writer import Writer

_CHUNK = 4 << 20


REASON_NO_ROLL = "the active segment, which compact(roll=False) does not rewrite"
REASON_LATER = "removed after this compaction began; compact again"
REASON_ACTIVE_LATER = "in the active segment, removed after this compaction began; compact again"


def _log_bytes(lg: Log) -> int:
    """The log's size as retention counts it: the sealed segment files and what the active one holds."""
    segments = lg.segments
    return sum(seg.size for seg in segments[:-1]) + segments[-1].end


def compact_store(
    lg: Log,
    writer: Writer,
    progress: Callable[[int, int], None] | None = None,
    retention_age: float | None = None,
    retention_bytes: int | None = None,
    roll: bool = True,
) -> CompactReport:
    """Compact the store whose log is ``lg`` and whose writer is ``writer`` (``Store.compact``)."""
    report = CompactReport(bytes_before=_log_bytes(lg))
    before = {seg.first for seg in lg.segments}
    writer.call(lambda: writer.apply_retention(retention_age, retention_bytes))
    report.segments_dropped = len(before - {seg.first for seg in lg.segments})
    first = lg.catalog.first.copy()  # removals only ever grow: an older copy is safe
    # The active segment is walked outside the writer role, up to what readers may already read
    # (those records never change), so that commits do not wait for the walk.
    active = lg.active
    no_space: OutOfSpaceError | None = None
    if roll and _removable(active, first, lg.visible_end):
        rolled = writer.call(lambda: writer.roll_now(active))
        if isinstance(rolled, OutOfSpaceError):
            no_space = rolled  # the file system is full: the sealed segments are still compacted
        elif rolled:
            report.rolled = active.path
    sealed = lg.segments[:-1]
    # Streams created since the copy (and maybe sealed in a segment meanwhile) have removed nothing
    # as of the copy: their entries are 0. The catalog is read after the segment list, so every
    # stream id in those segments is within it.
    first = _widen(first, len(lg.catalog.first))
    for done, seg in enumerate(sealed, start=1):
        tmp = seg.path + layout.COMPACT
        try:
            removed = _removable(seg, first)
            if removed:
                positions, end = _write_copy(lg, seg, first, tmp)
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
                writer.sync()
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
    report.unreached = _unreached(lg, first, roll, no_space)
    report.lost_found = _lost_found(lg)
    report.bytes_after = _log_bytes(lg)
    return report


def _unreached(lg: Log, first: np.ndarray, roll: bool, no_space: OutOfSpaceError | None) -> list[Unreached]:
    """The segment files that still hold removed messages' envelopes after the pass, and why.

    Removals after ``first`` was taken are the only way a sealed segment can
    still hold one (compaction rewrote every other); without them only the
    active segment can, and only with ``roll=False``.
    """
    segments = lg.segments
    end = lg.visible_end
    now = lg.catalog.first.copy()  # after the segments and the end: it covers every stream in them
    m = min(len(now), len(first))
    later = bool(np.any(now[:m] != first[:m])) or bool(np.any(now[m:] != 0))
    out = []
    for seg in segments[:-1] if later else []:
        try:
            n = _removable(seg, now)
        except (ValueError, SegmentRetired):
            if not seg.closed:
                raise
            continue  # retention dropped it meanwhile: its bytes are gone with it
        if n:
            out.append(Unreached(seg.path, n, REASON_LATER))
    if later or not roll or no_space is not None:
        active = segments[-1]
        n = _removable(active, now, end)
        if n:
            if no_space is not None:
                reason = f"the active segment, not rolled: no space for the next segment ({no_space}); compact again"
            else:
                reason = REASON_ACTIVE_LATER if roll else REASON_NO_ROLL
            out.append(Unreached(active.path, n, reason))
    return out


def _widen(first: np.ndarray, n: int) -> np.ndarray:
    """``first`` with zeros appended up to length ``n``."""
    if len(first) >= n:
        return first
    out = np.zeros(n, first.dtype)
    out[: len(first)] = first
    return out


def _lost_found(lg: Log) -> list[str]:
    """The files in ``lost+found/``: compaction does not look into them, so it names them."""
    io = lg.io
    lf_dir = layout.lost_found_dir(lg.directory)
    if not io.exists(lf_dir):
        return []
    return [os.path.join(lf_dir, n) for n in sorted(io.listdir(lf_dir))]


def _removable(seg: Segment, first: np.ndarray, limit: int | None = None) -> int:
    """How many messages of ``seg`` lie below their stream's first retained offset.

    A sealed segment is walked over its ``count`` records. With ``limit``
    (the active segment, walked outside the writer role) the walk stops at
    that global offset, at the first never-written byte, or at the end of
    the mapping, whichever comes first: only published records are read
    (``limit`` is at most ``visible_end``). Both walks check every record's
    checksum: damage raises :class:`CorruptionError` naming the file and byte.
    """
    n = 0
    if limit is None:
        for rec in counted(seg.view, HEADER_SIZE, seg.size, seg.count, seg.path, seg.first, fd=seg.fd):
            if rec.kind == KIND_MESSAGE and rec.soff < first[rec.sid]:
                n += 1
        return n
    todo = limit - seg.first
    if todo <= 0:
        return 0
    # The records below ``limit`` are whole and never change; the one after them may be half written,
    # so the walk stops before it. A record length of 0 ends it too: the segment was sealed before
    # ``limit`` was read, and its records end there.
    buf = seg.view
    for item in walk(buf, HEADER_SIZE, len(buf), fd=seg.fd):
        if isinstance(item, Damage):
            if item.zero or item.position + RECORD_OVERHEAD > len(buf):  # the records end, or the mapping does
                break
            what = f"global offset {limit - todo}: {item.what}"
            raise CorruptionError(seg.path, item.position, what, "run logstore repair")
        if item.kind == KIND_MESSAGE and item.sid < len(first) and item.soff < first[item.sid]:
            n += 1
        todo -= 1
        if not todo:
            break
    return n


def _write_copy(lg: Log, seg: Segment, first: np.ndarray, path: str) -> tuple[list[int], int]:
    """Write the compacted copy of ``seg`` to ``path`` and fsync it; returns its positions and end.

    The records are walked with their checksums checked: a damaged record is not copied, it raises
    :class:`CorruptionError` naming the segment file and byte.
    """
    io = lg.io
    buf = seg.view
    old = SegmentHeader.decode(bytes(buf[:HEADER_SIZE]))
    records: list[bytes] = []
    positions: list[int] = []
    out = HEADER_SIZE
    for rec in counted(buf, HEADER_SIZE, seg.size, seg.count, seg.path, seg.first, fd=seg.fd):
        pos = rec.position
        if rec.kind == KIND_MESSAGE and rec.soff < first[rec.sid]:
            name = bytes(buf[pos + RECORD_HEADER.size : rec.payload_start])
            data = frame(rec.sid, rec.soff, rec.goff, rec.flags, name, b"", KIND_REMOVED)
        else:
            data = bytes(buf[pos : pos + rec.length])
        records.append(data)
        positions.append(out)
        out += len(data)
    assert all(len(r) >= RECORD_OVERHEAD for r in records)
    if io.exists(path):
        io.unlink(path)
    fd = io.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    try:
        io.pwrite(fd, SegmentHeader(seg.store_id, seg.first, out, old.created).encode(), 0)
        p = HEADER_SIZE
        chunk: list[bytes] = []
        size = 0
        for data in records:
            chunk.append(data)
            size += len(data)
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
