"""A writable store that has its directory to itself, until another opener asks to join.

A writable first opener (no other process had the store open) keeps the
dead-man switch of ``CONTROL`` exclusively after its load, so that no other
process can join. While it does, its writer works as a store alone: no turn
takes the write lock, no sync takes the flush lock, and the shared words are
written without them (nobody else reads or writes them); the tail is still
published at every commit. An opener that wants to join (another process, or
a second open in this one) finds the switch held, adds 1 to the join-asks word
(:data:`~logstore.embedded.controlfile.JOIN_ASKED_AT`) and tries again a moment
later. The :class:`Alone` thread sleeps on that word; woken, it has the store
let the others in (``Store._let_others_in``): at the end of the writer role's
turn that runs its call, the writer starts taking turns, and the switch is
converted to shared, which lets the waiting opener in. The store never goes back to being alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from logstore.embedded.control import Futex

logger = logging.getLogger("logstore")

ALONE_WAIT = 1.0
"""The longest sleep on the join-asks word before looking at it again (a lost wake-up costs at most this)."""


class Alone:
    """The thread that waits for an opener's ask to join (``logstore-alone``, one per store kept alone).

    ``let_in`` runs in that thread once an ask came; the thread then ends. :meth:`stop` ends it without
    calling ``let_in`` (the store closes: its close lets the others in).
    """

    def __init__(self, asks: Futex, let_in: Callable[[], None], name: str) -> None:
        self._asks = asks
        self._let_in = let_in
        self._seen = asks.value
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asks = self._asks
        try:
            while True:
                asks.wait(self._seen, ALONE_WAIT)
                if self._stopping:
                    return
                if asks.value != self._seen:
                    break
        except (OSError, ValueError):  # the word was unmapped under it (close) or the futex failed
            if self._stopping:
                return
            logger.exception("logstore: the store kept alone stopped listening for openers; letting them in")
        if not self._stopping:
            self._let_in()

    def stop(self) -> None:
        """End the thread (the store closes); it calls ``let_in`` no more. Returns once it ended, unless it is
        the calling thread."""
        self._stopping = True
        self._asks.wake()
        if self._thread is not threading.current_thread() and self._thread.ident is not None:
            self._thread.join()
