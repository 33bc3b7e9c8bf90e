"""Per-stream sparse run index: stream offset -> global offset.

A *run* is a maximal range of a stream's offsets whose global offsets are
consecutive too: ``global = run_global + (offset - run_offset)``. One append
of ``k`` messages makes at most one run, and a stream written alone (one
transaction after another, nothing in between) stays a single run however
long it grows. A stream has one entry per run, not one per message.

Small streams keep their runs inline in one shared table (three parallel
numpy arrays sorted by stream id, then offset) that the catalog file stores.
A stream with more than :data:`LARGE_RUNS` runs is *large* and gets a file of
its own, ``streams/<id>.runs``::

    offset  size      type       field
    0       64        header     magic b"LGRUNIDX"; a = stream id; b = c = 0
    64      16 * n    u64[n][2]  (stream offset, global offset) of each run, in order

Like the position index, a run file is only appended; the catalog records how
many entries are valid and their xxh3-64.

Concurrency: the writer thread alone mutates. Readers take the ``snapshot``
tuple once per lookup; runs added since the last merge sit in ``delta``: a
stream's one run as a pair of 1-tuples, replaced by a pair of lists (assigned in
one step) at its second, which then only grow until the next merge replaces the
whole snapshot.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from .errors import FormatError
from .growable import Growable
from .header import HEADER_SIZE, RunsHeader, check_index_file

LARGE_RUNS = 128
"""A stream with more runs than this moves out of the shared table into its own file."""

U64 = np.dtype("<u8")
U32 = np.dtype("<u4")

_Delta = dict[int, tuple[tuple[int, ...], tuple[int, ...]] | tuple[list[int], list[int]]]

_LINEAR_RUNS = 8
"""Streams with at most this many runs in the shared table are searched by a plain scan."""


class LargeRuns:
    """The runs of one large stream, backed by ``streams/<id>.runs``."""

    __slots__ = ("goffs", "persisted", "soffs")

    def __init__(self, soffs: npt.NDArray[Any], goffs: npt.NDArray[Any], persisted: int) -> None:
        self.soffs = Growable(U64, soffs)
        self.goffs = Growable(U64, goffs)
        self.persisted = persisted

    def __len__(self) -> int:
        return len(self.soffs)

    def append(self, soff: int, goff: int) -> None:
        # goffs first: a reader that sees a stream offset always finds its global offset.
        self.goffs.append(goff)
        self.soffs.append(soff)

    def checksum(self, count: int | None = None) -> int:
        n = len(self) if count is None else count
        return xxhash.xxh3_64_intdigest(self.pairs(0, n))

    def pairs(self, start: int, end: int) -> bytes:
        s = self.soffs.view()[start:end]
        g = self.goffs.view()[start:end]
        return np.column_stack((s, g)).astype(U64).tobytes()

    def tail_bytes(self) -> tuple[int, bytes]:
        """The runs not yet in the file: (byte position in the file, bytes)."""
        return HEADER_SIZE + 16 * self.persisted, self.pairs(self.persisted, len(self))

    @staticmethod
    def file_header(store_id: bytes, sid: int) -> bytes:
        return RunsHeader(store_id, sid).encode()

    @classmethod
    def decode(cls, buf: bytes | memoryview, store_id: bytes, sid: int, count: int, checksum: int) -> LargeRuns:
        end = check_index_file(buf, RunsHeader, (store_id, sid), "stream id", count, 16, "runs", "catalog", checksum)
        body = bytes(buf[HEADER_SIZE:end])
        pairs = np.frombuffer(body, dtype=U64).reshape(-1, 2)
        soffs, goffs = pairs[:, 0].copy(), pairs[:, 1].copy()
        _check_runs(soffs, goffs, HEADER_SIZE)
        return cls(soffs, goffs, count)


def _check_runs(soffs: npt.NDArray[Any], goffs: npt.NDArray[Any], position: int) -> None:
    if len(soffs) > 1 and not (bool(np.all(soffs[1:] > soffs[:-1])) and bool(np.all(goffs[1:] > goffs[:-1]))):
        raise FormatError(position, "runs are not in increasing order")
    if len(soffs) and not bool(np.all(goffs >= soffs)):
        raise FormatError(position, "a run's global offset is below its stream offset")


class RunIndex:
    """All runs of all streams: a shared table for small streams, files for large ones."""

    def __init__(
        self,
        sids: npt.NDArray[Any] | None = None,
        soffs: npt.NDArray[Any] | None = None,
        goffs: npt.NDArray[Any] | None = None,
        large: dict[int, LargeRuns] | None = None,
        starts: npt.NDArray[Any] | None = None,
    ) -> None:
        """``starts``: where each stream's runs start in ``sids`` (as :attr:`snapshot` holds them), when known."""
        if sids is None or soffs is None or goffs is None:
            sids = np.zeros(0, U32)
            soffs = np.zeros(0, U64)
            goffs = np.zeros(0, U64)
        self.large: dict[int, LargeRuns] = {} if large is None else large
        self.snapshot: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], _Delta]
        self._set_base(sids, soffs, goffs, {}, starts)

    def _set_base(
        self,
        sids: npt.NDArray[Any],
        soffs: npt.NDArray[Any],
        goffs: npt.NDArray[Any],
        delta: _Delta,
        starts: npt.NDArray[Any] | None = None,
    ) -> None:
        if starts is None:
            nstreams = int(sids[-1]) + 1 if len(sids) else 0
            starts = np.searchsorted(sids, np.arange(nstreams + 1, dtype=np.int64), side="left")
        self.snapshot = (sids, soffs, goffs, starts, delta)

    # -- writer side ---------------------------------------------------------

    def add(self, sid: int, soff: int, goff: int) -> None:
        """Record that stream ``sid`` starts a new run at ``soff`` -> ``goff``."""
        big = self.large.get(sid)
        if big is not None:
            big.append(soff, goff)
            return
        delta = self.snapshot[4]
        entry = delta.get(sid)
        if entry is None:
            # A stream's first run since the merge (most streams have one): tuples of ints, which the
            # garbage collector stops tracking, so a million new streams cost its passes nothing.
            delta[sid] = ((soff,), (goff,))
        else:
            so, go = entry
            if isinstance(so, tuple):  # its second: lists from here on (one step each, not a copy)
                delta[sid] = ([*so, soff], [*go, goff])
            else:
                assert isinstance(go, list)
                go.append(goff)
                so.append(soff)

    def merge(self) -> list[int]:
        """Fold the runs added since the last merge into the shared table.

        Streams that now have more than :data:`LARGE_RUNS` runs move to
        :attr:`large`; their ids are returned so that the caller creates
        their files.
        """
        sids, soffs, goffs, _starts, delta = self.snapshot
        if not delta:
            return []
        add_sid: list[int] = []
        add_soff: list[int] = []
        add_goff: list[int] = []
        for sid, (so, go) in delta.items():
            add_sid.extend([sid] * len(so))
            add_soff.extend(so)
            add_goff.extend(go)
        all_sid = np.concatenate((sids, np.asarray(add_sid, dtype=U32)))
        all_soff = np.concatenate((soffs, np.asarray(add_soff, dtype=U64)))
        all_goff = np.concatenate((goffs, np.asarray(add_goff, dtype=U64)))
        order = np.lexsort((all_soff, all_sid))
        all_sid, all_soff, all_goff = all_sid[order], all_soff[order], all_goff[order]
        counts = np.bincount(all_sid.astype(np.int64)) if len(all_sid) else np.zeros(0, np.int64)
        promoted = [int(s) for s in np.flatnonzero(counts > LARGE_RUNS)]
        if promoted:
            for sid in promoted:
                lo, hi = np.searchsorted(all_sid, [sid, sid + 1])
                self.large[sid] = LargeRuns(all_soff[lo:hi].copy(), all_goff[lo:hi].copy(), 0)
            keep = ~np.isin(all_sid, np.asarray(promoted, dtype=U32))
            all_sid, all_soff, all_goff = all_sid[keep], all_soff[keep], all_goff[keep]
        self._set_base(all_sid, all_soff, all_goff, {})
        return promoted

    # -- reader side ---------------------------------------------------------

    def find(self, sid: int, soff: int) -> tuple[int, int, int]:
        """The run of stream ``sid`` that holds offset ``soff``.

        Returns ``(run offset, run global offset, next run's offset or -1)``;
        raises ``KeyError`` if the stream has no run at or below ``soff`` (or if the shared table's
        starts, which a checkpoint saves, lead outside the table: files that passed their checksums
        but that no writer wrote, which the caller reports as damage).
        """
        big = self.large.get(sid)
        if big is None:
            try:
                return self._find_small(sid, soff)
            except (KeyError, IndexError):
                # A merge may have moved the stream to its own file between the two reads:
                # it enters ``large`` before the shared table without it is published.
                big = self.large.get(sid)
                if big is None:
                    raise KeyError((sid, soff)) from None
        s_arr, n = big.soffs.state
        g_arr = big.goffs.state[0]
        i = int(np.searchsorted(s_arr[:n], soff, side="right")) - 1
        if i < 0:
            raise KeyError((sid, soff))
        nxt = int(s_arr[i + 1]) if i + 1 < n else -1
        return int(s_arr[i]), int(g_arr[i]), nxt

    def _find_small(self, sid: int, soff: int) -> tuple[int, int, int]:
        _sids, soffs, goffs, starts, delta = self.snapshot
        entry = delta.get(sid)
        if entry is not None:
            dso, dgo = entry
            n = len(dso)
            if soff >= dso[0]:
                i = bisect.bisect_right(dso, soff, 0, n) - 1
                return dso[i], dgo[i], (dso[i + 1] if i + 1 < n else -1)
        if sid + 1 >= len(starts):
            raise KeyError((sid, soff))
        lo, hi = starts.item(sid), starts.item(sid + 1)
        if hi - lo <= _LINEAR_RUNS:  # few runs: a scan of Python ints beats numpy's per-call overhead
            i = lo - 1
            for j in range(lo, hi):
                if soffs.item(j) > soff:
                    break
                i = j
        else:
            i = lo + int(np.searchsorted(soffs[lo:hi], soff, side="right")) - 1
        if i < lo:
            raise KeyError((sid, soff))
        if i + 1 < hi:
            nxt = soffs.item(i + 1)
        elif entry is not None:
            nxt = entry[0][0]
        else:
            nxt = -1
        return soffs.item(i), goffs.item(i), nxt

    def runs_of(self, sid: int) -> list[tuple[int, int]]:
        """Every run of stream ``sid`` as (offset, global offset) pairs, in order (for checks)."""
        big = self.large.get(sid)
        if big is not None:
            return list(zip(big.soffs.view().tolist(), big.goffs.view().tolist(), strict=True))
        _sids, soffs, goffs, starts, delta = self.snapshot
        out: list[tuple[int, int]] = []
        if sid + 1 < len(starts):
            lo, hi = int(starts[sid]), int(starts[sid + 1])
            out.extend(zip(soffs[lo:hi].tolist(), goffs[lo:hi].tolist(), strict=True))
        entry = delta.get(sid)
        if entry is not None:
            out.extend(zip(entry[0], entry[1], strict=True))
        return out
