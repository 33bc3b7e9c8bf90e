"""Derived indexes: data kept in step with the log, saved at each checkpoint, rebuilt from the log.

Every index the engine keeps beside the log implements :class:`DerivedIndex`:

- ``reset()`` empties it, before recovery applies the whole log to it;
- ``apply(records)`` applies one whole transaction, as recovery finds it past
  the checkpoint and as the writer commits it;
- ``prepare()`` (checkpoint step 1) makes its side files durable, and
  ``encode()`` gives the bytes of its generation file ``<store>/<file>.<g>``,
  which the checkpoint writes through a temporary file and a rename (step 2);
- ``load(data, ckpt)`` takes it back from those files at open, raising when
  they are unusable (the log is then applied to every index from its start).
  An index that sets ``lazy`` is not loaded at open: recovery opens its files
  (:class:`Deferred`) and hands them to ``defer()``, and the index loads them
  when it is first used; files found unusable then make it rebuild itself
  from the log up to the checkpoint, alone;
- ``differences(rebuilt)`` is what ``logstore verify`` asks: how the index
  loaded from the files differs from one rebuilt from the log.

The engine's own indexes are :class:`SegmentPositions` (where each record of
each segment starts: ``segments/<first>.pos``) and :class:`StreamIndex` (the
catalog and the run index: ``catalog.<g>`` and ``streams/<id>.runs``). They
are on the hot paths, so the writer applies its commits to them inline,
through the rules that :class:`StreamIndex` holds (the same rules recovery
applies record by record). An index added to :data:`EXTRA_INDEXES` gets each
committed transaction from the writer as records whose headers are read back
from the segment, after the group is written; docs/ARCHITECTURE.md shows one.
One that sets ``takes_appends`` gets the group's message appends instead, as
(stream id, name, first global offset, count) each (``apply_appends``).
The engine registers one itself, :class:`CategoryIndex`, which does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
import xxhash

from logstore.embedded import layout
from logstore.embedded.checkpoint import Checkpoint, SegmentEntry
from logstore.embedded.record import (
    KIND_DELETE,
    KIND_MESSAGE,
    KIND_RETAIN,
    KIND_TRUNCATE,
    MESSAGE_KINDS,
    NO_STREAM,
    Record,
)
from logstore.errors import CorruptionError, as_corruption
from logstore.index.catalog import FLAG_DELETED, FLAG_LARGE, Catalog, TableUnusable
from logstore.index.errors import FormatError
from logstore.index.growable import Growable
from logstore.index.header import HEADER_SIZE, CatalogHeader
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


class Deferred:
    """The files of a lazy index (:attr:`DerivedIndex.lazy`) as of one checkpoint: opened at the store's
    open, read when the index is first used.

    The open descriptors keep the files' bytes whatever happens to their names meanwhile: another
    process's checkpoint writes the next generation and removes this one's, and the descriptors still
    read it. A name that was not there at the open reads as ``FileNotFoundError``. :meth:`walk` gives the
    log's records below the checkpoint's end, what the index is rebuilt from when the files turn out
    unusable at their first read.
    """

    def __init__(
        self, io: FileIO, directory: str, ckpt: Checkpoint, names: list[str], segments: Callable[[], list[Segment]]
    ) -> None:
        self.io = io
        self.directory = directory
        self.ckpt = ckpt
        self._segments = segments
        self.fds: dict[str, int] = {}
        try:
            for name in names:
                self.fds[name] = io.open(os.path.join(directory, name), os.O_RDONLY)
        except BaseException:
            self.close()
            raise

    def generation_file(self, prefix: str) -> str:
        """The name of the generation file ``<prefix>.<g>`` of the checkpoint these files are of."""
        return os.path.basename(layout.index_path(self.directory, prefix, self.ckpt.generation))

    def load_or_rebuild(self, label: str, load: Callable[[], None], rebuild: Callable[[], None]) -> bool:
        """``load()`` the index from these files; if they are unusable, say so (WARNING) and ``rebuild()`` it
        from the log instead. Returns whether it rebuilt (the index is then stale: its files need writing)."""
        try:
            load()
        except (OSError, FormatError, CorruptionError) as exc:
            logger.warning("%s: %s unusable (%s); rebuilt from the log", self.directory, label, exc)
            rebuild()
            return True
        return False

    def read(self, name: str) -> bytes:
        """Every byte of file ``name`` as it was at the open."""
        fd = self.fds.get(name)
        if fd is None:
            path = os.path.join(self.directory, name)
            raise FileNotFoundError(errno.ENOENT, "not in the store directory when the store opened", path)
        return self.io.read_fd(fd)

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                self.io.close(fd)

    def walk(self) -> Iterator[tuple[Segment, Record]]:
        """Every record of the log below the checkpoint's end, in log order, with its segment. Damage there
        raises :class:`~logstore.errors.CorruptionError` (``logstore repair`` mends the log)."""
        from logstore.embedded.walk import Damage, walk  # noqa: PLC0415 - walk imports what imports this

        end = self.ckpt.next_goff
        for seg in list(self._segments()):
            if seg.first >= end:
                return
            for item in walk(seg.view, HEADER_SIZE, seg.size, stop=seg.end, tail=False):
                if isinstance(item, Damage):
                    raise CorruptionError(seg.path, item.position, item.what)
                if item.goff >= end:
                    return
                yield seg, item


class DerivedIndex(ABC):
    """An index derived from the log; see the module docstring for the protocol."""

    file: ClassVar[str | None] = None
    """The prefix of its generation file ``<store>/<file>.<generation>``, or ``None`` (side files only)."""
    companion: ClassVar[str | None] = None
    """The prefix of a second generation file ``<store>/<companion>.<generation>`` (only with :attr:`file`),
    written after the first (:meth:`encode_companion`) and removed with it."""
    maps_file: ClassVar[bool] = False
    """Whether :meth:`load` opens its generation files itself (recovery then passes ``None`` as ``data``)."""
    lazy: ClassVar[bool] = False
    """Whether an open leaves its load to its first use: recovery opens the files it names
    (:meth:`deferred_files`) and hands them to :meth:`defer` instead of calling :meth:`load`."""
    stale: bool = False
    """Its files are unusable and it was rebuilt from the log since: the next checkpoint must write them."""
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

    takes_appends: ClassVar[bool] = False
    """Whether the writer hands it its message appends through :meth:`apply_appends` instead of
    :meth:`apply` (the control records the writer writes still come through :meth:`apply`)."""

    def apply_appends(self, sids: list[int], names: list[str], goffs: list[int], counts: list[int]) -> None:
        """Apply the message appends of one commit group (writer role; only if :attr:`takes_appends`).

        Append ``k`` wrote ``counts[k]`` message records of stream ``sids[k]`` (named ``names[k]``) at
        global offsets ``goffs[k]`` on, in log order; what :meth:`apply` would get from those records.
        """
        raise NotImplementedError

    def prepare(self) -> bool:
        """Checkpoint step 1: make its side files durable; returns whether it created a file."""
        return False

    def encode(self, generation: int) -> bytes:
        """Checkpoint step 2: the bytes of its generation file (only if :attr:`file` is set)."""
        raise NotImplementedError

    def encode_companion(self, generation: int) -> bytes:
        """Checkpoint step 2, after :meth:`encode`: the bytes of its :attr:`companion` file (if it has one)."""
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

    def deferred_files(self, names: list[str], ckpt: Checkpoint) -> list[str]:
        """The files (of those ``names`` in the store directory) a lazy index loads later as of ``ckpt``."""
        assert self.file is not None
        return [os.path.basename(layout.index_path("", self.file, ckpt.generation))]

    def defer(self, files: Deferred) -> None:
        """Load from ``files`` at the first use instead of now (only if :attr:`lazy`)."""
        raise NotImplementedError

    def release(self) -> None:  # noqa: B027 - a hook: only lazy indexes hold files to let go of
        """The store closes: let go of the files of a load still deferred."""

    def load_now(self) -> None:  # noqa: B027 - a hook: only lazy indexes defer a load
        """Do a deferred load now (a follower's reload, before its log's segments move to another log)."""


def map_file(io: FileIO, path: str) -> mmap.mmap:
    """A private writable mapping of the whole file ``path``: stores into it stay in this process's memory.

    Raises :class:`FormatError` for a file too short to hold a header (an empty file cannot be mapped).
    """
    fd = io.open(path, os.O_RDONLY)
    try:
        size = io.size(fd)
        if size < HEADER_SIZE:
            raise FormatError(0, f"file is {size} bytes, shorter than its {HEADER_SIZE}-byte header")
        return io.mmap_private(fd, size)
    finally:
        io.close(fd)


class StreamIndex(DerivedIndex):
    """The catalog (every stream's name, head, first retained offset, flags) and the run index.

    Both the writer and recovery change them through the methods below,
    so the rules that move a stream's head, runs and first offset are
    written once. The catalog lives in the store's published state
    (readers look it up there); the run index here.
    """

    file = layout.CATALOG_PREFIX.rstrip(".")
    companion = layout.NAMES_PREFIX.rstrip(".")
    maps_file = True
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
        self._encoded = (-1, 0)  # (generation, body checksum) of the last catalog file encoded

    @property
    def catalog(self) -> Catalog:
        return self.log.published.catalog

    @catalog.setter
    def catalog(self, catalog: Catalog) -> None:
        self.log.published.catalog = catalog

    # -- the rules, shared by the writer and recovery ------------------------------------

    def run(self, sid: int, soff: int, goff: int) -> None:
        """Message ``soff`` of stream ``sid`` is at global offset ``goff``: a new run, unless it continues one."""
        cat = self.log.published.catalog
        diff = goff - soff
        nruns = cat.nruns
        n = nruns.item(sid)
        if n == 0 or cat.run_diff.item(sid) != diff:
            self.runs.add(sid, soff, goff)
            nruns[sid] = n + 1
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
        data = self.catalog.encode(self.runs, generation, self.log.store_id)
        self._encoded = (generation, CatalogHeader.decode(data).body_checksum)
        return data

    def encode_companion(self, generation: int) -> bytes:
        encoded, checksum = self._encoded
        assert encoded == generation
        return self.catalog.encode_names(self.runs, generation, self.log.store_id, checksum)

    def load(self, data: bytes | None, ckpt: Checkpoint) -> None:
        """Map ``catalog.<g>`` and ``names.<g>`` and look names up in place; without a usable name table
        (a store of an earlier version, or a damaged table), decode the whole catalog instead."""
        lg = self.log
        cat_path = layout.catalog_path(lg.directory, ckpt.generation)
        names_path = layout.index_path(lg.directory, self.companion or "", ckpt.generation)
        with as_corruption(cat_path):
            buf = data if data is not None else map_file(lg.io, cat_path)
        reach: int | None = None
        table = None
        if data is None:
            try:
                table = map_file(lg.io, names_path)
            except FileNotFoundError:
                self.notes.append(f"{os.path.basename(names_path)} missing: the catalog was decoded whole")
            except (OSError, FormatError) as exc:
                self.notes.append(f"{os.path.basename(names_path)} unreadable ({exc}): the catalog was decoded whole")
        with as_corruption(cat_path):
            loaded = None
            if table is not None:
                try:
                    loaded = Catalog.mapped(buf, table, lg.store_id, ckpt.generation)
                except TableUnusable as exc:
                    self.notes.append(f"{os.path.basename(names_path)} unusable ({exc}): the catalog was decoded whole")
            if loaded is None:
                catalog, runs, large = Catalog.decode(buf, lg.store_id, ckpt.generation)
            else:
                catalog, runs, large, reach = loaded
        for sid, count, checksum in large:
            path = layout.runs_path(lg.directory, sid)
            with as_corruption(path):
                runs.large[sid] = LargeRuns.decode(lg.io.read_file(path), lg.store_id, sid, count, checksum)
        past = _runs_past_the_log(catalog, runs, ckpt.next_goff, reach)
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


def _runs_past_the_log(catalog: Catalog, runs: RunIndex, next_goff: int, reach: int | None = None) -> str | None:
    """What maps a stream offset to a global offset at or past ``next_goff``, or ``None``.

    The catalog and run files passed their checksums, but readers follow
    them without further checks: a run, or a stream's last message (its head
    within its last run), past the end of the log would send a read there.
    ``reach``: what the name table recorded of the shared runs (:func:`shared_reach`), which then
    need not be read here.
    """
    tables = []
    if reach is not None:
        if reach > next_goff:
            return f"a shared run or a stream's last message reaches global offset {reach}, the log ends at {next_goff}"
    else:
        _sids, soffs, goffs, starts, _delta = runs.snapshot
        have = np.flatnonzero(starts[1:] > starts[:-1])  # stream ids with shared runs
        last = starts[1:][have] - 1
        tables.append((have, soffs[last], goffs[last], goffs))  # ids, their last runs, every run's global offset
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


class CategoryIndex(DerivedIndex):
    """Every category's messages: the global offsets of the message records of its streams, ascending.

    A stream's category is its name up to the first ``-``. What a category reader reads
    (``store.open_category``): it goes from one of its category's records to the next through this
    index and never reads another category's records. Memory is numpy arrays, no object per record:

    - the *sealed* part, as of the last checkpoint: ``goffs`` holds every category's global offsets,
      category by category, each category's ascending; category ``c``'s are ``goffs[starts[c]:starts[c + 1]]``;
    - the *recent* part, since then: two growing arrays of global offsets (ascending) and their
      category ids, which the checkpoint merges into the sealed part (one stable sort by category
      of arrays that are each sorted already);
    - ``sid_category``: each stream id's category id (-1: not met yet), from the names the records carry
      (the first record of each stream in each segment is NAMED, so every walk from a segment start meets it).

    The records listed are the MESSAGE, REMOVED and LOST records of streams (those at a stream offset):
    a reader skips the markers, and the messages that a truncation or deletion removed, as the global
    reader does; compaction's REMOVED records thus leave the index as it was. A RETAIN record makes it
    forget the offsets below the new log start, as a rebuild from what is left would not list them.

    Threads: the writer role hands it each commit group's appends (:meth:`apply_appends`) as a list
    of spans, queued, and whoever next needs the index up to date folds the queue in: a category
    reader (:meth:`offsets`, :meth:`categories`), or the writer role before it applies records, merges
    or saves. So a store that nobody reads by category pays one list append per group, and the fold
    does many groups' spans in a few numpy calls. The fold and every change run under one lock;
    readers then take :attr:`snapshot` (one reference) and the recent arrays' states, which a merge
    replaces whole, never in place. The writer queues a group's spans before it publishes the group,
    so a reader that saw a global end folds every span below it. After an open the index is not
    loaded (:attr:`lazy`): the first fold loads it from the files recovery opened, and until then
    :meth:`apply` queues the records it is given as well.
    File: ``categories.<generation>`` (docs/FORMAT.md draws it)::

        offset  size  type   field
        0       8     bytes  magic b"LGCATIDX"
        8       2     u16    version (1)
        10      2     u16    header size (64)
        12      4     u32    flags (0)
        16      8     u64    generation (the checkpoint's)
        24      8     u64    C, categories
        32      8     u64    S, stream ids mapped (those some record named)
        40      8     u64    M, message records listed
        48      8     u64    xxh3-64 of the body
        56      8     u64    xxh3-64 of bytes 0..55
        body:   C x u32 name lengths, S x u32 stream ids (ascending), S x i32 their category ids, padding to 8,
                (C + 1) x u64 starts, M x u64 global offsets, then the C names (UTF-8), back to back
    """

    file = "categories"
    label = "category index"
    MAGIC = b"LGCATIDX"
    VERSION = 1
    _HEADER = struct.Struct("<8sHHIQQQQQ")

    lazy = True

    def __init__(self) -> None:
        super().__init__()
        # What is not folded in yet, in log order: a commit group's appends as (stream ids, names, first
        # global offsets, counts), or a list of records (:meth:`apply` while the load is deferred).
        self._queue: list[tuple[list[int], list[str], list[int], list[int]] | list[tuple[int, Record]]] = []
        self._lock = threading.Lock()  # the load, the fold, and every change of the index
        self._deferred: Deferred | None = None  # the files to load at the first use (recovery's defer)
        self._reset_state()

    def reset(self) -> None:
        self.release()
        self._queue.clear()
        self._reset_state()

    def defer(self, files: Deferred) -> None:
        self._deferred = files

    def release(self) -> None:
        files, self._deferred = self._deferred, None
        if files is not None:
            files.close()

    def load_now(self) -> None:
        self.fold()

    def _load_deferred(self) -> None:
        """The first use after an open: load the files recovery opened (under :attr:`_lock`). Files found
        unusable now make it rebuild itself from the log up to their checkpoint, as the open would have."""
        files = self._deferred
        if files is None:
            return

        def rebuild() -> None:
            self._reset_state()
            chunk: list[tuple[int, Record]] = []
            for _seg, rec in files.walk():
                chunk.append((0, rec))
                if len(chunk) >= _REBUILD_CHUNK:
                    self._apply(chunk)
                    chunk = []
            if chunk:
                self._apply(chunk)

        name = files.generation_file(self.file)
        if files.load_or_rebuild(self.label, lambda: self.load(files.read(name), files.ckpt), rebuild):
            self.stale = True
        self._deferred = None
        files.close()

    def _reset_state(self) -> None:
        self.names: list[str] = []  # category id -> name
        self.ids: dict[str, int] = {}  # name -> category id
        self.sid_category = np.full(16, -1, np.int32)
        self.sid_far: dict[int, int] = {}  # stream id -> category id, for ids far past the dense array's end
        # (starts, goffs, recent goffs, recent category ids): replaced whole by a merge or a retention.
        self.snapshot: tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64], Growable, Growable] = (
            np.zeros(1, np.int64),
            np.zeros(0, np.uint64),
            Growable(np.uint64),
            Growable(np.int32),
        )

    # -- reading (any thread) ----------------------------------------------------------

    def offsets(self, category: str, goff: int, end: int, limit: int) -> npt.NDArray[np.uint64]:
        """Up to ``limit`` global offsets of ``category``'s records in ``goff`` .. ``end - 1``, ascending."""
        if self._queue or self._deferred is not None:
            self.fold()
        c = self.ids.get(category)
        if c is None or limit <= 0 or goff >= end:
            return np.zeros(0, np.uint64)
        starts, goffs, recent_g, recent_c = self.snapshot
        found: list[npt.NDArray[np.uint64]] = []
        if c + 1 < len(starts):
            mine = goffs[starts[c] : starts[c + 1]]
            i = int(np.searchsorted(mine, goff))
            j = int(np.searchsorted(mine, end))
            found.append(mine[i : min(j, i + limit)])
            limit -= len(found[-1])
        if limit > 0:
            rg = recent_g.view()  # the offsets first: the category ids are appended before them
            rc = recent_c.view()[: len(rg)]
            i = int(np.searchsorted(rg, goff))
            stop = int(np.searchsorted(rg, end))
            while i < stop and limit > 0:  # in windows: a rare category in a long recent part
                k = min(stop, i + _CATEGORY_WINDOW)
                hit = rg[i:k][rc[i:k] == c][:limit]
                if len(hit):
                    found.append(hit)
                    limit -= len(hit)
                i = k
        if not found:
            return np.zeros(0, np.uint64)
        return found[0] if len(found) == 1 else np.concatenate(found)

    def categories(self) -> dict[str, int]:
        """Every category with the number of records the index lists for it (its messages, removed ones included)."""
        self.fold()
        starts, _goffs, recent_g, recent_c = self.snapshot
        counts = np.diff(starts)
        rc = recent_c.view()[: len(recent_g)]
        extra = np.bincount(rc, minlength=len(self.names)) if len(rc) else np.zeros(len(self.names), np.int64)
        out = {}
        for c, name in enumerate(self.names):
            n = int(extra[c]) + (int(counts[c]) if c < len(counts) else 0)
            if n:
                out[name] = n
        return out

    # -- DerivedIndex (writer role, recovery) ---------------------------------------------

    def apply(self, records: Applied) -> None:
        with self._lock:
            if self._deferred is None:
                self._fold()  # the groups before these records go first: the recent offsets stay ascending
                self._apply(records)
                return
            self._queue.append(list(records))  # a copy: the caller may reuse its list
            if len(self._queue) >= _FOLD_AT:
                self._fold()

    def _apply(self, records: Applied) -> None:
        # The common transaction: messages of streams already mapped, looked up at once with numpy.
        sids = [r.sid for _i, r in records if r.kind == KIND_MESSAGE]
        if len(sids) == len(records):
            sid_category = self.sid_category
            s = np.fromiter(sids, np.int64, len(sids))
            if int(s.max()) < len(sid_category):
                cats = sid_category[s]
                if int(cats.min()) >= 0:
                    _starts, _goffs, recent_g, recent_c = self.snapshot
                    recent_c.extend(cats)  # before the offsets, which readers read first
                    recent_g.extend([r.goff for _i, r in records])
                    return
        self._apply_each(records)

    takes_appends = True

    def apply_appends(self, sids: list[int], names: list[str], goffs: list[int], counts: list[int]) -> None:
        queue = self._queue
        queue.append((sids, names, goffs, counts))  # folded in when someone needs the index
        if len(queue) >= _FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Bring the index up to date with everything queued, loading it first if its load is deferred (any
        thread)."""
        if self._queue or self._deferred is not None:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Load the index if its load is deferred, then fold in what is queued, in order (under
        :attr:`_lock`)."""
        if self._deferred is not None:
            self._load_deferred()
        queue = self._queue
        n = len(queue)  # the writer may queue more meanwhile: they wait for the next fold
        if not n:
            return
        items = queue[:n]
        del queue[:n]
        groups: list[tuple[list[int], list[str], list[int], list[int]]] = []
        for item in items:
            if isinstance(item, list):  # records the writer or recovery applied while the load was deferred
                if groups:
                    self._fold_groups(groups)
                    groups = []
                self._apply(item)
            else:
                groups.append(item)
        if groups:
            self._fold_groups(groups)

    def _fold_groups(self, groups: list[tuple[list[int], list[str], list[int], list[int]]]) -> None:
        """Fold commit groups' appends in: each append's category id for its count of records, then the
        global offsets, one range per run of appends that follow each other."""
        n = len(groups)
        if n == 1:
            sids, names, goffs, counts = groups[0]
        else:
            sids, names, goffs, counts = [], [], [], []
            for g_sids, g_names, g_goffs, g_counts in groups:
                sids += g_sids
                names += g_names
                goffs += g_goffs
                counts += g_counts
        sid_category = self.sid_category
        dense = len(sid_category)
        cats = []
        for sid, name in zip(sids, names, strict=True):
            c = sid_category.item(sid) if sid < dense else -1
            if c < 0:
                c = self._map(sid, name)
                sid_category = self.sid_category
                dense = len(sid_category)
            cats.append(c)
        _starts, _goffs, recent_g, recent_c = self.snapshot
        total = sum(counts)
        first = goffs[0]
        if len(cats) == 1:
            recent_c.fill(cats[0], total)  # before the offsets, which readers read first
            recent_g.extend_range(first, total)
            return
        recent_c.extend(np.repeat(np.asarray(cats, np.int32), counts))
        if goffs[-1] + counts[-1] - first == total:  # the appends follow each other: one range
            recent_g.extend_range(first, total)
        else:  # each append's range: its first offset repeated, plus 0, 1, 2, ... within it
            c_arr = np.asarray(counts, np.int64)
            steps = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(c_arr) - c_arr, c_arr)
            recent_g.extend(np.repeat(np.asarray(goffs, np.int64), c_arr) + steps)

    def _category_of(self, sid: int) -> int:
        """Stream ``sid``'s category id, -1 if no record named it yet."""
        sid_category = self.sid_category
        return int(sid_category[sid]) if sid < len(sid_category) else self.sid_far.get(sid, -1)

    def _map(self, sid: int, name: str) -> int:
        """Stream ``sid``'s category id, mapping it by its ``name`` if it is not mapped yet."""
        c = self._category_of(sid)
        if c >= 0:
            return c
        category = name.partition("-")[0]
        c = self.ids.get(category, -1)
        if c < 0:
            c = len(self.names)
            self.names.append(category)
            self.ids[category] = c
        sid_category = self.sid_category
        if sid >= len(sid_category) + _DENSE_SLACK + len(sid_category):
            # Far past the ids met so far (a damaged log's, or one a repair left): no dense array
            # up to it; ids are dense in any log the writer wrote.
            self.sid_far[sid] = c
        else:
            if sid >= len(sid_category):
                bigger = np.full(max(2 * len(sid_category), sid + 1), -1, np.int32)
                bigger[: len(sid_category)] = sid_category
                self.sid_category = bigger
            self.sid_category[sid] = c
        return c

    def _apply_each(self, records: Applied) -> None:
        """:meth:`apply` record by record: new streams (their names), control records, markers."""
        sid_category = self.sid_category
        goffs: list[int] = []
        cats: list[int] = []
        for _i, rec in records:
            kind = rec.kind
            sid = rec.sid
            if kind == KIND_RETAIN:
                if goffs:
                    self._append(goffs, cats)
                    goffs, cats = [], []
                self._forget_below(rec.soff)
                sid_category = self.sid_category
                continue
            if sid == NO_STREAM:
                continue
            c = int(sid_category[sid]) if sid < len(sid_category) else self.sid_far.get(sid, -1)
            name = rec.name
            # Any NAMED record maps its stream, a TRUNCATE or DELETE too: after retention the first record
            # of a stream that a walk meets may be one, and the stream's next messages are not NAMED.
            if c < 0 and name is not None:
                c = self._map(sid, name)
                sid_category = self.sid_category
            if kind not in MESSAGE_KINDS or c < 0:
                continue  # a control record; or a LOST record of a stream no record named: nothing to list
            goffs.append(rec.goff)
            cats.append(c)
        if goffs:
            self._append(goffs, cats)

    def _append(self, goffs: list[int], cats: list[int]) -> None:
        _starts, _goffs, recent_g, recent_c = self.snapshot
        recent_c.extend(cats)  # before the offsets, which readers read first
        recent_g.extend(goffs)

    def _merge(self) -> None:
        """Move the recent part into the sealed part (writer role, at a checkpoint; under :attr:`_lock`, after
        a fold: a RETAIN record being folded in merges too, and what is queued after it must wait)."""
        starts, goffs, recent_g, recent_c = self.snapshot
        if not len(recent_g) and len(starts) == len(self.names) + 1:
            return
        ncat = len(self.names)
        old_keys = np.repeat(np.arange(len(starts) - 1, dtype=np.int32), np.diff(starts))
        keys = np.concatenate([old_keys, recent_c.view()[: len(recent_g)]])
        all_g = np.concatenate([goffs, recent_g.view()])
        order = np.argsort(keys, kind="stable")  # each category's offsets stay ascending
        new_starts = np.zeros(ncat + 1, np.int64)
        np.cumsum(np.bincount(keys, minlength=ncat), out=new_starts[1:])
        self.snapshot = (new_starts, all_g[order], Growable(np.uint64), Growable(np.int32))

    def _forget_below(self, start: int) -> None:
        """Retention moved the log start to ``start``: drop the offsets below it."""
        self._merge()
        starts, goffs, _rg, _rc = self.snapshot
        keep = goffs >= start
        if bool(keep.all()):
            return
        keys = np.repeat(np.arange(len(starts) - 1, dtype=np.int32), np.diff(starts))[keep]
        new_starts = np.zeros(len(starts), np.int64)
        np.cumsum(np.bincount(keys, minlength=len(starts) - 1), out=new_starts[1:])
        self.snapshot = (new_starts, goffs[keep], Growable(np.uint64), Growable(np.int32))

    def encode(self, generation: int) -> bytes:
        with self._lock:
            self._fold()
            self._merge()
            self.stale = False
            return self._encode(generation)

    def _encode(self, generation: int) -> bytes:
        starts, goffs, _rg, _rc = self.snapshot
        raw = [n.encode("utf-8") for n in self.names]
        lengths = np.fromiter((len(r) for r in raw), np.uint32, len(raw))
        sids, cats = self._mapping()
        head = lengths.tobytes() + sids.astype("<u4").tobytes() + cats.astype("<i4").tobytes()
        body = head + b"\0" * (-len(head) % 8) + starts.astype("<u8").tobytes() + goffs.astype("<u8").tobytes()
        body += b"".join(raw)
        return self._header(generation, len(raw), len(sids), len(goffs), body) + body

    def mapping(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """Every stream id mapped (ascending) and its category id."""
        self.fold()
        return self._mapping()

    def _mapping(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        dense = np.flatnonzero(self.sid_category >= 0)
        far = sorted(self.sid_far.items())
        sids = np.concatenate([dense, np.fromiter((s for s, _c in far), np.int64, len(far))])
        cats = np.concatenate([self.sid_category[dense], np.fromiter((c for _s, c in far), np.int32, len(far))])
        return sids.astype(np.int64), cats.astype(np.int32)

    @classmethod
    def _header(cls, generation: int, ncat: int, nsid: int, count: int, body: bytes) -> bytes:
        head = cls._HEADER.pack(
            cls.MAGIC, cls.VERSION, HEADER_SIZE, 0, generation, ncat, nsid, count, xxhash.xxh3_64_intdigest(body)
        )
        return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))

    # Long on purpose: one check per field of the file, each with its own message.
    def load(self, data: bytes | None, ckpt: Checkpoint) -> None:  # noqa: PLR0912, PLR0915
        if data is None or len(data) < HEADER_SIZE:
            raise FormatError(0, "category index file is shorter than its header")
        magic, version, hsize, flags, generation, ncat, nsid, count, body_sum = self._HEADER.unpack_from(data)
        (head_sum,) = struct.unpack_from("<Q", data, self._HEADER.size)
        if magic != self.MAGIC:
            raise FormatError(0, f"magic is {magic!r}, not {self.MAGIC!r}")
        if xxhash.xxh3_64_intdigest(data[: self._HEADER.size]) != head_sum:
            raise FormatError(56, "header checksum mismatch")
        if version != self.VERSION or hsize != HEADER_SIZE or flags != 0:
            raise FormatError(8, f"version {version}, header size {hsize}, flags {flags}: not this code's")
        if generation != ckpt.generation:
            raise FormatError(16, f"generation {generation}, the checkpoint's is {ckpt.generation}")
        body = memoryview(data)[HEADER_SIZE:]  # no copy of what may be most of a large file
        if xxhash.xxh3_64_intdigest(body) != body_sum:
            raise FormatError(HEADER_SIZE, "body checksum mismatch")
        at = 4 * ncat + 8 * nsid
        at += -at % 8
        fixed = at + 8 * (ncat + 1) + 8 * count
        if len(body) < fixed:
            raise FormatError(HEADER_SIZE, f"body is {len(body)} bytes, its counts need at least {fixed}")
        # The file's arrays are checked where they lie (no copy, no widening: the checks compare
        # neighbours in place, and a million streams make 16 MB); only what is kept is copied.
        lengths = np.frombuffer(body, "<u4", ncat, 0).astype(np.int64)
        sids = np.frombuffer(body, "<u4", nsid, 4 * ncat)
        sid_cat = np.frombuffer(body, "<i4", nsid, 4 * ncat + 4 * nsid)
        starts = np.frombuffer(body, "<u8", ncat + 1, at).astype(np.int64)
        goffs_file = np.frombuffer(body, "<u8", count, at + 8 * (ncat + 1))
        if len(body) != fixed + int(lengths.sum()):
            raise FormatError(HEADER_SIZE, "body length does not match the name lengths")
        if starts[0] != 0 or starts[-1] != count or bool(np.any(np.diff(starts) < 0)):
            raise FormatError(HEADER_SIZE + at, "category starts are not ascending from 0 to the record count")
        if nsid and (int(sid_cat.min()) < 0 or int(sid_cat.max()) >= ncat):
            raise FormatError(HEADER_SIZE + 4 * ncat + 4 * nsid, "a stream id maps to no category")
        if bool(np.any(sids[1:] <= sids[:-1])):
            raise FormatError(HEADER_SIZE + 4 * ncat, "the stream ids are not ascending")
        if count and int(goffs_file.max()) >= ckpt.next_goff:
            raise FormatError(
                HEADER_SIZE, f"lists global offset {int(goffs_file.max())}, the log ends at {ckpt.next_goff}"
            )
        # Within each category the offsets ascend; a fall is allowed only where the next category starts.
        falls = np.flatnonzero(goffs_file[1:] <= goffs_file[:-1]) + 1
        if len(falls) and not bool(np.all(np.isin(falls, starts[1:-1]))):
            raise FormatError(HEADER_SIZE, "a category's global offsets are not ascending")
        goffs = goffs_file.astype(np.uint64)  # a copy the index owns
        names = []
        p = fixed
        for n in lengths.tolist():
            names.append(bytes(body[p : p + n]).decode("utf-8"))
            p += n
        if len(set(names)) != len(names) or any("-" in n for n in names):
            raise FormatError(HEADER_SIZE + fixed, "category names repeat or hold '-'")
        self.names = names
        self.ids = {n: c for c, n in enumerate(names)}
        if nsid and int(sids[-1]) == nsid - 1:  # ascending from 0 (checked above): every id 0 .. nsid - 1
            self.sid_category = np.full(nsid + 16, -1, np.int32)
            self.sid_category[:nsid] = sid_cat
            self.sid_far = {}
        else:
            wide = sids.astype(np.int64)
            dense = wide < 2 * nsid + _DENSE_SLACK
            self.sid_category = np.full(int(wide[dense].max()) + 17 if dense.any() else 16, -1, np.int32)
            self.sid_category[wide[dense]] = sid_cat[dense]
            self.sid_far = dict(zip(wide[~dense].tolist(), sid_cat[~dense].tolist(), strict=True))
        self.snapshot = (starts, goffs, Growable(np.uint64), Growable(np.int32))

    def listing(self) -> dict[str, list[int]]:
        """Every category's global offsets (verify's comparison; not for large stores' hot paths)."""
        self.fold()
        starts, goffs, recent_g, recent_c = self.snapshot
        rg = recent_g.view()
        rc = recent_c.view()[: len(rg)]
        out: dict[str, list[int]] = {}
        for c, name in enumerate(self.names):
            mine = goffs[starts[c] : starts[c + 1]].tolist() if c + 1 < len(starts) else []
            mine += rg[rc == c].tolist()
            if mine:
                out[name] = mine
        return out

    def differences(self, rebuilt: DerivedIndex) -> list[str]:
        assert isinstance(rebuilt, CategoryIndex)
        mine, log = self.listing(), rebuilt.listing()
        problems = []
        for name in sorted(set(mine) | set(log)):
            a, b = mine.get(name, []), log.get(name, [])
            if a != b:
                only_file = sorted(set(a) - set(b))[:3]
                only_log = sorted(set(b) - set(a))[:3]
                problems.append(
                    f"category {name!r}: the index lists {len(a)} records, the log has {len(b)}"
                    f" (in the index only: {only_file}, in the log only: {only_log})"
                )
        mine_map = dict(zip(*(a.tolist() for a in self.mapping()), strict=True))
        log_map = dict(zip(*(a.tolist() for a in rebuilt.mapping()), strict=True))
        both = set(mine_map) & set(log_map)
        wrong = sorted(sid for sid in both if self.names[mine_map[sid]] != rebuilt.names[log_map[sid]])
        if wrong:
            problems.append(f"stream ids {wrong[:3]} map to other categories than their names say")
        return problems


# The writer folds what is queued in itself once this many items wait (a store nobody reads by category),
# loading the index first if its load is deferred.
_FOLD_AT = 256
# A rebuild from the log hands the records over this many at a time.
_REBUILD_CHUNK = 1 << 14
# A stream id this far past the dense array's end is kept in a dict (no array up to it).
_DENSE_SLACK = 1 << 16
# A category reader's look at the recent part compares this many category ids at a time.
_CATEGORY_WINDOW = 1 << 16

EXTRA_INDEXES: list[type[DerivedIndex]] = [CategoryIndex]
"""Indexes beyond the engine's own, made with no arguments; each store keeps one of each."""
