"""Recovery: what ``open`` does to the log and its indexes before anything reads or writes them.

Open every segment; load the indexes the checkpoint names (each
:class:`~logstore.embedded.derived.DerivedIndex` from its files), or, when they are
unusable, empty them and apply the whole log; then walk the records past the
checkpoint (:func:`logstore.embedded.walk.walk`), check each against the log's rules
and apply every whole transaction to the indexes. Where the walk meets damage
or a transaction without its end, a writable open cuts the log there, saving
the bytes in ``lost+found/``, unless data after it was durable (then it is not
a torn write, and the open refuses); a read-only open leaves it to the writer.
docs/ARCHITECTURE.md ("Recovery") gives the steps and why they are safe.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from logstore.embedded import layout
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.derived import Deferred
from logstore.embedded.lostfound import RECOVERY, LostFound
from logstore.embedded.record import (
    FLAG_SYNCED,
    FLAG_TX_END,
    KIND_DELETE,
    KIND_RETAIN,
    KIND_TRUNCATE,
    MESSAGE_KINDS,
    NO_STREAM,
    RECORD_OVERHEAD,
    Record,
)
from logstore.embedded.segment import open_segment
from logstore.embedded.walk import Damage, find_next_record_in_file, last_nonzero_in_file, record_at, walk
from logstore.errors import CorruptionError, FormatVersionError
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE

if TYPE_CHECKING:
    from logstore.embedded.log import Log

logger = logging.getLogger("logstore")

REPAIR_HINT = "run `logstore repair` on the store"
_REREADS = 64
"""How many times a read-only open's scan reads again where it stopped, as a live writer completes records."""


@dataclass
class RecoveryReport:
    """What ``open`` found and did. ``store.recovery_report`` holds the last one.

    - ``checkpoint``: "clean" (closed cleanly), "used" (after a crash), or why it was not used.
    - ``records_scanned``: log records read past the checkpoint.
    - ``transactions_recovered``: whole transactions found past the checkpoint.
    - ``cut``: where the log was cut (``"path@byte"``), or ``None``.
    - ``bytes_cut``: bytes moved out of the log into ``lost+found/``.
    - ``lost_found``: files written to ``lost+found/``.
    - ``rebuilt``: index files that were missing or damaged and were rebuilt.

    A read-only open changes nothing, so it never cuts: it leaves what
    follows the last complete transaction of the log to the writer.
    ``tail`` says where that is (``"path@byte"``, or ``None`` when nothing
    follows), ``tail_bytes`` how many non-zero bytes it saw there and
    ``tail_reason`` what they were. Beside a live writer that is a
    transaction in flight; after a crash, a torn tail that the next writable
    open cuts. Neither makes the open unclean. ``notes`` lists what else a
    read-only open read differently from the files (a position file that
    the writer replaced since the checkpoint it read).
    """

    checkpoint: str = "none"
    records_scanned: int = 0
    transactions_recovered: int = 0
    cut: str | None = None
    cut_reason: str | None = None
    bytes_cut: int = 0
    lost_found: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tail: str | None = None
    tail_bytes: int = 0
    tail_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.cut is None and not self.rebuilt

    def summary(self) -> str:
        parts = [f"checkpoint {self.checkpoint}", f"{self.records_scanned} records scanned"]
        if self.transactions_recovered:
            parts.append(f"{self.transactions_recovered} transactions recovered")
        if self.cut:
            parts.append(f"cut {self.bytes_cut} bytes at {self.cut} ({self.cut_reason}), saved in lost+found")
        if self.tail:
            parts.append(
                f"left a tail of {self.tail_bytes} bytes past the last complete transaction at {self.tail} "
                f"({self.tail_reason}) unread: a transaction a writer has in flight, or a torn tail that the "
                "next writable open cuts"
            )
        if self.rebuilt:
            parts.append("rebuilt " + ", ".join(self.rebuilt))
        parts += self.notes
        return "; ".join(parts)


class IndexesUnusable(Exception):
    """A read-only open found an index file missing or unusable (raised only with ``retry_changes``).

    The writer may have replaced it since the open read ``CHECKPOINT``: the
    store reads the checkpoint again and loads anew rather than rebuilding
    the indexes from the log.
    """


