"""Readers of a PostgreSQL store: Ax's ``messagestore.Stream`` over one stream or over the global log.

A reader keeps its position on the client: ``_next``, the offset its next query starts at. A query
fetches up to a batch of messages at or past it (each query its own snapshot, in autocommit) into
``_buf``; ``try_next()`` takes them one by one. A query that fails leaves the position where it was,
so a reader that lost its connection reads again from there: it never skips or repeats a message.

Why the global reader never skips an offset that a slower transaction is still committing: every
commit holds the ``head`` row's lock until it has become visible, so the commits become visible in
the order of their global offsets, and a snapshot that sees a commit sees every commit below it
(docs/POSTGRES.md, "Correctness").

Lock rules: ``_lock`` serialises the queries of one reader (an ``anext()`` cancelled while its query
runs in a worker thread, followed by another call); ``_buf`` is only appended to under it, and taken
from by the reader's user. Like the embedded readers, one reader is used by one thread (or task) at a
time, apart from ``close()``, which any thread may call.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from logstore.envelope import Envelope, decode
from logstore.errors import StoreClosedError, StreamClosedError
from logstore.readers import AsyncWaiter, Reader

if TYPE_CHECKING:
    import weakref

    from logstore.postgres.listener import Signal

PREFETCH = 256
"""Most messages one query fetches."""
FETCH_BYTES = 8 << 20
"""Most envelope bytes one query fetches beyond its first message (which comes whatever its size): a query
stops at the first message that starts at or past this many bytes. A batch of this many bytes or more is
therefore no proof that nothing follows it."""

# One fetched message: (offset, global offset, stream name, stream offset, envelope).
Row = tuple[int, int, str, int, Envelope]


class _Source(Protocol):
    """What a reader uses of its store (:class:`logstore.postgres.store.PostgresStore`)."""

    _signal: Signal
    _readers: weakref.WeakSet[Any]

    def _read_stream(self, name: str, start: int, limit: int) -> Sequence[tuple[int, int, bytes]]: ...

    def _read_global(self, start: int, limit: int) -> tuple[int, Sequence[tuple[int, str, int, bytes]]]: ...

    def _read_select(
        self, category: str | None, types: list[bytes] | None, start: int, limit: int
    ) -> tuple[int, Sequence[tuple[int, str, int, bytes]]]: ...

    def _saw_head(self, name: str, head: int | None) -> None: ...


class _Reader(Reader):
    """What both kinds of reader share: position, current message, waiting, closing.

    The Stream surface (``next``, ``anext``, iteration) is :class:`logstore.readers.Reader`'s; this class
    supplies the fetched rows, the queries that fetch more and the waiting (on the store's ``Signal``).
    """

    _FIRST_PREFETCH = 16

    def __init__(self, store: _Source, offset: int) -> None:
        self._store = store
        self._closed = False
        self._next = offset  # where the next query starts
        self._buf: collections.deque[Row] = collections.deque()
        self._removals = store._signal.removals  # the removal count when _buf was fetched
        self._row: Row | None = None  # the current message
        self._prefetch = self._FIRST_PREFETCH
        self._lock = threading.Lock()

    # -- fetching and taking ------------------------------------------------------------------

    def _query(self, start: int, limit: int) -> tuple[list[Row], int]:
        """Messages at or past ``start`` (at most ``limit``) and where the next query starts."""
        raise NotImplementedError

    def _fetch(self) -> None:
        """Fetch the next batch into ``_buf`` (a database round trip)."""
        with self._lock:
            if self._buf:
                return
            signal = self._store._signal
            removals = signal.removals  # before the query: a removal from here on drops what it fetched
            try:
                rows, nxt = self._query(self._next, self._prefetch)
            except StoreClosedError:
                if self._closed:  # the store closed this reader, then its pool, while the query waited for it
                    raise StreamClosedError("the stream was closed while it read") from None
                raise
            self._buf.extend(rows)
            self._next = nxt
            self._removals = removals
            if self._prefetch < PREFETCH:
                self._prefetch *= 2

    def _take(self) -> bool:
        """Step to the next fetched message, if any (and nothing was removed since it was fetched)."""
        buf = self._buf
        if not buf:
            return False
        if self._removals != self._store._signal.removals:
            with self._lock:  # drop what was fetched: the next query reads it again, without what was removed
                if buf:
                    self._next = self._restart(buf[0])
                    buf.clear()
            return False
        self._row = buf.popleft()
        return True

    def _restart(self, row: Row) -> int:
        """The offset to query again from, to read ``row`` and what followed it."""
        return row[0]

    def _advance(self) -> bool:
        if self._take():
            return True
        while True:
            self._fetch()
            fetched = bool(self._buf)
            if self._take():
                return True
            if not fetched:
                return False
            # _take dropped the batch: a removal came in during the query (a removal of this process also
            # counts again when its own notification arrives). Query again.

    # -- waiting ------------------------------------------------------------------------------

    def _wait_ticket(self) -> int:
        return self._store._signal.generation  # before the query: see Signal

    def _wait(self, ticket: int, deadline: float | None) -> bool:
        return self._store._signal.wait(ticket, deadline, lambda: self._closed)

    def _add_async_waiter(self, waiter: AsyncWaiter) -> None:
        self._store._signal.add_async(waiter)

    def _discard_async_waiter(self, waiter: AsyncWaiter) -> None:
        self._store._signal.discard_async(waiter)

    def _advance_buffered(self) -> bool:
        return self._take()  # no query on the event loop's thread

    async def _advance_async(self) -> bool:
        # The queries run in a worker thread, so the event loop never waits on the server. A cancelled
        # await leaves the fetch running: what it fetches stays in _buf, taken next time.
        if self._take():
            return True
        await asyncio.to_thread(self._fetch)
        self._check_open()
        return self._take()

    def _should_sleep(self, ticket: int) -> bool:
        return self._store._signal.generation == ticket

    def _current(self, what: str) -> Row:
        self._check_open()
        row = self._row
        if row is None:
            raise ValueError(f"{what}() before a successful next() or try_next()")
        return row

    def get(self) -> Envelope:
        """The envelope at the current position (after a successful ``next``/``try_next``)."""
        return self._current("get")[4]

    def offset(self) -> int:
        """The offset of the envelope ``get()`` returns."""
        return self._current("offset")[0]

    def stream_name(self) -> str:
        """The name of the stream the current message belongs to."""
        return self._current("stream_name")[2]

    def stream_offset(self) -> int:
        """The current message's offset within its stream."""
        return self._current("stream_offset")[3]

    def global_offset(self) -> int:
        """The current message's global offset."""
        return self._current("global_offset")[1]

    def close(self) -> None:
        """Close the stream; a ``next()`` waiting in another thread raises ``StreamClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._store._readers.discard(self)
        self._store._signal.bump()


class PgStreamReader(_Reader):
    """Reads one named stream in offset order (``store.open_stream``, ``store.stream``).

    ``name`` is the stream's name; ``found`` whether it existed (had a committed message and was not
    deleted) when the reader was opened. Removed offsets are skipped.
    """

    FIRST_PREFETCH = _Reader._FIRST_PREFETCH
    """Messages ``open_stream``'s query fetches for the reader's first batch."""

    def __init__(
        self,
        store: _Source,
        name: str,
        offset: int,
        found: bool,
        first: tuple[Sequence[tuple[int, int, bytes]], int, int] | None = None,
    ) -> None:
        super().__init__(store, offset)
        self.name = name
        self.found = found
        if first is not None:
            # The batch open_stream's query fetched (rows, the limit it asked for, the removal count
            # before it): taken as a fetch of this reader's would take it. It is data, not a proof of the
            # stream's end for a later call: once it is used up, try_next() queries again.
            rows, limit, removals = first
            with self._lock:
                out = self._rows(rows)
                self._buf.extend(out)
                self._next = out[-1][0] + 1 if out else offset
                self._removals = removals
                self._prefetch = min(limit * 2, PREFETCH)

    def _rows(self, rows: Sequence[tuple[int, int, bytes]]) -> list[Row]:
        out: list[Row] = [(soff, goff, self.name, soff, decode(env)) for soff, goff, env in rows]
        self._store._saw_head(self.name, out[-1][0] + 1 if out else None)
        return out

    def _query(self, start: int, limit: int) -> tuple[list[Row], int]:
        out = self._rows(self._store._read_stream(self.name, start, limit))
        return out, (out[-1][0] + 1 if out else start)

    def __repr__(self) -> str:
        return f"<logstore postgres stream {self.name!r} next offset {self._next}{' closed' if self._closed else ''}>"


class PgGlobalReader(_Reader):
    """Reads every stream in global (commit) order (``store.open_global``, ``store.global_stream``).

    ``offset()`` is the global offset; ``stream_name()`` and ``stream_offset()`` say where the current
    message belongs.
    """

    _FIRST_PREFETCH = 4

    def _query(self, start: int, limit: int) -> tuple[list[Row], int]:
        end, rows = self._store._read_global(start, limit)
        out: list[Row] = [(goff, goff, name, soff, decode(env)) for goff, name, soff, env in rows]
        if len(out) < limit and sum(len(env) for _goff, _name, _soff, env in rows) < FETCH_BYTES:
            # The query saw every commit below ``end`` (one snapshot), and neither of its bounds cut it:
            # nothing more lies below it.
            return out, max(start, end)
        return out, out[-1][0] + 1

    def __repr__(self) -> str:
        return f"<logstore postgres global stream next offset {self._next}{' closed' if self._closed else ''}>"


class PgSelectReader(PgGlobalReader):
    """Reads one category's streams (``store.open_category``) and/or the messages of some types
    (``types=``) in global order; ``offset()`` is the global offset. The server selects the rows by the
    ``category`` and ``type`` columns (and their indexes): nothing else is fetched."""

    def __init__(self, store: _Source, offset: int, category: str | None, types: frozenset[str] | None) -> None:
        super().__init__(store, offset)
        self.category = category
        self.types = types
        self._types = None if types is None else sorted(t.encode("utf-8") for t in types)  # as log.type holds them

    def _query(self, start: int, limit: int) -> tuple[list[Row], int]:
        end, rows = self._store._read_select(self.category, self._types, start, limit)
        out: list[Row] = [(goff, goff, name, soff, decode(env)) for goff, name, soff, env in rows]
        if len(out) < limit and sum(len(env) for _goff, _name, _soff, env in rows) < FETCH_BYTES:
            return out, max(start, end)  # as PgGlobalReader: the query saw every commit below ``end``
        return out, out[-1][0] + 1

    def __repr__(self) -> str:
        what = "global stream" if self.category is None else f"category {self.category!r}"
        return f"<logstore postgres {what} next offset {self._next}{' closed' if self._closed else ''}>"


def close_readers(readers: Any) -> None:
    """Mark ``readers`` closed (the store's close, which wakes them next)."""
    for reader in list(readers):
        reader._closed = True
