"""The record format: the bytes of one record, how they are framed, parsed and found.

A segment file (:mod:`logstore.embedded.segment`) holds records back to back after its
header; each record is::

    offset      size  type   field
    0           4     u32    length L of the whole record, this field and the checksum included; 0 = never written
    4           1     u8     kind: 1 message, 2 truncate, 3 delete, 4 retain, 5 removed, 6 lost (see below)
    5           1     u8     flags: bit 0 TX_END, bit 1 NAMED, bit 2 SYNCED
    6           2     u16    N, byte length of the stream name (0 unless NAMED)
    8           4     u32    stream id
    12          8     u64    stream offset
    20          8     u64    global offset
    28          N     utf-8  stream name (only when NAMED)
    28+N        P     bytes  msgpack envelope (P = L - 36 - N)
    L-8         8     u64    xxh3-64 of bytes 0 .. L-9 of the record

Kinds 2..6 carry no payload and occupy a global offset that readers skip.
The control records: TRUNCATE (stream offset field = the stream's new first
retained offset, always NAMED), DELETE (the same, at the stream's head, and
the stream reads as deleted until its next append), each a transaction of its
own; RETAIN (stream id 0xFFFFFFFF, no name; stream offset field = the global
offset where the log now starts), which begins the retention transaction with
a TRUNCATE or DELETE for each stream it would otherwise forget. The markers:
REMOVED (written by compaction in place of a message that truncation or
deletion removed: the message's header fields, flags and name, without its
envelope) and LOST (written by ``logstore repair``
in place of a record that damage destroyed: with the stream id and offset
that the rest of the log shows it had, or with stream id 0xFFFFFFFF, no
name and offset 0 when nothing tells). Readers skip REMOVED and LOST records.

TX_END marks the last record of a transaction. NAMED records carry their
stream's name: the first record of each stream in each segment is NAMED, so
every segment names the streams it holds. SYNCED says that every byte of the
log before this record was fsynced before this record was written (the writer
sets it on the first record it writes after an fsync). Recovery uses it to
tell a torn tail from damage to data that was once durable: damage followed
by a valid SYNCED record was durable, so it is not a torn write.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import Any, Final, NamedTuple

import xxhash

RECORD_HEADER = struct.Struct("<IBBHIQQ")
CHECKSUM = struct.Struct("<Q")
RECORD_OVERHEAD = RECORD_HEADER.size + CHECKSUM.size  # 36


class Kind(IntEnum):
    """A record's kind (byte 4 of its header; 0 is invalid). Records parsed from a file carry it as a plain int."""

    MESSAGE = 1
    TRUNCATE = 2
    DELETE = 3
    RETAIN = 4
    REMOVED = 5
    LOST = 6


class RecordFlag(IntFlag):
    """A record's flag bits (byte 5 of its header); any other bit set makes the record invalid."""

    TX_END = 1  # the last record of its transaction
    NAMED = 2  # the record carries its stream's name
    SYNCED = 4  # everything before the record was fsynced before it was written


# The short names are plain ints, for the per-record loops (framing, parsing, the writer's group loop,
# recovery's scan, reads): ``int & IntFlag`` runs IntFlag.__rand__ in Python (0.64 against 0.016 us for
# ``int & int``), and a numpy array compared with an IntEnum member takes 6.4 against 2.4 us (measured
# on the benchmark machine). A plain int compared with a member costs the same, so either form may be
# compared with a record's field.
KIND_MESSAGE: Final = int(Kind.MESSAGE)
KIND_TRUNCATE: Final = int(Kind.TRUNCATE)
KIND_DELETE: Final = int(Kind.DELETE)
KIND_RETAIN: Final = int(Kind.RETAIN)
KIND_REMOVED: Final = int(Kind.REMOVED)
KIND_LOST: Final = int(Kind.LOST)
MESSAGE_KINDS: Final = (KIND_MESSAGE, KIND_REMOVED, KIND_LOST)
"""The kinds that stand at a message's stream offset (the message, or the marker in its place): they move the head."""
KIND_NAMES: Final = {int(k): k.name.lower() for k in Kind}
"""The name of each valid kind, by its value, in value order."""
NO_STREAM = 0xFFFFFFFF
"""The stream id field of a RETAIN record, which belongs to no stream."""
FLAG_TX_END: Final = int(RecordFlag.TX_END)
FLAG_NAMED: Final = int(RecordFlag.NAMED)
FLAG_SYNCED: Final = int(RecordFlag.SYNCED)
_KNOWN_FLAGS: Final = FLAG_TX_END | FLAG_NAMED | FLAG_SYNCED

