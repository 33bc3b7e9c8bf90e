"""The consistency checker behind ``logstore verify``; the tests run it on every store they write.

It reads every file of a store without changing anything (safe on a live
store) and re-derives everything from the log with its own code, not the
engine's recovery code. It checks:

- the layout: only the store's own files and directories exist (``LOCK``,
  ``CONTROL`` (optional: it holds no data and is not read), ``CHECKPOINT``,
  ``catalog.*``, ``segments/`` with ``<20 digits>.log``, ``.pos``, ``.log.tmp`` and ``.log.compact``, ``streams/`` with
  ``<10 digits>.runs``, ``lost+found/``); leftovers of an interrupted
  compaction or retention drop are problems unless a writer is active;
- every checksum of every file it reads: headers, records, position files,
  run files, catalog and checkpoint; record framing; that each segment file
  is as large as its header says and that the bytes after its last record
  are zero;
- global offsets are consecutive across segments, which start where the
  previous one ended; the log starts at 0, or (after retention dropped whole
  segments) at a global offset that a RETAIN record allows; stream offsets
  are contiguous per stream (MESSAGE, REMOVED and LOST records of a stream
  each take one); stream ids are assigned in order and named in the first
  record of each stream (in a log that retention shortened, in any order,
  but every id up to the largest is named); every segment names each stream
  in its first record of it; a TRUNCATE is not past its stream's head, a
  DELETE is at it; a RETAIN keeps from a global offset not past itself and
  begins its transaction; control records do not share a transaction with
  messages; a REMOVED record lies below its stream's first retained offset
  as of the end of the log; the log ends with a whole transaction;
- the checkpoint is not past the log's last whole transaction and falls
  between two transactions, its log start is the one the RETAIN records
  set, its segment entries and the position files match the log, and the
  catalog (names, heads, first retained offsets, deleted flags, last control
  records, runs and run counts) and the run files equal what the log implies
  at the checkpoint.

A store whose writer lock is held may have a transaction in flight at its
tail, a compaction swap or a retention drop half done; these are then
reported as notes, not problems. If the writer checkpoints while verify
runs, or verify finds a problem (a checkpoint may be half written), verify
looks again: a problem stands once two looks from the same checkpoint find it.

A stream reads as deleted from its DELETE record until its next MESSAGE,
REMOVED or LOST record: REMOVED and LOST records stand for messages that
were appended (and later removed by compaction, or destroyed), and an
append ends a deletion.

Retention makes some catalog values underivable from the log: what it
dropped may have raised a stream's first retained offset, set its last
control record or started its runs. For a log that does not start at
global offset 0 the checker therefore accepts the range of values that the
dropped part could explain (and that a rebuild of the indexes from the
shortened log produces), and demands exact equality only for what the
records present determine.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from logstore.embedded import layout
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.derived import EXTRA_INDEXES, DerivedIndex
from logstore.embedded.fileio import FileIO, default_io
from logstore.embedded.lock import writer_is_live
from logstore.embedded.msgids import VerifyMessageIds
from logstore.embedded.positions import check_file
from logstore.embedded.record import (
    FLAG_TX_END,
    KIND_DELETE,
    KIND_LOST,
    KIND_MESSAGE,
    KIND_NAMES,
    KIND_REMOVED,
    KIND_RETAIN,
    KIND_TRUNCATE,
    NO_STREAM,
    Record,
)
from logstore.embedded.segment import open_segment, read_segment_header
from logstore.embedded.walk import Damage, walk
from logstore.envelope import decode
from logstore.errors import CorruptionError
from logstore.index.catalog import FLAG_DELETED, FLAG_LARGE, NAMES_AT, Catalog, shared_reach
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE, CatalogHeader, PositionHeader, RunsHeader
from logstore.index.names import check_table, table_problems
from logstore.index.position import PositionIndex
from logstore.index.runs import LARGE_RUNS, LargeRuns, RunIndex

# The names logstore.embedded.layout gives the files of segments/ and streams/ (a repair's leftover is stray here).
_SEGMENT_FILE = re.compile(rf"([0-9]{{{layout.FIRST_DIGITS}}})\.(log|pos|log\.tmp|log\.compact)")
_RUN_FILE = re.compile(rf"([0-9]{{{layout.SID_DIGITS}}})\.runs")
_CONTROL = (KIND_TRUNCATE, KIND_DELETE, KIND_RETAIN)
_STREAM_CONTROL = (KIND_TRUNCATE, KIND_DELETE)
_T = TypeVar("_T")
_MESSAGE_LIKE = (KIND_MESSAGE, KIND_REMOVED, KIND_LOST)
_CKPT_HEAD = 24  # CHECKPOINT body: next global offset, log start, segment count
_CKPT_ENTRY = 32
_LIVE_ATTEMPTS = 4


@dataclass
class Problem:
    path: str
    position: int
    what: str

    def __str__(self) -> str:
        return f"{self.path} at byte {self.position}: {self.what}"


@dataclass
class VerifyResult:
    """What ``verify`` found: ``problems`` (exit 1 if any), ``notes`` and counts.

    - ``records``: every valid record in the log, of any kind;
    - ``messages``: MESSAGE records a reader returns: at or past the log start
      and their stream's first retained offset (and, when envelopes are
      decoded, whose envelope decodes);
    - ``removed``, ``lost``: REMOVED and LOST records;
    - ``control``: TRUNCATE, DELETE and RETAIN records;
    - ``log_start``: the first global offset the log keeps (0 until retention drops a segment);
    - ``log_end``: the global offset after the log's last whole transaction.
    """

    path: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    streams: int = 0
    transactions: int = 0
    messages: int = 0
    removed: int = 0
    lost: int = 0
    control: int = 0
    log_start: int = 0
    log_end: int = 0
    live: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, path: str, position: int, what: str) -> None:
        self.problems.append(Problem(path, position, what))


class _Stream:
    """What the log says about one stream so far."""

    __slots__ = ("ctrl", "deleted", "first", "fp", "head", "low", "msg_runs", "name", "runs")

    def __init__(self, name: str, head: int | None, fp: int) -> None:
        self.name = name
        self.head = head  # next stream offset; None: not known yet (a shortened log showed only truncations)
        self.low = 0  # while the head is unknown: it is at least this
        self.runs: list[tuple[int, int]] = []  # (stream offset, global offset) where each run starts
        self.first = 0  # the largest TRUNCATE/DELETE offset seen
        self.deleted = False
        self.ctrl = 0  # 1 + global offset of the last TRUNCATE/DELETE seen
        self.fp = fp  # stream offset of the stream's first record in the log
        self.msg_runs: list[list[int]] = []  # [stream offset, global offset, count] of MESSAGE records

    def snapshot(self) -> _Stream:
        out = _Stream(self.name, self.head, self.fp)
        out.low, out.runs, out.first = self.low, list(self.runs), self.first
        out.deleted, out.ctrl = self.deleted, self.ctrl
        return out


@dataclass
class _AtCheckpoint:
    streams: dict[int, _Stream]
    retain: int
    in_tx: bool


@dataclass
class _SegmentScan:
    path: str
    first: int
    size: int  # bytes of the file that hold records (the smaller of its size and capacity)
    positions: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)


Progress = Callable[[int, int | None], None]
"""``progress(done, total)``: records walked so far, and how many the checkpoint expects (``None``: unknown)."""

_PROGRESS_EVERY = 4096  # records between two progress calls: a call per record would slow the walk


def verify(
    path: str,
    io: FileIO | None = None,
    decode_envelopes: bool = True,
    live: bool | None = None,
    progress: Progress | None = None,
) -> VerifyResult:
    """Check the store in ``path``; raises ``OSError`` only if a directory of the store cannot be read.

    ``progress(done, total)``, when given, is called now and then while the
    log is walked: ``done`` records so far, of about ``total`` (the
    checkpoint's count; ``None`` without a usable checkpoint). A check that
    is repeated on a live store starts again from ``done == 0``.

    ``live`` says whether a writer may be changing the store meanwhile; by
    default, whether some process holds the writer lock. A caller that holds
    the lock itself and writes nothing while verify runs passes
    ``live=False``, so that what would be a write in flight on a live store
    is reported as the problem it is. On a live store whose ``CHECKPOINT``
    changes while verify runs, or that shows a problem, the check is
    repeated (up to 4 times in all): a problem on a live store is reported
    once two checks from the same checkpoint find the same.
    """
    io = io or default_io()
    is_live = writer_is_live(path) if live is None else live
    previous: list[str] | None = None
    for attempt in range(_LIVE_ATTEMPTS):
        result = VerifyResult(path, live=is_live)
        checker = _Verifier(path, io, result, decode_envelopes, progress)
        checker.run()
        if not is_live:
            return result
        found = [str(p) for p in result.problems]
        ckpt_moved = checker.checkpoint_moved()
        if not ckpt_moved and (not found or found == previous):
            return result
        # A live writer checkpointed meanwhile (a roll, a compaction swap, a retention drop), or is in
        # the middle of one (a checkpoint writes position files, then the catalog, then CHECKPOINT):
        # the index files were compared with a log that had moved on. Look again; a problem stands
        # once two looks from the same checkpoint find the same.
        previous = found
        if attempt == _LIVE_ATTEMPTS - 1 and ckpt_moved:
            moved = result.problems[checker.index_problems :]
            del result.problems[checker.index_problems :]
            result.notes += [f"{p} (the store checkpointed while verify ran)" for p in moved]
    return result


class _Verifier:
    def __init__(
        self, path: str, io: FileIO, result: VerifyResult, decode_envelopes: bool, progress: Progress | None = None
    ) -> None:
        self.path = path
        self.progress = progress
        self.io = io
        self.result = result
        self.decode_envelopes = decode_envelopes
        self.seg_dir = layout.segments_dir(path)
        self.stream_dir = layout.streams_dir(path)
        self.ckpt_path = layout.checkpoint_path(path)
        self.logs: dict[int, str] = {}  # first global offset -> segment file
        self.pos_files: set[int] = set()
        self.run_files: dict[int, str] = {}
        self.catalogs: list[str] = []
        self.ckpt: Checkpoint | None = None
        self.ckpt_raw: bytes | None = None
        self.index_problems = 0  # problems found before the index files were compared with the log
        self.store_id: bytes | None = None
        # The log scan.
        self.scans: dict[int, _SegmentScan] = {}
        self.streams: dict[int, _Stream] = {}
        self.max_sid = -1  # highest stream id met so far
        self.by_name: dict[str, int] = {}
        self.bad_ids: set[int] = set()  # ids already reported as unusable
        self.relaxed = False  # the log does not start at 0: retention dropped its beginning
        self.log_first = 0
        self.first_path = ""
        self.expected = 0
        self.retain = 0  # the largest RETAIN offset so far
        self.open_tx: tuple[str, int] | None = None  # first record of an unfinished transaction
        self.tx_kinds: set[int] = set()
        self.tx_end = 0  # global offset after the last TX_END record
        self.removed_at: list[tuple[str, int, Record]] = []
        self.at_ckpt: _AtCheckpoint | None = None
        self.large_ids: set[int] | None = None  # the catalog's large streams, once it is read
        self.extras = _Extras(self)  # the registered indexes (logstore.embedded.derived.EXTRA_INDEXES)
        self.msgids = VerifyMessageIds()  # the message-id index (logstore.embedded.msgids)

    def problem(self, path: str, position: int, what: str) -> None:
        self.result.problem(path, position, what)

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    # -- driver ----------------------------------------------------------------------

    def run(self) -> None:
        self._layout()
        self._read_checkpoint()
        if self.store_id is None:
            if not self.logs:
                self.problem(self.seg_dir, 0, "the store has no segment files")
            return
        if not self.result.live:
            g = self.ckpt.generation if self.ckpt is not None else None
            current = {layout.catalog_name(g), os.path.basename(_names_path(self.path, g))} if g is not None else set()
            for n in self.catalogs:
                if n not in current:
                    what = "name table" if layout.is_names_name(n) else "catalog"
                    self.note(f"{os.path.join(self.path, n)}: stale {what} generation (removed at next open)")
        firsts = self._segments_to_scan()
        self._scan_log(firsts)
        self._log_end_checks()
        self.index_problems = len(self.result.problems)
        if self.ckpt is not None and self._checkpoint_against_log():
            self._catalog_against_log()
            self.extras.against_log()
            self._msgids_against_log()
        self._leftover_index_files()
        self._subscriptions()

    def _subscriptions(self) -> None:
        """The ``SUBSCRIPTIONS`` file: whole, and no position past the log's end."""
        assert self.store_id is not None
        self.result.log_end = self.tx_end
        found = check_file(self.io, self.path, self.store_id, self.tx_end, self.result.live)
        for path, position, what in found.problems:
            self.problem(path, position, what)
        for text in found.notes:
            self.note(text)

    def _msgids_against_log(self) -> None:
        assert self.ckpt is not None and self.store_id is not None
        problems, notes = self.msgids.against_log(self.io, self.path, self.store_id, self.ckpt, self.result.live)
        for path, position, what in problems:
            self.problem(path, position, what)
        for text in notes:
            self.note(text)

    # -- directory layout ----------------------------------------------------------------

    # Long on purpose: one check per rule of the store layout (docs/FORMAT.md), in order.
    def _layout(self) -> None:  # noqa: PLR0912
        io, path = self.io, self.path
        for name in io.listdir(path):
            p = os.path.join(path, name)
            try:
                mode = os.lstat(p).st_mode
            except FileNotFoundError:
                continue  # removed meanwhile (a live writer's temporary file)
            if name in layout.STORE_DIRS:
                if not stat.S_ISDIR(mode):
                    self.problem(p, 0, f"{name} is not a directory")
            elif name in (layout.LOCK, layout.CONTROL, layout.CHECKPOINT, layout.SUBSCRIPTIONS):
                if not stat.S_ISREG(mode):
                    self.problem(p, 0, f"{name} is not a regular file")
            elif name == layout.CHECKPOINT + layout.TMP:
                self.note(
                    f"{p}: left by a checkpoint that did not finish (never read; the next checkpoint replaces it)"
                )
            elif name.startswith(layout.CATALOG_PREFIX) or layout.is_names_name(name):
                self.catalogs.append(name)
            elif name in (layout.MIGRATING, layout.MIGRATING + layout.TMP):
                self.note(f"{p}: an unfinished `logstore migrate` into this directory (run it again to finish)")
            elif self.extras.owns(name) or self.msgids.owns(name):
                pass
            else:
                self.problem(p, 0, "stray file in the store directory: not part of a store's layout")
        for name in io.listdir(self.seg_dir):
            p = os.path.join(self.seg_dir, name)
            m = _SEGMENT_FILE.fullmatch(name)
            if m is None:
                if name.endswith(layout.SEGMENT_EXT):
                    self.problem(p, 0, "not a segment file name (the stem must be 20 decimal digits)")
                else:
                    self.problem(p, 0, "stray file in segments/: not part of a store's layout")
                continue
            first, ext = int(m[1]), m[2]
            if ext == "log":
                self.logs[first] = p
            elif ext == "pos":
                self.pos_files.add(first)
            elif ext == "log.tmp":
                if not self.result.live:
                    self.note(
                        f"{p}: left by a segment creation that did not finish (the next writable open removes it)"
                    )
            elif self.result.live:
                self.note(f"{p}: a compaction in flight (a writer is active)")
            else:
                self.problem(p, 0, "leftover of an interrupted compaction; the next writable open removes it")
        if os.path.isdir(self.stream_dir):
            for name in io.listdir(self.stream_dir):
                p = os.path.join(self.stream_dir, name)
                m = _RUN_FILE.fullmatch(name)
                if m is None:
                    self.problem(p, 0, "stray file in streams/: not part of a store's layout")
                else:
                    self.run_files[int(m[1])] = p

    # -- checkpoint and store id ------------------------------------------------------------

    def checkpoint_moved(self) -> bool:
        """Whether ``CHECKPOINT`` changed since :meth:`run` read it."""
        try:
            return self.io.read_file(self.ckpt_path) != self.ckpt_raw
        except OSError:
            return self.ckpt_raw is not None

    def _read_checkpoint(self) -> None:
        try:
            self.ckpt_raw = self.io.read_file(self.ckpt_path)
            self.ckpt, self.store_id = Checkpoint.decode(self.ckpt_raw, None)
        except FileNotFoundError:
            self.problem(self.ckpt_path, 0, "CHECKPOINT is missing")
        except FormatError as exc:
            self.problem(self.ckpt_path, exc.position, f"CHECKPOINT: {exc.what}")
        except OSError as exc:
            self.problem(self.ckpt_path, 0, f"CHECKPOINT cannot be read: {exc}")
        if self.ckpt is not None and not self.ckpt.segments:
            self.problem(self.ckpt_path, HEADER_SIZE + 16, "CHECKPOINT names no segment")
            self.ckpt = None
        if self.store_id is not None:
            return
        for first in sorted(self.logs):
            p = self.logs[first]
            try:
                fd = self.io.open(p, os.O_RDONLY)
            except OSError:
                continue  # reported when the segment is read
            try:
                self.store_id = read_segment_header(self.io, p, fd).store_id
                return
            except CorruptionError:
                continue  # reported when the segment is read
            except OSError:
                continue
            finally:
                self.io.close(fd)

    def _segments_to_scan(self) -> list[int]:
        firsts = sorted(self.logs)
        if self.ckpt is None:
            return firsts
        ckpt_first = self.ckpt.segments[0].first
        out = []
        for first in firsts:
            if first < ckpt_first:
                p = self.logs[first]
                if self.result.live:
                    self.note(f"{p}: below the checkpoint's first segment: a retention drop in flight")
                else:
                    self.problem(
                        p,
                        0,
                        f"segment lies below the checkpoint's first segment {ckpt_first}: left by a retention "
                        "drop that did not finish; the next writable open removes it",
                    )
                continue
            out.append(first)
        return out

    # -- the log ---------------------------------------------------------------------------

    # Long on purpose: verify's single pass over the records of every segment.
    def _scan_log(self, firsts: list[int]) -> None:  # noqa: PLR0912, PLR0915
        assert self.store_id is not None
        result = self.result
        ckpt_goff = self.ckpt.next_goff if self.ckpt is not None else -1
        tail_problem: Problem | None = None
        started = False
        progress = self.progress
        total = ckpt_goff - firsts[0] if ckpt_goff >= 0 and firsts and ckpt_goff > firsts[0] else None
        walked = 0
        if progress is not None:
            progress(0, total)
        for seg_index, first in enumerate(firsts):
            seg_path = self.logs[first]
            try:
                seg = open_segment(self.io, seg_path, self.store_id, writable=False)
            except CorruptionError as exc:
                self.problem(seg_path, exc.position, exc.what)
                continue
            except FileNotFoundError:
                if result.live:
                    self.note(f"{seg_path}: removed while verify ran (a writer is active)")
                else:
                    self.problem(seg_path, 0, "segment file disappeared while verify ran")
                continue
            except OSError as exc:
                self.problem(seg_path, 0, f"cannot read: {exc}")
                continue
            try:
                result.segments += 1
                # A segment file grows with its reservation, up to its capacity: shorter is normal
                # (the checkpoint and the record scan below say whether records are missing).
                file_size = self.io.size(seg.fd)
                if file_size > seg.capacity:
                    self.problem(
                        seg_path,
                        seg.capacity,
                        f"segment file is {file_size} bytes, longer than the {seg.capacity} its header says",
                    )
                if not started:
                    started = True
                    self.expected = self.log_first = self.tx_end = seg.first
                    self.first_path = seg_path
                    self.relaxed = seg.first > 0
                elif seg.first != self.expected:
                    self.problem(seg_path, 32, f"segment starts at global offset {seg.first}, expected {self.expected}")
                    self.expected = seg.first
                scan = self.scans.setdefault(seg.first, _SegmentScan(seg_path, seg.first, seg.size))
                named: set[int] = set()
                buf = seg.view
                if self.expected == ckpt_goff and self.at_ckpt is None:
                    self._snapshot()
                # The walker parses and resynchronises; the rules below are verify's own. A record length of
                # 0 followed by non-zero bytes ends the segment's scan: the records after it (if any) are
                # not checked, since a live writer may be writing there.
                for item in walk(buf, HEADER_SIZE, seg.size, fd=seg.fd, resync=True):
                    if isinstance(item, Damage):
                        tail_problem = Problem(seg_path, item.position, item.what)
                        result.problems.append(tail_problem)
                        if item.zero:
                            break
                    else:
                        self._record(seg_path, item, named, buf)
                        self.extras.record(seg_index, item, ckpt_goff)
                        self.msgids.record(buf, item, ckpt_goff)
                        scan.positions.append(item.position)
                        scan.ends.append(item.position + item.length)
                        self.expected = item.goff + 1
                        if progress is not None:
                            walked += 1
                            if walked % _PROGRESS_EVERY == 0:
                                progress(walked, total)
                    if self.expected == ckpt_goff and self.at_ckpt is None:
                        self._snapshot()
            finally:
                seg.close()
            if progress is not None:
                progress(walked, total)
        if self.expected == ckpt_goff and self.at_ckpt is None:
            self._snapshot()
        if self.open_tx is not None:
            what = "the log ends inside a transaction (no TX_END record); recovery will cut it"
            if result.live:
                self.note(f"{self.open_tx[0]} at byte {self.open_tx[1]}: {what} (a writer is active)")
            else:
                self.problem(self.open_tx[0], self.open_tx[1], what)
        if tail_problem is not None and result.live and tail_problem is result.problems[-1]:
            result.problems.pop()
            self.note(f"{tail_problem} (a writer is active; this may be a write in flight)")

    def _snapshot(self) -> None:
        streams = {sid: st.snapshot() for sid, st in self.streams.items()}
        self.at_ckpt = _AtCheckpoint(streams, self.retain, self.open_tx is not None)

    # Long on purpose: one check per rule a record must meet (docs/FORMAT.md), in order.
    def _record(self, seg_path: str, rec: Record, named: set[int], buf: memoryview) -> None:  # noqa: PLR0912, PLR0915
        result = self.result
        pos = rec.position
        kind = rec.kind
        result.records += 1
        where = f"global offset {rec.goff}"
        if rec.goff != self.expected:
            self.problem(seg_path, pos, f"{where}: expected global offset {self.expected}")
        # Transactions: control records stand apart from messages; a RETAIN record begins its transaction.
        if self.open_tx is None:
            self.open_tx = (seg_path, pos)
            self.tx_kinds = set()
        if kind == KIND_RETAIN and self.tx_kinds:
            self.problem(seg_path, pos, f"{where}: a retain record must begin its transaction")
        if kind in _CONTROL and self.tx_kinds & {KIND_MESSAGE, KIND_REMOVED}:
            self.problem(seg_path, pos, f"{where}: a {KIND_NAMES[kind]} record shares its transaction with messages")
        elif kind in (KIND_MESSAGE, KIND_REMOVED) and self.tx_kinds & set(_CONTROL):
            self.problem(
                seg_path, pos, f"{where}: a {KIND_NAMES[kind]} record shares its transaction with a control record"
            )
        self.tx_kinds.add(kind)
        if rec.flags & FLAG_TX_END:
            self.open_tx = None
            result.transactions += 1
            self.tx_end = rec.goff + 1
        if kind in _CONTROL:
            result.control += 1
        elif kind == KIND_REMOVED:
            result.removed += 1
        elif kind == KIND_LOST:
            result.lost += 1
        if kind == KIND_RETAIN:
            if rec.soff > rec.goff:
                self.problem(seg_path, pos, f"{where}: retain record keeps from global offset {rec.soff}, past itself")
            self.retain = max(self.retain, rec.soff)
            return
        if rec.sid == NO_STREAM:
            return  # a LOST record of no stream
        st = self._stream_of(seg_path, rec, where)
        if st is None:
            return
        if rec.sid not in named:
            if rec.name is None and kind != KIND_LOST:
                self.problem(seg_path, pos, f"{where}: first record of stream {st.name!r} in segment is unnamed")
            named.add(rec.sid)
        soff = rec.soff
        if kind in _MESSAGE_LIKE:
            if st.head is None:
                if soff < st.low:
                    self.problem(
                        seg_path, pos, f"{where}: stream {st.name!r} offset {soff}, below {st.low} (truncated before)"
                    )
            elif soff != st.head:
                self.problem(seg_path, pos, f"{where}: stream {st.name!r} offset {soff}, expected {st.head}")
            diff = rec.goff - soff
            if not st.runs or st.runs[-1][1] - st.runs[-1][0] != diff:
                st.runs.append((soff, rec.goff))
            st.head = soff + 1
            # REMOVED and LOST records stand for messages: an append ends a deletion.
            st.deleted = False
            if kind == KIND_REMOVED:
                self.removed_at.append((seg_path, pos, rec))
            elif kind == KIND_MESSAGE:
                if self.decode_envelopes:
                    try:
                        decode(buf[rec.payload_start : pos + rec.length - 8])
                    except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding
                        self.problem(seg_path, pos, f"{where}: envelope does not decode: {exc}")
                        return
                runs = st.msg_runs
                if runs and runs[-1][0] + runs[-1][2] == soff and runs[-1][1] + runs[-1][2] == rec.goff:
                    runs[-1][2] += 1
                else:
                    runs.append([soff, rec.goff, 1])
            return
        # TRUNCATE or DELETE
        if kind == KIND_TRUNCATE:
            if st.head is None:
                st.low = max(st.low, soff)
            elif soff > st.head:
                self.problem(
                    seg_path, pos, f"{where}: stream {st.name!r} truncated before {soff}, past its head {st.head}"
                )
        else:
            if st.head is None:
                if soff < st.low:
                    self.problem(
                        seg_path,
                        pos,
                        f"{where}: stream {st.name!r} deleted at {soff}, below {st.low} (truncated)",
                    )
                st.head = soff
            elif soff != st.head:
                self.problem(
                    seg_path, pos, f"{where}: stream {st.name!r} deleted at {soff}, expected its head {st.head}"
                )
            st.deleted = True
        st.first = max(st.first, soff)
        st.ctrl = rec.goff + 1

    def _stream_of(self, seg_path: str, rec: Record, where: str) -> _Stream | None:
        """The stream of ``rec``, registering a new one; ``None`` (after a problem) if it cannot be."""
        sid = rec.sid
        st = self.streams.get(sid)
        if st is not None:
            if rec.name is not None and rec.name != st.name:
                self.problem(seg_path, rec.position, f"{where}: stream id {sid} named {rec.name!r}, was {st.name!r}")
            return st
        if sid in self.bad_ids:
            return None
        what = None
        other = self.by_name.get(rec.name) if rec.name is not None else None
        if rec.name is None:
            what = f"first record of stream id {sid} carries no name"
        elif other is not None:
            what = f"new stream id {sid} is named {rec.name!r}, the name of stream id {other}"
        elif not self.relaxed and rec.kind in _STREAM_CONTROL:
            what = f"a {KIND_NAMES[rec.kind]} record names stream id {sid} ({rec.name!r}) before any message of it"
        if what is not None:
            self.problem(seg_path, rec.position, f"{where}: {what}")
            self.bad_ids.add(sid)
            return None
        assert rec.name is not None
        expected = self.max_sid + 1
        if not self.relaxed and sid != expected:
            # Ids left out are reported at the end, each run of them once, as named nowhere.
            self.problem(
                seg_path,
                rec.position,
                f"{where}: new stream id {sid} ({rec.name!r}) is out of sequence, expected {expected}",
            )
        if self.relaxed:
            # Its earlier records may have been dropped: it starts wherever its first record is.
            head = None if rec.kind == KIND_TRUNCATE else rec.soff
            st = _Stream(rec.name, head, rec.soff)
        else:
            st = _Stream(rec.name, 0, rec.soff)
        self.streams[sid] = st
        self.max_sid = max(self.max_sid, sid)
        self.by_name[rec.name] = sid
        return st

    def _log_end_checks(self) -> None:
        result = self.result
        result.streams = len(self.streams)
        for seg_path, pos, rec in self.removed_at:
            st = self.streams[rec.sid]
            if rec.soff >= st.first:
                self.problem(
                    seg_path,
                    pos,
                    f"global offset {rec.goff}: removed record of stream {st.name!r} at offset {rec.soff}, "
                    f"which is not below the stream's first retained offset {st.first}",
                )
        if self.streams:
            # One problem per run of unnamed ids: one damaged record may carry an id in the billions.
            top, after = max(self.streams), 0  # after: the id after the last one named (or unusable)
            for sid in sorted(k for k in self.streams.keys() | self.bad_ids if k <= top):
                if sid > after:
                    ids = f"id {after} is" if sid == after + 1 else f"ids {after} to {sid - 1} are"
                    self.problem(self.first_path, HEADER_SIZE, f"stream {ids} named nowhere in the log")
                after = sid + 1
        recorded = self.ckpt is not None and self.ckpt.log_start >= self.log_first  # repair records it there
        if self.relaxed and self.log_first > self.retain and not recorded:
            self.problem(
                self.first_path,
                32,
                f"the log starts at global offset {self.log_first}, but no retain record moves the log start "
                f"there (the largest keeps from {self.retain})",
            )
        start = max(self.log_first, self.retain)
        result.log_start = start
        messages = 0
        for st in self.streams.values():
            for soff, goff, n in st.msg_runs:
                lo = max(soff, st.first, soff + start - goff)
                messages += max(0, soff + n - lo)
        result.messages = messages
        firsts = sorted(self.scans)
        for first, nxt in itertools.pairwise(firsts):
            if nxt <= start:
                self.note(f"{self.scans[first].path}: lies wholly below the log start {start}; retention removes it")

    # -- the checkpoint and the position files against the log --------------------------------

    # Long on purpose: one check per field of the checkpoint against the log, in order.
    def _checkpoint_against_log(self) -> bool:  # noqa: PLR0912, PLR0915
        """Check the checkpoint's counts, segments and position files; False if the catalog cannot be compared."""
        ckpt = self.ckpt
        assert ckpt is not None and self.store_id is not None
        cp = self.ckpt_path
        live = self.result.live
        if ckpt.next_goff > self.tx_end:
            self.problem(
                cp,
                HEADER_SIZE,
                f"checkpoint covers global offsets up to {ckpt.next_goff}, "
                f"the log's last whole transaction ends at {self.tx_end}",
            )
            return False
        at = self.at_ckpt
        if at is None:
            self.problem(cp, HEADER_SIZE, f"no record ends at the checkpoint's global offset {ckpt.next_goff}")
            return False
        if at.in_tx:
            self.problem(cp, HEADER_SIZE, f"the checkpoint's global offset {ckpt.next_goff} is inside a transaction")
        want_start = max(self.log_first if self.relaxed else 0, at.retain)
        if ckpt.log_start != want_start:
            self.problem(cp, HEADER_SIZE + 8, f"log start {ckpt.log_start}, the log's retain records say {want_start}")
        listed = {e.first for e in ckpt.segments}
        last_listed = ckpt.segments[-1].first
        for first, unlisted in sorted(self.scans.items()):
            if first not in listed and first <= last_listed:
                self.problem(
                    unlisted.path, 0, f"segment is not named by the checkpoint (which lists up to {last_listed})"
                )
        for i, e in enumerate(ckpt.segments):
            at_entry = HEADER_SIZE + _CKPT_HEAD + _CKPT_ENTRY * i
            scan = self.scans.get(e.first)
            if scan is None:
                if e.first not in self.logs:
                    self.problem(cp, at_entry, f"checkpoint names segment {e.first}, which is missing")
                continue
            if e.records > len(scan.positions):
                self.problem(
                    cp,
                    at_entry + 8,
                    f"segment {e.first}: checkpoint counts {e.records} records, the log has {len(scan.positions)}",
                )
                continue
            want_end = scan.ends[e.records - 1] if e.records else HEADER_SIZE
            pos_path = os.path.join(self.seg_dir, layout.position_name(e.first))
            missing = e.first not in self.pos_files
            # A sealed segment that compaction replaced after this checkpoint is smaller than the end the
            # checkpoint recorded for it; its position file is gone or already rewritten for the new copy.
            swapped = e.end > scan.size and i < len(ckpt.segments) - 1
            if e.end != want_end:
                what = f"segment {e.first}: checkpoint end {e.end}, its records end at {want_end}"
                if live and (missing or swapped):
                    self.note(f"{cp} at byte {at_entry + 16}: {what} (a compaction swap in flight)")
                    continue
                if swapped:
                    what += " (the segment was replaced after the checkpoint; the next open rebuilds its positions)"
                self.problem(cp, at_entry + 16, what)

            def pos_missing(pos_path: str = pos_path) -> None:
                if live:
                    self.note(f"{pos_path}: position file is missing (a compaction swap in flight)")
                else:
                    self.problem(pos_path, 0, "position file is missing")

            if missing:
                pos_missing()
                continue
            pindex = self._read_decoded(
                pos_path,
                functools.partial(
                    PositionIndex.decode, store_id=self.store_id, first=e.first, count=e.records, checksum=e.checksum
                ),
                pos_missing,
            )
            if pindex is None:
                continue
            got = pindex.positions.view().tolist()
            want = scan.positions[: e.records]
            if got != want:
                k = next(j for j in range(len(want)) if got[j] != want[j])
                self.problem(
                    pos_path,
                    HEADER_SIZE + 4 * k,
                    f"entry {k} (global offset {e.first + k}) is {got[k]}, the record is at {want[k]}",
                )
        return True

    # -- the catalog and run files against the log ----------------------------------------------

    def _catalog_against_log(self) -> None:
        ckpt, at = self.ckpt, self.at_ckpt
        assert ckpt is not None and at is not None and self.store_id is not None
        cat_path = layout.catalog_path(self.path, ckpt.generation)
        store_id = self.store_id
        decoded = self._read_decoded(
            cat_path,
            lambda raw: (raw, *Catalog.decode(raw, store_id, ckpt.generation)),
            lambda: self.problem(cat_path, 0, "catalog named by the checkpoint is missing"),
        )
        if decoded is None:
            return
        raw, catalog, runs, large = decoded
        self._names_against_catalog(raw, catalog, runs)
        lay = _CatalogLayout(raw)
        large_ids = self.large_ids = {sid for sid, _count, _sum in large}
        unusable: set[int] = set()
        for k, (sid, count, checksum) in enumerate(large):
            rpath = layout.runs_path(self.path, sid)
            try:
                runs.large[sid] = LargeRuns.decode(self.io.read_file(rpath), self.store_id, sid, count, checksum)
            except FileNotFoundError:
                self.problem(rpath, 0, "run file named by the catalog is missing")
                unusable.add(sid)
            except FormatError as exc:
                self.problem(rpath, exc.position, exc.what)
                unusable.add(sid)
            except OSError as exc:
                self.problem(rpath, 0, f"cannot read: {exc}")
                unusable.add(sid)
            if k and sid <= large[k - 1][0]:
                self.problem(cat_path, lay.large + 8 * k, "large stream ids are not in ascending order")
        log_streams = at.streams
        s_log = max(log_streams) + 1 if log_streams else 0
        s = len(catalog)
        if s != s_log:
            self.problem(cat_path, HEADER_SIZE, f"catalog has {s} streams, the log {s_log} at the checkpoint")
        for sid in range(min(s, s_log)):
            self._stream_against_log(
                cat_path, lay, catalog, runs, sid, log_streams.get(sid), sid in large_ids, unusable
            )

    def _names_against_catalog(self, raw: bytes, catalog: Catalog, runs: RunIndex) -> None:
        """The name table of the checkpoint's generation: whole, this catalog's, and right about every name."""
        ckpt = self.ckpt
        assert ckpt is not None and self.store_id is not None
        path = _names_path(self.path, ckpt.generation)
        try:
            buf = self.io.read_file(path)
        except FileNotFoundError:
            self.problem(
                path,
                0,
                "name table of the checkpoint's generation is missing (an open decodes the catalog"
                " whole; the next checkpoint writes it)",
            )
            return
        except OSError as exc:
            self.problem(path, 0, f"cannot read: {exc}")
            return
        try:
            tlay = check_table(buf, self.store_id, ckpt.generation)
        except FormatError as exc:
            self.problem(path, exc.position, f"{exc.what} (an open decodes the catalog whole instead)")
            return
        if tlay.catalog_checksum != CatalogHeader.decode(raw).body_checksum or tlay.streams != len(catalog):
            self.note(
                f"{path}: indexes another catalog file (an open decodes the catalog whole; the next checkpoint"
                " writes it anew)"
            )
            return
        names = list(catalog.names)
        reach = shared_reach(catalog.head[: len(names)], runs)
        for position, what in table_problems(buf, tlay, names, runs.snapshot[3], reach, NAMES_AT):
            self.problem(path, position, what)

    # Long on purpose: one check per catalog field of a stream against the log, in order.
    def _stream_against_log(  # noqa: PLR0912, PLR0915
        self,
        cat_path: str,
        lay: _CatalogLayout,
        catalog: Catalog,
        runs: RunIndex,
        sid: int,
        st: _Stream | None,
        is_large: bool,
        unusable: set[int],
    ) -> None:
        name = catalog.names[sid]
        if st is None:
            self.problem(
                cat_path, lay.names, f"stream id {sid} is {name!r}; the log names no such id before the checkpoint"
            )
            return
        if st.name != name:
            self.problem(cat_path, lay.names, f"stream id {sid} is {name!r}, the log names it {st.name!r}")
            return
        relaxed = self.relaxed
        log_first = self.log_first
        head = int(catalog.head[sid])
        if st.head is not None and head != st.head:
            self.problem(cat_path, lay.head(sid), f"stream {name!r}: head {head}, the log says {st.head}")
        elif st.head is None and head < st.low:
            self.problem(cat_path, lay.head(sid), f"stream {name!r}: head {head}, below its truncation at {st.low}")
        # First retained offset: the largest TRUNCATE/DELETE offset. Truncations that retention dropped
        # may have set it up to the stream's first offset in the log (which a rebuild takes).
        first = int(catalog.first[sid])
        lo = st.first
        hi = max(st.first, st.fp) if relaxed else st.first
        if not lo <= first <= hi:
            said = f"{lo}" if lo == hi else f"{lo} to {hi}"
            self.problem(cat_path, lay.first(sid), f"stream {name!r}: first retained offset {first}, log says {said}")
        elif first > head:
            self.problem(
                cat_path, lay.first(sid), f"stream {name!r}: first retained offset {first} past its head {head}"
            )
        # Last control record: what the log shows, or (in a shortened log) one that retention dropped.
        ctrl = int(catalog.ctrl[sid])
        if ctrl != st.ctrl and not (relaxed and st.ctrl == 0 and ctrl <= log_first):
            said = f"global offset {st.ctrl - 1}" if st.ctrl else "none"
            mine = f"global offset {ctrl - 1}" if ctrl else "none"
            self.problem(cat_path, lay.ctrl(sid), f"stream {name!r}: last control record {mine}, the log says {said}")
        flags = int(catalog.flags[sid])
        if bool(flags & FLAG_DELETED) != st.deleted:
            self.problem(
                cat_path,
                lay.flags(sid),
                f"stream {name!r}: deleted flag is {'set' if flags & FLAG_DELETED else 'clear'}, "
                f"the log says {'deleted' if st.deleted else 'not deleted'}",
            )
        if flags & ~(FLAG_DELETED | FLAG_LARGE):
            self.problem(cat_path, lay.flags(sid), f"stream {name!r}: unknown flag bits {flags:#x}")
        if bool(flags & FLAG_LARGE) != is_large:
            self.problem(
                cat_path,
                lay.flags(sid),
                f"stream {name!r}: large flag is {'set' if flags & FLAG_LARGE else 'clear'}, "
                f"but the large-stream section {'lists' if is_large else 'does not list'} it",
            )
        if sid in unusable:
            return
        cat_runs = runs.runs_of(sid)
        nruns = int(catalog.nruns[sid])
        if is_large:
            run_path, run_at = layout.runs_path(self.path, sid), HEADER_SIZE
        else:
            run_path, run_at = cat_path, lay.shared_soff(runs, sid)
            if nruns > LARGE_RUNS:
                self.problem(cat_path, lay.nruns(sid), f"stream {name!r}: {nruns} runs, but not a large stream")
        if relaxed:
            bad = _runs_mismatch(cat_runs, st.runs, log_first, head)
            if nruns != len(cat_runs):
                self.problem(
                    cat_path, lay.nruns(sid), f"stream {name!r}: run count {nruns}, it has {len(cat_runs)} runs"
                )
        else:
            bad = None
            if cat_runs != st.runs:
                bad = next((j for j in range(min(len(cat_runs), len(st.runs))) if cat_runs[j] != st.runs[j]), None)
                if bad is None:
                    bad = min(len(cat_runs), len(st.runs))
            if nruns != len(st.runs):
                self.problem(cat_path, lay.nruns(sid), f"stream {name!r}: run count {nruns}, log says {len(st.runs)}")
        if bad is not None:
            self.problem(
                run_path,
                run_at + (16 if is_large else 8) * bad,
                f"stream {name!r}: runs differ from the log's (from run {bad} on)",
            )
        want_diff = cat_runs[-1][1] - cat_runs[-1][0] if cat_runs else 0
        if int(catalog.run_diff[sid]) != want_diff:
            self.problem(
                cat_path,
                lay.run_diff(sid),
                f"stream {name!r}: run_diff {int(catalog.run_diff[sid])}, its last run says {want_diff}",
            )

    # -- index files nothing refers to ---------------------------------------------------------

    def _read_decoded(self, path: str, decode: Callable[[bytes], _T], missing: Callable[[], None]) -> _T | None:
        """``decode`` of the bytes of file ``path``; or ``None``, once ``missing()`` or a problem said why not."""
        try:
            return decode(self.io.read_file(path))
        except FileNotFoundError:
            missing()
        except FormatError as exc:
            self.problem(path, exc.position, exc.what)
        except OSError as exc:
            self.problem(path, 0, f"cannot read: {exc}")
        return None

    def _leftover_index_files(self) -> None:
        """Position and run files the checkpoint does not cover: notes only (they are rewritten before use)."""
        assert self.store_id is not None
        listed = {e.first for e in self.ckpt.segments} if self.ckpt is not None else set()
        for first in sorted(self.pos_files - listed):
            p = os.path.join(self.seg_dir, layout.position_name(first))
            if first not in self.logs:
                self.note(f"{p}: position file of no segment (left by an interrupted removal)")
                continue
            what = self._header_problem(p, PositionHeader, first)
            if what:
                self.note(f"{p}: {what} (not yet covered by the checkpoint; the next checkpoint rewrites it)")
        if self.large_ids is None:
            return  # no usable catalog: which run files it uses is unknown
        for sid, p in sorted(self.run_files.items()):
            if sid in self.large_ids:
                continue
            what = self._header_problem(p, RunsHeader, sid)
            extra = f" ({what})" if what else ""
            self.note(
                f"{p}: run file of a stream the catalog does not list as large{extra}; rewritten if it becomes large"
            )

    def _header_problem(self, path: str, kind: type[PositionHeader] | type[RunsHeader], expected: int) -> str | None:
        """What is wrong with the header of a position file (naming segment ``expected``) or a run file
        (naming stream ``expected``), or ``None``."""
        try:
            header = kind.decode(self.io.read_file(path))
        except FormatError as exc:
            return f"header at byte {exc.position}: {exc.what}"
        except OSError as exc:
            return f"cannot read: {exc}"
        if header.store_id != self.store_id:
            return "header: store id differs from the store's"
        named = header.first if isinstance(header, PositionHeader) else header.stream_id
        if named != expected:
            return f"header names {named}, the file name {expected}"
        return None


class _CatalogLayout:
    """Byte positions of a catalog file's fields (docs/FORMAT.md, section 9), to name where a problem is."""

    def __init__(self, raw: bytes) -> None:
        s, r, _k, n = (int(x) for x in struct.unpack_from("<QQQQ", raw, HEADER_SIZE))
        self.s, self.r = s, r
        self.names = HEADER_SIZE + 32
        h = _align8(self.names + n)
        self.h = h
        j = _align8(h + 37 * s)
        q = _align8(j + 4 * r)
        self.q = q
        self.large = q + 16 * r

    def head(self, sid: int) -> int:
        return self.h + 8 * sid

    def first(self, sid: int) -> int:
        return self.h + 8 * self.s + 8 * sid

    def run_diff(self, sid: int) -> int:
        return self.h + 16 * self.s + 8 * sid

    def ctrl(self, sid: int) -> int:
        return self.h + 24 * self.s + 8 * sid

    def nruns(self, sid: int) -> int:
        return self.h + 32 * self.s + 4 * sid

    def flags(self, sid: int) -> int:
        return self.h + 36 * self.s + sid

    def shared_soff(self, runs: RunIndex, sid: int) -> int:
        """Position of stream ``sid``'s first run in the shared table's stream-offset column."""
        starts = runs.snapshot[3]
        i = int(starts[sid]) if sid < len(starts) else self.r
        return self.q + 8 * i


def _align8(x: int) -> int:
    return x + (-x % 8)


def _runs_mismatch(
    cat_runs: list[tuple[int, int]], log_runs: list[tuple[int, int]], start: int, head: int
) -> int | None:
    """Compare a stream's catalog runs with the log's in a log that starts at global offset ``start`` > 0.

    The catalog may keep runs (or the beginning of a run) that retention
    dropped: those must lie wholly below ``start``. From the stream's first
    record in the log on, the runs must be the log's. Returns the index of
    the first catalog run that disagrees, or ``None``.
    """

    def end_goff(j: int) -> int:  # global offset after the last message of catalog run j
        s, g = cat_runs[j]
        nxt = cat_runs[j + 1][0] if j + 1 < len(cat_runs) else head
        return g + (nxt - s)

    if not log_runs:
        return next((j for j in range(len(cat_runs)) if end_goff(j) > start), None)
    s1, g1 = log_runs[0]
    k = bisect.bisect_right([s for s, _g in cat_runs], s1) - 1
    if k < 0:
        return 0
    s, g = cat_runs[k]
    if g - s != g1 - s1 or (s < s1 and g1 != start) or cat_runs[k + 1 :] != log_runs[1:]:
        return k
    return next((j for j in range(k) if end_goff(j) > start), None)


class _Extras:
    """The registered indexes: each one's file of the checkpoint's generation against one rebuilt from the log.

    The log's transactions up to the checkpoint are applied to a fresh
    instance of each registered index, as recovery would apply them; the
    index loaded from its file must not differ (``DerivedIndex.differences``).
    The judgement is the index's own; verify supplies the walk.
    """

    def __init__(self, verifier: _Verifier) -> None:
        self.v = verifier
        self.rebuilt: list[DerivedIndex] = []
        for cls in EXTRA_INDEXES:
            ix = cls()
            ix.reset()
            self.rebuilt.append(ix)
        self.pending: list[tuple[int, Record]] = []
        self.files: dict[str, list[str]] = {}  # prefix -> generation files present

    def owns(self, name: str) -> bool:
        """Whether ``name`` is a generation file of a registered index (noted for :meth:`against_log`)."""
        for ix in self.rebuilt:
            if ix.file is not None and name.startswith(ix.file + "."):
                self.files.setdefault(ix.file, []).append(name)
                return True
        return False

    def record(self, seg_index: int, rec: Record, ckpt_goff: int) -> None:
        """A record the walk found in the ``seg_index``-th segment (as the log lists them from its start);
        whole transactions below the checkpoint go to the rebuilt indexes."""
        if not self.rebuilt or rec.goff >= ckpt_goff:
            return
        self.pending.append((seg_index, rec))
        if rec.flags & FLAG_TX_END:
            for ix in self.rebuilt:
                ix.apply(self.pending)
            self.pending = []

    def against_log(self) -> None:
        v = self.v
        ckpt = v.ckpt
        assert ckpt is not None
        for rebuilt in self.rebuilt:
            if rebuilt.file is None:
                continue
            path = layout.index_path(v.path, rebuilt.file, ckpt.generation)
            current = os.path.basename(path)
            for name in self.files.get(rebuilt.file, []):
                if name != current and not v.result.live:
                    v.note(f"{os.path.join(v.path, name)}: stale {rebuilt.label} generation (removed at next open)")
            loaded = type(rebuilt)()
            try:
                loaded.load(v.io.read_file(path), ckpt)
            except FileNotFoundError:
                v.problem(path, 0, f"{rebuilt.label} file of the checkpoint's generation is missing")
                continue
            except Exception as exc:  # noqa: BLE001 - an added index's own decoding errors: each one is a finding
                v.problem(path, 0, f"{rebuilt.label} file is unusable: {exc}")
                continue
            for what in loaded.differences(rebuilt):
                v.problem(path, 0, what)


def _names_path(store: str, generation: int) -> str:
    return layout.index_path(store, layout.NAMES_PREFIX.rstrip("."), generation)
