"""The 64-byte header at the start of every logstore file.

Every file kind (segment, position index, run file, catalog, checkpoint)
starts with the same layout, all integers little-endian::

    offset size type   field
    0      8    bytes  magic, names the file kind (b"LGSEGMNT", ...)
    8      2    u16    format version (FORMAT_VERSION)
    10     2    u16    header size in bytes (64)
    12     4    u32    flags (kind-specific: CHECKPOINT bit 0 = CLEAN; 0 in every other kind)
    16     16   bytes  store id: 16 random bytes chosen when the store was created
    32     8    u64    field a (kind-specific, see docs/FORMAT.md)
    40     8    u64    field b (kind-specific)
    48     8    u64    field c (kind-specific)
    56     8    u64    xxh3-64 of bytes 0..55

A header of all zero bytes is "never written" and is reported as such.

:class:`Header` is the layout's raw form, with the three kind-specific words as
``a``, ``b`` and ``c``. Code that reads or writes one file kind uses that kind's
class, which names the words:

    kind        class              a             b              c
    segment     SegmentHeader      first         capacity       created (ns)
    position    PositionHeader     first         (0)            (0)
    run file    RunsHeader         stream_id     (0)            (0)
    catalog     CatalogHeader      generation    body_length    body_checksum
    name table  NamesHeader        generation    body_length    body_checksum
    checkpoint  CheckpointHeader   generation    body_length    body_checksum (+ flags)
    CONTROL     ControlHeader      instance      slot count     wake method
    SUBSCRIPTIONS (no class)       slot size     (0)            (0)
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import xxhash

from .errors import FormatError, UnsupportedVersionError

FORMAT_VERSION = 1
HEADER_SIZE = 64

MAGIC_SEGMENT = b"LGSEGMNT"
MAGIC_POSITION = b"LGPOSIDX"
MAGIC_RUNS = b"LGRUNIDX"
MAGIC_CATALOG = b"LGCATALG"
MAGIC_NAMES = b"LGNAMTAB"
MAGIC_CHECKPOINT = b"LGCHKPNT"
MAGIC_CONTROL = b"LGCONTRL"
MAGIC_SUBSCRIPTIONS = b"LGSUBSCR"

_LAYOUT = struct.Struct("<8sHHI16sQQQ")
_CHECKSUM = struct.Struct("<Q")
assert _LAYOUT.size + _CHECKSUM.size == HEADER_SIZE


class Header(NamedTuple):
    """A decoded file header; ``a``, ``b`` and ``c`` mean what the file kind says."""

    magic: bytes
    store_id: bytes
    a: int
    b: int
    c: int
    flags: int = 0


def encode_header(header: Header) -> bytes:
    """Encode ``header`` into exactly :data:`HEADER_SIZE` bytes."""
    body = _LAYOUT.pack(
        header.magic,
        FORMAT_VERSION,
        HEADER_SIZE,
        header.flags,
        header.store_id,
        header.a,
        header.b,
        header.c,
    )
    return body + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))


def decode_header(buf: bytes | memoryview, magic: bytes) -> Header:
    """Decode and check the header at the start of ``buf``.

    Raises :class:`FormatError` if the bytes are short, zero, of another file
    kind or fail their checksum, and :class:`UnsupportedVersionError` for a
    well-formed header of an unknown format version.
    """
    if len(buf) < HEADER_SIZE:
        raise FormatError(0, f"file is {len(buf)} bytes, shorter than its {HEADER_SIZE}-byte header")
    raw = bytes(buf[:HEADER_SIZE])
    if raw == bytes(HEADER_SIZE):
        raise FormatError(0, "header is all zero bytes (never written)")
    (found_magic, version, size, flags, store_id, a, b, c) = _LAYOUT.unpack_from(raw)
    (checksum,) = _CHECKSUM.unpack_from(raw, _LAYOUT.size)
    if checksum != xxhash.xxh3_64_intdigest(raw[: _LAYOUT.size]):
        raise FormatError(56, "header checksum mismatch")
    if found_magic != magic:
        raise FormatError(0, f"magic is {found_magic!r}, expected {magic!r}")
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(8, f"format version {version}, this code reads version {FORMAT_VERSION}", version)
    if size != HEADER_SIZE:
        raise FormatError(10, f"header size is {size}, expected {HEADER_SIZE}")
    return Header(found_magic, store_id, a, b, c, flags)


def check_index_file(
    buf: bytes | memoryview,
    kind: type[PositionHeader] | type[RunsHeader],
    expected: tuple[bytes, int],
    word: str,
    count: int,
    entry_size: int,
    entries: str,
    recorder: str,
    checksum: int,
) -> int:
    """Check an index file against what its ``recorder`` (checkpoint or catalog) says; return where its entries end.

    Its header, of ``kind``, must hold the store id and field a ``expected`` (``word`` names field a);
    the file must hold ``count`` entries of ``entry_size`` bytes after the header, whose
    xxh3-64 is ``checksum``. Raises :class:`FormatError` at the byte position of the first that is not so.
    """
    store_id, a = kind.decode(buf)
    if store_id != expected[0]:
        raise FormatError(16, "store id differs from the store's")
    if a != expected[1]:
        raise FormatError(32, f"{word} is {a}, expected {expected[1]}")
    end = HEADER_SIZE + entry_size * count
    if len(buf) < end:
        raise FormatError(len(buf), f"file holds fewer than the {count} {entries} the {recorder} records")
    with memoryview(buf) as view, view[HEADER_SIZE:end] as body:
        digest = xxhash.xxh3_64_intdigest(body)
    if digest != checksum:
        raise FormatError(HEADER_SIZE, f"checksum of the first {count} {entries} does not match the {recorder}")
    return end


def check_generation_file(
    buf: Any, header: CatalogHeader | NamesHeader, store_id: bytes, generation: int, counts_end: int
) -> None:
    """Check a file of one catalog generation (its ``header`` decoded already) against the store and the
    checkpoint, its length, that its body reaches ``counts_end`` and its body checksum. Raises
    :class:`FormatError` at the byte position of the first thing that is not so."""
    if header.store_id != store_id:
        raise FormatError(16, "store id differs from the store's")
    if header.generation != generation:
        raise FormatError(32, f"generation is {header.generation}, the checkpoint names {generation}")
    if len(buf) != HEADER_SIZE + header.body_length:
        raise FormatError(40, f"body length is {header.body_length} but the file holds {len(buf) - HEADER_SIZE} bytes")
    with memoryview(buf) as view, view[HEADER_SIZE:] as body:
        if xxhash.xxh3_64_intdigest(body) != header.body_checksum:
            raise FormatError(HEADER_SIZE, "body checksum mismatch")
    if len(buf) < counts_end:
        raise FormatError(HEADER_SIZE, "body is shorter than its counts")


class SegmentHeader(NamedTuple):
    """A segment file's header (magic ``LGSEGMNT``; flags 0)."""

    store_id: bytes
    first: int  # field a: the global offset of the segment's first record; its file name says the same
    capacity: int  # field b: the most bytes the file may grow to, header included
    created: int  # field c: when the segment was created, ns since the epoch

    def encode(self) -> bytes:
        return encode_header(Header(MAGIC_SEGMENT, self.store_id, self.first, self.capacity, self.created))

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> SegmentHeader:
        h = decode_header(buf, MAGIC_SEGMENT)
        return cls(h.store_id, h.a, h.b, h.c)