_xxh = xxhash.xxh3_64_intdigest
_hdr_pack = RECORD_HEADER.pack
_hdr_unpack = RECORD_HEADER.unpack_from
_sum_pack = CHECKSUM.pack
_sum_unpack = CHECKSUM.unpack_from


def frame(sid: int, soff: int, goff: int, flags: int, name: bytes, payload: bytes, kind: int = KIND_MESSAGE) -> bytes:
    """One whole record, checksum included."""
    body = _hdr_pack(RECORD_OVERHEAD + len(name) + len(payload), kind, flags, len(name), sid, soff, goff)
    body = body + name + payload if name else body + payload
    return body + _sum_pack(_xxh(body))


class Record(NamedTuple):
    """A record's header fields as parsed from a segment (the envelope is not decoded)."""

    position: int
    length: int
    flags: int
    sid: int
    soff: int
    goff: int
    name: str | None
    payload_start: int
    kind: int = KIND_MESSAGE


class BadRecord(Exception):
    """The bytes at ``position`` are not a valid record."""

    def __init__(self, position: int, what: str, zero: bool = False) -> None:
        super().__init__(what)
        self.position = position
        self.what = what
        self.zero = zero  # a length of 0: the never-written area, or a zeroed block


# Long on purpose: the per-record parser of every read and scan (hot path): one check per rule.
def parse_record(buf: Any, position: int, end: int) -> Record:  # noqa: PLR0912
    """Parse and checksum the record at ``position``; raise :class:`BadRecord` if it is not one."""
    if position + RECORD_HEADER.size > end:
        if position >= end or not any(bytes(buf[position:end])):
            raise BadRecord(position, "end of segment", zero=True)
        raise BadRecord(position, "a partial record header at the end of the segment")
    length, kind, flags, nlen, sid, soff, goff = _hdr_unpack(buf, position)
    if length == 0:
        raise BadRecord(position, "record length is 0 (never written)", zero=True)
    if kind not in KIND_NAMES:
        raise BadRecord(position, f"record kind is {kind}, not one of 1..6")
    if flags & ~_KNOWN_FLAGS:
        raise BadRecord(position, f"unknown record flags {flags:#x}")
    if length < RECORD_OVERHEAD + nlen or position + length > end:
        raise BadRecord(position, f"record length {length} does not fit (name {nlen} bytes, segment end {end})")
    if bool(flags & FLAG_NAMED) != (nlen > 0):
        raise BadRecord(position, "NAMED flag and name length disagree")
    if kind != KIND_MESSAGE:
        if length != RECORD_OVERHEAD + nlen:
            extra = length - RECORD_OVERHEAD - nlen
            raise BadRecord(position, f"a {KIND_NAMES[kind]} record carries {extra} payload bytes")
        if kind in (KIND_TRUNCATE, KIND_DELETE) and not nlen:
            raise BadRecord(position, f"a {KIND_NAMES[kind]} record must carry its stream's name")
        if kind == KIND_RETAIN and (nlen or sid != NO_STREAM):
            raise BadRecord(position, "a retain record must have stream id 0xFFFFFFFF and no name")
        if kind == KIND_LOST and sid == NO_STREAM and (nlen or soff):
            raise BadRecord(position, "a lost record of no stream must have no name and stream offset 0")
        if kind not in (KIND_RETAIN, KIND_LOST) and sid == NO_STREAM:
            raise BadRecord(position, "stream id 0xFFFFFFFF belongs to no stream")
    elif sid == NO_STREAM:
        raise BadRecord(position, "stream id 0xFFFFFFFF belongs to no stream")
    (checksum,) = _sum_unpack(buf, position + length - 8)
    if _xxh(buf[position : position + length - 8]) != checksum:
        raise BadRecord(position, "record checksum mismatch")
    name = None
    if nlen:
        try:
            name = bytes(buf[position + 28 : position + 28 + nlen]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord(position, "stream name is not valid UTF-8") from None
    return Record(position, length, flags, sid, soff, goff, name, position + 28 + nlen, kind)
