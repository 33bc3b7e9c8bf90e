"""The checks of arguments and of a store's state that both backends make, and the limits they check.

Every call of the messagestore API checks its arguments before it touches the store, with the same
errors and messages whichever backend serves it (tests/contract runs against both). Both stores build
on :class:`StoreBase`: the checks of their own state (open, writable, "is this data store me"), of an
append's arguments, and ``transaction()``.

>>> check_stream_name("order-42")
b'order-42'
>>> check_offset(-1)
Traceback (most recent call last):
ValueError: offset must be >= 0, got -1
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, Self

from logstore.envelope import Envelope, check_envelopes
from logstore.errors import OffsetConflictError, ReadOnlyError, StoreClosedError, StoreForkedError
from logstore.tx import ANY, ANY_OFFSET, AnyOffset, Committer, Tx

if TYPE_CHECKING:
    from logstore.results import Location

URL_SCHEMES = ("postgresql://", "postgres://")
"""The prefixes of a connection URL, which ``logstore.open`` hands to the PostgreSQL backend."""
MAX_STREAM_NAME = 1024
"""Longest stream name, in UTF-8 bytes."""
MAX_ENVELOPE_SIZE = 16 * 2**20
"""Largest encoded envelope, in bytes (16 MiB); an embedded store's segment must also hold it whole."""


def check_name(value: object, what: str, limit: int, empty: bool = False) -> bytes:
    """The UTF-8 bytes of ``value``, a name of at most ``limit`` UTF-8 bytes without NUL; else raise.

    ``what`` names it in the errors ("stream name", "category", ...); ``empty`` allows "".
    """
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value and not empty:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{what} {value[:64]!r} contains a NUL character")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {value[:64]!r} is not encodable as UTF-8: {exc.reason}") from None
    if len(raw) > limit:
        raise ValueError(f"{what} is {len(raw)} UTF-8 bytes, the limit is {limit}")
    return raw


def check_stream_name(stream: object) -> bytes:
    """Return the UTF-8 bytes of a valid stream name, else raise ``TypeError``/``ValueError``."""
    return check_name(stream, "stream name", MAX_STREAM_NAME)


def check_message_id(message_id: object) -> str:
    """``locate``'s argument: a ``str`` (any: an id never appended is simply nowhere)."""
    if type(message_id) is not str:
        raise TypeError(f"message_id must be a str, got {type(message_id).__name__}")
    return message_id


def category_of(stream: str) -> str:
    """A stream's category: its name up to the first ``-`` (the whole name when it has none).

    >>> category_of("order-42"), category_of("order-42-a"), category_of("orders")
    ('order', 'order', 'orders')
    """
    return stream.partition("-")[0]


def check_category(category: object) -> str:
    """Return a valid category name (a str without ``-``, NUL or unencodable characters), else raise."""
    check_name(category, "category", MAX_STREAM_NAME, empty=True)
    assert isinstance(category, str)
    if "-" in category:
        raise ValueError(f"category {category[:64]!r} contains '-': a category is a stream name up to its first '-'")
    return category


def check_types(types: object) -> frozenset[str] | None:
    """``types=`` of a reader: ``None`` (every type), or a non-empty collection of type names (str).

    A single ``str`` is refused (it would read as its characters): pass ``["OrderPlaced"]``.
    """
    if types is None:
        return None
    if isinstance(types, str | bytes | bytearray):
        raise TypeError(f"types must be a collection of type names, got one {type(types).__name__}: wrap it in a list")
    try:
        names: frozenset[object] = frozenset(types)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"types must be a collection of type names (str), got {type(types).__name__}") from None
    for name in names:
        if type(name) is not str:
            raise TypeError(f"types must hold type names (str), got {type(name).__name__}")
    if not names:
        raise ValueError("types must name at least one type (None reads every type)")
    return frozenset(str(name) for name in names)


def check_offset(offset: object) -> None:
    """Raise for an ``offset`` that is not an int >= 0 (a reader's start, a truncation point)."""
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def check_append_offset(offset: object) -> int | AnyOffset:
    """Return the offset of an append: an int >= 0 or ``logstore.ANY``; raise for anything else."""
    if offset is ANY:
        return ANY
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int or logstore.ANY, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset


