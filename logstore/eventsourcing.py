"""logstore as a persistence module of the ``eventsourcing`` library (9.5).

Select it with ``PERSISTENCE_MODULE=logstore.eventsourcing`` and name the store with
``LOGSTORE_PATH``: a store directory (the embedded engine), or a ``postgresql://`` URL (the
PostgreSQL backend, in the schema ``LOGSTORE_SCHEMA``); docs/EVENTSOURCING.md has every setting.
The recorders use only the store API that both backends have. Importing ``logstore`` never imports
this module: it needs the optional extra ``logstore[eventsourcing]``.

How the library's concepts map onto the store (``P`` is the application's name in lower case,
``stored`` when it has none)::

    stream                      holds                                   written by
    P_events-<originator id>    the originator's events, in version     aggregate, application and
                                order (one envelope each)               process recorders
    P_snapshots-<originator id> the originator's snapshots              the snapshot recorder
    P_notifications             every event of the application, in      application and process
                                commit order: notification id =         recorders, in the same
                                stream offset + 1                       transaction as the events
    P_tracking-<upstream name>  the notification ids processed from     tracking and process
                                that upstream application, ascending    recorders

An event's envelope has the topic as its ``type`` and ``[originator id, version, state]`` as its
message (the originator id as 16 bytes for a UUID, else as text). The same envelope goes to the
originator's stream and to the notification stream, in one transaction: a reader of either sees
the event whole or not at all.

Versions: an originator's stream offsets count its events (0, 1, 2, ...), whatever version its
first event has; a new event's version must be above the last recorded one, else
``IntegrityError`` (the library's unique key on originator and version, for versions that only
grow). The append names the offset it expects, so a concurrent save of the same originator makes
logstore's ``OffsetConflictError``; the recorder then reads the stream again and raises
``IntegrityError`` if the versions now clash, or tries again if they do not.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from uuid import UUID, SafeUUID

import msgpack
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatabaseError,
    DataError,
    InfrastructureFactory,
    IntegrityError,
    InterfaceError,
    InternalError,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProcessRecorder,
    ProgrammingError,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

import logstore
from logstore.checks import URL_SCHEMES, check_stream_name
from logstore.embedded import layout
from logstore.embedded.store import Store
from logstore.envelope import Envelope, encode_many
from logstore.errors import (
    CorruptionError,
    LogStoreError,
    MessageTooLargeError,
    OffsetConflictError,
    OutOfSpaceError,
    ReadOnlyError,
    StoreClosedError,
    StoreFailedError,
    StoreForkedError,
    StoreLockedError,
    StreamClosedError,
)
from logstore.protocols import Stream
from logstore.tx import ANY_OFFSET, Tx

if TYPE_CHECKING:
    from logstore.embedded.reader import StreamReader
    from logstore.postgres import PostgresStore
    from logstore.postgres.reader import PgStreamReader

    AnyStore = Store | PostgresStore
    """The stores the recorders work on: the embedded one, or the PostgreSQL backend's."""

__all__ = [
    "Factory",
    "LogstoreAggregateRecorder",
    "LogstoreApplicationRecorder",
    "LogstoreFactory",
    "LogstoreProcessRecorder",
    "LogstoreSubscription",
    "LogstoreTrackingRecorder",
    "open_shared",
    "release_shared",
    "translate",
]

NOTIFICATIONS = "notifications"
"""The notification stream's name after the prefix: ``P_notifications``."""


# -- envelopes -----------------------------------------------------------------------------


def _message_ids(n: int) -> list[str]:
    """``n`` new message ids: version 4 UUIDs as text, counted up from a random start drawn once per process.

    ``str(uuid.uuid4())`` per event took a tenth of a save's time, and a random draw per save most of
    what was left of it. The 122 random bits of a version 4 UUID are drawn once per process
    (``random.getrandbits``; again in a forked child, see :func:`_seed_message_ids`): its ids share
    the first 74 and count up in the last 48 from that random start, one count per id. So no two ids
    of one process are equal (until 2 ** 48 of them), and two processes' ids can meet only if their
    random starts share those 74 bits (a chance of 2 ** -74 for two processes, and then only where
    their counts overlap). Only the last group of 12 hex digits is formatted per id.
    """
    head, count = _id_head, _id_count
    if n == 1:
        return [f"{head}{next(count) & _MASK48:012x}"]
    return [f"{head}{next(count) & _MASK48:012x}" for _ in range(n)]


_packer = msgpack.Packer(use_bin_type=True, datetime=True, strict_types=True, autoreset=True)
_pack_value = _packer.pack
"""msgpack as :mod:`logstore.envelope` packs an envelope (the same options): one value at a time."""
_ARRAY7 = b"\x97"  # msgpack's array of 7 items: an envelope
_STR36 = b"\xd9\x24"  # msgpack's str of 36 bytes (str 8): a message id as _message_ids makes it
_TIMESTAMP96 = b"\xc7\x0c\xff"  # msgpack's 96-bit Timestamp (instants before 1970 or after 2514)


class _Unusual(Exception):
    """An envelope that :func:`_encode_saved` leaves to ``encode_many``."""


