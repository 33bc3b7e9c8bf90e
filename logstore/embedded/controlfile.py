"""The shared control file ``<store>/CONTROL``: which processes have the store open.

Every opener of a store (writable, read-only, and ``logstore repair``) joins
the file and stays joined until it closes the store. The layout is in
docs/FORMAT.md ("The CONTROL file"); this version uses its header, its state
word, who initialized it, and its slot table. The file holds no durable data:
it is never synced, and whatever a previous life of the store left in it is
rebuilt by the next opener that finds no other process there.

Joining (:meth:`Control.join`), with the lock bytes of :mod:`logstore.embedded.control`
taken through :meth:`logstore.FileIO.lock_range` (open-file-description locks,
which the kernel drops when their holder dies):

1. Open (create) ``CONTROL`` read-write.
2. Try the dead-man switch (byte :data:`~logstore.embedded.control.LOCK_DMS`)
   exclusively, without waiting. Granted: no live process has the store open,
   so this opener is the *first opener*: it (re)initializes the file whatever
   it holds (reserve its 20,480 bytes, zero them, state ``INITIALIZING``, the
   header with a new random instance, who and when, and last state
   ``READY``), then converts its lock to shared in place (an atomic
   conversion: there is no moment without the lock). A store opens with
   ``hold``: the state becomes ``READY`` and the switch shared only once its
   log is loaded, and a writable store keeps both as they are until another
   opener asks to join (logstore/embedded/alone.py).
3. Not granted: take the switch shared, waiting while a first opener holds it
   exclusively: each refused try adds 1 to :data:`JOIN_ASKED_AT` and pauses
   (0.2 ms, doubling up to 10 ms). Then check the file: size,
   state ``READY``, header (magic, version, checksum), the store id, the slot
   count. A state other than ``READY`` means the process that was initializing
   the file died before it finished: release the switch, pause 1-10 ms and go
   back to 2 (one of the late openers becomes the first). A ``READY`` file that
   fails a check while other processes have the store open was damaged
   under them: :class:`~logstore.errors.CorruptionError` naming ``CONTROL`` and
   the byte (:class:`~logstore.errors.FormatVersionError` for another format
   version, i.e. another version of logstore has the store open). It is never
   rebuilt under live processes: they share it.
4. Claim a slot: the first ``i`` whose byte ``1024 + i`` takes an exclusive
   lock without waiting; write the slot's record (pid, flags, the process's
   start time, when it opened). All 256 taken: :class:`StoreLockedError`.

Holding the switch shared for as long as the store is open is what tells a
later opener that it is not first. Both locks are released by closing the
descriptor (and the mapping's duplicate of it): the kernel drops an OFD lock
at the last close of its open file description, or when its holder dies. A
forked child closes its copies at the fork (:meth:`Control.drop_in_child`)
and never unlocks: an unlock through a descriptor the child shares with the
parent would release the parent's locks.

Who has the store open: a slot is live while its lock byte is held; the
records of live slots say who holds them (:meth:`Control.live_slots`). An OFD
lock does not say who holds it (``F_OFD_GETLK`` reports pid -1), so the pid
comes from the slot's record, with the process's start time against pid reuse.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import random
import struct
import time
from collections.abc import Iterator
from typing import NamedTuple

import xxhash

from logstore.embedded import layout
from logstore.embedded.control import LOCK_COMPACT, LOCK_DMS, LOCK_FLUSH, LOCK_WRITE, Futex, slot_lock_byte
from logstore.embedded.control import available as futex_available
from logstore.embedded.fileio import FileIO, pack_flock, unpack_flock
from logstore.errors import CorruptionError, OutOfSpaceError, StoreLockedError, as_corruption
from logstore.index.header import HEADER_SIZE, ControlHeader

CONTROL_SIZE = 20480
"""The bytes of ``CONTROL`` that are used (5 pages). A longer file is used up to there."""
SLOTS = 256
"""Process slots: at most this many openers at once."""
SLOT_TABLE = 4096
"""Byte position of slot 0's record; slot ``i``'s is at ``SLOT_TABLE + SLOT_SIZE * i``."""
SLOT_SIZE = 64

STATE_AT = 64
"""Byte position of the state word (u64)."""
INIT_PID_AT = 72
INIT_TIME_AT = 80

STATE_EMPTY = 0
STATE_INITIALIZING = 1
STATE_READY = 2
"""Written last by the initializer: the header and every word are set."""

WAKE_NONE = 0
"""The header's wake method (field c) of a file made by an older version: processes do not wake each other."""
WAKE_FUTEX = 1
"""Wake method: a futex on the word at :data:`WAKE_AT` (``FUTEX_WAKE_OP``)."""
WAKE_POLL = 2
"""Wake method: waiters poll the tail (no futex here, or ``LOGSTORE_WAKE=poll``)."""

