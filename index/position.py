"""Per-segment position index: global offset -> byte position in the segment.

File ``segments/<first>.pos``::

    offset size     type   field
    0      64       header magic b"LGPOSIDX"; a = first global offset of the segment; b = c = 0
    64     4 * n    u32[n] byte position in the segment of the record with global offset first + i

The file is only ever appended: the checkpoint records how many entries are
valid (``n``) and the xxh3-64 of those ``4 * n`` bytes. Entries past ``n`` are
left over from a run that did not reach its next checkpoint and are ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from .errors import FormatError
from .growable import Growable
from .header import HEADER_SIZE, PositionHeader, check_index_file

ENTRY = np.dtype("<u4")


class PositionIndex:
    """Record positions of one segment, in global-offset order.

    The writer thread appends; readers call :meth:`position`. ``persisted`` is
    the number of entries already in the file on disk.
    """

    __slots__ = ("first", "persisted", "positions")

    def __init__(self, first: int, initial: npt.NDArray[Any] | None = None) -> None:
        self.first = first
        self.positions = Growable(ENTRY, initial)
        self.persisted = 0 if initial is None else len(initial)

    def __len__(self) -> int:
        return len(self.positions)

    def position(self, global_offset: int) -> int:
        arr, n = self.positions.state
        i = global_offset - self.first
        if not 0 <= i < n:
            raise KeyError(global_offset)
        return int(arr[i])

    def checksum(self, count: int | None = None) -> int:
        view = self.positions.view()
        if count is not None:
            view = view[:count]
        return xxhash.xxh3_64_intdigest(view.tobytes())

    def tail_bytes(self) -> tuple[int, bytes]:
        """The entries not yet in the file: (byte position in the file, bytes)."""
        view = self.positions.view()
        return HEADER_SIZE + 4 * self.persisted, view[self.persisted :].tobytes()

    @staticmethod
    def file_header(store_id: bytes, first: int) -> bytes:
        return PositionHeader(store_id, first).encode()

    @classmethod
    def decode(cls, buf: bytes | memoryview, store_id: bytes, first: int, count: int, checksum: int) -> PositionIndex:
        """Decode the first ``count`` entries of a position file and check them."""
        check_index_file(
            buf, PositionHeader, (store_id, first), "first global offset", count, 4, "entries", "checkpoint", checksum
        )
        body = np.frombuffer(buf, dtype=ENTRY, count=count, offset=HEADER_SIZE)
        if count > 1 and not bool(np.all(body[1:] > body[:-1])):
            raise FormatError(HEADER_SIZE, "positions are not increasing")
        return cls(first, body)
