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

import struct
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import xxhash

from .errors import FormatError
from .header import HEADER_SIZE, CatalogHeader
from .runs import U32, U64, RunIndex

FLAG_DELETED = 1
FLAG_LARGE = 2

_COUNTS = struct.Struct("<QQQQ")
_U8 = np.dtype("u1")


class Catalog:
    """Every stream the log has ever named, by dense stream id.

    The writer thread alone mutates. Arrays grow by replacement, and a new
    stream's arrays are in place before its name enters :attr:`ids`, so a
    reader that found an id always indexes arrays long enough for it.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
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
            self._grow(2 * sid)
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
        if sid >= len(self.names):
            self.names.extend([""] * (sid + 1 - len(self.names)))
        self.names[sid] = name
        self.ids[name] = sid

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

    # Long on purpose: a single pass over the file's fields in their on-disk order.
    @classmethod
    def decode(  # noqa: PLR0912, PLR0915
        cls, buf: bytes, store_id: bytes, generation: int
    ) -> tuple[Catalog, RunIndex, list[tuple[int, int, int]]]:
        """Decode a catalog file.

        Returns the catalog, the run index holding the shared table, and the
        large streams as ``(stream id, valid runs, xxh3-64)`` whose run files
        the caller loads into ``RunIndex.large``.
        """
        header = CatalogHeader.decode(buf)
        if header.store_id != store_id:
            raise FormatError(16, "store id differs from the store's")
        if header.generation != generation:
            raise FormatError(32, f"generation is {header.generation}, the checkpoint names {generation}")
        if len(buf) != HEADER_SIZE + header.body_length:
            raise FormatError(
                40, f"body length is {header.body_length} but the file holds {len(buf) - HEADER_SIZE} bytes"
            )
        if xxhash.xxh3_64_intdigest(buf[HEADER_SIZE:]) != header.body_checksum:
            raise FormatError(HEADER_SIZE, "body checksum mismatch")
        if len(buf) < HEADER_SIZE + _COUNTS.size:
            raise FormatError(HEADER_SIZE, "body is shorter than its counts")
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
