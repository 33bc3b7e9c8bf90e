"""The record walker: the one way the engine and its tools go through a segment's records.

:func:`walk` goes through the bytes of a segment from a record position and
yields each valid record (:class:`~logstore.embedded.record.Record`, checksum
checked) or, where the bytes are not a record, a :class:`Damage` that says
where it starts, where it ends and what is wrong. Recovery, ``verify``,
``repair``, ``dump``, compaction and the rebuild of a segment's positions walk
records with it, each with its own judgement of what it sees: the walker
parses and resynchronises, it does not decide whether a record belongs
where it is. Who uses what:

- :func:`walk` with ``resync``: ``verify`` (which reports each damage and
  stops a segment's walk at a record length of 0 followed by non-zero bytes,
  where a live writer may be writing) and ``repair`` (whose damage list is
  the walker's :class:`Damage`); without: ``dump`` (``inspect.py``, from the
  position the index gives, up to the records it needs) and compaction's
  walk of the active segment's published records; recovery (``log.py``).
- :func:`counted`: the walk of a segment's first ``count`` records, which
  must all be there: the rebuild of a segment's position index
  (``Segment.rebuild_positions``) and compaction's walks of sealed segments.
  Damage raises :class:`~logstore.errors.CorruptionError`.
- :func:`read_indexed`: the readers' one read of records whose positions
  the index gives (``Segment.read``, called by the stream and the global
  reader alike), the hot path of every ``next()``: it trusts the index for
  where records start and checks each one's header against it, and its
  checksum, without a generator per record; reads of 32 records or more
  check all headers at once with numpy.
- :func:`check_records`: a global reader's long reads of plain messages,
  checked like :func:`read_indexed`'s on a copy of their bytes and decoded
  later, a few at a time (:class:`Checked`).

Where the records end a record length of 0 follows (the never-written
reservation, or zeros): the walk ends there if every byte after it up to
``end`` is zero, and otherwise reports the non-zero bytes as damage.
Given the segment's file descriptor, the search for non-zero bytes and for
the next record skips the file's holes (``SEEK_DATA``), so its cost follows
what was written, not the segment's size.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from typing import Any, NamedTuple

import msgpack
import numpy as np
import xxhash

from logstore.embedded.record import (
    CHECKSUM,
    KIND_LOST,
    KIND_MESSAGE,
    KIND_NAMES,
    KIND_REMOVED,
    RECORD_HEADER,
    RECORD_OVERHEAD,
    BadRecord,
    Record,
    parse_record,
)
from logstore.envelope import Envelope, decode, peek_type, type_key
from logstore.errors import CorruptionError
from logstore.index.position import PositionIndex


class Damage(NamedTuple):
    """Bytes ``position`` .. ``end`` of a segment that are not records, and why.

    ``end`` is where the next valid record starts, or (when none follows)
    one past the last non-zero byte. ``zero`` says the damage begins with a
    record length of 0: zeros inside the records, or non-zero bytes after
    their end.
    """

    position: int
    end: int
    what: str
    zero: bool = False


def walk(
    buf: Any,
    start: int,
    end: int,
    *,
    fd: int | None = None,
    resync: bool = False,
    stop: int | None = None,
    tail: bool = True,
) -> Iterator[Record | Damage]:
    """Yield the records of ``buf[start:end]`` in order, and :class:`Damage` where there is none.

    Without ``resync`` the walk ends after the first damage; with it, it
    goes on at the next valid record (found by :func:`find_next_record`).
    It ends, with nothing more yielded, where the records end and only zeros
    follow, or at byte ``stop`` (a position known to end a record) without
    looking past it. ``fd`` is the file ``buf`` maps: its holes are then not
    searched. With ``tail=False`` a record length of 0 ends the walk without
    a search for non-zero bytes after it (recovery after a clean close, whose
    checkpoint says where the records end). The caller may stop iterating at
    any record.
    """
    pos = start
    limit = end if stop is None else stop
    while pos < limit:
        try:
            rec = parse_record(buf, pos, end)
        except BadRecord as bad:
            if bad.zero and not tail:
                return
            damage, resume = _damage(buf, bad, pos, end, fd, resync)
            if damage is None:
                return
            yield damage
            if resume < 0:
                return
            pos = resume
            continue
        yield rec
        pos += rec.length


def _damage(buf: Any, bad: BadRecord, pos: int, end: int, fd: int | None, resync: bool) -> tuple[Damage | None, int]:
    """What the walk reports for the bad record at ``pos`` (``None`` if only zeros follow: the records
    end), and where it resumes (-1: it ends)."""
    nz = last_nonzero(buf, pos, end) if fd is None else last_nonzero_in_file(buf, fd, pos, end)
    if bad.zero and nz <= pos:
        return None, -1
    nxt = -1
    if resync:
        nxt = find_next_record(buf, pos + 1, end) if fd is None else find_next_record_in_file(buf, fd, pos + 1, end)
    if bad.zero:
        if nxt >= 0:
            return Damage(pos, nxt, "zeroed bytes inside the records", zero=True), nxt
        return Damage(pos, nz, f"non-zero bytes up to byte {nz} after the last record", zero=True), -1
    return Damage(pos, nxt if nxt >= 0 else max(nz, pos + 1), bad.what), nxt


def record_at(buf: Any, pos: int, end: int) -> Record | None:
    """The whole record at ``pos``, or ``None`` if the bytes there are not one (yet)."""
    try:
        return parse_record(buf, pos, end)
    except BadRecord:
        return None


def find_next_record(buf: Any, start: int, end: int, limit: int | None = None) -> int:
    """The position of the first valid record at or after ``start``, or -1.

    Candidates are found with numpy (a record has a kind from 1 to 6 at
    byte 4), then checked in full; used to resynchronise after damage.
    With ``limit``, only positions before it are candidates (a record found
    may still extend up to ``end``).
    """
    if end - start < RECORD_OVERHEAD:
        return -1
    chunk = 1 << 20
    pos = start
    below = end if limit is None else min(limit, end)
    while pos + RECORD_OVERHEAD <= end and pos < below:
        stop = min(end, pos + chunk + RECORD_OVERHEAD, below + RECORD_OVERHEAD)
        arr = np.frombuffer(buf, dtype=np.uint8, count=stop - pos, offset=pos)
        if len(arr) <= 4:
            break
        kinds = arr[4:]
        candidates = np.flatnonzero((kinds >= KIND_MESSAGE) & (kinds <= KIND_LOST))
        for c in candidates.tolist():
            p = pos + c
            if p >= pos + chunk or p >= below:
                break
            try:
                parse_record(buf, p, end)
            except BadRecord:
                continue
            return p
        pos += chunk
    return -1


def last_nonzero(buf: Any, start: int, end: int) -> int:
    """One past the last non-zero byte in ``buf[start:end]``, or ``start`` if all are zero.

    ``buf`` may be the mapping of a segment that another process is writing:
    numpy's ``flatnonzero`` counts the non-zero bytes, then collects them,
    and raises ``RuntimeError`` if the count changed in between. A chunk
    that changes is searched again in a private copy, so the answer is
    what the bytes held at one moment, and no error.
    """
    chunk = 1 << 22
    hi = end
    while hi > start:
        lo = max(start, hi - chunk)
        arr = np.frombuffer(buf, dtype=np.uint8, count=hi - lo, offset=lo)
        try:
            nz = np.flatnonzero(arr)
        except RuntimeError:  # written meanwhile (a live writer): look at a copy
            nz = np.flatnonzero(arr.copy())
        if len(nz):
            return lo + int(nz[-1]) + 1
        hi = lo
    return start


def data_regions(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The ranges of ``[start, end)`` of the file ``fd`` that may hold non-zero bytes, in order.

    Everything but the file's holes (``SEEK_DATA``/``SEEK_HOLE``): a hole
    reads as zeros, so a search for non-zero bytes or records may skip it.
    On Linux the never-written reservation of a segment (an unwritten
    extent) is a hole unless the page cache holds pages of it, which count
    as data; a file system that does not report holes gives the whole range.
    """
    regions: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            lo = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from pos to the end of the file
                break
            regions.append((pos, end))  # no hole reporting: search everything
            break
        if lo >= end:
            break
        try:
            hi = min(end, os.lseek(fd, lo, os.SEEK_HOLE))
        except OSError:
            hi = end
        if hi <= lo:  # the file changed under us (or a broken report): search the rest
            regions.append((lo, end))
            break
        regions.append((lo, hi))
        pos = hi
    return regions


