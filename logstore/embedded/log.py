"""The log: the ordered list of segments, the indexes derived from it, and checkpoints.

The directory layout of a store is in :mod:`logstore.embedded.layout`; the indexes
are :mod:`logstore.embedded.derived`'s; what ``open`` does to the log before use is
:mod:`logstore.embedded.recovery`'s.

Threads: the writer thread alone calls the mutating methods (``roll``,
``checkpoint``) and mutates the catalog, run index and position indexes.
Readers call ``segment_for`` and read through segments; they are bounded by
``visible_end`` and the catalog heads, which the writer publishes only after
the data under them is written (and, with ``durability="fsync"``, fsynced).
Those limits, ``log_start`` and the catalog belong to the store's
:class:`~logstore.embedded.published.Published`: ``Log.visible_end``, ``log_start``
and ``catalog`` are views of it, so that recovery and the writer set them
where readers look.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Callable

from logstore.embedded import layout
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.derived import EXTRA_INDEXES, DerivedIndex, SegmentPositions, StreamIndex
from logstore.embedded.fileio import FileIO
from logstore.embedded.msgids import MessageIds
from logstore.embedded.published import Published
from logstore.embedded.record import KIND_RETAIN, Record
from logstore.embedded.segment import Segment, create_segment, open_segment
from logstore.errors import NO_SPACE_ERRNOS, OutOfSpaceError
from logstore.index.catalog import Catalog
from logstore.index.header import HEADER_SIZE
from logstore.index.runs import RunIndex

logger = logging.getLogger("logstore")

OWN_INDEXES = 3
"""``Log.indexes`` starts with the engine's own (positions, streams, message ids), bound to their log."""


