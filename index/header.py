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
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

from .errors import FormatError, UnsupportedVersionError

FORMAT_VERSION = 1
HEADER_SIZE = 64

MAGIC_SEGMENT = b"LGSEGMNT"
MAGIC_POSITION = b"LGPOSIDX"
MAGIC_RUNS = b"LGRUNIDX"
MAGIC_CATALOG = b"LGCATALG"
MAGIC_CHECKPOINT = b"LGCHKPNT"

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