def last_nonzero_in_file(buf: Any, fd: int, start: int, end: int) -> int:
    """:func:`last_nonzero` of ``buf`` (the mapping of file ``fd``), looking only at the file's data.

    The same answer, without reading the holes of a segment's reservation:
    the cost follows what was written, not the segment's size.
    """
    for lo, hi in reversed(data_regions(fd, start, end)):
        nz = last_nonzero(buf, lo, hi)
        if nz > lo:
            return nz
    return start


def find_next_record_in_file(buf: Any, fd: int, start: int, end: int) -> int:
    """:func:`find_next_record` of ``buf`` (the mapping of file ``fd``), looking only at the file's data.

    A valid record has a non-zero length in its header, so it starts less
    than a header's size before some data region (or inside one): the
    candidates are those positions; a record may extend past its region.
    """
    for lo, hi in data_regions(fd, max(start, 0), end):
        q = find_next_record(buf, max(start, lo - RECORD_HEADER.size + 1), end, hi)
        if q >= 0:
            return q
    return -1


def counted(
    buf: Any, start: int, end: int, count: int, path: str, first: int, *, fd: int | None = None
) -> Iterator[Record]:
    """The ``count`` records of ``buf`` from byte ``start``, of global offsets ``first`` .. ``first + count - 1``.

    For a segment whose records the store already counted (a sealed
    segment, a position index to rebuild): the walk stops after the
    ``count``-th record without looking past it. Damage, a global offset out
    of order, or records that end before ``count`` raise
    :class:`~logstore.errors.CorruptionError` naming ``path`` and the byte.
    """
    if count <= 0:
        return
    i = 0
    position = start
    for item in walk(buf, start, end, fd=fd):
        if isinstance(item, Damage):
            raise CorruptionError(path, item.position, f"global offset {first + i}: {item.what}", "run logstore repair")
        if item.goff != first + i:
            raise CorruptionError(path, item.position, f"global offset {item.goff}, expected {first + i}")
        yield item
        i += 1
        position = item.position + item.length
        if i == count:
            return
    what = f"global offset {first + i}: the records end here (record length 0), {count} were expected"
    raise CorruptionError(path, position, what, "run logstore repair")


