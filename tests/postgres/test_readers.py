"""Readers of a PostgreSQL store: removals during a read, reading again from the position."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from logstore import Envelope, StreamClosedError


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_regression_a_removal_counted_during_the_query_made_try_next_return_false(open_pg, kind):
    """A removal's own notification arrived while the reader queried: the batch was dropped, and try_next()
    said there was nothing to read though there was. It must read again instead."""
    store = open_pg()
    # Opened first: a stream reader's open fetches its first batch, and this test is about a fetch's query.
    reader = store.stream("a") if kind == "stream" else store.global_stream()
    with store.transaction() as tx:
        tx.append("a", 0, [Envelope.new("A", i) for i in range(3)])
        tx.append("b", 0, [Envelope.new("B", 0)])
    store.truncate_stream("b", 1)
    name = "_read_stream" if kind == "stream" else "_read_global"
    read = getattr(store, name)
    bumps = [True]

    def read_with_a_removal_counted(*args: Any) -> Any:
        rows = read(*args)
        if bumps:  # the removal's notification, counted while this query ran
            bumps.pop()
            store._signal.bump(removal=True)
        return rows

    setattr(store, name, read_with_a_removal_counted)
    assert reader.try_next()
    assert (reader.offset(), reader.get().message) == (0, 0)
    assert bumps == []
    offsets = [reader.offset()]
    while reader.try_next():
        offsets.append(reader.offset())
    assert offsets == [0, 1, 2]


def test_a_group_of_transactions_commits_each_whole_or_conflicts_alone(open_pg):
    """Transactions that threads commit at once share one append_batch: each one is checked against the
    heads that the ones before it in the group leave, a conflicting one is left out alone, and a stream
    that only a left-out one would have made does not exist afterwards."""
    from logstore import ANY, OffsetConflictError
    from logstore.envelope import encode_many
    from logstore.postgres.store import _Pending

    store = open_pg()
    plans = [
        [("x", 0, 2)],  # commits: x 0-1
        [("x", 0, 1)],  # conflicts: x is at 2 after the first
        [("z", 0, 1), ("x", ANY, 1)],  # commits: z 0, x 2
        [("v", 0, 1), ("x", 2, 1)],  # conflicts (x is at 3): v, made by this group, must not remain
        [("x", 3, 1), ("z", 1, 1)],  # commits: x 3, z 1
    ]
    group = []
    for plan in plans:
        tx, _committer = store.begin_tx()
        appends = []
        for name, offset, n in plan:
            envs = [Envelope.new("G", {"name": name, "i": i}) for i in range(n)]
            first = -1 if offset is ANY else offset  # ANY_OFFSET: assigned at commit
            appends.append((name, name.encode(), first, encode_many(envs, name, None, 1 << 20)))
        tx.assign(appends)  # staged as append_messages would, without its checks against the heads
        group.append(_Pending(tx))
    store._commit_group(group)
    results = [p.result for p in group]
    errors = [p.error for p in group]
    assert results == [range(2), None, range(2, 4), None, range(4, 6)]
    assert isinstance(errors[1], OffsetConflictError) and (errors[1].expected, errors[1].given) == (2, 0)
    assert isinstance(errors[3], OffsetConflictError) and (errors[3].stream, errors[3].expected) == ("x", 3)
    assert store.stream_info("v") is None
    assert (store.head("x"), store.head("z"), store.global_head) == (4, 2, 6)
    assert group[2].tx.appends[1][2] == 2  # the ANY append got offset 2
    with store.global_stream() as log:
        assert [(log.stream_name(), log.stream_offset()) for _ in log] == [
            ("x", 0),
            ("x", 1),
            ("z", 0),
            ("x", 2),
            ("x", 3),
            ("z", 1),
        ]


def _count_queries(store: Any) -> list[bytes]:
    """Record every statement ``store`` runs through its read path (each one round trip)."""
    seen: list[bytes] = []
    query = store._query

    def counted(statement: bytes, *args: Any, **kwargs: Any) -> Any:
        seen.append(statement)
        return query(statement, *args, **kwargs)

    store._query = counted
    return seen


def test_loading_a_stream_takes_one_query_with_read_and_two_with_a_reader(open_pg):
    """read() knows the end from its one query (a short page made during the call); open_stream's query
    also fetches the first batch, and iterating needs one more query to know the end."""
    store = open_pg()
    envs = [Envelope.new("E", i) for i in range(5)]
    with store.transaction() as tx:
        tx.append("s", 0, envs)
    seen = _count_queries(store)
    assert store.read("s") == envs and len(seen) == 1
    del seen[:]
    assert store.read("none") == [] and len(seen) == 1
    del seen[:]
    reader, found = store.open_stream(store, "s", 0)
    assert found and len(seen) == 1
    assert list(reader) == envs and len(seen) == 2


def test_read_sees_a_commit_of_another_client_completed_before_it(open_pg):
    writer, reader_store = open_pg(), open_pg()
    envs = [Envelope.new("E", i) for i in range(30)]
    for i, env in enumerate(envs):
        with writer.transaction() as tx:
            tx.append("s", i, [env])
        assert reader_store.read("s") == envs[: i + 1]
        assert reader_store.read("s", i) == [env]


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_regression_a_read_waiting_for_a_connection_as_its_store_closed_raised_store_closed_error(open_pg, kind):
    """``store.close()`` closes the readers, then the pool: a read that was waiting for a connection then failed
    with the pool's ``StoreClosedError``, where a closed stream says ``StreamClosedError`` (as embedded)."""
    store = open_pg(max_connections=1)
    with store.transaction() as tx:
        tx.append("s", 0, [Envelope.new("E", 0)])
    reader = store.stream("s") if kind == "stream" else store.global_stream()
    assert [reader.offset() for _ in iter(reader)] == [0]
    pool = store._pool
    assert pool is not None
    result: dict[str, Any] = {}

    def read() -> None:
        try:
            result["more"] = reader.try_next()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    with store._connection():  # the pool's only connection, held: the reader's query waits for it
        thread.start()
        deadline = time.monotonic() + 30
        while pool.get_stats().get("requests_waiting", 0) != 1:
            assert time.monotonic() < deadline, "the read never waited for a connection"
            time.sleep(0.01)  # polling the pool's own count: it has no event for a waiting request
        store.close()
        thread.join(30)
    assert not thread.is_alive()
    assert isinstance(result.get("error"), StreamClosedError), result
    assert reader.closed


