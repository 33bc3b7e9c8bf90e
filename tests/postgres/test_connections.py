"""Lost connections: a backend killed mid-commit, under a reader, under the listener, while idle in the pool.

A killed backend (``pg_terminate_backend``, as a server restart or a failover kills it) must give a
clear error and never half a transaction; a commit whose outcome the client cannot know says so, and
the message ids tell whether it landed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

import logstore
from logstore import Envelope
from logstore.postgres import CommitOutcomeUnknownError, ConnectionLostError, ServerError

WAIT = 30.0


def _envs(tag: str, n: int) -> list[Envelope]:
    return [Envelope.new("E", {"tag": tag, "i": i}) for i in range(n)]


def _app(schema: str) -> str:
    """The ``application_name`` of the connections of the store in ``schema``: the tests touch only those."""
    return f"logstore {schema}"


def _backend_waiting(admin: psycopg.Connection[Any], schema: str, like: str) -> int:
    """The pid of the store's backend that runs a statement matching ``like`` and waits for a lock."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query LIKE %s"
            " AND wait_event_type = 'Lock'",
            (_app(schema), like),
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)  # polling the server's own view: there is no event to wait on
    raise AssertionError(f"no backend waiting in {like!r}")


def _terminate_idle(admin: psycopg.Connection[Any], schema: str, keep: int = 0) -> int:
    """Terminate the idle pooled connections of the store in ``schema`` (not the listener ``keep``); how many."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = %s AND state = 'idle' AND pid <> %s AND query NOT LIKE 'LISTEN%%'",
        (_app(schema), keep),
    ).fetchall()
    return len(rows)


def _next_beside(reader: Any, commit: Any) -> dict[str, Any]:
    """Block in ``reader.next()`` in a thread while ``commit()`` runs here; what the wait ended with."""
    got: dict[str, Any] = {}

    def wait() -> None:
        try:
            reader.next(timeout=WAIT)
            got["offset"] = reader.offset()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            got["error"] = exc

    thread = threading.Thread(target=wait)
    thread.start()
    commit()
    thread.join(WAIT)
    return got


def _append(store: Any, stream: str, offset: int, tag: str) -> Any:
    """A commit of one envelope to ``stream`` at ``offset``, to run later."""

    def commit() -> None:
        with store.transaction() as tx:
            tx.append(stream, offset, _envs(tag, 1))

    return commit


def test_a_backend_killed_mid_commit_gives_a_clear_error_and_no_half_transaction(open_pg, schema, admin):
    store = open_pg()
    with store.transaction() as tx:
        tx.append("a", 0, _envs("base", 1))
    # Hold the head row's lock from outside, so that the commit stops inside append_batch, past its stream locks.
    blocker = psycopg.connect(admin.info.dsn)
    blocker.execute(sql.SQL("SELECT * FROM {}.head FOR UPDATE").format(sql.Identifier(schema)))
    result: dict[str, Any] = {}
    envs = _envs("lost", 3)
    other = _envs("lost-b", 1)

    def commit() -> None:
        try:
            with store.transaction() as tx:
                tx.append("a", 1, envs)
                tx.append("b", 0, other)
            result["range"] = tx.global_offsets
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=commit)
    thread.start()
    try:
        pid = _backend_waiting(admin, schema, "%append_batch%")
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(WAIT)
    finally:
        blocker.rollback()
        blocker.close()
    assert not thread.is_alive()
    error = result["error"]
    assert isinstance(error, CommitOutcomeUnknownError)
    assert isinstance(error, logstore.LogStoreError)
    assert "may or may not have committed" in str(error)
    assert error.message_ids == [e.message_id for e in envs + other]
    assert error.streams == ["a", "b"]
    # The application finds out: here nothing landed (the commit was stopped before COMMIT), and nothing
    # of it is anywhere: no half transaction.
    assert error.backend_pid == pid
    assert store.commit_outcome(error) is None
    assert [store.locate(mid) for mid in error.message_ids] == [[]] * 4
    assert (store.global_head, store.head("a"), store.head("b"), store.stream_names()) == (1, 1, 0, ["a"])
    # The store goes on: the retry commits whole.
    with store.transaction() as tx:
        tx.append("a", 1, envs)
        tx.append("b", 0, other)
    assert tx.global_offsets == range(1, 5)
    assert [loc.global_offset for mid in error.message_ids for loc in store.locate(mid)] == [1, 2, 3, 4]


def test_a_commit_that_landed_before_the_kill_is_found_by_message_id(open_pg, schema, admin):
    store = open_pg()
    envs = _envs("landed", 2)
    with store.transaction() as tx:
        tx.append("s", 0, envs)
    # Every connection of the store is killed after the commit: its next operations get new ones.
    assert _terminate_idle(admin, schema) >= 1
    assert [store.locate(e.message_id) for e in envs] == [[("s", 0, 0)], [("s", 1, 1)]]
    with store.transaction() as tx:
        tx.append("s", 2, _envs("after", 1))
    assert tx.global_offsets == range(2, 3)


def test_a_reader_whose_connection_is_killed_reads_on_from_its_position(open_pg, schema, admin):
    store = open_pg()
    with store.transaction() as tx:
        tx.append("s", 0, _envs("s", 40))
    reader = store.stream("s")
    got = []
    for _ in range(5):
        assert reader.try_next()
        got.append(reader.offset())
    assert _terminate_idle(admin, schema) >= 1
    while reader.try_next():
        got.append(reader.offset())
    assert got == list(range(40))  # no skip, no repeat
    glob = store.global_stream()
    assert glob.try_next()
    assert _terminate_idle(admin, schema) >= 1
    rest = [0]
    while glob.try_next():
        rest.append(glob.offset())
    assert rest == list(range(40))


def test_a_blocked_next_wakes_after_the_listener_connection_is_killed(open_pg, admin):
    store = open_pg()
    writer = open_pg()  # another client
    reader = store.global_stream()
    assert not reader.try_next()
    listener = store._listener
    assert listener is not None and listener.connections == 1
    assert admin.execute("SELECT pg_terminate_backend(%s)", (listener.pid,)).fetchone() == (True,)
    assert _next_beside(reader, _append(writer, "s", 0, "w")) == {"offset": 0}
    # The listener reconnected (what woke the reader if the notification went to the dead connection).
    deadline = time.monotonic() + WAIT
    while listener.connections < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listener.connections == 2
    assert _next_beside(reader, _append(writer, "s", 1, "w")) == {"offset": 1}


def test_an_unreachable_server_gives_a_clear_error_at_open():
    with pytest.raises(ConnectionLostError, match="could not connect"):
        logstore.open("postgresql://postgres@127.0.0.1:1/test", schema="nowhere", timeout=2)


def test_a_server_error_is_a_logstore_error_and_commits_nothing(open_pg, schema, admin):
    """A lock_timeout that runs out while the commit waits for the head row: the server refuses, nothing lands."""
    store = open_pg()
    blocker = psycopg.connect(admin.info.dsn)
    blocker.execute(sql.SQL("SELECT * FROM {}.head FOR UPDATE").format(sql.Identifier(schema)))
    try:
        with store._connection() as conn:  # the pool holds this one connection: the commit borrows it next
            conn.execute("SET lock_timeout = '50ms'")
        assert store._pool is not None and store._pool.get_stats()["pool_size"] == 1
        envs = _envs("refused", 2)
        with pytest.raises(ServerError, match="lock timeout") as info, store.transaction() as tx:
            tx.append("s", 0, envs)
        assert info.value.sqlstate == "55P03"
        assert isinstance(info.value, logstore.LogStoreError)
    finally:
        blocker.rollback()
        blocker.close()
    assert [store.locate(e.message_id) for e in envs] == [[], []]
    assert store.global_head == 0


def test_commit_outcome_ends_the_old_session_then_finds_a_commit_that_landed(open_pg, admin):
    """The outcome of a commit whose connection broke after the server committed: its global offsets.

    The break is made by hand: the error names a live session (as a server that has not yet noticed the
    client is gone would hold one); commit_outcome ends it, then finds the messages.
    """
    store = open_pg()
    with store.transaction() as tx:
        tx.append("s", 0, _envs("first", 1))
    envs = _envs("landed", 3)
    with store.transaction() as tx:
        tx.append("s", 1, envs[:2])
        tx.append("t", 0, envs[2:])
    ids = [e.message_id for e in envs]
    lingering = psycopg.connect(admin.info.dsn, autocommit=True)
    row = lingering.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    error = CommitOutcomeUnknownError("commit", ids, ["s", "t"], row[0], row[1])
    assert store.commit_outcome(error) == range(1, 4) == tx.global_offsets
    gone = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (row[0],)).fetchone()
    assert gone == (0,)
    lingering.close()
    # Messages that never landed: None, and a retry is safe.
    missing = CommitOutcomeUnknownError("commit", [e.message_id for e in _envs("never", 2)], ["s"], row[0], row[1])
    assert store.commit_outcome(missing) is None
    # A removal has no ids to look up; an error without its session cannot be decided.
    with pytest.raises(ValueError, match="no message ids"):
        store.commit_outcome(CommitOutcomeUnknownError("removal", [], ["s"], row[0], row[1]))
    unknown = CommitOutcomeUnknownError("commit", ids, ["s"])
    with pytest.raises(CommitOutcomeUnknownError):
        store.commit_outcome(unknown)


def test_after_every_connection_of_the_store_is_killed_it_goes_on_as_after_a_server_restart(open_pg, schema, admin):
    """What a server restart does to a client: every connection, pooled and listening, is gone. The next commit
    must not run on a dead connection (which would make its outcome unknown), reads go on from their position,
    and a blocked next() still wakes."""
    store = open_pg()
    other = open_pg(schema=schema)  # another client of the same store, killed too
    with store.transaction() as tx:
        tx.append("s", 0, _envs("before", 2))
    reader = store.global_stream()
    assert reader.try_next() and reader.offset() == 0
    with store._connection(), store._connection():  # two pooled connections, so that there is more than one
        pass
    pids = [
        r[0]
        for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (_app(schema),)
        ).fetchall()
    ]
    assert len(pids) >= 4  # pooled and listening connections of both clients
    admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    deadline = time.monotonic() + WAIT
    while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)).fetchone() != (0,):
        assert time.monotonic() < deadline
        time.sleep(0.01)  # the server's own view is polled: there is no event for a process's end
    with store.transaction() as tx:  # no CommitOutcomeUnknownError: the dead connections are not used
        tx.append("s", 2, _envs("after", 1))
    assert tx.global_offsets == range(2, 3)
    assert [reader.offset() for _ in iter(reader)] == [1, 2]
    assert _next_beside(reader, _append(other, "s", 3, "other")) == {"offset": 3}


def _backends_waiting_for_a_read(admin: psycopg.Connection[Any], schema: str, exclude: set[int]) -> int:
    """The pid of a read of the store's (not in ``exclude``) that waits for a lock."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
            " AND state = 'active' AND query LIKE '%%SELECT%%' AND query NOT LIKE '%%append_batch%%'"
            " AND NOT (pid = ANY(%s))",
            (_app(schema), list(exclude)),
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)  # polling the server's own view: there is no event to wait on
    raise AssertionError("no read of the store waits for the lock")


