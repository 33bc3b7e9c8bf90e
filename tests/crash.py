"""Simulated crashes: turn an open store into the files a power loss could leave behind.

Everything before the writer's last fsync (``store._writer.synced``) is
durable. What was written after it may or may not have reached the disk; a
crash keeps some prefix of it, and the rest reads as zeros (the segment file is
reserved ahead of the writer, so zero means "never written"), or the last write is torn and
leaves garbage where a record was being written.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Any

from hypothesis import strategies as st

from logstore import Store
from logstore.index.header import HEADER_SIZE

_LENGTH = struct.Struct("<I")  # record length, at byte 0 of a record (docs/FORMAT.md)
_GOFF = struct.Struct("<Q")  # global offset, at byte 20 of a record
_TORN_MAX = 64


def _integer(source: Any, lo: int, hi: int) -> int:
    if isinstance(source, random.Random):
        return source.randint(lo, hi)
    return int(source.draw(st.integers(lo, hi)))


def _garbage(source: Any, size: int) -> bytes:
    """``size`` bytes none of which is zero, so they cannot pass for never-written space."""
    if isinstance(source, random.Random):
        return bytes(source.randint(1, 255) for _ in range(size))
    return bytes(source.draw(st.lists(st.integers(1, 255), min_size=size, max_size=size)))


def simulate_crash(store: Store, rng_or_data: Any) -> dict[str, Any]:
    """Abandon ``store`` as if its process died, then damage its unsynced tail like a crash would.

    ``rng_or_data`` is a ``random.Random`` or a hypothesis ``data`` object
    (``st.data()``); it chooses the cut position in the active segment,
    anywhere between the synced position and the written end, and whether
    a torn record (up to 64 non-zero garbage bytes) is left at the cut.
    Every byte from the cut to the written end is zeroed first.

    Returns what it did:

    - ``path``: the active segment file; ``synced_position``: where its
      unsynced bytes begin; ``written_end``: the end of what was written;
    - ``cut``: the chosen position; ``zeroed``: bytes zeroed from it;
      ``torn``: garbage bytes written at it (0 for a clean cut);
    - ``durable_goff``: the synced next global offset: every message below it
      is certainly durable;
    - ``written_goff``: the next global offset of everything written;
    - ``intact_goff``: the next global offset after the last record that
      lies wholly before the cut (the crash kept these records intact);
    - ``tail_dirty``: whether non-zero bytes remain after that record (a
      partial record or the garbage), which recovery must cut off.
    """
    active = store._log.active  # the writer is idle: every commit of this test has returned
    store._abandon()
    synced_first, synced_position, durable_goff = store._writer.synced
    path, end = active.path, active.end
    if synced_first == active.first:
        lo, goff = synced_position, durable_goff
    else:
        # The last fsync sealed an earlier segment: all of the active segment is unsynced.
        assert synced_first < active.first and durable_goff == active.first, (store._writer.synced, active.first)
        lo, goff = HEADER_SIZE, active.first
    assert HEADER_SIZE <= lo <= end, (lo, end)

    with open(path, "r+b") as f:
        image = bytearray(f.read())
        size = len(image)
        # The records written after the synced position, by their framing: (start, stop, global offset).
        records: list[tuple[int, int, int]] = []
        p = lo
        while p < end:
            (length,) = _LENGTH.unpack_from(image, p)
            (rgoff,) = _GOFF.unpack_from(image, p + 20)
            assert length > 0 and p + length <= end, f"{path}@{p}: record length {length}, written end {end}"
            assert rgoff == goff, (
                f"{path}@{p}: the record holds global offset {rgoff}, but store._writer.synced "
                f"{store._writer.synced} says the records after the synced position start at {goff - len(records)}"
            )
            records.append((p, p + length, rgoff))
            p += length
            goff += 1
        assert p == end, (path, p, end)
        written_goff = goff

        mode = _integer(rng_or_data, 0, 3)
        if mode == 0:
            cut = _integer(rng_or_data, lo, end)  # anywhere, mostly inside a record
        elif mode in (1, 2) and records:
            cut = records[_integer(rng_or_data, 0, len(records) - 1)][0]  # at a record boundary
        else:
            cut = end  # everything written reached the disk
        torn = 0
        if end > cut and _integer(rng_or_data, 0, 2) == 0:
            torn = _integer(rng_or_data, 1, min(_TORN_MAX, end - cut))

        image[cut:end] = bytes(end - cut)
        if torn:
            image[cut : cut + torn] = _garbage(rng_or_data, torn)
        f.seek(cut)
        f.write(image[cut:end])
    assert os.path.getsize(path) == size

    intact = [r for r in records if r[1] <= cut]
    intact_end = intact[-1][1] if intact else lo
    intact_goff = intact[-1][2] + 1 if intact else written_goff - len(records)
    return {
        "path": path,
        "synced_position": lo,
        "written_end": end,
        "cut": cut,
        "zeroed": end - cut,
        "torn": torn,
        "durable_goff": durable_goff,
        "written_goff": written_goff,
        "intact_goff": intact_goff,
        "tail_dirty": any(image[intact_end:end]),
    }