def _encode_saved(envs: list[Envelope], stream: str, offset: int, limit: int) -> list[bytes]:
    """``encode_many(envs, stream, offset, limit)`` for the envelopes of one save (:meth:`_one`, :meth:`_many`).

    Those share one instant (``created_at`` and ``send_at`` of all of them) and each has its message id
    (36 characters) as its causation and correlation ids; msgpack being a concatenation, an envelope's
    bytes are the array's head and its items packed apart, so the instant is packed once per save and
    the topic once per run of equal ones. The same bytes as ``encode_many`` (which packs the same
    values with the same options). Anything unusual (a topic that is not a ``str``, a message msgpack
    refuses, a wide-range instant, an envelope over ``limit``) goes through ``encode_many``, which says
    precisely what is wrong, or encodes it.
    """
    try:
        stamp = _pack_value(envs[0].created_at)
        if stamp.startswith(_TIMESTAMP96):
            raise _Unusual
        payloads: list[bytes] = []
        topic: object = None
        packed = b""
        for env in envs:
            if env.type is not topic:
                topic = env.type
                if type(topic) is not str:
                    raise _Unusual
                packed = _pack_value(topic)
            mid = env.message_id.encode()
            if len(mid) != 36:
                raise _Unusual
            m = _STR36 + mid
            payload = b"".join((_ARRAY7, m, m, m, stamp, stamp, packed, _pack_value(env.message)))
            if len(payload) > limit:
                raise _Unusual
            payloads.append(payload)
    except (_Unusual, TypeError, ValueError, OverflowError):
        return encode_many(envs, stream, offset, limit)
    return payloads


def _seed_message_ids() -> None:
    """Draw this process's start of :func:`_message_ids` (at import, and in a forked child)."""
    global _id_head, _id_count  # noqa: PLW0603 - the process's one id source
    r = _getrandbits(122)
    # 32 + 16 random bits, the version (4) and 12, the variant (10) and 14, then 48 counted up.
    _id_head = f"{r >> 90:08x}-{(r >> 74) & 0xFFFF:04x}-4{(r >> 62) & 0xFFF:03x}-{0x8000 | ((r >> 48) & 0x3FFF):04x}-"
    _id_count = itertools.count(r & _MASK48)  # next() is one atomic step: threads never share a count


_getrandbits = random.getrandbits
_MASK48 = (1 << 48) - 1
_id_head = ""
_id_count = itertools.count()
_seed_message_ids()
if hasattr(os, "register_at_fork"):  # a child must not count on from its parent's start (random reseeds first)
    os.register_at_fork(after_in_child=_seed_message_ids)


_new = object.__new__
_envelope = tuple.__new__  # Envelope(*fields) without the NamedTuple's __new__ (a Python call per event)
_set = object.__setattr__
_from_bytes = int.from_bytes
_UNKNOWN = SafeUUID.unknown


def _originator(key: bytes | str) -> UUID | str:
    if isinstance(key, str):
        return key
    # UUID(bytes=key) without its argument checks (16 bytes, as _event_envelope wrote them): a
    # notification scan makes one UUID per notification, and the checks were a third of its cost.
    oid: UUID = _new(UUID)
    _set(oid, "int", _from_bytes(key, "big"))
    _set(oid, "is_safe", _UNKNOWN)
    return oid


def _fast_notification(
    originator_id: UUID | str, originator_version: int, topic: str, state: bytes, notification_id: int
) -> Notification:
    """``Notification(originator_id, originator_version, topic, state, id)`` without its frozen ``__init__``.

    The dataclass's ``__init__`` sets each field through ``object.__setattr__`` (it is frozen):
    giving the instance its ``__dict__`` whole is about twice as quick, the bulk of a notification
    scan being one Notification per envelope. Used only when Notification keeps its fields in a
    ``__dict__`` with no ``__post_init__`` (checked at import), else the constructor is.
    """
    n: Notification = _new(Notification)
    _set(
        n,
        "__dict__",
        {
            "originator_id": originator_id,
            "originator_version": originator_version,
            "topic": topic,
            "state": state,
            "id": notification_id,
        },
    )
    return n


def _fields_in_dict(cls: type) -> bool:
    """Whether instances of the dataclass ``cls`` keep exactly their fields in ``__dict__`` (no slots, no
    ``__post_init__``), so that :func:`_fast_notification` makes the same object as the constructor."""
    names = ["originator_id", "originator_version", "topic", "state", "id"]
    if not dataclasses.is_dataclass(cls) or [f.name for f in dataclasses.fields(cls)] != names:
        return False
    if hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__:
        return False
    probe = cls(UUID(int=1), 1, "t", b"s", 1)  # type: ignore[call-arg]
    return getattr(probe, "__dict__", None) == dict(zip(names, (UUID(int=1), 1, "t", b"s", 1), strict=True))


def _stored_event(env: Envelope, originator_id: UUID | str) -> StoredEvent:
    _key, version, state = env.message
    return StoredEvent(originator_id=originator_id, originator_version=version, topic=env.type, state=state)


def _notification(env: Envelope, offset: int) -> Notification:
    key, version, state = env.message
    return _make_notification(_originator(key), version, env.type, state, offset + 1)


_make_notification = _fast_notification if _fields_in_dict(Notification) else Notification
"""How a notification scan makes each Notification."""


def _last(store: AnyStore, stream: str, head: int) -> Envelope | None:
    """The envelope at ``head - 1`` of ``stream``, or None when ``head`` is 0 or it was removed."""
    return None if head == 0 else _exactly_at(store, stream, head - 1)


INTERRUPT_CHECK = 0.05
"""Seconds between looks at the ``interrupt`` event of :meth:`LogstoreTrackingRecorder.wait`."""

VERSIONS_KEPT = 10_000
"""Originator streams whose last version a recorder remembers (about 200 bytes each), the oldest dropped first."""

SCAN_LIMIT = 64
"""Above this many events, ``select_events(gt=...)`` finds its first offset by binary search, not by reading."""


def _exactly_at(store: AnyStore, stream: str, offset: int) -> Envelope | None:
    """The envelope at ``offset`` of ``stream``, or None if that offset was removed."""
    reader = store.stream(stream, offset)
    with reader:
        return reader.get() if reader.try_next() and reader.offset() == offset else None