# -- indexed reads: the readers' hot path ------------------------------------------------------------

_xxh = xxhash.xxh3_64_intdigest
_hdr_unpack = RECORD_HEADER.unpack_from
_len_unpack = struct.Struct("<I").unpack_from  # a record's length: its header's first field
_sum_unpack = CHECKSUM.unpack_from

BATCH_MIN = 32
"""Reads of at least this many records check the record headers with numpy first (:func:`read_indexed`)."""
# RECORD_HEADER's fields as a numpy record, to read many headers at once.
HEADER_DTYPE = np.dtype(
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
assert HEADER_DTYPE.itemsize == RECORD_HEADER.size
_KINDS = np.array(sorted(KIND_NAMES), np.uint8)  # every valid record kind
# The record kinds a read may skip: a stream's REMOVED and LOST records; in global order every kind
# (messages below their stream's first retained offset, the rest always).
_SKIP_STREAM = frozenset((KIND_REMOVED, KIND_LOST))
_SKIP_GLOBAL = frozenset(KIND_NAMES)
_MESSAGE_KINDS = frozenset((KIND_MESSAGE, KIND_REMOVED, KIND_LOST))  # the records that hold a stream offset


class Undecodable(BadRecord):
    """A whole record whose envelope does not decode (or a mapping released under the read)."""


# Long on purpose: the one record loop of every read (hot path, bench W3), record kinds handled inline.
def read_indexed(  # noqa: PLR0912
    mm: Any,
    buf: Any,
    size: int,
    positions: PositionIndex,
    goff: int,
    stop: int,
    out: list[Envelope],
    sid: int = -1,
    soff: int = 0,
    trimmed: dict[int, int] | None = None,
) -> tuple[int, list[int] | None, Any, BadRecord | None]:
    """Append the readable envelopes among global offsets ``goff`` .. ``stop - 1`` of a segment to ``out``.

    ``buf`` is the segment's mapping ``mm`` (as a memoryview), of which
    ``size`` bytes are mapped; ``positions`` its position index, which
    gives where the record of ``goff`` starts: consecutive global offsets
    are consecutive records. Every record's header must match the index
    and its checksum its bytes. In stream order (``sid >= 0``) the records
    must also be stream ``sid``'s, from stream offset ``soff`` on; its
    REMOVED and LOST records are skipped, any other kind of record is
    damage. In global order (``sid < 0``) control records, REMOVED and LOST
    records and messages below their stream's first retained offset
    (``trimmed``: stream id -> first retained offset, where it is above 0)
    are skipped.

    Returns the global offset after the last record examined (``stop``,
    unless damage stopped the read), the global offsets of the envelopes
    appended if a record was skipped, else ``None`` (they are then ``goff``,
    ``goff + 1``, ...), the record headers of the envelopes appended (a list
    of ``RECORD_HEADER`` tuples, or a numpy record array of
    :data:`HEADER_DTYPE`), and the damage that stopped the read, if any:
    a :class:`~logstore.embedded.record.BadRecord`, :class:`Undecodable` for an
    envelope that does not decode. Reads of :data:`BATCH_MIN` records or
    more with nothing trimmed check all headers at once with numpy; anything
    unusual there sends them through the record-by-record loop, which says
    precisely what is wrong, and where.
    """
    if stop - goff >= BATCH_MIN and not trimmed and mm is not None:
        arr, n = positions.positions.state
        i = goff - positions.first
        if i >= 0 and stop - positions.first <= n:
            batch = _read_batch(mm, buf, size, arr[i : i + stop - goff], goff, stop, out, sid, soff)
            if batch is not None:
                return stop, None, batch, None
    start = goff
    append = out.append
    offs: list[int] | None = None
    headers: list[tuple[int, ...]] = []
    keep = headers.append
    skip = _SKIP_STREAM if sid >= 0 else _SKIP_GLOBAL
    position = positions.position(goff)
    try:
        while goff < stop:
            header = _hdr_unpack(buf, position)
            length, kind, _flags, nlen, rsid, rsoff, rgoff = header
            end = position + length - 8
            if rgoff != goff or end + 8 > size or length < RECORD_OVERHEAD + nlen:
                raise BadRecord(position, "record header does not match the index")
            if sid >= 0:
                if rsid != sid or rsoff != soff:
                    raise BadRecord(position, f"record is stream id {rsid} offset {rsoff}, index says {sid}/{soff}")
                soff += 1
            if _xxh(buf[position:end]) != _sum_unpack(buf, end)[0]:
                raise BadRecord(position, "record checksum mismatch")
            if kind == KIND_MESSAGE and (not trimmed or rsoff >= trimmed.get(rsid, 0)):
                append(decode(buf[position + 28 + nlen : end]))
                keep(header)
                if offs is not None:
                    offs.append(goff)
            elif kind not in skip:
                if kind in KIND_NAMES:
                    raise BadRecord(position, f"a {KIND_NAMES[kind]} record where the index has a message")
                raise BadRecord(position, f"record kind is {kind}")
            elif offs is None:  # skipped; everything before was handed out, at consecutive offsets
                offs = list(range(start, goff))
            position = end + 8
            goff += 1
    except BadRecord as bad:
        return goff, offs, headers, bad
    except struct.error:  # a record header unpacked past the mapping: an index entry past the records
        return goff, offs, headers, BadRecord(min(position, size), f"index points past it: {position}")
    except (ValueError, TypeError) as exc:  # every msgpack decoding error is one of these; so is a released mapping
        return goff, offs, headers, Undecodable(position, f"envelope does not decode: {exc}")
    return goff, offs, headers, None


# Long on purpose: the per-record loop of category and type-filtered reads (hot path), one check per rule.
def read_selected(  # noqa: PLR0912
    mm: Any,
    buf: Any,
    size: int,
    positions: PositionIndex,
    goffs: Any,
    out: list[Envelope],
    trimmed: dict[int, int] | None,
    types: frozenset[bytes] | None,
    names: frozenset[str] | None,
) -> tuple[list[int], list[tuple[int, ...]], int, BadRecord | None]:
    """Append the readable envelopes at global offsets ``goffs`` (ascending, all in this segment) to ``out``.

    The read of a category reader (the offsets its index lists) and of a reader with a type filter.
    Each record's header must match the index and its checksum its bytes, as in :func:`read_indexed`
    in global order: control, REMOVED and LOST records and messages below their stream's first
    retained offset (``trimmed``) are skipped. With ``types`` (the msgpack bytes of the wanted type
    names, :func:`~logstore.envelope.type_key`) a message of another type is skipped without decoding
    its envelope: its type is peeked at (:func:`~logstore.envelope.peek_type`); an envelope laid out
    otherwise is decoded and its type compared with ``names``.

    Reads of :data:`BATCH_MIN` records or more first try :func:`_select_batch`, which reads the headers
    and the type fields with numpy.

    Returns the global offsets and record headers of the envelopes appended, how many of ``goffs``
    were read whole (those before the damage, if any), and the damage that stopped the read, if any
    (as :func:`read_indexed`).
    """
    arr, n = positions.positions.state
    first = positions.first
    if len(goffs) >= BATCH_MIN and mm is not None:
        batch = _select_batch(mm, buf, size, arr[:n], first, goffs, out, trimmed, types)
        if batch is not None:
            return batch
    append = out.append
    offs: list[int] = []
    headers: list[tuple[int, ...]] = []
    examined = 0
    position = 0
    try:
        for goff in goffs:
            i = goff - first
            examined += 1
            if not 0 <= i < n:
                raise BadRecord(position, f"global offset {goff} is not in the segment's position index")
            position = int(arr[i])
            header = _hdr_unpack(buf, position)
            length, kind, _flags, nlen, rsid, rsoff, rgoff = header
            end = position + length - 8
            if rgoff != goff or end + 8 > size or length < RECORD_OVERHEAD + nlen:
                raise BadRecord(position, "record header does not match the index")
            if _xxh(buf[position:end]) != _sum_unpack(buf, end)[0]:
                raise BadRecord(position, "record checksum mismatch")
            if kind != KIND_MESSAGE:
                if kind not in _SKIP_GLOBAL:
                    raise BadRecord(position, f"record kind is {kind}")
                continue
            if trimmed and rsoff < trimmed.get(rsid, 0):
                continue
            start = position + 28 + nlen
            if types is not None:
                key = peek_type(buf, start, end)
                if key is None:
                    env = decode(buf[start:end])
                    if names is not None and env.type not in names:
                        continue
                    append(env)
                    headers.append(header)
                    offs.append(goff)
                    continue
                if key not in types:
                    continue
            append(decode(buf[start:end]))
            headers.append(header)
            offs.append(goff)
    # On damage, the records before the damaged one are done (the damaged one was counted in ``examined``).
    except BadRecord as bad:
        return offs, headers, examined - 1, bad
    except struct.error:  # a record header unpacked past the mapping: an index entry past the records
        return offs, headers, examined - 1, BadRecord(min(position, size), f"index points past it: {position}")
    except (ValueError, TypeError) as exc:  # every msgpack decoding error is one of these; so is a released mapping
        return offs, headers, examined - 1, Undecodable(position, f"envelope does not decode: {exc}")
    return offs, headers, examined, None


def read_gather(
    mm: Any,
    buf: Any,
    size: int,
    positions: PositionIndex,
    goff: int,
    stop: int,
    out: list[Envelope],
    sid: int,
    soff: int,
    count: int,
    gap: int,
) -> tuple[list[int], list[int], int, int] | None:
    """Append the envelopes of stream ``sid`` from its offset ``soff`` (at global offset ``goff``) on, to
    ``out``, stepping over the records of other streams between its runs.

    A stream's read over several of its runs at once: its runs are short when it is appended to in
    small transactions beside other streams. Reads global offsets ``goff`` .. at most ``stop - 1``;
    ends after ``count`` of the stream's records, or after ``gap`` records of other streams in a row
    (a separate read of the next run is then cheaper). The stream's records must be its offsets
    ``soff``, ``soff + 1``, ... in order, the first at ``goff``; each one's checksum is checked (its
    REMOVED and LOST records, then skipped, too), and the position entry of each of its runs' first
    records compared with where the record is. Of the other records only the headers are read,
    which must match the index (global offsets, lengths).

    Returns the stream offsets and global offsets of the envelopes appended, and the stream offset
    and global offset after the last record of the stream taken; or None, with nothing appended,
    when anything is not so: the caller then reads one run at a time, which says precisely what is
    wrong, and where. Reads of :data:`BATCH_MIN` records or more (``mm``, the segment's mapping,
    given) first try :func:`_gather_batch`, which reads the headers with numpy.
    """
    if mm is not None and count >= BATCH_MIN:
        batch = _gather_batch(mm, buf, size, positions, goff, stop, out, sid, soff, count, gap)
        if batch is not None:
            return batch
    had = len(out)
    append = out.append
    soffs: list[int] = []
    goffs: list[int] = []
    taken = 0
    after = goff  # the global offset after the stream's last record taken
    arr, n = positions.positions.state
    base = positions.first
    try:
        position = positions.position(goff)
        while goff < stop and taken < count and goff - after <= gap:
            length, kind, _flags, nlen, rsid, rsoff, rgoff = _hdr_unpack(buf, position)
            end = position + length - 8
            if rgoff != goff or end + 8 > size or length < RECORD_OVERHEAD + nlen:
                raise BadRecord(position, "record header does not match the index")
            if rsid == sid and kind in _MESSAGE_KINDS:
                if rsoff != soff:
                    raise BadRecord(position, f"record is stream offset {rsoff}, {soff} was next")
                if after != goff and (goff - base >= n or arr[goff - base] != position):
                    # The first record of one of the stream's runs: its position entry must say where
                    # it is, as a read of that run alone (which starts there) would find.
                    raise BadRecord(position, "the position index disagrees with the records")
                soff += 1
                taken += 1
                after = goff + 1
                # Every record of the stream is checked, the REMOVED and LOST ones it skips too: a flipped
                # kind byte would otherwise turn a message into a skipped marker unseen.
                if _xxh(buf[position:end]) != _sum_unpack(buf, end)[0]:
                    raise BadRecord(position, "record checksum mismatch")
                if kind == KIND_MESSAGE:
                    append(decode(buf[position + 28 + nlen : end]))
                    soffs.append(rsoff)
                    goffs.append(goff)
            elif taken == 0:
                raise BadRecord(position, "the first record is not the stream's")
            position = end + 8
            goff += 1
    except (BadRecord, struct.error, ValueError, TypeError, IndexError):
        del out[had:]
        return None
    return soffs, goffs, soff, after


def _gather_batch(
    mm: Any,
    buf: Any,
    size: int,
    positions: PositionIndex,
    goff: int,
    stop: int,
    out: list[Envelope],
    sid: int,
    soff: int,
    count: int,
    gap: int,
) -> tuple[list[int], list[int], int, int] | None:
    """The fast path of :func:`read_gather`: the headers of the records ahead read at once with numpy.

    Looks at ``2 * count + gap`` records from ``goff`` at most (a stream with at least every other
    record its own fills ``count``; a sparser one takes fewer, and the next read goes on). Every
    record's header must match the index (global offsets, records end to end from their position
    entries, lengths); the stream's records taken must be plain messages at offsets ``soff``,
    ``soff + 1``, ..., the first at ``goff``, and their checksums match. Returns what
    :func:`read_gather` returns, or None, with nothing appended, when anything is unusual (a
    REMOVED or LOST record, a control record of the stream, damage, a mapping going away).
    """
    had = len(out)
    try:
        arr, n = positions.positions.state
        i = goff - positions.first
        span = min(stop - goff, 2 * count + gap, n - i)
        if i < 0 or span < BATCH_MIN:
            return None
        starts = arr[i : i + span].astype(np.int64)
        h = _at_each_byte(mm, len(buf), HEADER_DTYPE, starts)
        length = h["length"].astype(np.int64)
        nlen = h["nlen"].astype(np.int64)
        ends = starts + length - CHECKSUM.size
        if not (
            int(ends[-1]) + CHECKSUM.size <= size
            and bool((ends[:-1] + CHECKSUM.size == starts[1:]).all())
            and bool((length >= RECORD_OVERHEAD + nlen).all())
            and bool((h["goff"] == np.arange(goff, goff + span, dtype=np.uint64)).all())
        ):
            return None
        mine = np.flatnonzero(h["sid"] == sid)
        if len(mine) == 0 or mine[0] != 0:
            return None
        holes = np.flatnonzero(np.diff(mine) > gap + 1)  # more than ``gap`` other records in a row
        if len(holes):
            mine = mine[: holes[0] + 1]
        mine = mine[:count]
        k = len(mine)
        if not (
            bool((h["kind"][mine] == KIND_MESSAGE).all())
            and bool((h["soff"][mine] == np.arange(soff, soff + k, dtype=np.uint64)).all())
        ):
            return None
        kept_ends = ends[mine]
        sums = _at_each_byte(mm, len(buf), _SUM_DTYPE, kept_ends).tolist()
        kept = starts[mine]
        payloads = (kept + RECORD_HEADER.size + nlen[mine]).tolist()
        append = out.append
        for p, a, e, c in zip(kept.tolist(), payloads, kept_ends.tolist(), sums, strict=True):
            if _xxh(buf[p:e]) != c:
                del out[had:]
                return None
            append(decode(buf[a:e]))
    except (ValueError, TypeError, IndexError, BufferError):
        # A mapping closed or cut under the read, or an envelope that does not decode: the
        # record-by-record loop reads it again and reports it.
        del out[had:]
        return None
    goffs = (mine + goff).tolist()
    return list(range(soff, soff + k)), goffs, soff + k, goffs[-1] + 1


_SUM_DTYPE = np.dtype("<u8")


def _at_each_byte(data: Any, size: int, dtype: np.dtype[Any], positions: Any) -> Any:
    """The ``dtype`` items of ``data`` (``size`` bytes) that start at each of ``positions`` (bytes, numpy),
    copied at once: the records' headers or checksums there.

    Through a view with an item at each byte (unaligned, overlapping) of raw bytes, whose items numpy
    copies whole, then seen as ``dtype``.
    """
    raw = np.ndarray((size - dtype.itemsize + 1,), f"V{dtype.itemsize}", data, 0, (1,))
    return raw[positions].view(dtype)


_unpackb = msgpack.unpackb
_tuple_new = tuple.__new__
_ENVELOPE_ARRAY = 0x97  # msgpack's fixarray of 7 items: the first byte of every envelope the writer encodes


class Checked:
    """Plain messages of a segment read and checked but not decoded yet: a global read decodes them a
    few at a time (:meth:`take`), so that few decoded envelopes are alive at once.

    Made by :func:`check_records` from a private copy of the records' bytes (``data``): every record's
    header was checked against the index and its checksum against its bytes before any envelope is
    decoded, and what is decoded is those very bytes, whatever happens to the segment's file or
    mapping meanwhile. ``goff`` is the global offset of the first record, ``n`` how many there are,
    ``i`` how many :meth:`take` handed out; ``headers`` their record headers (a numpy record array of
    :data:`HEADER_DTYPE`).
    """

    __slots__ = ("_ends", "_pays", "data", "goff", "headers", "i", "lo", "n", "path")

    def __init__(self, data: bytes, pays: list[int], ends: list[int], headers: Any, goff: int, lo: int, path: str):
        self.data = data
        self._pays = pays  # where each envelope starts in data
        self._ends = ends  # where each envelope ends (its record's checksum starts) in data
        self.headers = headers
        self.goff = goff
        self.lo = lo  # the segment position of data's first byte
        self.path = path
        self.i = 0
        self.n = len(ends)

    def take(self, count: int) -> list[Envelope]:
        """Decode and return the next ``count`` envelopes (fewer at the end).

        An envelope that does not decode (bytes the writer could not have written, whole and with a
        good checksum) ends the list before it; when it is the first, :class:`CorruptionError` names
        the segment file, the record's byte and its global offset, as a read of it would.
        """
        i = self.i
        j = min(self.n, i + count)
        data = self.data
        try:
            got = [
                _tuple_new(Envelope, _unpackb(data[a:e], raw=False, timestamp=3, strict_map_key=False))
                for a, e in zip(self._pays[i:j], self._ends[i:j], strict=True)
            ]
        except (ValueError, TypeError, OverflowError):
            got = self._take_slowly(i, j)
        self.i = i + len(got)
        return got

    def _take_slowly(self, i: int, j: int) -> list[Envelope]:
        got: list[Envelope] = []
        for k in range(i, j):
            try:
                got.append(decode(self.data[self._pays[k] : self._ends[k]]))
            except (ValueError, TypeError) as exc:
                if got:
                    break
                position = self.lo + (0 if k == 0 else self._ends[k - 1] + CHECKSUM.size)
                raise CorruptionError(
                    self.path, position, f"global offset {self.goff + k}: envelope does not decode: {exc}"
                ) from None
        return got


def check_records(buf: Any, size: int, positions: PositionIndex, goff: int, stop: int, path: str) -> Checked | None:
    """The records of global offsets ``goff`` .. ``stop - 1`` (``stop - goff`` at least :data:`BATCH_MIN`),
    copied from ``buf`` (a segment's mapping, ``size`` bytes mapped) and checked, if they are all plain,
    intact messages: else None, and the caller reads them with :func:`read_indexed`, which says what
    is wrong, and where.

    The checks of :func:`_read_batch` (global offsets, kinds, lengths, records end to end, the last one
    inside the mapping, each record's checksum), made on the copy; and every envelope's first byte
    must be a 7-item array's (as the writer encodes it), so that each decodes to the 7 fields of an
    envelope or fails.
    """
    arr, n = positions.positions.state
    i = goff - positions.first
    count = stop - goff
    if i < 0 or stop - positions.first > n or count < BATCH_MIN:
        return None
    try:
        lo = int(arr[i])
        last = int(arr[i + count - 1])
        if not 0 <= lo <= last or last + RECORD_OVERHEAD > size:
            return None
        hi = last + _len_unpack(buf, last)[0]
        if not last + RECORD_OVERHEAD <= hi <= size:
            return None
        data = buf[lo:hi].tobytes()
        starts = arr[i : i + count].astype(np.int64) - lo
        span = len(data)
        h = _at_each_byte(data, span, HEADER_DTYPE, starts)
        nlen = h["nlen"].astype(np.int64)
        ends = starts + h["length"].astype(np.int64) - CHECKSUM.size
        pays = starts + RECORD_HEADER.size + nlen
        if not (
            int(ends[-1]) + CHECKSUM.size == span
            and bool((ends[:-1] + CHECKSUM.size == starts[1:]).all())
            and bool((pays < ends).all())
            and bool((h["kind"] == KIND_MESSAGE).all())
            and bool((h["goff"] == np.arange(goff, stop, dtype=np.uint64)).all())
            and bool((np.frombuffer(data, np.uint8)[pays] == _ENVELOPE_ARRAY).all())
        ):
            return None
        sums = _at_each_byte(data, span, _SUM_DTYPE, ends).tolist()
        e_list = ends.tolist()
        # (Slices of bytes: a copy of a few hundred bytes costs less than a memoryview.)
        if [_xxh(data[p:e]) for p, e in zip(starts.tolist(), e_list, strict=True)] != sums:
            return None
    except (ValueError, TypeError, IndexError, BufferError, struct.error):
        # A mapping closed or cut under the read, or an index entry past the records: the
        # record-by-record loop reads them again and reports it.
        return None
    return Checked(data, pays.tolist(), e_list, h, goff, lo, path)


# The common layout of an envelope's first five fields, as :func:`logstore.envelope.encode` writes them for
# envelopes made by ``Envelope.new``: three 36-character ids (str 8), two 64-bit Timestamps (fixext 8).
# (byte of the payload, its value); the type field then starts at byte 135.
_LAYOUT_AT = np.array([0, 1, 2, 39, 40, 77, 78, 115, 116, 125, 126], np.int64)
_LAYOUT_IS = np.array([0x97, 0xD9, 36, 0xD9, 36, 0xD9, 36, 0xD7, 0xFF, 0xD7, 0xFF], np.uint8)
_TYPE_AT = 135


# Long on purpose: one pass of numpy checks, each with its own fallback.
def _select_batch(  # noqa: PLR0912, PLR0915
    mm: Any,
    buf: Any,
    size: int,
    positions: Any,
    first: int,
    goffs: Any,
    out: list[Envelope],
    trimmed: dict[int, int] | None,
    types: frozenset[bytes] | None,
) -> tuple[list[int], Any, int, None] | None:
    """:func:`read_selected`'s fast path: every record header, and the type field of the messages, read
    at once with numpy; each record's checksum is verified, and only the envelopes wanted decoded.

    A message laid out otherwise than :data:`_LAYOUT_AT` says has its type peeked at one by one. Returns
    what :func:`read_selected` returns, or None, with nothing appended, when anything is unusual (a
    header that does not match the index, an unknown kind, damage, a mapping going away): the
    record-by-record loop then reads them again and reports what is wrong.
    """
    had = len(out)
    try:
        raw = np.frombuffer(mm, np.uint8)
        want = np.asarray(goffs, np.int64)
        i = want - first
        if int(i[0]) < 0 or int(i[-1]) >= len(positions):
            return None
        starts = positions[i].astype(np.int64)
        if int(starts.max()) + RECORD_HEADER.size > size:
            return None
        h = _at_each_byte(mm, len(buf), HEADER_DTYPE, starts)
        length = h["length"].astype(np.int64)
        nlen = h["nlen"].astype(np.int64)
        ends = starts + length - CHECKSUM.size
        kind = h["kind"]
        if not (
            bool((h["goff"] == want.astype(np.uint64)).all())
            and bool((length >= RECORD_OVERHEAD + nlen).all())
            and int(ends.max()) + CHECKSUM.size <= size
            and bool(np.isin(kind, _KINDS).all())
        ):
            return None
        keep = kind == KIND_MESSAGE
        if trimmed:
            sids = np.fromiter(trimmed.keys(), np.int64, len(trimmed))
            firsts = np.fromiter(trimmed.values(), np.int64, len(trimmed))
            order = np.argsort(sids)
            sids, firsts = sids[order], firsts[order]
            rsid = h["sid"].astype(np.int64)
            k = np.minimum(np.searchsorted(sids, rsid), len(sids) - 1)
            below = (sids[k] == rsid) & (h["soff"].astype(np.int64) < firsts[k])
            keep &= ~below
        payloads = starts + RECORD_HEADER.size + nlen
        if types is not None and keep.any():
            cand = np.flatnonzero(keep)
            p = payloads[cand]
            fast = (ends[cand] > p + _TYPE_AT) & (raw[np.minimum(p[:, None] + _LAYOUT_AT, size - 1)] == _LAYOUT_IS).all(
                axis=1
            )
            match = np.zeros(len(cand), bool)
            tstart = p + _TYPE_AT
            for key in types:
                span = np.arange(len(key))
                fits = fast & (tstart + len(key) <= ends[cand])
                if fits.any():
                    got = raw[np.minimum(tstart[:, None] + span, size - 1)]
                    match |= fits & (got == np.frombuffer(key, np.uint8)).all(axis=1)
            for j in np.flatnonzero(~fast).tolist():  # another layout: its type peeked at alone
                peeked = peek_type(buf, int(p[j]), int(ends[cand[j]]))
                match[j] = peeked is None or peeked in types  # None: decoded below, its type compared there
            keep[cand[~match]] = False
        sums = _at_each_byte(mm, len(buf), _SUM_DTYPE, ends).tolist()
        append = out.append
        offs: list[int] = []
        picked: list[int] = []
        s_list, e_list, p_list = starts.tolist(), ends.tolist(), payloads.tolist()
        keep_list = keep.tolist()
        g_list = want.tolist()
        for j, (s, e, c) in enumerate(zip(s_list, e_list, sums, strict=True)):
            if _xxh(buf[s:e]) != c:
                del out[had:]
                return None
            if keep_list[j]:
                env = decode(buf[p_list[j] : e])
                if types is not None and type_key(env.type) not in types:
                    continue  # laid out otherwise, and of another type
                append(env)
                offs.append(g_list[j])
                picked.append(j)
    except (ValueError, TypeError, IndexError, BufferError):
        # A mapping closed or cut under the read, or an envelope that does not decode: the
        # record-by-record loop reads it again and reports it.
        del out[had:]
        return None
    return offs, h[picked], len(g_list), None


def _read_batch(
    mm: Any, buf: Any, size: int, starts: Any, goff: int, stop: int, out: list[Envelope], sid: int, soff: int
) -> Any:
    """Append the envelopes of ``goff`` .. ``stop - 1`` (at ``starts``) if they are all plain, intact messages.

    The fast path of :func:`read_indexed` for long reads: every record
    header is checked at once with numpy (global offsets, stream ids and
    offsets when ``sid >= 0``, kinds, lengths, records end to end), then
    each record's checksum is verified and its envelope decoded. Returns the
    record headers (a numpy record array of :data:`HEADER_DTYPE`, a copy),
    or None, with nothing appended, when anything is unusual (another record
    kind, damage, a mapping going away).
    """
    had = len(out)
    try:
        mapped = len(buf)
        starts = starts.astype(np.int64)
        h = _at_each_byte(mm, mapped, HEADER_DTYPE, starts)
        length = h["length"].astype(np.int64)
        nlen = h["nlen"].astype(np.int64)
        ends = starts + length - CHECKSUM.size
        count = stop - goff
        ok = (
            bool((h["kind"] == KIND_MESSAGE).all())
            and bool((length >= RECORD_OVERHEAD + nlen).all())
            and int(ends[-1]) + CHECKSUM.size <= size
            and bool((ends[:-1] + CHECKSUM.size == starts[1:]).all())
            and bool((h["goff"] == np.arange(goff, stop, dtype=np.uint64)).all())
        )
        if ok and sid >= 0:
            ok = bool((h["sid"] == sid).all()) and bool(
                (h["soff"] == np.arange(soff, soff + count, dtype=np.uint64)).all()
            )
        if not ok:
            return None
        sums = _at_each_byte(mm, mapped, _SUM_DTYPE, ends).tolist()
        payloads = (starts + RECORD_HEADER.size + nlen).tolist()
        append = out.append
        for p, a, e, c in zip(starts.tolist(), payloads, ends.tolist(), sums, strict=True):
            if _xxh(buf[p:e]) != c:
                del out[had:]
                return None
            append(decode(buf[a:e]))
    except (ValueError, TypeError, IndexError, BufferError):
        # A mapping closed or cut under the read, or an envelope that does not decode: the
        # record-by-record loop reads it again and reports it.
        del out[had:]
        return None
    return h
