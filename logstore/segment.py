"""Segment files.

A segment is ``segments/<first global offset, 20 digits>.log``, starting with
the common 64-byte header (magic ``b"LGSEGMNT"``; a = first global offset,
b = capacity in bytes: the most the file may grow to, c = creation time in ns
since the epoch) followed by records, back to back, in the format of
:mod:`logstore.record`.

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
import struct
import threading
import time
from typing import Any

import numpy as np
import xxhash

from logstore.envelope import Envelope, decode
from logstore.errors import NO_SPACE_ERRNOS, CorruptionError, OutOfSpaceError, as_corruption
from logstore.fileio import FileIO
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE, SegmentHeader
from logstore.index.position import PositionIndex
from logstore.layout import TMP, position_name, segment_name
from logstore.record import (
    CHECKSUM,
    KIND_LOST,
    KIND_MESSAGE,
    KIND_NAMES,
    KIND_REMOVED,
    RECORD_HEADER,
    RECORD_OVERHEAD,
    BadRecord,
    parse_record,
)

RESERVE_FIRST = 1 << 20
"""Bytes a new segment file is allocated with (1 MiB, or its capacity if smaller), header included."""
RESERVE_STEP_MAX = 16 << 20
"""The largest step by which a segment's reservation grows (16 MiB): steps double from 1 MiB up to it."""

logger = logging.getLogger("logstore")

_xxh = xxhash.xxh3_64_intdigest
_hdr_unpack = RECORD_HEADER.unpack_from
_sum_unpack = CHECKSUM.unpack_from

# Batch reads of at least this many records check the record headers with numpy (Segment._read_batch).
_BATCH_MIN = 32
# RECORD_HEADER's fields as a numpy record, to read many headers at once.
_HEADER_DTYPE = np.dtype(
    [
        ("length", "<u4"),
        ("kind", "u1"),
        ("flags", "u1"),
        ("nlen", "<u2"),
        ("sid", "<u4"),
        ("soff", "<u8"),
        ("goff", "<u8"),
    ]
)
assert _HEADER_DTYPE.itemsize == RECORD_HEADER.size
_HEADER_BYTES = np.arange(RECORD_HEADER.size)
_SUM_BYTES = np.arange(CHECKSUM.size)


class SegmentRetired(Exception):
    """The segment was closed under a read: the store closed, or compaction or retention replaced it."""