def _first_above(store: AnyStore, stream: str, first: int, head: int, gt: int) -> int:
    """The first offset in ``[first, head)`` of ``stream`` whose version is above ``gt`` (``head`` if none).

    A binary search over offsets, since an originator's versions ascend with its offsets; ``first``
    when a probe meets a removed offset (the caller then reads from there and filters).
    """
    lo, hi = first, head
    while lo < hi:
        mid = (lo + hi) // 2
        env = _exactly_at(store, stream, mid)
        if env is None:
            return first
        if env.message[1] > gt:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _tracking_stream(prefix: str, application_name: str) -> str:
    return f"{prefix}_tracking-{application_name}"


def _max_tracking(store: AnyStore, stream: str) -> tuple[int, int | None]:
    head = store.head(stream)
    last = _last(store, stream, head)
    return head, None if last is None else int(last.message)


def _stage_tracking(store: AnyStore, tx: Tx, prefix: str, tracking: Tracking) -> None:
    """Append ``tracking`` to its stream in ``tx``; ``IntegrityError`` unless its id is above the last one."""
    stream = _tracking_stream(prefix, tracking.application_name)
    head, last = _max_tracking(store, stream)
    if last is not None and tracking.notification_id <= last:
        raise IntegrityError(
            f"{stream}: tracking notification id {tracking.notification_id} is not above the last recorded one, {last}"
        )
    store.append_messages(tx, stream, head, [Envelope.new("Tracking", tracking.notification_id)])


_Groups = dict[str, tuple[bytes, list[StoredEvent], list[Envelope]]]
"""A save's events by originator stream: the stream name's UTF-8 bytes (checked), the events and their
envelopes, in version order."""


def _is_store(store: object) -> bool:
    """Whether ``store`` is a store of either backend (the PostgreSQL one only once its module is imported)."""
    if isinstance(store, Store):
        return True
    postgres = sys.modules.get("logstore.postgres")
    return postgres is not None and isinstance(store, postgres.PostgresStore)


# -- errors --------------------------------------------------------------------------------

_EMBEDDED_ERRORS: tuple[tuple[type[LogStoreError], type[PersistenceError]], ...] = (
    (StoreFailedError, OperationalError),  # a write or fsync failed: the store refuses writes until reopened
    (OutOfSpaceError, OperationalError),
    (StoreLockedError, OperationalError),
    (ReadOnlyError, OperationalError),
    (StreamClosedError, OperationalError),  # the store closed under a read or a wait
    (StoreClosedError, InterfaceError),  # used after close(), as a closed connection is
    (StoreForkedError, InterfaceError),
    (MessageTooLargeError, DataError),
    (CorruptionError, DatabaseError),
)
"""The library's error for each of the embedded store's, in the order they are looked at."""

_SQLSTATE_CLASSES: dict[str, type[PersistenceError]] = {
    "08": OperationalError,  # connection exception
    "53": OperationalError,  # insufficient resources (a full disk, too many connections)
    "57": OperationalError,  # operator intervention (a backend terminated, a server shutting down, a cancel)
    "58": OperationalError,  # system error (an I/O error on the server)
    "40": OperationalError,  # transaction rollback (serialization failure, deadlock)
    "55": OperationalError,  # object not in prerequisite state (a lock not available)
    "HV": OperationalError,  # foreign data wrapper error
    "23": IntegrityError,  # integrity constraint violation
    "22": DataError,  # data exception
    "42": ProgrammingError,  # syntax error or access rule violation (a permission the role lacks)
    "3F": ProgrammingError,  # invalid schema name
    "0A": NotSupportedError,  # feature not supported
    "XX": InternalError,  # internal error
    "P0": InternalError,  # PL/pgSQL error
}
"""The library's error for a PostgreSQL refusal (``ServerError``), by the class of its SQLSTATE (its first
two characters), as psycopg sorts them into the DB-API's errors; any other class is ``DatabaseError``."""


