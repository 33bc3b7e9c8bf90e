"""The stream catalog: name -> stream id, head, first retained offset, flags.

Stream ids are dense (0, 1, 2, ... in order of first commit) and are what log
records carry instead of names; the log names each stream in the first record
of it in every segment, so the log alone rebuilds this table.

File ``catalog.<generation>`` (20 decimal digits), written whole to a
temporary file, fsynced and renamed; the checkpoint names the generation that
is current. All integers little-endian::

    offset  size    type     field
    0       64      header   magic b"LGCATALG"; a = generation; b = body length; c = xxh3-64 of the body
    64      8       u64      S, number of streams
    72      8       u64      R, number of runs in the shared table
    80      8       u64      K, number of large streams (with a run file of their own)
    88      8       u64      N, byte length of the names block
    96      N       msgpack  array of S strings: the stream names, by stream id
    ...     pad     zero     to a multiple of 8 bytes from the start of the file
    ...     8 * S   u64[S]   head: next unused offset of each stream
    ...     8 * S   u64[S]   first: first retained offset of each stream (raised by truncation and deletion)
    ...     8 * S   u64[S]   run_diff: global offset - offset of the stream's last run
    ...     8 * S   u64[S]   ctrl: 1 + global offset of the stream's last control record (0: none)
    ...     4 * S   u32[S]   nruns: number of runs of each stream
    ...     S       u8[S]    flags: bit 0 deleted (until the next append), bit 1 large (own run file)
    ...     pad     zero     to a multiple of 8
    ...     4 * R   u32[R]   shared runs: stream id (sorted by stream id, then offset)
    ...     pad     zero     to a multiple of 8
    ...     8 * R   u64[R]   shared runs: offset
    ...     8 * R   u64[R]   shared runs: global offset
    ...     8 * K   u64[K]   large streams: stream id
    ...     8 * K   u64[K]   large streams: number of valid runs in the run file
    ...     8 * K   u64[K]   large streams: xxh3-64 of those runs' bytes
"""

from __future__ import annotations

import mmap
import struct
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import xxhash

from .errors import FormatError
from .header import HEADER_SIZE, CatalogHeader, check_generation_file
from .names import (
    LazyIds,
    LazyNames,
    Table,
    array_header_size,
    build_slots,
    check_table,
    encode_table,
    name_positions,
    slots_for,
)
from .runs import U32, U64, RunIndex

FLAG_DELETED = 1
FLAG_LARGE = 2

_COUNTS = struct.Struct("<QQQQ")
_U8 = np.dtype("u1")
NAMES_AT = HEADER_SIZE + _COUNTS.size  # where the names block starts (96)
_NO_REACH = (1 << 64) - 1


class TableUnusable(FormatError):
    """The name table file cannot serve this catalog file (damaged, or another catalog's): decode the catalog."""


