"""What readers of a store may see, and how they wait for more: one :class:`Published` per open store.

The writer role moves the store forward; readers (``StreamReader``,
``GlobalReader``, and the store's own read calls) look only at what it has
published. Everything the two sides share goes through this object, so that
``store``, ``writer``, ``reader``, ``compact`` and ``log`` depend on it and
not on each other's insides (an arrow: imports)::

    store  (opens the store and hands each part what it needs)
      ├──> compact ──> writer, log
      ├──> writer  ──> log, published
      ├──> reader  ──> log, published
      └──> log     ──> published
    published  (imports none of them)

What it owns:

- the read limits: ``visible_end`` (global offsets below it are readable)
  and ``log_start`` (global offsets below it were dropped by retention);
- the stream heads: ``catalog.head[sid]`` (the stream's next offset) and
  ``catalog.first[sid]`` (its first readable offset), with ``catalog.ids``
  (name -> id) and ``catalog.names``; the writer updates them in place;
- ``removals``: how many truncations, deletions and retention moves were
  published; a reader that decoded messages ahead drops them when it changes;
- the waiting readers: threads blocked in ``wait`` and the futures of
  ``anext()`` calls (``add_async_waiter``), and :meth:`wake`, which releases
  them all;
- the open readers of the store (``readers``, so that closing the store or
  a fork can close them) and whether the store is closed (``closed``) or
  left behind in a forked child (``forked_error``).

Lock rules. The limits, the heads and ``removals`` are written by the holder
of the writer role only (and by the store's open, before any reader exists),
and read without a lock. Publication order makes that safe: the writer puts
records and index entries in place, then the heads, then ``visible_end``
(and, for a removal, ``catalog.first`` and ``log_start`` before
``removals``); a reader reads a limit first and only then what lies below
it. ``_cond`` (a condition on its own lock) guards ``_sleepers``; ``wait``
checks the caller's readiness under it, and :meth:`wake` notifies under it,
so a wake-up between the check and the sleep is never lost (``wake`` reads
``_sleepers`` without the lock, and takes it only when some thread waits). The set of async
waiters is changed and copied under the interpreter lock only (one
operation each). ``closed`` and ``forked_error`` are plain stores read
without a lock; the fork hook sets them in the child taking no lock at all.
No method does I/O or calls out while holding ``_cond``, except the
caller's readiness test in ``wait``.

Other processes. A writing store's ``shared`` (its ``CONTROL``) is told
each publication (:meth:`publish`: the tail, then a wake-up of the
processes that wait) and each removal (:meth:`removed`); a read-only
store's ``follower`` (:class:`logstore.embedded.follow.Follower`) catches up with
what another process published when a reader has read all it knew of, when
:meth:`wait` looks, and on its watcher thread's wake-ups, which it turns into
this object's :meth:`wake`. ``readers``, ``closed`` and ``forked_error``
stay per process.

>>> import threading
>>> pub = Published()
>>> woke = threading.Thread(target=lambda: pub.wait(lambda: pub.visible_end > 0, None))
>>> woke.start()
>>> pub.visible_end = 1
>>> pub.wake()
>>> woke.join(5)
>>> woke.is_alive()
False
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from logstore.errors import LogStoreError
from logstore.index.catalog import Catalog

REMOVALS_WORD = 17
"""The index of the removal count among ``CONTROL``'s 8-byte words (byte 136), and in :attr:`Published.counter`."""
FOLLOWER_LOOK = 1.0
"""Seconds a waiting reader of a following store sleeps at most before it catches up itself (the watcher
thread wakes it sooner; this bounds the wait should the watcher fail)."""

AsyncWaiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class Shared(Protocol):
    """What the writing process tells the others (``CONTROL``, :class:`logstore.embedded.controlfile.Control`)."""

    def publish_tail(self, goff: int, segment: int, position: int) -> None: ...

    def publish_removal(self) -> None: ...

    def raise_durable(self, goff: int) -> None: ...

    def publish_durable(self, goff: int) -> None: ...

    def publish_generation(self, generation: int) -> None: ...

    def publish_epoch(self) -> None: ...

    def wake(self) -> None: ...


class Following(Protocol):
    """A read-only store's follower of another process's tail (:class:`logstore.embedded.follow.Follower`)."""

    def refresh(self) -> bool: ...

    def removals_moved(self) -> bool: ...

    def watch(self) -> None: ...


