"""Derived indexes: data kept in step with the log, saved at each checkpoint, rebuilt from the log.

Every index the engine keeps beside the log implements :class:`DerivedIndex`:

- ``reset()`` empties it, before recovery applies the whole log to it;
- ``apply(records)`` applies one whole transaction, as recovery finds it past
  the checkpoint and as the writer commits it;
- ``prepare()`` (checkpoint step 1) makes its side files durable, and
  ``encode()`` gives the bytes of its generation file ``<store>/<file>.<g>``,
  which the checkpoint writes through a temporary file and a rename (step 2);
- ``load(data, ckpt)`` takes it back from those files at open, raising when
  they are unusable (the log is then applied to every index from its start);
- ``differences(rebuilt)`` is what ``logstore verify`` asks: how the index
  loaded from the files differs from one rebuilt from the log.

The engine's own indexes are :class:`SegmentPositions` (where each record of
each segment starts: ``segments/<first>.pos``) and :class:`StreamIndex` (the
catalog and the run index: ``catalog.<g>`` and ``streams/<id>.runs``). They
are on the hot paths, so the writer applies its commits to them inline,
through the rules that :class:`StreamIndex` holds (the same rules recovery
applies record by record). An index added to :data:`EXTRA_INDEXES` gets each
committed transaction from the writer as records read back with the walker
(:mod:`logstore.embedded.walk`), after the group is written; docs/ARCHITECTURE.md
shows one.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from logstore.embedded import layout
from logstore.embedded.checkpoint import Checkpoint, SegmentEntry
from logstore.embedded.record import KIND_DELETE, KIND_RETAIN, KIND_TRUNCATE, MESSAGE_KINDS, NO_STREAM, Record
from logstore.errors import CorruptionError, as_corruption
from logstore.index.catalog import FLAG_DELETED, FLAG_LARGE, Catalog
from logstore.index.header import HEADER_SIZE
from logstore.index.position import PositionIndex
from logstore.index.runs import LargeRuns, RunIndex

if TYPE_CHECKING:
    from logstore.embedded.fileio import FileIO
    from logstore.embedded.published import Published
    from logstore.embedded.segment import Segment

logger = logging.getLogger("logstore")


class IndexHost(Protocol):
    """What the engine's own indexes use of the log (:class:`logstore.embedded.log.Log`)."""

    io: FileIO
    directory: str
    store_id: bytes
    readonly: bool
    published: Published
    segments: list[Segment]

    def append_file(
        self, path: str, header: bytes, position: int, data: bytes, everything: Callable[[], bytes]
    ) -> bool: ...


Applied = Sequence[tuple[int, Record]]
"""One whole transaction: its records in log order, each with the index of the segment that holds it."""


class DerivedIndex(ABC):
    """An index derived from the log; see the module docstring for the protocol."""

    file: ClassVar[str | None] = None
    """The prefix of its generation file ``<store>/<file>.<generation>``, or ``None`` (side files only)."""
    label: ClassVar[str] = ""
    """What recovery reports and verify problems call it."""
    rebuilt: list[str]
    """Files :meth:`load` found stale and rebuilt from the log (recovery reports them)."""
    notes: list[str]
    """What else :meth:`load` read differently from the files (recovery reports it)."""

    def __init__(self) -> None:
        self.rebuilt = []
        self.notes = []

    @abstractmethod
    def reset(self) -> None:
        """Empty it: recovery then applies every transaction of the log to it, from the log's start."""

    @abstractmethod
    def apply(self, records: Applied) -> None:
        """Apply one whole transaction (writer role, or recovery)."""

    def prepare(self) -> bool:
        """Checkpoint step 1: make its side files durable; returns whether it created a file."""
        return False

    def encode(self, generation: int) -> bytes:
        """Checkpoint step 2: the bytes of its generation file (only if :attr:`file` is set)."""
        raise NotImplementedError

    @abstractmethod
    def load(self, data: bytes | None, ckpt: Checkpoint) -> None:
        """Take it back from its files as of ``ckpt`` (``data``: its generation file, if any).

        Raise ``OSError``, :class:`~logstore.index.FormatError` or
        :class:`~logstore.errors.CorruptionError` when they are unusable.
        """

    def differences(self, rebuilt: DerivedIndex) -> list[str]:
        """What ``verify`` reports: how this index, loaded from the files, differs from ``rebuilt``."""
        return []


