"""The consistency checker behind ``logstore verify``; the tests run it on every store they write.

It reads every file of a store without changing anything (safe on a live
store) and checks, independently of the engine's own recovery code:

- every header and record checksum, record framing, and that the bytes after
  each segment's last record are zero;
- global offsets are 0, 1, 2, ... across segments, which start where the
  previous one ended; stream offsets are contiguous per stream; stream ids are
  assigned in order and every segment names each stream in its first record
  of it; the log ends with a whole transaction;
- the checkpoint is not past the end of the log, and the position files, the
  catalog (names, heads, runs) and the run files equal what the log implies
  at the checkpoint.

A store whose writer lock is held may have a transaction in flight at its
tail; that is then reported as a note, not a problem.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field

import numpy as np

from index.catalog import Catalog
from index.errors import FormatError
from index.header import HEADER_SIZE
from index.position import PositionIndex
from index.runs import LargeRuns
from logstore.checkpoint import Checkpoint
from logstore.envelope import decode
from logstore.errors import CorruptionError
from logstore.fileio import FileIO
from logstore.segment import (
    FLAG_TX_END,
    BadRecord,
    find_next_record,
    last_nonzero,
    open_segment,
    parse_record,
    position_name,
    read_segment_header,
)


@dataclass
class Problem:
    path: str
    position: int
    what: str

    def __str__(self) -> str:
        return f"{self.path} at byte {self.position}: {self.what}"


@dataclass
class VerifyResult:
    """What ``verify`` found: ``problems`` (exit 1 if any), ``notes`` and counts."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    streams: int = 0
    transactions: int = 0
    live: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, path: str, position: int, what: str) -> None:
        self.problems.append(Problem(path, position, what))


