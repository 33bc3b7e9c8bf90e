"""The message-id index: which global offsets hold a message whose id hashes to a given 64-bit value.

Keys are the xxh3-64 of a message id's UTF-8 bytes; values are global
offsets. Two ids may share a hash, so a hit is only a candidate: the engine
reads the record to compare the id. The index is a list of immutable sorted
*runs* (numpy arrays, sorted by hash, then global offset) plus a small
unsorted table of *recent* entries (a dict), so that 10^8 messages take
16 bytes each in numpy arrays and no Python object per message.

A run file (``<store>/msgids-<generation>.run``, written once by the
checkpoint of that generation)::

    offset       size   type     field
    0            64     header   magic LGMSGRUN; a = generation that wrote it, b = count n, c = xxh3-64 of the body
    64           8n     u64[n]   hashes, ascending
    64+8n        8n     u64[n]   global offsets (ascending among equal hashes)

The generation file (``<store>/msgids.<generation>``)::

    offset       size   type     field
    0            64     header   magic LGMSGIDS; a = generation, b = body length, c = xxh3-64 of the body
    64           8      u64      start: entries below this global offset are dropped (retention)
    72           8      u64      r, the number of runs
    80           24r    3 x u64  each run: generation (names its file), count, body checksum
    80+24r       8      u64      m, the number of recent entries
    88+24r       8m     u64[m]   their hashes, ascending
    88+24r+8m    8m     u64[m]   their global offsets
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import xxhash

from .errors import FormatError
from .header import HEADER_SIZE, Header, decode_header, encode_header

MAGIC_MSGIDS = b"LGMSGIDS"
MAGIC_MSGRUN = b"LGMSGRUN"

_U64 = struct.Struct("<Q")
_RUN_ENTRY = struct.Struct("<QQQ")

U64Array = npt.NDArray[np.uint64]


def id_hash(message_id: str) -> int:
    """The 64-bit key of a message id: xxh3-64 of its UTF-8 bytes."""
    return xxhash.xxh3_64_intdigest(message_id.encode())


class Run:
    """One sorted run: ``hashes`` ascending, ``goffs`` beside them; ``generation`` names its file (0: not saved)."""

    __slots__ = ("_high", "_low", "checksum", "generation", "goffs", "hashes")

    def __init__(self, hashes: U64Array, goffs: U64Array, generation: int = 0, checksum: int = 0) -> None:
        self.hashes = hashes
        self.goffs = goffs
        self.generation = generation
        self.checksum = checksum
        self._low: int | None = None
        self._high: int | None = None

    def __len__(self) -> int:
        return len(self.hashes)

    def low(self) -> int | None:
        """Its lowest global offset (None if it is empty), found once."""
        if self._low is None and len(self.goffs):
            self._low = int(self.goffs.min())
        return self._low

    def high(self) -> int | None:
        """Its highest global offset (None if it is empty), found once."""
        if self._high is None and len(self.goffs):
            self._high = int(self.goffs.max())
        return self._high

    def body(self) -> bytes:
        return self.hashes.astype("<u8").tobytes() + self.goffs.astype("<u8").tobytes()

    def encode(self, store_id: bytes, generation: int) -> bytes:
        """The bytes of its run file, written by the checkpoint of ``generation`` (which names it)."""
        body = self.body()
        self.generation = generation
        self.checksum = xxhash.xxh3_64_intdigest(body)
        header = Header(MAGIC_MSGRUN, store_id, generation, len(self.hashes), self.checksum)
        return encode_header(header) + body

    @classmethod
    def decode(cls, buf: Any, store_id: bytes, generation: int, count: int, checksum: int) -> Run:
        """A run from its file's bytes, checked against what the generation file records of it."""
        h = decode_header(buf, MAGIC_MSGRUN)
        if h.store_id != store_id:
            raise FormatError(16, "store id differs from the store's")
        if h.a != generation:
            raise FormatError(32, f"generation is {h.a}, expected {generation}")
        if h.b != count:
            raise FormatError(40, f"count is {h.b}, the generation file records {count}")
        end = HEADER_SIZE + 16 * count
        if len(buf) != end:
            raise FormatError(min(len(buf), end), f"file is {len(buf)} bytes, {count} entries take {end}")
        with memoryview(buf) as view, view[HEADER_SIZE:end] as body:
            digest = xxhash.xxh3_64_intdigest(body)
        if digest != checksum or h.c != checksum:
            raise FormatError(HEADER_SIZE, "checksum of the entries does not match the generation file")
        arr = np.frombuffer(buf, dtype="<u8", count=2 * count, offset=HEADER_SIZE)
        hashes, goffs = arr[:count], arr[count:]
        if count > 1 and not bool(np.all(hashes[1:] >= hashes[:-1])):
            raise FormatError(HEADER_SIZE, "hashes are not in ascending order")
        return cls(hashes, goffs, generation, checksum)