def _first(seg: Segment) -> int:
    """The key ``Log.segments`` is sorted by."""
    return seg.first


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
        # The indexes derived from the log (logstore.embedded.derived): the engine's own, then any registered.
        self.streams = StreamIndex(self)
        self.positions = SegmentPositions(self)
        self.msgids = MessageIds(self)  # the message-id index (logstore.embedded.msgids), kept by the writer inline
        self.indexes: list[DerivedIndex] = [
            self.positions,
            self.streams,
            self.msgids,
            *(cls() for cls in EXTRA_INDEXES),
        ]
        self.extra_indexes = self.indexes[OWN_INDEXES:]
        self.generation = 0
        self.in_force: Checkpoint | None = None  # the checkpoint CHECKPOINT holds (as read or last written)
        self.next_goff = 0
        self.ckpt_last_first = 0  # first global offset of the last segment the last checkpoint names
        self.checkpointed_bytes = 0  # log bytes written since the last checkpoint
        self.checkpoint_due = False  # a roll sealed a segment since the last checkpoint: checkpoint it
        self.scan_start = 0  # the first segment recovery walked (sync_scanned makes them durable)

    # -- the published state ---------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        return self.published.catalog

    @property
    def runs(self) -> RunIndex:
        """The run index (:class:`~logstore.embedded.derived.StreamIndex`)."""
        return self.streams.runs

    @property
    def visible_end(self) -> int:
        """Global offsets below it are readable (``Published.visible_end``)."""
        return self.published.visible_end

    @property
    def log_start(self) -> int:
        """Global offsets below it were dropped by retention (``Published.log_start``)."""
        return self.published.log_start

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

    def apply(self, records: list[tuple[int, Record]], ends: list[int] | None = None) -> None:
        """Apply whole transactions read from the log (``(segment index, record)`` pairs) to every index
        and to the log's own limits: recovery's walk past the checkpoint and a follower's catch-up.

        ``records`` is one transaction, or with ``ends`` several, the k-th ending before index ``ends[k]``:
        the engine's own indexes take them in one call (their rules go record by record), each registered
        index one transaction at a time, as its contract says."""
        for ix in self.indexes[:OWN_INDEXES]:
            ix.apply(records)
        if self.extra_indexes:
            if ends is None:
                for ix in self.extra_indexes:
                    ix.apply(records)
            else:
                start = 0
                for end in ends:
                    one = records[start:end]
                    for ix in self.extra_indexes:
                        ix.apply(one)
                    start = end
        for _i, rec in records:
            if rec.kind == KIND_RETAIN:  # the log now starts at its offset field
                self.published.log_start = max(self.log_start, rec.soff)
        self.next_goff = records[-1][1].goff + 1

    # -- creating ----------------------------------------------------------------

    def create(self) -> None:
        """Lay out a new, empty store."""
        for d in (self.seg_dir, self.stream_dir):
            if not self.io.exists(d):
                self.io.mkdir(d)
        self.io.fsync_dir(self.directory)
        self.segments.append(create_segment(self.io, self.seg_dir, self.store_id, 0, self.segment_size))
        self.checkpoint(clean=False)

    def roll(self, first: int, reserve: int = 0) -> Segment:
        """Start a new active segment whose first global offset is ``first`` (writer thread).

        Its file is allocated with at least ``reserve`` bytes (header included; at most ``segment_size``).
        """
        seg = create_segment(self.io, self.seg_dir, self.store_id, first, self.segment_size, reserve)
        self.segments.append(seg)
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
            self.positions.forget(seg.first)
            seg.close()  # a reader holding it gets SegmentRetired and looks again
            self.unlink_segment_files(seg.path)
        self.io.fsync_dir(self.seg_dir)
        return freed

    def unlink_segment_files(self, path: str) -> None:
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
        self.positions.forget(seg.first)
        freed = old.size - seg.size
        old.close()  # a reader holding it gets SegmentRetired and looks again
        shared = self.published.shared
        if shared is not None:  # followers in other processes let go of the old file too
            shared.publish_epoch()
        self.checkpoint(clean=False)
        return freed

    # -- checkpoint --------------------------------------------------------------

    def checkpoint(self, clean: bool) -> None:
        """Make the index files cover the whole log (writer thread; the log must be durable).

        Steps, each durable before the next: (1) each index makes its side
        files durable (new position entries and new large-stream runs are
        appended to their files and fsynced); (2) each index with a
        generation file writes ``<file>.<g+1>`` (the catalog:
        ``catalog.<g+1>``) through a temporary file and a rename; (3) write
        ``CHECKPOINT`` naming generation g+1 through a temporary file and
        rename, fsync the directory; (4) remove the generation files of g.
        A crash before (3) leaves the old checkpoint in force, whose files
        are intact: appends only ever go past the counts it records.
        """
        io = self.io
        created = False
        for ix in self.indexes:
            created |= ix.prepare()
        if created:
            io.fsync_dir(self.seg_dir)
            io.fsync_dir(self.stream_dir)
        generation = self.generation + 1
        for ix in self.indexes:
            if ix.file is not None:
                self._write_atomic(layout.index_path(self.directory, ix.file, generation), ix.encode(generation))
                if ix.companion is not None:
                    path = layout.index_path(self.directory, ix.companion, generation)
                    self._write_atomic(path, ix.encode_companion(generation))
        entries = self.positions.entries
        ckpt = Checkpoint(generation, self.next_goff, entries, clean, self.log_start)
        self.ckpt_last_first = entries[-1].first
        self._write_atomic(layout.checkpoint_path(self.directory), ckpt.encode(self.store_id))
        self.in_force = ckpt
        old = self.generation
        self.generation = generation
        for prefix in self._generation_prefixes():
            path = layout.index_path(self.directory, prefix, old)
            if io.exists(path):
                io.unlink(path)
        self.checkpointed_bytes = 0
        self.checkpoint_due = False
        self.positions.checkpointed()
        shared = self.published.shared
        if shared is not None:  # other processes may now let go of the sealed segments' positions
            shared.publish_generation(generation)

    def sync_scanned(self) -> None:
        """fdatasync the segments that recovery scanned, which a crashed writer may not have synced."""
        for seg in self.segments[self.scan_start :]:
            self.io.fdatasync(seg.fd)

    def mark_unclean(self, ckpt: Checkpoint) -> None:
        """Rewrite the checkpoint without its CLEAN flag before anything new is appended."""
        self._write_atomic(layout.checkpoint_path(self.directory), ckpt._replace(clean=False).encode(self.store_id))

    def unchanged_since_checkpoint(self) -> bool:
        """Whether the checkpoint in force still describes the log and its index files exactly: nothing was
        appended or dropped since, and every index's files are usable (a close then only marks it clean)."""
        ck = self.in_force
        return (
            ck is not None
            and ck.generation == self.generation
            and ck.next_goff == self.next_goff
            and ck.log_start == self.log_start
            and [e.first for e in ck.segments] == [seg.first for seg in self.segments]
            and self.checkpointed_bytes == 0
            and not self.checkpoint_due
            # what a load found missing or unusable (and read otherwise) is written by the next checkpoint
            and not any(ix.stale or ix.notes or ix.rebuilt for ix in self.indexes)
            and not any(seg.positions_rebuilt for seg in self.segments)
            and self._files_in_place(ck)
        )

    def _files_in_place(self, ck: Checkpoint) -> bool:
        """Whether the generation files of ``ck`` and every segment's position file are there (one removed
        by hand while the store was open is written by a checkpoint)."""
        names = set(self.io.listdir(self.directory))
        for prefix in self._generation_prefixes():
            if os.path.basename(layout.index_path(self.directory, prefix, ck.generation)) not in names:
                return False
        return all(self.io.exists(seg.pos_path) for seg in self.segments)

    def mark_clean(self) -> None:
        """Rewrite the checkpoint in force with its CLEAN flag (a close after nothing was appended), instead of
        writing every index again: an index whose load is still deferred is then never read."""
        assert self.in_force is not None
        self.in_force = self.in_force._replace(clean=True)
        self._write_atomic(layout.checkpoint_path(self.directory), self.in_force.encode(self.store_id))

    def remove_stale_generations(self) -> None:
        """Remove the indexes' generation files of other generations (left by a crash during a checkpoint)."""
        for prefix in self._generation_prefixes():
            keep = os.path.basename(layout.index_path(self.directory, prefix, self.generation))
            for name in self.io.listdir(self.directory):
                if name.startswith(prefix + ".") and name != keep:
                    self.io.unlink(os.path.join(self.directory, name))

    def _generation_prefixes(self) -> list[str]:
        """The prefix of every generation file the indexes write (``<prefix>.<generation>``), companions too."""
        out = []
        for ix in self.indexes:
            if ix.file is not None:
                out.append(ix.file)
                if ix.companion is not None:
                    out.append(ix.companion)
        return out

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

    def append_file(
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

    def close(self) -> None:
        for ix in self.indexes:
            ix.release()  # the files of a load still deferred
        segments, self.segments = self.segments, []
        for seg in segments:
            seg.close()
