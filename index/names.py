"""The name table: a catalog's stream names, looked up in place without decoding them.

File ``names.<generation>`` (20 decimal digits) is written by each checkpoint
beside ``catalog.<generation>`` and belongs to exactly that file: it records
the catalog's body checksum. It holds an open-addressing hash table from the
xxh3-64 of a name's UTF-8 bytes to the stream id, and where each name's
bytes lie in the catalog file, so that an open maps both files and looks a
name up when it is first asked for, instead of decoding every name. All
integers little-endian::

    offset  size    type     field
    0       64      header   magic b"LGNAMTAB"; a = generation; b = body length; c = xxh3-64 of the body
    64      8       u64      S, number of streams (the catalog's)
    72      8       u64      T, number of slots (a power of two, at least 2 S and at least 16)
    80      8       u64      the catalog's body checksum (its header's c): the catalog this table indexes
    88      8       u64      L, number of entries of the shared-run starts
    96      8       u64      reach: no shared run, nor the last message of a stream with shared runs, lies at
                             or past this global offset
    104     8       u64      0 (reserved)
    112     8 * S   u64[S]   hash: xxh3-64 of each stream's name (UTF-8), by stream id
    ...     8 * S   u64[S]   pos: byte position in the catalog file of each name's UTF-8 bytes
    ...     4 * S   u32[S]   len: byte length of each name's UTF-8 bytes
    ...     pad     zero     to a multiple of 8 bytes from the start of the file
    ...     4 * T   u32[T]   slots: 1 + stream id, or 0 (empty)
    ...     pad     zero     to a multiple of 8
    ...     8 * L   u64[L]   starts: stream id i's shared runs are entries starts[i] .. starts[i + 1] - 1

A name whose hash is ``h`` is in the first slot from ``h mod T`` on (going
round) that holds its stream id; the slots between are all taken. A lookup
compares the stored name bytes, so two names of one hash never mix.
"""

from __future__ import annotations

import mmap
import struct
import sys
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple, overload

import numpy as np
import numpy.typing as npt
import xxhash

from .errors import FormatError
from .header import HEADER_SIZE, MAGIC_NAMES, NamesHeader, check_generation_file

_COUNTS = struct.Struct("<QQQQQQ")
FIXED = HEADER_SIZE + _COUNTS.size  # where the per-stream arrays start (112)
MIN_SLOTS = 16

_LITTLE = sys.byteorder == "little"

__all__ = ["FIXED", "MAGIC_NAMES", "LazyIds", "LazyNames", "Table", "TableLayout", "build_slots", "encode_table"]


def slots_for(count: int) -> int:
    """The number of slots a table of ``count`` names is built with (load at most one half)."""
    t = MIN_SLOTS
    while t < 2 * count:
        t *= 2
    return t


def _align8(x: int) -> int:
    return x + (-x % 8)


class TableLayout(NamedTuple):
    """Where a name table file's arrays lie (byte positions from its start) and its counts."""

    streams: int
    slots: int
    catalog_checksum: int
    nstarts: int
    reach: int
    hash: int
    pos: int
    len: int
    table: int
    starts: int
    end: int

    @classmethod
    def of(cls, s: int, t: int, checksum: int, nstarts: int, reach: int) -> TableLayout:
        h = FIXED
        p = h + 8 * s
        ln = p + 8 * s
        table = _align8(ln + 4 * s)
        starts = _align8(table + 4 * t)
        return cls(s, t, checksum, nstarts, reach, h, p, ln, table, starts, starts + 8 * nstarts)


