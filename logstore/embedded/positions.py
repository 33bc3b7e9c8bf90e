"""The ``SUBSCRIPTIONS`` file: an embedded store's durable subscriptions and their members' positions.

Layout (docs/FORMAT.md, section 12b): a 4096-byte first block holding the common 64-byte header
(magic ``LGSUBSCR``, field a = the slot size, 4096) and, from byte 64, the *intent* of an operation
in progress; then one 4096-byte slot per member of a subscription. Slot ``i`` starts at byte
``4096 * (i + 1)``::

    offset size type   field
    0      8    u64    xxh3-64 of bytes 8 .. 24 + L of the slot (the definition's checksum)
    8      4    u32    L: the definition's length (L = 0 and checksum 0: a free slot)
    12     4    u32    member
    16     8    u64    generation: random, not 0, the same in every member of one subscription
    24     L    bytes  msgpack [name, category or nil, sorted types or nil, group size]
    4032   32   copy A of the position
    4064   32   copy B of the position

A position copy is ``<QQQQ``: xxh3-64 of the next 24 bytes, generation, sequence, position. All zero
bytes mean "never acknowledged" (sequence 0, position 0). An acknowledgement writes sequence + 1
into copy ``sequence % 2``, so that the other copy keeps the last position whole: after a crash in
the middle of a write, the valid copy with the highest sequence is the position (the old one or the
new one, never a damaged one).

Making or freeing slots is three steps, each synced: the intent (which slots, checksummed), the slots
(written whole, or their first 16 bytes zeroed), the intent cleared. The slots an intent lists read
as free, and the next exclusive holder of byte 0 frees them and clears it: a crash leaves every slot
free or whole, and a damaged byte of a whole slot is never mistaken for a write cut short.

Locks (open-file-description locks on one byte, ``FileIO.lock_range``): byte 0 is held exclusively
while slots are created, freed or mended, and shared while they are read; the first byte of a slot
is held exclusively by the open subscription that consumes the member (each through its own
descriptor, so that two subscriptions of one process exclude each other too). A process that dies
drops its locks.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import msgpack
import xxhash

from logstore.embedded.fileio import FileIO
from logstore.embedded.layout import SUBSCRIPTIONS
from logstore.errors import CorruptionError, FormatVersionError, StreamClosedError, SubscriptionBusyError
from logstore.index.errors import FormatError, UnsupportedVersionError
from logstore.index.header import HEADER_SIZE, MAGIC_SUBSCRIPTIONS, Header, decode_header, encode_header
from logstore.results import SubscriptionInfo
from logstore.subscriptions import Definition, info_of

logger = logging.getLogger("logstore")

SLOT = 4096
"""Bytes per slot, and of the first block (the header and zeros)."""
_HEAD = struct.Struct("<QIIQ")  # definition checksum, L, member, generation
INTENT_AT = 64
"""Where the first block holds the intent: the slots an operation is making or freeing, until it is done."""
_INTENT = struct.Struct("<QIIQ")  # checksum of the rest, kind, count, generation; then count u32 slot indexes
MAKING, FREEING = 1, 2
MAX_INTENT = (SLOT - INTENT_AT - _INTENT.size) // 4
"""Most slots one intent lists (1,000): a larger group is made by several operations."""
COPY = struct.Struct("<QQQQ")  # checksum, generation, sequence, position
COPY_A = SLOT - 2 * COPY.size  # 4032
COPY_B = SLOT - COPY.size  # 4064
MAX_DEFINITION = COPY_A - _HEAD.size
"""Longest encoded definition: 4008 bytes."""
_DEFS_LOCK = 0


def slot_offset(index: int) -> int:
    return SLOT * (index + 1)


def encode_definition(definition: Definition) -> bytes:
    types = None if definition.types is None else sorted(definition.types)
    body: bytes = msgpack.packb([definition.name, definition.category, types, definition.size])
    return body


def encode_copy(generation: int, sequence: int, position: int) -> bytes:
    body = struct.pack("<QQQ", generation, sequence, position)
    return struct.pack("<Q", xxhash.xxh3_64_intdigest(body)) + body


def encode_intent(kind: int, generation: int, indexes: list[int]) -> bytes:
    rest = struct.pack(f"<IIQ{len(indexes)}I", kind, len(indexes), generation, *indexes)
    return struct.pack("<Q", xxhash.xxh3_64_intdigest(rest)) + rest


def read_intent(raw: bytes) -> tuple[int, int, list[int]] | None:
    """The intent at the start of ``raw`` (the first block from byte 64): (kind, generation, slot indexes), or
    None when there is none whole (cleared, never written, or its own write cut short: nothing followed it)."""
    checksum, kind, count, generation = _INTENT.unpack_from(raw)
    if checksum == 0 or kind not in (MAKING, FREEING) or count > MAX_INTENT:
        return None
    end = _INTENT.size + 4 * count
    if checksum != xxhash.xxh3_64_intdigest(raw[8:end]):
        return None
    return kind, generation, list(struct.unpack_from(f"<{count}I", raw, _INTENT.size))


@dataclass
class Slot:
    """One slot as read: free (``definition`` None), whole, or damaged (``damage`` says how)."""

    index: int
    definition: Definition | None
    member: int
    generation: int
    sequence: int  # of the position's valid copy with the highest sequence
    position: int
    damage: str | None = None  # what is wrong, at byte ``damage_at`` of the file
    damage_at: int = 0


def read_slot(raw: bytes, index: int) -> Slot:
    """Decode one slot's bytes (a short last slot reads as if padded with zeros)."""
    if len(raw) < SLOT:
        raw = raw + bytes(SLOT - len(raw))
    base = slot_offset(index)
    checksum, length, member, generation = _HEAD.unpack_from(raw)
    if length == 0 and checksum == 0:
        return Slot(index, None, 0, 0, 0, 0)
    if length > MAX_DEFINITION or checksum != xxhash.xxh3_64_intdigest(raw[8 : _HEAD.size + length]):
        return Slot(index, None, member, generation, 0, 0, "subscription definition checksum mismatch", base)
    try:
        fields = msgpack.unpackb(raw[_HEAD.size : _HEAD.size + length])
        name, category, types, size = fields
        definition = Definition(name, category, None if types is None else frozenset(types), size)
        if type(name) is not str or not 0 <= member < size:
            raise ValueError(f"member {member} of a group of {size}")
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        return Slot(index, None, member, generation, 0, 0, f"subscription definition does not decode: {exc}", base)
    best: tuple[int, int] | None = None  # (sequence, position) of the newest valid copy
    for at in (COPY_A, COPY_B):
        copy = raw[at : at + COPY.size]
        if copy == bytes(COPY.size):
            found = (0, 0)
        else:
            check, gen, seq, pos = COPY.unpack(copy)
            if check != xxhash.xxh3_64_intdigest(copy[8:]) or gen != generation:
                continue
            found = (seq, pos)
        if best is None or found[0] > best[0]:
            best = found
    if best is None:
        what = f"both copies of the position of subscription {definition.name!r} member {member} are damaged"
        return Slot(index, definition, member, generation, 0, 0, what, base + COPY_A)
    return Slot(index, definition, member, generation, best[0], best[1])


