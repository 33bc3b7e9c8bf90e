"""The record walker: the one way the engine and its tools go through a segment's records.

:func:`walk` goes through the bytes of a segment from a record position and
yields each valid record (:class:`~logstore.record.Record`, checksum
checked) or, where the bytes are not a record, a :class:`Damage` that says
where it starts, where it ends and what is wrong. Recovery, ``verify``,
``repair``, ``dump``, compaction and the rebuild of a segment's positions walk
records with it, each with its own judgement of what it sees: the walker
parses and resynchronises, it does not decide whether a record belongs
where it is. Readers go through records whose positions the index gives
(:func:`read_indexed`), the hot path of every ``next()``.

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
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from logstore.record import KIND_LOST, KIND_MESSAGE, RECORD_HEADER, RECORD_OVERHEAD, BadRecord, Record, parse_record


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
