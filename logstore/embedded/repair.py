"""Repair: make a damaged store whole again, keeping every undamaged record at its offsets.

``repair(path)`` takes the writer lock, makes sure that no other process has
the store open (read-only openers included: it joins the store's ``CONTROL``
file as its first opener, else raises ``StoreLockedError`` naming the pids
of the processes listed there), and then:

1. Moves stray files (anything that is not part of the store's layout) into
   ``lost+found/``.
2. Reads every segment. A damaged header is rebuilt from the file name and
   size; a segment of another store is moved to ``lost+found/``. Inside a
   segment, every valid record is kept; after damage the walk resynchronises
   on the next valid record (the walker of :mod:`logstore.embedded.walk`). The damaged bytes are
   copied to ``lost+found/`` with a JSON manifest (file, byte position,
   length, the global offsets they held).
3. Gives every global offset whose record was destroyed (inside a segment,
   or a whole segment missing from the middle) a LOST record, so that global
   offsets stay consecutive. Where the surviving records show which stream
   offsets are missing (a stream that jumps from offset 4 to 7 lost 5 and 6
   between those two records), the LOST records carry that stream and
   offset, so stream offsets stay contiguous too; readers skip them.
4. Cuts a trailing transaction that has no end record (as recovery does).
5. Writes each segment that changed as a new file (``<name>.repair``,
   fsynced, renamed over the old one, directory fsynced), deletes every
   derived file (CHECKPOINT, catalogs, position, run and message-id index files) and opens the
   store, which rebuilds them from the log.
6. Mends ``SUBSCRIPTIONS`` (:func:`logstore.embedded.positions.repair_file`): its damaged bytes go to
   ``lost+found/``; a damaged header is written anew, a damaged definition frees its slot, a member
   whose position copies are both damaged goes back to global offset 0, and one past the log's end
   to the end. A store whose only problems are there is mended without touching the log.

A store that verifies clean is left untouched, so repairing twice gives the
same store as repairing once. ``dry_run=True`` reports the plan and changes
nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import time
from dataclasses import dataclass, field

from logstore.embedded import layout, msgids
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.controlfile import Control, slot_flags
from logstore.embedded.derived import EXTRA_INDEXES
from logstore.embedded.fileio import FileIO, default_io
from logstore.embedded.lock import release_writer_lock, take_writer_lock
from logstore.embedded.lostfound import REPAIR, LostFound
from logstore.embedded.positions import check_file, repair_file
from logstore.embedded.record import (
    FLAG_NAMED,
    FLAG_TX_END,
    KIND_DELETE,
    KIND_LOST,
    KIND_RETAIN,
    KIND_TRUNCATE,
    NO_STREAM,
    RECORD_OVERHEAD,
    Record,
    frame,
)
from logstore.embedded.store import open as open_store
from logstore.embedded.store import resolve_store_path
from logstore.embedded.verify import VerifyResult, verify
from logstore.embedded.walk import Damage, walk
from logstore.errors import CorruptionError, as_corruption
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE, MAGIC_SUBSCRIPTIONS, SegmentHeader, decode_header

_NOTHING = "verify finds no problem: nothing to repair"
_TOP = {
    layout.LOCK,
    layout.CONTROL,
    layout.CHECKPOINT,
    layout.CHECKPOINT + layout.TMP,
    layout.SUBSCRIPTIONS,
    *layout.STORE_DIRS,
}
_SEGMENT_DIR_EXTS = (
    layout.SEGMENT_EXT,
    layout.POSITION_EXT,
    layout.SEGMENT_EXT + layout.TMP,
    layout.SEGMENT_EXT + layout.COMPACT,
    layout.SEGMENT_EXT + layout.REPAIR,
)


@dataclass
class RepairReport:
    """What ``repair`` found and did (or, with ``dry_run``, would do)."""

    path: str
    dry_run: bool = False
    actions: list[str] = field(default_factory=list)
    lost_found: list[str] = field(default_factory=list)
    records_kept: int = 0
    records_lost: int = 0
    bytes_moved: int = 0
    lost_offsets: dict[str, list[int]] = field(default_factory=dict)  # stream -> offsets marked lost
    changed: bool = False
    derived: list[str] = field(default_factory=list)  # derived index files deleted (to be rebuilt from the log)


@dataclass
class _Seg:
    path: str
    first: int
    data: bytes
    header_bad: str | None = None
    size_bad: str | None = None  # the file is longer than the capacity its header gives
    records: list[Record] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)


def _is_index_generation(name: str) -> bool:
    """Whether ``name`` is a generation file of a registered index (``<file>.<digits>``, or its temporary name)."""
    for cls in EXTRA_INDEXES:
        if cls.file is not None and name.startswith(cls.file + "."):
            return name[len(cls.file) + 1 :].removesuffix(layout.TMP).isdigit()
    return False


def _stray(name: str, where: str) -> bool:
    if where == "top":
        return (
            name not in _TOP
            and not layout.is_catalog_name(name)
            and not layout.is_names_name(name)
            and not msgids.is_index_file(name)
            and not _is_index_generation(name)
        )
    if where == layout.SEGMENTS:
        stem = name.split(".", 1)[0]
        rest = name[len(stem) :]
        return not (len(stem) == layout.FIRST_DIGITS and stem.isdigit() and rest in _SEGMENT_DIR_EXTS)
    return not layout.is_runs_name(name)


def repair(path: str, dry_run: bool = False, io: FileIO | None = None) -> RepairReport:
    """Repair the store in ``path``; see the module docstring.

    Raises ``StoreLockedError`` if a writer has the store open, or (unless ``dry_run``, which changes
    nothing) any other process, read-only openers included: the message names their pids.
    """
    io = io or default_io()
    report = RepairReport(path, dry_run)
    path = resolve_store_path(path)
    seg_dir = layout.segments_dir(path)
    if not os.path.isdir(seg_dir):
        raise FileNotFoundError(f"{path}: not a logstore store (no segments/ directory)")
    _check_versions(path, io)
    result = verify(path, io)  # before taking the lock: verify reads a held lock as a live writer
    # A dry run creates nothing, and no writer can hold a missing lock.
    if dry_run and not io.exists(layout.lock_path(path)):
        if result.ok:
            report.actions.append(_NOTHING)
        else:
            _repair_found(path, io, report, result)
        return report
    lock_fd = take_writer_lock(io, path, "a writer holds the store; close it before repairing")
    control: Control | None = None
    rebuild = False
    try:
        if not dry_run:
            control = Control.join(io, path, _control_store_id(path, io), slot_flags(True, repair=True), alone=True)
        if result.ok:
            report.actions.append(_NOTHING)
        else:
            rebuild = _repair_found(path, io, report, result)
    finally:
        try:
            if control is not None:
                control.close()
        finally:
            release_writer_lock(io, lock_fd)
    if not dry_run and rebuild:
        with open_store(path) as store:
            report.actions.append(f"rebuilt the indexes from the log: {store.recovery_report.summary()}")
    return report


def _repair_found(path: str, io: FileIO, report: RepairReport, result: VerifyResult) -> bool:
    """Mend what verify found: the log and its indexes (:func:`_repair_locked`), then ``SUBSCRIPTIONS``.

    Returns whether the log's part ran (its derived files are then rebuilt by opening the store).
    """
    subscriptions = os.path.join(path, layout.SUBSCRIPTIONS)
    in_log = any(problem.path != subscriptions for problem in result.problems)
    in_subscriptions = any(problem.path == subscriptions for problem in result.problems)
    if in_log:
        _repair_locked(path, io, report)
        if in_subscriptions and not report.dry_run:
            result = verify(path, io, live=False)  # the log's end after its repair
    if in_subscriptions:
        store_id = _store_id(path, io)
        found = check_file(io, path, store_id, result.log_end, live=False)
        if found.problems:
            report.changed = True
            lf = _LostFound(path, io, report)
            repair_file(io, path, store_id, found, result.log_end, lf.save, lf.move, report.actions, report.dry_run)
    return in_log


# Long on purpose: the repair's steps in order, as its docstring lists them.
def _repair_locked(path: str, io: FileIO, report: RepairReport) -> None:  # noqa: PLR0912, PLR0915
    seg_dir = layout.segments_dir(path)
    stream_dir = layout.streams_dir(path)
    report.changed = True
    lf = _LostFound(path, io, report)
    # 1. Stray files.
    for where, d in (("top", path), (layout.SEGMENTS, seg_dir), (layout.STREAMS, stream_dir)):
        if not os.path.isdir(d):
            continue
        for name in sorted(io.listdir(d)):
            if _stray(name, where):
                lf.move(os.path.join(d, name), "stray file: not part of the store's layout")
    # 2. Segments.
    store_id = _store_id(path, io)
    segs: list[_Seg] = []
    for name in sorted(io.listdir(seg_dir)):
        if not name.endswith(layout.SEGMENT_EXT) or _stray(name, layout.SEGMENTS):
            continue
        p = os.path.join(seg_dir, name)
        data = io.read_file(p)
        seg = _Seg(p, layout.segment_first(name), data)
        try:
            header = SegmentHeader.decode(data)
            if header.store_id != store_id:
                lf.move(p, "segment of another store (store id differs)")
                continue
            if header.first != seg.first:
                seg.header_bad = f"header names global offset {header.first}"
            elif len(data) > header.capacity:  # shorter is normal: a segment file grows up to its capacity
                seg.size_bad = f"file is {len(data)} bytes, longer than the {header.capacity} its header says"
        except FormatError as exc:
            seg.header_bad = f"header damaged at byte {exc.position}: {exc.what}"
        segs.append(seg)
    if not segs:
        report.actions.append("no segment is left: the store holds nothing to repair")
        return
    for seg in segs:
        _walk(seg)
    # 3. Global offsets: find every one no record holds. The log starts where the checkpoint's first
    #    segment does (segments missing before ours are filled), or, with no readable checkpoint,
    #    where our first segment does (retention may have dropped what lies below).
    retained = max((r.soff for seg in segs for r in seg.records if r.kind == KIND_RETAIN), default=0)
    ckpt = _checkpoint(path, io)
    if segs[0].first <= retained or ckpt is None or not ckpt.segments:
        expected = segs[0].first
        if segs[0].first > retained:
            report.actions.append(
                f"the log starts at global offset {segs[0].first} and nothing says why; "
                "what lies below is taken as dropped"
            )
    else:
        expected = min(segs[0].first, ckpt.segments[0].first)
    # A segment whose records all repeat global offsets an earlier one holds (left by a repair that
    # stopped between renaming a rewritten segment and removing the old one) goes to lost+found.
    kept_segs = []
    seen = expected
    for seg in segs:
        if seg.records and seg.records[-1].goff < seen:
            lf.move(seg.path, f"its global offsets {seg.first}..{seg.records[-1].goff} repeat an earlier segment's")
            continue
        kept_segs.append(seg)
        if seg.records:
            seen = max(seen, seg.records[-1].goff + 1)
    segs = kept_segs
    gaps: list[tuple[int, int, int]] = []  # (segment index, first lost goff, count)
    for si, seg in enumerate(segs):
        if seg.first > expected:
            gaps.append((si, expected, seg.first - expected))  # a segment missing from the middle
            lf.save(
                b"",
                layout.segment_path(path, expected),
                0,
                f"segment missing: global offsets {expected}..{seg.first - 1} marked lost",
            )
            expected = seg.first
        kept = []
        for rec in seg.records:
            if rec.goff < expected:
                seg.damage.append(Damage(rec.position, rec.position + rec.length, f"global offset {rec.goff} repeats"))
                continue
            if rec.goff > expected:
                gaps.append((si, expected, rec.goff - expected))
            kept.append(rec)
            expected = rec.goff + 1
        seg.records = kept
    # 4. A trailing transaction without its end record is cut, as recovery would.
    last = segs[-1]
    while last.records and not last.records[-1].flags & FLAG_TX_END:
        rec = last.records.pop()
        last.damage.append(Damage(rec.position, rec.position + rec.length, "transaction without its end record"))
    while gaps and gaps[-1][0] == len(segs) - 1 and not any(r.goff > gaps[-1][1] for r in last.records):
        gaps.pop()  # nothing survives after it: the tail is cut, not filled
    # 5. Which stream offsets the gaps held.
    lost, names = _attribute(segs, gaps)
    # The derived files the real run deletes, listed before anything is deleted, less what was moved
    # to lost+found above (a dry run moved nothing, so it must not count those twice): the dry run
    # and the real run then name the same files.
    top = io.listdir(path)
    prefixes = (
        layout.CATALOG_PREFIX,
        layout.NAMES_PREFIX,
        *(f"{cls.file}." for cls in EXTRA_INDEXES if cls.file is not None),
    )
    derived = [
        os.path.join(path, n)
        for n in top
        if n == layout.CHECKPOINT or n.startswith(prefixes) or msgids.is_index_file(n)
    ]
    derived += [os.path.join(seg_dir, n) for n in io.listdir(seg_dir) if n.endswith(layout.POSITION_EXT)]
    if os.path.isdir(stream_dir):
        derived += [os.path.join(stream_dir, n) for n in io.listdir(stream_dir) if n.endswith(layout.RUNS_EXT)]
    derived = sorted(p for p in derived if p not in lf.moved)
    # From here on segments change: first remove the checkpoint, so that a crash in the middle
    # leaves a store whose next open (or repair) reads the log itself, not indexes of the old one.
    ckpt_path = layout.checkpoint_path(path)
    if not report.dry_run and io.exists(ckpt_path):
        io.unlink(ckpt_path)
        io.fsync_dir(path)
    report.records_kept = sum(len(s.records) for s in segs)
    report.records_lost = sum(n for _si, _g, n in gaps)
    for si, seg in enumerate(segs):
        seg_gaps = [(g, n) for gi, g, n in gaps if gi == si]
        if not seg_gaps and not seg.damage and seg.header_bad is None and seg.size_bad is None:
            continue
        why = seg.header_bad or (seg.damage[0].what if seg.damage else seg.size_bad or "global offsets missing")
        report.actions.append(
            f"{seg.path}: rewrite ({why}); keep {len(seg.records):,} records, "
            f"mark {sum(n for _g, n in seg_gaps):,} global offsets lost"
        )
        for damage in seg.damage:
            lf.save(seg.data[damage.position : damage.end], seg.path, damage.position, damage.what)
        if seg.header_bad is not None:
            lf.save(seg.data[:HEADER_SIZE], seg.path, 0, seg.header_bad)
        _rewrite(seg, seg_gaps, lost, names, store_id, io, report)
    if not report.dry_run:
        io.fsync_dir(seg_dir)
    for name, offs in sorted(_lost_by_stream(lost).items()):
        report.lost_offsets[name] = offs
    # 6. Derived files: the next open rebuilds them from the log.
    report.derived = derived
    report.actions.append(f"delete {len(derived):,} derived index files (rebuilt from the log)")
    if not report.dry_run:
        for p in derived:
            if io.exists(p):  # CHECKPOINT went first, above
                io.unlink(p)
        io.fsync_dir(path)


def _check_versions(path: str, io: FileIO) -> None:
    """A file of an unknown format version stops the repair before anything changes."""
    seg_dir = layout.segments_dir(path)
    for name in sorted(io.listdir(seg_dir)):
        if name.endswith(layout.SEGMENT_EXT) and not _stray(name, layout.SEGMENTS):
            p = os.path.join(seg_dir, name)
            with contextlib.suppress(FormatError), as_corruption(p, versions_only=True):
                SegmentHeader.decode(io.read_file(p)[:HEADER_SIZE])
    ckpt = layout.checkpoint_path(path)
    if io.exists(ckpt):
        with contextlib.suppress(FormatError), as_corruption(ckpt, versions_only=True):
            Checkpoint.decode(io.read_file(ckpt), None)
    subscriptions = os.path.join(path, layout.SUBSCRIPTIONS)
    if io.exists(subscriptions):
        with contextlib.suppress(FormatError), as_corruption(subscriptions, versions_only=True):
            decode_header(io.read_file(subscriptions)[:HEADER_SIZE], MAGIC_SUBSCRIPTIONS)


def _checkpoint(path: str, io: FileIO) -> Checkpoint | None:
    try:
        return Checkpoint.decode(io.read_file(layout.checkpoint_path(path)), None)[0]
    except (OSError, FormatError):
        return None


def _control_store_id(path: str, io: FileIO) -> bytes:
    """The store id for the ``CONTROL`` header repair writes: :func:`_store_id`, or zeros when none is readable.

    (Then repair stops at its step 2 with the error :func:`_store_id` raises; ``CONTROL`` holds no data.)
    """
    try:
        return _store_id(path, io)
    except CorruptionError:
        return bytes(16)


def _store_id(path: str, io: FileIO) -> bytes:
    """The store id: the checkpoint's, else the one most segment headers carry."""
    try:
        return Checkpoint.decode(io.read_file(layout.checkpoint_path(path)), None)[1]
    except (OSError, FormatError):
        pass
    seg_dir = layout.segments_dir(path)
    votes: dict[bytes, int] = {}
    for name in io.listdir(seg_dir):
        if name.endswith(layout.SEGMENT_EXT):
            try:
                h = SegmentHeader.decode(io.read_file(os.path.join(seg_dir, name))[:HEADER_SIZE])
            except FormatError:
                continue
            votes[h.store_id] = votes.get(h.store_id, 0) + 1
    if not votes:
        raise CorruptionError(seg_dir, 0, "no segment header is readable and no CHECKPOINT: the store id is unknown")
    return max(votes, key=lambda k: votes[k])