def translate(error: LogStoreError, what: str) -> PersistenceError | None:
    """The ``eventsourcing.persistence`` error for logstore's ``error`` during ``what``, or None.

    None for ``OffsetConflictError`` (the recorders retry it, or turn it into ``IntegrityError``
    themselves). On PostgreSQL: ``ConnectionLostError`` (the server unreachable, or a connection
    broken; nothing was written) and ``CommitOutcomeUnknownError`` (the connection broke during
    the commit; all of it or none of it landed) are ``OperationalError``, as the library's own
    PostgreSQL module gives for psycopg's ``OperationalError``; ``ServerError`` by its SQLSTATE
    (:data:`_SQLSTATE_CLASSES`). The embedded store's errors by :data:`_EMBEDDED_ERRORS`; any
    other logstore error is ``PersistenceError``. The message says what was being done and
    logstore's message; logstore's error is the ``__cause__`` (``store.commit_outcome(e.__cause__)``
    finds out whether a save whose outcome is unknown landed).
    """
    if isinstance(error, OffsetConflictError):
        return None
    message = f"{what}: {error}"
    pg = sys.modules.get("logstore.postgres.errors")
    if pg is not None:
        if isinstance(error, pg.ConnectionLostError | pg.CommitOutcomeUnknownError):
            return OperationalError(message)
        if isinstance(error, pg.ServerError):
            state = error.sqlstate or ""
            return _SQLSTATE_CLASSES.get(state[:2], DatabaseError)(message)
    for cls, target in _EMBEDDED_ERRORS:
        if isinstance(error, cls):
            return target(message)
    return PersistenceError(message)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translating(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """A recorder method that raises logstore's errors as the library's (:func:`translate`)."""
    what = method.__name__

    @wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except LogStoreError as e:
            error = translate(e, what)
            if error is None:
                raise
            raise error from e
        except TimeoutError:
            raise  # wait()'s own, and not the store's failure
        except OSError as e:  # a store file that cannot be read, say: sqlite3 calls that an OperationalError too
            raise OperationalError(f"{what}: {e}") from e

    return call


# -- recorders ----------------------------------------------------------------------------


class LogstoreRecorder:
    """What every recorder here shares: the store and the application's stream name prefix."""

    def __init__(self, store: AnyStore, prefix: str = "stored", purpose: str = "events") -> None:
        if not _is_store(store):
            raise TypeError(
                f"store must be a logstore.Store or a logstore.postgres.PostgresStore, got {type(store).__name__}"
            )
        if not prefix:
            raise ValueError("prefix must be a non-empty string (the application's name in lower case, or 'stored')")
        self.store = store
        self.prefix = prefix
        self.purpose = purpose
        self.notification_stream = f"{prefix}_{NOTIFICATIONS}"
        self._notification_nameb = check_stream_name(self.notification_stream)
        # stream -> (head, version of the envelope at head - 1): what this recorder last wrote or read
        # at the end of an originator's stream. An entry holds while the stream's head is still that
        # head (envelopes never change; removals are checked apart), so a save of an aggregate this
        # process saved or loaded last needs no read. Written under _versions_lock; read without it.
        self._versions: dict[str, tuple[int, int]] = {}
        self._versions_lock = threading.Lock()
        # originator id -> (its stream's name, the name's UTF-8 bytes as check_stream_name gives them, the
        # originator as its envelopes hold it): made once per originator, not at each save. Written under
        # _versions_lock (cleared when full); read without it.
        self._names: dict[UUID | str, tuple[str, bytes, bytes | str]] = {}
        # The embedded store's largest envelope: its saves stage their encoded envelopes in the transaction
        # themselves (see _stage). None for the PostgreSQL backend, whose append_messages they go through.
        self._max_payload: int | None = store.max_envelope_size if isinstance(store, Store) else None
        # Each thread's notification scan: ``reader`` on the notification stream and ``next``, the offset
        # it stands at (-1: open another); see select_notifications.
        self._scan = threading.local()
        # Originators as envelopes hold them (16 bytes, or text) -> as notifications give them (a UUID, or the
        # text): made once per originator, not once per notification (cleared when it grows past
        # VERSIONS_KEPT). A UUID is immutable: notifications may share one.
        self._originators: dict[bytes | str, UUID | str] = {}

    def _remember(self, stream: str, head: int, version: int) -> None:
        """Note that the envelope at ``head - 1`` of ``stream`` has ``version``."""
        versions = self._versions
        if stream in versions:  # a new value for a key the dict holds: one step, no lock
            versions[stream] = (head, version)
            return
        with self._versions_lock:
            versions = self._versions
            if len(versions) >= VERSIONS_KEPT and stream not in versions:
                del versions[next(iter(versions))]  # the oldest entry
            versions[stream] = (head, version)

    def _last_version(self, stream: str, head: int) -> int | None:
        """The version at ``head - 1`` of ``stream`` (``head`` > its first readable offset), or None if removed."""
        known = self._versions.get(stream)
        if known is not None and known[0] == head:
            return known[1]
        env = _exactly_at(self.store, stream, head - 1)
        if env is None:
            return None
        version: int = env.message[1]
        self._remember(stream, head, version)
        return version

    def originator_stream(self, originator_id: UUID | str) -> str:
        return f"{self.prefix}_{self.purpose}-{originator_id}"

    def _names_of(self, originator_id: UUID | str) -> tuple[str, bytes, bytes | str]:
        """The originator's stream name, its UTF-8 bytes (``ValueError`` if it is no valid stream name) and
        the originator as its envelopes hold it (16 bytes for a UUID, else text)."""
        names = self._names.get(originator_id)
        if names is None:
            stream = self.originator_stream(originator_id)
            key = originator_id.bytes if isinstance(originator_id, UUID) else str(originator_id)
            names = (stream, check_stream_name(stream), key)
            with self._versions_lock:
                if len(self._names) >= VERSIONS_KEPT:
                    self._names.clear()
                self._names[originator_id] = names
        return names


class LogstoreAggregateRecorder(LogstoreRecorder, AggregateRecorder):
    """Events (or snapshots) of each originator in a stream of its own; no notification log."""

    notifies = False
    """Whether inserted events also go to the notification stream (application and process recorders)."""

    @_translating
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        ids = self._insert(stored_events, kwargs.get("tracking"))
        return ids if self.notifies else None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None) -> list[int]:
        """Write the events (and the tracking record) in one transaction; the notification ids when notifying."""
        now = datetime.now(UTC)  # one instant for the events of one save
        if len(stored_events) == 1:
            groups, every = self._one(stored_events[0], now)
        else:
            groups, every = self._many(stored_events, now)
        store = self.store
        while True:
            tx, committer = store.begin_tx()
            try:
                self._stage(tx, groups, every, tracking)
                committer.commit()
            except OffsetConflictError:
                # Another writer got there first (seen at append or at commit): check again against
                # what it wrote, which either clashes (IntegrityError above) or not (try again).
                if tx.active:
                    committer.rollback()
                continue
            except BaseException:
                if tx.active:
                    committer.rollback()
                raise
            # The appends as committed: one per group, in order, then the notifications (with the offsets
            # the writer gave them), then the tracking record.
            appends = tx.appends
            n = 0
            for _nameb, events, _envs in groups.values():
                stream, _nb, first, payloads = appends[n]
                self._remember(stream, first + len(payloads), events[-1].originator_version)
                n += 1
            if not self.notifies or not stored_events:
                return []
            first = appends[n][2] + 1
            return list(range(first, first + len(every)))

    def _one(self, event: StoredEvent, now: datetime) -> tuple[_Groups, list[Envelope]]:
        """:meth:`_many` for a save of one event (the common case), with less to build."""
        stream, nameb, key = self._names_of(event.originator_id)
        mid = _message_ids(1)[0]
        env = _envelope(Envelope, (mid, mid, mid, now, now, event.topic, [key, event.originator_version, event.state]))
        every = [env]
        return {stream: (nameb, [event], every)}, every

    def _many(self, stored_events: Sequence[StoredEvent], now: datetime) -> tuple[_Groups, list[Envelope]]:
        """The events' envelopes by originator stream, with the events, and all of them in the order given.

        ``IntegrityError`` when the versions of one originator do not ascend.
        """
        every: list[Envelope] = []  # in the order given: the notification order
        groups: _Groups = {}
        seen: dict[UUID | str, tuple[bytes | str, list[StoredEvent], list[Envelope]]] = {}
        for event, mid in zip(stored_events, _message_ids(len(stored_events)), strict=True):
            oid = event.originator_id
            entry = seen.get(oid)
            if entry is None:
                stream, nameb, key = self._names_of(oid)
                group = groups.get(stream)  # another id object of the same originator (a UUID and its text)
                if group is None:
                    group = groups[stream] = (nameb, [], [])
                entry = seen[oid] = (key, group[1], group[2])
            key, events, envs = entry
            if events and event.originator_version <= events[-1].originator_version:
                raise IntegrityError(
                    f"{self.originator_stream(oid)}: versions in one insert must ascend, got "
                    f"{events[-1].originator_version} then {event.originator_version}"
                )
            env = _envelope(
                Envelope, (mid, mid, mid, now, now, event.topic, [key, event.originator_version, event.state])
            )
            events.append(event)
            envs.append(env)
            every.append(env)
        return groups, every

    def _stage(
        self,
        tx: Tx,
        groups: _Groups,
        every: list[Envelope],
        tracking: Tracking | None,
    ) -> None:
        """Append the events, their notifications and the tracking record to ``tx``, checking versions."""
        store = self.store
        staged = tx.appends
        limit = self._max_payload
        encoded: list[list[bytes]] = []  # each group's envelopes as append_messages encoded them
        for stream, (nameb, events, envs) in groups.items():
            info = store.stream_info(stream)
            head = 0 if info is None else info.head
            if info is not None and not info.deleted and info.first < head:
                last = self._last_version(stream, head)
                if last is not None and events[0].originator_version <= last:
                    raise IntegrityError(
                        f"{stream}: version {events[0].originator_version} is not above the last recorded "
                        f"version {last}"
                    )
            if limit is None:
                store.append_messages(tx, stream, head, envs)
                encoded.append(staged[-1][3])
                continue
            # The embedded store: what append_messages would do, without its checks of what is known here
            # (a fresh transaction of this store, a checked name, one append per stream, the head just
            # read): check and encode the envelopes, and stage them at that head. The commit checks the
            # head again (OffsetConflictError: tried again above) and the message ids.
            payloads = _encode_saved(envs, stream, head, limit)
            mids = [env.message_id for env in envs]
            tx.stage(stream, nameb, head, payloads, mids)
            encoded.append(payloads)
        if self.notifies and every:
            # The same envelopes again, in the order given: staged as append_messages encoded them above
            # (checked and within the size limit there), rather than encoded a second time. The stream's
            # name is checked in __init__, and the transaction by the appends above.
            if len(encoded) > 1:
                by_env = {
                    id(env): payload
                    for (_nameb, _events, envs), group in zip(groups.values(), encoded, strict=True)
                    for env, payload in zip(envs, group, strict=True)
                }
                payloads = [by_env[id(env)] for env in every]
                mids = [env.message_id for env in every]
            else:
                payloads = encoded[0]
                if limit is None:
                    mids = [env.message_id for env in every]
                # else: the one group's ids, staged above, are these in the same order (the same list)
            tx.stage(self.notification_stream, self._notification_nameb, ANY_OFFSET, payloads, mids)
        if tracking is not None:
            _stage_tracking(store, tx, self.prefix, tracking)

    @_translating
    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        store = self.store
        stream = self.originator_stream(originator_id)
        info = store.stream_info(stream)
        if info is None or info.deleted or info.first == info.head:
            return []
        start = info.first
        if desc and limit is not None and gt is None and lte is None:
            start = max(start, info.head - limit)  # the newest ones only (the last snapshot, say)
        elif gt is not None and info.head - start > SCAN_LIMIT:
            start = _first_above(store, stream, start, info.head, gt)  # after a snapshot or a cached version
        found: list[StoredEvent] = []
        last: tuple[int, int] | None = None  # (offset, version) of the last envelope read
        reader = store.stream(stream, start)
        with reader:
            while reader.try_next():
                offset = reader.offset()
                if offset >= info.head:
                    break
                env = reader.get()
                version = env.message[1]
                last = (offset, version)
                if gt is not None and version <= gt:
                    continue
                if lte is not None and version > lte:
                    break
                found.append(_stored_event(env, originator_id))
        if last is not None and last[0] == info.head - 1:
            self._remember(stream, info.head, last[1])  # a save after this load need not read the last one
        if desc:
            found.reverse()
        if limit is not None:
            del found[limit:]
        return found


