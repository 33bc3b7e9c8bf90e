"""The checkpoint: how far the index files are complete, replaced atomically.

File ``CHECKPOINT`` (written to ``CHECKPOINT.tmp``, fsynced, renamed, directory
fsynced). Common header with magic ``b"LGCHKPNT"``; a = generation (the
catalog file ``catalog.<generation>`` belongs to it); b = body length;
c = xxh3-64 of the body; header flags bit 0 = CLEAN (written by ``close()``,
nothing was appended after it). Body, little-endian::

    offset      size    type  field
    0           8       u64   next global offset (records in the log up to the checkpoint)
    8           8       u64   log start: the first global offset retention keeps (0 until retention drops any)
    16          8       u64   G, number of segments
    24 + 32*i   8       u64   segment i: first global offset
    32 + 32*i   8       u64   segment i: records in it up to the checkpoint
    40 + 32*i   8       u64   segment i: byte position after its last such record
    48 + 32*i   8       u64   segment i: xxh3-64 of its position file's first ``records`` entries

Everything up to the end of the last segment listed is durable when the
checkpoint is written; recovery scans only what lies after it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE, CheckpointHeader

FLAG_CLEAN = 1
_HEAD = struct.Struct("<QQQ")
_SEG = struct.Struct("<QQQQ")


class SegmentEntry(NamedTuple):
    first: int
    records: int
    end: int
    checksum: int


class Checkpoint(NamedTuple):
    generation: int
    next_goff: int
    segments: list[SegmentEntry]
    clean: bool
    log_start: int = 0

    def encode(self, store_id: bytes) -> bytes:
        body = _HEAD.pack(self.next_goff, self.log_start, len(self.segments))
        body += b"".join(_SEG.pack(*s) for s in self.segments)
        flags = FLAG_CLEAN if self.clean else 0
        header = CheckpointHeader(store_id, self.generation, len(body), xxhash.xxh3_64_intdigest(body), flags)
        return header.encode() + body

    @classmethod
    def decode(cls, buf: bytes, store_id: bytes | None) -> tuple[Checkpoint, bytes]:
        """Decode a checkpoint; returns it with the store id it names."""
        header = CheckpointHeader.decode(buf)
        if store_id is not None and header.store_id != store_id:
            raise FormatError(16, "store id differs from the store's")
        if len(buf) != HEADER_SIZE + header.body_length:
            raise FormatError(
                40, f"body length is {header.body_length} but the file holds {len(buf) - HEADER_SIZE} bytes"
            )
        body = buf[HEADER_SIZE:]
        if xxhash.xxh3_64_intdigest(body) != header.body_checksum:
            raise FormatError(HEADER_SIZE, "body checksum mismatch")
        if len(body) < _HEAD.size:
            raise FormatError(HEADER_SIZE, "body is shorter than its fixed fields")
        next_goff, log_start, g = _HEAD.unpack_from(body)
        if len(body) != _HEAD.size + g * _SEG.size:
            raise FormatError(HEADER_SIZE + 16, f"segment count {g} does not match the body length")
        if log_start > next_goff:
            raise FormatError(HEADER_SIZE + 8, f"log start {log_start} is past the next global offset {next_goff}")
        segments = [SegmentEntry(*_SEG.unpack_from(body, _HEAD.size + i * _SEG.size)) for i in range(g)]
        expect = segments[0].first if segments else 0
        for i, s in enumerate(segments):
            at = HEADER_SIZE + _HEAD.size + i * _SEG.size
            if s.first != expect:
                raise FormatError(at, f"segment {i} starts at global offset {s.first}, expected {expect}")
            if s.end < HEADER_SIZE:
                raise FormatError(at + 16, f"segment {i} ends at byte {s.end}, inside its header")
            expect = s.first + s.records
        if expect != next_goff and segments:
            raise FormatError(HEADER_SIZE, f"next global offset {next_goff} disagrees with the segments ({expect})")
        if segments and segments[0].first > log_start:
            raise FormatError(HEADER_SIZE + 8, f"log start {log_start} is before the first segment {segments[0].first}")
        return cls(header.generation, next_goff, segments, bool(header.flags & FLAG_CLEAN), log_start), header.store_id
