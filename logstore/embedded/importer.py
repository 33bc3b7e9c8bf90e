"""Writing raw records into a store directory at their exact offsets, for ``logstore migrate``.

:class:`EmbeddedDestination` is the :class:`logstore.migration.Destination` of a directory. It
writes through the store's own writer, so every record is framed, checksummed, indexed and made
durable as any commit is; what it adds is exactness:

- a message is staged with its envelope's bytes as the source holds them (never decoded and
  encoded again) at its stream offset, and the writer's offset check at commit confirms that the
  stream's head is that offset;
- a transaction of the source is one transaction here (a source that records no transactions,
  PostgreSQL, gives one transaction per message); truncations and deletions are transactions of
  their own, as always;
- a message that the source no longer holds (a REMOVED record, a PostgreSQL row that compaction
  deleted) is written as a placeholder message at its stream offset. The truncation or deletion
  that removed it follows later in the log, so it is unreadable once that record is copied, and
  :meth:`EmbeddedDestination.finish` compacts the copy, which turns every placeholder into a
  REMOVED record: the same global offset, stream and stream offset as in the source, no envelope.
  (The mark, below, says whether a placeholder was written. A copy without any is not compacted,
  so removed messages whose envelopes the source still held keep them in the copy too);
- after every write the store's global head must be the next record's global offset. A log a
  directory cannot hold (a hole, a LOST or RETAIN record: only retention and repair make them)
  raises :class:`~logstore.migration.MigrationError` naming the global offset, before anything of
  that batch's transaction is written.

The destination is marked while the copy is unfinished: the file ``MIGRATING`` in the store
directory (JSON: the source's identity and where it was) is written, atomically, right after the
empty store is created, and removed once the copy has been checked. ``logstore verify`` notes it.
A rerun resumes a marked copy of the same source at the store's global head (whole transactions:
recovery cuts a transaction that a kill interrupted), and refuses any other store that holds a
stream or a record.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from logstore.embedded import layout
from logstore.embedded.export import EmbeddedSource
from logstore.embedded.fileio import default_io
from logstore.embedded.msgids import message_id_at
from logstore.embedded.positions import SubscriptionFile
from logstore.embedded.store import Store, log_of
from logstore.embedded.store import open as open_store
from logstore.envelope import Envelope, encode
from logstore.migration import MigrationError, NotEmptyError, RawRecord, Source
from logstore.results import SubscriptionInfo
from logstore.subscriptions import Definition
from logstore.tx import Committer, Tx

PLACEHOLDER_TYPE = "logstore.migrate.removed"
"""The type of a placeholder message (compaction erases it at the end of the copy)."""

_ALLOWED_BEFORE_STORE = {layout.LOCK, layout.CONTROL, layout.LOST_FOUND}


def marker_path(path: str) -> str:
    return os.path.join(path, layout.MIGRATING)


def read_marker(path: str) -> dict[str, object] | None:
    """The mark of an unfinished copy into the directory ``path`` (``None``: not marked)."""
    try:
        with open(marker_path(path), "rb") as f:
            value = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MigrationError(f"{marker_path(path)}: unreadable mark of an unfinished copy: {exc}") from None
    if not isinstance(value, dict):
        raise MigrationError(f"{marker_path(path)}: not a mark of an unfinished copy")
    return value


class EmbeddedDestination:
    """A store directory that ``logstore migrate`` copies into; ``segment_size`` is the new store's."""

    def __init__(self, path: str, segment_size: int | None = None) -> None:
        self.where = path
        self.path = path
        self._segment_size = segment_size
        self.store: Store | None = None
        self._tx: tuple[Tx, Committer] | None = None
        self._tx_goff = 0
        self._mark: dict[str, object] = {}

    # -- start -----------------------------------------------------------------------

    def start(self, source: Source) -> int:
        path = self.path
        marker = None
        if os.path.lexists(path):
            if not os.path.isdir(path):
                raise NotEmptyError(f"{path}: not a directory")
            entries = set(os.listdir(path))
            is_store = layout.SEGMENTS in entries or layout.CHECKPOINT in entries
            if not is_store and entries - _ALLOWED_BEFORE_STORE:
                raise NotEmptyError(f"{path}: the directory is not empty and holds no store: {sorted(entries)[:5]}")
            marker = read_marker(path) if is_store else None
            if marker is not None and marker.get("source") != source.identity:
                raise NotEmptyError(
                    f"{path}: holds an unfinished copy of another store"
                    f" ({marker.get('where')}, {marker.get('source')}); not of {source.where}"
                )
        holes = source.holes()
        if holes:
            a, b = holes[0]
            raise MigrationError(
                f"{source.where}: global offsets {a} .. {b - 1} hold no record, and no compacted message accounts"
                " for them (offsets below a directory's log start, its LOST or RETAIN records): a store directory"
                " has a record at every global offset, so a copy into one could not keep them"
            )
        options: dict[str, object] = {"durability": "batch", "fsync_interval": 0.5}
        if self._segment_size is not None:
            options["segment_size"] = self._segment_size
        self.store = store = open_store(path, **options)  # type: ignore[arg-type]
        if marker is None:
            nsubs = len(store.subscriptions())
            if store.global_head or len(log_of(store).catalog) or nsubs:
                subs = f", {nsubs} subscriptions" if nsubs else ""
                raise NotEmptyError(
                    f"{path}: not empty ({store.global_head} global offsets, {len(log_of(store).catalog)} streams"
                    f"{subs}); migrate copies into an empty store, or resumes its own unfinished copy"
                )
            marker = {"source": source.identity, "where": source.where, "started_at": time.time()}
            self._write_mark(marker)
        self._mark = marker
        self._tx_goff = store.global_head
        return store.global_head

    # -- writing ---------------------------------------------------------------------

    def _open(self) -> Store:
        if self.store is None:
            raise MigrationError(f"{self.path}: not started")
        return self.store

    # Long on purpose: one pass over the batch, each kind of record handled inline.
    def write(self, records: Sequence[RawRecord], end: int) -> None:  # noqa: PLR0912
        store = self._open()
        head = store.global_head
        staged = 0  # messages staged in the open transaction
        for rec in records:
            if rec.goff != head + staged:
                raise self._hole(head + staged, rec.goff)
            if rec.kind in ("message", "removed"):
                assert rec.stream is not None and rec.offset is not None
                if self._tx is None:
                    self._tx = store.begin_tx()
                if rec.kind == "removed" and not self._mark.get("placeholders"):
                    self._write_mark({**self._mark, "placeholders": True})  # finish() must compact
                payload = rec.payload if rec.kind == "message" else _placeholder(rec)
                assert payload is not None
                if len(payload) > store.max_envelope_size:
                    raise MigrationError(
                        f"global offset {rec.goff}: an envelope of {len(payload)} bytes; this store takes at most"
                        f" {store.max_envelope_size} (a larger segment_size makes room)"
                    )
                mid = message_id_at(payload, 0, len(payload))
                # Every payload is an envelope (checked by the export); its id goes to the duplicate check.
                mids = [mid.decode("utf-8", "replace") if mid is not None else f"goff-{rec.goff}"]
                self._tx[0].stage(rec.stream, rec.stream.encode("utf-8"), rec.offset, [payload], mids)
                staged += 1
                if rec.tx_end is not False:
                    head = self._commit(head, staged)
                    staged = 0
                continue
            if staged:
                raise MigrationError(f"global offset {rec.goff}: a {rec.kind} record inside a transaction")
            if rec.kind == "truncate":
                assert rec.stream is not None and rec.offset is not None
                store.truncate_stream(rec.stream, rec.offset)
            elif rec.kind == "delete":
                assert rec.stream is not None
                info = store.stream_info(rec.stream)
                if info is None or info.head != rec.offset:
                    raise MigrationError(
                        f"global offset {rec.goff}: a deletion of {rec.stream!r} at head {rec.offset},"
                        f" where the copy's head is {None if info is None else info.head}"
                    )
                store.delete_stream(rec.stream)
            else:
                raise MigrationError(
                    f"global offset {rec.goff}: a {rec.kind} record (of {rec.stream!r}); only retention and repair"
                    " write one, and a copy into a new store directory cannot: migrate into PostgreSQL, which"
                    " keeps it as a hole"
                )
            if store.global_head != head + 1:
                raise MigrationError(
                    f"global offset {rec.goff}: the {rec.kind} of {rec.stream!r} (offset {rec.offset}) wrote"
                    f" {store.global_head - head} records (a removal that was already in place?)"
                )
            head += 1
        if staged:
            raise MigrationError(f"global offset {head + staged}: the batch ends inside a transaction")
        if end != head:
            raise self._hole(head, end)

    def _write_mark(self, mark: dict[str, object]) -> None:
        default_io().write_file_atomic(marker_path(self.path), json.dumps(mark).encode("utf-8"))
        self._mark = mark

    def _commit(self, head: int, staged: int) -> int:
        assert self._tx is not None
        _tx, committer = self._tx
        self._tx = None
        written = committer.commit()
        if written != range(head, head + staged):
            raise MigrationError(
                f"{self.path}: a transaction of {staged} records went to global offsets {written.start} .."
                f" {written.stop - 1}, not from {head}: another process writes to the destination"
            )
        return head + staged

    def _hole(self, at: int, until: int) -> MigrationError:
        return MigrationError(
            f"global offsets {at} .. {until - 1} hold no record in the source, and no compacted message accounts"
            " for them: a store directory has a record at every global offset, so the copy cannot keep them"
        )

    # -- the end ---------------------------------------------------------------------

    def finish(self) -> None:
        """Compact, if a placeholder was written (by this run or an earlier one): each becomes a REMOVED record."""
        store = self._open()
        if self._mark.get("placeholders"):
            store.compact()

    def put_subscriptions(self, subscriptions: Sequence[SubscriptionInfo]) -> None:
        """Write the source's subscriptions into the store's ``SUBSCRIPTIONS`` file: each member claimed,
        its position saved as the source has it, released; one of an earlier run that differs is deleted."""
        store = self._open()
        wanted = {info.name: info for info in subscriptions}
        for info in store.subscriptions():
            if info.name not in wanted or info[:4] != wanted[info.name][:4]:
                store.delete_subscription(info.name)
        # A SUBSCRIPTIONS file of its own over the store's: its claims exclude the store's as another
        # process's would. Each position is synced as it is saved; the copy's log is made durable before the
        # mark is removed (unmark closes the store first), and a copy cut short writes them again.
        subs = SubscriptionFile(default_io(), self.path, log_of(store).store_id, "fsync", 0.0, lambda _position: None)
        for info in subscriptions:
            definition = Definition(info.name, info.category, info.types, info.size)
            for member, position in enumerate(info.positions):
                claim = subs.claim(definition, member)
                try:
                    if claim.position != position:
                        subs.save(claim, position)
                finally:
                    subs.release(claim)

    def as_source(self) -> EmbeddedSource:
        return EmbeddedSource(self._open())

    def unmark(self) -> None:
        """Close the store (a clean, durable checkpoint), then remove the mark and sync the directory."""
        self.close()
        io = default_io()
        io.unlink(marker_path(self.path))
        io.fsync_dir(self.path)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def _placeholder(rec: RawRecord) -> bytes:
    """The envelope of a placeholder: it names where the removed message was; compaction erases it."""
    return encode(Envelope.new(PLACEHOLDER_TYPE, {"global_offset": rec.goff}), "placeholder")