def stable_order(keys: U64Array) -> npt.NDArray[np.intp]:
    """``np.argsort(keys, kind="stable")``, faster: one ``np.sort`` of the keys with each one's position
    in its low bits, then a stable pass over what that left out of order (rare: keys that agree above those
    bits), which is nearly sorted already."""
    n = len(keys)
    if n < 2:
        return np.arange(n, dtype=np.intp)
    bits = (n - 1).bit_length()
    if bits > 40:
        return np.argsort(keys, kind="stable")
    low = np.uint64((1 << bits) - 1)
    packed = (keys & ~low) | np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & low).astype(np.intp)
    ordered = keys[order]
    if bool((ordered[1:] < ordered[:-1]).any()):
        order = order[np.argsort(ordered, kind="stable")]
    return order


def sorted_run(hashes: Iterable[int] | U64Array, goffs: Iterable[int] | U64Array) -> Run:
    """A run of the given entries, sorted by hash then global offset."""
    h = np.asarray(hashes if isinstance(hashes, np.ndarray) else list(hashes), dtype=np.uint64)
    g = np.asarray(goffs if isinstance(goffs, np.ndarray) else list(goffs), dtype=np.uint64)
    order = np.lexsort((g, h))
    return Run(h[order], g[order])


def merge(runs: list[Run], start: int) -> Run:
    """One run of every entry of ``runs`` at or past global offset ``start``.

    ``runs`` come oldest first, each sorted, and a newer run's global offsets are past an older one's
    for a shared hash (the index adds entries in log order): a stable sort on the hashes alone then
    keeps every hash's global offsets ascending, and numpy's stable sort of 64-bit keys (a merge sort
    that finds the sorted runs) merges them in about linear time. One run is returned as it is, less
    what lies below ``start`` (a new :class:`Run`, of the same arrays when nothing is dropped).
    """
    if len(runs) == 1:
        run = runs[0]
        low = run.low()
        if low is None or low >= start:
            return Run(run.hashes, run.goffs)  # sorted already, nothing to drop
        keep = run.goffs >= np.uint64(start)
        return Run(run.hashes[keep], run.goffs[keep])
    h = np.concatenate([r.hashes for r in runs]) if runs else np.zeros(0, np.uint64)
    g = np.concatenate([r.goffs for r in runs]) if runs else np.zeros(0, np.uint64)
    if start:
        keep = g >= np.uint64(start)
        h, g = h[keep], g[keep]
    order = np.argsort(h, kind="stable")
    return Run(h[order], g[order])


def _filter_masks() -> U64Array:
    """For each 16-bit value, a 64-bit word with up to :data:`FILTER_PROBES` bits set, at positions drawn
    from the value by multiplying it with odd constants (one probe's bits in one word: one cache line)."""
    v = np.arange(1 << 16, dtype=np.uint64)
    masks = np.zeros(1 << 16, dtype=np.uint64)
    for c in (0x9E37, 0x85EB, 0xC2B3, 0x27D5, 0x165B)[:FILTER_PROBES]:
        masks |= np.uint64(1) << (((v * np.uint64(c)) >> np.uint64(10)) & np.uint64(63))
    return masks


FILTER_PROBES = 5
FILTER_BITS = 24  # bits per entry at least: about one key in 1,500 of those not held is reported as maybe held
_MASKS = _filter_masks()
_LOW16 = np.uint64(0xFFFF)