class LogstoreApplicationRecorder(LogstoreAggregateRecorder, ApplicationRecorder):
    """Events in their originators' streams and, in the same transaction, in the notification stream."""

    notifies = True

    @_translating
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        first = 1 if start is None else start if inclusive_of_start else start + 1
        first = max(first, 1)
        wanted = frozenset(topics)
        found: list[Notification] = []
        if limit <= 0 or (stop is not None and stop < first):
            return found
        # A scan in pages goes on with the reader of the page before, in the thread that read it: no
        # reader to open per page, and what it decoded ahead is the next page's start.
        scan = self._scan
        reader: StreamReader | PgStreamReader | None = getattr(scan, "reader", None)
        if reader is None or reader.closed or scan.next != first - 1:
            if reader is not None:
                reader.close()
            reader = scan.reader = self.store.stream(self.notification_stream, first - 1)
        scan.next = -1  # until this page is taken whole (an error leaves the reader to be opened again)
        offset_of = reader.offset
        append = found.append
        last = (1 << 63) if stop is None else stop  # offsets below ``stop`` are ids up to it
        left = limit
        after = first - 1  # the offset after the last envelope taken from the reader
        originators = self._originators  # one UUID per originator, kept from page to page
        if len(originators) > VERSIONS_KEPT:
            originators.clear()
        # Each Notification as _fast_notification makes it, here in the loop (a call less per notification).
        fast = _make_notification is _fast_notification
        new, give = _new, _set
        for env in reader:
            offset = offset_of()
            after = offset + 1
            if offset >= last:
                scan.next = -1  # taken from the reader, not handed out: the next page opens a reader
                return found
            topic = env.type
            if wanted and topic not in wanted:
                continue
            key, version, state = env.message
            oid = originators.get(key)
            if oid is None:
                oid = originators[key] = _originator(key)
            if fast:
                n = new(Notification)
                give(
                    n,
                    "__dict__",
                    {
                        "originator_id": oid,
                        "originator_version": version,
                        "topic": topic,
                        "state": state,
                        "id": offset + 1,
                    },
                )
                append(n)
            else:
                append(_make_notification(oid, version, topic, state, offset + 1))
            left -= 1
            if not left:
                break
        scan.next = after
        return found

    @_translating
    def max_notification_id(self) -> int | None:
        return self.store.head(self.notification_stream) or None

    @_translating
    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return LogstoreSubscription(self, gt=gt, topics=topics)


