"""The writer: leader-based group commit under Ax's transaction interface (:mod:`logstore.tx`).

Callers build a :class:`~logstore.tx.Tx` in their own thread
(``append_messages`` checks the offset and encodes the envelopes there).
``Committer.commit()`` queues the transaction. If no thread holds the *writer role*, the committing thread takes
it and works the queue itself: it takes every transaction waiting, checks each
one's offsets against the stream heads (an append at ``logstore.ANY`` is given
the head there, see ``_assign_any``), assigns global offsets, frames the
records, writes the whole group with one ``pwrite`` and makes it durable with
one ``fdatasync`` (group commit), then publishes it to readers, wakes blocked
``next()`` calls and releases the committers. Commits that arrive meanwhile
wait; the leader then hands the role to the oldest of them, whose thread works
everything queued by then. A leader thus writes its own group only (plus, when
they fall due, retention after a roll and the periodic checkpoint, before its
commit returns), and a lone committer never waits for another thread to be
scheduled.

The writer thread takes the role for what no commit does: the timed fsync of
``durability="batch"``, the final sync and clean checkpoint at ``close()``,
maintenance that falls due while no commit comes, and the transactions of
callers interrupted (``KeyboardInterrupt``) while they waited or led: their
transactions are written in their turn, and an interrupted leader's role goes
to the writer thread with whatever it had taken and not yet written.

Lock rules: ``_cv`` guards ``_queue``, ``_busy`` (the role is held),
``_holder`` (the item whose thread holds or was handed the role),
``_thread_turn`` (the role is handed to the writer thread), ``_timing``,
``_stopping`` and ``failed``. Only the holder of the writer role touches the
log's files, the active segment, the indexes and ``_batch``, and writes the
published state (:class:`~logstore.embedded.published.Published`: the heads, then
``visible_end``; ``removals`` after a removal's bounds), whose ``wake()`` it
calls once a group's committers are released.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import xxhash

from logstore.embedded.record import (
    CHECKSUM,
    FLAG_NAMED,
    FLAG_SYNCED,
    FLAG_TX_END,
    KIND_DELETE,
    KIND_MESSAGE,
    RECORD_HEADER,
    RECORD_OVERHEAD,
    Record,
    frame,
)
from logstore.embedded.retention import Retention
from logstore.errors import (
    DuplicateMessageError,
    OffsetConflictError,
    OutOfSpaceError,
    StoreClosedError,
    StoreFailedError,
)
from logstore.index.catalog import FLAG_DELETED
from logstore.index.header import HEADER_SIZE
from logstore.tx import ANY_OFFSET, Append, Tx

if TYPE_CHECKING:
    from logstore.embedded.derived import DerivedIndex
    from logstore.embedded.log import Log
    from logstore.embedded.published import Published
    from logstore.embedded.segment import Segment

logger = logging.getLogger("logstore")

# The writer thread looks at its conditions at least this often (seconds), notified or not: a
# notification lost to an interrupt in the notifying thread then costs a delay, not a hang.
_IDLE_CHECK = 1.0

# A control operation for the writer thread: (record kind, stream name, encoded name, offset), or a callable.
Control = tuple[int, str, bytes, int]


class Sharing(Protocol):
    """How a writer takes turns with the writers of other processes (:class:`logstore.embedded.follow.Follower`)."""

    def adopt(self) -> None: ...
    def begin_turn(self) -> bool: ...
    def end_turn(self, finished: bool, after: Callable[[], None]) -> None: ...
    def flush(self, goal: int) -> None: ...
    def writer_failed(self) -> None: ...
    def others_writing(self) -> bool: ...
    def mark_clean(self, clean: bool) -> None: ...


class _Pending:
    __slots__ = ("call", "control", "done", "error", "gone", "lead", "result", "tx")

    def __init__(self, tx: Tx | None, control: Control | None = None, call: Callable[[], object] | None = None) -> None:
        self.tx = tx
        self.control = control
        self.call = call
        # Released once the item is done (or failed), or to hand the writer role to its thread (``lead``).
        self.done = threading.Lock()
        self.done.acquire()
        self.lead = False
        self.gone = False  # its caller stopped waiting (interrupted): never hand it the role
        self.result: object = None
        self.error: BaseException | None = None


role = threading.local()
"""``role.writer`` is true in the thread doing the writer's work at the moment (tests look at it)."""


