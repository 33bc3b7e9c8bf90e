"""A server restart under a store: a commit in flight, blocked readers, readers part way, the listener.

Each test runs a private server (tests/postgres/server.py) and stops it as ``pg_ctl stop -m fast``
or ``-m immediate`` does, then starts it again: never the shared server the other tests use. A
commit in flight at the stop raises ``CommitOutcomeUnknownError`` (or returns: a fast stop may let
its backend finish) and never half-lands (``commit_outcome`` says which); commits after the restart
work; a reader blocked in ``next()`` across the restart wakes and reads on from its position, with no
skip and no repeat; the listener listens again, so that a later commit of another client wakes a
blocked reader promptly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import logstore
from logstore import Envelope
from logstore.postgres import CommitOutcomeUnknownError, ConnectionLostError
from tests.postgres.server import PrivateServer, why_not

pytestmark = pytest.mark.skipif(bool(why_not()), reason=why_not() or "-")

WAIT = 60.0
"""Bound of what must happen once the server is back (the listener's reconnection pause is at most 5 s)."""
WAKE = 10.0
"""Bound of a blocked reader's wake by a notification: generous, and well below any fallback (there is no
polling: a reader that the listener does not wake sleeps until its timeout)."""


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    srv = PrivateServer()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def _envs(tag: str, n: int) -> list[Envelope]:
    return [Envelope.new("E", {"tag": tag, "i": i}) for i in range(n)]


class Tail:
    """A thread that reads ``reader`` with ``next()`` until the reader is closed, keeping each offset and id."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.got: list[tuple[int, str]] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._entered = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._entered.wait(WAIT)

    def _run(self) -> None:
        self._entered.set()
        try:
            while True:
                self.reader.next(timeout=WAIT * 4)
                with self._cond:
                    self.got.append((self.reader.offset(), self.reader.get().message_id))
                    self._cond.notify_all()
        except logstore.StreamClosedError:
            return  # the test closed the reader: the end
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> list[tuple[int, str]]:
        """What the reader has read once it has ``n`` messages (fails after ``timeout`` seconds or on an error)."""
        with self._cond:
            done = self._cond.wait_for(lambda: len(self.got) >= n or self.error is not None, timeout)
            assert self.error is None, f"the reader failed: {self.error!r}"
            assert done, f"the reader had {len(self.got)} of {n} messages after {timeout} s: {self.got}"
            return list(self.got)

    def close(self) -> None:
        """Close the reader (which ends the wait) and the thread."""
        self.reader.close()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()
        assert self.error is None, self.error


def _commit(store: Any, stream: str, envs: list[Envelope]) -> list[tuple[int, str]]:
    """Commit ``envs`` to ``stream`` at its head; (global offset, message id) of each."""
    with store.transaction() as tx:
        tx.append(stream, store.head(stream), envs)
    assert tx.global_offsets is not None
    return [(g, e.message_id) for g, e in zip(tx.global_offsets, envs, strict=True)]


def _wait_until(what: str, done: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.01)  # polling a thread's state that has no event of its own


def _commit_stopped_at_the_head_lock(server: PrivateServer, store: Any, schema: str) -> tuple[Any, dict[str, Any]]:
    """Start a commit in a thread that the head row's lock (held from outside) stops inside ``append_batch``.

    Returns the lock holder's connection and the dict the commit's outcome lands in, once the commit waits.
    """
    blocker = psycopg.connect(server.url)
    blocker.execute(sql.SQL("SELECT * FROM {}.head FOR UPDATE").format(sql.Identifier(schema)))
    outcome: dict[str, Any] = {"envs": _envs("in-flight", 3)}

    def commit() -> None:
        try:
            with store.transaction() as tx:
                tx.append("a", store.head("a"), outcome["envs"][:2])
                tx.append("b", 0, outcome["envs"][2:])
            outcome["range"] = tx.global_offsets
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    outcome["thread"] = threading.Thread(target=commit, daemon=True)
    outcome["thread"].start()
    deadline = time.monotonic() + WAIT
    with psycopg.connect(server.url, autocommit=True) as admin:  # a view of its own: a transaction's is frozen
        while True:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
                " AND query LIKE '%%append_batch%%'",
                (f"logstore {schema}",),
            ).fetchone()
            if row == (1,):
                return blocker, outcome
            assert time.monotonic() < deadline, f"the commit never waited for the head row: {outcome}"
            time.sleep(0.01)  # polling the server's own view: there is no event to wait on


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_restart_fails_the_commit_in_flight_whole_and_blocked_readers_read_on(server, mode):
    schema = "restart"
    store = logstore.open(server.url, schema=schema)
    other = logstore.open(server.url, schema=schema)  # another client: its commits wake readers by notification
    try:
        before = _commit(store, "a", _envs("before", 3))
        glob = store.global_stream()
        part = store.global_stream()  # a reader part way through, by try_next, when the server stops
        assert part.try_next() and part.offset() == 0
        assert [glob.offset() for _ in iter(glob)] == [0, 1, 2]
        stream_a = store.stream("a", 3)
        tails = [Tail(glob), Tail(stream_a)]

        blocker, outcome = _commit_stopped_at_the_head_lock(server, store, schema)
        server.stop(mode)
        outcome["thread"].join(WAIT)
        assert not outcome["thread"].is_alive()
        blocker.close()
        ids = [e.message_id for e in outcome["envs"]]
        server.start()
        if "error" in outcome:
            error = outcome["error"]
            assert isinstance(error, CommitOutcomeUnknownError), outcome
            assert "may or may not have committed" in str(error)
            assert error.message_ids == ids
            landed = store.commit_outcome(error)
        else:  # the server committed it as it stopped (a fast stop lets a backend finish), and said so
            landed = outcome["range"]
        # All of the commit in flight or none of it, never half.
        located = [store.locate(mid) for mid in ids]
        if landed is None:
            assert located == [[]] * 3
            in_flight: list[tuple[int, str]] = []
        else:
            assert landed == range(3, 6)
            assert located == [[("a", 3, 3)], [("a", 4, 4)], [("b", 0, 5)]]
            in_flight = list(zip(landed, ids, strict=True))
        end = 3 + len(in_flight)
        assert (store.global_head, store.head("a"), store.head("b")) == (
            end,
            end - len(in_flight) // 3,
            len(in_flight) // 3,
        )
        in_flight_a = in_flight[:2]
        # Commits after the restart work, from both clients, on connections made since.
        after = _commit(other, "a", _envs("after", 1))
        assert after[0][0] == end
        want = in_flight + after
        assert tails[0].wait_for(len(want), WAIT) == want
        want_a = [*in_flight_a, (3 + len(in_flight_a), after[0][1])]
        assert tails[1].wait_for(len(want_a), WAIT) == want_a
        after += _commit(store, "a", _envs("own", 1))
        want = in_flight + after
        assert tails[0].wait_for(len(want), WAKE) == want
        # The listener listens again: a commit of the other client wakes the blocked readers by its notification.
        listener = store._listener
        assert listener is not None
        _wait_until("the listener reconnects", lambda: listener.connections == 2)
        after += _commit(other, "a", _envs("woken", 1))
        want = in_flight + after
        assert tails[0].wait_for(len(want), WAKE) == want
        want_a = [*in_flight_a, *((3 + len(in_flight_a) + k, mid) for k, (_g, mid) in enumerate(after))]
        assert tails[1].wait_for(len(want_a), WAKE) == want_a
        after += _commit(other, "c", _envs("again", 1))
        want = in_flight + after
        assert tails[0].wait_for(len(want), WAKE) == want
        for tail in tails:
            tail.close()
        # Every message once, in order: the reader blocked across the restart, and the one part way through.
        assert [g for g, _ in tails[0].got] == list(range(3, end + 4))
        assert [o for o, _ in tails[1].got] == list(range(3, 3 + len(in_flight_a) + 3))
        rest = [part.offset() for _ in iter(part)]
        assert [0, *rest] == list(range(end + 4))
        with store.global_stream() as log:
            assert [(log.offset(), log.get().message_id) for _ in iter(log)] == before + want
    finally:
        store.close()
        other.close()


def test_regression_after_an_outage_reads_and_commits_fail_clearly_then_work_as_soon_as_the_server_is_back(server):
    """Reads and commits while the server is down raise ConnectionLostError (nothing took effect); once it is
    back the very next ones work, and a reader whose query failed reads on from where it was.

    Regression: the pool paused ever longer between its attempts to reconnect (1 s, doubling, for up to
    5 minutes), so after an outage of a few seconds the next read waited past the store's ``timeout``
    for a server that was already back."""
    schema = "down"
    with logstore.open(server.url, schema=schema, timeout=2) as store:
        first = _commit(store, "s", _envs("first", 2))
        reader = store.global_stream()
        assert reader.try_next() and reader.offset() == 0
        reader_b = store.global_stream(1)
        server.stop("fast")
        with pytest.raises(ConnectionLostError):
            reader_b.try_next()
        with pytest.raises(ConnectionLostError), store.transaction() as tx:
            tx.append("s", 2, _envs("down", 1))
        server.start()
        assert [reader_b.offset() for _ in iter(reader_b)] == [1]
        second = _commit(store, "s", _envs("second", 1))
        assert [(reader.offset(), reader.get().message_id) for _ in iter(reader)] == first[1:] + second
        assert store.global_head == 3


def test_an_anext_awaiting_across_a_restart_returns_the_next_commit(server):
    schema = "async"
    with logstore.open(server.url, schema=schema) as store, logstore.open(server.url, schema=schema) as other:
        first = _commit(store, "s", _envs("first", 2))
        reader = store.stream("s", 2)
        result: dict[str, Any] = {}
        awaiting = threading.Event()

        async def wait() -> None:
            task = asyncio.ensure_future(reader.anext(timeout=WAIT))
            await asyncio.sleep(0)
            awaiting.set()
            result["env"] = await task
            result["offset"] = reader.offset()

        def run() -> None:
            try:
                asyncio.run(wait())
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                result["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert awaiting.wait(WAIT)
        server.stop("immediate")
        server.start()
        listener = store._listener
        assert listener is not None
        _wait_until("the listener reconnects", lambda: listener.connections == 2)
        assert thread.is_alive(), f"anext() returned with nothing committed: {result}"
        envs = _envs("after", 1)
        after = _commit(other, "s", envs)
        thread.join(WAKE)
        assert result == {"env": envs[0], "offset": 2}
        assert [g for g, _ in first + after] == [0, 1, 2]