class LogstoreSubscription(Subscription[ApplicationRecorder]):
    """The notifications after ``gt``, then each new one as it is committed (by any thread or process).

    A logstore reader on the notification stream: it blocks in ``next()`` until a commit wakes it,
    without polling. ``stop()``, from any thread, closes the reader, which ends the iteration.
    """

    def __init__(self, recorder: LogstoreApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()):
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._wanted = frozenset(topics)
        self.stopped = False
        """Whether :meth:`stop` was called: the iteration then ends."""
        self._stream = recorder.notification_stream
        self._reader: Stream = recorder.store.stream(self._stream, max(gt or 0, 0))

    def _stopped(self) -> bool:
        """Whether :meth:`stop` was called (by now: another thread may call it meanwhile)."""
        return self.stopped

    def stop(self) -> None:
        super().stop()
        self.stopped = True
        self._reader.close()

    def __next__(self) -> Notification:
        reader = self._reader
        while True:
            if self.stopped:
                raise StopIteration
            try:
                reader.next()
                env = reader.get()
                offset = reader.offset()
            except LogStoreError as e:
                if isinstance(e, StreamClosedError) and self._stopped():
                    raise StopIteration from None
                error = translate(e, f"subscription to {self._stream}")
                if error is None:
                    raise
                raise error from e
            if self._wanted and env.type not in self._wanted:
                continue
            return _notification(env, offset)


class LogstoreTrackingRecorder(LogstoreRecorder, TrackingRecorder):
    """Each upstream application's processed notification ids in a stream, ascending."""

    @_translating
    def insert_tracking(self, tracking: Tracking) -> None:
        store = self.store
        while True:
            tx, committer = store.begin_tx()
            try:
                _stage_tracking(store, tx, self.prefix, tracking)
                committer.commit()
            except OffsetConflictError:
                if tx.active:
                    committer.rollback()
                continue  # another writer tracked first: check again against what it wrote
            except BaseException:
                if tx.active:
                    committer.rollback()
                raise
            return

    @_translating
    def wait(
        self,
        application_name: str,
        notification_id: int | None,
        timeout: float = 1.0,
        interrupt: threading.Event | None = None,
    ) -> None:
        """Return once a tracking id of ``application_name`` at or above ``notification_id`` is recorded.

        A reader on the tracking stream wakes at each tracking record committed, by any thread or
        process. ``TimeoutError`` after ``timeout`` seconds; ``WaitInterruptedError`` once
        ``interrupt`` is set (looked at every ``INTERRUPT_CHECK`` seconds and at each record).
        """
        if notification_id is None:
            return
        deadline = time.monotonic() + timeout
        store = self.store
        stream = _tracking_stream(self.prefix, application_name)
        head, last = _max_tracking(store, stream)
        reader = store.stream(stream, head)  # records committed after the head read
        with reader:
            while last is None or last < notification_id:
                if interrupt is not None and interrupt.is_set():
                    raise WaitInterruptedError
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout} s waiting for notification {notification_id} of application "
                        f"{application_name!r} to be processed (last processed: {last})"
                    )
                try:
                    reader.next(timeout=remaining if interrupt is None else min(remaining, INTERRUPT_CHECK))
                except TimeoutError:
                    continue
                last = int(reader.get().message)

    @_translating
    def max_tracking_id(self, application_name: str) -> int | None:
        return _max_tracking(self.store, _tracking_stream(self.prefix, application_name))[1]


class LogstoreProcessRecorder(LogstoreTrackingRecorder, LogstoreApplicationRecorder, ProcessRecorder):
    """Events, notifications and the tracking record of one call in one transaction."""


# -- the store, shared by the factories of one process --------------------------------------