def _walk(seg: _Seg) -> None:
    """Collect the valid records of a segment and the damaged byte ranges between them (the walker's damage)."""
    buf = memoryview(seg.data)
    for item in walk(buf, HEADER_SIZE, len(buf), resync=True):
        if isinstance(item, Damage):
            seg.damage.append(item)
        else:
            seg.records.append(item)


def _stream_names(segs: list[_Seg]) -> dict[int, str]:
    """Every stream's name, from the first surviving record that carries it."""
    names: dict[int, str] = {}
    for seg in segs:
        for rec in seg.records:
            if rec.name is not None and rec.sid != NO_STREAM:
                names.setdefault(rec.sid, rec.name)
    return names


def _attribute(
    segs: list[_Seg], gaps: list[tuple[int, int, int]]
) -> tuple[dict[int, tuple[int, int, str]], dict[int, str]]:
    """Map lost global offsets to the (stream id, stream offset, name) that the surviving records show.

    A stream whose next surviving record is at a higher offset than its
    head lost the offsets in between, between the global offsets of its two
    records. Returns that map and every stream's name.
    """
    names = _stream_names(segs)
    free = sorted(g for _si, g0, n in gaps for g in range(g0, g0 + n))
    out: dict[int, tuple[int, int, str]] = {}
    from_zero = segs[0].first == 0 or any(g0 == 0 for _si, g0, _n in gaps)
    head: dict[int, tuple[int, int]] = {}  # stream id -> (next offset, global offset of its last record)
    for seg in segs:
        for rec in seg.records:
            sid = rec.sid
            if rec.kind == KIND_RETAIN or sid == NO_STREAM:
                continue
            at = rec.soff
            nxt, last_g = head.get(sid, (0 if from_zero else at, -1))
            if at > nxt:
                lo = bisect.bisect_right(free, last_g)
                hi = bisect.bisect_left(free, rec.goff)
                take = free[lo : min(hi, lo + at - nxt)]
                for k, g in enumerate(take):
                    out[g] = (sid, nxt + k, names.get(sid, f"lost-stream-{sid}"))
                del free[lo : lo + len(take)]
            if rec.kind == KIND_TRUNCATE:
                # A truncation below the head says nothing of the messages before it: a message lost
                # just before it is still found from the stream's previous record.
                head[sid] = (at, rec.goff) if at > nxt else (nxt, last_g)
            elif rec.kind == KIND_DELETE:
                head[sid] = (at, rec.goff)
            else:
                head[sid] = (at + 1, rec.goff)
    # Stream ids that no surviving record holds still need a name in the log.
    known = set(head) | {sid for sid, _o, _n in out.values()}
    for sid in range(max(known, default=-1) + 1):
        if not free:  # nothing left to give a name to (a damaged id in the billions must not be walked up to)
            break
        if sid not in known:
            name = names.get(sid, f"lost-stream-{sid}")
            names[sid] = name
            out[free.pop(0)] = (sid, 0, name)
    for sid in known:
        names.setdefault(sid, f"lost-stream-{sid}")
    return out, names