# The shared words (u64 each, little-endian), written by the writing process, read by every other.
TURNS_AT = 88
"""How many write-lock turns finished (each holder adds 1 before it releases the lock): a holder that finds
the count its own last turn left knows nobody else changed the log or the words since."""
ASKED_AT = 96
"""A u32 that a process adds 1 to (``FUTEX_WAKE_OP``: atomic) before it waits for the write lock, which another
process holds."""
SERVED_AT = 104
"""A u32: how many of those waits ended (the waiter adds 1, atomically, once it holds the lock or gave up). While
it differs from :data:`ASKED_AT` (mod 2**32) a process waits, and a writer that wants the lock queues behind it
rather than take it the moment it is free (:meth:`Control.lock_write`)."""
FLUSHED_AT = 112
"""A u32: how many holders of the flush lock let go of it while another process waited (the holder adds 1 with
``FUTEX_WAKE_OP``, atomic, waking them). Processes that wait for their commits to be durable sleep on it instead of
queueing for the lock, and look at the durable bound again when it changes
(:meth:`logstore.embedded.follow.Follower.flush`)."""
FLUSH_ASKED_AT = 120
"""A u32 that a process adds 1 to (``FUTEX_WAKE_OP``: atomic) before it sleeps on :data:`FLUSHED_AT`."""
FLUSH_SERVED_AT = 296
"""A u32: how many of those sleeps ended (the sleeper adds 1 afterwards). While it equals :data:`FLUSH_ASKED_AT`
(mod 2**32) nobody sleeps, and the holder of the flush lock lets go of it without a wake-up (a system call)."""
WAKE_AT = 128
"""The futex word (u32 in the low half of its u64): every publication adds 1 and wakes its waiters."""
REMOVALS_AT = 136
"""How many truncations, deletions and retention moves were published (readers drop what they decoded ahead)."""
GENERATION_AT = 144
"""The generation of the last checkpoint written (followers then let go of sealed segments' positions)."""
EPOCH_AT = 152
"""Bumped when a segment file is replaced (compaction swap) or a takeover changed segment files."""
DURABLE_AT = 160
"""Every transaction below this global offset is durable (synced)."""
WATCHERS_AT = 168
"""A u32 that a process adds 1 to (``FUTEX_WAKE_OP``: atomic) after it set or cleared :data:`FLAG_WATCHING`."""
INTENT_AT = 176
"""The pid of the write-lock holder while it is in the middle of a turn (0: no turn unfinished).

Set once the holder has caught up, cleared before it releases the lock: the next holder that finds it set
takes over from a holder that died or failed (:meth:`logstore.embedded.follow.Follower._take_over`)."""
UNCHECKED = 1 << 63
"""The intent a read-only first opener leaves: it published the tail without cutting what lies past it (it may
not write), so the first write-lock holder takes over as from a dead one."""
CLEAN_AT = 184
"""1 while ``CHECKPOINT`` says the store was closed cleanly (a writer closed while another stays open clears it
when it next writes: it rewrites the checkpoint as unclean first)."""
TAIL_A = 192
"""Copy A of the tail record (written second); copy B at :data:`TAIL_B` (written first)."""
TAIL_B = 256
_TAIL = struct.Struct("<QQQQ")  # global offset after the last published transaction, its segment, byte end, seq
_TAIL_SUM = struct.Struct("<Q")
TAIL_SIZE = _TAIL.size + _TAIL_SUM.size
_U64 = (1 << 64) - 1
TAIL_READS = 1000
"""How many times a reader reads the two tail copies before it decides the file is damaged."""
JOIN_ASKED_AT = 304
"""A u32 that an opener adds 1 to (``FUTEX_WAKE_OP``: atomic) while it waits for the dead-man switch, which another
opener holds exclusively: a first opener still recovering, or a writer that has the store to itself and lets others
in when asked (:meth:`Control.open_to_others`)."""
JOIN_POLL_FIRST = 0.0002
JOIN_POLL_MAX = 0.01
"""An opener waiting for the dead-man switch tries it again after 0.2 ms, doubling up to 10 ms, and asks again
each time (an ask made while the file was being rebuilt is lost with the old words)."""
FLUSH_WAIT = 0.01
"""The longest wait for a sync to end before looking at the flush lock again (:meth:`Control.wait_flush`): only a
holder that died without counting its sync makes a waiter wait that long."""