_shared_lock = threading.Lock()
_shared: dict[tuple[object, ...], tuple[AnyStore, int]] = {}
"""Open stores with how many factories use each: one open per store (and options) and process.

Keyed by the real path of a store directory, or by a URL with the schema and the options."""


def is_url(path: str) -> bool:
    """Whether ``LOGSTORE_PATH`` is a URL rather than a store directory."""
    return "://" in path


def _redact(url: str) -> str:
    """``url`` without its password, for messages (the PostgreSQL backend's redaction when it is installed)."""
    try:
        from logstore.postgres.store import redact  # noqa: PLC0415 - psycopg is an optional extra
    except ImportError:
        return url.split("://", 1)[0] + "://..."
    return redact(url)


def open_shared(
    path: str,
    *,
    create: bool = True,
    durability: str = "fsync",
    schema: str | None = None,
    max_connections: int | None = None,
    timeout: float | None = None,
) -> AnyStore:
    """Open the store at ``path`` for a factory, or share the one this process has open already.

    ``path`` is a store directory or a ``postgresql://`` URL; ``schema``, ``max_connections`` and
    ``timeout`` are options of a URL only (``None``: the backend's defaults).

    For a directory, raises ``OSError`` (``NotADirectoryError`` for a file, ``FileNotFoundError``
    when there is no store and ``create`` is false) and ``OperationalError`` when the store is held
    exclusively. For a URL, raises ``FileNotFoundError`` when the schema holds no store and
    ``create`` is false, ``OperationalError`` when the server cannot be reached, ``ValueError`` for
    a bad option, and ``ImportError`` without the extra ``logstore[postgres]``. Each call is paired
    with one :func:`release_shared`.
    """
    if is_url(path):
        return _open_shared_url(path, create, durability, schema, max_connections, timeout)
    for name, value in (("schema", schema), ("max_connections", max_connections), ("timeout", timeout)):
        if value is not None:
            raise ValueError(f"{name} is an option of a postgresql:// URL, and LOGSTORE_PATH {path!r} is a directory")
    real = os.path.realpath(path)
    if os.path.exists(real) and not os.path.isdir(real):
        raise NotADirectoryError(f"LOGSTORE_PATH {path!r} is a file, not a store directory")
    with _shared_lock:
        entry = _shared.get((real,))
        if entry is not None and not entry[0].closed:
            _shared[(real,)] = (entry[0], entry[1] + 1)
            return entry[0]
        if not create and not os.path.isdir(os.path.join(real, layout.SEGMENTS)):
            raise FileNotFoundError(
                f"LOGSTORE_PATH {path!r} holds no logstore store, and CREATE_TABLE is off (set it on to create one)"
            )
        try:
            store = logstore.open(real, durability=durability)
        except StoreLockedError as e:
            raise OperationalError(
                f"LOGSTORE_PATH {path!r}: the store is in use exclusively (by `logstore repair`, say): {e}"
            ) from e
        _shared[(real,)] = (store, 1)
        return store


def _open_shared_url(
    url: str,
    create: bool,
    durability: str,
    schema: str | None,
    max_connections: int | None,
    timeout: float | None,
) -> AnyStore:
    """:func:`open_shared` for a URL: the PostgreSQL backend."""
    shown = _redact(url)
    if not url.startswith(URL_SCHEMES):
        raise ValueError(
            f"LOGSTORE_PATH {shown!r} is a URL of no backend logstore has: give a store directory, "
            f"or a URL that starts with {' or '.join(URL_SCHEMES)}"
        )
    options: dict[str, Any] = {"durability": durability}
    if schema is not None:
        options["schema"] = schema
    if max_connections is not None:
        options["max_connections"] = max_connections
    if timeout is not None:
        options["timeout"] = timeout
    key = (url, *sorted(options.items()))
    with _shared_lock:
        entry = _shared.get(key)
        if entry is not None and not entry[0].closed:
            _shared[key] = (entry[0], entry[1] + 1)
            return entry[0]
        try:
            from logstore.postgres import ConnectionLostError, open_postgres  # noqa: PLC0415 - an optional extra
        except ImportError as e:
            raise ImportError(
                f"LOGSTORE_PATH {shown!r}: a PostgreSQL store needs psycopg 3 and psycopg_pool: "
                f'pip install "logstore[postgres]" ({e})'
            ) from e

        where = f"LOGSTORE_PATH {shown!r}, schema {options.get('schema', _default_schema())!r}"
        try:
            if not create:
                # Opened read-only, the backend creates nothing and says when the schema holds no store.
                try:
                    open_postgres(url, **options, readonly=True).close()
                except FileNotFoundError as e:
                    raise FileNotFoundError(
                        f"{where} holds no logstore store, and CREATE_TABLE is off (set it on to create one)"
                    ) from e
            store = open_postgres(url, **options)
        except ConnectionLostError as e:
            # The backend's message names the URL (without its password) and the schema.
            raise OperationalError(f"LOGSTORE_PATH: cannot open the PostgreSQL store at {e}") from e
        _shared[key] = (store, 1)
        return store


def _default_schema() -> str:
    from logstore.postgres import DEFAULT_SCHEMA  # noqa: PLC0415 - psycopg is an optional extra

    return DEFAULT_SCHEMA


def release_shared(store: AnyStore) -> None:
    """Give back a store from :func:`open_shared`; the last user closes it."""
    with _shared_lock:
        for key, (held, users) in list(_shared.items()):
            if held is store:
                if users > 1:
                    _shared[key] = (held, users - 1)
                    return
                del _shared[key]
                break
    store.close()


# -- the factory ----------------------------------------------------------------------------