def _lost_by_stream(lost: dict[int, tuple[int, int, str]]) -> dict[str, list[int]]:
    by: dict[str, list[int]] = {}
    for _g, (_sid, soff, name) in sorted(lost.items()):
        by.setdefault(name, []).append(soff)
    return by


def _rewrite(
    seg: _Seg,
    gaps: list[tuple[int, int]],
    lost: dict[int, tuple[int, int, str]],
    names: dict[int, str],
    store_id: bytes,
    io: FileIO,
    report: RepairReport,
) -> None:
    """Write the segment anew: kept records and LOST records in global order, each stream named first."""
    items: list[tuple[int, bytes | None, Record | None]] = [(r.goff, None, r) for r in seg.records]
    for g, n in gaps:
        items.extend((x, None, None) for x in range(g, g + n))
    items.sort(key=lambda t: t[0])
    first = min([seg.first, *(t[0] for t in items)]) if items else seg.first
    named: set[int] = set()
    parts: list[bytes] = []
    for goff, _unused, rec in items:
        if rec is None:
            sid, soff, name = lost.get(goff, (NO_STREAM, 0, ""))
            nameb = name.encode() if sid != NO_STREAM and sid not in named else b""
            if sid != NO_STREAM:
                named.add(sid)
            parts.append(frame(sid, soff, goff, FLAG_TX_END | (FLAG_NAMED if nameb else 0), nameb, b"", KIND_LOST))
            continue
        raw = seg.data[rec.position : rec.position + rec.length]
        if rec.sid != NO_STREAM and rec.sid not in named and rec.name is None:
            name = names.get(rec.sid, f"lost-stream-{rec.sid}")
            payload = raw[rec.payload_start - rec.position : rec.length - 8]
            raw = frame(rec.sid, rec.soff, rec.goff, rec.flags | FLAG_NAMED, name.encode(), payload, rec.kind)
        if rec.sid != NO_STREAM:
            named.add(rec.sid)
        parts.append(raw)
    body = b"".join(parts)
    assert all(len(p) >= RECORD_OVERHEAD for p in parts)
    path = os.path.join(os.path.dirname(seg.path), layout.segment_name(first))
    if report.dry_run:
        return
    size = HEADER_SIZE + len(body)
    tmp = path + layout.REPAIR
    fd = io.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        created = time.time_ns()
        with contextlib.suppress(FormatError):  # keep the creation time, which age retention goes by
            created = SegmentHeader.decode(seg.data[:HEADER_SIZE]).created
        io.pwrite(fd, SegmentHeader(store_id, first, size, created).encode() + body, 0)
        io.fsync(fd)
    finally:
        io.close(fd)
    io.rename(tmp, path)
    io.fsync_dir(os.path.dirname(path))  # the new segment is in place before the old name goes
    if path != seg.path and io.exists(seg.path):
        io.unlink(seg.path)  # its bytes are all in lost+found or in the new file


class _LostFound:
    """Repair's use of ``lost+found/``: each save or move is also an action of the report, and a dry run
    writes nothing."""

    def __init__(self, path: str, io: FileIO, report: RepairReport) -> None:
        self.report = report
        self.lf = LostFound(io, path, REPAIR)
        self.moved: set[str] = set()  # files moved here (or, in a dry run, that would be)

    def save(self, data: bytes, source: str, position: int, reason: str) -> None:
        """Copy ``data`` into lost+found with a manifest (only the manifest when there are no bytes left)."""
        self.report.actions.append(f"{source}@{position}: save {len(data):,} bytes to lost+found ({reason})")
        self.report.bytes_moved += len(data)
        if self.report.dry_run:
            return
        self.report.lost_found += self.lf.save(data, source, position, reason)

    def move(self, source: str, reason: str) -> None:
        self.report.actions.append(f"{source}: move to lost+found ({reason})")
        self.moved.add(source)
        if self.report.dry_run:
            return
        self.report.bytes_moved += os.path.getsize(source) if os.path.isfile(source) else 0
        self.report.lost_found += self.lf.move(source, reason)
