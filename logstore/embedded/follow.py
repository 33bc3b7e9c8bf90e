"""Following a store that another process writes: the read-only opener's side of ``CONTROL``.

A store opened with ``readonly=True`` beside a writing process is live: it
sees each transaction that process publishes. The writing process publishes
in ``CONTROL`` (logstore/embedded/controlfile.py) the *tail* (the global offset after
the last transaction its own readers may see, and where that transaction
ends), the count of removals and the last checkpoint's generation, and then
adds 1 to the futex word, which wakes every process sleeping on it.

A :class:`Follower` keeps this process's copy of the log's indexes in step
with that tail. :meth:`Follower.refresh` (called by a reader that has read
everything it knew of, by the store's ``head`` and the like, and by the
watcher thread) compares the tail with ``visible_end`` and, when it moved,
*catches up*: it walks the records from the end of what it knew to the tail
(:func:`logstore.embedded.walk.walk`), opening the segments that a roll started,
mapping again a segment file that grew, and applies each whole transaction
to every index, as recovery applies the records past a checkpoint; then it
publishes the new ``visible_end`` to this process's readers and wakes them.
Every record below the tail is whole: the writer wrote it before it
published the tail, so the walk never meets a write in flight, and nothing
past the tail is read.

Retention can remove a segment file before a follower that was not reading
reached it, and only the checkpoint written with that removal holds what its
records did to the indexes. Then, and whenever the walk meets something the
log should not hold below the tail, the follower *reloads*: it loads the
checkpoint into a fresh log bounded by the tail (as a read-only open does)
and puts its segments and indexes in place of its own; readers holding a
segment of the old log look again.

Waiting. A reader blocked in ``next()`` waits on the store's condition
(:class:`~logstore.embedded.published.Published`), as beside a writer thread in the
same process. The follower's *watcher thread*, started by the first wait
(or ``anext()``) and ended by ``close()``, sleeps on the futex word; each
wake-up refreshes, which wakes the local waiters when something new is
readable. It reads the word before it refreshes, so a publication between
its refresh and its sleep changes the word and the sleep returns at once.
A sleep ends after :data:`SAFETY_WAIT` seconds without a wake-up as well,
so that a lost wake-up would cost a delay, not a hang: an idle process
wakes once a second, and uses no measurable CPU. Where the futex cannot be
used (``CONTROL``'s wake method is polling), the watcher polls the tail
every :data:`POLL_INTERVAL` seconds instead.

Removals: the writer adds 1 to the shared removal count after it published
a truncation, deletion or retention move. A reader compares the count on
every message it takes from what it decoded ahead
(:class:`FollowingPublished`), and when it moved, catches up first, so no
removed message is returned once ``truncate_stream`` returned in the writing
process.

Lock rules: ``_lock`` serialises catch-ups and reloads (the follower is this
process's writer role for its indexes, with the writer's publication
order: records and positions, runs, heads, then ``visible_end``). It is
never held while waiting for the published state's condition.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from logstore.embedded import layout
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.controlfile import (
    CLEAN_AT,
    DURABLE_AT,
    EPOCH_AT,
    GENERATION_AT,
    INTENT_AT,
    REMOVALS_AT,
    TAIL_A,
    TAIL_B,
    TURNS_AT,
    UNCHECKED,
    WAKE_FUTEX,
    Control,
    Tail,
)
from logstore.embedded.log import OWN_INDEXES
from logstore.embedded.lostfound import RECOVERY, LostFound
from logstore.embedded.published import REMOVALS_WORD, Published
from logstore.embedded.record import FLAG_TX_END, KIND_DELETE, KIND_RETAIN, KIND_TRUNCATE, Record
from logstore.embedded.segment import open_segment
from logstore.embedded.walk import Damage, last_nonzero_in_file, walk
from logstore.errors import CorruptionError, FormatVersionError, as_corruption
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE

if TYPE_CHECKING:
    from logstore.embedded.fileio import FileIO
    from logstore.embedded.log import Log
    from logstore.embedded.segment import Segment

logger = logging.getLogger("logstore")
_U64 = (1 << 64) - 1

SAFETY_WAIT = 1.0
"""Seconds a watcher sleeps on the futex word before it looks at the tail anyway."""
FIRST_WAIT = 0.005
"""Seconds of a watcher's first sleep: a writer that looked for watchers just before this one set its flag
skips the wake-up of the publication it was making (``Control.wake``); the next look catches it."""
POLL_INTERVAL = 0.002
"""Seconds between two looks at the tail when the wake method is polling."""
_REMOVAL_KINDS = (KIND_TRUNCATE, KIND_DELETE, KIND_RETAIN)


def _whole(item: Record | Damage, seg: Segment, expected: int) -> Record:
    """``item`` if it is the record at global offset ``expected``; else the follower is behind (reload)."""
    if type(item) is Damage:
        raise _Behind(f"{seg.path}@{item.position}: {item.what}, below the published tail")
    rec: Record = item  # type: ignore[assignment]
    if rec.goff != expected:
        raise _Behind(f"{seg.path}@{rec.position}: global offset {rec.goff}, expected {expected}")
    return rec


def _zero(io: FileIO, fd: int, start: int, end: int) -> None:
    """Write zeros over bytes ``start`` .. ``end`` of ``fd``'s file."""
    zero = bytes(min(end - start, 1 << 20))
    p = start
    while p < end:
        n = min(len(zero), end - p)
        io.pwrite(fd, zero[:n], p)
        p += n


