"""Durable subscriptions and consumer groups, the same on every backend.

``store.subscribe(name, category=None, types=None, group=None)`` returns a :class:`Subscription`: a
stream over the log (or one category of it, of some types) that begins where the subscription last
acknowledged, and whose :meth:`Subscription.ack` saves that position in the store. A group
(``group=(member, size)``) splits the messages between ``size`` members by a stable hash of each
message's stream name (:func:`member_of`), so that every stream goes to one member, in order.

What is common lives here: the checks of the arguments, the definition of a subscription and how a
later subscribe must match it, the reading (a category or global reader of the backend, less the
messages of other members) and the acknowledging. A backend supplies :class:`Positions`: where the
definitions and the positions are kept (the embedded store's ``SUBSCRIPTIONS`` file, PostgreSQL's
``subscriptions`` table), and how one open subscription per member is ensured across processes.

Delivery is at least once: a message handled but not acknowledged before a crash (or a ``close()``)
is delivered again to the member's next subscription.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import msgpack
import xxhash

from logstore.checks import check_category, check_name, check_timeout, check_types
from logstore.envelope import Envelope
from logstore.errors import StreamClosedError
from logstore.readers import DEFAULT_READ, Iterating, Reader, check_max_count
from logstore.results import SubscriptionInfo

MAX_SUBSCRIPTION_NAME = 255
"""Longest subscription name, in UTF-8 bytes."""
MAX_GROUP_SIZE = 1024
"""Most members a consumer group may have."""
MAX_DEFINITION = 4008
"""Most bytes a subscription's definition takes encoded (:func:`definition_bytes`): what one slot of an
embedded store's ``SUBSCRIPTIONS`` file holds. PostgreSQL keeps the same limit, so that ``logstore migrate``
copies every subscription either way."""
_MEMBER_CACHE = 65536
"""Stream names whose member a subscription remembers (then it forgets them all and starts again)."""

logger = logging.getLogger("logstore")


def check_subscription_name(name: object) -> str:
    """Return a valid subscription name (a non-empty str of at most 255 UTF-8 bytes, no NUL), else raise."""
    check_name(name, "subscription name", MAX_SUBSCRIPTION_NAME)
    assert isinstance(name, str)
    return name


def check_group(group: object) -> tuple[int, int]:
    """``group=`` of ``subscribe``: ``None`` (one consumer: member 0 of 1) or ``(member, size)``."""
    if group is None:
        return 0, 1
    if not isinstance(group, tuple | list) or len(group) != 2:
        raise TypeError(f"group must be a (member, size) pair or None, got {group!r:.80}")
    member, size = group
    for what, value in (("member", member), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"group {what} must be an int, got {type(value).__name__}")
    if not 1 <= size <= MAX_GROUP_SIZE:
        raise ValueError(f"group size must be between 1 and {MAX_GROUP_SIZE}, got {size}")
    if not 0 <= member < size:
        raise ValueError(f"group member must be between 0 and size - 1 = {size - 1}, got {member}")
    return member, size


def member_of(stream: str, size: int) -> int:
    """The member of a group of ``size`` that a stream's messages go to: xxh64 (seed 0) of its UTF-8 name, mod size.

    Stable across processes, machines and versions (docs/FORMAT.md, "Consumer groups").

    >>> member_of("order-42", 1)
    0
    """
    return xxhash.xxh64_intdigest(stream.encode("utf-8")) % size


class Definition(NamedTuple):
    """What a subscription is: fixed when its first ``subscribe`` creates it."""

    name: str
    category: str | None
    types: frozenset[str] | None
    size: int

    def mismatch(self, other: Definition) -> str | None:
        """Why ``other`` (a later subscribe's arguments) is not this subscription, or None when it is."""
        wrong = []
        if other.category != self.category:
            wrong.append(f"category {other.category!r} (it reads {self.category!r})")
        if other.types != self.types:
            given = None if other.types is None else sorted(other.types)
            saved = None if self.types is None else sorted(self.types)
            wrong.append(f"types {given!r:.200} (it reads {saved!r:.200})")
        if other.size != self.size:
            wrong.append(f"group size {other.size} (it has {self.size} members)")
        if not wrong:
            return None
        return (
            f"subscription {self.name!r} exists with other settings: subscribe gave "
            + ", ".join(wrong)
            + "; subscribe with its settings, or delete it first (store.delete_subscription) to change them"
        )


def definition_bytes(definition: Definition) -> bytes:
    """A definition encoded: msgpack ``[name, category or nil, sorted types or nil, group size]``."""
    types = None if definition.types is None else sorted(definition.types)
    body: bytes = msgpack.packb([definition.name, definition.category, types, definition.size])
    return body


def check_definition_size(definition: Definition) -> None:
    """Raise ``ValueError`` when a new subscription's definition is too large to keep (:data:`MAX_DEFINITION`)."""
    size = len(definition_bytes(definition))
    if size > MAX_DEFINITION:
        raise ValueError(
            f"subscription {definition.name!r}: its name, category and types take {size} bytes"
            f" encoded, the limit is {MAX_DEFINITION}"
        )


def info_of(definition: Definition, positions: Collection[int]) -> SubscriptionInfo:
    return SubscriptionInfo(definition.name, definition.category, definition.types, definition.size, tuple(positions))


class Claim(Protocol):
    """One member of one subscription, held by one open :class:`Subscription` (a backend's own type)."""

    definition: Definition
    member: int
    position: int
    """The saved position when claimed: the next global offset to deliver."""


C = TypeVar("C", bound=Claim)


class Positions(Protocol[C]):
    """Where a backend keeps subscriptions: their definitions, and each member's position (claims of type ``C``)."""

    def claim(self, definition: Definition, member: int) -> C:
        """Create the subscription if it is new; else check ``definition`` against it (``ValueError``).
        Then take ``member`` for one open subscription (:class:`~logstore.SubscriptionBusyError` if taken)."""
        ...

    def save(self, claim: C, position: int) -> None:
        """Save a claimed member's position (greater than its last), as durably as the store's durability says."""
        ...

    def release(self, claim: C) -> None:
        """Free the member for another subscription. Idempotent."""
        ...

    def list(self) -> list[SubscriptionInfo]:
        """Every subscription, sorted by name."""
        ...

    def delete(self, name: str) -> bool:
        """Delete a subscription whose members are all free; whether it existed."""
        ...


class _SubscribingStore(Protocol):
    def open_global(self, ds: Any, offset: int, types: Collection[str] | None = None) -> Any: ...

    def open_category(self, ds: Any, category: str, offset: int, types: Collection[str] | None = None) -> Any: ...


class _Store(_SubscribingStore, Protocol):
    path: str

    @property
    def global_head(self) -> int: ...


def definition_of(name: object, category: object, types: object, group: object) -> tuple[Definition, int]:
    """The checked arguments of ``subscribe``: the definition they ask for, and the member."""
    name = check_subscription_name(name)
    if category is not None:
        category = check_category(category)
    wanted = check_types(types)
    member, size = check_group(group)
    return Definition(name, category, wanted, size), member


def open_subscription(store: _Store, positions: Positions[C], definition: Definition, member: int) -> Subscription[C]:
    """``store.subscribe``'s work once the arguments are checked (every backend's): claim the member in
    ``positions``, then open the stream at its position (at the log's end when the position is past it)."""
    claim = positions.claim(definition, member)
    try:
        head = store.global_head
        if claim.position > head:
            # Only after a crash that lost commits the position had passed (an embedded store's machine crash
            # with durability="none", a PostgreSQL server's crash with synchronous_commit off).
            logger.warning(
                "%s: subscription %r member %d is at global offset %d, past the log's end %d; it begins at the end",
                store.path,
                definition.name,
                member,
                claim.position,
                head,
            )
            positions.save(claim, head)  # saved: the messages committed from here on are delivered
        return Subscription(store, positions, claim)
    except BaseException:
        positions.release(claim)
        raise


def open_reader(store: _SubscribingStore, definition: Definition, start: int) -> Reader:
    """The backend's reader a subscription's messages come from (all members' messages), from ``start``."""
    if definition.category is None:
        reader: Reader = store.open_global(store, start, definition.types)
    else:
        reader = store.open_category(store, definition.category, start, definition.types)
    return reader


class Subscription(Iterating, Generic[C]):
    """A durable subscription's stream: what a member has not acknowledged yet, and :meth:`ack`.

    The ``messagestore.Stream`` surface of the store's readers: :meth:`next`, :meth:`try_next`,
    :meth:`get`, :meth:`offset` (the global offset), :meth:`stream_name`, :meth:`stream_offset`,
    :meth:`global_offset`, :meth:`close`, ``for env in sub`` (what is there now), :meth:`anext` and
    ``async for``. One thread (or task) uses it at a time, apart from :meth:`close`.
    """

    def __init__(self, store: _SubscribingStore, positions: Positions[C], claim: C) -> None:
        self._positions = positions
        self._claim = claim
        definition = claim.definition
        self.name = definition.name
        self.category = definition.category
        self.types = definition.types
        self.member = claim.member
        self.size = definition.size
        self._position = claim.position
        self._current: int | None = None  # the global offset of the message delivered last
        self._kept: tuple[Envelope, str, int] | None = None  # in a group: its envelope, stream and offset
        self._members: dict[str, bool] = {}
        try:
            self._reader = open_reader(store, definition, claim.position)
        except BaseException:
            positions.release(claim)
            raise
        self._closed = False

    # -- position ---------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The member's saved position: the global offset its next subscription begins at."""
        return self._position

    def ack(self, offset: int | None = None) -> None:
        """Acknowledge the current message, or with ``offset`` every message up to that global offset.

        Saves the position after it in the store: the member's next subscription (after a
        restart, a crash, in another process) begins there. ``offset`` must be one delivered
        already (at most :meth:`offset`). A position never moves back: acknowledging below it does
        nothing. Durable when it returns with ``durability="fsync"`` and on PostgreSQL.
        """
        if self._closed:
            raise StreamClosedError(f"subscription {self.name!r}: acknowledged after close()")
        if self._reader.closed:  # with its store (or carried into a forked child: the reader says which)
            raise self._reader._closed_error(f"subscription {self.name!r}: acknowledged after its store was closed")
        current = self._current
        if offset is None:
            if current is None:
                raise ValueError(f"subscription {self.name!r}: ack() before any message was delivered")
            offset = current
        else:
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise TypeError(f"offset must be an int, got {type(offset).__name__}")
            if offset < 0:
                raise ValueError(f"offset must be >= 0, got {offset}")
            if current is None or offset > current:
                last = "nothing yet" if current is None else f"up to global offset {current}"
                raise ValueError(
                    f"subscription {self.name!r}: ack({offset}) of a message not delivered (delivered {last})"
                )
        position = offset + 1
        if position <= self._position:
            return
        self._positions.save(self._claim, position)
        self._position = position

    # -- reading ----------------------------------------------------------------------------

    def _mine(self) -> bool:
        """Whether the reader's current message is this member's; if so it becomes the current one.

        In a group the reader steps past other members' messages after this member's current one, so
        the current message's envelope and place are kept here (``_kept``), not read from the reader.
        """
        reader = self._reader
        if self.size > 1:
            stream = reader.stream_name()
            mine = self._members.get(stream)
            if mine is None:
                if len(self._members) >= _MEMBER_CACHE:
                    self._members.clear()
                mine = self._members[stream] = member_of(stream, self.size) == self.member
            if not mine:
                return False
            self._kept = (reader.get(), stream, reader.stream_offset())
        self._current = reader.offset()
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError(f"subscription {self.name!r} is closed")

    def try_next(self) -> bool:
        """Advance to this member's next message if one is available now; return whether it did."""
        self._check_open()
        reader = self._reader
        while reader.try_next():
            if self._mine():
                return True
        return False

    def next(self, timeout: float | None = None) -> None:
        """Advance to this member's next message, waiting for one to be committed if need be.

        Raises ``TimeoutError`` after ``timeout`` seconds (``None`` waits for ever) and
        :class:`~logstore.StreamClosedError` when closed, also from another thread while waiting.
        """
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_next():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self._reader.next(remaining)
            except TimeoutError:
                raise TimeoutError(f"subscription {self.name!r}: no message within {timeout} s") from None
            except StreamClosedError:
                self._check_open()
                raise
            if self._mine():
                return

    async def anext(self, timeout: float | None = None) -> Envelope:
        """Await this member's next message and return it (``timeout`` as :meth:`next`)."""
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.try_next():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await self._reader.anext(remaining)
            except TimeoutError:
                raise TimeoutError(f"subscription {self.name!r}: no message within {timeout} s") from None
            if self._mine():
                break
        return self.get()

    def read(self, max_count: int = DEFAULT_READ) -> list[Envelope]:
        """Up to ``max_count`` of this member's messages available now, in one call (the last becomes current)."""
        check_max_count(max_count)
        self._check_open()
        if self.size == 1:
            envs = self._reader.read(max_count)
            if envs:
                self._current = self._reader.offset()
            return envs
        out: list[Envelope] = []
        while len(out) < max_count and self.try_next():
            out.append(self.get())
        return out

    def _current_kept(self) -> tuple[Envelope, str, int]:
        self._check_open()
        kept = self._kept
        if kept is None:
            raise ValueError("no current message: before a successful next() or try_next()")
        return kept

    def get(self) -> Envelope:
        """The envelope of the current message."""
        if self.size > 1:
            return self._current_kept()[0]
        self._check_open()
        return self._reader.get()

    def offset(self) -> int:
        """The current message's global offset."""
        if self.size > 1:
            self._current_kept()
            assert self._current is not None
            return self._current
        return self._reader.offset()

    def global_offset(self) -> int:
        return self.offset() if self.size > 1 else self._reader.global_offset()

    def stream_name(self) -> str:
        return self._current_kept()[1] if self.size > 1 else self._reader.stream_name()

    def stream_offset(self) -> int:
        return self._current_kept()[2] if self.size > 1 else self._reader.stream_offset()

    def close(self) -> None:
        """Close the stream and free the member for another subscription. Idempotent; unacknowledged
        messages are delivered again to the next subscription of the member."""
        if self._closed:
            return
        self._closed = True
        try:
            self._reader.close()
        finally:
            self._positions.release(self._claim)

    @property
    def closed(self) -> bool:
        """Closed: by :meth:`close`, or with its store."""
        return self._closed or self._reader.closed

    def __next__(self) -> Envelope:
        """``for env in sub`` yields this member's messages available now, then stops."""
        if not self.try_next():
            raise StopIteration
        return self.get()

    def __repr__(self) -> str:
        group = f", member {self.member} of {self.size}" if self.size > 1 else ""
        state = "closed" if self._closed else f"position {self._position}"
        return f"<Subscription {self.name!r}{group}: {state}>"


def lags(store: _SubscribingStore, info: SubscriptionInfo) -> list[int]:
    """Every member's lag (as :func:`pending`), in one read from the lowest position."""
    counts = [0] * info.size
    positions = info.positions
    seen: dict[str, int] = {}
    reader = open_reader(store, Definition(info.name, info.category, info.types, info.size), min(positions))
    with reader:
        while reader.try_next():
            member = 0
            if info.size > 1:
                stream = reader.stream_name()
                found = seen.get(stream)
                if found is None:
                    found = seen[stream] = member_of(stream, info.size)
                member = found
            if reader.offset() >= positions[member]:
                counts[member] += 1
    return counts


def subscription_stats(store: _SubscribingStore, infos: list[SubscriptionInfo]) -> list[dict[str, Any]]:
    """``logstore stats``' view of the subscriptions: settings, and each member's position and lag."""
    return [
        {
            "name": info.name,
            "category": info.category,
            "types": None if info.types is None else sorted(info.types),
            "size": info.size,
            "members": [
                {"member": member, "position": position, "lag": lag}
                for member, (position, lag) in enumerate(zip(info.positions, lags(store, info), strict=True))
            ],
        }
        for info in infos
    ]


def pending(store: _SubscribingStore, info: SubscriptionInfo, member: int, limit: int | None = None) -> int:
    """A member's lag: how many messages at or after its position it would be given (counted by reading).

    Stops counting at ``limit`` (when not None). ``logstore stats`` shows it.
    """
    definition = Definition(info.name, info.category, info.types, info.size)
    reader = open_reader(store, definition, info.positions[member])
    count = 0
    seen: dict[str, bool] = {}
    with reader:
        while (limit is None or count < limit) and reader.try_next():
            if info.size > 1:
                stream = reader.stream_name()
                mine = seen.get(stream)
                if mine is None:
                    mine = seen[stream] = member_of(stream, info.size) == member
                if not mine:
                    continue
            count += 1
    return count