class PositionHeader(NamedTuple):
    """A position index file's header (magic ``LGPOSIDX``; fields b and c and flags 0)."""

    store_id: bytes
    first: int  # field a: the first global offset of the segment the file indexes

    def encode(self) -> bytes:
        return encode_header(Header(MAGIC_POSITION, self.store_id, self.first, 0, 0))

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> PositionHeader:
        h = decode_header(buf, MAGIC_POSITION)
        return cls(h.store_id, h.a)


class RunsHeader(NamedTuple):
    """A run file's header (magic ``LGRUNIDX``; fields b and c and flags 0)."""

    store_id: bytes
    stream_id: int  # field a: the stream whose runs the file holds

    def encode(self) -> bytes:
        return encode_header(Header(MAGIC_RUNS, self.store_id, self.stream_id, 0, 0))

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> RunsHeader:
        h = decode_header(buf, MAGIC_RUNS)
        return cls(h.store_id, h.a)


class CatalogHeader(NamedTuple):
    """A catalog file's header (magic ``LGCATALG``; flags 0)."""

    store_id: bytes
    generation: int  # field a: the catalog generation, as CHECKPOINT names it
    body_length: int  # field b: the bytes after the header (the file's size - 64)
    body_checksum: int  # field c: xxh3-64 of those bytes

    def encode(self) -> bytes:
        return encode_header(
            Header(MAGIC_CATALOG, self.store_id, self.generation, self.body_length, self.body_checksum)
        )

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> CatalogHeader:
        h = decode_header(buf, MAGIC_CATALOG)
        return cls(h.store_id, h.a, h.b, h.c)


class NamesHeader(NamedTuple):
    """A name table file's header (magic ``LGNAMTAB``; flags 0)."""

    store_id: bytes
    generation: int  # field a: the catalog generation whose name table it is
    body_length: int  # field b: the bytes after the header (the file's size - 64)
    body_checksum: int  # field c: xxh3-64 of those bytes

    def encode(self) -> bytes:
        return encode_header(Header(MAGIC_NAMES, self.store_id, self.generation, self.body_length, self.body_checksum))

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> NamesHeader:
        h = decode_header(buf, MAGIC_NAMES)
        return cls(h.store_id, h.a, h.b, h.c)


class CheckpointHeader(NamedTuple):
    """The CHECKPOINT file's header (magic ``LGCHKPNT``)."""

    store_id: bytes
    generation: int  # field a: the catalog generation the checkpoint names
    body_length: int  # field b: the bytes after the header
    body_checksum: int  # field c: xxh3-64 of those bytes
    flags: int = 0  # bit 0 = CLEAN (written by a close)

    def encode(self) -> bytes:
        return encode_header(
            Header(MAGIC_CHECKPOINT, self.store_id, self.generation, self.body_length, self.body_checksum, self.flags)
        )

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> CheckpointHeader:
        h = decode_header(buf, MAGIC_CHECKPOINT)
        return cls(h.store_id, h.a, h.b, h.c, h.flags)


class ControlHeader(NamedTuple):
    """The CONTROL file's header (magic ``LGCONTRL``; flags 0). Written by the process that initializes the file."""

    store_id: bytes
    instance: int  # field a: random, chosen anew at each initialization of the file
    slots: int  # field b: the number of process slots in the file's slot table
    wake: int  # field c: how processes wake each other (0: they do not yet)

    def encode(self) -> bytes:
        return encode_header(Header(MAGIC_CONTROL, self.store_id, self.instance, self.slots, self.wake))

    @classmethod
    def decode(cls, buf: bytes | memoryview) -> ControlHeader:
        h = decode_header(buf, MAGIC_CONTROL)
        return cls(h.store_id, h.a, h.b, h.c)
