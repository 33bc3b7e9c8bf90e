"""A store directory's log as raw records, for ``logstore migrate`` (:class:`logstore.migration.Source`).

:class:`EmbeddedSource` walks the segments of an open store (read-only is enough) record by record
and hands out every record with its kind, stream, offsets, transaction-end flag and the envelope's
bytes exactly as the segment holds them (checksums are checked, envelopes are not decoded).
Global offsets below the log start (retention) are holes. The walk sees the log as published when
it starts; a store that another process compacts meanwhile raises :class:`~logstore.CorruptionError`
rather than hand out a replaced segment's bytes (migrate a store nothing writes to).
"""

from __future__ import annotations

from collections.abc import Iterator

from logstore.embedded.record import (
    FLAG_TX_END,
    KIND_DELETE,
    KIND_LOST,
    KIND_MESSAGE,
    KIND_REMOVED,
    KIND_RETAIN,
    KIND_TRUNCATE,
    NO_STREAM,
)
from logstore.embedded.store import Store, log_of
from logstore.embedded.walk import Damage, walk
from logstore.errors import CorruptionError
from logstore.index.catalog import FLAG_DELETED
from logstore.migration import RawRecord, StreamState
from logstore.results import SubscriptionInfo

_KINDS = {
    KIND_MESSAGE: "message",
    KIND_TRUNCATE: "truncate",
    KIND_DELETE: "delete",
    KIND_REMOVED: "removed",
    KIND_LOST: "lost",
    KIND_RETAIN: "retain",
}


class EmbeddedSource:
    """The records and streams of the store directory ``store`` (open; closing it is the caller's)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.where = store.path

    @property
    def identity(self) -> str:
        return "directory " + log_of(self.store).store_id.hex()

    @property
    def global_head(self) -> int:
        return self.store.global_head

    @property
    def log_start(self) -> int:
        return self.store.log_start

    def holes(self) -> list[tuple[int, int]]:
        """The global offsets without a record: those below the log start."""
        start = self.store.log_start
        return [(0, start)] if start else []

    def subscriptions(self) -> list[SubscriptionInfo]:
        return self.store.subscriptions()

    def streams(self) -> list[StreamState]:
        """Every stream the catalog knows, in stream-id order (the order of first commit)."""
        store = self.store
        lg = log_of(store)
        cat = lg.catalog
        out: list[StreamState] = []
        for sid in range(len(cat)):
            name = cat.names[sid]
            info = store.stream_info(name)
            assert info is not None
            runs = lg.runs.runs_of(sid)
            first_goff = runs[0][1] if runs and runs[0][0] == 0 else None
            deleted = bool(cat.flags[sid] & FLAG_DELETED)
            out.append(StreamState(name, info.first, info.head, deleted, first_goff))
        return out

    def records(self, start: int, end: int) -> Iterator[RawRecord]:
        """Every record at global offsets ``start`` .. ``end - 1`` (those below the log start are holes)."""
        lg = log_of(self.store)
        names = list(lg.catalog.names[: len(lg.catalog)])
        goff = max(start, lg.log_start)
        while goff < end:
            try:
                seg = lg.segment_for(goff)
            except KeyError:
                raise CorruptionError(lg.seg_dir, 0, f"no segment holds global offset {goff}") from None
            stop = min(end, seg.first + seg.count)
            if stop <= goff:
                raise CorruptionError(seg.path, seg.end, f"global offset {goff} is past the segment's records")
            buf = seg.view
            for rec in walk(buf, seg.positions.position(goff), seg.size, fd=seg.fd):
                if isinstance(rec, Damage):
                    raise CorruptionError(seg.path, rec.position, f"global offset {goff}: {rec.what}")
                if rec.goff != goff:
                    what = f"record has global offset {rec.goff} where global offset {goff} belongs"
                    raise CorruptionError(seg.path, rec.position, what)
                kind = rec.kind
                sid = rec.sid
                name = None if sid == NO_STREAM else (names[sid] if sid < len(names) else rec.name)
                payload = None
                if kind == KIND_MESSAGE:
                    payload = bytes(buf[rec.payload_start : rec.position + rec.length - 8])
                offset = None if kind == KIND_LOST and rec.sid == NO_STREAM else rec.soff
                yield RawRecord(goff, _KINDS[kind], name, offset, payload, bool(rec.flags & FLAG_TX_END))
                goff += 1
                if goff >= stop:
                    break
            else:
                raise CorruptionError(seg.path, seg.end, f"global offset {goff}: the segment's records end before it")