@pytest.mark.parametrize("call", ["try_next", "next"])
@pytest.mark.parametrize("kind", ["stream", "global"])
def test_a_backend_killed_in_the_middle_of_a_read_is_read_again_from_the_position(open_pg, schema, admin, kind, call):
    """The reader's query is stopped by a lock on ``log`` (held from outside), its backend killed: the read runs
    again on another connection and returns the next message; nothing is skipped or repeated."""
    store = open_pg()
    writer = open_pg()  # another client
    with writer.transaction() as tx:
        tx.append("s", 0, _envs("s", 30))
    reader = store.stream("s") if kind == "stream" else store.global_stream()
    got = [reader.offset() for _ in iter(reader)]  # everything there: the next read is a query
    assert got == list(range(30))
    with writer.transaction() as tx:
        tx.append("s", 30, _envs("more", 10))
    locker = psycopg.connect(admin.info.dsn)
    locker.execute(sql.SQL("LOCK TABLE {}.log IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))
    result: dict[str, Any] = {}

    def read() -> None:
        try:
            result["more"] = reader.try_next() if call == "try_next" else reader.next(timeout=WAIT)
            result["offset"] = reader.offset()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        first = _backends_waiting_for_a_read(admin, schema, set())
        assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone() == (True,)
        # The read runs again, on another connection (it waits for the lock too, until it is released).
        again = _backends_waiting_for_a_read(admin, schema, {first})
        assert again != first
    finally:
        locker.rollback()
        locker.close()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert result == {"more": True if call == "try_next" else None, "offset": 30}
    got.append(30)
    got += [reader.offset() for _ in iter(reader)]
    assert got == list(range(40))  # no skip, no repeat


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_a_next_blocked_while_every_connection_of_its_store_is_killed_wakes_and_reads_on(open_pg, schema, admin, kind):
    """Every connection of the reader's store (pooled and listening) is killed while next(timeout) waits: a
    commit of another client then still wakes it (once the listener is back), with the next offset."""
    store = open_pg()
    writer = open_pg()
    with writer.transaction() as tx:
        tx.append("s", 0, _envs("s", 3))
    reader = store.stream("s") if kind == "stream" else store.global_stream()
    assert [reader.offset() for _ in iter(reader)] == [0, 1, 2]
    listener = store._listener
    assert listener is not None and listener.connections == 1
    result: dict[str, Any] = {}
    entered = threading.Event()

    def wait() -> None:
        entered.set()
        try:
            reader.next(timeout=WAIT)
            result["offset"] = reader.offset()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert entered.wait(WAIT)
    thread.join(0.05)
    assert thread.is_alive(), f"next() did not wait: {result}"
    mine = [
        r[0]
        for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> ALL(%s)",
            (_app(schema), _pids_of(writer)),
        ).fetchall()
    ]
    assert listener.pid in mine
    admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (mine,))
    deadline = time.monotonic() + WAIT
    while listener.connections < 2:
        assert time.monotonic() < deadline, "the listener did not reconnect"
        time.sleep(0.01)  # polling the listener thread's count: it has no event of its own
    assert thread.is_alive(), f"next() returned with nothing committed: {result}"
    with writer.transaction() as tx:
        tx.append("s", 3, _envs("after", 2))
    thread.join(WAIT)
    assert result == {"offset": 3}
    assert [reader.offset() for _ in iter(reader)] == [4]


def _pids_of(store: Any) -> list[int]:
    """The server processes of ``store``'s connections: its pooled ones and its listener."""
    assert store._pool is not None and store._listener is not None
    pids = [pid for pid, _start in store._sessions.values()]
    return [*pids, store._listener.pid]
