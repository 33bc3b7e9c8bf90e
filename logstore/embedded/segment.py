"""Segment files.

A segment is ``segments/<first global offset, 20 digits>.log``, starting with
the common 64-byte header (magic ``b"LGSEGMNT"``; a = first global offset,
b = capacity in bytes: the most the file may grow to, c = creation time in ns
since the epoch) followed by records, back to back, in the format of
:mod:`logstore.embedded.record`.

The file's size is anywhere from the end of its records to its capacity: the
bytes past the records are the *reservation*, allocated ahead of the writer
(``posix_fallocate``) and written with zeros, never with a record. A new segment
starts with :data:`RESERVE_FIRST` bytes; :meth:`Segment.reserve` extends the
reservation before any byte is written past it, by steps that double up to
:data:`RESERVE_STEP_MAX`, never past the capacity. So a write inside the
reservation never fails for lack of space, and the disk a store uses follows
what it holds.

The writer thread appends with ``pwrite``; readers use a read-only ``mmap``
of the file, which sees those writes through the page cache. The mapping
covers the reservation; an extension maps the file again (``mmap`` refuses a
length past the end of the file) and leaves the old mapping to the readers
still holding it: its bytes stay valid, since the file only grows.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import time
from typing import Any

from logstore.embedded.fileio import FileIO
from logstore.embedded.layout import TMP, position_name, segment_name
from logstore.embedded.record import BadRecord
from logstore.embedded.walk import (
    Checked,
    Undecodable,
    check_records,
    counted,
    read_gather,
    read_indexed,
    read_selected,
)
from logstore.envelope import Envelope
from logstore.errors import NO_SPACE_ERRNOS, CorruptionError, OutOfSpaceError, as_corruption
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE, SegmentHeader
from logstore.index.position import PositionIndex

RESERVE_FIRST = 1 << 20
"""Bytes a new segment file is allocated with (1 MiB, or its capacity if smaller), header included."""
RESERVE_STEP_MAX = 16 << 20
"""The largest step by which a segment's reservation grows (16 MiB): steps double from 1 MiB up to it."""

logger = logging.getLogger("logstore")


class SegmentRetired(Exception):
    """The segment was closed under a read: the store closed, or compaction or retention replaced it."""