class MemberClaim:
    """One member of a subscription held by an open subscription: its own descriptor holds the slot's lock."""

    def __init__(self, definition: Definition, member: int, slot: Slot, fd: int) -> None:
        self.definition = definition
        self.member = member
        self.position = slot.position
        self.index = slot.index
        self.generation = slot.generation
        self.sequence = slot.sequence
        self.fd: int | None = fd
        self.unsynced = False
        # An ack and a close() (or the store's) from another thread: the descriptor is never used once closed.
        self.lock = threading.Lock()


class SubscriptionFile:
    """The store's ``SUBSCRIPTIONS`` file (:class:`logstore.subscriptions.Positions` of the embedded store).

    ``durability`` and ``fsync_interval`` are the store's: with "fsync" an acknowledgement is made
    durable before it returns; with "batch" at the first later one ``fsync_interval`` after the last
    sync, and when the member is released; with "none" never by logstore. ``before_save(position)``
    is called before a position is written (the store makes its log durable up to it first, so that
    a saved position never points past what a machine crash keeps of the log).
    """

    def __init__(
        self,
        io: FileIO,
        store_path: str,
        store_id: bytes,
        durability: str,
        fsync_interval: float,
        before_save: Callable[[int], None],
    ) -> None:
        self.io = io
        self.store_path = store_path
        self.path = os.path.join(store_path, SUBSCRIPTIONS)
        self.store_id = store_id
        self.durability = durability
        self.fsync_interval = fsync_interval
        self.before_save = before_save
        self._mutex = threading.Lock()  # OFD locks do not exclude the threads sharing one descriptor
        self._claims: set[MemberClaim] = set()
        self.forked: Callable[[], Exception] | None = None  # in a forked child: the error its acks raise
        self._last_sync = time.monotonic()
        self._timer: threading.Timer | None = None  # with "batch": the sync of the acks left unsynced
        self._timer_lock = threading.Lock()

    # -- the file -------------------------------------------------------------------------------

    def _open(self, create: bool) -> int | None:
        """A descriptor of the file (read-write, made if missing, with ``create``), or None when there is none."""
        if create:
            return self.io.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            return self.io.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    @contextmanager
    def _locked(self, create: bool, exclusive: bool) -> Iterator[int | None]:
        """The file's descriptor with byte 0 locked; None when there is no file (or only an unfinished one) and
        ``create`` is False. With ``create``, a missing or unfinished file gets its first block."""
        with self._mutex:
            fd = self._open(create)
            if fd is None:
                yield None
                return
            try:
                self.io.lock_range(fd, _DEFS_LOCK, exclusive=exclusive, wait=True)
                if not self._header_whole(fd):
                    if not create:
                        yield None
                        return
                    self._write_first_block(fd)
                elif exclusive:
                    self._finish(fd)
                yield fd
            finally:
                self.io.close(fd)  # drops the locks this descriptor took

    def _write_first_block(self, fd: int) -> None:
        """Write the header block of a new file (or of one whose making a crash cut short), durably."""
        block = encode_header(Header(MAGIC_SUBSCRIPTIONS, self.store_id, SLOT, 0, 0))
        self.io.pwrite(fd, block + bytes(SLOT - HEADER_SIZE), 0)
        self.io.fdatasync(fd)
        self.io.fsync_dir(self.store_path)

    def _header_whole(self, fd: int) -> bool:
        """Whether the header is this store's; False for a file whose making was cut short (no slot yet: its
        first block, written and synced before any slot, did not reach the disk whole). Raises for damage."""
        raw = self.io.pread(fd, HEADER_SIZE, 0)
        try:
            _check_header_bytes(raw, self.store_id)
        except UnsupportedVersionError as exc:
            raise FormatVersionError(self.path, exc.position, exc.what) from None
        except FormatError as exc:
            if self.io.size(fd) <= SLOT:
                return False
            hint = "a file of another store" if exc.position == 16 else "run logstore repair"
            raise CorruptionError(self.path, exc.position, exc.what, hint) from None
        return True

    def _slots(self, fd: int) -> list[Slot]:
        """Every slot; those an unfinished operation's intent lists read as free."""
        size = self.io.size(fd)
        count = max(0, (size - SLOT + SLOT - 1) // SLOT)
        raw = self.io.pread(fd, count * SLOT, SLOT) if count else b""
        intent = read_intent(self.io.pread(fd, SLOT - INTENT_AT, INTENT_AT))
        unfinished = set() if intent is None else set(intent[2])
        return [
            Slot(i, None, 0, 0, 0, 0) if i in unfinished else read_slot(raw[i * SLOT : (i + 1) * SLOT], i)
            for i in range(count)
        ]

    def _damage(self, slot: Slot) -> CorruptionError:
        assert slot.damage is not None
        return CorruptionError(self.path, slot.damage_at, slot.damage, "run logstore repair")

    # -- Positions ------------------------------------------------------------------------------

    def claim(self, definition: Definition, member: int) -> MemberClaim:
        io = self.io
        with self._locked(create=True, exclusive=True) as fd:
            assert fd is not None
            slots = self._slots(fd)
            mine: dict[int, Slot] = {}
            for slot in slots:
                if slot.definition is not None and slot.definition.name == definition.name:
                    if slot.damage is not None:
                        raise self._damage(slot)
                    mine[slot.member] = slot
                elif slot.damage is not None and slot.definition is None:
                    raise self._damage(slot)  # a damaged definition may be this one's
            if mine:
                saved = next(iter(mine.values()))
                assert saved.definition is not None
                why = saved.definition.mismatch(definition)
                if why is not None:
                    raise ValueError(why)
                generation = saved.generation
            else:
                generation = int.from_bytes(os.urandom(8), "little") or 1
            missing = [m for m in range(definition.size) if m not in mine]
            if missing:
                mine.update(self._create(fd, slots, definition, generation, missing))
            slot = mine[member]
            claim_fd = io.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            try:
                if not io.lock_range(claim_fd, slot_offset(slot.index), exclusive=True, wait=False):
                    raise SubscriptionBusyError(
                        definition.name,
                        member,
                        f"{self.path}: subscription {definition.name!r} member {member} is open already"
                        " (in this process or another); close that subscription first",
                    )
            except BaseException:
                io.close(claim_fd)
                raise
            claim = MemberClaim(definition, member, slot, claim_fd)
            self._claims.add(claim)
            return claim

    def _create(
        self, fd: int, slots: list[Slot], definition: Definition, generation: int, members: list[int]
    ) -> dict[int, Slot]:
        body = encode_definition(definition)
        if len(body) > MAX_DEFINITION:
            raise ValueError(
                f"subscription {definition.name!r}: its name, category and types take {len(body)} bytes"
                f" encoded, the limit is {MAX_DEFINITION}"
            )
        free = [slot.index for slot in slots if slot.definition is None and slot.damage is None]
        end = len(slots)
        made: dict[int, Slot] = {}
        for first in range(0, len(members), MAX_INTENT):
            part = members[first : first + MAX_INTENT]
            indexes = []
            for _member in part:
                if free:
                    indexes.append(free.pop(0))
                else:
                    indexes.append(end)
                    end += 1
            # 1. The intent, synced: a crash from here until it is cleared leaves these slots free.
            self._write_intent(fd, MAKING, generation, indexes)
            # 2. The slots, whole, synced.
            for member, index in zip(part, indexes, strict=True):
                head = _HEAD.pack(0, len(body), member, generation)
                slot_bytes = bytearray(SLOT)
                slot_bytes[: _HEAD.size] = head
                slot_bytes[_HEAD.size : _HEAD.size + len(body)] = body
                slot_bytes[:8] = xxhash.xxh3_64_intdigest(bytes(slot_bytes[8 : _HEAD.size + len(body)])).to_bytes(
                    8, "little"
                )
                self.io.pwrite(fd, bytes(slot_bytes), slot_offset(index))
                made[member] = Slot(index, definition, member, generation, 0, 0)
            self.io.fdatasync(fd)
            # 3. The intent cleared, synced: the slots are in use.
            self._clear_intent(fd)
        return made

    def _write_intent(self, fd: int, kind: int, generation: int, indexes: list[int]) -> None:
        self.io.pwrite(fd, encode_intent(kind, generation, indexes), INTENT_AT)
        self.io.fdatasync(fd)

    def _clear_intent(self, fd: int) -> None:
        self.io.pwrite(fd, bytes(8), INTENT_AT)
        self.io.fdatasync(fd)

    def _finish(self, fd: int) -> None:
        """Finish an operation a crash cut short (under the exclusive lock): free the slots its intent lists."""
        intent = read_intent(self.io.pread(fd, SLOT - INTENT_AT, INTENT_AT))
        if intent is None:
            return
        for index in intent[2]:
            self.io.pwrite(fd, bytes(16), slot_offset(index))
        self.io.fdatasync(fd)
        self._clear_intent(fd)

    def save(self, claim: MemberClaim, position: int) -> None:
        self.before_save(position)
        with claim.lock:
            self._save(claim, position)

    def _save(self, claim: MemberClaim, position: int) -> None:
        fd = claim.fd
        if fd is None:
            if self.forked is not None:
                raise self.forked()  # a forked child: the member is the parent's
            raise StreamClosedError(f"subscription {claim.definition.name!r} was closed (or its store)")
        sequence = claim.sequence + 1
        at = slot_offset(claim.index) + (COPY_A if sequence % 2 == 0 else COPY_B)
        self.io.pwrite(fd, encode_copy(claim.generation, sequence, position), at)
        claim.sequence = sequence
        claim.position = position
        if self.durability == "fsync":
            self.io.fdatasync(fd)
        elif self.durability == "batch":
            claim.unsynced = True
            now = time.monotonic()
            if now - self._last_sync >= self.fsync_interval:
                self.io.fdatasync(fd)
                claim.unsynced = False
                self._last_sync = now
            else:
                self._sync_later(self._last_sync + self.fsync_interval - now)

    def _sync_later(self, delay: float) -> None:
        """With "batch": sync the acknowledgements left unsynced in ``delay`` seconds (one timer at a time)."""
        with self._timer_lock:
            if self._timer is None:
                timer = threading.Timer(delay, self._sync_unsynced)
                timer.name = "logstore-acks"
                timer.daemon = True
                self._timer = timer
                timer.start()

    def _sync_unsynced(self) -> None:
        with self._timer_lock:
            self._timer = None
        self._last_sync = time.monotonic()
        for claim in list(self._claims):
            with claim.lock:
                fd = claim.fd
                if fd is not None and claim.unsynced:
                    try:
                        self.io.fdatasync(fd)
                    except OSError as exc:  # the next acknowledgement or the release tries again
                        logger.error("%s: syncing acknowledgements failed: %r", self.path, exc)
                        continue
                    claim.unsynced = False

    def _cancel_timer(self) -> None:
        with self._timer_lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def release(self, claim: MemberClaim) -> None:
        with claim.lock:
            fd, claim.fd = claim.fd, None
            if fd is None:
                return
            self._claims.discard(claim)
            try:
                if claim.unsynced:
                    self.io.fdatasync(fd)
            finally:
                self.io.close(fd)  # drops the member's lock

    def list(self) -> list[SubscriptionInfo]:
        with self._locked(create=False, exclusive=False) as fd:
            if fd is None:
                return []
            found: dict[str, tuple[Definition, dict[int, int]]] = {}
            for slot in self._slots(fd):
                if slot.damage is not None:
                    raise self._damage(slot)
                if slot.definition is None:
                    continue
                entry = found.setdefault(slot.definition.name, (slot.definition, {}))
                entry[1][slot.member] = slot.position
            return [
                info_of(definition, [positions.get(m, 0) for m in range(definition.size)])
                for definition, positions in (found[name] for name in sorted(found))
            ]

    def delete(self, name: str) -> bool:
        io = self.io
        if not io.exists(self.path):
            return False
        with self._locked(create=True, exclusive=True) as fd:
            assert fd is not None
            slots = [s for s in self._slots(fd) if s.definition is not None and s.definition.name == name]
            if not slots:
                return False
            taken = []
            try:
                for slot in slots:
                    if not io.lock_range(fd, slot_offset(slot.index), exclusive=True, wait=False):
                        raise SubscriptionBusyError(
                            name,
                            slot.member,
                            f"{self.path}: subscription {name!r} member {slot.member} is open;"
                            " close its subscriptions before deleting it",
                        )
                    taken.append(slot)
                indexes = [slot.index for slot in slots]
                for first in range(0, len(indexes), MAX_INTENT):
                    part = indexes[first : first + MAX_INTENT]
                    self._write_intent(fd, FREEING, slots[0].generation, part)
                    for index in part:
                        io.pwrite(fd, bytes(16), slot_offset(index))
                    io.fdatasync(fd)
                    self._clear_intent(fd)
            finally:
                for slot in taken:
                    io.unlock_range(fd, slot_offset(slot.index))
            return True

    def close(self) -> None:
        """Release every member still held (the store is closing); their subscriptions can no longer ack."""
        for claim in list(self._claims):
            self.release(claim)  # syncs what was left unsynced
        self._cancel_timer()

    def drop_claims(self, forked: Callable[[], Exception] | None = None) -> None:
        """Close the claims' descriptors without a sync, as a death does (``_abandon``); in a forked child
        (``forked``: the error its acknowledgements raise from now on), the child's copies (the locks stay
        with the parent's descriptions)."""
        self.forked = forked
        if forked is None:
            self._cancel_timer()  # a forked child has no timer thread (and must not take the parent's lock)
        for claim in list(self._claims):
            fd, claim.fd = claim.fd, None
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        self._claims.clear()


# -- verify and repair ----------------------------------------------------------------------------


@dataclass
class FileCheck:
    """What :func:`check_file` found: ``problems`` as (path, byte position, what), ``notes``, and what
    :func:`repair_file` mends: the header's trouble, damaged or repeated slots, positions past the end."""

    problems: list[tuple[str, int, str]]
    notes: list[str]
    header: str | None = None  # what is wrong with the first block (None: it is whole)
    other_store: bool = False  # the header names another store: the whole file is not this store's
    damaged: list[Slot] | None = None
    repeated: list[Slot] | None = None  # a second slot for one member of one subscription
    past_end: list[Slot] | None = None


def _check_header_bytes(raw: bytes, store_id: bytes) -> None:
    """Raise :class:`FormatError` unless ``raw`` starts with this store's header (byte 16: another store's)."""
    header = decode_header(raw, MAGIC_SUBSCRIPTIONS)
    if header.store_id != store_id:
        raise FormatError(16, "store id differs from the store's (a file of another store)")
    if header.a != SLOT:
        raise FormatError(32, f"slot size is {header.a}, expected {SLOT}")


def _unfinished(raw: bytes, path: str, notes: list[str]) -> set[int]:
    """The slots an operation cut short by a crash lists in its intent (noted): they read as free."""
    intent = read_intent(raw[INTENT_AT:SLOT])
    if intent is None:
        return set()
    what = "making" if intent[0] == MAKING else "freeing"
    notes.append(
        f"{path}: {what} slots {sorted(intent[2])} was cut short; they read as free, and the next"
        " subscribe or delete_subscription finishes it"
    )
    return set(intent[2])


def check_file(io: FileIO, store_path: str, store_id: bytes, log_end: int, live: bool) -> FileCheck:
    """Check a store's ``SUBSCRIPTIONS`` file (``logstore verify``): its header, every slot's definition and
    position, and that no position lies past ``log_end`` (the log's end as verify found it)."""
    path = os.path.join(store_path, SUBSCRIPTIONS)
    found = FileCheck([], [], damaged=[], repeated=[], past_end=[])
    try:
        raw = io.read_file(path)
    except FileNotFoundError:
        return found
    try:
        _check_header_bytes(raw, store_id)
    except FormatError as exc:
        if len(raw) <= SLOT:  # no slot yet: the first subscribe's making of the file was cut short
            found.notes.append(
                f"{path}: made but not written whole ({exc.what} at byte {exc.position}); it holds no"
                " subscription, and the next subscribe writes it"
            )
            return found
        found.header = f"header damaged at byte {exc.position}: {exc.what}"
        found.problems.append((path, exc.position, exc.what))
        if exc.position == 16:
            found.other_store = True
            return found
    if len(raw) % SLOT:
        found.notes.append(
            f"{path}: {len(raw) % SLOT} bytes of a slot whose first write was cut short (a free slot; harmless)"
        )
    seen: dict[tuple[str, int], Slot] = {}
    unfinished = _unfinished(raw, path, found.notes) if found.header is None else set()
    for index in range(max(0, (len(raw) - 1) // SLOT)):
        if index in unfinished:
            continue
        _check_slot(
            read_slot(raw[slot_offset(index) : slot_offset(index + 1)], index), path, seen, log_end, live, found
        )
    return found


def _check_slot(
    slot: Slot, path: str, seen: dict[tuple[str, int], Slot], log_end: int, live: bool, found: FileCheck
) -> None:
    """:func:`check_file`'s look at one slot (``seen``: the members met in slots before it)."""
    assert found.damaged is not None and found.repeated is not None and found.past_end is not None
    if slot.damage is not None:
        found.problems.append((path, slot.damage_at, slot.damage))
        found.damaged.append(slot)
        return
    definition = slot.definition
    if definition is None:
        return
    key = (definition.name, slot.member)
    if key in seen:
        where = slot_offset(slot.index)
        found.problems.append((path, where, f"a second slot for subscription {definition.name!r} member {slot.member}"))
        found.repeated.append(slot)
        return
    seen[key] = slot
    if slot.position > log_end:
        what = (
            f"subscription {definition.name!r} member {slot.member} is at global offset {slot.position},"
            f" past the log's end {log_end}"
        )
        if live:
            found.notes.append(f"{path}: {what} (the store is live: the log may have grown since verify read it)")
        else:
            found.problems.append((path, slot_offset(slot.index) + COPY_A, what))
            found.past_end.append(slot)


def repair_file(
    io: FileIO,
    store_path: str,
    store_id: bytes,
    found: FileCheck,
    log_end: int,
    save: Callable[[bytes, str, int, str], None],
    move: Callable[[str, str], None],
    actions: list[str],
    dry_run: bool,
) -> None:
    """Mend what :func:`check_file` found (``logstore repair``, no process having the store open).

    Damaged bytes go to lost+found through ``save(data, source, position, reason)`` first. A file of
    another store moves there whole (``move``). A damaged header is written anew. A damaged
    definition, or a second slot of one member, frees the slot: that subscription (or member) is
    gone, and a later subscribe creates it anew at position 0. A member whose both position copies
    are damaged goes back to position 0, and one past ``log_end`` to ``log_end``.
    """
    path = os.path.join(store_path, SUBSCRIPTIONS)
    if found.other_store:
        move(path, "SUBSCRIPTIONS of another store (store id differs)")
        return
    raw = io.read_file(path)
    writes: list[tuple[int, bytes]] = []
    if found.header is not None:
        save(raw[:SLOT], path, 0, found.header)
        block = encode_header(Header(MAGIC_SUBSCRIPTIONS, store_id, SLOT, 0, 0))
        writes.append((0, block + bytes(SLOT - HEADER_SIZE)))
        actions.append(f"{path}: write the header anew")
    for slot in [*(found.damaged or ()), *(found.repeated or ())]:
        base = slot_offset(slot.index)
        data = raw[base : base + SLOT]
        if slot.definition is not None and slot.damage is not None:  # both position copies damaged
            save(data[COPY_A:], path, base + COPY_A, slot.damage)
            writes.append((base + COPY_A, bytes(2 * COPY.size)))
            actions.append(
                f"{path}@{base + COPY_A}: subscription {slot.definition.name!r} member {slot.member} goes back"
                " to global offset 0 (what it had not acknowledged, and more, is delivered again)"
            )
        else:
            what = slot.damage or "a second slot for one member of a subscription"
            save(data, path, base, what)
            writes.append((base, bytes(16)))
            actions.append(f"{path}@{base}: free the slot ({what})")
    for slot in found.past_end or ():
        assert slot.definition is not None
        sequence = slot.sequence + 1
        at = slot_offset(slot.index) + (COPY_A if sequence % 2 == 0 else COPY_B)
        writes.append((at, encode_copy(slot.generation, sequence, log_end)))
        actions.append(
            f"{path}@{at}: subscription {slot.definition.name!r} member {slot.member} moves from global offset"
            f" {slot.position}, past the log's end, to the end {log_end}"
        )
    if dry_run or not writes:
        return
    fd = io.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        for at, data in writes:
            io.pwrite(fd, data, at)
        io.fdatasync(fd)
    finally:
        io.close(fd)