class _StreamState:
    __slots__ = ("head", "name", "runs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.head = 0
        self.runs: list[tuple[int, int]] = []


def _writer_active(path: str) -> bool:
    lock = os.path.join(path, "LOCK")
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def verify(path: str, io: FileIO | None = None, decode_envelopes: bool = True) -> VerifyResult:
    """Check the store in ``path``; raises ``OSError`` only if the directory cannot be read."""
    io = io or FileIO()
    result = VerifyResult(path)
    result.live = _writer_active(path)
    seg_dir = os.path.join(path, "segments")
    names = [n for n in io.listdir(seg_dir) if n.endswith(".log")]
    for n in io.listdir(seg_dir):
        if not (n.endswith((".log", ".pos", ".tmp"))):
            result.problem(os.path.join(seg_dir, n), 0, "stray file in segments/")
    ckpt: Checkpoint | None = None
    ckpt_path = os.path.join(path, "CHECKPOINT")
    store_id: bytes | None = None
    try:
        ckpt, store_id = Checkpoint.decode(io.read_file(ckpt_path), None)
    except FileNotFoundError:
        result.problem(ckpt_path, 0, "CHECKPOINT is missing")
    except FormatError as exc:
        result.problem(ckpt_path, exc.position, f"CHECKPOINT: {exc.what}")
    if store_id is None and names:
        first = os.path.join(seg_dir, names[0])
        fd = io.open(first, os.O_RDONLY)
        try:
            store_id = read_segment_header(io, first, fd).store_id
        except CorruptionError as exc:
            result.problem(first, exc.position, exc.what)
        finally:
            io.close(fd)
    if store_id is None:
        if not names:
            result.problem(seg_dir, 0, "the store has no segment files")
        return result

    # -- the log -----------------------------------------------------------------
    streams: list[_StreamState] = []
    by_name: dict[str, int] = {}
    positions: dict[int, list[int]] = {}
    ends: dict[int, int] = {}
    seg_paths: dict[int, str] = {}
    at_ckpt: tuple[list[int], list[list[tuple[int, int]]]] | None = None
    ckpt_goff = ckpt.next_goff if ckpt is not None else -1
    expected = 0
    open_tx: tuple[str, int] | None = None  # (path, position) of the first record of an unfinished transaction
    tail_problem: Problem | None = None
    for n in names:
        seg_path = os.path.join(seg_dir, n)
        try:
            seg = open_segment(io, seg_path, store_id, writable=False)
        except CorruptionError as exc:
            result.problem(seg_path, exc.position, exc.what)
            continue
        try:
            result.segments += 1
            if seg.first != expected:
                result.problem(seg_path, 32, f"segment starts at global offset {seg.first}, expected {expected}")
                expected = seg.first
            seg_paths[seg.first] = seg_path
            pos_list = positions.setdefault(seg.first, [])
            named: set[int] = set()
            pos = HEADER_SIZE
            buf = seg.view
            while True:
                if expected == ckpt_goff and at_ckpt is None:
                    at_ckpt = ([s.head for s in streams], [list(s.runs) for s in streams])
                try:
                    rec = parse_record(buf, pos, seg.size)
                except BadRecord as bad:
                    if bad.zero:
                        nz = last_nonzero(buf, pos, seg.size)
                        if nz > pos:
                            tail_problem = Problem(
                                seg_path, pos, f"record length 0 but non-zero bytes follow up to {nz}"
                            )
                            result.problems.append(tail_problem)
                        break
                    tail_problem = Problem(seg_path, pos, bad.what)
                    result.problems.append(tail_problem)
                    nxt = find_next_record(buf, pos + 1, seg.size)
                    if nxt < 0:
                        break
                    pos = nxt
                    continue
                result.records += 1
                where = f"global offset {rec.goff}"
                if rec.goff != expected:
                    result.problem(seg_path, pos, f"{where}: expected global offset {expected}")
                if rec.sid < len(streams):
                    st = streams[rec.sid]
                    if rec.name is not None and rec.name != st.name:
                        result.problem(
                            seg_path, pos, f"{where}: stream id {rec.sid} named {rec.name!r}, was {st.name!r}"
                        )
                elif rec.sid == len(streams) and rec.name is not None and rec.name not in by_name:
                    st = _StreamState(rec.name)
                    by_name[rec.name] = rec.sid
                    streams.append(st)
                else:
                    result.problem(seg_path, pos, f"{where}: stream id {rec.sid} is out of sequence or unnamed")
                    pos += rec.length
                    expected = rec.goff + 1
                    continue
                if rec.sid not in named and rec.name is None:
                    result.problem(seg_path, pos, f"{where}: first record of stream {st.name!r} in segment is unnamed")
                named.add(rec.sid)
                if rec.soff != st.head:
                    result.problem(seg_path, pos, f"{where}: stream {st.name!r} offset {rec.soff}, expected {st.head}")
                diff = rec.goff - rec.soff
                if not st.runs or st.runs[-1][1] - st.runs[-1][0] != diff:
                    st.runs.append((rec.soff, rec.goff))
                st.head = rec.soff + 1
                if decode_envelopes:
                    try:
                        decode(buf[rec.payload_start : pos + rec.length - 8])
                    except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding
                        result.problem(seg_path, pos, f"{where}: envelope does not decode: {exc}")
                if open_tx is None:
                    open_tx = (seg_path, pos)
                if rec.flags & FLAG_TX_END:
                    open_tx = None
                    result.transactions += 1
                pos_list.append(pos)
                pos += rec.length
                expected = rec.goff + 1
            ends[seg.first] = pos
        finally:
            seg.close()
    if expected == ckpt_goff and at_ckpt is None:
        at_ckpt = ([s.head for s in streams], [list(s.runs) for s in streams])
    result.streams = len(streams)
    if open_tx is not None:
        what = "the log ends inside a transaction (no TX_END record); recovery will cut it"
        if result.live:
            result.notes.append(f"{open_tx[0]} at byte {open_tx[1]}: {what} (a writer is active)")
        else:
            result.problem(open_tx[0], open_tx[1], what)
    if tail_problem is not None and result.live and tail_problem is result.problems[-1]:
        result.problems.pop()
        result.notes.append(f"{tail_problem} (a writer is active; this may be a write in flight)")

    # -- the indexes against the log ------------------------------------------------
    if ckpt is None:
        return result
    if ckpt.next_goff > expected:
        result.problem(ckpt_path, HEADER_SIZE, f"checkpoint covers {ckpt.next_goff} messages, the log holds {expected}")
        return result
    for e in ckpt.segments:
        sp = seg_paths.get(e.first)
        if sp is None:
            result.problem(ckpt_path, HEADER_SIZE, f"checkpoint names segment {e.first}, which is missing")
            continue
        found = positions.get(e.first, [])
        if e.records > len(found):
            result.problem(
                ckpt_path,
                HEADER_SIZE,
                f"segment {e.first}: checkpoint counts {e.records} records, log has {len(found)}",
            )
            continue
        want_end = found[e.records - 1] if e.records else HEADER_SIZE
        if e.records:
            try:
                seg_fd = io.open(sp, os.O_RDONLY)
                try:
                    raw = io.pread(seg_fd, 4, want_end)
                finally:
                    io.close(seg_fd)
                want_end += int.from_bytes(raw, "little")
            except OSError as exc:
                result.problem(sp, want_end, f"cannot read: {exc}")
        if e.end != want_end:
            result.problem(ckpt_path, HEADER_SIZE, f"segment {e.first}: checkpoint end {e.end}, log says {want_end}")
        pos_path = os.path.join(seg_dir, position_name(e.first))
        try:
            pindex = PositionIndex.decode(io.read_file(pos_path), store_id, e.first, e.records, e.checksum)
            if pindex.positions.view().tolist() != found[: e.records]:
                result.problem(pos_path, HEADER_SIZE, "positions differ from the log's")
        except FileNotFoundError:
            result.problem(pos_path, 0, "position file is missing")
        except FormatError as exc:
            result.problem(pos_path, exc.position, exc.what)
    cat_path = os.path.join(path, f"catalog.{ckpt.generation:020d}")
    try:
        catalog, runs, large = Catalog.decode(io.read_file(cat_path), store_id, ckpt.generation)
    except FileNotFoundError:
        result.problem(cat_path, 0, "catalog named by the checkpoint is missing")
        return result
    except FormatError as exc:
        result.problem(cat_path, exc.position, exc.what)
        return result
    for sid, count, checksum in large:
        rpath = os.path.join(path, "streams", f"{sid:010d}.runs")
        try:
            runs.large[sid] = LargeRuns.decode(io.read_file(rpath), store_id, sid, count, checksum)
        except FileNotFoundError:
            result.problem(rpath, 0, "run file named by the catalog is missing")
        except FormatError as exc:
            result.problem(rpath, exc.position, exc.what)
    heads, run_lists = at_ckpt if at_ckpt is not None else ([], [])
    if len(catalog) != len(heads):
        result.problem(
            cat_path, HEADER_SIZE, f"catalog has {len(catalog)} streams, the log {len(heads)} at the checkpoint"
        )
        return result
    cat_heads = catalog.head[: len(catalog)]
    if not np.array_equal(cat_heads, np.asarray(heads, dtype=cat_heads.dtype)):
        first_bad = int(np.flatnonzero(cat_heads != np.asarray(heads, dtype=cat_heads.dtype))[0])
        result.problem(
            cat_path,
            HEADER_SIZE,
            f"stream {catalog.names[first_bad]!r}: head {int(cat_heads[first_bad])}, log says {heads[first_bad]}",
        )
    for sid, name in enumerate(catalog.names):
        if streams[sid].name != name:
            result.problem(
                cat_path, HEADER_SIZE, f"stream id {sid} is {name!r}, the log names it {streams[sid].name!r}"
            )
            continue
        if runs.runs_of(sid) != run_lists[sid]:
            result.problem(cat_path, HEADER_SIZE, f"stream {name!r}: runs differ from the log's")
        if int(catalog.nruns[sid]) != len(run_lists[sid]):
            result.problem(
                cat_path,
                HEADER_SIZE,
                f"stream {name!r}: run count {int(catalog.nruns[sid])}, log says {len(run_lists[sid])}",
            )
    for n in io.listdir(path):
        if n.startswith("catalog.") and n != os.path.basename(cat_path) and not result.live:
            result.notes.append(f"{os.path.join(path, n)}: stale catalog generation (removed at next open)")
    return result