def check_expected(stream: str, expected: int, offset: int) -> None:
    """Raise unless an append at ``offset`` comes where ``stream``'s head is (``expected``).

    ``expected`` is ``ANY_OFFSET`` after an append at ``logstore.ANY`` in the same transaction, whose
    offsets are only known at commit: an append at a number then raises ``ValueError``; any other
    mismatch raises :class:`~logstore.OffsetConflictError`.
    """
    if offset != expected:
        if expected == ANY_OFFSET:
            raise ValueError(
                f"stream {stream!r}: offset {offset} after an append at logstore.ANY in the same transaction"
                " (its offsets are assigned at commit); append at logstore.ANY again"
            )
        raise OffsetConflictError(stream, expected, offset)


class _Locating(Protocol):
    def locate(self, message_id: str) -> list[Location]: ...


def committed_at(store: _Locating, stream: str, offset: int, envs: Sequence[object]) -> bool:
    """Whether the first of ``envs`` is committed at ``offset`` of ``stream``: an append below the stream's
    head that may be a retry of a commit whose outcome its client did not learn. ``append_messages`` then
    stages it, and the commit decides (the original offsets, or :class:`~logstore.DuplicateMessageError`,
    or :class:`~logstore.OffsetConflictError`)."""
    env = envs[0] if envs else None
    if type(env) is not Envelope or type(env.message_id) is not str:
        return False  # encode_many says what is wrong with it
    return any(loc.stream == stream and loc.stream_offset == offset for loc in store.locate(env.message_id))


def check_timeout(timeout: object) -> None:
    """Raise for a ``timeout`` that is not None or a number of seconds >= 0 (every backend's readers)."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if not timeout >= 0:  # also refuses NaN
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")


class StoreBase:
    """What both backends' stores share: the checks every member of the API makes first, and ``transaction``.

    The store sets ``path`` and ``readonly``, keeps ``_closed`` and ``_forked`` (used in a child made by
    ``fork()``), says in :meth:`_forked_error` why a store carried into a forked child refuses, and
    begins transactions (:meth:`begin_tx`).
    """

    path: str
    readonly: bool
    _closed: bool
    _forked: bool

    def _forked_error(self) -> StoreForkedError:
        raise NotImplementedError

    def _check_open(self) -> None:
        # Every member that reads or writes the store calls this first. What stays readable after close():
        # the settings (path, durability, readonly, ...), what the open did (the embedded recovery_report)
        # and close() itself, which is idempotent. In a forked child the refusal says so, not just "closed".
        if self._closed or self._forked:
            if self._forked:
                raise self._forked_error()
            raise StoreClosedError(f"{self.path}: the store is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"{self.path}: the store is open read-only")

    def _check_ds(self, ds: object) -> None:
        if ds is not self:
            raise ValueError("the data store passed in is not this store (open streams through the store itself)")

    def _check_append(
        self, tx: Tx, stream: str, offset: int | AnyOffset, envs: Sequence[Envelope]
    ) -> tuple[bytes, int | AnyOffset]:
        """The checks of ``append_messages``, in order: the store, ``tx``, ``stream``, ``offset``, ``envs``.

        Returns the stream name's UTF-8 bytes and the offset (an int >= 0 or ``ANY``).
        """
        self._check_writable()
        if type(tx) is not Tx:
            raise TypeError(f"tx must be a logstore Tx, got {type(tx).__name__}")
        tx.check_appendable(self)
        nameb = check_stream_name(stream)
        offset = check_append_offset(offset)
        check_envelopes(envs)
        return nameb, offset

    def begin_tx(self) -> tuple[Tx, Committer]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction that commits when the block ends and rolls back if it raises.

        After the block, ``tx.global_offsets`` is the range of global offsets committed.
        """
        tx, committer = self.begin_tx()
        try:
            yield tx
        except BaseException:
            committer.rollback()
            raise
        committer.commit()