_APPLY_AT = 4096
"""A catch-up applies what it read once this many records of whole transactions wait (memory stays bounded)."""


class _Behind(Exception):
    """The walk cannot reach the tail from what this process holds: reload (see the module docstring)."""


class FollowingPublished(Published):
    """The published state of a read-only store that follows another process: ``removals`` also looks at
    the shared removal count, and catches up when it moved, before it answers."""

    __slots__ = ("_local_removals",)

    def __init__(self) -> None:
        self._local_removals = 0
        super().__init__()

    @property
    def removals(self) -> int:
        follower = self.follower
        if follower is not None and follower.removals_moved():
            follower.refresh()
        return self._local_removals

    @removals.setter
    def removals(self, value: int) -> None:
        self._local_removals = value

    def removed(self) -> None:
        """Count a removal that this process's writer published (writer role) and wake every reader."""
        self._local_removals += 1
        shared = self.shared
        if shared is not None:
            shared.publish_removal()  # the shared count is this object's counter: readers see it move
            shared.wake()
        else:
            self.counter[REMOVALS_WORD] += 1
        self.wake()

    def applied_removal(self) -> None:
        """Count a removal that the follower applied from another process's records (under its lock) and wake."""
        self._local_removals += 1
        if self.follower is None:
            self.counter[REMOVALS_WORD] += 1
        self.wake()