class Segment:
    """One segment file: its header facts, read mapping and position index.

    ``end`` is the byte position after the last record the store holds;
    the writer thread alone advances it. ``named`` (writer only) is the set
    of stream ids already named in this segment.
    """

    def __init__(self, io: FileIO, path: str, store_id: bytes, first: int, capacity: int, fd: int, size: int) -> None:
        self.io = io
        self.path = path
        self.store_id = store_id
        self.first = first
        self.capacity = capacity
        self.fd = fd
        self.size = size  # bytes mapped (the file size, at most the capacity)
        self.mm: mmap.mmap | None = io.mmap_read(fd, size) if size else None
        self.view: memoryview = memoryview(self.mm) if self.mm is not None else memoryview(b"")
        self.end = HEADER_SIZE
        self.created = 0  # header field c: creation time in ns
        # The stream ids some record of this segment named (the writer's, for the active segment): a dict of
        # ints to True rather than a set, since the garbage collector never looks into such a dict, where
        # each of its passes would walk a set of a million ids.
        self.named: dict[int, bool] = {}
        self._positions: PositionIndex | None = PositionIndex(first)
        self._lazy: tuple[int, int] | None = None  # (count, checksum) of a position file not yet loaded
        self._lazy_lock = threading.Lock()
        self.closed = False
        self.positions_rebuilt = False  # its position file was unusable at the first use: a checkpoint rewrites it
        self.writable = True  # False when a read-only open mapped it (another process may be writing)

    @property
    def pos_path(self) -> str:
        """The path of this segment's position file."""
        return os.path.join(os.path.dirname(self.path), position_name(self.first))

    @property
    def count(self) -> int:
        """Number of records in the segment (that the store holds)."""
        lazy = self._lazy  # read once: a checkpoint (writer) or a first use (reader) may change it meanwhile
        if lazy is not None:
            return lazy[0]
        return len(self.positions)

    @property
    def next_goff(self) -> int:
        return self.first + self.count

    def set_lazy_positions(self, count: int, checksum: int) -> None:
        """Drop the in-memory position index; the first use loads the first ``count`` entries from the file."""
        self._lazy = (count, checksum)  # before the index goes: a concurrent reader then loads from the file
        self._positions = None

    @property
    def lazy_positions(self) -> tuple[int, int] | None:
        """``(count, checksum)`` of the position file entries not loaded yet, or ``None`` when they are in memory."""
        return self._lazy

    def use_positions(self, index: PositionIndex) -> None:
        """Hold ``index`` (rebuilt from the segment) as the in-memory position index."""
        self._lazy = None
        self._positions = index

    def reset_positions(self) -> None:
        """Start an empty position index (recovery then applies the segment's records to it)."""
        self.use_positions(PositionIndex(self.first))

    @property
    def positions(self) -> PositionIndex:
        pos = self._positions
        if pos is not None:
            return pos
        with self._lazy_lock:
            if self._positions is None:
                self._positions = self._load_positions()
                self._lazy = None
            return self._positions

    def _load_positions(self) -> PositionIndex:
        assert self._lazy is not None
        count, checksum = self._lazy
        path = self.pos_path
        try:
            buf = self.io.read_file(path)
            with as_corruption(path, versions_only=True):
                return PositionIndex.decode(buf, self.store_id, self.first, count, checksum)
        except (OSError, FormatError) as exc:
            if not self.writable:
                # A read-only opener's segment: a writer process compacted it (or retention dropped it)
                # since the checkpoint this open read, and replaced or removed the file. This mapping
                # still holds the bytes that the count and checksum describe: read them.
                logger.info("%s: position index replaced by the writer (%s); read from the segment", path, exc)
                return self.rebuild_positions(count)
            # Derived data: rebuild it from the segment itself; the next checkpoint rewrites the file.
            # A reader that mapped this segment before a compaction swapped it meets the new file's
            # positions here: normal, hence INFO.
            logger.info("%s: position index unusable (%s); rebuilt from the segment", path, exc)
            self.positions_rebuilt = True
            return self.rebuild_positions(count)

    def rebuild_positions(self, count: int) -> PositionIndex:
        """The position index of the first ``count`` records, walked from the segment itself; sets ``end``."""
        index = PositionIndex(self.first)
        found = []
        position = HEADER_SIZE
        for rec in counted(self.view, HEADER_SIZE, self.size, count, self.path, self.first, fd=self.fd):
            found.append(rec.position)
            position = rec.position + rec.length
        self.io.records_read += count
        index.positions.extend(found)
        self.end = position
        return index

    def reserve(self, need: int) -> None:
        """Make the file (and its mapping) reach at least byte ``need``, at most the capacity (writer only).

        The one place a segment file grows. The new size is ``need`` or one
        step past the current size, whichever is more: the step is the
        current size (doubling), between :data:`RESERVE_FIRST` and
        :data:`RESERVE_STEP_MAX`. If the file system has no room for a
        whole step, the exact need is tried before giving up with
        :class:`OutOfSpaceError`; then nothing changed that the store uses
        (a partly allocated range past ``size`` is reserved again later).

        Crash safety: the new bytes are zeros and hold no record, and they
        are synced with the new file size before any record goes there. A
        crash before that leaves the old size or a larger one, all zeros
        (or holes) past the records: both are files recovery reads as they
        are.
        """
        if need <= self.size:
            return
        if need > self.capacity:
            raise AssertionError(f"{self.path}: reservation to byte {need} past the capacity {self.capacity}")
        step = min(max(self.size, RESERVE_FIRST), RESERVE_STEP_MAX)
        target = min(self.capacity, max(need, self.size + step))
        self.remap(extend_file(self.io, self.fd, self.path, self.size, target, need, self.capacity))

    def remap(self, size: int) -> None:
        """Map the first ``size`` bytes of the file (which is at least that long) in place of the old mapping.

        Readers take ``view`` (or ``mm``) before ``size``, and the writer
        maps before it publishes anything past the old size, so a reader
        that found a record published holds a mapping that covers it. The
        old mapping is not closed: a reader may still hold it, and it goes
        when the last one lets go.
        """
        mm = self.io.mmap_read(self.fd, size)
        self.mm = mm
        self.view = memoryview(mm)
        self.size = size

    def _check_mapped(self) -> None:
        """Raise :class:`BadRecord` if the file is now shorter than its mapping (cut under the store).

        Reading a mapped page past the end of its file kills the process with
        SIGBUS; this turns a cut made before the read into ``CorruptionError``.
        (A closed mapping raises ``ValueError``, which the callers treat as retired.)
        """
        if self.mm is not None:
            now = self.mm.size()
            if now < self.size:
                raise BadRecord(now, f"segment file is {now} bytes, {self.size} are mapped: cut under the store")

    def read(
        self,
        goff: int,
        stop: int,
        out: list[Envelope],
        sid: int = -1,
        soff: int = 0,
        trimmed: dict[int, int] | None = None,
    ) -> tuple[int, list[int] | None, Any]:
        """Append the readable envelopes among global offsets ``goff`` .. ``stop - 1`` to ``out``.

        The one read of both readers: :func:`logstore.embedded.walk.read_indexed` on
        this segment (a stream's read with ``sid >= 0`` from its offset
        ``soff``, a global read with ``trimmed``; see there for what each
        skips and returns). Returns the global offset after the last record
        examined, the global offsets of the envelopes appended if a record
        was skipped (else ``None``) and their record headers. Damage after
        something was appended ends the read there (reading the damaged
        record again raises); damage before raises :class:`CorruptionError`
        naming the segment file, the byte and the global offset. A segment
        closed under the read raises :class:`SegmentRetired`.
        """
        buf = self.view  # before the size: the view then covers at least that many bytes
        size = self.size
        try:
            mm = self.mm
            if mm is not None and mm.size() < size:  # _check_mapped(), inline: one fstat per read
                self._check_mapped()
            positions = self.positions  # may walk the segment: inside the try (closed under us)
        except BadRecord as exc:
            raise CorruptionError(self.path, exc.position, f"global offset {goff}: {exc.what}") from None
        except OSError:
            if self.closed:  # its descriptor closed under the read (the store closed, or a swap)
                raise SegmentRetired(self.path) from None
            raise
        except (ValueError, TypeError) as exc:
            if self.closed:
                raise SegmentRetired(self.path) from None
            raise CorruptionError(
                self.path, HEADER_SIZE, f"global offset {goff}: envelope does not decode: {exc}"
            ) from None
        had = len(out)
        nxt, offs, headers, bad = read_indexed(mm, buf, size, positions, goff, stop, out, sid, soff, trimmed)
        self.io.records_read += nxt - goff
        if bad is not None:
            if type(bad) is Undecodable and self.closed:
                raise SegmentRetired(self.path)
            if len(out) == had:
                raise CorruptionError(self.path, bad.position, f"global offset {nxt}: {bad.what}")
        return nxt, offs, headers

    def check(self, goff: int, stop: int) -> Checked | None:
        """The records of global offsets ``goff`` .. ``stop - 1``, copied and checked, not decoded, if they
        are all plain, intact messages (:func:`logstore.embedded.walk.check_records`): a global read's fast
        path. None for anything else, including damage and a segment closed under the read: :meth:`read`
        then reads them and says what is wrong.
        """
        buf = self.view  # before the size: the view then covers at least that many bytes
        size = self.size
        try:
            mm = self.mm
            if mm is None:
                return None
            if mm.size() < size:  # _check_mapped(), inline: one fstat per read
                return None
            positions = self.positions  # may walk the segment: inside the try (closed under us)
        except (BadRecord, OSError, ValueError, TypeError):
            return None
        checked = check_records(buf, size, positions, goff, stop, self.path)
        if checked is not None:
            self.io.records_read += stop - goff
        return checked

    def select(
        self,
        goffs: Any,
        out: list[Envelope],
        trimmed: dict[int, int] | None,
        types: frozenset[bytes] | None = None,
        names: frozenset[str] | None = None,
    ) -> tuple[list[int], list[tuple[int, ...]], int]:
        """Append the readable envelopes at global offsets ``goffs`` (ascending, in this segment) to ``out``:
        :func:`logstore.embedded.walk.read_selected` (see there for what it skips).

        Returns their global offsets, their record headers and how many of ``goffs`` were examined
        (all of them, unless damage after something was appended ended the read: reading the damaged
        record again raises). Damage before anything was appended raises :class:`CorruptionError`
        naming the segment file, the byte and the global offset; a segment closed under the read
        raises :class:`SegmentRetired`.
        """
        buf = self.view  # before the size: the view then covers at least that many bytes
        size = self.size
        try:
            mm = self.mm
            if mm is not None and mm.size() < size:
                self._check_mapped()
            positions = self.positions
        except BadRecord as exc:
            raise CorruptionError(self.path, exc.position, exc.what) from None
        except (OSError, ValueError, TypeError):
            if self.closed:
                raise SegmentRetired(self.path) from None
            raise
        had = len(out)
        offs, headers, examined, bad = read_selected(mm, buf, size, positions, goffs, out, trimmed, types, names)
        self.io.records_read += examined
        if bad is not None:
            if type(bad) is Undecodable and self.closed:
                raise SegmentRetired(self.path)
            if len(out) == had:
                raise CorruptionError(self.path, bad.position, bad.what)
        return offs, headers, examined

    def gather(
        self, goff: int, stop: int, out: list[Envelope], sid: int, soff: int, count: int, gap: int
    ) -> tuple[list[int], list[int], int, int] | None:
        """Stream ``sid``'s envelopes from its offset ``soff`` at global ``goff``, over several of its runs:
        :func:`logstore.walk.read_gather` on this segment (see there for the arguments and what it returns).

        None (nothing appended) when the read met anything unusual, damage included: the caller
        then reads run by run with :meth:`read`, which raises what is wrong. A segment closed under
        the read raises :class:`SegmentRetired`.
        """
        buf = self.view  # before the size: the view then covers at least that many bytes
        size = self.size
        try:
            mm = self.mm
            if mm is not None and mm.size() < size:
                return None  # cut under the store: read() says so
            got = read_gather(mm, buf, size, self.positions, goff, stop, out, sid, soff, count, gap)
        except (BadRecord, OSError, ValueError, TypeError):
            got = None
        if got is None:
            if self.closed:
                raise SegmentRetired(self.path)
        else:
            self.io.records_read += got[3] - goff
        return got

    def close(self) -> None:
        """Release the mapping and the descriptor; closing twice does nothing."""
        if self.closed:
            return
        self.closed = True
        self.view.release()
        if self.mm is not None:
            with contextlib.suppress(BufferError):  # a reader still holds a slice; the mapping goes with it
                self.mm.close()
        self.io.close(self.fd)