def str_header_sizes(lengths: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """The msgpack str header size of each UTF-8 byte length (fixstr, str8, str16, str32)."""
    n = lengths.astype(np.int64)
    return np.where(n < 32, 1, np.where(n < 256, 2, np.where(n < 65536, 3, 5)))


def array_header_size(count: int) -> int:
    """The msgpack array header size for ``count`` items."""
    return 1 if count < 16 else 3 if count < 65536 else 5


def name_positions(lengths: npt.NDArray[Any], names_at: int) -> npt.NDArray[np.uint64]:
    """Where each name's UTF-8 bytes lie in a msgpack array of them that starts at byte ``names_at``."""
    if not len(lengths):
        return np.zeros(0, np.uint64)
    hdr = str_header_sizes(lengths)
    item = hdr + lengths.astype(np.int64)
    start = np.empty(len(lengths), np.int64)
    start[0] = 0
    np.cumsum(item[:-1], out=start[1:])
    out: npt.NDArray[np.uint64] = (start + hdr + names_at + array_header_size(len(lengths))).astype(np.uint64)
    return out


def build_slots(hashes: npt.NDArray[Any], slots: int, table: npt.NDArray[Any] | None = None, first: int = 0) -> Any:
    """Put stream ids ``first``, ``first + 1``, ... (with ``hashes``) into ``table`` (new if ``None``), vectorized.

    Each round puts every id whose current slot is empty there (one id per slot); the others move one
    slot on. Returns the table (u32, 1 + stream id per taken slot).
    """
    if table is None:
        table = np.zeros(slots, np.uint32)
    mask = slots - 1
    sids = np.arange(first, first + len(hashes), dtype=np.int64)
    at = (np.asarray(hashes, np.uint64) & np.uint64(mask)).astype(np.int64)
    while len(sids):
        free = np.flatnonzero(table[at] == 0)
        tags = (sids[free] + 1).astype(np.uint32)
        table[at[free]] = tags  # two ids on one slot: one of them is stored, found below
        won = np.zeros(len(sids), bool)
        won[free] = table[at[free]] == tags
        sids = sids[~won]
        at = (at[~won] + 1) & mask
    return table


def encode_table(
    generation: int,
    store_id: bytes,
    catalog_checksum: int,
    hashes: npt.NDArray[Any],
    pos: npt.NDArray[Any],
    lengths: npt.NDArray[Any],
    table: npt.NDArray[Any],
    starts: npt.NDArray[Any],
    reach: int,
) -> bytes:
    """The whole name table file for ``generation``, header included."""
    s, t = len(hashes), len(table)
    lay = TableLayout.of(s, t, catalog_checksum, len(starts), reach)
    parts = [
        _COUNTS.pack(s, t, catalog_checksum, len(starts), reach, 0),
        np.asarray(hashes, "<u8").tobytes(),
        np.asarray(pos, "<u8").tobytes(),
        np.asarray(lengths, "<u4").tobytes(),
        bytes(lay.table - (lay.len + 4 * s)),
        np.asarray(table, "<u4").tobytes(),
        bytes(lay.starts - (lay.table + 4 * t)),
        np.asarray(starts, "<u8").tobytes(),
    ]
    body = b"".join(parts)
    assert HEADER_SIZE + len(body) == lay.end
    header = NamesHeader(store_id, generation, len(body), xxhash.xxh3_64_intdigest(body)).encode()
    return header + body


def check_table(buf: Any, store_id: bytes, generation: int) -> TableLayout:
    """Check a name table file's header, body checksum and sizes; return its layout.

    Raises :class:`FormatError` at the byte position of the first thing that is not so.
    """
    check_generation_file(buf, NamesHeader.decode(buf), store_id, generation, FIXED)
    s, t, checksum, nstarts, reach, _zero = _COUNTS.unpack_from(buf, HEADER_SIZE)
    if t < MIN_SLOTS or t & (t - 1) or t < 2 * s:
        raise FormatError(72, f"{t} slots for {s} streams: not a power of two of at least {max(MIN_SLOTS, 2 * s)}")
    if s > len(buf) or nstarts > len(buf):
        raise FormatError(HEADER_SIZE, f"counts (S={s}, L={nstarts}) need more bytes than the file has")
    lay = TableLayout.of(s, t, checksum, nstarts, reach)
    if lay.end != len(buf):
        raise FormatError(
            HEADER_SIZE, f"counts (S={s}, T={t}, L={nstarts}) need {lay.end} bytes, the file has {len(buf)}"
        )
    return lay


def _view(buf: Any, code: Literal["Q", "I"], at: int, count: int) -> Any:
    """``count`` little-endian items at byte ``at`` of ``buf``, indexable at C speed (a memoryview when native)."""
    if _LITTLE:
        with memoryview(buf) as whole:
            return whole[at : at + struct.calcsize(code) * count].cast(code)
    return np.frombuffer(buf, "<u8" if code == "Q" else "<u4", count, at).tolist()  # pragma: no cover


class Table:
    """The name table of one mapped catalog: lookups of names that the catalog file holds."""

    __slots__ = ("catalog", "hashes", "lens", "mask", "pos", "slots", "streams")

    def __init__(self, catalog: mmap.mmap | bytes, table: mmap.mmap | bytes, lay: TableLayout) -> None:
        self.catalog = catalog
        self.streams = lay.streams
        self.mask = lay.slots - 1
        self.hashes = _view(table, "Q", lay.hash, lay.streams)
        self.pos = _view(table, "Q", lay.pos, lay.streams)
        self.lens = _view(table, "I", lay.len, lay.streams)
        self.slots = _view(table, "I", lay.table, lay.slots)

    def find(self, name: str) -> int | None:
        """The stream id of ``name``, or ``None`` if the catalog file does not hold it."""
        try:
            raw = name.encode("utf-8")
        except UnicodeEncodeError:
            return None  # a lone surrogate: no stored name has it
        h = xxhash.xxh3_64_intdigest(raw)
        mask = self.mask
        slots, hashes, pos, lens, cat = self.slots, self.hashes, self.pos, self.lens, self.catalog
        i = h & mask
        for _ in range(mask + 1):
            tag = slots[i]
            if not tag:
                return None
            sid = tag - 1
            if sid < self.streams and hashes[sid] == h:
                p = pos[sid]
                if cat[p : p + lens[sid]] == raw:
                    return int(sid)
            i = (i + 1) & mask
        return None

    def name(self, sid: int) -> str:
        p = self.pos[sid]
        return bytes(self.catalog[p : p + self.lens[sid]]).decode("utf-8")


class LazyIds(dict[str, int]):
    """Name -> stream id over a mapped catalog: ``get``, ``in``, ``[]`` and ``len`` as a dict's.

    The dict itself holds the names found so far and every stream added
    since the catalog was loaded; a name it does not hold is looked up in
    the file's table (and kept). A name already held costs what a dict
    lookup costs, plus one Python call. ``keys()``, ``values()`` and
    ``items()`` are the dict's own: only the names held so far (iterate the
    object itself, or the catalog's names, for every name).
    """

    __slots__ = ("_names", "_table")

    def __init__(self, table: Table, names: LazyNames) -> None:
        super().__init__()
        self._table = table
        self._names = names  # every name by id: the length and the order of iteration

    def get(self, name: str, default: Any = None, _get: Any = dict.get) -> Any:
        sid = _get(self, name)
        if sid is None:
            sid = self._table.find(name)
            if sid is None:
                return default
            self[name] = sid
        return sid

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __getitem__(self, name: str) -> int:
        sid = self.get(name)
        if sid is None:
            raise KeyError(name)
        return int(sid)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)