class LogstoreFactory(InfrastructureFactory[LogstoreTrackingRecorder]):
    """Makes the recorders of one application, on the store at ``LOGSTORE_PATH``.

    Settings (each may be prefixed with the application's name in upper case, as the library does):
    ``LOGSTORE_PATH`` (required: a store directory, or a ``postgresql://`` URL),
    ``LOGSTORE_DURABILITY`` (``fsync``, ``batch`` or ``none``), ``CREATE_TABLE`` (create the store if
    missing; on by default); with a URL also ``LOGSTORE_SCHEMA`` (default ``logstore``),
    ``LOGSTORE_MAX_CONNECTIONS`` and ``LOGSTORE_TIMEOUT`` (the backend's ``max_connections`` and
    ``timeout``); and the library's own (``CIPHER_TOPIC``, ``CIPHER_KEY``, ``COMPRESSOR_TOPIC``,
    ``TRACKING_RECORDER_TOPIC``, ...).
    """

    LOGSTORE_PATH = "LOGSTORE_PATH"
    LOGSTORE_DURABILITY = "LOGSTORE_DURABILITY"
    LOGSTORE_SCHEMA = "LOGSTORE_SCHEMA"
    LOGSTORE_MAX_CONNECTIONS = "LOGSTORE_MAX_CONNECTIONS"
    LOGSTORE_TIMEOUT = "LOGSTORE_TIMEOUT"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class = LogstoreAggregateRecorder
    application_recorder_class = LogstoreApplicationRecorder
    tracking_recorder_class = LogstoreTrackingRecorder
    process_recorder_class = LogstoreProcessRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        path = self.env.get(self.LOGSTORE_PATH)
        if not path:
            raise OSError(
                "logstore store not found in the environment: set one of "
                + ", ".join(self.env.create_keys(self.LOGSTORE_PATH))
                + " to a store directory or a postgresql:// URL"
            )
        durability = self.env.get(self.LOGSTORE_DURABILITY) or "fsync"
        if durability not in ("fsync", "batch", "none"):
            raise OSError(f"{self.LOGSTORE_DURABILITY} must be 'fsync', 'batch' or 'none', got {durability!r}")
        url_only, keys = self._url_settings()
        if url_only and not is_url(path):
            raise OSError(
                f"{', '.join(keys)}: settings of a postgresql:// LOGSTORE_PATH, "
                f"and LOGSTORE_PATH {path!r} is a store directory"
            )
        if is_url(path) and not path.startswith(URL_SCHEMES):
            raise OSError(
                f"LOGSTORE_PATH {_redact(path)!r} is a URL of no backend logstore has: set it to a store "
                f"directory, or to a URL that starts with {' or '.join(URL_SCHEMES)}"
            )
        self.prefix = self.env.name.lower() or "stored"
        try:
            self.store: AnyStore | None = open_shared(
                path, create=self.env_create_table(), durability=durability, **url_only
            )
        except ValueError as e:  # a bad schema name, say
            raise OSError(f"LOGSTORE_PATH {_redact(path)!r}: {e}") from e

    def _url_settings(self) -> tuple[dict[str, Any], list[str]]:
        """The settings of a URL that are set, as options of :func:`open_shared`, and their keys.

        ``OSError`` for a bad value.
        """
        found: dict[str, Any] = {}
        keys: list[str] = []
        schema = self.env.get(self.LOGSTORE_SCHEMA)
        if schema:
            found["schema"] = schema
            keys.append(self.LOGSTORE_SCHEMA)
        for key, name, kind in (
            (self.LOGSTORE_MAX_CONNECTIONS, "max_connections", int),
            (self.LOGSTORE_TIMEOUT, "timeout", float),
        ):
            text = self.env.get(key)
            if not text:
                continue
            try:
                value = kind(text)
            except ValueError:
                value = None
            if value is None or not 0 < value < float("inf"):
                what = "a whole number >= 1" if kind is int else "a positive number of seconds"
                raise OSError(f"{key} must be {what}, got {text!r}")
            found[name] = value
            keys.append(key)
        return found, keys

    def _store(self) -> AnyStore:
        if self.store is None:
            raise OperationalError("the infrastructure factory is closed")
        return self.store

    def env_create_table(self) -> bool:
        return bool(strtobool(self.env.get(self.CREATE_TABLE) or "yes"))

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self.aggregate_recorder_class(self._store(), self.prefix, purpose)

    def application_recorder(self) -> ApplicationRecorder:
        cls: type[LogstoreApplicationRecorder] = self.application_recorder_class
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        if topic:
            cls = resolve_topic(topic)
            if not (isinstance(cls, type) and issubclass(cls, LogstoreApplicationRecorder)):
                raise TypeError(f"{self.APPLICATION_RECORDER_TOPIC} {topic!r} is not a LogstoreApplicationRecorder")
        return cls(self._store(), self.prefix)

    def tracking_recorder(
        self, tracking_recorder_class: type[LogstoreTrackingRecorder] | None = None
    ) -> LogstoreTrackingRecorder:
        cls = tracking_recorder_class
        if cls is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            cls = resolve_topic(topic) if topic else self.tracking_recorder_class
        if not (isinstance(cls, type) and issubclass(cls, LogstoreTrackingRecorder)):
            raise TypeError(f"the tracking recorder class {cls!r} is not a LogstoreTrackingRecorder")
        return cls(self._store(), self.prefix)

    def process_recorder(self) -> ProcessRecorder:
        cls: type[LogstoreProcessRecorder] = self.process_recorder_class
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        if topic:
            cls = resolve_topic(topic)
            if not (isinstance(cls, type) and issubclass(cls, LogstoreProcessRecorder)):
                raise TypeError(f"{self.PROCESS_RECORDER_TOPIC} {topic!r} is not a LogstoreProcessRecorder")
        return cls(self._store(), self.prefix)

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            release_shared(store)


Factory = LogstoreFactory