FLAG_IN_USE = 1 << 0
FLAG_READONLY = 1 << 1
FLAG_WRITABLE = 1 << 2
FLAG_WANTS_WRITE = 1 << 3
"""Reserved for the shared write lock (never set in this version)."""
FLAG_REPAIR = 1 << 4
"""The slot is held by ``logstore repair``."""
FLAG_WATCHING = 1 << 5
"""The slot's process has a thread sleeping on the wake word (a follower's watcher): publications wake it."""
DURABILITY_SHIFT = 8
DURABILITY_CODES = {"fsync": 1, "batch": 2, "none": 3}
"""A writable opener's durability in bits 8-9 of its flags (0: none, for read-only openers and repair)."""

_SLOT = struct.Struct("<IIQQQQ24x")  # pid, flags, start time, opened ns, applied goff, socket id, reserved
_WORD = struct.Struct("<Q")
_FLAGS = struct.Struct("<I")
assert _SLOT.size == SLOT_SIZE
assert SLOT_TABLE + SLOTS * SLOT_SIZE <= CONTROL_SIZE

JOIN_ATTEMPTS = 100
"""How many times an opener tries to join before giving up (each failed try met a dead initializer)."""

_HINT = "every process that has the store open shares this file; it is rebuilt when all of them have closed the store"
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class Tail(NamedTuple):
    """What readers in every process may read: whole transactions below global offset ``goff``.

    The last of them ends at byte ``position`` of the segment that starts at global offset ``segment``.
    """

    goff: int
    segment: int
    position: int
    seq: int


class SlotInfo(NamedTuple):
    """One live slot of the table: who has the store open, how, and since when."""

    slot: int
    pid: int
    flags: int
    start_time: int
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22); 0 if unknown."""
    opened_ns: int
    """When it opened the store (ns since the epoch)."""

    @property
    def mode(self) -> str:
        """``"writable"``, ``"read-only"``, ``"repair"``, or ``"opening"`` (its record is not written yet)."""
        if self.flags & FLAG_REPAIR:
            return "repair"
        if self.flags & FLAG_WRITABLE:
            return "writable"
        if self.flags & FLAG_READONLY:
            return "read-only"
        return "opening"

    @property
    def durability(self) -> str | None:
        code = (self.flags >> DURABILITY_SHIFT) & 3
        return next((name for name, c in DURABILITY_CODES.items() if c == code), None)


def process_start_time(pid: int | str = "self") -> int:
    """Field 22 of ``/proc/<pid>/stat`` (the start time in clock ticks after boot); 0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        # Field 2 (the command name) is in parentheses and may hold anything: count fields after its end.
        return int(raw[raw.rindex(b")") + 2 :].split()[22 - 3])
    except (OSError, ValueError, IndexError):
        return 0


def _locked_by_other(fd: int, byte: int) -> bool:
    """Whether another open file description holds a lock on ``byte`` of ``fd``'s file (a query: changes nothing)."""
    found = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, pack_flock(fcntl.F_WRLCK, byte))
    return unpack_flock(found)[0] != fcntl.F_UNLCK