def read_segment_header(io: FileIO, path: str, fd: int) -> SegmentHeader:
    raw = io.pread(fd, HEADER_SIZE, 0)
    with as_corruption(path, "segment header: ", "run logstore repair"):
        return SegmentHeader.decode(raw)


def open_segment(io: FileIO, path: str, store_id: bytes, writable: bool) -> Segment:
    fd = io.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        header = read_segment_header(io, path, fd)
        if header.store_id != store_id:
            raise CorruptionError(path, 16, "segment belongs to another store (store id differs)")
        expected = segment_name(header.first)
        if os.path.basename(path) != expected:
            raise CorruptionError(path, 32, f"header says first global offset {header.first}, file name disagrees")
        size = min(io.size(fd), header.capacity)
        seg = Segment(io, path, store_id, header.first, header.capacity, fd, size)
        seg.created = header.created
        seg.writable = writable
        return seg
    except BaseException:
        io.close(fd)
        raise


def extend_file(io: FileIO, fd: int, path: str, size: int, target: int, need: int, capacity: int) -> int:
    """Reserve bytes ``size`` .. ``target`` of the segment file ``fd`` (at ``path``); returns the new file size.

    Every allocation of segment space goes through here (creation and
    :meth:`Segment.reserve`). Two steps, PostgreSQL's way with its WAL:
    ``posix_fallocate`` takes the blocks, so a full file system fails here
    and never in a later write; then the range is written with zeros and
    ``fdatasync``-ed, so that commits write and sync into blocks already
    written (an unwritten extent costs a journal commit per sync when a
    write converts it). When the file system has no room for the whole
    range, the range up to ``need`` is tried; if that fails too,
    :class:`OutOfSpaceError` names the file, the bytes asked for and
    ``segment_size``, the option that bounds a segment's reservation.
    """
    end = _allocate(io, fd, path, size, target, need, capacity)
    zero = _ZEROS
    p = size
    while p < end:
        n = min(len(zero), end - p)
        io.pwrite(fd, zero if n == len(zero) else zero[:n], p)
        p += n
    io.fdatasync(fd)
    return end


