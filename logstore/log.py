"""The log: the ordered list of segments, the indexes derived from it, recovery and checkpoints.

The directory layout of a store is in :mod:`logstore.layout`.

Threads: the writer thread alone calls the mutating methods (``roll``,
``checkpoint``) and mutates the catalog, run index and position indexes.
Readers call ``segment_for`` and read through segments; they are bounded by
``visible_end`` and the catalog heads, which the writer publishes only after
the data under them is written (and, with ``durability="fsync"``, fsynced).
Those limits, ``log_start`` and the catalog belong to the store's
:class:`~logstore.published.Published`: ``Log.visible_end``, ``log_start``
and ``catalog`` are views of it, so that recovery and the writer set them
where readers look.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from logstore import layout
from logstore.checkpoint import Checkpoint, SegmentEntry
from logstore.errors import NO_SPACE_ERRNOS, CorruptionError, FormatVersionError, OutOfSpaceError, as_corruption
from logstore.fileio import FileIO
from logstore.index.catalog import FLAG_DELETED, FLAG_LARGE, Catalog
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE
from logstore.index.position import PositionIndex
from logstore.index.runs import LargeRuns, RunIndex
from logstore.lostfound import RECOVERY, LostFound
from logstore.published import Published
from logstore.record import (
    FLAG_SYNCED,
    FLAG_TX_END,
    KIND_DELETE,
    KIND_LOST,
    KIND_MESSAGE,
    KIND_REMOVED,
    KIND_RETAIN,
    KIND_TRUNCATE,
    NO_STREAM,
    RECORD_OVERHEAD,
    BadRecord,
    Record,
    parse_record,
)
from logstore.segment import Segment, create_segment, open_segment
from logstore.walk import find_next_record_in_file, last_nonzero_in_file

logger = logging.getLogger("logstore")


def _first(seg: Segment) -> int:
    """The key ``Log.segments`` is sorted by."""
    return seg.first


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
    """A read-only open found an index file missing or unusable (raised only when ``Log.retry_changes``).

    The writer may have replaced it since the open read ``CHECKPOINT``: the
    store reads the checkpoint again and loads anew rather than rebuilding
    the indexes from the log.
    """


def _runs_past_the_log(catalog: Catalog, runs: RunIndex, next_goff: int) -> str | None:
    """What maps a stream offset to a global offset at or past ``next_goff``, or ``None``.

    The catalog and run files passed their checksums, but readers follow
    them without further checks: a run, or a stream's last message (its head
    within its last run), past the end of the log would send a read there.
    """
    _sids, soffs, goffs, starts, _delta = runs.snapshot
    have = np.flatnonzero(starts[1:] > starts[:-1])  # stream ids with shared runs
    last = starts[1:][have] - 1
    tables = [(have, soffs[last], goffs[last], goffs)]  # ids, their last runs, every run's global offset
    for sid, big in runs.large.items():
        g_all = big.goffs.view()
        tables.append((np.asarray([sid]), big.soffs.view()[-1:], g_all[-1:], g_all))
    for ids, s_last, g_last, g_all in tables:
        if len(g_all) and int(g_all.max()) >= next_goff:
            return f"a run starts at global offset {int(g_all.max())}, the log ends at {next_goff}"
        head = catalog.head[ids[: len(s_last)]]
        if not bool(np.all(head > s_last)) or not bool(np.all(head - s_last <= next_goff - g_last)):
            return f"a stream's head lies past its last run or the end of the log ({next_goff})"
    return None


@dataclass
class _Damage:
    index: int  # segment index
    position: int
    what: str


class Log:
    """Segments plus derived indexes; see the module docstring for the thread rules."""

    def __init__(
        self,
        io: FileIO,
        directory: str,
        store_id: bytes,
        readonly: bool,
        segment_size: int,
        published: Published | None = None,
    ) -> None:
        # The read limits and the catalog live in ``published`` (a fresh one when the log is read alone).
        self.published = published = Published() if published is None else published
        published.catalog = Catalog()
        published.visible_end = published.log_start = 0
        self.io = io
        self.directory = directory
        self.seg_dir = layout.segments_dir(directory)
        self.stream_dir = layout.streams_dir(directory)
        self.store_id = store_id
        self.readonly = readonly
        self.segment_size = segment_size
        # In log order. Once readers may hold it, retention and close replace the list and a roll appends to
        # it (recovery cuts it in place before that), so one read of it is a consistent list to search.
        self.segments: list[Segment] = []
        self.runs = RunIndex()
        self.generation = 0
        self.next_goff = 0
        self.ckpt_last_first = 0  # first global offset of the last segment the last checkpoint names
        self.relaxed = False  # scanning a log that does not start at 0: stream ids appear out of order
        # Streams that a relaxed scan first met in a TRUNCATE record: their head is only known to be
        # at least its offset until their next record (retention dropped the messages in between).
        self._head_open: set[int] = set()
        self._sid_limit = 0  # in a relaxed scan: stream ids must be below it (each needs a NAMED record)
        self.checkpointed_bytes = 0  # log bytes written since the last checkpoint
        self.checkpoint_due = False  # a roll sealed a segment since the last checkpoint: checkpoint it
        self.report = RecoveryReport()
        # Set by load when no checkpoint is usable: the indexes are rebuilt from the whole log, and nothing
        # tells how far the log was durable.
        self.without_checkpoint = False
        self._scan_start = 0
        self._ckpt_sums: dict[int, tuple[int, int]] = {}  # first -> (count, checksum) already hashed
        # Read-only: raise IndexesUnusable rather than rebuild the indexes (the store loads again).
        self.retry_changes = False

    # -- the published state ---------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return self.published.catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        self.published.catalog = catalog

    @property
    def visible_end(self) -> int:
        """Global offsets below it are readable (``Published.visible_end``)."""
        return self.published.visible_end

    @visible_end.setter
    def visible_end(self, end: int) -> None:
        self.published.visible_end = end

    @property
    def log_start(self) -> int:
        """Global offsets below it were dropped by retention (``Published.log_start``)."""
        return self.published.log_start

    @log_start.setter
    def log_start(self, start: int) -> None:
        self.published.log_start = start

    # -- reading ---------------------------------------------------------------

    @property
    def active(self) -> Segment:
        return self.segments[-1]

    def segment_for(self, goff: int) -> Segment:
        segments = self.segments  # read once: retention may replace the list meanwhile
        i = bisect.bisect_right(segments, goff, key=_first) - 1
        if i < 0:
            raise KeyError(goff)
        return segments[i]

    # -- creating ----------------------------------------------------------------

    def create(self) -> None:
        """Lay out a new, empty store."""
        for d in (self.seg_dir, self.stream_dir):
            if not self.io.exists(d):
                self.io.mkdir(d)
        self.io.fsync_dir(self.directory)
        self._add_segment(create_segment(self.io, self.seg_dir, self.store_id, 0, self.segment_size))
        self.checkpoint(clean=False)

    def _add_segment(self, seg: Segment) -> None:
        self.segments.append(seg)

    def roll(self, first: int, reserve: int = 0) -> Segment:
        """Start a new active segment whose first global offset is ``first`` (writer thread).

        Its file is allocated with at least ``reserve`` bytes (header included; at most ``segment_size``).
        """
        seg = create_segment(self.io, self.seg_dir, self.store_id, first, self.segment_size, reserve)
        self._add_segment(seg)
        return seg

    # -- retention and compaction ----------------------------------------------------

    def droppable(self) -> list[Segment]:
        """Sealed segments that lie wholly below the log start (retention dropped them)."""
        out = []
        for i, seg in enumerate(self.segments[:-1]):
            if self.segments[i + 1].first <= self.log_start:
                out.append(seg)
        return out

    def drop_segments(self) -> int:
        """Remove the segments wholly below the log start (writer thread, or open); returns bytes freed.

        Steps: (1) checkpoint without them, so that no checkpoint names a
        segment about to disappear; (2) close, unlink them and their position
        files, fsync the directory. A crash between the two leaves files that
        the next open removes (they lie below the checkpoint's first segment).
        """
        gone = self.droppable()
        if not gone:
            return 0
        keep = self.segments[len(gone) :]
        self.segments = keep
        self.checkpoint(clean=False)
        freed = 0
        for seg in gone:
            freed += seg.size
            self._ckpt_sums.pop(seg.first, None)
            seg.close()  # a reader holding it gets SegmentRetired and looks again
            self._unlink_segment_files(seg.path)
        self.io.fsync_dir(self.seg_dir)
        return freed

    def _unlink_segment_files(self, path: str) -> None:
        # The position file first: a crash in between leaves a segment without one (rebuilt), never
        # a position file without its segment.
        pos_path = layout.position_path_of(path)
        if self.io.exists(pos_path):
            self.io.unlink(pos_path)
        self.io.unlink(path)

    def retention_point(self, age: float | None, max_bytes: int | None, now_ns: int) -> int:
        """The log start that ``retention_age`` and ``retention_bytes`` call for (whole sealed segments).

        A sealed segment's age counts from when the next one was created,
        which is after its last record was written. The log's size counts
        the sealed segment files and the bytes written to the active one
        (not its reservation). The active segment is never dropped.
        """
        segs = self.segments
        k = 0
        if age is not None:
            limit = now_ns - int(age * 1e9)
            while k < len(segs) - 1 and segs[k + 1].created < limit:
                k += 1
        if max_bytes is not None:
            total = sum(seg.size for seg in segs[k:-1]) + segs[-1].end
            while k < len(segs) - 1 and total > max_bytes:
                total -= segs[k].size
                k += 1
        return max(self.log_start, segs[k].first)

    def swap_segment(self, old: Segment, new_path: str, positions: list[int], end: int) -> int:
        """Put a compacted copy in place of sealed segment ``old`` (writer thread); returns bytes freed.

        ``new_path`` (``<first>.log.compact``) is complete and fsynced.
        Steps: (1) unlink the old position file and fsync the directory, so
        that no position file of the old bytes can be taken for the new ones;
        (2) rename the copy over the segment and fsync the directory: the
        swap happens here, atomically; (3) checkpoint, which writes the new
        position file. A crash before (2) leaves the old segment (the next
        open removes the ``.compact`` file and rebuilds the positions); a
        crash after it leaves the new one, whose positions the next open
        rebuilds from the segment itself.
        """
        io = self.io
        i = self.segments.index(old)
        if io.exists(old.pos_path):
            io.unlink(old.pos_path)
        io.fsync_dir(self.seg_dir)
        io.rename(new_path, old.path)
        io.fsync_dir(self.seg_dir)
        seg = open_segment(io, old.path, self.store_id, not self.readonly)
        seg.positions.positions.extend(positions)
        seg.end = end
        self.segments[i] = seg
        self._ckpt_sums.pop(seg.first, None)
        freed = old.size - seg.size
        old.close()  # a reader holding it gets SegmentRetired and looks again
        self.checkpoint(clean=False)
        return freed

    # -- checkpoint --------------------------------------------------------------

    def checkpoint(self, clean: bool) -> None:
        """Make the index files cover the whole log (writer thread; the log must be durable).

        Steps, each durable before the next: (1) append new position entries
        and new large-stream runs to their files, fsync them; (2) write
        ``catalog.<g+1>`` through a temporary file and rename; (3) write
        ``CHECKPOINT`` naming generation g+1 through a temporary file and
        rename, fsync the directory; (4) remove ``catalog.<g>``. A crash
        before (3) leaves the old checkpoint in force, whose files are intact:
        appends only ever go past the counts it records.
        """
        io = self.io
        created = False
        entries = []
        sealed = self.segments[:-1]
        for seg in self.segments:
            entry, made = self._position_entry(seg)
            created |= made
            entries.append(entry)
        for sid in self.runs.merge():
            self.catalog.flags[sid] |= FLAG_LARGE
        for sid, big in self.runs.large.items():
            if big.persisted < len(big):
                created |= self._append_file(
                    layout.runs_path(self.directory, sid),
                    LargeRuns.file_header(self.store_id, sid),
                    *big.tail_bytes(),
                    lambda big=big: big.pairs(0, len(big)),  # type: ignore[misc]
                )
                big.persisted = len(big)
        if created:
            io.fsync_dir(self.seg_dir)
            io.fsync_dir(self.stream_dir)
        generation = self.generation + 1
        self._write_atomic(self._catalog_path(generation), self.catalog.encode(self.runs, generation, self.store_id))
        ckpt = Checkpoint(generation, self.next_goff, entries, clean, self.log_start)
        self.ckpt_last_first = entries[-1].first
        self._write_atomic(layout.checkpoint_path(self.directory), ckpt.encode(self.store_id))
        old = self._catalog_path(self.generation)
        self.generation = generation
        if io.exists(old):
            io.unlink(old)
        self.checkpointed_bytes = 0
        self.checkpoint_due = False
        for seg, entry in zip(sealed, entries, strict=False):
            if seg._lazy is None:
                # A sealed segment's positions are in its file now: let them go, so that memory does not
                # grow with the log. A reader holding the index keeps it; the next one loads the file.
                seg.set_lazy_positions(entry.records, entry.checksum)

    def _position_entry(self, seg: Segment) -> tuple[SegmentEntry, bool]:
        """Step (1) of a checkpoint for ``seg``: append its new position entries to its file and fsync it.

        Returns the segment's checkpoint entry and whether its position file was created.
        """
        created = False
        lazy = seg._lazy  # read once: a reader's first use may load the positions meanwhile
        if lazy is not None:
            count, checksum = lazy
        else:
            pos = seg.positions
            count = len(pos)
            missing = not self.io.exists(seg.pos_path)
            if missing:
                pos.persisted = 0  # write every entry, not only the new ones
            # An empty segment (the active one right after a roll) gets its file's header at each
            # checkpoint: a crash may have left the file created but empty, and no entry would
            # ever be appended to repair it while the segment stays empty.
            if missing or pos.persisted < count or count == 0:
                created = self._append_file(
                    seg.pos_path,
                    PositionIndex.file_header(self.store_id, seg.first),
                    *pos.tail_bytes(),
                    lambda pos=pos: pos.positions.view().tobytes(),  # type: ignore[misc]
                )
                pos.persisted = count
            cached = self._ckpt_sums.get(seg.first)
            if cached is not None and cached[0] == count:
                checksum = cached[1]
            else:
                checksum = pos.checksum(count)
                self._ckpt_sums[seg.first] = (count, checksum)
        return SegmentEntry(seg.first, count, seg.end, checksum), created

    def sync_scanned(self) -> None:
        """fdatasync the segments that recovery scanned, which a crashed writer may not have synced."""
        for seg in self.segments[self._scan_start :]:
            self.io.fdatasync(seg.fd)

    def mark_unclean(self, ckpt: Checkpoint) -> None:
        """Rewrite the checkpoint without its CLEAN flag before anything new is appended."""
        self._write_atomic(layout.checkpoint_path(self.directory), ckpt._replace(clean=False).encode(self.store_id))

    def remove_stale_catalogs(self) -> None:
        """Remove catalog files of other generations (left by a crash during a checkpoint)."""
        keep = os.path.basename(self._catalog_path(self.generation))
        for name in self.io.listdir(self.directory):
            if name.startswith(layout.CATALOG_PREFIX) and name != keep:
                self.io.unlink(os.path.join(self.directory, name))

    def _catalog_path(self, generation: int) -> str:
        return layout.catalog_path(self.directory, generation)

    def _write_atomic(self, path: str, data: bytes) -> None:
        """``write_file_atomic``, with a full file system reported as :class:`OutOfSpaceError`."""
        try:
            self.io.write_file_atomic(path, data)
        except OSError as exc:
            raise self._no_space(exc, path, len(data)) from exc

    def _no_space(self, exc: OSError, path: str, size: int) -> OSError:
        """``exc``, or for ``ENOSPC``/``EDQUOT`` an :class:`OutOfSpaceError` for writing ``size`` bytes of ``path``.

        No option makes an index file smaller: the error says to free space
        (``logstore compact`` and retention free the store's own).
        """
        if exc.errno not in NO_SPACE_ERRNOS or isinstance(exc, OutOfSpaceError):
            return exc
        return OutOfSpaceError(
            path,
            size,
            exc.errno,
            "writing an index file of the checkpoint",
            self.io.free_space(self.directory),
            None,
            exc.strerror,
        )

    def _append_file(
        self, path: str, header: bytes, position: int, data: bytes, everything: Callable[[], bytes]
    ) -> bool:
        """Write ``data`` at ``position`` of an index file (creating it with ``header``); fsync it.

        If the file is shorter than ``position`` (removed or cut while the
        store was open), every entry is written again, from ``everything()``.
        """
        io = self.io
        created = not io.exists(path)
        asked = len(header) + len(data)
        try:
            fd = io.open(path, os.O_RDWR | os.O_CREAT)
            try:
                if io.size(fd) < position:
                    position, data = HEADER_SIZE, everything()
                asked = len(data)
                if created or position == HEADER_SIZE or io.size(fd) < HEADER_SIZE:
                    asked += len(header)
                    io.pwrite(fd, header, 0)  # written from the start: a damaged old header is replaced too
                if data:
                    io.pwrite(fd, data, position)
                io.fsync(fd)
            finally:
                io.close(fd)
        except OSError as exc:
            raise self._no_space(exc, path, asked) from exc
        return created

    # -- opening and recovery ----------------------------------------------------

    # Long on purpose: the open's steps in order, each branch one kind of damage it handles.
    def load(self, ckpt: Checkpoint | None, ckpt_problem: str | None) -> Checkpoint | None:  # noqa: PLR0912, PLR0915
        """Open every segment, load the checkpointed indexes and scan the tail after them.

        Returns the checkpoint that was used (``None`` if the indexes were rebuilt from the log).
        """
        started = time.perf_counter()
        report = self.report
        names = [n for n in self.io.listdir(self.seg_dir) if n.endswith(layout.SEGMENT_EXT)]
        if not self.readonly:
            for n in self.io.listdir(self.seg_dir):
                if n.endswith(layout.TMP):  # a segment whose creation did not finish; it holds no data
                    self.io.unlink(os.path.join(self.seg_dir, n))
        if not self.readonly:
            for n in self.io.listdir(self.seg_dir):
                if n.endswith((layout.COMPACT, layout.REPAIR)):  # a rewrite that did not reach its swap: roll it back
                    self.io.unlink(os.path.join(self.seg_dir, n))
        # Files to remove once the open has succeeded (a refused open changes nothing).
        leftovers: list[str] = []
        present = set(names)
        for n in self.io.listdir(self.seg_dir):
            if n.endswith(layout.POSITION_EXT) and layout.segment_path_of(n) not in present:  # its segment is gone
                leftovers.append(os.path.join(self.seg_dir, n))
        for n in sorted(names):
            if not layout.is_segment_name(n):
                raise CorruptionError(os.path.join(self.seg_dir, n), 0, "not a segment file name", REPAIR_HINT)
            if ckpt is not None and ckpt.segments and layout.segment_first(n) < ckpt.segments[0].first:
                # Dropped by retention, which the checkpoint already records: finish removing it.
                leftovers.append(os.path.join(self.seg_dir, layout.position_path_of(n)))
                leftovers.append(os.path.join(self.seg_dir, n))
                continue
            self._add_segment(open_segment(self.io, os.path.join(self.seg_dir, n), self.store_id, not self.readonly))
        if not self.segments:
            raise CorruptionError(self.seg_dir, 0, "the store has no segment files", REPAIR_HINT)
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
                logger.warning("%s: %s", self.directory, problem)
                ckpt = None
                ckpt_problem = problem
        if ckpt is None:
            report.checkpoint = ckpt_problem or "none"
            report.rebuilt.append("all indexes")
            self.without_checkpoint = True
            self.catalog = Catalog()
            self.runs = RunIndex()
            for seg in self.segments:
                seg._positions = PositionIndex(seg.first)
                seg._lazy = None
                seg.end = HEADER_SIZE
                # Stale or cut short by a crash (even empty): the checkpoint after the rebuild writes it afresh.
                leftovers.append(seg.pos_path)
            start = 0
            # A log that retention has shortened starts later; its streams then appear out of id order.
            self.next_goff = self.log_start = self.segments[0].first
            self.relaxed = True  # damage repaired or segments dropped may leave ids out of order
            self._sid_limit = sum(seg.size for seg in self.segments) // (RECORD_OVERHEAD + 1)
        else:
            report.checkpoint = "clean" if ckpt.clean else "used"
            start = len(ckpt.segments) - 1
            self.next_goff = ckpt.next_goff
            self.log_start = ckpt.log_start
            self.generation = ckpt.generation
            self.ckpt_last_first = ckpt.segments[-1].first
        clean_end = ckpt is not None and ckpt.clean
        self._scan_start = start
        self._scan(start, clean_end)
        self.relaxed = False
        self._head_open.clear()
        unnamed = self.catalog.unnamed()
        if unnamed:
            raise CorruptionError(
                self.segments[0].path, HEADER_SIZE, f"stream id {unnamed[0]} is named nowhere in the log", REPAIR_HINT
            )
        if leftovers and not self.readonly:
            for p in leftovers:
                if self.io.exists(p):
                    self.io.unlink(p)
            self.io.fsync_dir(self.seg_dir)
        self.visible_end = self.next_goff
        report.seconds = time.perf_counter() - started
        return ckpt

    def _load_indexes(self, ckpt: Checkpoint) -> None:
        io = self.io
        cat_path = self._catalog_path(ckpt.generation)
        with as_corruption(cat_path):
            catalog, runs, large = Catalog.decode(io.read_file(cat_path), self.store_id, ckpt.generation)
        for sid, count, checksum in large:
            path = layout.runs_path(self.directory, sid)
            with as_corruption(path):
                runs.large[sid] = LargeRuns.decode(io.read_file(path), self.store_id, sid, count, checksum)
        past = _runs_past_the_log(catalog, runs, ckpt.next_goff)
        if past:  # checksummed, but readers would follow it past the end of the log: rebuild instead
            raise CorruptionError(cat_path, HEADER_SIZE, past)
        by_first = {seg.first: seg for seg in self.segments}
        last = ckpt.segments[-1]
        for e in ckpt.segments:
            seg = by_first[e.first]
            if e is not last and (e.end > seg.size or not io.exists(seg.pos_path)):
                # A compaction swapped this segment after the checkpoint (or its position file is
                # gone): walk it now, which also finds where its records end.
                seg._lazy = None
                seg._positions = seg.rebuild_positions(e.records)
                rel = os.path.relpath(seg.pos_path, self.directory)
                if self.readonly:
                    # Beside a live writer this is a compaction between its swap and its checkpoint;
                    # the positions are read from the segment, in memory, and no file changes.
                    logger.info("%s: position index missing or stale; read from the segment", seg.pos_path)
                    self.report.notes.append(f"read the positions of {rel} from the segment")
                    continue
                logger.info("%s: position index missing or stale; rebuilt from the segment", seg.pos_path)
                self.report.rebuilt.append(rel)
                continue
            seg.end = e.end
            seg.set_lazy_positions(e.records, e.checksum)
            self._ckpt_sums[seg.first] = (e.records, e.checksum)
        # The last checkpointed segment is where the tail scan starts: load its positions now. After a
        # clean close nothing follows the checkpoint, so they stay lazy (the first append or read loads
        # them) and the open does not grow with how full that segment is.
        if not ckpt.clean:
            _ = by_first[ckpt.segments[-1].first].positions
        self.catalog, self.runs = catalog, runs

    def _check_segments(self, ckpt: Checkpoint) -> None:
        """The segment files must be the checkpoint's, then only newer ones: anything else is log damage."""
        by_first = {seg.first: seg for seg in self.segments}
        listed = {e.first for e in ckpt.segments}
        if not ckpt.segments:
            raise CorruptionError(layout.checkpoint_path(self.directory), HEADER_SIZE, "names no segment")
        for e in ckpt.segments:
            seg = by_first.get(e.first)
            if seg is None:
                path = layout.segment_path(self.directory, e.first)
                raise CorruptionError(path, 0, "segment named by the checkpoint is missing", REPAIR_HINT)
            if e.end > seg.size and e is ckpt.segments[-1]:
                raise CorruptionError(
                    seg.path, seg.size, f"segment is shorter than the {e.end} bytes checkpointed", REPAIR_HINT
                )
        last = ckpt.segments[-1].first
        for seg in self.segments:
            if seg.first not in listed and seg.first <= last:
                raise CorruptionError(seg.path, 0, "segment is not named by the checkpoint", REPAIR_HINT)

    # Long on purpose: recovery's single pass over the records, kept in one piece on purpose.
    def _scan(self, start: int, clean_end: bool) -> None:  # noqa: PLR0912, PLR0915
        """Apply every whole transaction past the checkpoint; cut or refuse what is damaged.

        A read-only open may run beside a writer that is appending to the
        last segment: where the scan stops (a record not yet whole, bytes
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
        cat = self.catalog
        report = self.report
        pending: list[tuple[int, Record]] = []
        new_names: dict[str, int] = {}
        tx_heads: dict[int, int] = {}
        expected = self.next_goff
        good = (start, self.segments[start].end)
        damage: _Damage | None = None
        scanned = 0
        i, pos = start, self.segments[start].end
        entering = False  # segment i is scanned from its header (not from the checkpoint, nor resumed)
        rereads = 0
        while True:
            damage = None
            in_flight = True  # the scan stopped at bytes a writer may still be writing
            while True:
                seg = self.segments[i]
                if entering:
                    entering = False
                    if seg.first != expected:
                        damage = _Damage(i, 0, f"segment starts at global offset {seg.first}, expected {expected}")
                        in_flight = False
                        break
                    pos = HEADER_SIZE
                    if not pending:
                        good = (i, pos)
                buf = seg.view
                while True:
                    try:
                        rec = parse_record(buf, pos, seg.size)
                    except BadRecord as bad:
                        if not bad.zero:
                            damage = _Damage(i, pos, bad.what)
                        break
                    scanned += 1
                    problem = self._check_record(rec, expected, new_names, tx_heads)
                    if problem:
                        damage = _Damage(i, pos, problem)
                        in_flight = False  # a whole, checksummed record: not a write in flight
                        break
                    pending.append((i, rec))
                    if rec.sid != NO_STREAM:
                        if rec.name is not None and rec.name not in cat.ids and rec.name not in new_names:
                            new_names[rec.name] = rec.sid
                        if rec.kind in (KIND_MESSAGE, KIND_REMOVED, KIND_LOST):
                            tx_heads[rec.sid] = rec.soff + 1
                        elif rec.sid not in tx_heads and (rec.sid >= len(cat) or cat.names[rec.sid] == ""):
                            tx_heads[rec.sid] = rec.soff  # a stream that a control record names first
                    pos += rec.length
                    expected += 1
                    if rec.flags & FLAG_TX_END:
                        self._apply(pending)
                        report.transactions_recovered += 1
                        pending = []
                        new_names = {}
                        tx_heads = {}
                        good = (i, pos)
                if damage is not None:
                    break
                # A zero length ends the segment's records; anything non-zero after it is damage. The
                # whole rest of the segment is checked, but its holes (the reservation, never written
                # area) read as zeros and are skipped: the cost follows what was written.
                is_last = i == len(self.segments) - 1
                if is_last and clean_end and pos == seg.end and not pending:
                    break
                nz = last_nonzero_in_file(buf, seg.fd, pos, seg.size)
                if nz > pos:
                    damage = _Damage(i, pos, f"non-zero bytes up to byte {nz} after the last record")
                    break
                if is_last:
                    break
                i += 1
                entering = True
            # The scan stopped at byte ``pos`` of segment ``i``.
            if damage is None and not pending:
                break
            if damage is None:
                last_i, last_rec = pending[-1]
                damage = _Damage(last_i, last_rec.position + last_rec.length, "transaction without its end record")
            if not self.readonly:
                self._cut(good, damage)
                break
            if in_flight and rereads < _REREADS and self._record_at(i, pos):
                rereads += 1  # the writer finished it meanwhile: go on reading
                continue
            if (in_flight and rereads >= _REREADS) or not self._durable_after(damage):
                self._leave_tail(good, damage)
                break
            if in_flight and rereads < _REREADS and self._record_at(i, pos):
                rereads += 1  # a record written after a sync follows, and this one is whole by now
                continue
            self._refuse(damage)
        self.io.records_read += scanned
        report.records_scanned = scanned
        if damage is None:
            self._set_end(good)

    def _record_at(self, i: int, pos: int) -> bool:
        """Whether a whole record lies at byte ``pos`` of segment ``i`` now (read-only opens read again)."""
        seg = self.segments[i]
        try:
            parse_record(seg.view, pos, seg.size)
        except BadRecord:
            return False
        return True

    # Long on purpose: one check per rule a record must meet, run on every record recovery scans.
    def _check_record(  # noqa: PLR0912
        self, rec: Record, expected: int, new_names: dict[str, int], tx_heads: dict[int, int]
    ) -> str | None:
        cat = self.catalog
        if rec.goff != expected:
            return f"global offset {rec.goff}, expected {expected}"
        kind = rec.kind
        if kind == KIND_RETAIN:
            return None if rec.soff <= rec.goff else f"retain record keeps from {rec.soff}, past itself"
        if rec.sid == NO_STREAM:  # a lost record of no known stream
            return None
        if rec.soff > rec.goff:  # each earlier offset of the stream took a global offset of its own
            return f"stream offset {rec.soff} is past its global offset {rec.goff}"
        known = rec.sid < len(cat) and (not self.relaxed or cat.names[rec.sid] != "")
        if known:
            if rec.name is not None and rec.name != cat.names[rec.sid]:
                return f"names stream id {rec.sid} {rec.name!r}, the log named it {cat.names[rec.sid]!r} before"
            head = tx_heads.get(rec.sid, int(cat.head[rec.sid]))
            if rec.sid in self._head_open and rec.sid not in tx_heads:
                return None if rec.soff >= head else f"stream id {rec.sid} offset {rec.soff}, below {head}"
        elif rec.sid not in tx_heads:
            if rec.name is None:
                return f"first record of stream id {rec.sid} carries no name"
            if rec.name in cat.ids or rec.name in new_names:
                return f"new stream id {rec.sid} ({rec.name!r}) reuses a name"
            if self.relaxed:
                # Every id up to the highest is named by a record of its own: more ids than the log can
                # hold records of is damage (and would make the catalog allocate up to that id).
                if rec.sid >= self._sid_limit:
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

    # Long on purpose: recovery's per-record update of the indexes, one branch per record kind.
    def _apply(self, pending: list[tuple[int, Record]]) -> None:  # noqa: PLR0912
        cat, runs = self.catalog, self.runs
        # Record positions go to each segment's index in one extend per segment (the hot loop of a
        # long tail); .item() reads a numpy element as an int without making a numpy scalar.
        seg_i, prev = pending[0]
        found: list[int] = []
        for i, rec in pending:
            if i != seg_i:  # the transaction goes on in the next segment: the previous one ends here
                seg = self.segments[seg_i]
                seg.positions.positions.extend(found)
                seg.end = prev.position + prev.length
                seg_i, found = i, []
            prev = rec
            found.append(rec.position)
            sid = rec.sid
            kind = rec.kind
            if kind == KIND_RETAIN:
                self.log_start = max(self.log_start, rec.soff)
            elif sid != NO_STREAM:
                if sid >= len(cat.names) or (self.relaxed and cat.names[sid] == ""):
                    assert rec.name is not None
                    if self.relaxed:
                        # The stream's earlier records were dropped: it starts here.
                        cat.place(sid, rec.name)
                        cat.head[sid] = rec.soff
                        cat.set_first(sid, rec.soff)
                        if kind == KIND_TRUNCATE:
                            self._head_open.add(sid)
                    else:
                        cat.add(rec.name)
                if sid in self._head_open and kind != KIND_TRUNCATE:
                    # The first record after the truncation fixes the head; what lies between was
                    # dropped by retention (readers find no run there and start at the first run).
                    self._head_open.discard(sid)
                if kind in (KIND_MESSAGE, KIND_REMOVED, KIND_LOST):
                    diff = rec.goff - rec.soff
                    if cat.nruns.item(sid) == 0 or cat.run_diff.item(sid) != diff:
                        runs.add(sid, rec.soff, rec.goff)
                        cat.nruns[sid] += 1
                        cat.run_diff[sid] = diff
                    cat.head[sid] = rec.soff + 1
                    # REMOVED and LOST records stand for messages, appended after any earlier delete.
                    if cat.flags.item(sid) & FLAG_DELETED:
                        cat.flags[sid] &= ~FLAG_DELETED & 0xFF
                else:
                    if sid in self._head_open or kind == KIND_DELETE:
                        cat.head[sid] = max(int(cat.head[sid]), rec.soff)
                    cat.set_first(sid, max(int(cat.first[sid]), rec.soff))
                    cat.ctrl[sid] = rec.goff + 1
                    if kind == KIND_DELETE:
                        cat.flags[sid] |= FLAG_DELETED
        seg = self.segments[seg_i]
        seg.positions.positions.extend(found)
        seg.end = prev.position + prev.length
        self.next_goff = prev.goff + 1

    def _set_end(self, good: tuple[int, int]) -> None:
        gi, gpos = good
        seg = self.segments[gi]
        seg.end = gpos
        # Later segments (if any) hold nothing the store keeps; _cut moved them away, a read-only
        # open leaves them to the writer.
        for later in self.segments[gi + 1 :]:
            later.close()
        del self.segments[gi + 1 :]

    def _durable_after(self, damage: _Damage) -> bool:
        """Was the damaged data once durable, so that it is not a torn write?

        Yes if a valid record marked SYNCED follows it. Without a usable
        checkpoint nothing tells how far the log was durable, so then any
        valid record after the damage counts.
        """
        strict = self.without_checkpoint
        i, p = damage.index, damage.position + 1
        while i < len(self.segments):
            seg = self.segments[i]
            q = find_next_record_in_file(seg.view, seg.fd, p, seg.size)
            if q < 0:
                i, p = i + 1, HEADER_SIZE
                continue
            try:
                rec = parse_record(seg.view, q, seg.size)
            except BadRecord:  # changed since it was found (a writable open beside a read-only one cut it)
                p = q + 1
                continue
            if strict or rec.flags & FLAG_SYNCED:
                return True
            p = q + rec.length
        return False

    def _refuse(self, damage: _Damage) -> None:
        seg = self.segments[damage.index]
        raise CorruptionError(
            seg.path,
            damage.position,
            damage.what + "; data after it was durable (or, with no usable checkpoint, may have been), "
            "so this is not a torn write",
            REPAIR_HINT,
        )

    def _leave_tail(self, good: tuple[int, int], damage: _Damage) -> None:
        """Read-only: serve the log up to ``good``, the end of its last whole transaction, and say what follows.

        Nothing is cut or written: a live writer is still writing what
        follows, or (after a crash) the next writable open cuts it.
        """
        gi, gpos = good
        report = self.report
        gseg = self.segments[gi]
        seen = max(0, last_nonzero_in_file(gseg.view, gseg.fd, gpos, gseg.size) - gpos)
        for later in self.segments[gi + 1 :]:
            seen += max(0, last_nonzero_in_file(later.view, later.fd, HEADER_SIZE, later.size) - HEADER_SIZE)
        report.tail = f"{gseg.path}@{gpos}"
        report.tail_bytes = seen
        report.tail_reason = f"{damage.what} at {self.segments[damage.index].path}@{damage.position}"
        logger.info(
            "%s: read-only open reads up to %s, the end of the last complete transaction; %d bytes past it "
            "(%s) are left to the writer: a transaction in flight, or a torn tail the next writable open cuts",
            self.directory,
            report.tail,
            seen,
            report.tail_reason,
        )
        self._set_end(good)

    def _cut(self, good: tuple[int, int], damage: _Damage) -> None:
        """Writable open: cut the log after ``good``, saving the bytes in lost+found, or refuse durable damage."""
        seg = self.segments[damage.index]
        where = f"{seg.path}@{damage.position}"
        if self._durable_after(damage):
            self._refuse(damage)
        gi, gpos = good
        report = self.report
        report.cut = f"{self.segments[gi].path}@{gpos}"
        report.cut_reason = f"{damage.what} at {where}"
        lf = LostFound(self.io, self.directory, RECOVERY)
        lf.ready()
        # 1. Copy every byte to be cut into lost+found, with a manifest, and make that durable.
        gseg = self.segments[gi]
        nz = last_nonzero_in_file(gseg.view, gseg.fd, gpos, gseg.size)
        if nz > gpos:
            self._save_lost(lf, bytes(gseg.view[gpos:nz]), gseg.path, gpos, report.cut_reason)
        moved = self.segments[gi + 1 :]
        for later in moved:
            end = last_nonzero_in_file(later.view, later.fd, HEADER_SIZE, later.size)
            self._save_lost(lf, bytes(later.view[:end]), later.path, 0, report.cut_reason)
        lf.sync()
        # 2. Remove the later segments first: a crash from here on leaves the kept segment
        #    as the last one, with a tail the next open cuts again.
        self._set_end(good)
        for later in moved:
            later.close()
            self._unlink_segment_files(later.path)
        if moved:
            self.io.fsync_dir(self.seg_dir)
        # 3. Zero the cut bytes in the kept segment.
        if nz > gpos:
            zero = bytes(min(nz - gpos, 1 << 20))
            p = gpos
            while p < nz:
                n = min(len(zero), nz - p)
                self.io.pwrite(gseg.fd, zero[:n], p)
                p += n
            self.io.fdatasync(gseg.fd)
        logger.warning("%s: recovery cut the log at %s: %s", self.directory, report.cut, report.cut_reason)

    def _save_lost(self, lf: LostFound, data: bytes, source: str, position: int, reason: str) -> None:
        self.report.lost_found += lf.save(data, source, position, reason, sync=False)
        self.report.bytes_cut += len(data)

    def close(self) -> None:
        segments, self.segments = self.segments, []
        for seg in segments:
            seg.close()