def _as_bad_record(exc: BadRecord | struct.error, position: int, size: int) -> BadRecord:
    """``exc``; or for a record header unpacked past the mapping (an index entry past the records), a BadRecord."""
    return exc if isinstance(exc, BadRecord) else BadRecord(min(position, size), f"index points past it: {position}")


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
        self.named: set[int] = set()
        self._positions: PositionIndex | None = PositionIndex(first)
        self._lazy: tuple[int, int] | None = None  # (count, checksum) of a position file not yet loaded
        self._lazy_lock = threading.Lock()
        self.closed = False
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
            return self.rebuild_positions(count)

    def rebuild_positions(self, count: int) -> PositionIndex:
        index = PositionIndex(self.first)
        position = HEADER_SIZE
        found = []
        for i in range(count):
            try:
                rec = parse_record(self.view, position, self.size)
            except BadRecord as bad:
                raise CorruptionError(self.path, bad.position, bad.what, "run logstore repair") from None
            if rec.goff != self.first + i:
                raise CorruptionError(self.path, position, f"global offset {rec.goff}, expected {self.first + i}")
            found.append(position)
            position += rec.length
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

    def _read_batch(self, goff: int, stop: int, out: list[Envelope], sid: int = -1, soff: int = 0) -> Any:
        """Append the envelopes of ``goff`` .. ``stop - 1`` if they are all plain, intact messages.

        The fast path of :meth:`read_many` and :meth:`read_global` for long
        reads: every record header is checked at once with numpy (global
        offsets, stream ids and offsets when ``sid >= 0``, kinds, lengths,
        records end to end), then each record's checksum is verified and its
        envelope decoded. Returns the record headers (a numpy record array of
        ``_HEADER_DTYPE``, a copy), or None, with nothing appended, when anything
        is unusual (another record kind, damage, a mapping going away): the
        record-by-record path then reads the same records and says precisely
        what is wrong.
        """
        mm = self.mm
        arr, n = self.positions.positions.state
        i = goff - self.first
        if mm is None or i < 0 or stop - self.first > n:
            return None
        had = len(out)
        try:
            raw = np.frombuffer(mm, np.uint8)
            starts = arr[i : i + stop - goff].astype(np.int64)
            h = raw[starts[:, None] + _HEADER_BYTES].view(_HEADER_DTYPE)[:, 0]
            length = h["length"].astype(np.int64)
            nlen = h["nlen"].astype(np.int64)
            ends = starts + length - CHECKSUM.size
            count = stop - goff
            ok = (
                bool((h["kind"] == KIND_MESSAGE).all())
                and bool((length >= RECORD_OVERHEAD + nlen).all())
                and int(ends[-1]) + CHECKSUM.size <= self.size
                and bool((ends[:-1] + CHECKSUM.size == starts[1:]).all())
                and bool((h["goff"] == np.arange(goff, stop, dtype=np.uint64)).all())
            )
            if ok and sid >= 0:
                ok = bool((h["sid"] == sid).all()) and bool(
                    (h["soff"] == np.arange(soff, soff + count, dtype=np.uint64)).all()
                )
            if not ok:
                return None
            sums = raw[ends[:, None] + _SUM_BYTES].view("<u8")[:, 0].tolist()
            payloads = (starts + RECORD_HEADER.size + nlen).tolist()
            buf = self.view
            append = out.append
            for p, a, e, c in zip(starts.tolist(), payloads, ends.tolist(), sums, strict=True):
                if _xxh(buf[p:e]) != c:
                    del out[had:]
                    return None
                append(decode(buf[a:e]))
        except (ValueError, TypeError, IndexError, BufferError):
            # A mapping closed or cut under the read, or an envelope that does not decode: the
            # record-by-record path reads it again and reports it.
            del out[had:]
            return None
        return h

    # Long on purpose: the stream read loop (hot path), record kinds handled inline.
    def read_many(self, goff: int, stop: int, out: list[Envelope], sid: int = -1, soff: int = 0) -> list[int] | None:  # noqa: PLR0912
        """Append the envelopes of global offsets ``goff`` .. ``stop - 1`` to ``out``.

        They must all be in this segment; consecutive global offsets are
        consecutive records, so only the first position is looked up. With
        ``sid >= 0`` the records must also be stream ``sid``'s, from offset ``soff`` on;
        REMOVED and LOST records among them are skipped. Returns the stream
        offset of each envelope appended if a record was skipped, else ``None``
        (they are then ``soff``, ``soff + 1``, ...).
        """
        offsets: list[int] | None = None
        buf = self.view
        size = self.size
        append = out.append
        self.io.records_read += stop - goff
        had = len(out)
        position = HEADER_SIZE
        try:
            mm = self.mm
            if mm is not None and mm.size() < size:  # _check_mapped(), inline: one fstat per read
                self._check_mapped()
            if stop - goff >= _BATCH_MIN and self._read_batch(goff, stop, out, sid, soff) is not None:
                return None
            position = self.positions.position(goff)  # may walk the segment: inside the try (closed under us)
            while goff < stop:
                length, kind, _flags, nlen, rsid, rsoff, rgoff = _hdr_unpack(buf, position)
                end = position + length - 8
                if rgoff != goff or end + 8 > size or length < RECORD_OVERHEAD + nlen:
                    raise BadRecord(position, "record header does not match the index")
                if sid >= 0:
                    if rsid != sid or rsoff != soff:
                        raise BadRecord(position, f"record is stream id {rsid} offset {rsoff}, index says {sid}/{soff}")
                    soff += 1
                if _xxh(buf[position:end]) != _sum_unpack(buf, end)[0]:
                    raise BadRecord(position, "record checksum mismatch")
                if kind == KIND_MESSAGE:
                    append(decode(buf[position + 28 + nlen : end]))
                    if offsets is not None:
                        offsets.append(rsoff)
                elif kind in (KIND_REMOVED, KIND_LOST):
                    if offsets is None:  # everything before was handed out, at consecutive offsets
                        offsets = list(range(rsoff - (len(out) - had), rsoff))
                else:
                    raise BadRecord(position, f"a {KIND_NAMES.get(kind, kind)} record where the index has a message")
                position = end + 8
                goff += 1
        except (BadRecord, struct.error) as exc:  # struct.error: an index entry past the mapped records
            bad = _as_bad_record(exc, position, size)
            if len(out) > had:
                return offsets  # hand out what precedes the damage; reading the damaged record raises
            raise CorruptionError(self.path, bad.position, f"global offset {goff}: {bad.what}") from None
        except (ValueError, TypeError) as exc:  # every msgpack decoding error is one of these
            if self.closed:
                raise SegmentRetired(self.path) from None
            if len(out) > had:
                return offsets
            raise CorruptionError(
                self.path, position, f"global offset {goff}: envelope does not decode: {exc}"
            ) from None
        return offsets

    # Long on purpose: the global read loop (hot path, bench W3), record kinds handled inline.
    def read_global(  # noqa: PLR0912
        self, goff: int, stop: int, out: list[Envelope], trimmed: dict[int, int]
    ) -> tuple[int, list[int] | None, Any]:
        """Append the readable envelopes among global offsets ``goff`` .. ``stop - 1``.

        Control records, REMOVED records and messages below their stream's
        first retained offset (``trimmed``: stream id -> first retained offset, for the
        streams where it is above 0) are skipped. Returns the global offset
        after the last record examined (``stop``, or less if damage stopped the
        read after something was read), and the global offsets of the
        envelopes appended if a record was skipped, else ``None`` (they are
        then ``goff``, ``goff + 1``, ...), and the record headers of the
        envelopes appended, one per envelope: a list of ``RECORD_HEADER``
        tuples, or a numpy record array of ``_HEADER_DTYPE`` (fields ``sid``
        and ``soff`` name each one's stream and stream offset). Both are
        made by the read anyway: keeping them costs a list append per record.
        """
        buf = self.view
        size = self.size
        start = goff
        append = out.append
        offs: list[int] | None = None
        headers: list[tuple[int, ...]] = []
        keep = headers.append
        position = HEADER_SIZE
        try:
            mm = self.mm
            if mm is not None and mm.size() < size:  # _check_mapped(), inline: one fstat per read
                self._check_mapped()
            if not trimmed and stop - goff >= _BATCH_MIN:
                batch = self._read_batch(goff, stop, out)
                if batch is not None:
                    return stop, None, batch
            position = self.positions.position(goff)  # may walk the segment: inside the try (closed under us)
            while goff < stop:
                header = _hdr_unpack(buf, position)
                length, kind, _flags, nlen, rsid, rsoff, rgoff = header
                end = position + length - 8
                if rgoff != goff or end + 8 > size or length < RECORD_OVERHEAD + nlen:
                    raise BadRecord(position, "record header does not match the index")
                if _xxh(buf[position:end]) != _sum_unpack(buf, end)[0]:
                    raise BadRecord(position, "record checksum mismatch")
                if kind == KIND_MESSAGE and (not trimmed or rsoff >= trimmed.get(rsid, 0)):
                    append(decode(buf[position + 28 + nlen : end]))
                    keep(header)
                    if offs is not None:
                        offs.append(goff)
                elif kind not in KIND_NAMES:
                    raise BadRecord(position, f"record kind is {kind}")
                elif offs is None:  # skipped; everything before was handed out, at consecutive offsets
                    offs = list(range(start, goff))
                position = end + 8
                goff += 1
        except (BadRecord, struct.error) as exc:  # struct.error: an index entry past the mapped records
            bad = _as_bad_record(exc, position, size)
            if out:
                return goff, offs, headers
            raise CorruptionError(self.path, bad.position, f"global offset {goff}: {bad.what}") from None
        except (ValueError, TypeError) as exc:  # msgpack decoding errors are ValueError or TypeError
            if self.closed:
                raise SegmentRetired(self.path) from None
            if out:
                return goff, offs, headers
            raise CorruptionError(
                self.path, position, f"global offset {goff}: envelope does not decode: {exc}"
            ) from None
        finally:
            self.io.records_read += goff - start
        return goff, offs, headers

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
    fd = io.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
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
                free = io.free_space(directory)
                what = "creating the segment"
                raise OutOfSpaceError(tmp, size, exc.errno, what, free, "segment_size", exc.strerror) from exc
        raise
    seg = Segment(io, path, store_id, first, capacity, fd, size)
    seg.created = created
    return seg
