"""What the readers of both backends share: the ``messagestore.Stream`` surface over a backend's fetching.

A reader (:class:`Reader`) hands out messages one by one from what its backend fetched ahead;
:meth:`Reader.try_next`, :meth:`Reader.next` (waiting in a thread), :meth:`Reader.anext` (waiting on an
event loop), iteration (``for`` yields what is there now, ``async for`` waits for each message), closing
and the checks of their arguments are written once, here. A backend's reader supplies the rest:

- ``_advance()``: step to the next message available now (fetching ahead as needed), without waiting;
- ``_wait_ticket()`` and ``_wait(ticket, deadline)``: how a thread waits for more to be committed. The
  ticket is taken before ``_advance()``, so a commit between the two is never slept through;
- ``_add_async_waiter``/``_discard_async_waiter``, ``_advance_buffered()``, ``_advance_async()`` and
  ``_should_sleep(ticket)``: the same for ``anext()``, whose future the backend's wake-up resolves;
- ``get()``, ``offset()``, ``stream_name()``, ``stream_offset()``, ``global_offset()`` and ``close()``:
  the current message, in the backend's own buffer.

Like the readers themselves, one reader is used by one thread (or task) at a time, apart from
``close()``, which any thread may call; a waiting ``next()`` or ``anext()`` then raises
:class:`~logstore.StreamClosedError`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Self

from logstore.checks import check_timeout
from logstore.envelope import Envelope
from logstore.errors import LogStoreError, StreamClosedError

DEFAULT_READ = 1000
"""How many messages ``read()`` returns at most when not told."""


def check_max_count(max_count: object) -> None:
    """Raise for a ``max_count`` of ``read()`` that is not an int >= 1."""
    if isinstance(max_count, bool) or not isinstance(max_count, int):
        raise TypeError(f"max_count must be an int, got {type(max_count).__name__}")
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")


AsyncWaiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
"""A waiting ``anext()``: its loop and the future that a wake-up resolves."""


class Iterating:
    """``for``, ``async for`` and ``with`` over a stream's ``__next__``, ``anext()`` and ``close()``: what
    every reader and a subscription (:class:`logstore.subscriptions.Subscription`) share."""

    __slots__ = ()

    async def anext(self, timeout: float | None = None) -> Envelope:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __iter__(self) -> Self:
        return self

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Envelope:
        """``async for env in stream`` waits for each message and ends when the stream is closed."""
        try:
            return await self.anext()
        except StreamClosedError:
            raise StopAsyncIteration from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reader(Iterating):
    """The messagestore ``Stream`` surface of a reader; a backend's reader supplies fetching and waiting."""

    __slots__ = ("__weakref__", "_closed")

    _closed: bool

    # -- what a backend supplies --------------------------------------------------------------

    def _advance(self) -> bool:
        """Step to the next message available now; return whether there was one. Never waits."""
        raise NotImplementedError

    def _wait_ticket(self) -> Any:
        """What ``_wait`` compares against to see whether something was committed since (before ``_advance``)."""
        return None

    def _wait(self, ticket: Any, deadline: float | None) -> bool:
        """Block until something may have been committed since ``ticket``, or the reader is closed.

        Returns False when ``deadline`` (``time.monotonic()``) passed first.
        """
        raise NotImplementedError

    def _add_async_waiter(self, waiter: AsyncWaiter) -> None:
        raise NotImplementedError

    def _discard_async_waiter(self, waiter: AsyncWaiter) -> None:
        raise NotImplementedError

    def _advance_buffered(self) -> bool:
        """``_advance`` without I/O that could hold up an event loop (``anext()``'s first look)."""
        return self._advance()

    async def _advance_async(self) -> bool:
        """``_advance`` for ``anext()``, with its waiter registered: a backend may do its I/O off the loop."""
        self._check_open()
        return self._advance()

    def _should_sleep(self, ticket: Any) -> bool:
        """Whether ``anext()`` may sleep on its future: nothing was committed since ``ticket``."""
        return True

    def _closed_error(self, what: str = "the stream is closed") -> LogStoreError:
        """Why a closed reader refuses (a backend may say more, e.g. that it was carried across a fork)."""
        return StreamClosedError(what)

    def get(self) -> Envelope:
        """The envelope at the current position (after a successful ``next``/``try_next``)."""
        raise NotImplementedError

    def offset(self) -> int:
        """The offset of the envelope ``get()`` returns (in its stream, or global for a global reader)."""
        raise NotImplementedError

    def stream_name(self) -> str:
        """The name of the stream the current message belongs to."""
        raise NotImplementedError

    def stream_offset(self) -> int:
        """The current message's offset within its stream."""
        raise NotImplementedError

    def global_offset(self) -> int:
        """The current message's global offset (its position in the whole log)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the stream; a ``next()`` waiting in another thread raises ``StreamClosedError``."""
        raise NotImplementedError

    # -- the Stream protocol ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def try_next(self) -> bool:
        """Advance to the next message if one is available now; return whether it did."""
        self._check_open()
        return self._advance()

    def next(self, timeout: float | None = None) -> None:
        """Advance to the next message, waiting for one to be committed if need be.

        Raises ``TimeoutError`` after ``timeout`` seconds (``None`` waits for
        ever) and :class:`~logstore.StreamClosedError` if the stream or its
        store is closed, including from another thread while waiting.
        """
        check_timeout(timeout)
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ticket = self._wait_ticket()
            if self._advance():
                return
            if not self._wait(ticket, deadline):
                raise TimeoutError(f"no message within {timeout} s")
            if self._closed:
                raise self._closed_error("the stream was closed while waiting")

    async def anext(self, timeout: float | None = None) -> Envelope:
        """Await the next message and return it; cancel like any await.

        ``timeout`` raises ``TimeoutError``; closing the stream raises
        :class:`~logstore.StreamClosedError`.
        """
        check_timeout(timeout)
        self._check_open()
        if self._advance_buffered():
            return self.get()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            future: asyncio.Future[None] = loop.create_future()
            waiter = (loop, future)
            # Registered before looking: a wake-up from here on resolves the future, so none is missed.
            self._add_async_waiter(waiter)
            try:
                ticket = self._wait_ticket()
                if await self._advance_async():
                    return self.get()
                if self._should_sleep(ticket):
                    if deadline is None:
                        await future
                    else:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            raise TimeoutError(f"no message within {timeout} s")
                        try:
                            await asyncio.wait_for(future, remaining)
                        except TimeoutError:
                            raise TimeoutError(f"no message within {timeout} s") from None
            finally:
                self._discard_async_waiter(waiter)
            self._check_open()

    def read(self, max_count: int = DEFAULT_READ) -> list[Envelope]:
        """Up to ``max_count`` of the messages available now, in order, in one call (empty when none).

        The last one returned becomes the current message (``offset()``, ``stream_name()``, ...), as if
        ``try_next()`` had stepped through them. Never waits: ``next()`` waits for the first of more.
        """
        check_max_count(max_count)
        self._check_open()
        out: list[Envelope] = []
        while len(out) < max_count and self._advance():
            out.append(self.get())
        return out

    def __next__(self) -> Envelope:
        """``for env in stream`` yields the messages available now, then stops."""
        self._check_open()
        if not self._advance():
            raise StopIteration
        return self.get()

    @property
    def closed(self) -> bool:
        return self._closed