def _array_header(count: int) -> bytes:
    """The msgpack array header for ``count`` items (big-endian lengths, as msgpack has them)."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 65536:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _pack_str(name: str) -> bytes:
    out: bytes = msgpack.packb(name, use_bin_type=True)
    return out


def shared_reach(head: npt.NDArray[Any], runs: RunIndex) -> int:
    """The global offset that no shared run, nor the last message of a stream with shared runs, reaches.

    ``2**64 - 1`` when a stream's head is not past its last run (damage: an open refuses the files).
    """
    _sids, soffs, goffs, starts, _delta = runs.snapshot
    if not len(goffs):
        return 0
    have = np.flatnonzero(starts[1:] > starts[:-1])
    last = starts[1:][have] - 1
    s_last = soffs[last]
    h = head[have]
    if not bool(np.all(h > s_last)):
        return _NO_REACH
    return max(int(goffs.max()) + 1, int((goffs[last] + (h - s_last)).max()))


class Catalog:
    """Every stream the log has ever named, by dense stream id.

    Decoded (:meth:`decode`, or built by the log), :attr:`names` is a list and
    :attr:`ids` a dict. Mapped (:meth:`mapped`), they are a
    :class:`~logstore.index.names.LazyNames` and a
    :class:`~logstore.index.names.LazyIds` over the file and its name table,
    with the same interface, and the per-stream arrays are views of the
    file's private mapping until the first new stream grows them.

    The writer thread alone mutates. Arrays grow by replacement, and a new
    stream's arrays are in place before its name enters :attr:`ids`, so a
    reader that found an id always indexes arrays long enough for it.
    """

    def __init__(self) -> None:
        self.names: list[str] | LazyNames = []
        self.ids: dict[str, int] = {}
        # The name table as of the last encode (or load): hash and UTF-8 length of names 0 .. tabled - 1,
        # and the slots; the next encode adds the names since.
        self._tabled = 0
        self._hash: npt.NDArray[Any] = np.zeros(0, U64)
        self._lens: npt.NDArray[Any] = np.zeros(0, U32)
        self._slots: npt.NDArray[Any] = np.zeros(0, U32)
        self._slots_owned = True  # False while the slots are the loaded file's (copied before a change)
        self._items: Any = b""  # a mapped catalog's msgpack items of names 0 .. names.base - 1
        self.head: npt.NDArray[Any] = np.zeros(64, U64)
        self.first: npt.NDArray[Any] = np.zeros(64, U64)
        self.run_diff: npt.NDArray[Any] = np.zeros(64, U64)
        self.ctrl: npt.NDArray[Any] = np.zeros(64, U64)
        self.nruns: npt.NDArray[Any] = np.zeros(64, U32)
        self.flags: npt.NDArray[Any] = np.zeros(64, _U8)

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str) -> int:
        """Give ``name`` the next stream id and return it."""
        sid = len(self.names)
        if sid == len(self.head):
            self._grow(max(64, 2 * sid))
        self.names.append(name)
        self.ids[name] = sid
        return sid

    def _grow(self, capacity: int) -> None:
        for attr in ("head", "first", "run_diff", "ctrl", "nruns", "flags"):
            old = getattr(self, attr)
            new = np.zeros(capacity, old.dtype)
            new[: len(old)] = old
            setattr(self, attr, new)

    def place(self, sid: int, name: str) -> None:
        """Give ``name`` the id ``sid`` when a log that does not start at 0 is scanned.

        Ids then need not appear in order; ids not yet named hold ``""``
        (:meth:`unnamed` lists them) until their name is found.
        """
        if sid >= len(self.head):
            self._grow(max(2 * len(self.head), sid + 1))
        if isinstance(self.names, LazyNames):
            self._decode_all()
        assert isinstance(self.names, list)
        if sid < self._tabled:
            self._tabled = 0  # a name the table holds changes: the next encode builds it afresh
            self._hash, self._lens = np.zeros(0, U64), np.zeros(0, U32)
        if sid >= len(self.names):
            self.names.extend([""] * (sid + 1 - len(self.names)))
        self.names[sid] = name
        self.ids[name] = sid

    def _decode_all(self) -> None:
        """Replace the lazy names and ids by a list and a dict of every name (``place`` needs them)."""
        names = list(self.names)
        self.ids = dict(zip(names, range(len(names)), strict=True))
        self.names = names

    def unnamed(self) -> list[int]:
        """Ids below the highest known one that no name was placed at."""
        if "" not in self.names:  # the usual case, checked at C speed
            return []
        return [i for i, n in enumerate(self.names) if not n]

    def set_first(self, sid: int, first: int) -> None:
        """Raise stream ``sid``'s first retained offset (writer thread)."""
        self.first[sid] = first

    def trimmed(self) -> dict[int, int]:
        """Stream id -> first retained offset, for the streams where it is above 0 (computed from ``first``).

        One pass over every stream: a global reader takes it once per removal
        (``Published.removals``) and then looks it up per record, where a dict
        lookup is cheaper than indexing a numpy array.
        """
        first = self.first[: len(self.names)]
        nz = np.flatnonzero(first)
        return dict(zip(nz.tolist(), first[nz].tolist(), strict=True))

    def head_of(self, name: str) -> int:
        sid = self.ids.get(name)
        return 0 if sid is None else int(self.head[sid])

    # -- file codec ------------------------------------------------------------

    def encode(self, runs: RunIndex, generation: int, store_id: bytes) -> bytes:
        """The whole catalog file for ``generation``, header included."""
        s = len(self.names)
        sids, soffs, goffs, _starts, delta = runs.snapshot
        if delta:
            raise ValueError("merge the run index before encoding the catalog")
        large = sorted(runs.large)
        if isinstance(self.names, LazyNames):
            # The mapped file's names as they are, then the new ones: no name is decoded.
            names = b"".join([_array_header(s), self._items, *map(_pack_str, self.names.new)])
        else:
            names = msgpack.packb(self.names, use_bin_type=True)
        parts: list[bytes] = [_COUNTS.pack(s, len(sids), len(large), len(names)), names]
        size = HEADER_SIZE + _COUNTS.size + len(names)

        def add(raw: bytes) -> None:
            nonlocal size
            parts.append(raw)
            size += len(raw)

        def pad() -> None:
            if size % 8:
                add(bytes(8 - size % 8))

        pad()
        for arr in (self.head, self.first, self.run_diff, self.ctrl):
            add(arr[:s].astype(U64).tobytes())
        add(self.nruns[:s].astype(U32).tobytes())
        add(self.flags[:s].astype(_U8).tobytes())
        pad()
        add(np.asarray(sids, U32).tobytes())
        pad()
        add(np.asarray(soffs, U64).tobytes())
        add(np.asarray(goffs, U64).tobytes())
        add(np.asarray(large, U64).tobytes())
        add(np.asarray([runs.large[sid].persisted for sid in large], U64).tobytes())
        add(np.asarray([runs.large[sid].checksum(runs.large[sid].persisted) for sid in large], U64).tobytes())
        body = b"".join(parts)
        header = CatalogHeader(store_id, generation, len(body), xxhash.xxh3_64_intdigest(body)).encode()
        return header + body

    def encode_names(self, runs: RunIndex, generation: int, store_id: bytes, catalog_checksum: int) -> bytes:
        """The name table file (:mod:`logstore.index.names`) for the catalog file of ``generation`` just encoded
        (whose body checksum is ``catalog_checksum``); adds the names since the last encode to the table."""
        s = len(self.names)
        t = self._tabled
        if t < s:
            new = [n.encode("utf-8") for n in self.names[t:s]]
            hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, new), U64, len(new))
            self._hash = np.concatenate((self._hash[:t], hashes))
            self._lens = np.concatenate((self._lens[:t], np.fromiter(map(len, new), U32, len(new))))
            slots = slots_for(s)
            if t == 0 or slots > len(self._slots):
                self._slots = build_slots(self._hash, slots)
                self._slots_owned = True
            else:
                if not self._slots_owned:
                    self._slots = self._slots.copy()
                    self._slots_owned = True
                build_slots(hashes, len(self._slots), self._slots, t)
            self._tabled = s
        elif not len(self._slots):
            self._slots = np.zeros(slots_for(0), U32)
        pos = name_positions(self._lens, NAMES_AT)
        starts = runs.snapshot[3]
        reach = shared_reach(self.head[:s], runs)
        return encode_table(
            generation, store_id, catalog_checksum, self._hash, pos, self._lens, self._slots, starts, reach
        )

    @classmethod
    def mapped(
        cls, buf: Any, table: Any, store_id: bytes, generation: int
    ) -> tuple[Catalog, RunIndex, list[tuple[int, int, int]], int]:
        """A catalog over the mapped catalog file ``buf``, its names looked up through the name table ``table``.

        Checks both headers and body checksums, the sizes, and that the table is this catalog's
        (:class:`TableUnusable` if not: decode the catalog instead). The per-stream arrays are views of
        ``buf`` (a private writable mapping: changes stay in memory). Returns what :meth:`decode` does, and
        the table's reach (see :func:`shared_reach`).
        """
        header = CatalogHeader.decode(memoryview(buf))
        s, r, k, n = cls._check_body(buf, header, store_id, generation)
        try:
            lay = check_table(table, store_id, generation)
        except FormatError as exc:
            raise TableUnusable(exc.position, f"name table: {exc.what}") from None
        if lay.catalog_checksum != header.body_checksum or lay.streams != s:
            raise TableUnusable(80, "name table belongs to another catalog file")
        hs = array_header_size(s)
        if bytes(buf[NAMES_AT : NAMES_AT + hs]) != _array_header(s):
            raise FormatError(NAMES_AT, f"names block does not start as an array of {s} items")
        pos = NAMES_AT + n
        pos += -pos % 8
        cat = cls()
        views = []
        for dtype in (U64, U64, U64, U64, U32, _U8):
            views.append(np.frombuffer(buf, dtype, s, pos))
            pos += dtype.itemsize * s
        cat.head, cat.first, cat.run_diff, cat.ctrl, cat.nruns, cat.flags = views
        pos += -pos % 8
        sids = np.frombuffer(buf, U32, r, pos)
        pos += 4 * r
        pos += -pos % 8
        soffs = np.frombuffer(buf, U64, r, pos)
        goffs = np.frombuffer(buf, U64, r, pos + 8 * r)
        pos += 16 * r
        large = np.frombuffer(buf, U64, 3 * k, pos).reshape(3, k) if k else np.zeros((3, 0), U64)
        starts = np.frombuffer(table, "<i8", lay.nstarts, lay.starts)
        want = int(sids[-1]) + 2 if r else 1
        if lay.nstarts != want or int(starts[0]) != 0 or int(starts[-1]) != r:
            raise TableUnusable(lay.starts, f"shared-run starts: {lay.nstarts} entries, the catalog needs {want}")
        if k and int(large[0].max()) >= s:
            raise FormatError(HEADER_SIZE, "a large stream id is beyond the catalog")
        names_table = Table(buf, table, lay)
        names = LazyNames(names_table)
        cat.names = names
        cat.ids = LazyIds(names_table, names)
        cat._items = memoryview(buf)[NAMES_AT + hs : NAMES_AT + n]
        cat._tabled = s
        cat._hash = np.frombuffer(table, U64, s, lay.hash)
        cat._lens = np.frombuffer(table, U32, s, lay.len)
        cat._slots = np.frombuffer(table, U32, lay.slots, lay.table)
        cat._slots_owned = False
        runs = RunIndex(sids, soffs, goffs, starts=starts)
        return cat, runs, [(int(a), int(b), int(c)) for a, b, c in large.T.tolist()], lay.reach

    @staticmethod
    def _check_body(buf: Any, header: CatalogHeader, store_id: bytes, generation: int) -> tuple[int, int, int, int]:
        """Check a catalog file's header fields, length, body checksum and counts; return S, R, K and N."""
        check_generation_file(buf, header, store_id, generation, HEADER_SIZE + _COUNTS.size)
        s, r, k, n = _COUNTS.unpack_from(buf, HEADER_SIZE)
        need = n + 37 * s + 20 * r + 24 * k + 32
        if need > len(buf):
            raise FormatError(HEADER_SIZE, f"counts (S={s}, R={r}, K={k}, N={n}) need more bytes than the file has")
        pos = _align8(_align8(_align8(NAMES_AT + n) + 37 * s) + 4 * r) + 16 * r + 24 * k
        if pos != len(buf):
            raise FormatError(min(pos, len(buf)), f"the counts end the file at byte {pos}, it has {len(buf)}")
        return s, r, k, n

    # Long on purpose: a single pass over the file's fields in their on-disk order.
    @classmethod
    def decode(  # noqa: PLR0915
        cls, buf: bytes | mmap.mmap, store_id: bytes, generation: int
    ) -> tuple[Catalog, RunIndex, list[tuple[int, int, int]]]:
        """Decode a catalog file.

        Returns the catalog, the run index holding the shared table, and the
        large streams as ``(stream id, valid runs, xxh3-64)`` whose run files
        the caller loads into ``RunIndex.large``.
        """
        header = CatalogHeader.decode(memoryview(buf))
        check_generation_file(buf, header, store_id, generation, HEADER_SIZE + _COUNTS.size)
        s, r, k, n = _COUNTS.unpack_from(buf, HEADER_SIZE)
        pos = HEADER_SIZE + _COUNTS.size
        need = n + 37 * s + 20 * r + 24 * k + 32
        if need > len(buf):
            raise FormatError(HEADER_SIZE, f"counts (S={s}, R={r}, K={k}, N={n}) need more bytes than the file has")
        try:
            names = msgpack.unpackb(buf[pos : pos + n], raw=False, use_list=True)
        except (ValueError, TypeError) as exc:  # every msgpack decoding error is one of these
            raise FormatError(pos, f"names block does not decode: {exc}") from None
        if not isinstance(names, list) or len(names) != s or not set(map(type, names)) <= {str}:
            raise FormatError(pos, f"names block is not an array of {s} strings")
        pos += n

        def align() -> None:
            nonlocal pos
            pos += -pos % 8

        def take(dtype: np.dtype[Any], count: int) -> npt.NDArray[Any]:
            nonlocal pos
            end = pos + dtype.itemsize * count
            if end > len(buf):
                raise FormatError(min(pos, len(buf)), "file ends inside an array")  # pos may be past it: padding
            arr = np.frombuffer(buf, dtype=dtype, count=count, offset=pos).copy()
            pos = end
            return arr

        align()
        cat = cls()
        cat._grow(max(64, 2 * s))
        cat.names = names
        cat.ids = dict(zip(names, range(s), strict=True))
        cat._items = b""
        if len(cat.ids) != s:
            raise FormatError(HEADER_SIZE + _COUNTS.size, "a stream name appears twice")
        cat.head[:s] = take(U64, s)
        cat.first[:s] = take(U64, s)
        cat.run_diff[:s] = take(U64, s)
        cat.ctrl[:s] = take(U64, s)
        cat.nruns[:s] = take(U32, s)
        cat.flags[:s] = take(_U8, s)
        align()
        sids = take(U32, r)
        align()
        soffs = take(U64, r)
        goffs = take(U64, r)
        large_sids = take(U64, k)
        large_counts = take(U64, k)
        large_sums = take(U64, k)
        if pos != len(buf):
            raise FormatError(pos, f"{len(buf) - pos} unexpected bytes after the last table")
        if r and (int(sids.max()) >= s):
            raise FormatError(HEADER_SIZE, "a run names a stream id beyond the catalog")
        if r > 1:
            key_ok = (sids[1:] > sids[:-1]) | ((sids[1:] == sids[:-1]) & (soffs[1:] > soffs[:-1]))
            if not bool(np.all(key_ok)):
                raise FormatError(HEADER_SIZE, "shared runs are not sorted by stream id and offset")
        if k and int(large_sids.max()) >= s:
            raise FormatError(HEADER_SIZE, "a large stream id is beyond the catalog")
        runs = RunIndex(sids, soffs, goffs)
        large = [(int(a), int(b), int(c)) for a, b, c in zip(large_sids, large_counts, large_sums, strict=True)]
        return cat, runs, large


def _align8(x: int) -> int:
    return x + (-x % 8)