@dataclass
class _Stop:
    """Where recovery's walk stopped short of a clean end, and why."""

    index: int  # segment index
    position: int
    what: str


class Recovery:
    """One open's recovery of ``log``: :meth:`run` does it, in the steps of the module docstring."""

    def __init__(self, log: Log, retry_changes: bool = False, bound: int | None = None, shared: bool = False) -> None:
        self.log = log
        # Beside live processes: the walk stops at this global offset, the tail they publish
        # (every transaction below it is whole; what lies past it may be in flight or not yet durable).
        self.bound = bound
        # Whether this recovery may change files: a writable open that no other process has open. Beside
        # live processes (``shared``) even a writable open reads as a read-only one does: no cut, no removal.
        self.writes = not log.readonly and not shared
        self.report = RecoveryReport()
        # Read-only: raise IndexesUnusable rather than rebuild the indexes (the store loads again).
        self.retry_changes = retry_changes
        # Set when no checkpoint is usable: the indexes are rebuilt from the whole log, and nothing tells
        # how far the log was durable.
        self.without_checkpoint = False
        # In a relaxed scan (the indexes rebuilt from a log that may not start at 0), stream ids must be
        # below this: each one needs a NAMED record of its own, so more ids than the log can hold records
        # of is damage (and would make the catalog allocate up to that id).
        self.sid_limit = 0

    # Long on purpose: the open's steps in order, each branch one kind of damage it handles.
    def run(self, ckpt: Checkpoint | None, ckpt_problem: str | None) -> Checkpoint | None:  # noqa: PLR0915
        """Open every segment, load the checkpointed indexes and walk the tail after them.

        Returns the checkpoint that was used (``None`` if the indexes were rebuilt from the log).
        """
        lg = self.log
        io = lg.io
        started = time.perf_counter()
        report = self.report
        leftovers = self._open_segments(ckpt)
        if ckpt is not None:
            self._check_segments(ckpt)
            try:
                self._load_indexes(ckpt)
            except FormatVersionError:
                raise
            except (OSError, FormatError, CorruptionError) as exc:
                if self.retry_changes:
                    raise IndexesUnusable(str(exc)) from exc
                problem = f"index files unusable ({exc}); rebuilt from the log"
                # A read-only open meets files a live writer replaces (retry_changes) and loads again;
                # only files that stay missing or damaged get here: nothing is lost, but it is news.
                logger.warning("%s: %s", lg.directory, problem)
                ckpt = None
                ckpt_problem = problem
        streams = lg.streams
        if ckpt is None:
            report.checkpoint = ckpt_problem or "none"
            report.rebuilt.append("all indexes")
            self.without_checkpoint = True
            for ix in lg.indexes:
                ix.reset()
            for seg in lg.segments:
                seg.end = HEADER_SIZE
                # Stale or cut short by a crash (even empty): the checkpoint after the rebuild writes it afresh.
                leftovers.append(seg.pos_path)
            start = 0
            # A log that retention has shortened starts later; its streams then appear out of id order.
            lg.next_goff = lg.published.log_start = lg.segments[0].first
            streams.relaxed = True  # damage repaired or segments dropped may leave ids out of order
            self.sid_limit = sum(seg.size for seg in lg.segments) // (RECORD_OVERHEAD + 1)
        else:
            report.checkpoint = "clean" if ckpt.clean else "used"
            start = len(ckpt.segments) - 1
            lg.next_goff = ckpt.next_goff
            lg.published.log_start = ckpt.log_start
            lg.generation = ckpt.generation
            lg.in_force = ckpt
            lg.ckpt_last_first = ckpt.segments[-1].first
        clean_end = ckpt is not None and ckpt.clean
        lg.scan_start = start
        self._scan(start, clean_end)
        streams.relaxed = False
        streams.head_open.clear()
        unnamed = lg.catalog.unnamed()
        if unnamed:
            raise CorruptionError(
                lg.segments[0].path, HEADER_SIZE, f"stream id {unnamed[0]} is named nowhere in the log", REPAIR_HINT
            )
        if leftovers and self.writes:
            for p in leftovers:
                if io.exists(p):
                    io.unlink(p)
            io.fsync_dir(lg.seg_dir)
        lg.published.visible_end = lg.next_goff
        report.seconds = time.perf_counter() - started
        return ckpt

    def _open_segments(self, ckpt: Checkpoint | None) -> list[str]:
        """Open every segment file; returns the files to remove once the open has succeeded.

        A writable open first removes what an interrupted creation or rewrite left.
        """
        lg = self.log
        io = lg.io
        names = [n for n in io.listdir(lg.seg_dir) if n.endswith(layout.SEGMENT_EXT)]
        if self.writes:
            for n in io.listdir(lg.seg_dir):
                # A segment whose creation did not finish holds no data; a rewrite that did not reach
                # its swap is rolled back.
                if n.endswith((layout.TMP, layout.COMPACT, layout.REPAIR)):
                    io.unlink(os.path.join(lg.seg_dir, n))
        # Files to remove once the open has succeeded (a refused open changes nothing).
        leftovers: list[str] = []
        present = set(names)
        for n in io.listdir(lg.seg_dir):
            if n.endswith(layout.POSITION_EXT) and layout.segment_path_of(n) not in present:  # its segment is gone
                leftovers.append(os.path.join(lg.seg_dir, n))
        for n in sorted(names):
            if not layout.is_segment_name(n):
                raise CorruptionError(os.path.join(lg.seg_dir, n), 0, "not a segment file name", REPAIR_HINT)
            if ckpt is not None and ckpt.segments and layout.segment_first(n) < ckpt.segments[0].first:
                # Dropped by retention, which the checkpoint already records: finish removing it.
                leftovers.append(os.path.join(lg.seg_dir, layout.position_path_of(n)))
                leftovers.append(os.path.join(lg.seg_dir, n))
                continue
            lg.segments.append(open_segment(io, os.path.join(lg.seg_dir, n), lg.store_id, not lg.readonly))
        if not lg.segments:
            raise CorruptionError(lg.seg_dir, 0, "the store has no segment files", REPAIR_HINT)
        return leftovers

    def _load_indexes(self, ckpt: Checkpoint) -> None:
        """Load every index from the files of ``ckpt``; raises if any is unusable (all are then rebuilt).

        A lazy index (the message-id and category indexes) only has its files opened here: it reads them
        at its first use (:class:`~logstore.embedded.derived.Deferred`), so an open reads no more than the
        catalog and the positions whatever the number of messages. A file missing now is unusable now."""
        lg = self.log
        names = lg.io.listdir(lg.directory)
        for ix in lg.indexes:
            if ix.lazy:
                files = ix.deferred_files(names, ckpt)
                ix.defer(Deferred(lg.io, lg.directory, ckpt, files, lambda: lg.segments))
                continue
            data = None
            if ix.file is not None and not ix.maps_file:
                data = lg.io.read_file(layout.index_path(lg.directory, ix.file, ckpt.generation))
            ix.load(data, ckpt)
            self.report.rebuilt += ix.rebuilt
            self.report.notes += ix.notes

    def _check_segments(self, ckpt: Checkpoint) -> None:
        """The segment files must be the checkpoint's, then only newer ones: anything else is log damage."""
        lg = self.log
        by_first = {seg.first: seg for seg in lg.segments}
        listed = {e.first for e in ckpt.segments}
        if not ckpt.segments:
            raise CorruptionError(layout.checkpoint_path(lg.directory), HEADER_SIZE, "names no segment")
        for e in ckpt.segments:
            seg = by_first.get(e.first)
            if seg is None:
                path = layout.segment_path(lg.directory, e.first)
                raise CorruptionError(path, 0, "segment named by the checkpoint is missing", REPAIR_HINT)
            if e.end > seg.size and e is ckpt.segments[-1]:
                raise CorruptionError(
                    seg.path, seg.size, f"segment is shorter than the {e.end} bytes checkpointed", REPAIR_HINT
                )
        last = ckpt.segments[-1].first
        for seg in lg.segments:
            if seg.first not in listed and seg.first <= last:
                raise CorruptionError(seg.path, 0, "segment is not named by the checkpoint", REPAIR_HINT)

    # Long on purpose: recovery's single pass over the records, kept in one piece on purpose.
    def _scan(self, start: int, clean_end: bool) -> None:  # noqa: PLR0912, PLR0915
        """Apply every whole transaction past the checkpoint; cut or refuse what is damaged.

        A read-only open may run beside a writer that is appending to the
        last segment: where the walk stops (a record not yet whole, bytes
        past the last record, a transaction without its end) may be a write
        in flight rather than damage. So a read-only scan that stops reads
        the bytes there again: if they now hold a whole record, the writer
        finished it and the scan goes on (at most ``_REREADS`` times: the
        reader does not chase the writer for ever). If they do not, and a
        valid record that the writer wrote after a sync follows
        (:meth:`_durable_after`), the writer had finished those bytes
        before it wrote that record: a second read that still finds no
        record is damage. Otherwise the rest is a tail it leaves unread
        (:meth:`_leave_tail`). A writable open holds the writer lock, so
        nothing changes under it and it decides at once.
        """
        lg = self.log
        segments = lg.segments
        cat = lg.catalog
        report = self.report
        pending: list[tuple[int, Record]] = []
        new_names: dict[str, int] = {}
        tx_heads: dict[int, int] = {}
        expected = lg.next_goff
        good = (start, segments[start].end)
        stop: _Stop | None = None
        scanned = 0
        i, pos = start, segments[start].end
        entering = False  # segment i is walked from its header (not from the checkpoint, nor resumed)
        rereads = 0
        bound = self.bound
        reached = bound is not None and expected >= bound
        while not reached:
            stop = None
            in_flight = True  # the walk stopped at bytes a writer may still be writing
            while True:
                seg = segments[i]
                if entering:
                    entering = False
                    if seg.first != expected:
                        stop = _Stop(i, 0, f"segment starts at global offset {seg.first}, expected {expected}")
                        in_flight = False
                        break
                    pos = HEADER_SIZE
                    if not pending:
                        good = (i, pos)
                is_last = i == len(segments) - 1
                # After a clean close the records end where the checkpoint says: the rest of the
                # segment is not searched. Otherwise the walk checks it for non-zero bytes, skipping
                # its holes (the reservation, never written): the cost follows what was written.
                end_known = is_last and clean_end and pos == seg.end and not pending
                for item in walk(seg.view, pos, seg.size, fd=seg.fd, tail=not end_known):
                    if type(item) is Damage:
                        stop = _Stop(i, item.position, item.what)
                        pos = item.position
                        break
                    rec: Record = item  # type: ignore[assignment]
                    scanned += 1
                    problem = self._check_record(rec, expected, new_names, tx_heads)
                    if problem:
                        stop = _Stop(i, pos, problem)
                        in_flight = False  # a whole, checksummed record: not a write in flight
                        break
                    pending.append((i, rec))
                    if rec.sid != NO_STREAM:
                        if rec.name is not None and rec.name not in cat.ids and rec.name not in new_names:
                            new_names[rec.name] = rec.sid
                        if rec.kind in MESSAGE_KINDS:
                            tx_heads[rec.sid] = rec.soff + 1
                        elif rec.sid not in tx_heads and (rec.sid >= len(cat) or cat.names[rec.sid] == ""):
                            tx_heads[rec.sid] = rec.soff  # a stream that a control record names first
                    pos += rec.length
                    expected += 1
                    if rec.flags & FLAG_TX_END:
                        self.log.apply(pending)
                        cat = lg.catalog
                        report.transactions_recovered += 1
                        pending = []
                        new_names = {}
                        tx_heads = {}
                        good = (i, pos)
                        if bound is not None and expected >= bound:
                            reached = True
                            break
                if stop is not None or is_last or reached:
                    break
                i += 1
                entering = True
            # The walk stopped at byte ``pos`` of segment ``i``.
            if stop is None and not pending:
                break
            if stop is None:
                last_i, last_rec = pending[-1]
                stop = _Stop(last_i, last_rec.position + last_rec.length, "transaction without its end record")
            if self.writes:
                self._cut(good, stop)
                break
            if in_flight and rereads < _REREADS and record_at(segments[i].view, pos, segments[i].size):
                rereads += 1  # the writer finished it meanwhile: go on reading
                continue
            if (in_flight and rereads >= _REREADS) or not self._durable_after(stop):
                self._leave_tail(good, stop)
                break
            if in_flight and rereads < _REREADS and record_at(segments[i].view, pos, segments[i].size):
                rereads += 1  # a record written after a sync follows, and this one is whole by now
                continue
            self._refuse(stop)
        lg.io.records_read += scanned
        report.records_scanned = scanned
        if stop is None:
            self._set_end(good)

    # Long on purpose: one check per rule a record must meet, run on every record recovery scans.
    def _check_record(  # noqa: PLR0912
        self, rec: Record, expected: int, new_names: dict[str, int], tx_heads: dict[int, int]
    ) -> str | None:
        streams = self.log.streams
        cat = streams.catalog
        relaxed = streams.relaxed
        if rec.goff != expected:
            return f"global offset {rec.goff}, expected {expected}"
        kind = rec.kind
        if kind == KIND_RETAIN:
            return None if rec.soff <= rec.goff else f"retain record keeps from {rec.soff}, past itself"
        if rec.sid == NO_STREAM:  # a lost record of no known stream
            return None
        if rec.soff > rec.goff:  # each earlier offset of the stream took a global offset of its own
            return f"stream offset {rec.soff} is past its global offset {rec.goff}"
        known = rec.sid < len(cat) and (not relaxed or cat.names[rec.sid] != "")
        if known:
            if rec.name is not None and rec.name != cat.names[rec.sid]:
                return f"names stream id {rec.sid} {rec.name!r}, the log named it {cat.names[rec.sid]!r} before"
            head = tx_heads.get(rec.sid, int(cat.head[rec.sid]))
            if rec.sid in streams.head_open and rec.sid not in tx_heads:
                return None if rec.soff >= head else f"stream id {rec.sid} offset {rec.soff}, below {head}"
        elif rec.sid not in tx_heads:
            if rec.name is None:
                return f"first record of stream id {rec.sid} carries no name"
            if rec.name in cat.ids or rec.name in new_names:
                return f"new stream id {rec.sid} ({rec.name!r}) reuses a name"
            if relaxed:
                if rec.sid >= self.sid_limit:
                    return f"new stream id {rec.sid} ({rec.name!r}) is beyond what the log can name"
                return None  # its first record here may have any offset: earlier ones were dropped
            if rec.sid != len(cat) + len(new_names) or kind in (KIND_TRUNCATE, KIND_DELETE):
                return f"new stream id {rec.sid} ({rec.name!r}) is out of sequence"
            head = 0
        else:
            head = tx_heads[rec.sid]
        if kind == KIND_TRUNCATE:
            if rec.soff > head:
                return f"stream id {rec.sid} truncated before {rec.soff}, past its head {head}"
            return None
        if rec.soff != head:
            what = "deleted at" if kind == KIND_DELETE else "offset"
            return f"stream id {rec.sid} {what} {rec.soff}, expected {head}"
        return None

    def _set_end(self, good: tuple[int, int]) -> None:
        segments = self.log.segments
        gi, gpos = good
        segments[gi].end = gpos
        # Later segments (if any) hold nothing the store keeps; _cut moved them away, a read-only
        # open leaves them to the writer.
        for later in segments[gi + 1 :]:
            later.close()
        del segments[gi + 1 :]

    def _durable_after(self, stop: _Stop) -> bool:
        """Was the damaged data once durable, so that it is not a torn write?

        Yes if a valid record marked SYNCED follows it. Without a usable
        checkpoint nothing tells how far the log was durable, so then any
        valid record after the damage counts.
        """
        segments = self.log.segments
        strict = self.without_checkpoint
        i, p = stop.index, stop.position + 1
        while i < len(segments):
            seg = segments[i]
            q = find_next_record_in_file(seg.view, seg.fd, p, seg.size)
            if q < 0:
                i, p = i + 1, HEADER_SIZE
                continue
            rec = record_at(seg.view, q, seg.size)
            if rec is None:  # changed since it was found (a writable open beside a read-only one cut it)
                p = q + 1
                continue
            if strict or rec.flags & FLAG_SYNCED:
                return True
            p = q + rec.length
        return False

    def _refuse(self, stop: _Stop) -> None:
        seg = self.log.segments[stop.index]
        raise CorruptionError(
            seg.path,
            stop.position,
            stop.what + "; data after it was durable (or, with no usable checkpoint, may have been), "
            "so this is not a torn write",
            REPAIR_HINT,
        )

    def _leave_tail(self, good: tuple[int, int], stop: _Stop) -> None:
        """Read-only: serve the log up to ``good``, the end of its last whole transaction, and say what follows.

        Nothing is cut or written: a live writer is still writing what
        follows, or (after a crash) the next writable open cuts it.
        """
        lg = self.log
        gi, gpos = good
        report = self.report
        gseg = lg.segments[gi]
        seen = max(0, last_nonzero_in_file(gseg.view, gseg.fd, gpos, gseg.size) - gpos)
        for later in lg.segments[gi + 1 :]:
            seen += max(0, last_nonzero_in_file(later.view, later.fd, HEADER_SIZE, later.size) - HEADER_SIZE)
        report.tail = f"{gseg.path}@{gpos}"
        report.tail_bytes = seen
        report.tail_reason = f"{stop.what} at {lg.segments[stop.index].path}@{stop.position}"
        logger.info(
            "%s: read-only open reads up to %s, the end of the last complete transaction; %d bytes past it "
            "(%s) are left to the writer: a transaction in flight, or a torn tail the next writable open cuts",
            lg.directory,
            report.tail,
            seen,
            report.tail_reason,
        )
        self._set_end(good)

    def _cut(self, good: tuple[int, int], stop: _Stop) -> None:
        """Writable open: cut the log after ``good``, saving the bytes in lost+found, or refuse durable damage."""
        lg = self.log
        io = lg.io
        seg = lg.segments[stop.index]
        where = f"{seg.path}@{stop.position}"
        if self._durable_after(stop):
            self._refuse(stop)
        gi, gpos = good
        report = self.report
        report.cut = f"{lg.segments[gi].path}@{gpos}"
        report.cut_reason = f"{stop.what} at {where}"
        lf = LostFound(io, lg.directory, RECOVERY)
        lf.ready()
        # 1. Copy every byte to be cut into lost+found, with a manifest, and make that durable.
        gseg = lg.segments[gi]
        nz = last_nonzero_in_file(gseg.view, gseg.fd, gpos, gseg.size)
        if nz > gpos:
            self._save_lost(lf, bytes(gseg.view[gpos:nz]), gseg.path, gpos, report.cut_reason)
        moved = lg.segments[gi + 1 :]
        for later in moved:
            end = last_nonzero_in_file(later.view, later.fd, HEADER_SIZE, later.size)
            self._save_lost(lf, bytes(later.view[:end]), later.path, 0, report.cut_reason)
        lf.sync()
        # 2. Remove the later segments first: a crash from here on leaves the kept segment
        #    as the last one, with a tail the next open cuts again.
        self._set_end(good)
        for later in moved:
            later.close()
            lg.unlink_segment_files(later.path)
        if moved:
            io.fsync_dir(lg.seg_dir)
        # 3. Zero the cut bytes in the kept segment.
        if nz > gpos:
            zero = bytes(min(nz - gpos, 1 << 20))
            p = gpos
            while p < nz:
                n = min(len(zero), nz - p)
                io.pwrite(gseg.fd, zero[:n], p)
                p += n
            io.fdatasync(gseg.fd)
        logger.warning("%s: recovery cut the log at %s: %s", lg.directory, report.cut, report.cut_reason)

    def _save_lost(self, lf: LostFound, data: bytes, source: str, position: int, reason: str) -> None:
        self.report.lost_found += lf.save(data, source, position, reason, sync=False)
        self.report.bytes_cut += len(data)