class StreamIndex(DerivedIndex):
    """The catalog (every stream's name, head, first retained offset, flags) and the run index.

    Both the writer and recovery change them through the methods below,
    so the rules that move a stream's head, runs and first offset are
    written once. The catalog lives in the store's published state
    (readers look it up there); the run index here.
    """

    file = layout.CATALOG_PREFIX.rstrip(".")
    label = "catalog"

    def __init__(self, log: IndexHost) -> None:
        super().__init__()
        self.log = log
        self.runs = RunIndex()
        # Recovery of a log that does not start at 0 (retention dropped its start, or repair or a lost
        # checkpoint makes recovery rebuild from the first segment): stream ids then appear out of order.
        self.relaxed = False
        # Streams that a relaxed scan first met in a TRUNCATE record: their head is only known to be
        # at least its offset until their next record (retention dropped the messages in between).
        self.head_open: set[int] = set()

    @property
    def catalog(self) -> Catalog:
        return self.log.published.catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        self.log.published.catalog = catalog

    # -- the rules, shared by the writer and recovery ------------------------------------

    def run(self, sid: int, soff: int, goff: int) -> None:
        """Message ``soff`` of stream ``sid`` is at global offset ``goff``: a new run, unless it continues one."""
        cat = self.catalog
        diff = goff - soff
        if cat.nruns.item(sid) == 0 or cat.run_diff.item(sid) != diff:
            self.runs.add(sid, soff, goff)
            cat.nruns[sid] += 1
            cat.run_diff[sid] = diff

    def set_heads(self, heads: dict[int, int]) -> None:
        """Streams' new heads after appends; an append brings a deleted stream back, from its old head on."""
        cat = self.catalog
        head = cat.head
        sflags = cat.flags
        if len(heads) > _VECTOR_HEADS:
            sids = np.fromiter(heads.keys(), np.int64, len(heads))
            head[sids] = np.fromiter(heads.values(), np.uint64, len(heads))
            back = sids[(sflags[sids] & FLAG_DELETED) != 0]
            if len(back):
                sflags[back] &= ~FLAG_DELETED & 0xFF
            return
        for sid, h in heads.items():
            head[sid] = h
            if sflags.item(sid) & FLAG_DELETED:
                sflags[sid] &= ~FLAG_DELETED & 0xFF

    def control(self, kind: int, sid: int, soff: int, goff: int) -> None:
        """A TRUNCATE or DELETE record of stream ``sid`` at global offset ``goff`` keeps from ``soff`` on."""
        cat = self.catalog
        if sid in self.head_open or kind == KIND_DELETE:
            cat.head[sid] = max(int(cat.head[sid]), soff)
        cat.set_first(sid, max(int(cat.first[sid]), soff))
        cat.ctrl[sid] = goff + 1
        if kind == KIND_DELETE:
            cat.flags[sid] |= FLAG_DELETED

    # -- DerivedIndex ------------------------------------------------------------------

    def reset(self) -> None:
        self.catalog = Catalog()
        self.runs = RunIndex()

    def apply(self, records: Applied) -> None:
        cat = self.catalog
        relaxed = self.relaxed
        heads: dict[int, int] = {}
        for _i, rec in records:
            sid = rec.sid
            kind = rec.kind
            if kind == KIND_RETAIN or sid == NO_STREAM:
                continue
            if sid >= len(cat.names) or (relaxed and cat.names[sid] == ""):
                assert rec.name is not None
                if relaxed:
                    # The stream's earlier records were dropped: it starts here.
                    cat.place(sid, rec.name)
                    cat.head[sid] = rec.soff
                    cat.set_first(sid, rec.soff)
                    if kind == KIND_TRUNCATE:
                        self.head_open.add(sid)
                else:
                    cat.add(rec.name)
            if sid in self.head_open and kind != KIND_TRUNCATE:
                # The first record after the truncation fixes the head; what lies between was
                # dropped by retention (readers find no run there and start at the first run).
                self.head_open.discard(sid)
            if kind in MESSAGE_KINDS:
                # REMOVED and LOST records stand for messages, appended after any earlier delete.
                self.run(sid, rec.soff, rec.goff)
                heads[sid] = rec.soff + 1
            else:
                self.control(kind, sid, rec.soff, rec.goff)
        if heads:
            self.set_heads(heads)

    def prepare(self) -> bool:
        lg = self.log
        created = False
        for sid in self.runs.merge():
            self.catalog.flags[sid] |= FLAG_LARGE
        for sid, big in self.runs.large.items():
            if big.persisted < len(big):
                created |= lg.append_file(
                    layout.runs_path(lg.directory, sid),
                    LargeRuns.file_header(lg.store_id, sid),
                    *big.tail_bytes(),
                    lambda big=big: big.pairs(0, len(big)),  # type: ignore[misc]
                )
                big.persisted = len(big)
        return created

    def encode(self, generation: int) -> bytes:
        return self.catalog.encode(self.runs, generation, self.log.store_id)

    def load(self, data: bytes | None, ckpt: Checkpoint) -> None:
        lg = self.log
        cat_path = layout.catalog_path(lg.directory, ckpt.generation)
        assert data is not None
        with as_corruption(cat_path):
            catalog, runs, large = Catalog.decode(data, lg.store_id, ckpt.generation)
        for sid, count, checksum in large:
            path = layout.runs_path(lg.directory, sid)
            with as_corruption(path):
                runs.large[sid] = LargeRuns.decode(lg.io.read_file(path), lg.store_id, sid, count, checksum)
        past = _runs_past_the_log(catalog, runs, ckpt.next_goff)
        if past:  # checksummed, but readers would follow it past the end of the log: rebuild instead
            raise CorruptionError(cat_path, HEADER_SIZE, past)
        self.catalog, self.runs = catalog, runs