def test_every_read_is_bounded_in_bytes_and_a_cut_batch_is_no_proof_of_the_end(open_pg, monkeypatch):
    """Each query fetches envelopes only while those before them in its batch come to less than
    FETCH_BYTES (the first whatever its size), and a batch that the bound cut is not taken for the end:
    readers and read() go on to the last message."""
    from logstore.postgres import reader as pg_reader
    from logstore.postgres import store as pg_store

    bound = 3000
    monkeypatch.setattr(pg_reader, "FETCH_BYTES", bound)
    monkeypatch.setattr(pg_store, "FETCH_BYTES", bound)
    store = open_pg()
    big = Envelope.new("Big", b"x" * 5000)  # one envelope past the bound: fetched alone
    small = [Envelope.new("E", {"i": i, "pad": b"p" * 900}) for i in range(40)]
    with store.transaction() as tx:
        tx.append("s", 0, [big, *small[:20]])
        tx.append("t", 0, small[20:])
    sizes: list[int] = []
    for name in ("_read_stream", "_read_global"):
        fetch = getattr(store, name)

        def bounded(*args: Any, _fetch: Any = fetch) -> Any:
            result = _fetch(*args)
            rows = result[1] if isinstance(result, tuple) else result
            envelopes = [row[-1] for row in rows]
            assert sum(len(e) for e in envelopes[:-1]) < bound, [len(e) for e in envelopes]
            sizes.append(len(envelopes))
            return result

        monkeypatch.setattr(store, name, bounded)
    assert store.read("s") == [big, *small[:20]]
    assert max(sizes) <= 4 and sizes[0] == 1  # the big one alone, then about three smalls a query
    del sizes[:]
    assert list(store.global_stream()) == [big, *small]
    assert len(sizes) >= 40 // 4
    reader, found = store.open_stream(store, "t", 0)
    assert found and list(reader) == small[20:]