class Control:
    """This opener's membership of ``CONTROL``: its descriptor, mapping and slot. Made by :meth:`join`."""

    def __init__(self, io: FileIO, store: str, fd: int) -> None:
        self.io = io
        self.store = store
        self.path = layout.control_path(store)
        self.fd: int | None = fd
        self.mm: mmap.mmap | None = None
        self.slot = -1
        self.first = False
        """Whether this opener initialized the file (it found no other process there)."""
        self.holding = False
        """A first opener that still holds the dead-man switch exclusively (``join(hold=True)``)."""
        self.futex: Futex | None = None
        """The wake-up word (None where the file's wake method is polling)."""
        self.asks: Futex | None = None  # the word a writer waiting for the write lock adds 1 to (ASKED_AT)
        self.served: Futex | None = None  # the word it adds 1 to when it stops waiting (SERVED_AT)
        self.flushed: Futex | None = None  # the word the flush lock's holder adds 1 to when it let go (FLUSHED_AT)
        self._flush_asks: Futex | None = None  # FLUSH_ASKED_AT
        self._flush_served: Futex | None = None  # FLUSH_SERVED_AT
        self.join_asks: Futex | None = None
        """The word openers waiting for the dead-man switch add 1 to (:data:`JOIN_ASKED_AT`)."""
        self.wake_method = WAKE_NONE
        self._seq = 0
        self._leaving = False  # close() began: the file is not mapped again
        self._watchers_futex: Futex | None = None
        self._watchers_seen = -1  # WATCHERS_AT when the slot table was last searched for watchers
        self._watched = True  # whether some slot was watching then

    # -- joining ----------------------------------------------------------------------------

    @classmethod
    def join(
        cls, io: FileIO, store: str, store_id: bytes, flags: int, alone: bool = False, hold: bool = False
    ) -> Control:
        """Join ``CONTROL`` of the store in directory ``store`` (see the module docstring); ``flags`` for the slot.

        ``hold``: a first opener keeps the dead-man switch exclusive until :meth:`open_to_others`, so that
        later openers wait while it recovers the log and publishes its tail.

        ``alone`` (``logstore repair``): the opener must be the first; if another process has the store
        open, :class:`StoreLockedError` naming the pids found in the slot table. Raises
        :class:`StoreLockedError` when every slot is taken, :class:`CorruptionError` for a damaged file
        that live processes share, :class:`OutOfSpaceError` when the file's bytes cannot be reserved.
        """
        fd = io.open(layout.control_path(store), os.O_RDWR | os.O_CREAT)
        control = cls(io, store, fd)
        try:
            control._take_switch(store_id, alone, hold)
            control._claim_slot(flags)
            control._make_futex()
        except BaseException:
            control.close(clear_slot=False)
            raise
        return control

    def _take_switch(self, store_id: bytes, alone: bool, hold: bool) -> None:
        io, fd = self.io, self._fd()
        for _attempt in range(JOIN_ATTEMPTS):
            if io.lock_range(fd, LOCK_DMS, True, False):
                self._initialize(store_id, ready=not hold)
                if not hold:
                    io.lock_range(fd, LOCK_DMS, False, False)  # converted in place: always granted
                self.first = True
                self.holding = hold
                return
            if alone:
                raise StoreLockedError(f"{self.store}: {self._holders()}; repair needs the store to itself")
            self._wait_for_switch()  # while a first opener initializes, or a writer has the store to itself
            if self._ready(store_id):
                return
            # Its initializer died before it finished: let one of the late openers be the first.
            io.unlock_range(fd, LOCK_DMS)
            time.sleep(random.uniform(0.001, 0.01))
        raise StoreLockedError(
            f"{self.path}: could not join the processes that have the store open: the file was not ready "
            f"after {JOIN_ATTEMPTS} tries (processes that set it up keep dying?)"
        )

    def _wait_for_switch(self) -> None:
        """Take the dead-man switch shared, waiting while another opener holds it exclusively.

        That opener is a first opener that still recovers the log (it lets others in when it is done), or a
        writer that kept the store to itself (:meth:`can_keep_alone`), which lets others in when asked. So each try
        that fails asks (:data:`JOIN_ASKED_AT`, with ``FUTEX_WAKE_OP``), once the file is long enough to hold
        the word, then pauses (0.2 ms, doubling up to 10 ms) and tries again. An ask made while the file is
        being rebuilt may be lost with the old words; the next try asks again.
        """
        io, fd = self.io, self._fd()
        pause = JOIN_POLL_FIRST
        asks: Futex | None = None
        try:
            while not io.lock_range(fd, LOCK_DMS, False, False):
                if asks is None and futex_available() and io.size(fd) >= CONTROL_SIZE:
                    asks = Futex(fd, JOIN_ASKED_AT)
                if asks is not None:
                    asks.wake()
                time.sleep(pause)
                pause = min(pause * 2, JOIN_POLL_MAX)
        finally:
            if asks is not None:
                asks.close()

    def _initialize(self, store_id: bytes, ready: bool) -> None:
        """Rebuild the file from nothing (the switch held exclusively: no other process has the store open)."""
        io, fd = self.io, self._fd()
        try:
            io.fallocate(fd, 0, CONTROL_SIZE)  # reserved, so that no store into the mapping meets a full disk
        except OSError as exc:
            if exc.errno in _NO_SPACE_ERRNOS:
                free = io.free_space(self.store)
                raise OutOfSpaceError(
                    self.path, CONTROL_SIZE, exc.errno, "reserving the control file", free, None, exc.strerror
                ) from exc
            raise
        mm = self._map()
        mm[:CONTROL_SIZE] = bytes(CONTROL_SIZE)
        _WORD.pack_into(mm, STATE_AT, STATE_INITIALIZING)
        instance = int.from_bytes(os.urandom(8), "little")
        wake = WAKE_FUTEX if futex_available() and os.environ.get("LOGSTORE_WAKE") != "poll" else WAKE_POLL
        mm[:HEADER_SIZE] = ControlHeader(store_id, instance, SLOTS, wake).encode()
        _WORD.pack_into(mm, INIT_PID_AT, os.getpid())
        _WORD.pack_into(mm, INIT_TIME_AT, time.time_ns())
        if ready:
            _WORD.pack_into(mm, STATE_AT, STATE_READY)

    def _ready(self, store_id: bytes) -> bool:
        """Check the file the first opener set up (the switch held shared); False if it never finished."""
        if self.io.size(self._fd()) < CONTROL_SIZE:
            return False
        mm = self._map()
        (state,) = _WORD.unpack_from(mm, STATE_AT)
        if state != STATE_READY:
            self._unmap()
            return False
        with as_corruption(self.path, "control file header: ", _HINT):
            header = ControlHeader.decode(mm[:HEADER_SIZE])
        if header.store_id != store_id:
            raise CorruptionError(self.path, 16, "control file's store id differs from the store's", _HINT)
        if header.slots != SLOTS:
            raise CorruptionError(self.path, 40, f"control file has {header.slots} slots, expected {SLOTS}", _HINT)
        if header.wake not in (WAKE_FUTEX, WAKE_POLL):
            raise CorruptionError(self.path, 48, f"control file names wake method {header.wake}", _HINT)
        return True

    def _claim_slot(self, flags: int) -> None:
        io, fd = self.io, self._fd()
        for i in range(SLOTS):
            if io.lock_range(fd, slot_lock_byte(i), True, False):
                break
        else:
            raise StoreLockedError(
                f"{self.store}: {SLOTS} processes (or open stores) have the store open already, "
                f"the most its control file has room for"
            )
        self.slot = i
        record = (os.getpid(), flags | FLAG_IN_USE, process_start_time(), time.time_ns(), 0, 0)
        _SLOT.pack_into(self._map(), SLOT_TABLE + SLOT_SIZE * i, *record)

    def _holders(self) -> str:
        """Who has the store open, for an error message: the pids of the live slots' records."""
        slots = self.live_slots()
        pids = sorted({s.pid for s in slots if s.pid})
        if not pids:
            return "another process has the store open (it is still opening: no process is listed yet)"
        listed = ", ".join(f"{s.pid} ({s.mode})" for s in sorted(slots, key=lambda s: s.pid) if s.pid)
        if len(pids) > 1:
            return f"other processes have the store open: pids {listed}"
        return f"process {listed} has the store open"

    def _make_futex(self) -> None:
        """Take the wake method from the header; map the futex word when it is the futex."""
        mm = self._map()
        self.wake_method = ControlHeader.decode(mm[:HEADER_SIZE]).wake
        if self.wake_method == WAKE_FUTEX:
            if not futex_available():  # the file's initializer could use one and this process cannot
                raise StoreLockedError(
                    f"{self.path}: the processes that have the store open wake each other with a futex, "
                    "which this process cannot use; open the store where they run"
                )
            self.futex = Futex(self._fd(), WAKE_AT)
            self.asks = Futex(self._fd(), ASKED_AT)
            self.served = Futex(self._fd(), SERVED_AT)
            self.flushed = Futex(self._fd(), FLUSHED_AT)
            self._flush_asks = Futex(self._fd(), FLUSH_ASKED_AT)
            self._flush_served = Futex(self._fd(), FLUSH_SERVED_AT)
            self.join_asks = Futex(self._fd(), JOIN_ASKED_AT)

    def can_keep_alone(self) -> bool:
        """Whether this opener may keep the store to itself after its load, holding on to the dead-man switch
        exclusively until another opener asks to join (:data:`JOIN_ASKED_AT`): it is the first opener, still
        holds the switch so, and others can ask (the futex). It then calls :meth:`open_to_others`."""
        return self.holding and self.join_asks is not None

    def open_to_others(self) -> None:
        """A first opener that held the dead-man switch (``join(hold=True)``): convert it to shared now.

        Also how a writer that kept the store to itself lets others in when one asks: from then on it takes
        turns under the write lock like any writer of a shared store."""
        if self.holding:
            # Ready only now: an opener that waited for the switch while this one recovered the log finds
            # it so; if this one dies first, the state stays INITIALIZING and a waiter becomes the first.
            _WORD.pack_into(self._map(), STATE_AT, STATE_READY)
            self.io.lock_range(self._fd(), LOCK_DMS, False, False)  # converted in place: always granted
            self.holding = False

    # -- the shared words ---------------------------------------------------------------------

    def word(self, at: int) -> int:
        (value,) = _WORD.unpack_from(self._map(), at)
        return int(value)

    def set_word(self, at: int, value: int) -> None:
        """Store one shared word (one aligned 8-byte store; only the writing process stores words)."""
        _WORD.pack_into(self._map(), at, value)

    def publish_tail(self, goff: int, segment: int, position: int) -> None:
        """Publish the tail: copy B, then copy A, each with its checksum (writing process only)."""
        mm = self._map()
        self._seq += 1
        raw = _TAIL.pack(goff, segment, position, self._seq)
        rec = raw + _TAIL_SUM.pack(xxhash.xxh3_64_intdigest(raw))
        mm[TAIL_B : TAIL_B + TAIL_SIZE] = rec
        mm[TAIL_A : TAIL_A + TAIL_SIZE] = rec

    def publish_removal(self) -> None:
        """Count a published removal (after the tail that holds its record)."""
        self.set_word(REMOVALS_AT, (self.word(REMOVALS_AT) + 1) & _U64)

    def publish_durable(self, goff: int) -> None:
        """Every transaction below ``goff`` is durable (after an fdatasync); the bound never goes down.

        A read, a comparison and a store: the caller holds the flush lock (or no other process has the store
        open yet), so no other process raises the bound between them. A writer that synced in its turn
        without the flush lock calls :meth:`raise_durable`."""
        if goff > self.word(DURABLE_AT):
            self.set_word(DURABLE_AT, goff)

    def raise_durable(self, goff: int) -> None:
        """:meth:`publish_durable` under the flush lock (a sync made in a write-lock turn, outside it)."""
        self.lock_flush()
        try:
            self.publish_durable(goff)
        finally:
            self.unlock_flush()

    # -- the write lock ----------------------------------------------------------------------

    def lock_write(self) -> bool:
        """Take the write lock (byte :data:`~logstore.embedded.control.LOCK_WRITE`), waiting for its holder; returns
        whether it had to wait. Before waiting, ask for it (:data:`ASKED_AT`); once it holds the lock after
        asking, count the ask served (:data:`SERVED_AT`)."""
        fd = self._fd()
        asks, served = self.asks, self.served
        # While another process waits for the lock, queue behind it rather than take the lock the moment it
        # is free: a busy writer that let go of it would otherwise take it again before the waiter wakes.
        queued = asks is not None and served is not None and asks.value != served.value
        if not queued and self.io.lock_range(fd, LOCK_WRITE, True, False):
            return False
        if asks is None or served is None:
            self.io.lock_range(fd, LOCK_WRITE, True, True)
            return True
        asks.wake()
        try:
            self.io.lock_range(fd, LOCK_WRITE, True, True)
        finally:
            served.wake()  # granted, or given up (an interrupt): no longer waiting either way
        return True

    def unlock_write(self) -> None:
        self.io.unlock_range(self._fd(), LOCK_WRITE)

    def lock_flush(self) -> None:
        """Take the flush lock (byte :data:`~logstore.embedded.control.LOCK_FLUSH`), waiting while another syncs."""
        self.io.lock_range(self._fd(), LOCK_FLUSH, True, True)

    def unlock_flush(self) -> None:
        """Release the flush lock; if a process sleeps in :meth:`wait_flush`, count the sync and wake it."""
        self.io.unlock_range(self._fd(), LOCK_FLUSH)
        flushed, asks, served = self.flushed, self._flush_asks, self._flush_served
        if flushed is not None and asks is not None and served is not None and asks.value != served.value:
            flushed.wake()

    def flushes(self) -> int | None:
        """The count of syncs that ended (:data:`FLUSHED_AT`), to give :meth:`wait_flush`; None without the futex."""
        flushed = self.flushed
        return None if flushed is None else flushed.value

    def wait_flush(self, seen: int | None) -> None:
        """Sleep until the holder of the flush lock lets go of it, unless it is free now.

        ``seen`` is :meth:`flushes` as the caller read it before it found the lock held. Steps: (1) ask (add 1
        to :data:`FLUSH_ASKED_AT`), so that a holder that lets go after this wakes this process; (2) if the
        lock is free now (the holder let go before it could see the ask), return; (3) sleep while the count
        equals ``seen``, at most :data:`FLUSH_WAIT` (a holder that died lets go without a wake-up); (4) count
        the ask served. Without the futex: wait for the lock itself and let go of it.
        """
        fd = self._fd()
        flushed, asks, served = self.flushed, self._flush_asks, self._flush_served
        if flushed is None or asks is None or served is None or seen is None:
            self.io.lock_range(fd, LOCK_FLUSH, True, True)
            self.io.unlock_range(fd, LOCK_FLUSH)
            return
        asks.wake()
        try:
            if _locked_by_other(fd, LOCK_FLUSH):
                flushed.wait(seen, FLUSH_WAIT)
        finally:
            served.wake()

    def _flush_words(self) -> tuple[Futex | None, Futex | None, Futex | None]:
        return self.flushed, self._flush_asks, self._flush_served

    def try_lock_flush(self) -> bool:
        """Take the flush lock if no one holds it; whether it did."""
        return self.io.lock_range(self._fd(), LOCK_FLUSH, True, False)

    def write_held(self) -> bool:
        """Whether another opener holds the write lock now (a query: changes nothing)."""
        return _locked_by_other(self._fd(), LOCK_WRITE)

    @contextlib.contextmanager
    def compacting(self) -> Iterator[None]:
        """Hold the compaction lock (byte :data:`~logstore.embedded.control.LOCK_COMPACT`): one compaction per store,
        across processes (they share the ``.compact`` file names)."""
        self.io.lock_range(self._fd(), LOCK_COMPACT, True, True)
        try:
            yield
        except BaseException:
            with contextlib.suppress(OSError):  # the compaction's error is the one to report
                self.io.unlock_range(self._fd(), LOCK_COMPACT)
            raise
        self.io.unlock_range(self._fd(), LOCK_COMPACT)

    def writers(self) -> int:
        """How many live slots other than this opener's are writable stores."""
        return sum(1 for s in self.live_slots() if s.flags & FLAG_WRITABLE and s.slot != self.slot)

    def publish_epoch(self) -> None:
        """A segment file was replaced (a compaction swap): followers open the new file in place of theirs."""
        self.set_word(EPOCH_AT, (self.word(EPOCH_AT) + 1) & _U64)

    def publish_generation(self, generation: int) -> None:
        """A checkpoint of ``generation`` was written."""
        self.set_word(GENERATION_AT, generation)

    def tail(self) -> Tail | None:
        """The published tail: copy A if its checksum holds, else copy B, else read again.

        Either complete copy is a tail that was published: a prefix of the log of whole transactions.
        ``None`` if none was ever published (both copies zero: only ``logstore repair`` has the file).
        Raises :class:`CorruptionError` if neither copy holds after :data:`TAIL_READS` reads.
        """
        mm = self._map()
        zero = bytes(TAIL_SIZE)
        for _ in range(TAIL_READS):
            blank = 0
            for at in (TAIL_A, TAIL_B):
                rec = mm[at : at + TAIL_SIZE]
                (stored,) = _TAIL_SUM.unpack_from(rec, _TAIL.size)
                if xxhash.xxh3_64_intdigest(rec[: _TAIL.size]) == stored:
                    return Tail(*_TAIL.unpack_from(rec))
                blank += rec == zero
            if blank == 2:
                return None
            time.sleep(0)
        raise CorruptionError(self.path, TAIL_A, "neither copy of the tail record passes its checksum", _HINT)

    def wake(self) -> None:
        """Wake every process waiting for a publication (a no-op with the polling method, or when no
        slot is watching: the writer's per-commit cost, a system call, is then spared).

        Which slots watch is searched again only when :data:`WATCHERS_AT` changed, which a process
        does after it set or cleared :data:`FLAG_WATCHING` in its own slot record. A watcher sets the
        flag before its first sleep, and that sleep is short (:data:`logstore.embedded.follow.FIRST_WAIT`), so
        a writer that read the old count just then delays it by that much at most, once.
        """
        futex = self.futex
        if futex is None:
            return
        seen = self.word(WATCHERS_AT) & 0xFFFFFFFF
        if seen != self._watchers_seen:
            self._watchers_seen = seen
            self._watched = self._someone_watching()
        if self._watched:
            futex.wake()

    def wake_always(self) -> None:
        """Wake every thread sleeping on the wake word, watching or not (a closing follower's own watcher)."""
        futex = self.futex
        if futex is not None:
            futex.wake()

    def _someone_watching(self) -> bool:
        mm = self._map()
        for i in range(SLOTS):
            (flags,) = _FLAGS.unpack_from(mm, SLOT_TABLE + SLOT_SIZE * i + 4)
            if flags & FLAG_WATCHING:
                return True
        return False

    def set_watching(self, on: bool) -> None:
        """Set or clear :data:`FLAG_WATCHING` in this opener's slot, then count the change for writers."""
        if self.futex is None or self.slot < 0:
            return
        mm = self._map()
        at = SLOT_TABLE + SLOT_SIZE * self.slot + 4
        (flags,) = _FLAGS.unpack_from(mm, at)
        _FLAGS.pack_into(mm, at, flags | FLAG_WATCHING if on else flags & ~FLAG_WATCHING)
        if self._watchers_futex is None:
            self._watchers_futex = Futex(self._fd(), WATCHERS_AT)
        self._watchers_futex.wake()  # an atomic +1 (a system call: every store above is visible first)

    # -- reading ----------------------------------------------------------------------------

    def live_slots(self) -> list[SlotInfo]:
        """The slots held now (this opener's included), in slot order; empty if the file is not set up."""
        fd = self._fd()
        if self.mm is None and self.io.size(fd) < CONTROL_SIZE:
            return []
        mm = self._map()
        out = []
        for i in range(SLOTS):
            if i == self.slot or _locked_by_other(fd, slot_lock_byte(i)):
                pid, flags, start, opened, _goff, _socket = _SLOT.unpack_from(mm, SLOT_TABLE + SLOT_SIZE * i)
                out.append(SlotInfo(i, pid, flags, start, opened))
        return out

    # -- leaving ----------------------------------------------------------------------------

    def close(self, clear_slot: bool = True) -> None:
        """Leave: clear this opener's slot record (``clear_slot``), unmap, close; the kernel drops the locks.

        ``clear_slot=False`` leaves the file as a death would (crash tests' ``_abandon``).
        """
        self._leaving = True
        mm, self.mm = self.mm, None
        fd, self.fd = self.fd, None
        for futex in (self.futex, self._watchers_futex, self.asks, self.served, self.join_asks, *self._flush_words()):
            if futex is not None:
                futex.close()
        self.futex = self._watchers_futex = self.asks = self.served = self.join_asks = None
        self.flushed = self._flush_asks = self._flush_served = None
        try:
            if mm is not None:
                if clear_slot and self.slot >= 0:
                    _SLOT.pack_into(mm, SLOT_TABLE + SLOT_SIZE * self.slot, 0, 0, 0, 0, 0, 0)
                mm.close()
        finally:
            if fd is not None:
                self.io.close(fd)

    def drop_in_child(self) -> None:
        """In a forked child: close the child's copies of the mapping and descriptor; never unlock, never write.

        The mapping holds a duplicate of the descriptor (the same open file description as the parent's), so
        it is closed too, else the child would keep the parent's locks alive after the parent closed the store.
        """
        self._leaving = True
        mm, self.mm = self.mm, None
        fd, self.fd = self.fd, None
        for futex in (self.futex, self._watchers_futex, self.asks, self.served, self.join_asks, *self._flush_words()):
            if futex is not None:
                futex.close()  # an munmap of this process's page: the parent's mapping is its own
        self.futex = self._watchers_futex = self.asks = self.served = self.join_asks = None
        self.flushed = self._flush_asks = self._flush_served = None
        if mm is not None:
            with contextlib.suppress(BufferError, ValueError, OSError):
                mm.close()
        if fd is not None:
            with contextlib.suppress(OSError):
                self.io.close(fd)

    # -- helpers ----------------------------------------------------------------------------

    def _fd(self) -> int:
        if self.fd is None:
            raise ValueError(f"{self.path}: used after close()")
        return self.fd

    def _map(self) -> mmap.mmap:
        if self.mm is None:
            if self._leaving:
                raise ValueError(f"{self.path}: used after close()")
            self.mm = self.io.mmap_shared(self._fd(), CONTROL_SIZE)
        return self.mm

    def _unmap(self) -> None:
        mm, self.mm = self.mm, None
        if mm is not None:
            mm.close()


def slot_flags(readonly: bool, durability: str | None = None, repair: bool = False) -> int:
    """The flags of an opener's slot record."""
    if repair:
        return FLAG_REPAIR
    if readonly:
        return FLAG_READONLY
    return FLAG_WRITABLE | (DURABILITY_CODES.get(durability or "", 0) << DURABILITY_SHIFT)