class Writer:
    """The writer role, its queue and its thread; see the module docstring."""

    def __init__(
        self,
        log_: Log,
        durability: str,
        fsync_interval: float,
        checkpoint_bytes: int,
        retention_age: float | None = None,
        retention_bytes: int | None = None,
        sharing: Sharing | None = None,
        alone: threading.Lock | None = None,
    ) -> None:
        self.log = log_
        # Other processes may write the store: each turn of the writer role holds the write lock (``_turn``).
        self.sharing = sharing
        # A store kept alone (logstore/embedded/alone.py): each turn holds only this lock, its follower's, so
        # that no catch-up of this process's readers runs while the turn moves the log (``None`` otherwise).
        self._alone = alone
        self._share_next: tuple[Sharing, Callable[[], None]] | None = None  # share() asked in this turn
        # Where the writer publishes heads, limits and removals, and wakes readers (``log_.published``).
        self.published: Published = log_.published
        self.durability = durability
        self.fsync_interval = fsync_interval
        self.checkpoint_bytes = checkpoint_bytes
        self.retention_age = retention_age
        self.retention_bytes = retention_bytes
        self._retention_due = False  # set at each roll; the store applies retention once at open
        # Retention writes its transaction through the framing of control records, and syncs it.
        self._retention = Retention(log_, self.published, self._write_records, self.sync)
        # _cv's lock, taken as itself where no wait follows (a commit's queueing and hand-over): the
        # condition's own ``with`` is two more Python calls per commit. Its notify works either way.
        self._cv_lock = threading.Lock()
        self._cv = threading.Condition(self._cv_lock)
        self._queue: list[_Pending] = []
        self._busy = False  # some thread holds the writer role
        # The item whose caller's thread holds the role, or was handed it (None: the writer thread, or nobody).
        self._holder: _Pending | None = None
        # What the role's holder took from the queue and has not finished: finished items leave it, and
        # the role takes whatever is left back to the queue when it passes on.
        self._batch: list[_Pending] = []
        self._thread_turn = False  # the role was handed to the writer thread
        self._timing = False  # the writer thread waits for the next fsync of batch mode
        self._stopping = False
        self.failed: StoreFailedError | None = None
        self._dirty = False  # bytes written but not yet fsynced
        self._extra_pending: list[tuple[int, Record]] = []  # a transaction's records so far, for extra indexes
        # Beside other writer processes with durability="fsync", a turn writes its groups and publishes their
        # tail, and the sync comes after the write lock is released, under the flush lock (``_flush_turn``):
        # until then the groups' items, heads and end wait here.
        self._defer_sync = sharing is not None and durability == "fsync"
        self._unflushed: list[_Pending] = []
        self._unflushed_heads: dict[int, int] = {}
        self._unflushed_end: int | None = None
        self._abandon = False
        self._last_sync = time.monotonic()
        # (segment first global offset, byte position, next global offset) as of the last fsync:
        # everything before it survives a crash. Tests use it to cut the log like a crash would.
        self.synced = (log_.active.first, log_.active.end, log_.next_goff)
        self._thread = threading.Thread(target=self._run, name="logstore-writer", daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------

    def commit(self, tx: Tx) -> range:
        result = self._submit(_Pending(tx))
        assert isinstance(result, range)
        return result

    def control(self, kind: int, name: str, nameb: bytes, offset: int) -> range:
        """Write one control record (truncate or delete) as a transaction of its own.

        Returns the range of global offsets written: empty when there was
        nothing to do.
        """
        result = self._submit(_Pending(None, (kind, name, nameb, offset)))
        assert isinstance(result, range)
        return result

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` with the writer role, between two groups, and return its result."""
        return self._submit(_Pending(None, call=fn))

    def _submit(self, pending: _Pending) -> object:
        """Queue ``pending``; lead the group if no thread holds the writer role, else wait for the leader."""
        leading = False
        try:
            with self._cv_lock:
                if self.failed is not None:
                    raise self.failed
                if self._stopping:
                    raise StoreClosedError("the store is closed")
                self._queue.append(pending)
                if not self._busy:  # the role is free: take it, and the queue with it
                    self._busy = True
                    self._holder = pending
                    self._batch, self._queue = self._queue, []
                    leading = True
            if not leading:
                pending.done.acquire()  # released when the item is done, or to hand this thread the role
                if pending.lead:  # handed the role: take what is queued, this item first
                    with self._cv_lock:
                        pending.lead = False
                        self._batch, self._queue = self._queue, []
                    leading = True
            if leading:
                self._lead()
                pending.done.acquire()
        except BaseException:  # interrupted (KeyboardInterrupt) anywhere from here on
            self._stop_waiting(pending)
            raise
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _stop_waiting(self, pending: _Pending) -> None:
        """The caller of ``pending`` stopped waiting (an interrupt). Its item, if queued, stays queued
        and is written in its turn, but is never handed the writer role. If this thread holds the role
        (taken or handed to it, and not passed on yet), the role goes to the writer thread with what
        this thread took and had not finished, so that the role always has a holder at work."""
        with self._cv:
            pending.gone = True
            if self._holder is not pending:
                return
            self._holder = None
            if pending.lead:  # handed the role but not yet leading: the hand-over released it
                pending.lead = False
                pending.done.acquire(blocking=False)  # lock it again: it is done when it is written
            self._give_to_thread()

    def _give_to_thread(self) -> None:
        """Hand the writer role to the writer thread, with whatever was taken and not written put back
        at the front of the queue (under ``_cv``)."""
        if self._batch:
            self._queue[:0] = self._batch
            self._batch = []
        self._holder = None
        self._thread_turn = True
        self._cv.notify_all()

    def abandon(self) -> None:
        """Stop at once without syncing or checkpointing, as if the process died (for crash tests)."""
        with self._cv:
            self._abandon = True
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    def stop(self) -> None:
        """Finish queued commits, write a clean checkpoint and end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    # -- the writer role ---------------------------------------------------------------

    def share(self, sharing: Sharing, let_in: Callable[[], None]) -> None:
        """Stop working alone (a call in the writer role): when this turn ends, every later turn takes the
        write lock (``sharing``); then ``let_in`` (the dead-man switch goes shared, other openers come in).

        Not before the turn ends: the groups after this call in the same turn are written as a store alone
        writes them (synced and published in the turn), since this turn holds no write lock and has no end
        to flush deferred groups at. Everything written is then published and, with ``durability="fsync"``,
        synced, so the next holder of the write lock finds the tail, the durable bound and the turn count as
        this process left them, and this process's first turn skips its catch-up. A store that fails in the
        turn does not switch (the caller lets the others in as after a failure)."""
        self._share_next = (sharing, let_in)

    def _end_alone_turn(self) -> None:
        """End of a turn of a store alone: switch to taking turns if :meth:`share` asked for it in the turn."""
        pending, self._share_next = self._share_next, None
        if pending is None or self.failed is not None:
            return
        sharing, let_in = pending
        sharing.adopt()
        self.sharing = sharing
        self._alone = None
        self._defer_sync = self.durability == "fsync"
        let_in()

    def _lead(self) -> None:
        """This thread holds the writer role: work what it took from the queue (``_batch``), then pass
        the role on."""
        role.writer = True
        try:
            self._turn(self._batch, self._lead_turn)
        finally:
            role.writer = False
            self._pass_on()  # whatever happened, the role goes on

    def _lead_turn(self) -> None:
        self._work(self._batch)
        self._maintain()

    def _turn(self, batch: list[_Pending], body: Callable[[], None]) -> None:
        """Run ``body`` (the work of one turn of the writer role) holding the write lock when other processes
        may write: the turn begins caught up with their tail (``Sharing.begin_turn``) and ends with the
        intent cleared unless the store failed meanwhile. A turn that cannot begin fails the store, and
        ``batch`` with it (an interrupt goes on up instead, and the batch stays queued)."""
        sharing = self.sharing
        if sharing is None or self.failed is not None:
            alone = self._alone
            if alone is None:
                body()
            else:
                with alone:
                    try:
                        body()
                    finally:
                        self._end_alone_turn()
            return
        try:
            if sharing.begin_turn():
                self._dirty = True  # another process's commits below the tail are not synced yet
        except Exception as exc:  # noqa: BLE001 - every failure fails the store
            self._fail(exc, batch)
            return
        # An interrupt (KeyboardInterrupt) while waiting for the lock or catching up goes on up with nothing
        # written: the batch goes back to the queue (_pass_on) and the store stays usable.
        try:
            body()
        finally:
            try:
                sharing.end_turn(self.failed is None, self._flush_turn)  # the write lock goes at every turn's end
            except BaseException as exc:  # the write lock may still be held: the store fails (close releases it)
                self._fail(exc, [])
                if not isinstance(exc, Exception):
                    raise

    def _flush_turn(self) -> None:
        """After a turn's write lock is released: make its groups durable under the flush lock (one
        ``fdatasync`` shared with the other processes that wait for one), then show them to this process's
        readers and release their committers."""
        end = self._unflushed_end
        if end is None:
            return
        sharing = self.sharing
        assert sharing is not None
        try:
            sharing.flush(end)
        except BaseException as exc:  # every failure fails the store; an interrupt goes on up
            self._fail(exc, [])
            if not isinstance(exc, Exception):
                raise
            return
        self._dirty = False
        self._last_sync = time.monotonic()
        active = self.log.active
        self.synced = (active.first, active.end, self.log.next_goff)
        self._show_unflushed()

    def _settle(self) -> None:
        """Sync the turn's groups now, inside the write lock, and show them (before a removal, a call or
        maintenance, which go by the heads)."""
        if self._unflushed_end is not None:
            self.sync()
            self._show_unflushed()

    def _show_unflushed(self) -> None:
        """The deferred groups are durable: publish their heads and end to this process's readers, release
        their committers and wake every waiter."""
        end = self._unflushed_end
        if end is None:
            return
        self.log.streams.set_heads(self._unflushed_heads)
        self._unflushed_heads = {}
        pub = self.published
        pub.visible_end = max(pub.visible_end, end)
        self._unflushed_end = None
        items, self._unflushed = self._unflushed, []
        for p in items:
            with contextlib.suppress(RuntimeError):
                p.done.release()
        pub.wake()

    def _work(self, batch: list[_Pending]) -> None:
        """Process ``batch``; a failure fails the store. An interrupt (KeyboardInterrupt, SystemExit)
        fails the store too, since the group may be half written, and then goes on to the caller."""
        if self.failed is None:
            try:
                self._process_all(batch)
            except BaseException as exc:  # every failure fails the store; an interrupt goes on up
                self._fail(exc, batch)
                if not isinstance(exc, Exception):
                    raise
        else:
            self._fail_batch(batch)
            batch.clear()

    def _maintenance_due(self) -> bool:
        return self.failed is None and (self._retention_due or self._checkpoint_due())

    def _checkpoint_due(self) -> bool:
        """A checkpoint is due every ``checkpoint_bytes`` of log, and after a roll (for the sealed segment)."""
        lg = self.log
        return lg.checkpoint_due or lg.checkpointed_bytes >= self.checkpoint_bytes

    def _maintain(self) -> None:
        """Apply retention after a roll, and checkpoint every ``checkpoint_bytes`` (writer role)."""
        if not self._maintenance_due():
            return
        try:
            self._settle()
            if self._retention_due:
                self._retention_due = False
                self.apply_retention()
            if self._checkpoint_due():
                self.sync()
                self.log.checkpoint(clean=False)
        except BaseException as exc:  # every failure fails the store; an interrupt goes on up
            self._fail(exc, [])
            if not isinstance(exc, Exception):
                raise

    def _pass_on(self) -> None:
        """Hand the writer role to the writer thread (to stop), to the oldest waiting item's thread
        (which then leads what is queued), or release it."""
        with self._cv_lock:
            if self._batch:  # taken but not written (an interrupt before the work began): queue it again, first
                self._queue[:0] = self._batch
                self._batch = []
            nxt = None
            if not self._stopping:
                for p in self._queue:
                    if not p.gone:
                        nxt = p
                        break
            if nxt is not None:
                self._holder = nxt
                nxt.lead = True
                nxt.done.release()
            elif self._stopping or self._queue:
                self._give_to_thread()  # stopping, or only items whose callers stopped waiting
            else:
                self._holder = None
                self._busy = False
                if self._dirty and self.durability == "batch" and (not self._timing or self._interval_passed()):
                    # The writer thread times the next fsync; when the interval ran out while the role
                    # was held, it is waiting out a whole interval more: wake it to sync now.
                    self._cv.notify_all()

    # -- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the thread must never die with commits waiting
            self._fail(exc, [])

    def _take_turn(self) -> tuple[list[_Pending], bool]:
        """Wait until the writer thread has something to do and the writer role; return the queue and
        whether the store is stopping."""
        batch_mode = self.durability == "batch"
        with self._cv:
            while True:
                if self._thread_turn:
                    self._thread_turn = False
                    break
                if not self._busy and (self._stopping or self._queue or self._maintenance_due()):
                    self._busy = True
                    break
                if batch_mode and self._dirty and self.failed is None:
                    remaining = self._last_sync + self.fsync_interval - time.monotonic()
                    if remaining <= 0 and not self._busy:
                        self._busy = True
                        break
                    # Overdue while a leader works: its next group syncs, or it wakes this thread
                    # when it releases the role.
                    self._timing = True
                    self._cv.wait(min(remaining if remaining > 0 else self.fsync_interval, _IDLE_CHECK))
                    self._timing = False
                    continue
                self._cv.wait(_IDLE_CHECK)
            self._batch = batch = self._queue
            self._queue = []
            return batch, self._stopping

    def _loop(self) -> None:
        while True:
            batch, stopping = self._take_turn()
            if self._abandon:
                self._fail_batch(batch, StoreClosedError("the store was abandoned"))
                return
            role.writer = True
            try:
                self._turn(batch, functools.partial(self._thread_turn_work, batch))
            finally:
                role.writer = False
            if stopping:
                break
            self._pass_on()
        if self.failed is None:
            role.writer = True
            try:
                self._turn([], self._close_turn)
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc, [])
            finally:
                role.writer = False

    def _thread_turn_work(self, batch: list[_Pending]) -> None:
        self._work(batch)
        if self.failed is None and self.durability == "batch":
            try:
                self._sync_if_due()
            except BaseException as exc:  # noqa: BLE001 - every failure fails the store
                self._fail(exc, [])
        self._maintain()

    def _close_turn(self) -> None:
        """The last turn: sync and checkpoint; the checkpoint says the log ends here (clean) only if no other
        process has the store open for writing (it may append after this)."""
        if self.failed is not None:
            return
        try:
            self.sync()
            sharing = self.sharing
            clean = sharing is None or not sharing.others_writing()
            if sharing is None and self.log.unchanged_since_checkpoint():
                self.log.mark_clean()  # nothing new: the files in force stay, unread if their load is deferred
            else:
                self.log.checkpoint(clean=clean)
            if sharing is not None:
                sharing.mark_clean(clean)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc, [])

    def _interval_passed(self) -> bool:
        """``fsync_interval`` has passed since the last fsync."""
        return time.monotonic() - self._last_sync >= self.fsync_interval

    def _group_syncs(self) -> bool:
        """The records being written are made durable at once: always with ``durability="fsync"``,
        with ``"batch"`` once the interval has passed."""
        return self.durability == "fsync" or (self.durability == "batch" and self._interval_passed())

    def _sync_if_due(self) -> None:
        if self._dirty and self._interval_passed():
            self.sync()

    def sync(self) -> None:
        """Make what was written durable: fdatasync the active segment if anything is unsynced (writer role)."""
        if self._dirty:
            active = self.log.active
            self.log.io.fdatasync(active.fd)
            self._dirty = False
            self._last_sync = time.monotonic()
            self.synced = (active.first, active.end, self.log.next_goff)
            shared = self.published.shared
            if shared is not None:
                if self.sharing is None:  # alone: no other process reads or raises the bound
                    shared.publish_durable(self.log.next_goff)
                else:
                    shared.raise_durable(self.log.next_goff)

    def _fail(self, exc: BaseException, batch: list[_Pending]) -> None:
        logger.error("%s: writer failed, the store refuses writes until reopened: %r", self.log.directory, exc)
        what = str(exc) if isinstance(exc, OutOfSpaceError) else repr(exc)  # its message names file, size, option
        failed = StoreFailedError(
            f"{self.log.directory}: a write or fsync failed ({what}); "
            "nothing after the last acknowledged commit is acknowledged; reopen the store to recover"
        )
        failed.__cause__ = exc
        with self._cv:
            if self.failed is None:  # the first failure is what every later call reports
                self.failed = failed
            queued, self._queue = self._queue, []
        unflushed, self._unflushed = self._unflushed, []
        self._unflushed_end = None
        self._unflushed_heads = {}
        if self.sharing is not None:
            self.sharing.writer_failed()  # its readers load afresh: nothing unpublished stays readable
        self._fail_batch(unflushed + batch + queued)
        batch.clear()  # failed: nothing of it is left to write

    def _fail_batch(self, batch: list[_Pending], error: BaseException | None = None) -> None:
        for p in batch:
            if not isinstance(p.error, OffsetConflictError | DuplicateMessageError):
                p.error = error or self.failed
                p.result = None
            # RuntimeError: released already (an interrupt fell after its release, before it left the batch).
            with contextlib.suppress(RuntimeError):
                p.done.release()

    def _process_all(self, batch: list[_Pending]) -> None:
        """Process a batch in order: runs of transactions as groups, control items one by one.

        Each item is released as soon as its part is durable and published.
        """
        i = 0
        while i < len(batch):
            j = i
            while j < len(batch) and batch[j].tx is not None:
                j += 1
            if j > i:
                group = batch[i:j]
                committed = self._process(group)
                del batch[:j]  # what is left is what a failure must still fail
                i = 0
                if self._unflushed_end is not None:
                    self._unflushed += group  # released once synced, after the turn (_flush_turn)
                    continue
                for p in group:
                    p.done.release()
                if committed:
                    self.published.wake()
                continue
            self._settle()
            p = batch[0]
            if p.call is not None:
                p.result = p.call()  # a failure here fails the store, like a failed commit
            else:
                assert p.control is not None
                self._control(p, p.control)
            del batch[0]
            p.done.release()

    def _control(self, p: _Pending, control: Control) -> None:
        kind, name, nameb, before = control
        lg = self.log
        cat = lg.catalog
        sid = cat.ids.get(name)
        if sid is None:
            p.error = ValueError(f"no stream named {name!r}")
            return
        head = int(cat.head[sid])
        first = int(cat.first[sid])
        deleted = bool(cat.flags[sid] & FLAG_DELETED)
        if kind == KIND_DELETE:
            before = head
            if deleted and first == head:
                p.result = range(0)
                return
        elif before > head:
            p.error = ValueError(f"stream {name!r}: cannot truncate before offset {before}, its head is {head}")
            return
        elif before <= first:
            p.result = range(0)  # already removed
            return
        seg = lg.active
        try:  # room for the record first: a full file system then fails this call alone, nothing written
            seg.reserve(min(seg.capacity, seg.end + RECORD_OVERHEAD + len(nameb)))
        except OutOfSpaceError as exc:
            p.error = exc
            return
        goff = lg.next_goff
        self._write_records([(kind, sid, before, nameb)])
        lg.streams.control(kind, sid, before, goff)
        pub = self.published
        pub.publish(lg.next_goff, lg.active.first, lg.active.end, wake=False)
        pub.removed()  # readers drop what they decoded ahead, then are woken
        p.result = range(goff, goff + 1)

    def apply_retention(self, age: float | None = None, max_bytes: int | None = None) -> int:
        """Drop the old segments that the retention options no longer keep (writer role); the log bytes freed.

        ``age`` and ``max_bytes`` stand in for the store's retention options
        when given. The steps and their crash safety: :meth:`logstore.embedded.retention.Retention.apply`.
        """
        age = self.retention_age if age is None else age
        max_bytes = self.retention_bytes if max_bytes is None else max_bytes
        return self._retention.apply(age, max_bytes)

    def roll_now(self, segment: Segment) -> bool | OutOfSpaceError:
        """Seal ``segment`` now, if it is still the active segment and holds a record (writer role).

        Returns whether it rolled, or the :class:`OutOfSpaceError` that kept
        the next segment from being created: nothing changed then (the new
        file never got its name), so the store goes on, and compaction
        reports the active segment as not reached. Compaction rewrites sealed segments only,
        and calls this (through :meth:`call`, so that the roll falls between
        two commit groups) to reach removed messages in the active one. The
        steps are those of the roll in :meth:`_process`: fdatasync the
        segment, start the next one at the next global offset
        (``Log.roll``: created as ``.tmp``, renamed into place, directory
        fsynced), then the checkpoint that records the sealed segment, which
        runs when this turn of the role ends, and retention, as after any
        roll. A crash anywhere in between leaves what a crash during an
        ordinary roll leaves.
        """
        lg = self.log
        if lg.active is not segment or lg.next_goff == segment.first:
            return False  # rolled meanwhile by a commit, or empty: nothing to seal
        self.sync()  # everything written before the new segment exists is durable, as in _process
        try:
            seg = self._roll(lg.next_goff)
        except OutOfSpaceError as exc:
            return exc
        # Other writers then write in the new segment (the tail says where the log goes on).
        self.published.publish(lg.next_goff, seg.first, seg.end, wake=False)
        return True

    def _roll(self, first: int, reserve: int = 0) -> Segment:
        """Start the next segment at global offset ``first`` (``Log.roll``), then mark what every roll
        makes due: the checkpoint that records the sealed segment, and retention (writer role)."""
        sealed = self.log.active
        seg = self.log.roll(first, reserve)
        sealed.named = {}  # only the active segment's names are looked at
        self.log.checkpoint_due = True
        self._retention_due = self.retention_age is not None or self.retention_bytes is not None
        return seg

    def _write(
        self, seg: Segment, parts: list[bytes], positions: list[int], start: int, end: int, appends: bool = False
    ) -> None:
        """Write framed records ``parts`` at byte ``start`` of ``seg`` (up to ``end``) and index their positions.

        Registered indexes (``Log.extra_indexes``) get each whole transaction among
        them, read back with the walker; the engine's own indexes are kept inline.
        ``appends``: the records are message appends of ``_process``, which hands
        them to the indexes that take appends (:attr:`DerivedIndex.takes_appends`)
        itself: only the others get them read back.
        """
        self.log.io.pwrite(seg.fd, b"".join(parts), start)
        seg.positions.positions.extend(positions)
        extra = self.log.extra_indexes
        if extra:
            if appends:
                extra = [ix for ix in extra if not ix.takes_appends]
            if extra:
                self._apply_extra(seg, positions, extra)

    def _apply_extra(self, seg: Segment, positions: list[int], extra: list[DerivedIndex]) -> None:
        """Hand the whole transactions among the records just written at ``positions`` of ``seg`` to the
        indexes ``extra``, their headers read back from the segment (this writer framed them: no checksum is
        checked again). A transaction that goes on in the next segment waits for the rest of it.
        """
        index = len(self.log.segments) - 1 - self.log.segments[::-1].index(seg)
        pending = self._extra_pending
        view = seg.view
        unpack = RECORD_HEADER.unpack_from
        new = tuple.__new__  # a Record without the NamedTuple call (a third of the cost)
        for position in positions:
            length, kind, flags, nlen, sid, soff, goff = unpack(view, position)
            name = bytes(view[position + 28 : position + 28 + nlen]).decode("utf-8") if nlen else None
            rec = new(Record, (position, length, flags, sid, soff, goff, name, position + 28 + nlen, kind))
            pending.append((index, rec))
            if flags & FLAG_TX_END:
                for ix in extra:
                    ix.apply(pending)
                pending.clear()

    def _seal_and_roll(
        self,
        seg: Segment,
        parts: list[bytes],
        positions: list[int],
        start: int,
        pos: int,
        goff: int,
        bound: int,
        appends: bool = False,
    ) -> Segment:
        """Roll: write what is framed for ``seg`` (up to byte ``pos``), fdatasync it, and start the next
        segment at global offset ``goff`` with room for ``bound`` more bytes. The full segment is durable
        before the next one gets data. ``appends``: as for :meth:`_write`."""
        if parts:
            self._write(seg, parts, positions, start, pos, appends)
        seg.end = pos
        self.log.io.fdatasync(seg.fd)
        self._dirty = False
        self.synced = (seg.first, seg.end, goff)
        return self._roll(goff, HEADER_SIZE + bound)

    def _write_records(self, specs: list[tuple[int, int, int, bytes]]) -> None:
        """Write control records ``(kind, stream id, offset field, name)`` as one transaction.

        The writer's slow path: each record is NAMED when it has a name, the
        last one carries TX_END, and a full segment rolls as in ``_process``.
        Durable on return as ``durability`` says.
        """
        lg = self.log
        seg = lg.active
        goff = lg.next_goff
        parts: list[bytes] = []
        positions: list[int] = []
        start = pos = seg.end
        bound = sum(RECORD_OVERHEAD + len(spec[3]) for spec in specs)
        seg.reserve(min(seg.capacity, start + bound))
        synced_flag = 0 if self._dirty else FLAG_SYNCED
        for k, (kind, sid, soff, nameb) in enumerate(specs):
            size = RECORD_OVERHEAD + len(nameb)
            if seg.size < pos + size <= seg.capacity:
                seg.reserve(pos + size)
            if pos + size > seg.size:  # past the segment's capacity: roll
                seg = self._seal_and_roll(seg, parts, positions, start, pos, goff, bound)
                start = pos = seg.end
                parts, positions = [], []
                synced_flag = FLAG_SYNCED
            flags = synced_flag | (FLAG_NAMED if nameb else 0) | (FLAG_TX_END if k == len(specs) - 1 else 0)
            synced_flag = 0
            if nameb:
                seg.named[sid] = True
            parts.append(frame(sid, soff, goff, flags, nameb, b"", kind))
            positions.append(pos)
            pos += size
            goff += 1
        self._write(seg, parts, positions, start, pos)
        seg.end = pos
        lg.checkpointed_bytes += pos - start
        lg.next_goff = goff
        self._dirty = True
        if self._group_syncs():
            self.sync()

    # Long on purpose: the commit group loop (hot path, bench W1), a single pass on purpose.
    def _process(self, batch: list[_Pending]) -> bool:  # noqa: PLR0912, PLR0915
        """Write, sync and publish one group; returns whether anything was committed."""
        lg = self.log
        cat = lg.catalog
        streams = lg.streams
        ids = cat.ids
        seg = lg.active
        named = seg.named
        goff = lg.next_goff
        start_pos = pos = seg.end
        # Reserve the room the group can take before anything is framed: a full file system then fails
        # the group cleanly (nothing written, no index changed) and the store stays usable. The bound
        # names each append's stream once: a stream is NAMED at most once per segment.
        bound = 0
        for p in batch:
            assert p.tx is not None
            for _name, nb, _first, payloads in p.tx.appends:
                bound += len(nb) + RECORD_OVERHEAD * len(payloads) + sum(map(len, payloads))
        try:
            seg.reserve(min(seg.capacity, pos + bound))
        except OutOfSpaceError as exc:
            for p in batch:
                p.error = exc
            return False
        capacity = seg.size  # the reserved (and mapped) bytes
        parts: list[bytes] = []
        positions: list[int] = []
        defer = self._defer_sync
        # stream id -> head after this batch so far (and after the turn's earlier groups, not yet shown)
        heads: dict[int, int] = self._unflushed_heads if defer else {}
        committed = False
        synced_flag = 0 if self._dirty else FLAG_SYNCED
        sync = self._group_syncs() and not defer
        written = 0
        hdr_pack = RECORD_HEADER.pack
        sum_pack = CHECKSUM.pack
        xxh = xxhash.xxh3_64_intdigest
        msgids = lg.msgids
        # Each append's stream id, name, first global offset and count, for the extra indexes that take
        # appends (instead of reading the records back).
        direct = [ix for ix in lg.extra_indexes if ix.takes_appends]
        span_sids: list[int] = []
        span_names: list[str] = []
        span_goffs: list[int] = []
        span_counts: list[int] = []
        for p in batch:
            assert p.tx is not None
            # Pass 0: the message ids against the message-id index: a retry of a commit writes nothing.
            verdict = msgids.check(p.tx, ids, cat)
            if verdict is not None:
                if isinstance(verdict, range):
                    p.result = verdict
                else:
                    p.error = verdict
                continue
            appends = p.tx.appends
            # Pass 1: every offset must still be its stream's next one.
            local: dict[str, int] = {}
            conflict = None
            for name, _nb, first, payloads in appends:
                h = local.get(name)
                if h is None:
                    sid = ids.get(name)
                    if sid is None:
                        h = 0
                    else:
                        h = heads.get(sid)
                        if h is None:
                            h = cat.head.item(sid)
                if first != h and first != ANY_OFFSET:  # noqa: PLR1714 - the common case tests one int
                    conflict = OffsetConflictError(name, h, first)
                    break
                local[name] = h + len(payloads)
            if conflict is not None:
                msgids.withdraw()
                p.error = conflict
                continue
            if p.tx.has_any:
                appends = _assign_any(appends, ids, heads, cat.head)
                p.tx.assign(appends)
            # Pass 2: frame the records.
            tx_first = goff
            last_append = len(appends) - 1
            for k, (name, nameb, soff, payloads) in enumerate(appends):
                sid = ids.get(name)
                if sid is None:  # a new stream: its first run starts here
                    sid = cat.add(name)
                streams.run(sid, soff, goff)
                if direct:
                    span_sids.append(sid)
                    span_names.append(name)
                    span_goffs.append(goff)
                    span_counts.append(len(payloads))
                last_msg = len(payloads) - 1
                end_flag = FLAG_TX_END if k == last_append else 0
                for j, payload in enumerate(payloads):
                    if sid in named:
                        # Hot path: the stream is already named in this segment and the record fits.
                        size = RECORD_OVERHEAD + len(payload)
                        if pos + size <= capacity:
                            body = (
                                hdr_pack(
                                    size,
                                    KIND_MESSAGE,
                                    synced_flag | (end_flag if j == last_msg else 0),
                                    0,
                                    sid,
                                    soff,
                                    goff,
                                )
                                + payload
                            )
                            synced_flag = 0
                            parts.append(body)
                            parts.append(sum_pack(xxh(body)))
                            positions.append(pos)
                            pos += size
                            soff += 1
                            goff += 1
                            continue
                    is_named = sid not in named
                    size = RECORD_OVERHEAD + len(payload) + (len(nameb) if is_named else 0)
                    if capacity < pos + size <= seg.capacity:
                        # Past the reservation, which the bound above makes rare; records are framed
                        # already, so a failure here fails the store.
                        seg.reserve(pos + size)
                        capacity = seg.size
                    if pos + size > capacity:
                        # Roll. The new segment is allocated with room for the rest of the group. A
                        # full file system fails the store here: the group is written in part.
                        written += pos - start_pos
                        seg = self._seal_and_roll(seg, parts, positions, start_pos, pos, goff, bound, True)
                        named = seg.named
                        start_pos = pos = seg.end
                        parts = []
                        positions = []
                        synced_flag = FLAG_SYNCED
                        is_named = True
                        size = RECORD_OVERHEAD + len(payload) + len(nameb)
                        if pos + size > seg.capacity:
                            raise AssertionError("append_messages admitted a record larger than a segment")
                        seg.reserve(pos + size)
                        capacity = seg.size
                    flags = synced_flag
                    synced_flag = 0
                    if is_named:
                        named[sid] = True
                        flags |= FLAG_NAMED
                    if j == last_msg and k == last_append:
                        flags |= FLAG_TX_END
                    rec = frame(sid, soff, goff, flags, nameb if is_named else b"", payload)
                    parts.append(rec)
                    positions.append(pos)
                    pos += size
                    soff += 1
                    goff += 1
                heads[sid] = soff
            p.result = range(tx_first, goff)
            msgids.added(p.tx, tx_first)
            committed = True
        if parts:
            self._write(seg, parts, positions, start_pos, pos, True)
            written += pos - start_pos
            self._dirty = True
        if span_sids:
            for ix in direct:
                ix.apply_appends(span_sids, span_names, span_goffs, span_counts)
        seg.end = pos
        lg.next_goff = goff  # the writer's own position; readers go by visible_end, published below
        lg.checkpointed_bytes += written
        if defer:
            # Other writers go on after this tail; this process's readers and committers wait for the sync.
            shared = self.published.shared
            assert shared is not None
            shared.publish_tail(goff, seg.first, pos)
            self._unflushed_end = goff
            return committed
        if sync:
            self.sync()
        # Publish: heads first, then the global end; readers read them in the other order.
        streams.set_heads(heads)
        self.published.publish(goff, seg.first, pos)
        return committed


def _assign_any(appends: list[Append], ids: dict[str, int], heads: dict[int, int], head: np.ndarray) -> list[Append]:
    """``appends`` with each ANY offset replaced by the stream's head at this point of the group.

    Writer role, after pass 1 found no conflict: ``heads`` holds the heads
    that earlier transactions of the group reached, ``head`` the published
    ones. The transaction's appends to a stream follow on from each other,
    so an ANY after an exact append continues after it.
    """
    nxt: dict[str, int] = {}
    out: list[Append] = []
    for name, nameb, first, payloads in appends:
        if first == ANY_OFFSET:
            first = nxt.get(name, -1)
            if first < 0:
                sid = ids.get(name)
                if sid is None:
                    first = 0
                else:
                    h = heads.get(sid)
                    first = head.item(sid) if h is None else h
        out.append((name, nameb, first, payloads))
        nxt[name] = first + len(payloads)
    return out