class HashFilter:
    """A blocked Bloom filter of 64-bit hashes: whether a key may be among those added (false positives
    at a small rate, no false negatives). A key's top bits choose a 64-bit word and its low 16 bits the
    :data:`FILTER_PROBES` bits in it, so a membership test of many keys is a few numpy calls and one
    memory access per key, however many entries it holds. Keys are uniformly distributed hashes.

    Sized for ``capacity`` entries at :data:`FILTER_BITS` bits each (rounded up to a power of two
    words); past that it still answers correctly, with more false positives (:attr:`capacity`).
    """

    __slots__ = ("count", "int_shift", "shift", "words")

    def __init__(self, capacity: int) -> None:
        nbits = max(64, capacity * FILTER_BITS)
        width = max(0, (nbits // 64 - 1).bit_length())  # log2 of the number of words
        self.words: U64Array = np.zeros(1 << width, dtype=np.uint64)
        self.shift = np.uint64(64 - width) if width else None
        self.int_shift = 64 - width  # the same as a Python int (64 with one word: every key's word is 0)
        self.count = 0

    @property
    def capacity(self) -> int:
        """The entries it was sized for: past them it holds more false positives."""
        return len(self.words) * 64 // FILTER_BITS

    def _where(self, keys: U64Array) -> npt.NDArray[np.intp]:
        if self.shift is None:
            return np.zeros(len(keys), dtype=np.intp)
        return (keys >> self.shift).astype(np.intp)

    def add(self, keys: U64Array) -> None:
        """Add ``keys``."""
        np.bitwise_or.at(self.words, self._where(keys), _MASKS[keys & _LOW16])
        self.count += len(keys)

    def may_hold(self, keys: U64Array) -> npt.NDArray[np.bool_]:
        """For each of ``keys``: False if it was never added, True if it may have been."""
        masks = _MASKS[keys & _LOW16]
        return np.asarray((self.words[self._where(keys)] & masks) == masks)

    def may_hold_one(self, key: int) -> bool:
        """:meth:`may_hold` of one key, in Python ints: a few numpy calls cost more than the test itself when
        a transaction has a few ids."""
        mask: int = _MASKS.item(key & 0xFFFF)
        word: int = self.words.item(key >> self.int_shift)
        return word & mask == mask


class Saved(NamedTuple):
    """A generation file decoded: ``runs`` as (generation, count, checksum), and the recent entries."""

    start: int
    runs: list[tuple[int, int, int]]
    recent: Run


def encode_generation(store_id: bytes, generation: int, start: int, runs: list[Run], recent: Run) -> bytes:
    """The bytes of ``msgids.<generation>``; every run must be saved (its ``generation`` set)."""
    parts = [_U64.pack(start), _U64.pack(len(runs))]
    for r in runs:
        assert r.generation, "a run is listed before its file is written"
        parts.append(_RUN_ENTRY.pack(r.generation, len(r), r.checksum))
    parts.append(_U64.pack(len(recent)))
    parts.append(recent.body())
    body = b"".join(parts)
    header = Header(MAGIC_MSGIDS, store_id, generation, len(body), xxhash.xxh3_64_intdigest(body))
    return encode_header(header) + body


def decode_generation(buf: bytes, store_id: bytes, generation: int) -> Saved:
    """Decode ``msgids.<generation>``; :class:`FormatError` where it is not what the format says."""
    h = decode_header(buf, MAGIC_MSGIDS)
    if h.store_id != store_id:
        raise FormatError(16, "store id differs from the store's")
    if h.a != generation:
        raise FormatError(32, f"generation is {h.a}, expected {generation}")
    if len(buf) != HEADER_SIZE + h.b:
        raise FormatError(40, f"body length is {h.b}, the file holds {len(buf) - HEADER_SIZE}")
    body = memoryview(buf)[HEADER_SIZE:]
    if xxhash.xxh3_64_intdigest(body) != h.c:
        raise FormatError(HEADER_SIZE, "body checksum mismatch")
    pos = 0

    def u64() -> int:
        nonlocal pos
        if pos + 8 > len(body):
            raise FormatError(HEADER_SIZE + pos, "body ends inside a field")
        (v,) = _U64.unpack_from(body, pos)
        pos += 8
        return int(v)

    start = u64()
    nruns = u64()
    if pos + nruns * _RUN_ENTRY.size > len(body):
        raise FormatError(HEADER_SIZE + pos, f"{nruns} runs do not fit in the body")
    runs = []
    for _ in range(nruns):
        runs.append(_RUN_ENTRY.unpack_from(body, pos))
        pos += _RUN_ENTRY.size
    m = u64()
    if pos + 16 * m != len(body):
        raise FormatError(HEADER_SIZE + pos, f"{m} recent entries do not fill the rest of the body")
    arr = np.frombuffer(bytes(body[pos:]), dtype="<u8")
    return Saved(start, [(int(g), int(c), int(s)) for g, c, s in runs], Run(arr[:m].copy(), arr[m:].copy()))
