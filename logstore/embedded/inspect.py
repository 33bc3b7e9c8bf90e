"""Read-only views of an open store for tools: every record in global order, and store statistics.

Nothing here writes a file or changes the store's state; the functions
work on a store opened with ``readonly=True`` beside a live writer (they see
that store's snapshot) and on a writable store in use (they see what was
published when the walk started).

- :func:`iter_records` walks the log record by record, control records and
  REMOVED/LOST records included, and says for each message whether a reader
  would return it: a message is readable unless its stream offset is below
  the stream's first retained offset (truncation, deletion) or its global
  offset is below the log start (retention).
- :func:`stream_start` maps a stream offset to the global offset to walk
  from to see that stream from there on.
- :func:`store_stats` counts segments, streams, records by kind, readable
  messages and holes, and reports the checkpoint and the last recovery.

Damage raises :class:`~logstore.CorruptionError` with the segment file and
byte position, as readers do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from logstore.embedded.record import KIND_LOST, KIND_MESSAGE, KIND_NAMES, NO_STREAM
from logstore.embedded.segment import Segment
from logstore.embedded.store import Store, log_of, own_slot_of, processes_of
from logstore.embedded.walk import Damage, walk
from logstore.envelope import decode
from logstore.errors import CorruptionError, StoreClosedError
from logstore.index.catalog import FLAG_DELETED, FLAG_LARGE
from logstore.index.header import HEADER_SIZE
from logstore.results import RecordInfo

_CHUNK = 512
"""Records read from a segment in one go (the segment may be replaced between two chunks)."""


def iter_records(
    store: Store, start: int = 0, stream: str | None = None, *, envelopes: bool = True
) -> Iterator[RecordInfo]:
    """Yield every record from global offset ``start`` on, in global order.

    With ``stream``, only the records of that stream (its messages, REMOVED
    and LOST records, and its TRUNCATE and DELETE records); ``ValueError`` if
    the store has never named it. ``envelopes=False`` skips decoding the
    envelopes (checksums are still checked). Records below the log start are
    skipped, as readers skip them. The walk ends at the global head published
    when it starts.
    """
    lg = log_of(store)
    if store.closed:
        raise StoreClosedError(f"{store.path}: the store is closed")
    cat = lg.catalog
    n = len(cat)
    names = list(cat.names[:n])
    firsts: list[int] = cat.first[:n].tolist()
    want_sid = -1
    if stream is not None:
        sid = cat.ids.get(stream)
        if sid is None:
            raise ValueError(f"no stream named {stream!r}")
        want_sid = sid
        runs = lg.runs.runs_of(sid)
        if runs:  # nothing of the stream comes before its first run
            start = max(start, runs[0][1])
    end = lg.visible_end
    log_start = lg.log_start
    goff = max(start, log_start)
    while goff < end:
        try:
            seg = lg.segment_for(goff)
        except (KeyError, IndexError):
            if store.closed:
                raise StoreClosedError(f"{store.path}: the store was closed during the walk") from None
            if goff < lg.log_start:  # retention dropped the segment meanwhile: go on where the log starts
                goff = lg.log_start
                continue
            raise CorruptionError(lg.seg_dir, 0, f"no segment holds global offset {goff}") from None
        stop = min(end, seg.first + seg.count, goff + _CHUNK)
        if stop <= goff:
            raise CorruptionError(seg.path, seg.end, f"global offset {goff} is past the segment's records")
        try:
            chunk, damage = _read_chunk(seg, goff, stop, want_sid, envelopes, names, firsts, log_start)
        except _Retired:
            if store.closed:
                raise StoreClosedError(f"{store.path}: the store was closed during the walk") from None
            continue  # compaction or retention replaced the segment: look it up again
        yield from chunk  # what precedes damage is handed out before the damage is raised
        if damage is not None:
            raise damage
        goff = stop


class _Retired(Exception):
    """The segment was closed while it was read."""


# Long on purpose: one pass over a segment's records, each kind handled inline.
def _read_chunk(  # noqa: PLR0912
    seg: Segment,
    goff: int,
    stop: int,
    want_sid: int,
    envelopes: bool,
    names: list[str],
    firsts: list[int],
    log_start: int,
) -> tuple[list[RecordInfo], CorruptionError | None]:
    """The records of global offsets ``goff`` .. ``stop - 1``, up to any damage, and that damage.

    The walker goes through them from the position the index gives for ``goff``.
    """
    out: list[RecordInfo] = []
    try:
        position = seg.positions.position(goff)
        buf = seg.view
        for rec in walk(buf, position, seg.size, fd=seg.fd):
            if isinstance(rec, Damage):
                if seg.closed:
                    raise _Retired from None
                return out, CorruptionError(seg.path, rec.position, f"global offset {goff}: {rec.what}")
            position = rec.position
            if rec.goff != goff:
                what = f"global offset {goff}: record has global offset {rec.goff}, the index says {goff}"
                return out, CorruptionError(seg.path, position, what)
            sid = rec.sid
            if want_sid < 0 or sid == want_sid:
                kind = rec.kind
                if sid == NO_STREAM:
                    name = None
                    offset: int | None = rec.soff if kind != KIND_LOST else None
                else:
                    name = names[sid] if sid < len(names) and names[sid] else rec.name
                    offset = rec.soff
                env = None
                readable = False
                if kind == KIND_MESSAGE:
                    readable = goff >= log_start and sid < len(firsts) and rec.soff >= firsts[sid]
                    if envelopes:
                        payload = buf[rec.payload_start : position + rec.length - 8]
                        try:
                            env = decode(payload)
                        except (ValueError, TypeError) as exc:
                            if seg.closed:
                                raise _Retired from None
                            what = f"global offset {goff}: envelope does not decode: {exc}"
                            return out, CorruptionError(seg.path, position, what)
                nbytes = rec.position + rec.length - 8 - rec.payload_start
                out.append(RecordInfo(goff, KIND_NAMES[kind], name, offset, env, readable, nbytes))
            position += rec.length
            goff += 1
            if goff >= stop:
                return out, None
    except (ValueError, KeyError, IndexError):  # a released mapping, or an index that lost the offset
        if seg.closed:
            raise _Retired from None
        raise
    # The walk ended at a record length of 0 (only zeros after it) where the index has a record.
    if seg.closed:
        raise _Retired from None
    what = f"global offset {goff}: no record here (record length 0 or end of segment), the index has one"
    return out, CorruptionError(seg.path, position, what)


def store_stats(store: Store, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Counts and facts about ``store``, as plain JSON-ready values.

    Walks every record from the log start (checksums are checked, envelopes
    are not decoded); ``progress(n)``, when given, is called now and then
    with the number of records walked since its last call. Keys:

    - ``path``, ``global_head`` (next global offset), ``log_start``;
    - ``segments``: ``{file, first, records, bytes, capacity}`` per segment
      (``bytes``: up to the end of its last record, header included);
    - ``streams``: ``total`` ever named, ``live`` (listed by
      ``stream_names``), ``deleted``, ``truncated`` (not deleted, with
      removed offsets), ``with_removed`` (truncated or deleted), ``large``
      (with a run file of their own);
    - ``messages``: ``readable``;
    - ``records``: count by kind name, and ``total``;
    - ``holes``: ``awaiting_compaction`` (messages removed by truncation or
      deletion whose bytes are still in the log), ``reclaimable_bytes``
      (their envelope bytes, which compaction frees), ``removed`` and ``lost``
      (REMOVED and LOST records);
    - ``log_bytes`` (record bytes), ``disk_bytes`` (segment file bytes);
    - ``checkpoint``: ``generation``, ``next_global_offset``, ``clean`` (the
      ``CHECKPOINT`` file said the store was closed cleanly when it was opened);
    - ``recovery``: the last :class:`~logstore.RecoveryReport` as a dict,
      with its ``summary``;
    - ``processes``: the processes that have the store open (from ``CONTROL``'s
      slot table, this one included), each ``{slot, pid, mode, durability,
      opened_ns, this}``: ``mode`` ``"writable"``, ``"read-only"``, ``"repair"``
      or ``"opening"``, ``durability`` a writable opener's mode (else ``None``),
      ``opened_ns`` when it opened the store (ns since the epoch), ``this``
      whether it is this opener. Empty when this read-only opener could not
      join ``CONTROL`` (a read-only file system).
    """
    lg = log_of(store)
    segments = list(lg.segments)
    cat = lg.catalog
    n = len(cat)
    head = cat.head[:n]
    first = cat.first[:n]
    flags = cat.flags[:n]
    deleted = (flags & FLAG_DELETED) != 0
    removed_some = first > 0
    kinds = dict.fromkeys(KIND_NAMES.values(), 0)
    readable = awaiting = reclaimable = 0
    step = 0
    for rec in iter_records(store, envelopes=False):
        kinds[rec.kind] += 1
        if rec.kind == "message":
            if rec.readable:
                readable += 1
            elif rec.stream is not None:
                awaiting += 1
                reclaimable += rec.payload_bytes
        step += 1
        if progress is not None and step == 4096:
            progress(step)
            step = 0
    if progress is not None and step:
        progress(step)
    processes = processes_of(store)
    own = own_slot_of(store)
    report = store.recovery_report
    recovery = dataclasses.asdict(report)
    recovery["clean"] = report.clean
    recovery["summary"] = report.summary()
    return {
        "path": store.path,
        "global_head": int(lg.visible_end),
        "log_start": int(lg.log_start),
        "segments": [
            {
                "file": os.path.basename(seg.path),
                "first": seg.first,
                "records": seg.count,
                "bytes": seg.end,
                "capacity": seg.capacity,
            }
            for seg in segments
        ],
        "streams": {
            "total": n,
            "live": int(np.count_nonzero((head > 0) & ~deleted)),
            "deleted": int(np.count_nonzero(deleted)),
            "truncated": int(np.count_nonzero(removed_some & ~deleted)),
            "with_removed": int(np.count_nonzero(removed_some | deleted)),
            "large": int(np.count_nonzero(flags & FLAG_LARGE)),
        },
        "messages": {"readable": readable},
        "records": {**kinds, "total": sum(kinds.values())},
        "holes": {
            "awaiting_compaction": awaiting,
            "reclaimable_bytes": reclaimable,
            "removed": kinds["removed"],
            "lost": kinds["lost"],
        },
        "log_bytes": sum(max(0, seg.end - HEADER_SIZE) for seg in segments),
        "disk_bytes": sum(seg.size for seg in segments),
        "checkpoint": {
            "generation": int(lg.generation),
            "next_global_offset": int(lg.next_goff),
            "clean": report.checkpoint == "clean",
        },
        "recovery": recovery,
        "processes": [
            {
                "slot": p.slot,
                "pid": p.pid,
                "mode": p.mode,
                "durability": p.durability,
                "opened_ns": p.opened_ns,
                "this": p.slot == own,
            }
            for p in processes
        ],
    }


def stream_start(store: Store, stream: str, offset: int) -> int:
    """The global offset to walk from to see ``stream``'s records from stream offset ``offset`` on.

    That is the global offset of the record at ``offset`` (messages,
    REMOVED and LOST records hold stream offsets), or, for an ``offset`` at
    or past the stream's head, the one after its last such record (so that
    control records written after it are seen). ``ValueError`` if the store
    has never named the stream.
    """
    lg = log_of(store)
    cat = lg.catalog
    sid = cat.ids.get(stream)
    if sid is None:
        raise ValueError(f"no stream named {stream!r}")
    head = int(cat.head[sid])
    if head == 0:
        return 0
    soff = min(offset, head - 1)
    try:
        run_off, run_goff, _next = lg.runs.find(sid, soff)
    except KeyError:  # below the stream's first run (a log that retention shortened)
        runs = lg.runs.runs_of(sid)
        return runs[0][1] if runs else 0
    goff = run_goff + (soff - run_off)
    return goff + 1 if offset >= head else goff
