"""Structural types mirroring Ax's interfaces, so that other backends can implement them.

``DataStore``, ``Tx`` and ``Committer`` are Ax's ``persistence`` package;
``Store``, ``GloballyOrderedStore`` and ``Stream`` are its ``messagestore``
package. Go's ``ctx`` becomes ``timeout=`` plus cancellation by ``close()``.
:class:`logstore.Store` satisfies all of the store protocols.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from logstore.envelope import Envelope
from logstore.results import Location


@runtime_checkable
class Tx(Protocol):
    """A transaction handle, opaque to its users (Ax ``persistence.Tx``)."""


@runtime_checkable
class Committer(Protocol):
    """Commits or rolls back a transaction (Ax ``persistence.Committer``)."""

    def commit(self) -> range: ...

    def rollback(self) -> None: ...


@runtime_checkable
class DataStore(Protocol):
    """Begins transactions (Ax ``persistence.DataStore``)."""

    def begin_tx(self) -> tuple[Tx, Committer]: ...


@runtime_checkable
class Stream(Protocol):
    """An ordered stream of messages being read (Ax ``messagestore.Stream``)."""

    def next(self, timeout: float | None = None) -> None:
        """Advance to the next message; block until one is available, the timeout passes, or the stream closes."""

    def try_next(self) -> bool:
        """Advance to the next message; return False if there are no more messages right now."""

    def get(self) -> Envelope:
        """The message at the current offset in the stream."""

    def offset(self) -> int:
        """The offset of the message returned by ``get()``."""

    def close(self) -> None:
        """Close the stream."""


@runtime_checkable
class Store(Protocol):
    """Persisted streams of messages (Ax ``messagestore.Store``)."""

    def append_messages(self, tx: Tx, stream: str, offset: int, envs: Sequence[Envelope]) -> None:
        """Append messages to a named stream; ``offset`` must be the stream's next unused offset."""

    def open_stream(self, ds: DataStore, stream: str, offset: int) -> tuple[Stream, bool]:
        """Open a stream for reading from ``offset`` (may be beyond the end); False if it does not exist."""


@runtime_checkable
class GloballyOrderedStore(Store, Protocol):
    """A store that keeps one global order across all streams (Ax ``messagestore.GloballyOrderedStore``)."""

    def open_global(self, ds: DataStore, offset: int) -> Stream:
        """Open the entire store for reading as a single stream (``offset`` may be beyond the end)."""


# The conveniences beside Ax's interfaces: apart, so that the protocols above stay Ax's.


@runtime_checkable
class CategoryStore(GloballyOrderedStore, Protocol):
    """A globally ordered store that also reads categories and filters by type (both logstore stores are one).

    A stream's category is its name up to the first ``-`` (``order-42`` is in ``order``; a name without
    ``-`` is its own category). ``types`` is ``None`` (every type) or a collection of type names.
    """

    def open_global(self, ds: DataStore, offset: int, types: Collection[str] | None = None) -> Stream:
        """``GloballyOrderedStore.open_global``, yielding only the messages of ``types`` (if given)."""

    def open_category(self, ds: DataStore, category: str, offset: int, types: Collection[str] | None = None) -> Stream:
        """Every stream of ``category`` as one stream in global order, from global ``offset``; ``offset()``
        is the global offset. Only the category's records are read (through an index)."""


@runtime_checkable
class LocatedStream(Stream, Protocol):
    """A stream that also says where its current message is (both logstore readers are one)."""

    def stream_name(self) -> str:
        """The name of the stream the current message belongs to."""

    def stream_offset(self) -> int:
        """The current message's offset within its stream."""

    def global_offset(self) -> int:
        """The current message's global offset."""

    def read(self, max_count: int = 1000) -> list[Envelope]:
        """Up to ``max_count`` of the messages available now, in one call; the last becomes the current one."""


@runtime_checkable
class ShortFormStore(Protocol):
    """The short forms of :class:`GloballyOrderedStore`'s readers, on a store that is its own data store."""

    def stream(self, stream: str, offset: int = 0) -> LocatedStream:
        """``open_stream(self, stream, offset)``'s reader, with ``found`` as an attribute."""

    def global_stream(self, offset: int = 0, types: Collection[str] | None = None) -> LocatedStream:
        """``open_global(self, offset, types)``."""

    def category(self, category: str, offset: int = 0, types: Collection[str] | None = None) -> LocatedStream:
        """``open_category(self, category, offset, types)``."""

    def read(self, stream: str, offset: int = 0) -> list[Envelope]:
        """Every message of ``stream`` from ``offset`` on that is committed now: what ``stream()`` iterates."""

    def locate(self, message_id: str) -> list[Location]:
        """Every readable place of the message ``message_id``: ``(stream, stream_offset, global_offset)``,
        in global order; empty when there is none (idempotent appends: DESIGN.md section 9)."""