class SegmentPositions(DerivedIndex):
    """Where each record of each segment starts (global offset -> byte position), one file per segment.

    A sealed segment's positions are loaded lazily by the segment itself
    (:attr:`Segment.positions`), from its file and the count and checksum
    that the checkpoint lists (:attr:`entries`, which this index makes).
    """

    label = "positions"

    def __init__(self, log: IndexHost) -> None:
        super().__init__()
        self.log = log
        self.entries: list[SegmentEntry] = []  # the last checkpoint's, made by prepare()
        self.sums: dict[int, tuple[int, int]] = {}  # first -> (count, checksum) already hashed

    def reset(self) -> None:
        for seg in self.log.segments:
            seg.reset_positions()

    def apply(self, records: Applied) -> None:
        # Positions go to each segment's index in one extend per segment (the hot loop of a long tail).
        segments = self.log.segments
        seg_i, prev = records[0]
        found: list[int] = []
        for i, rec in records:
            if i != seg_i:  # the transaction goes on in the next segment: the previous one ends here
                seg = segments[seg_i]
                seg.positions.positions.extend(found)
                seg.end = prev.position + prev.length
                seg_i, found = i, []
            prev = rec
            found.append(rec.position)
        seg = segments[seg_i]
        seg.positions.positions.extend(found)
        seg.end = prev.position + prev.length

    def prepare(self) -> bool:
        created = False
        entries = []
        for seg in self.log.segments:
            entry, made = self._entry(seg)
            created |= made
            entries.append(entry)
        self.entries = entries
        return created

    def _entry(self, seg: Segment) -> tuple[SegmentEntry, bool]:
        """Append ``seg``'s new position entries to its file and fsync it; its checkpoint entry and
        whether its file was created."""
        lg = self.log
        created = False
        lazy = seg.lazy_positions  # read once: a reader's first use may load the positions meanwhile
        if lazy is not None:
            count, checksum = lazy
        else:
            pos = seg.positions
            count = len(pos)
            missing = not lg.io.exists(seg.pos_path)
            if missing:
                pos.persisted = 0  # write every entry, not only the new ones
            # An empty segment (the active one right after a roll) gets its file's header at each
            # checkpoint: a crash may have left the file created but empty, and no entry would
            # ever be appended to repair it while the segment stays empty.
            if missing or pos.persisted < count or count == 0:
                created = lg.append_file(
                    seg.pos_path,
                    PositionIndex.file_header(lg.store_id, seg.first),
                    *pos.tail_bytes(),
                    lambda pos=pos: pos.positions.view().tobytes(),  # type: ignore[misc]
                )
                pos.persisted = count
            cached = self.sums.get(seg.first)
            if cached is not None and cached[0] == count:
                checksum = cached[1]
            else:
                checksum = pos.checksum(count)
                self.sums[seg.first] = (count, checksum)
        return SegmentEntry(seg.first, count, seg.end, checksum), created

    def checkpointed(self) -> None:
        """After the checkpoint: a sealed segment's positions are in its file now; let them go, so that
        memory does not grow with the log (a reader holding the index keeps it; the next one loads it)."""
        for seg, entry in zip(self.log.segments[:-1], self.entries, strict=False):
            if seg.lazy_positions is None:
                seg.set_lazy_positions(entry.records, entry.checksum)

    def forget(self, first: int) -> None:
        """The segment that starts at ``first`` was dropped or replaced: its cached checksum is stale."""
        self.sums.pop(first, None)

    def load(self, data: bytes | None, ckpt: Checkpoint) -> None:
        lg = self.log
        io = lg.io
        by_first = {seg.first: seg for seg in lg.segments}
        last = ckpt.segments[-1]
        for e in ckpt.segments:
            seg = by_first[e.first]
            if e is not last and (e.end > seg.size or not io.exists(seg.pos_path)):
                # A compaction swapped this segment after the checkpoint (or its position file is
                # gone): walk it now, which also finds where its records end.
                seg.use_positions(seg.rebuild_positions(e.records))
                rel = os.path.relpath(seg.pos_path, lg.directory)
                if lg.readonly:
                    # Beside a live writer this is a compaction between its swap and its checkpoint;
                    # the positions are read from the segment, in memory, and no file changes.
                    self.notes.append(f"read the positions of {rel} from the segment")
                    _log_position_rebuild(seg.pos_path, "read from the segment")
                    continue
                _log_position_rebuild(seg.pos_path, "rebuilt from the segment")
                self.rebuilt.append(rel)
                continue
            seg.end = e.end
            seg.set_lazy_positions(e.records, e.checksum)
            self.sums[seg.first] = (e.records, e.checksum)
        # The last checkpointed segment is where the tail scan starts: load its positions now. After a
        # clean close nothing follows the checkpoint, so they stay lazy (the first append or read loads
        # them) and the open does not grow with how full that segment is.
        if not ckpt.clean:
            _ = by_first[last.first].positions