class Published:
    """The published state of one store and its waiting readers; see the module docstring."""

    __slots__ = (
        "_async",
        "_cond",
        "_sleepers",
        "catalog",
        "closed",
        "counter",
        "follower",
        "forked_error",
        "log_start",
        "readers",
        "removals",
        "shared",
        "visible_end",
    )

    def __init__(self) -> None:
        self.visible_end = 0
        """Global offsets below it are readable (writer role writes it after the heads)."""
        self.log_start = 0
        """Global offsets below it were dropped by retention."""
        self.removals = 0
        """Truncations, deletions and retention moves published so far."""
        self.counter: Any = [0] * (REMOVALS_WORD + 1)
        """``counter[REMOVALS_WORD]`` changes at every removal that any process publishes: readers compare it
        before they hand out a message decoded ahead (one index, no call). A list here; the shared words of
        ``CONTROL`` in a store that follows other processes (:class:`logstore.embedded.follow.FollowingPublished`)."""
        self.catalog = Catalog()
        """The stream heads and names (the log loads it at open; the writer updates it in place)."""
        self.closed = False
        """The store is closed (or was left behind in a forked child)."""
        self.forked_error: Callable[[], LogStoreError] | None = None
        """In a forked child: makes the error that every use of the store raises there."""
        self.readers: weakref.WeakSet[Any] = weakref.WeakSet()
        """The store's open readers (closed with the store, and in a forked child)."""
        self.shared: Shared | None = None
        """Where a writing store tells other processes what it published (``CONTROL``); None: nowhere."""
        self.follower: Following | None = None
        """A read-only store's follower of the process that writes (None: it reads what it loaded)."""
        self._cond = threading.Condition(threading.Lock())
        self._sleepers = 0  # threads in wait() (under _cond)
        self._async: set[AsyncWaiter] = set()

    # -- the writer's side ---------------------------------------------------------------------

    def publish(self, end: int, segment: int, position: int, wake: bool = True) -> None:
        """Make global offsets below ``end`` readable (writer role, after the heads); the last transaction
        ends at byte ``position`` of the segment that starts at global offset ``segment``. Other processes
        are told, and woken at once unless ``wake`` is false (a removal: :meth:`removed` wakes them once
        its count is out); this process's readers by :meth:`wake`."""
        self.visible_end = end
        shared = self.shared
        if shared is not None:
            shared.publish_tail(end, segment, position)
            if wake:
                shared.wake()

    def removed(self) -> None:
        """Count a published removal (writer role, after its bounds are in place) and wake every reader."""
        self.removals += 1
        self.counter[REMOVALS_WORD] += 1
        shared = self.shared
        if shared is not None:
            shared.publish_removal()
            shared.wake()
        self.wake()

    def wake(self) -> None:
        """Release every thread in :meth:`wait` and resolve every async waiter's future.

        With no thread in :meth:`wait` (the writer's common case, once per commit group) the condition is
        not taken: a thread counts itself in ``_sleepers`` under it before its first ``ready()``, so one
        that the count here missed came later and its ``ready()`` sees what the caller changed before."""
        if self._sleepers:
            with self._cond:
                self._cond.notify_all()
        if not self._async:
            return
        for loop, future in list(self._async):
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_resolve, future)

    # -- the readers' side ---------------------------------------------------------------------

    def wait(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """Block until ``ready()`` is true; return False if ``deadline`` (``time.monotonic()``) passes first.

        ``ready`` is called under the condition's lock, first before any
        sleep and again after each wake-up, so a :meth:`wake` after a false
        ``ready()`` always ends the sleep. It must be quick and must not
        call back into this object.
        """
        follower = self.follower
        if follower is not None:
            return self._wait_following(follower, ready, deadline)
        cond = self._cond
        with cond:
            self._sleepers += 1
            try:
                while not ready():
                    if deadline is None:
                        cond.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        cond.wait(remaining)
                return True
            finally:
                self._sleepers -= 1

    def _wait_following(self, follower: Following, ready: Callable[[], bool], deadline: float | None) -> bool:
        """:meth:`wait` in a store that follows another process: catch up before each look at ``ready``.

        The follower's watcher thread wakes this condition once it caught up with a publication; a
        failed catch-up raises here.
        """
        follower.watch()
        cond = self._cond
        while True:
            follower.refresh()
            with cond:
                self._sleepers += 1
                try:
                    if ready():
                        return True
                    if deadline is None:
                        cond.wait(FOLLOWER_LOOK)
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        cond.wait(min(remaining, FOLLOWER_LOOK))
                    if ready():
                        return True
                finally:
                    self._sleepers -= 1

    def add_async_waiter(self, waiter: AsyncWaiter) -> None:
        """Resolve ``waiter``'s future (in its loop) at the next :meth:`wake`, until discarded."""
        self._async.add(waiter)
        follower = self.follower
        if follower is not None:
            follower.watch()

    def discard_async_waiter(self, waiter: AsyncWaiter) -> None:
        self._async.discard(waiter)

    def waiting(self) -> bool:
        """Whether some thread is in :meth:`wait` or some async waiter is registered (no lock: a hint
        that is exact for a caller that changed what ``ready`` tests before asking)."""
        return self._sleepers > 0 or bool(self._async)


def _resolve(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