class Follower:
    """Keeps a read-only store's log in step with the tail that the writing process publishes."""

    def __init__(self, log: Log, control: Control, reload: Callable[[int], Log], durable_only: bool) -> None:
        self.log = log
        # ``durability="fsync"``: follow only what is durable (below the durable bound as well as the tail).
        self.durable_only = durable_only
        self.control = control
        pub = log.published
        assert isinstance(pub, FollowingPublished)
        self.pub = pub
        # Makes a fresh log of the store bounded by a tail: ``reload(bound) -> Log`` (the store's loader).
        self._reload = reload
        self._lock = threading.Lock()
        assert control.mm is not None
        self._words: memoryview | None = memoryview(control.mm).cast("Q")
        self._removals_seen = self._word(REMOVALS_AT)
        self._generation = self._word(GENERATION_AT)
        self._epoch = self._word(EPOCH_AT)
        # The turn count (TURNS_AT) up to which this process knows the log, the files and the words: its own
        # last turn's, or the one its catch-up before a turn read (_catch_up_before_turn); -1: none yet.
        self._turns = -1
        self._stale = False  # this process's writer failed: the next catch-up reloads
        self._pid = os.getpid()
        self._watcher: threading.Thread | None = None
        self._stopping = False
        self._stopped = threading.Event()
        self._child = False

    @property
    def words(self) -> memoryview:
        """``CONTROL``'s 8-byte words (released by :meth:`close`)."""
        assert self._words is not None
        return self._words

    def _word(self, at: int) -> int:
        words = self._words
        return 0 if words is None else int(words[at // 8])

    # -- catching up ---------------------------------------------------------------------

    def _goal_hint(self, words: memoryview) -> int:
        """Where catching up would go, from the words alone (unchecked: a torn copy only costs a full read).
        With ``durable_only``, a tail past the durable bound counts as the goal: the refresh then looks
        whether it may make it durable (:meth:`_help_flush`)."""
        a, b = words[TAIL_A // 8], words[TAIL_B // 8]
        return int(a if a > b else b)

    def _moved(self) -> bool:
        """Whether anything the follower acts on moved since it last looked (one read of each word)."""
        words = self._words
        if words is None:
            return False
        try:
            return (
                self._goal_hint(words) > self.pub.visible_end
                or words[REMOVALS_AT // 8] != self._removals_seen
                or words[EPOCH_AT // 8] != self._epoch
                or words[GENERATION_AT // 8] != self._generation
            )
        except ValueError:  # close() let go of the words meanwhile
            return False

    def removals_moved(self) -> bool:
        words = self._words
        try:
            return words is not None and words[REMOVALS_AT // 8] != self._removals_seen
        except ValueError:  # close() let go of the words meanwhile
            return False

    def refresh(self) -> bool:
        """Catch up with the published tail if it moved; returns whether anything new became readable."""
        if not self._moved():
            return False
        with self._lock:
            if self._gone():
                return False
            try:
                return self._refresh_locked()
            except ValueError:
                if self._gone():  # closed meanwhile (CONTROL refuses use after close)
                    return False
                raise

    def _gone(self) -> bool:
        return self._words is None or self.pub.closed

    def _refresh_locked(self) -> bool:
        lg = self.log
        pub = self.pub
        control = self.control
        removals = self._word(REMOVALS_AT)
        tail = control.tail()
        before = pub.visible_end
        start = lg.next_goff
        try:
            if tail is not None:
                if self.durable_only and self._word(DURABLE_AT) < tail.goff:
                    self._help_flush(tail)
                goal = min(tail.goff, self._word(DURABLE_AT)) if self.durable_only else tail.goff
                if self._stale:
                    # This process's writer failed after it wrote past the published tail: what its log
                    # holds there was never published (and the next holder cut it). Load afresh.
                    self._stale = False
                    self._reload_from(goal)
                elif goal > lg.next_goff or (goal == tail.goff and tail.segment > lg.active.first):
                    # (the second: a roll with nothing after it yet, compaction's: follow it before a swap)
                    try:
                        self._publish(self._catch_up(tail, goal))
                    except _Behind as why:
                        logger.info("%s: loading the log again: %s", lg.directory, why)
                        self._reload_from(goal)
                elif goal > pub.visible_end:  # a writer's turn applied it before it was durable; now it is
                    pub.visible_end = goal
                    pub.wake()
        finally:
            if lg.next_goff > max(pub.visible_end, start):
                # A catch-up that failed after applying whole transactions: they are below the tail, show them.
                pub.visible_end = lg.next_goff
                pub.applied_removal()
        self._removals_seen = removals
        self._follow_maintenance()
        return pub.visible_end != before

    def _follow_maintenance(self) -> None:
        """Follow what other processes did to the files since the last look: compaction swaps (the segment
        epoch) and checkpoints (the generation: the sealed segments' positions are in their files now)."""
        lg = self.log
        epoch = self._word(EPOCH_AT)
        if epoch != self._epoch:  # another process's compaction swapped segments: their positions changed
            self._follow_swaps()  # (looks at every file again: after a failure, the next look does the rest)
            self._epoch = epoch
        generation = self._word(GENERATION_AT)
        if generation != self._generation:
            self._generation = generation
            self._let_go_of_sealed_positions()
        if generation > lg.generation:  # another process checkpointed: this one counts the log from there
            lg.generation = generation
            lg.checkpointed_bytes = 0

    def _help_flush(self, tail: Tail) -> None:
        """Make the published tail durable when nobody is about to: no turn runs (the intent is clear, or its
        holder is gone) and no one holds the flush lock. A writer that died after it published its tail
        and before its sync leaves such a tail (its commits were never acknowledged, but they are in the
        log, below the tail, for good); so does a writer with ``durability="none"`` or ``"batch"``, whose
        commits a ``"fsync"`` reader then sees once this makes them durable."""
        try:
            self._try_to_flush(tail)
        except OSError as exc:  # a reader does not fail for it: the bound stays, and it reads what is durable
            logger.warning("%s: could not make the tail durable: %r", self.log.directory, exc)

    def _try_to_flush(self, tail: Tail) -> None:
        control = self.control
        if self._word(INTENT_AT) and control.write_held():
            return  # a turn is running: its writer publishes (and, with "fsync", syncs) after it
        if not control.try_lock_flush():
            return  # a sync is running: it raises the durable bound and wakes everyone
        lg = self.log
        io = lg.io
        try:
            if self._word(DURABLE_AT) >= tail.goff:
                return
            try:
                fd = io.open(layout.segment_path(lg.directory, tail.segment), os.O_RDONLY)
            except FileNotFoundError:
                return  # retention dropped it meanwhile: the tail moved on
            try:
                io.fdatasync(fd)  # every record of the tail's segment below the tail; earlier ones at their roll
            finally:
                io.close(fd)
            control.publish_durable(tail.goff)
        finally:
            control.unlock_flush()
        control.wake()

    def _catch_up(self, tail: Tail, goal: int) -> bool:
        """Walk the records from the end of the log as this process knows it up to global offset ``goal``
        (at most ``tail``'s, which says where the records up to it end); apply them. Returns whether a
        removal was among them; the caller publishes (:meth:`_publish`)."""
        lg = self.log
        seg = lg.active
        index = len(lg.segments) - 1
        pos = seg.end
        expected = lg.next_goff
        pending: list[tuple[int, Record]] = []
        ends: list[int] = []  # where each whole transaction of ``pending`` ends
        removed = False
        while True:
            last = seg.first >= tail.segment
            self._cover(seg, tail, last)
            for item in walk(seg.view, pos, seg.size, fd=seg.fd, stop=tail.position if last else None, tail=False):
                rec = _whole(item, seg, expected)
                pending.append((index, rec))
                expected += 1
                removed |= rec.kind in _REMOVAL_KINDS
                if rec.flags & FLAG_TX_END:
                    ends.append(len(pending))
                    if expected >= goal:
                        break
                    if len(pending) >= _APPLY_AT:
                        pending, ends = self._apply(pending, ends)
            if expected >= goal:
                break
            if last:
                raise _Behind(f"{seg.path}: the records end at global offset {expected}, the goal is {goal}")
            # The segment's records end here: the rest of the log is in the next one, which starts at ``expected``.
            pending, ends = self._apply(pending, ends)
            seg = self._open_next(expected)
            index += 1
            pos = HEADER_SIZE
        done = ends[-1] if ends else 0
        if len(pending) != done:
            raise _Behind(f"the transaction at global offset {pending[done][1].goff} does not end below the tail")
        self._apply(pending, ends)
        if goal == tail.goff and seg.first < tail.segment:
            # The tail is at the start of a segment that a roll made and no record reached yet.
            if tail.segment != expected or tail.position != HEADER_SIZE:
                raise _Behind(f"the tail is at {tail}, the records of {seg.path} end at global offset {expected}")
            self._open_next(expected)
        return removed

    def _apply(self, pending: list[tuple[int, Record]], ends: list[int]) -> tuple[list[tuple[int, Record]], list[int]]:
        """Apply the whole transactions of ``pending`` (the k-th ends before index ``ends[k]``) in one call;
        return what is left (the start of a transaction that goes on in the next segment) and no ends."""
        if not ends:
            return pending, ends
        done = ends[-1]
        self.log.apply(pending if done == len(pending) else pending[:done], ends)
        return pending[done:], []

    def _cover(self, seg: Segment, tail: Tail, last: bool) -> None:
        """Map what the walk of ``seg`` needs: up to the tail in its segment, else the whole (sealed) file."""
        if not last or seg.size < tail.position:
            size = min(seg.io.size(seg.fd), seg.capacity)  # the writer grew the file since it was mapped
            if size > seg.size:
                seg.remap(size)
        if last and seg.size < tail.position:
            raise _Behind(f"{seg.path} is {seg.size} bytes, the tail ends at byte {tail.position}")

    def _open_next(self, first: int) -> Segment:
        """Open the segment that a roll started at global offset ``first`` and add it to the log."""
        lg = self.log
        path = layout.segment_path(lg.directory, first)
        try:
            seg = open_segment(lg.io, path, lg.store_id, not lg.readonly)
        except FileNotFoundError:
            raise _Behind(f"{path} is gone (retention dropped it before this process read it)") from None
        seg.reset_positions()
        lg.segments.append(seg)  # readers search the list they read; an append keeps it consistent
        return seg

    def _publish(self, removed: bool, cap: int | None = None) -> None:
        """Let go of the segments retention dropped, then show this process's readers the new end (at most
        ``cap``: a writer's turn catches up past what is durable)."""
        lg = self.log
        gone = lg.droppable()
        if gone:
            lg.segments = lg.segments[len(gone) :]
            for old in gone:
                old.close()  # a reader holding it gets SegmentRetired and looks again
        end = lg.next_goff if cap is None else min(lg.next_goff, cap)
        self.pub.visible_end = max(self.pub.visible_end, end)
        if removed:
            self.pub.applied_removal()
        else:
            self.pub.wake()

    def _reload_from(self, goal: int) -> None:
        """Load the log afresh up to global offset ``goal`` and put it in place of this process's (see the
        module docstring)."""
        lg = self.log
        fresh: Log = self._reload(goal)
        for ix in fresh.indexes:
            ix.load_now()  # a deferred load reads the fresh log's segments, which move to this log below
        old = lg.segments
        lg.segments = fresh.segments
        fresh.segments = []
        for i, ix in enumerate(fresh.indexes):
            if i >= OWN_INDEXES:  # the registered indexes are taken whole; the engine's own are bound to their log
                lg.indexes[i].release()  # the files of a load the old one still deferred
                lg.indexes[i] = ix
        lg.extra_indexes = lg.indexes[OWN_INDEXES:]
        lg.msgids.take(fresh.msgids)
        lg.streams.runs = fresh.streams.runs
        lg.positions.entries = fresh.positions.entries
        lg.generation = fresh.generation
        lg.next_goff = fresh.next_goff
        pub = self.pub
        pub.log_start = fresh.published.log_start
        pub.catalog = fresh.published.catalog
        pub.visible_end = fresh.next_goff
        for seg in old:
            seg.close()  # a reader holding one gets SegmentRetired and looks again
        pub.applied_removal()  # whatever a reader decoded ahead is read again from the new log

    def _follow_swaps(self) -> None:
        """Compaction replaced sealed segment files: open the new ones in place of the old (whose bytes,
        erased envelopes included, would otherwise stay on disk while this process holds them)."""
        lg = self.log
        segments = list(lg.segments)
        old = []
        for k, seg in enumerate(segments[:-1]):
            try:
                replaced = os.stat(seg.path).st_ino != os.fstat(seg.fd).st_ino
            except FileNotFoundError:
                continue  # dropped by retention: the catch-up lets go of it
            if not replaced:
                continue
            new = open_segment(lg.io, seg.path, lg.store_id, not lg.readonly)
            new.use_positions(new.rebuild_positions(seg.count))  # the same records, some of them erased
            lg.positions.forget(seg.first)  # its checkpoint entry (end, checksum) is the new file's
            segments[k] = new
            old.append(seg)
        if old:
            lg.segments = segments
            for seg in old:
                seg.close()  # a reader holding it gets SegmentRetired and looks again

    def _let_go_of_sealed_positions(self) -> None:
        """A checkpoint was written: the sealed segments' positions are in their files now (memory stays bounded)."""
        lg = self.log
        path = layout.checkpoint_path(lg.directory)
        try:
            raw = lg.io.read_file(path)
            with as_corruption(path, versions_only=True):
                ckpt, _sid = Checkpoint.decode(raw, lg.store_id)
        except (OSError, FormatError, CorruptionError, FormatVersionError) as exc:
            logger.debug("%s: checkpoint not read (%s); positions stay in memory", path, exc)
            return
        entries = {e.first: e for e in ckpt.segments[:-1]}
        for seg in lg.segments[:-1]:
            e = entries.get(seg.first)
            if e is None or seg.lazy_positions is not None or len(seg.positions) != e.records:
                continue
            try:
                same = os.stat(seg.path).st_ino == os.fstat(seg.fd).st_ino
            except OSError:
                continue
            # Read after the checkpoint: a compaction that replaced the file since this process mapped it
            # wrote positions of the new file, which the old mapping must not take.
            if same:
                seg.set_lazy_positions(e.records, e.checksum)

    # -- the write lock (a writable store) -------------------------------------------------

    @property
    def lock(self) -> threading.Lock:
        """The follower's lock: held by the writer role for a whole turn, and by every catch-up."""
        return self._lock

    def adopt(self) -> None:
        """This process's writer had the store to itself until now (logstore/embedded/alone.py): the log, the
        files and the shared words are as it left them, so its first turn skips the catch-up. Called in the
        writer role, whose turn holds this follower's lock while alone."""
        self._turns = self._word(TURNS_AT)

    def begin_turn(self) -> bool:
        """The writer role starts a turn: take the write lock and this follower's lock, and catch up.

        Steps, each before the next (docs/ARCHITECTURE.md, "Several writers"): (1) the write lock, waiting
        for another process's turn to end (this process's readers catch up meanwhile); (2) the follower's
        lock (no reader's catch-up runs during the turn); (3) catch up with the tail (with
        ``durability="fsync"``, this process's readers see only the durable part: the visible end stops at
        the durable bound); (4) if the intent word is set, take over from the holder that died or failed in
        its turn (:meth:`_take_over`); (5) map the whole active segment file, take the checkpoint
        generation, and rewrite a clean checkpoint as unclean; (6) set the intent word. The writer then
        writes at the tail, publishes, and calls :meth:`end_turn`. Returns whether commits below the tail
        are not durable yet (the writer's next sync covers them; its next record must not say that what
        precedes it is durable).
        """
        control = self.control
        self._catch_up_before_turn()
        control.lock_write()  # the follower's lock is not held while waiting: readers catch up meanwhile
        try:
            self._lock.acquire()
        except BaseException:
            control.unlock_write()
            raise
        try:
            return self._prepare_turn()
        except BaseException:
            words = self._words
            if words is not None and words[INTENT_AT // 8] == self._pid:
                words[INTENT_AT // 8] = 0  # interrupted after setting it: nothing was written
            try:
                with contextlib.suppress(OSError):  # the first error is the one to report
                    control.unlock_write()
            finally:
                self._lock.release()
            raise

    def end_turn(self, finished: bool, after: Callable[[], None]) -> None:
        """End the turn: count it and clear the intent word if it ``finished`` (else the next holder takes
        over), release the write lock, call ``after`` (the writer's flush: another process's turn runs
        meanwhile), and release the follower's lock."""
        try:
            if finished:
                words = self._words
                assert words is not None
                self._turns = (words[TURNS_AT // 8] + 1) & _U64
                words[TURNS_AT // 8] = self._turns
                words[INTENT_AT // 8] = 0
            self.control.unlock_write()
            after()
        finally:
            self._lock.release()

    def flush(self, goal: int) -> None:
        """Make every commit below global offset ``goal`` durable, sharing the ``fdatasync`` with other
        processes (group commit across processes, as PostgreSQL's ``XLogFlush``).

        Called by the writer after its turn, holding this follower's lock (the log does not move). Steps:
        (1) if the durable bound has reached ``goal`` (another process's sync covered it), done; (2) take
        the flush lock if it is free; else sleep until its holder lets go (the count of ended syncs moves)
        and go back to (1): the waiters of one sync all look at once, and most find their commit covered;
        (3) look again, then read the tail and ``fdatasync`` this process's active segment: every record
        of that file below the tail is then durable, whoever wrote it, and earlier segments were synced at
        their roll; (4) raise the durable bound to the tail if it is in that segment (else to ``goal``);
        (5) release the lock, count the sync and wake its waiters, and wake the processes that wait for
        durable commits.
        """
        control = self.control
        while True:
            if self._word(DURABLE_AT) >= goal:
                return
            seen = control.flushes()
            if control.try_lock_flush():
                break
            control.wait_flush(seen)
        try:
            if self._word(DURABLE_AT) < goal:
                tail = control.tail()
                seg = self.log.active
                self.log.io.fdatasync(seg.fd)
                target = goal
                if tail is not None and tail.segment == seg.first and tail.goff > goal:
                    target = tail.goff
                control.publish_durable(target)
        except BaseException:
            with contextlib.suppress(OSError):  # the sync's error is the one to report
                control.unlock_flush()
            raise
        control.unlock_flush()
        control.wake()

    def writer_failed(self) -> None:
        """This process's writer failed: its log may hold records past the published tail; the next catch-up
        loads the log afresh instead."""
        self._stale = True

    def others_writing(self) -> bool:
        """Whether another live opener of the store is writable (it may append after this one's last turn)."""
        return self.control.writers() > 0

    def mark_clean(self, clean: bool) -> None:
        """Say in ``CONTROL`` whether ``CHECKPOINT`` now says the store was closed cleanly (write lock held)."""
        self.control.set_word(CLEAN_AT, 1 if clean else 0)

    def _catch_up_to(self, tail: Tail) -> None:
        """Catch up with ``tail`` whole, durable or not (a writer writes after it); with ``durability="fsync"``
        this process's readers still see only what is durable (the rest when a sync covers it)."""
        lg = self.log
        if tail.goff > lg.next_goff or tail.segment > lg.active.first:
            try:
                self._publish(self._catch_up(tail, tail.goff), self._word(DURABLE_AT) if self.durable_only else None)
            except _Behind as why:
                logger.info("%s: loading the log again: %s", lg.directory, why)
                self._reload_from(tail.goff)

    def _catch_up_before_turn(self) -> None:
        """Before waiting for the write lock: catch up with the tail as it is now, so that the turn itself
        (which other processes wait for) has only the rest to read, or nothing. An error here is met again in
        the turn.

        The turn count is read before the tail. If the turn finds the count unchanged (and no intent set),
        no turn ended since, and any turn that ran when the count was read had ended before the tail was
        read (it would have added 1, or left its intent): what this catch-up saw is the state the turn
        starts from, and the turn skips its own look (:meth:`_prepare_turn`)."""
        words = self._words
        if words is None or self._stale:
            return
        turns = words[TURNS_AT // 8]
        if turns == self._turns:
            return
        with self._lock:
            try:
                tail = self.control.tail()
                if tail is None:
                    return
                self._catch_up_to(tail)
                if self._caught_up_with(tail):
                    self._follow_maintenance()
                    self._see_growth()
                    if not self._word(CLEAN_AT):  # else the turn rewrites the checkpoint first
                        self._turns = turns
            except Exception as exc:  # noqa: BLE001 - the turn catches up again, under the lock, and raises
                logger.debug("%s: catching up before the turn: %r", self.log.directory, exc)

    def _caught_up_with(self, tail: Tail) -> bool:
        lg = self.log
        return lg.next_goff == tail.goff and lg.active.first == tail.segment and lg.active.end == tail.position

    def _see_growth(self) -> None:
        """Map the active segment file up to its size: another process may have grown it (this process's
        ``reserve()`` must start past that)."""
        seg = self.log.active
        size = min(seg.io.size(seg.fd), seg.capacity)
        if size > seg.size:
            seg.remap(size)

    def _prepare_turn(self) -> bool:
        words = self._words
        assert words is not None
        if words[TURNS_AT // 8] == self._turns and not words[INTENT_AT // 8]:
            # No other turn since this process's last one, or since the catch-up before this turn read the
            # count (the tail, the files and the words are as this process knows them): nothing to read.
            words[INTENT_AT // 8] = self._pid
            return words[DURABLE_AT // 8] < self.log.next_goff
        lg = self.log
        control = self.control
        tail = control.tail()
        if tail is None:
            raise CorruptionError(control.path, TAIL_A, "no tail was ever published (the file was rebuilt under us)")
        self._catch_up_to(tail)
        if not self._caught_up_with(tail):
            raise CorruptionError(
                lg.active.path,
                lg.active.end,
                f"caught up to global offset {lg.next_goff}, the published tail is {tail}",
            )
        self._follow_maintenance()
        intent = self._word(INTENT_AT)
        if intent:
            self._take_over(tail, intent)
        self._see_growth()
        if self._word(CLEAN_AT):
            lg.checkpoint(clean=False)  # an append follows: the checkpoint must not say the log ends here
            control.set_word(CLEAN_AT, 0)
        words[INTENT_AT // 8] = self._pid
        return self._word(DURABLE_AT) < tail.goff

    def _take_over(self, tail: Tail, pid: int) -> None:
        """The last write-lock holder (``pid``) died or failed in its turn: undo what it left past the tail.

        Everything past the tail was never acknowledged (a commit returns after its tail is published), so
        it goes, as recovery cuts a torn tail: (1) save the bytes past the tail in the active segment and
        every later segment file (a roll it began) in ``lost+found/``, with a manifest naming ``pid``;
        (2) remove the later segment files (and a ``.tmp`` one of an unfinished roll) and sync the
        directory; (3) zero the bytes past the tail and ``fdatasync`` them, before anything new is
        written after the tail (a crash must not bring them back behind new records); (4) finish a
        retention drop it began (checkpoint, then remove the segment files below the log start);
        (5) bump the segment epoch. Its checkpoint or compaction swap needs no finishing: each is one
        atomic rename, done or not.
        """
        lg = self.log
        io = lg.io
        seg = lg.active
        if pid == UNCHECKED:
            who = "a read-only first opener published the tail without cutting what lies past it"
        else:
            who = f"process {pid} died or failed holding the write lock"
        reason = f"past the published tail: {who}"
        later, unfinished, dropped = self._leftovers()
        size = io.size(seg.fd)
        if size > seg.size:
            seg.remap(min(size, seg.capacity))
        nz = last_nonzero_in_file(seg.view, seg.fd, seg.end, seg.size)
        saved = 0
        if nz > seg.end or later:
            lf = LostFound(io, lg.directory, RECOVERY)
            lf.ready()
            if nz > seg.end:
                lf.save(bytes(seg.view[seg.end : nz]), seg.path, seg.end, reason, sync=False)
                saved += nz - seg.end
            for path in later:
                data = io.read_file(path)
                lf.save(data, path, 0, reason, sync=False)
                saved += len(data)
            lf.sync()
        for path in unfinished:
            io.unlink(path)
        for path in later:
            lg.unlink_segment_files(path)
        if later or unfinished:
            io.fsync_dir(lg.seg_dir)
        if nz > seg.end:
            _zero(io, seg.fd, seg.end, nz)
            io.fdatasync(seg.fd)
        if dropped:
            io.fdatasync(seg.fd)  # a checkpoint covers a durable log
            lg.checkpoint(clean=False)  # one that names none of them, before they go
            for path in dropped:
                lg.unlink_segment_files(path)
            io.fsync_dir(lg.seg_dir)
        self.control.publish_epoch()
        logger.log(
            logging.WARNING if saved else logging.INFO,
            "%s: %s; took over at %s@%d (%d bytes past the tail saved in lost+found)",
            lg.directory,
            who,
            seg.path,
            seg.end,
            saved,
        )

    def _leftovers(self) -> tuple[list[str], list[str], list[str]]:
        """Segment files a write-lock holder may leave: later than the active segment (a roll), a ``.tmp``
        (a roll's file not yet named), and below the log start (a retention drop not finished)."""
        lg = self.log
        later, unfinished, dropped = [], [], []
        active, start = lg.active.first, lg.segments[0].first
        for name in sorted(lg.io.listdir(lg.seg_dir)):
            path = os.path.join(lg.seg_dir, name)
            if name.endswith(layout.SEGMENT_EXT + layout.TMP):
                unfinished.append(path)
            elif layout.is_segment_name(name):
                first = layout.segment_first(name)
                if first > active:
                    later.append(path)
                elif first < start:
                    dropped.append(path)
        return later, unfinished, dropped

    # -- waiting ---------------------------------------------------------------------------

    def watch(self) -> None:
        """Start the watcher thread if it is not running (a reader is about to wait)."""
        if self._started():
            return
        with self._lock:
            if self._started():
                return
            thread = threading.Thread(target=self._watch, name="logstore-follower", daemon=True)
            self._watcher = thread
        thread.start()

    def _started(self) -> bool:
        return self._watcher is not None or self._stopping

    def _stop_asked(self) -> bool:
        return self._stopping

    def _watch(self) -> None:
        control = self.control
        futex = control.futex if control.wake_method == WAKE_FUTEX else None
        control.set_watching(True)
        wait = FIRST_WAIT
        failed: str | None = None
        try:
            while not self._stop_asked():
                try:
                    if futex is None:
                        self.refresh()
                        self._stopped.wait(POLL_INTERVAL)
                        continue
                    seen = futex.value
                    self.refresh()
                    if self._stop_asked():
                        break
                    futex.wait(seen, wait)
                    wait = SAFETY_WAIT
                    failed = None
                except Exception as exc:  # noqa: BLE001 - the watcher goes on; waiting readers refresh and meet it
                    if self._stop_asked():
                        break
                    if repr(exc) != failed:
                        failed = repr(exc)
                        logger.error("%s: the follower could not catch up: %r", self.log.directory, exc)
                    self.pub.wake()
                    self._stopped.wait(SAFETY_WAIT)
        finally:
            self._stopped.set()
            if not self._child:
                with contextlib.suppress(ValueError, OSError):
                    control.set_watching(False)

    def close(self) -> None:
        """Stop the watcher and let go of the shared words (before ``CONTROL`` is closed)."""
        self._stopping = True
        thread = self._watcher
        if thread is not None:
            self._stopped.set()
            self.control.wake_always()  # ends its sleep (other processes' watchers look once and sleep again)
            thread.join()
        with self._lock:
            words, self._words = self._words, None
            if words is not None:
                self.pub.counter = [0] * REMOVALS_WORD + [int(words[REMOVALS_WORD]) + 1]  # moved: readers look again
                words.release()

    def drop_in_child(self) -> None:
        """In a forked child: no watcher runs here, and no lock may be taken (a parent thread may have held it)."""
        self._child = True
        self._stopping = True
        self.pub.counter = [0] * (REMOVALS_WORD + 1)  # the child's readers are closed: let go of the mapping
        words, self._words = self._words, None
        if words is not None:
            with contextlib.suppress(BufferError, ValueError):
                words.release()  # else CONTROL's mapping, its descriptor and the parent's locks stay in the child