_ZEROS = bytes(1 << 20)


def _allocate(io: FileIO, fd: int, path: str, size: int, target: int, need: int, capacity: int) -> int:
    """``posix_fallocate`` of ``size`` .. ``target``, else of ``size`` .. ``need``; the end allocated."""
    err: int = 0
    text: str | None = None
    for end in (target, need) if size < need < target else (target,):
        try:
            io.fallocate(fd, size, end - size)
            return end
        except OSError as exc:
            if exc.errno not in NO_SPACE_ERRNOS:
                raise
            err, text = exc.errno, exc.strerror
    what = "creating the segment" if size == 0 else f"extending the segment from {size} bytes"
    raise OutOfSpaceError(
        path,
        need - size,
        err,
        f"{what} (its reservation grows by steps of up to {RESERVE_STEP_MAX} bytes, "
        f"up to its capacity of {capacity} bytes)",
        io.free_space(os.path.dirname(path)),
        "segment_size",
        text,
    ) from None


def create_segment(io: FileIO, directory: str, store_id: bytes, first: int, capacity: int, reserve: int = 0) -> Segment:
    """Create a segment crash-safely: temporary file, allocate, header, fsync, rename, fsync directory.

    The file is allocated with :data:`RESERVE_FIRST` bytes, or ``reserve``
    if more (at most ``capacity``); its header's capacity is ``capacity``.
    A failed creation removes the temporary file (a crash leaves it for the
    next open to remove).
    """
    path = os.path.join(directory, segment_name(first))
    tmp = path + TMP
    if io.exists(tmp):
        io.unlink(tmp)
    size = min(capacity, max(RESERVE_FIRST, reserve))
    try:
        fd = io.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    except OSError as exc:  # no room for the file's name (its directory entry or inode)
        if exc.errno in NO_SPACE_ERRNOS:
            raise _no_room_for_segment(io, directory, tmp, size, exc) from exc
        raise
    renamed = False
    try:
        extend_file(io, fd, tmp, 0, size, size, capacity)  # need == target: it is that size or raises
        created = time.time_ns()
        io.pwrite(fd, SegmentHeader(store_id, first, capacity, created).encode(), 0)
        io.fsync(fd)
        io.rename(tmp, path)
        renamed = True
        io.fsync_dir(directory)
    except BaseException as exc:
        io.close(fd)
        # Before the rename nothing but the temporary file exists, so an OutOfSpaceError from here
        # means the segment was never created (callers rely on that to go on without it).
        if isinstance(exc, OSError) and not renamed:  # out of space (or another error): give its space back now
            with contextlib.suppress(OSError):
                if io.exists(tmp):
                    io.unlink(tmp)
            if exc.errno in NO_SPACE_ERRNOS and not isinstance(exc, OutOfSpaceError):
                raise _no_room_for_segment(io, directory, tmp, size, exc) from exc
        raise
    seg = Segment(io, path, store_id, first, capacity, fd, size)
    seg.created = created
    return seg


def _no_room_for_segment(io: FileIO, directory: str, tmp: str, size: int, exc: OSError) -> OutOfSpaceError:
    """The :class:`OutOfSpaceError` of a segment creation that found no room (nothing was created)."""
    free = io.free_space(directory)
    return OutOfSpaceError(tmp, size, exc.errno or 0, "creating the segment", free, "segment_size", exc.strerror)