def _log_position_rebuild(path: str, what: str) -> None:
    logger.info("%s: position index missing or stale; %s", path, what)


def _runs_past_the_log(catalog: Catalog, runs: RunIndex, next_goff: int) -> str | None:
    """What maps a stream offset to a global offset at or past ``next_goff``, or ``None``.

    The catalog and run files passed their checksums, but readers follow
    them without further checks: a run, or a stream's last message (its head
    within its last run), past the end of the log would send a read there.
    """
    _sids, soffs, goffs, starts, _delta = runs.snapshot
    have = np.flatnonzero(starts[1:] > starts[:-1])  # stream ids with shared runs
    last = starts[1:][have] - 1
    tables = [(have, soffs[last], goffs[last], goffs)]  # ids, their last runs, every run's global offset
    for sid, big in runs.large.items():
        g_all = big.goffs.view()
        tables.append((np.asarray([sid]), big.soffs.view()[-1:], g_all[-1:], g_all))
    for ids, s_last, g_last, g_all in tables:
        if len(g_all) and int(g_all.max()) >= next_goff:
            return f"a run starts at global offset {int(g_all.max())}, the log ends at {next_goff}"
        head = catalog.head[ids[: len(s_last)]]
        if not bool(np.all(head > s_last)) or not bool(np.all(head - s_last <= next_goff - g_last)):
            return f"a stream's head lies past its last run or the end of the log ({next_goff})"
    return None


# Above this many streams in one group, their heads are set with one numpy assignment.
_VECTOR_HEADS = 32

EXTRA_INDEXES: list[type[DerivedIndex]] = []
"""Indexes beyond the engine's own, made with no arguments; each store keeps one of each."""
