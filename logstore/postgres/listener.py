"""Waking readers: one LISTEN connection per open store, fanned out to every waiting ``next()`` and ``anext()``.

Every commit (``append_batch``) and removal (``remove_stream``) notifies the store's channel when it
commits; the payload is the new end of the log, prefixed by ``r`` for a removal. The listener thread
blocks in ``select()`` on its connection's socket and on a wake-up pipe (for ``close()``): an idle
store makes no query and uses no CPU.

:class:`Signal` is what readers wait on: a generation count that moves at every notification (and
at every commit or removal of this process, without waiting for its notification). A reader reads
the count *before* it queries; if the query found nothing, it waits until the count moves. A commit
that the query missed became visible after the query's snapshot, so its notification arrives (and
moves the count) after the reader read it: the reader cannot sleep through it.

Notifications are not replayed: a commit made while the listener is reconnecting notifies nobody.
So the count also moves once the listener is listening again, and every waiting reader reads anew
from its position. While the server is unreachable the listener retries with a growing pause (up to
:data:`MAX_PAUSE`); readers meanwhile wait (their own queries raise
:class:`~logstore.postgres.ConnectionLostError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

logger = logging.getLogger("logstore")

MAX_PAUSE = 5.0
"""Longest pause between two attempts to reconnect the listening connection, in seconds."""

AsyncWaiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Signal:
    """The generation count that readers wait on, with the removal count beside it.

    ``_cond`` guards ``generation``, ``removals`` and ``_async``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.generation = 0
        """Moves at every commit or removal seen, and when the listener (re)connects."""
        self.removals = 0
        """Moves at every truncation or deletion seen: readers drop what they fetched ahead."""
        self._async: set[AsyncWaiter] = set()

    def bump(self, removal: bool = False) -> None:
        with self._cond:
            self.generation += 1
            if removal:
                self.removals += 1
            self._cond.notify_all()
            waiters = list(self._async)
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, generation: int, deadline: float | None, stop: Callable[[], bool]) -> bool:
        """Wait until the count moves past ``generation`` or ``stop()``; False if ``deadline`` passed first."""
        with self._cond:
            while self.generation == generation and not stop():
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            return True

    def add_async(self, waiter: AsyncWaiter) -> None:
        with self._cond:
            self._async.add(waiter)

    def discard_async(self, waiter: AsyncWaiter) -> None:
        with self._cond:
            self._async.discard(waiter)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Listener:
    """The thread that LISTENs on the store's channel and moves the :class:`Signal` at each notification."""

    def __init__(self, conninfo: str, connect_kwargs: dict[str, Any], channel: str, signal: Signal) -> None:
        self._conninfo = conninfo
        self._kwargs = connect_kwargs
        self._channel = channel
        self._signal = signal
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self.listening = threading.Event()
        """Set once the first LISTEN is in place."""
        self.connections = 0
        """How many times the listener has connected (reconnections show as more than one)."""
        self.pid = 0
        """The server process of the listening connection (0 before the first)."""
        self._thread = threading.Thread(target=self._run, name=f"logstore listener {channel}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pause = 0.05
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    self.pid = conn.info.backend_pid
                    self.connections += 1
                    pause = 0.05
                    self.listening.set()
                    # Commits made while this connection was not listening notified nobody: readers read anew.
                    self._signal.bump(removal=True)
                    self._listen(conn)
            except psycopg.Error as exc:
                if self._stopping.is_set():
                    break
                logger.warning("logstore listener on %s: %s; reconnecting in %.2f s", self._channel, exc, pause)
                self._sleep(pause)
                pause = min(MAX_PAUSE, pause * 2)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        pgconn = conn.pgconn
        with selectors.DefaultSelector() as selector:
            selector.register(pgconn.socket, selectors.EVENT_READ, "server")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                self._drain(pgconn)
                ready = selector.select()
                if any(key.data == "wake" for key, _ in ready):
                    return
                pgconn.consume_input()  # raises psycopg.OperationalError once the connection is gone

    def _drain(self, pgconn: Any) -> None:
        while True:
            note = pgconn.notifies()
            if note is None:
                return
            self._signal.bump(removal=bytes(note.extra).startswith(b"r"))

    def _sleep(self, seconds: float) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            selector.select(seconds)

    def stop(self) -> None:
        """Stop the thread and close its connection (waits for it, briefly)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(10)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