class LazyNames:
    """Stream id -> name over a mapped catalog: ``[]`` (an id or a slice), ``len``, ``in``, iteration, ``append``.

    Names of the file are decoded when asked for (and kept); names added
    since the catalog was loaded are in a list.
    """

    __slots__ = ("_decoded", "_table", "base", "new")

    def __init__(self, table: Table) -> None:
        self._table = table
        self.base = table.streams  # names in the file: ids 0 .. base - 1
        self.new: list[str] = []  # ids base, base + 1, ...
        self._decoded: dict[int, str] = {}

    def __len__(self) -> int:
        return self.base + len(self.new)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i >= self.base:
            return self.new[i - self.base]
        name = self._decoded.get(i)
        if name is None:
            if i < 0:
                raise IndexError(i)
            name = self._decoded[i] = self._table.name(i)
        return name

    def __iter__(self) -> Iterator[str]:
        for i in range(self.base):
            yield self[i]
        yield from self.new

    def __contains__(self, name: object) -> bool:
        # A file's names are never empty (an unnamed id fails the open before a checkpoint).
        if name == "":
            return "" in self.new
        return isinstance(name, str) and (name in self.new or self._table.find(name) is not None)

    def append(self, name: str) -> None:
        self.new.append(name)


def table_problems(
    buf: Any, lay: TableLayout, names: list[str], starts: npt.NDArray[Any], reach: int, names_at: int
) -> list[tuple[int, str]]:
    """How a checked name table (``buf``, laid out as ``lay``) differs from the catalog it indexes, whose
    ``names`` (by id), shared-run ``starts`` and :func:`~logstore.index.catalog.shared_reach` are given and
    whose names block starts at byte ``names_at``: ``(byte position, problem)`` each (``logstore verify``)."""
    out: list[tuple[int, str]] = []
    s = lay.streams
    raw = [n.encode("utf-8") for n in names]
    want_hash = np.fromiter(map(xxhash.xxh3_64_intdigest, raw), np.uint64, s)
    want_len = np.fromiter(map(len, raw), np.uint32, s)
    want_pos = name_positions(want_len, names_at)
    for what, at, dtype, want in (
        ("hash", lay.hash, "<u8", want_hash),
        ("position", lay.pos, "<u8", want_pos),
        ("length", lay.len, "<u4", want_len),
    ):
        have = np.frombuffer(buf, dtype, s, at)
        bad = np.flatnonzero(have != want)
        if len(bad):
            i = int(bad[0])
            out.append((at + have.itemsize * i, f"the {what} of stream id {i}'s name ({names[i]!r}) is wrong"))
    slots = np.frombuffer(buf, "<u4", lay.slots, lay.table).astype(np.int64)
    taken = np.flatnonzero(slots)
    sids = slots[taken] - 1
    if len(sids) and int(sids.max()) >= s:
        i = int(taken[np.argmax(sids >= s)])
        out.append((lay.table + 4 * i, f"slot {i} holds stream id {int(slots[i]) - 1}, beyond the {s} streams"))
        return out
    count = np.bincount(sids, minlength=s) if s else np.zeros(0, np.int64)
    if len(count) and int(count.max()) > 1:
        out.append((lay.table, f"stream id {int(np.argmax(count > 1))} is in more than one slot"))
    if len(count) and int(count.min()) < 1:
        out.append((lay.table, f"stream id {int(np.argmin(count))} ({names[int(np.argmin(count))]!r}) is in no slot"))
    if not out and s:
        # Each id is reached from its name's home slot without passing an empty one.
        mask = lay.slots - 1
        home = (want_hash[sids] & np.uint64(mask)).astype(np.int64)
        dist = (taken - home) & mask
        empty = np.flatnonzero(slots == 0)
        # For each taken slot, how many slots back (going round) the nearest empty one is.
        k = np.searchsorted(empty, taken) - 1  # -1: the nearest empty slot is the last one, round the end
        back = (taken - empty[k]) & mask
        far = np.flatnonzero(dist >= back)
        if len(far):
            i = int(taken[far[0]])
            out.append((lay.table + 4 * i, f"stream id {int(sids[far[0]])} in slot {i} is past an empty slot"))
    have_starts = np.frombuffer(buf, "<u8", lay.nstarts, lay.starts)
    if len(have_starts) != len(starts) or not bool(np.all(have_starts == np.asarray(starts, np.uint64))):
        out.append((lay.starts, "the shared-run starts differ from the catalog's shared runs"))
    if lay.reach != reach:
        out.append((96, f"reach is {lay.reach}, the catalog's runs and heads give {reach}"))
    return out
