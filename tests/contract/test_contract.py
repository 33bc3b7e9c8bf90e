"""The public contract: the Go interface's doc comments, one test per sentence, then DESIGN.md section 2.

Tests named ``test_seed_*`` quote one sentence of the ``messagestore`` package's
documentation in their docstring and check it of logstore's Python form.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import logstore
from logstore import Envelope, protocols
from tests.helpers import SMALL_SEGMENT, commit, drain

# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def store(open_store):
    s = open_store(segment_size=SMALL_SEGMENT)
    yield s
    s.close()


def envs(n: int, tag: str = "m", start: int = 0) -> list[Envelope]:
    return [Envelope.new(f"{tag}.Happened", {"tag": tag, "i": start + i}) for i in range(n)]


def open_found(store: logstore.Store, stream: str, offset: int) -> Any:
    """``open_stream`` of a stream that exists: it says so (``found`` is True); returns the reader."""
    reader, found = store.open_stream(store, stream, offset)
    assert found is True
    return reader


def read_stream(store: logstore.Store, stream: str, offset: int = 0) -> list[tuple[int, Envelope]]:
    reader, _found = store.open_stream(store, stream, offset)
    with reader:
        return drain(reader)


def read_global(store: logstore.Store, offset: int = 0) -> list[tuple[int, Envelope]]:
    with store.open_global(store, offset) as reader:
        return drain(reader)


def is_utc(dt: datetime) -> bool:
    return type(dt) is datetime and dt.tzinfo is not None and dt.utcoffset() == timedelta(0)


def assert_same_types(read: Any, written: Any) -> None:
    """``read`` equals ``written`` and has the same type at every level (datetimes come back in UTC)."""
    assert type(read) is type(written), (read, written)
    assert read == written
    if isinstance(written, dict):
        for key, value in written.items():
            assert_same_types(read[key], value)
    elif isinstance(written, list):
        for r, w in zip(read, written, strict=True):
            assert_same_types(r, w)
    elif isinstance(written, datetime):
        assert is_utc(read)


def blocked_next(reader: Any, timeout: float = 20.0) -> tuple[threading.Thread, dict[str, Any], threading.Event]:
    """Run ``reader.next(timeout)`` in a thread; returns the thread, its result and the event set before the call."""
    result: dict[str, Any] = {}
    entering = threading.Event()

    def run() -> None:
        entering.set()
        try:
            reader.next(timeout=timeout)
            result["offset"] = reader.offset()
            result["env"] = reader.get()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entering.wait(10)
    return thread, result, entering


# -- the Go package's doc comments, one sentence each ----------------------------------


def test_seed_package_reads_and_writes_persisted_streams_of_messages(open_store):
    """ "Package messagestore contains interfaces used by Ax to read and write from persisted streams of messages.\""""
    orders, payments = envs(3, "order"), envs(2, "payment")
    with open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, "order-1", 0, orders)
        commit(store, "payment-1", 0, payments)
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert read_stream(store, "order-1") == list(enumerate(orders))
        assert read_stream(store, "payment-1") == list(enumerate(payments))
        commit(store, "order-1", 3, envs(1, "order", 3))
        assert [off for off, _ in read_stream(store, "order-1")] == [0, 1, 2, 3]


def test_seed_message_store_is_not_restricted_to_storing_events(store):
    """ "The message store is the fundamental persistence type used by eventsourced sagas, though the interface is
    not restricted to storing events.\""""
    command = Envelope.new("PlaceOrder", {"sku": "A1", "qty": 2})
    event = command.new_child("OrderPlaced", {"sku": "A1", "qty": 2})
    # A saga rebuilds its state from its stream, then appends at the next offset.
    commit(store, "saga-order-42", 0, [event])
    history = read_stream(store, "saga-order-42")
    state = {"qty": sum(env.message["qty"] for _, env in history)}
    shipped = event.new_child("OrderShipped", {"qty": state["qty"]})
    commit(store, "saga-order-42", len(history), [shipped])
    # Not only events: commands, timeouts, raw bytes and plain values go in streams just the same.
    others = [
        command,
        Envelope.new("Timeout", None, send_at=datetime.now(UTC) + timedelta(hours=1)),
        Envelope.new("Blob", b"\x00\xffraw"),
        Envelope.new("Number", 42),
    ]
    commit(store, "outbox", 0, others)
    assert [env for _, env in read_stream(store, "saga-order-42")] == [event, shipped]
    assert [env for _, env in read_stream(store, "outbox")] == others
    assert read_stream(store, "saga-order-42")[1][1].message == {"qty": 2}


def test_seed_open_global_opens_the_entire_store_as_a_single_stream(store):
    """ "OpenGlobal opens the entire store for reading as a single stream.\""""
    a, b, c = envs(2, "a"), envs(1, "b"), envs(3, "c")
    commit(store, "a", 0, a)
    commit(store, "b", 0, b)
    commit(store, "c", 0, c)
    reader = store.open_global(store, 0)
    assert isinstance(reader, protocols.Stream)
    assert drain(reader) == list(enumerate(a + b + c))
    reader.close()


def test_seed_open_global_offset_may_be_beyond_the_end(store):
    """ "The offset may be beyond the end of the stream.\" (OpenGlobal)"""
    commit(store, "a", 0, envs(2))
    reader = store.open_global(store, 5)
    assert reader.try_next() is False
    later = envs(5, "later")
    commit(store, "b", 0, later[:2])  # global offsets 2, 3
    assert reader.try_next() is False
    commit(store, "b", 2, later[2:])  # global offsets 4, 5, 6
    assert drain(reader) == [(5, later[3]), (6, later[4])]
    reader.close()


def test_seed_globally_ordered_store_preserves_a_global_order_across_all_streams(store):
    """ "GloballyOrderedStore is a store that preserves a global ordering for messages across all streams, allowing
    the entire store to be consumed via a single stream.\""""
    assert isinstance(store, protocols.GloballyOrderedStore)
    order: list[tuple[str, int, Envelope]] = []
    heads = {"x": 0, "y": 0, "z": 0}
    for i, name in enumerate("xyzzyxxzy"):
        batch = envs(1 + i % 2, name, heads[name])
        commit(store, name, heads[name], batch)
        order += [(name, heads[name] + k, e) for k, e in enumerate(batch)]
        heads[name] += len(batch)
    got = read_global(store)
    assert [off for off, _ in got] == list(range(len(order)))
    assert [env for _, env in got] == [env for _, _, env in order]
    for name in "xyz":
        assert [env for _, env in read_stream(store, name)] == [e for n, _, e in order if n == name]


def test_seed_append_messages_appends_one_or_more_messages_to_a_named_stream(store):
    """ "AppendMessages appends one or more messages to a named stream.\""""
    one, three = envs(1, "one"), envs(3, "three")
    commit(store, "order-1", 0, one)
    commit(store, "order-1", 1, three)
    assert read_stream(store, "order-1") == list(enumerate(one + three))
    assert read_stream(store, "order-2") == []
    assert store.head("order-1") == 4


def test_seed_offset_is_a_zero_based_index_into_the_stream(store):
    """ "offset is a zero-based index into the stream.\""""
    batch = envs(4)
    commit(store, "other", 0, envs(2, "other"))  # so that stream offsets differ from global ones
    commit(store, "s", 0, batch)
    for k in range(4):
        assert read_stream(store, "s", k) == [(i, batch[i]) for i in range(k, 4)]


def test_seed_error_if_offset_is_not_the_next_unused_offset(store):
    """ "An error is returned if offset is not the next unused offset in the stream.\""""
    commit(store, "s", 0, envs(2))
    for wrong in (0, 1, 3, 100):
        tx, committer = store.begin_tx()
        with pytest.raises(logstore.OffsetConflictError) as info:
            store.append_messages(tx, "s", wrong, envs(1, "wrong"))
        assert (info.value.stream, info.value.expected, info.value.given) == ("s", 2, wrong)
        committer.rollback()
    tx, committer = store.begin_tx()
    with pytest.raises(logstore.OffsetConflictError) as info:
        store.append_messages(tx, "new-stream", 1, envs(1))
    assert (info.value.expected, info.value.given) == (0, 1)
    committer.rollback()
    assert store.global_head == 2
    assert store.head("s") == 2
    assert store.head("new-stream") == 0


def test_seed_open_stream_opens_a_stream_for_reading_from_a_specific_offset(store):
    """ "OpenStream opens a stream of messages for reading from a specific offset.\""""
    batch = envs(5)
    commit(store, "s", 0, batch)
    reader = open_found(store, "s", 3)
    assert drain(reader) == [(3, batch[3]), (4, batch[4])]
    reader.close()


def test_seed_open_stream_offset_may_be_beyond_the_end(store):
    """ "The offset may be beyond the end of the stream.\" (OpenStream)"""
    commit(store, "s", 0, envs(1))
    reader = open_found(store, "s", 3)
    assert reader.try_next() is False
    more = envs(4, "more", 1)
    commit(store, "s", 1, more[:2])  # offsets 1, 2
    assert reader.try_next() is False
    commit(store, "s", 3, more[2:])  # offsets 3, 4
    assert drain(reader) == [(3, more[2]), (4, more[3])]
    reader.close()


def test_seed_open_stream_returns_false_if_the_stream_does_not_exist(store):
    """ "It returns false if the stream does not exist.\""""
    commit(store, "exists", 0, envs(1))
    reader, found = store.open_stream(store, "missing", 0)
    assert found is False
    reader.close()
    reader = open_found(store, "exists", 0)
    reader.close()
    # Appended but rolled back, or appended but not yet committed: still no such stream.
    tx, committer = store.begin_tx()
    store.append_messages(tx, "pending", 0, envs(1))
    reader, found = store.open_stream(store, "pending", 0)
    assert found is False
    reader.close()
    committer.rollback()
    reader, found = store.open_stream(store, "pending", 0)
    assert found is False
    reader.close()


def test_seed_store_is_an_interface_for_manipulating_persisted_streams(open_store, store_dir):
    """ "Store is an interface for manipulating persisted streams of messages.\""""
    written: dict[str, list[Envelope]] = {}
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert isinstance(store, protocols.Store)
        for i in range(60):  # enough to fill several 64 KiB segments
            name = f"stream-{i % 7}"
            batch = [Envelope.new("Filled", {"i": i, "pad": "p" * 1500})]
            commit(store, name, len(written.get(name, [])), batch)
            written.setdefault(name, []).extend(batch)
    with open_store(segment_size=SMALL_SEGMENT) as store:
        if isinstance(store, logstore.Store):  # the embedded store's messages span several segment files
            assert len(list((store_dir / "segments").glob("*.log"))) > 1
        for name, batch in written.items():
            assert read_stream(store, name) == list(enumerate(batch))
            assert store.head(name) == len(batch)


def test_seed_next_advances_the_stream_to_the_next_message(store):
    """ "Next advances the stream to the next message.\""""
    batch = envs(3)
    commit(store, "s", 0, batch)
    reader, _ = store.open_stream(store, "s", 0)
    for i in range(3):
        reader.next(timeout=5)
        assert (reader.offset(), reader.get()) == (i, batch[i])
    reader.close()


def test_seed_next_blocks_until_a_message_is_available_or_ctx_is_canceled(store):
    """ "It blocks until a message is available, or ctx is canceled.\"

    Go's ctx becomes ``timeout=`` and cancellation by ``close()``.
    """
    reader, _ = store.open_stream(store, "s", 0)
    thread, result, _ = blocked_next(reader)
    thread.join(0.05)
    assert thread.is_alive(), "next() returned with no message available"
    batch = envs(1)
    commit(store, "s", 0, batch)
    thread.join(10)
    assert not thread.is_alive()
    assert result == {"offset": 0, "env": batch[0]}
    # Canceled by timeout...
    with pytest.raises(TimeoutError):
        reader.next(timeout=0.05)
    # ...or by close().
    thread, result, _ = blocked_next(reader)
    reader.close()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(result["error"], logstore.StreamClosedError)


def test_seed_try_next_advances_the_stream_to_the_next_message(store):
    """ "TryNext advances the stream to the next message.\""""
    batch = envs(2)
    commit(store, "s", 0, batch)
    reader, _ = store.open_stream(store, "s", 0)
    assert reader.try_next() is True
    assert (reader.offset(), reader.get()) == (0, batch[0])
    assert reader.try_next() is True
    assert (reader.offset(), reader.get()) == (1, batch[1])
    reader.close()


def test_seed_try_next_returns_false_if_there_are_no_more_messages(store):
    """ "It returns false if there are no more messages in the stream.\""""
    reader, _ = store.open_stream(store, "s", 0)
    assert reader.try_next() is False
    batch = envs(1)
    commit(store, "s", 0, batch)
    assert reader.try_next() is True
    assert reader.get() == batch[0]
    assert reader.try_next() is False
    assert reader.try_next() is False
    # A false try_next() leaves the stream where it was.
    assert (reader.offset(), reader.get()) == (0, batch[0])
    reader.close()


def test_seed_get_returns_the_message_at_the_current_offset(store):
    """ "Get returns the message at the current offset in the stream.\""""
    batch = envs(3)
    commit(store, "s", 0, batch)
    reader, _ = store.open_stream(store, "s", 1)
    reader.next(timeout=5)
    assert reader.get() == batch[1]
    assert reader.get() == batch[1]  # get() does not advance
    reader.next(timeout=5)
    assert reader.get() == batch[2]
    reader.close()


def test_seed_offset_returns_the_offset_of_the_message_returned_by_get(store):
    """ "Offset returns the offset of the message returned by Get().\""""
    commit(store, "a", 0, envs(2, "a"))
    batch = envs(3, "b")
    commit(store, "b", 0, batch)
    reader, _ = store.open_stream(store, "b", 0)
    glob = store.open_global(store, 0)
    for i in range(3):
        reader.next(timeout=5)
        assert reader.offset() == i
        assert reader.get() == batch[i]
    for g in range(5):
        glob.next(timeout=5)
        assert glob.offset() == g
    assert glob.get() == batch[2]  # global offset 4 is stream b's offset 2
    reader.close()
    glob.close()


def test_seed_close_closes_the_stream(store):
    """ "Close closes the stream.\""""
    commit(store, "s", 0, envs(2))
    reader, _ = store.open_stream(store, "s", 0)
    other, _ = store.open_stream(store, "s", 0)
    reader.next(timeout=5)
    assert reader.closed is False
    reader.close()
    assert reader.closed is True
    reader.close()  # closing twice is harmless
    for call in (reader.try_next, reader.next, reader.get, reader.offset):
        with pytest.raises(logstore.StreamClosedError):
            call()
    # Other streams and the store are not affected.
    assert other.try_next() is True
    commit(store, "s", 2, envs(1))
    assert len(drain(other)) == 2
    other.close()


def test_seed_stream_is_an_interface_for_reading_an_ordered_stream_of_messages(store):
    """ "Stream is an interface for reading an ordered stream of messages.\""""
    heads = {"a": 0, "b": 0}
    for i in range(10):
        name = "ab"[i % 3 == 0]
        commit(store, name, heads[name], envs(2, name, heads[name]))
        heads[name] += 2
    for name in "ab":
        reader, _ = store.open_stream(store, name, 0)
        assert isinstance(reader, protocols.Stream)
        got = drain(reader)
        assert [off for off, _ in got] == list(range(heads[name]))
        assert [env.message["i"] for _, env in got] == list(range(heads[name]))
        reader.close()
    glob = store.open_global(store, 0)
    assert isinstance(glob, protocols.Stream)
    assert [off for off, _ in drain(glob)] == list(range(20))
    glob.close()


# -- DESIGN.md section 2: append_messages offsets ---------------------------------------


def test_offset_counts_appends_already_made_in_the_same_transaction(store):
    commit(store, "s", 0, envs(2, "first"))
    tx, committer = store.begin_tx()
    store.append_messages(tx, "s", 2, envs(2, "a"))
    store.append_messages(tx, "s", 4, envs(1, "b"))
    store.append_messages(tx, "new", 0, envs(1, "c"))
    store.append_messages(tx, "new", 1, envs(1, "d"))
    with pytest.raises(logstore.OffsetConflictError) as info:
        store.append_messages(tx, "s", 2, envs(1, "stale"))  # the committed head, not counting this tx
    assert (info.value.expected, info.value.given) == (5, 2)
    with pytest.raises(logstore.OffsetConflictError) as info:
        store.append_messages(tx, "new", 0, envs(1, "stale"))
    assert (info.value.expected, info.value.given) == (2, 0)
    assert committer.commit() == range(2, 7)
    assert store.head("s") == 5
    assert store.head("new") == 2
    assert [env.type for _, env in read_stream(store, "s")] == ["first.Happened"] * 2 + ["a.Happened"] * 2 + [
        "b.Happened"
    ]


def test_offset_conflict_error_names_stream_expected_and_given_offset(store):
    commit(store, "order-42", 0, envs(3))
    tx, committer = store.begin_tx()
    with pytest.raises(logstore.OffsetConflictError) as info:
        store.append_messages(tx, "order-42", 7, envs(1))
    err = info.value
    assert isinstance(err, logstore.ConcurrencyError)
    assert isinstance(err, logstore.LogStoreError)
    assert issubclass(logstore.OffsetConflictError, logstore.ConcurrencyError)
    assert (err.stream, err.expected, err.given) == ("order-42", 3, 7)
    text = str(err)
    assert "order-42" in text
    assert "3" in text
    assert "7" in text
    committer.rollback()


def test_failed_append_adds_nothing_to_the_transaction(store):
    tx, committer = store.begin_tx()
    store.append_messages(tx, "s", 0, envs(1, "kept"))
    with pytest.raises(logstore.OffsetConflictError):
        store.append_messages(tx, "s", 5, envs(1, "dropped"))
    store.append_messages(tx, "s", 1, envs(1, "kept"))
    assert committer.commit() == range(2)
    assert [env.type for _, env in read_stream(store, "s")] == ["kept.Happened"] * 2


def test_commit_repeats_the_offset_check_and_writes_nothing_on_conflict(open_store):
    with open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, "shared", 0, envs(1, "base"))
        loser_tx, loser = store.begin_tx()
        store.append_messages(loser_tx, "mine", 0, envs(2, "loser"))
        store.append_messages(loser_tx, "shared", 1, envs(1, "loser"))
        store.append_messages(loser_tx, "brand-new", 0, envs(1, "loser"))
        winner_tx, winner = store.begin_tx()
        store.append_messages(winner_tx, "shared", 1, envs(2, "winner"))
        assert winner.commit() == range(1, 3)
        with pytest.raises(logstore.OffsetConflictError) as info:
            loser.commit()
        assert (info.value.stream, info.value.expected, info.value.given) == ("shared", 3, 1)
        assert "shared" in str(info.value)
        assert loser_tx.global_offsets is None
        assert store.global_head == 3
        assert store.head("mine") == 0
        assert store.head("brand-new") == 0
        assert store.head("shared") == 3
        assert store.open_stream(store, "mine", 0)[1] is False
        assert [env.type for _, env in read_global(store)] == ["base.Happened"] + ["winner.Happened"] * 2
        # The store goes on: the loser retries with fresh offsets.
        tx, committer = store.begin_tx()
        store.append_messages(tx, "mine", 0, envs(2, "retry"))
        store.append_messages(tx, "shared", 3, envs(1, "retry"))
        assert committer.commit() == range(3, 6)
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert [env.type for _, env in read_global(store)] == (
            ["base.Happened"] + ["winner.Happened"] * 2 + ["retry.Happened"] * 3
        )
        assert store.stream_names() == ["shared", "mine"]


def test_commit_conflict_on_a_new_stream_created_by_another_transaction(store):
    tx1, c1 = store.begin_tx()
    tx2, c2 = store.begin_tx()
    store.append_messages(tx1, "fresh", 0, envs(1, "one"))
    store.append_messages(tx2, "fresh", 0, envs(1, "two"))
    store.append_messages(tx2, "side", 0, envs(1, "two"))
    assert c2.commit() == range(2)
    with pytest.raises(logstore.OffsetConflictError) as info:
        c1.commit()
    assert (info.value.stream, info.value.expected, info.value.given) == ("fresh", 1, 0)
    assert [env.type for _, env in read_global(store)] == ["two.Happened"] * 2


# -- transactions ------------------------------------------------------------------------


def test_transaction_over_many_streams_becomes_visible_together_at_consecutive_global_offsets(store):
    commit(store, "before", 0, envs(2, "before"))
    glob = store.open_global(store, 0)
    assert len(drain(glob)) == 2
    stream_readers = {name: store.open_stream(store, name, 0)[0] for name in ("a", "b", "c")}
    tx, committer = store.begin_tx()
    plan = [("a", 0, 2), ("b", 0, 1), ("a", 2, 1), ("c", 0, 3), ("b", 1, 2)]
    appended = []
    for name, offset, n in plan:
        batch = envs(n, name, offset)
        store.append_messages(tx, name, offset, batch)
        appended += [(name, offset + k, e) for k, e in enumerate(batch)]
        # Nothing of it is visible before the commit.
        assert glob.try_next() is False
        assert all(r.try_next() is False for r in stream_readers.values())
        assert store.global_head == 2
    result = committer.commit()
    assert result == range(2, 2 + len(appended))
    assert drain(glob) == [(2 + k, e) for k, (_, _, e) in enumerate(appended)]
    for name, reader in stream_readers.items():
        assert drain(reader) == [(off, e) for n, off, e in appended if n == name]
        reader.close()
    glob.close()


def test_commit_returns_the_range_of_global_offsets(store):
    assert commit(store, "a", 0, envs(3)) == range(3)
    assert commit(store, "b", 0, envs(1)) == range(3, 4)
    tx, committer = store.begin_tx()
    store.append_messages(tx, "a", 3, envs(2))
    store.append_messages(tx, "c", 0, envs(2))
    result = committer.commit()
    assert type(result) is range
    assert result == range(4, 8)
    assert tx.global_offsets == result
    got = read_global(store)
    assert [off for off, _ in got[4:8]] == list(result)


def test_commit_of_an_empty_transaction_returns_an_empty_range(store):
    commit(store, "a", 0, envs(2))
    tx, committer = store.begin_tx()
    result = committer.commit()
    assert type(result) is range
    assert len(result) == 0
    assert tx.global_offsets == result
    assert store.global_head == 2
    with store.transaction() as tx2:
        pass
    assert type(tx2.global_offsets) is range
    assert len(tx2.global_offsets) == 0
    assert store.global_head == 2


def test_transaction_block_commits_and_sets_global_offsets(store):
    commit(store, "x", 0, envs(1))
    batch = envs(2)
    with store.transaction() as tx:
        assert tx.global_offsets is None
        store.append_messages(tx, "s", 0, batch[:1])
        store.append_messages(tx, "t", 0, batch[1:])
    assert tx.global_offsets == range(1, 3)
    assert read_global(store, 1) == [(1, batch[0]), (2, batch[1])]


def test_transaction_block_rolls_back_on_exception(store):
    commit(store, "s", 0, envs(1))

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        store.append_messages(tx, "s", 1, envs(2))
        store.append_messages(tx, "t", 0, envs(1))
        raise Boom
    assert tx.global_offsets is None
    assert store.global_head == 1
    assert store.head("s") == 1
    assert store.head("t") == 0
    assert [off for off, _ in read_global(store)] == [0]
    with pytest.raises(ValueError, match="rolled back"):
        store.append_messages(tx, "s", 1, envs(1))
    with store.transaction() as tx:
        store.append_messages(tx, "s", 1, envs(1))
    assert tx.global_offsets == range(1, 2)


def test_transaction_block_propagates_a_commit_conflict(store):
    with pytest.raises(logstore.OffsetConflictError), store.transaction() as tx:
        store.append_messages(tx, "s", 0, envs(1, "mine"))
        commit(store, "s", 0, envs(1, "theirs"))
    assert tx.global_offsets is None
    assert [env.type for _, env in read_global(store)] == ["theirs.Happened"]


def test_rollback_writes_nothing(open_store):
    with open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, envs(1))
        tx, committer = store.begin_tx()
        store.append_messages(tx, "s", 1, envs(3))
        store.append_messages(tx, "other", 0, envs(1))
        committer.rollback()
        assert tx.active is False
        assert store.global_head == 1
        assert store.head("s") == 1
        assert store.head("other") == 0
        committer.rollback()  # twice is harmless
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert store.global_head == 1
        assert store.stream_names() == ["s"]
        assert store.open_stream(store, "other", 0)[1] is False
        assert commit(store, "s", 1, envs(1)) == range(1, 2)


def test_readers_never_see_uncommitted_data(store):
    stream, _ = store.open_stream(store, "s", 0)
    glob = store.open_global(store, 0)
    tx, committer = store.begin_tx()
    store.append_messages(tx, "s", 0, envs(3))
    assert stream.try_next() is False
    assert glob.try_next() is False
    with pytest.raises(TimeoutError):
        stream.next(timeout=0.05)
    fresh, found = store.open_stream(store, "s", 0)
    assert found is False
    assert fresh.try_next() is False
    committer.commit()
    assert len(drain(stream)) == 3
    assert len(drain(glob)) == 3
    assert len(drain(fresh)) == 3
    for r in (stream, glob, fresh):
        r.close()


# -- reading ---------------------------------------------------------------------------------


def test_open_stream_of_a_stream_without_messages_still_sees_later_commits(store):
    reader, found = store.open_stream(store, "later", 0)
    assert found is False
    assert reader.try_next() is False
    commit(store, "unrelated", 0, envs(2, "x"))
    assert reader.try_next() is False
    batch = envs(2, "later")
    commit(store, "later", 0, batch)
    assert drain(reader) == list(enumerate(batch))
    # Opened beyond the end of a stream that does not exist yet.
    ahead, found = store.open_stream(store, "ahead", 1)
    assert found is False
    more = envs(3, "ahead")
    commit(store, "ahead", 0, more)
    assert drain(ahead) == [(1, more[1]), (2, more[2])]
    reader.close()
    ahead.close()


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_get_and_offset_before_a_successful_next_raise_a_clear_error(store, kind):
    def fresh():
        if kind == "stream":
            return store.open_stream(store, "s", 0)[0]
        return store.open_global(store, 0)

    reader = fresh()
    for call in (reader.get, reader.offset):
        with pytest.raises(ValueError, match=r"before a successful next\(\)"):
            call()
    assert reader.try_next() is False  # an unsuccessful try_next() changes nothing
    with pytest.raises(ValueError, match="before a successful"):
        reader.get()
    with pytest.raises(TimeoutError):  # nor does a next() that timed out
        reader.next(timeout=0.05)
    with pytest.raises(ValueError, match="before a successful"):
        reader.offset()
    batch = envs(1)
    commit(store, "s", 0, batch)
    reader.next(timeout=5)
    assert (reader.offset(), reader.get()) == (0, batch[0])
    reader.close()


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_get_and_offset_after_close_raise_a_clear_error(store, kind):
    commit(store, "s", 0, envs(1))
    reader = store.open_stream(store, "s", 0)[0] if kind == "stream" else store.open_global(store, 0)
    reader.next(timeout=5)
    reader.close()
    for call in (reader.get, reader.offset):
        with pytest.raises(logstore.StreamClosedError, match="closed"):
            call()


def test_store_close_closes_its_streams(open_store):
    store = open_store(segment_size=SMALL_SEGMENT)
    commit(store, "s", 0, envs(2))
    reader, _ = store.open_stream(store, "s", 0)
    glob = store.open_global(store, 0)
    reader.next(timeout=5)
    store.close()
    for r in (reader, glob):
        for call in (r.try_next, r.next, r.get, r.offset):
            with pytest.raises(logstore.StreamClosedError):
                call()
        assert r.closed is True


def test_iterating_a_stream_yields_the_messages_available_now(store):
    batch = envs(3)
    commit(store, "s", 0, batch)
    reader, _ = store.open_stream(store, "s", 0)
    assert list(reader) == batch
    assert list(reader) == []
    more = envs(1, "more")
    commit(store, "s", 3, more)
    assert list(reader) == more
    reader.close()


# -- envelopes -------------------------------------------------------------------------


def test_envelope_new_makes_a_root_envelope():
    before = datetime.now(UTC)
    env = Envelope.new("OrderPlaced", {"sku": "A1"})
    after = datetime.now(UTC)
    assert str(uuid.UUID(env.message_id)) == env.message_id
    assert env.causation_id == env.message_id
    assert env.correlation_id == env.message_id
    assert env.type == "OrderPlaced"
    assert env.message == {"sku": "A1"}
    assert is_utc(env.created_at)
    assert is_utc(env.send_at)
    assert before <= env.created_at <= after
    assert env.send_at == env.created_at
    assert Envelope.new("OrderPlaced", {"sku": "A1"}).message_id != env.message_id


def test_envelope_new_with_send_at():
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    env = Envelope.new("Reminder", None, send_at=when)
    assert env.send_at == when
    assert env.created_at != when


def test_envelope_new_child_keeps_the_correlation_chain():
    root = Envelope.new("PlaceOrder", {"sku": "A1"})
    child = root.new_child("OrderPlaced", {"sku": "A1"})
    grandchild = child.new_child("OrderShipped", {"sku": "A1"})
    assert child.causation_id == root.message_id
    assert child.correlation_id == root.message_id
    assert grandchild.causation_id == child.message_id
    assert grandchild.correlation_id == root.message_id
    ids = {root.message_id, child.message_id, grandchild.message_id}
    assert len(ids) == 3
    for env in (child, grandchild):
        assert str(uuid.UUID(env.message_id)) == env.message_id
        assert is_utc(env.created_at)
        assert env.send_at == env.created_at
    assert child.type == "OrderPlaced"
    assert grandchild.message == {"sku": "A1"}
    later = datetime.now(UTC) + timedelta(days=1)
    assert root.new_child("Later", 1, send_at=later).send_at == later


EAST = timezone(timedelta(hours=5, minutes=30))
WEST = timezone(timedelta(hours=-8))

ROUND_TRIP_MESSAGES = {
    "bytes": b"\x00\x01\xfe\xff" * 10,
    "empty-bytes": b"",
    "nested": {"a": [1, 2, {"b": [None, True, False]}], "c": {"d": {"e": []}}, "f": {}},
    "unicode": "ünïcødé ✓ 漢字 🚀 \u200b",
    "big-ints": [2**64 - 1, -(2**63), 2**63, 0, -1],
    "floats": [0.1, -0.0, 1e308, 5e-324, float("inf"), float("-inf")],
    "none": None,
    "bool": True,
    "int-keys": {1: "one", -2: "minus two"},
    "bytes-keys": {b"k": b"v"},
    "aware-datetimes": [
        datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=EAST),
        datetime(1970, 1, 1, tzinfo=WEST),
        datetime(1900, 6, 1, 12, tzinfo=UTC),
    ],
    "mixed": [b"raw", "text", 3, 3.5, None, {"k": [b"v"]}],
}


@pytest.mark.parametrize("message", ROUND_TRIP_MESSAGES.values(), ids=ROUND_TRIP_MESSAGES.keys())
def test_read_envelope_equals_the_appended_envelope(open_store, message):
    env = Envelope.new("Kind", message, send_at=datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=EAST))
    child = env.new_child("Child", message)
    with open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, [env, child])
        for got in ([e for _, e in read_stream(store, "s")], [e for _, e in read_global(store)]):
            assert got == [env, child]
            for read, written in zip(got, [env, child], strict=True):
                assert_same_types(read.message, written.message)
    with open_store(segment_size=SMALL_SEGMENT) as store:
        got = [e for _, e in read_stream(store, "s")]
        assert got == [env, child]
        assert_same_types(got[0].message, message)
        assert type(got[0]) is Envelope


def test_read_datetimes_are_timezone_aware_utc(store):
    created = datetime(2020, 1, 1, 12, 0, tzinfo=EAST)
    send = datetime(2020, 1, 1, 12, 0, 0, 1, tzinfo=WEST)
    env = Envelope(str(uuid.uuid4()), "c", "r", created, send, "T", {"at": created})
    commit(store, "s", 0, [env])
    ((_, got),) = read_stream(store, "s")
    assert got == env
    for dt in (got.created_at, got.send_at, got.message["at"]):
        assert is_utc(dt)
    assert got.created_at == datetime(2020, 1, 1, 6, 30, tzinfo=UTC)
    assert got.send_at == datetime(2020, 1, 1, 20, 0, 0, 1, tzinfo=UTC)


utc_offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
aware_datetimes = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    utc_offsets,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | aware_datetimes
)
messages = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


def test_any_storable_message_reads_back_equal_with_the_same_types(open_store):
    store = open_store(segment_size=SMALL_SEGMENT, durability="none")
    reader = store.open_global(store, 0)

    @given(message=messages, type_name=st.text(max_size=20), created=aware_datetimes)
    def round_trip(message, type_name, created):
        env = Envelope(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), created, created, type_name, message)
        with store.transaction() as tx:
            store.append_messages(tx, "p", store.head("p"), [env])
        reader.next(timeout=5)
        got = reader.get()
        assert reader.offset() == tx.global_offsets[0]
        assert got == env
        assert_same_types(got.message, message)
        assert is_utc(got.created_at)

    try:
        round_trip()
    finally:
        reader.close()
        store.close()


# -- context managers, close and reopen, protocols ---------------------------------------------


def test_store_is_a_context_manager(open_store):
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert store.closed is False
        commit(store, "s", 0, envs(1))
    assert store.closed is True
    with pytest.raises(logstore.StoreClosedError):
        store.begin_tx()
    # The lock was released: the store opens again at once.
    with open_store(segment_size=SMALL_SEGMENT) as again:
        assert again.global_head == 1
    store.close()  # closing a closed store is harmless


def test_store_context_manager_closes_on_exception(open_store):
    with pytest.raises(RuntimeError), open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, envs(1))
        raise RuntimeError("boom")
    assert store.closed is True
    with open_store(segment_size=SMALL_SEGMENT) as again:
        assert again.head("s") == 1


def test_streams_are_context_managers(store):
    commit(store, "s", 0, envs(1))
    reader, _ = store.open_stream(store, "s", 0)
    with reader as r:
        assert r is reader
        r.next(timeout=5)
    assert reader.closed is True
    with store.open_global(store, 0) as g:
        g.next(timeout=5)
        assert g.offset() == 0
    assert g.closed is True
    with pytest.raises(logstore.StreamClosedError):
        g.try_next()


def test_close_and_reopen_keeps_everything(open_store, store_dir):
    written: list[tuple[str, int, Envelope]] = []
    heads: dict[str, int] = {}
    ranges = []
    with open_store(segment_size=SMALL_SEGMENT) as store:
        for i in range(80):
            tx, committer = store.begin_tx()
            for name in (f"s{i % 5}", f"t{i % 3}")[: 1 + i % 2]:
                batch = [Envelope.new("E", {"i": i, "name": name, "pad": b"x" * 700})]
                store.append_messages(tx, name, heads.get(name, 0), batch)
                written += [(name, heads.get(name, 0), batch[0])]
                heads[name] = heads.get(name, 0) + 1
            ranges.append(committer.commit())
        names = store.stream_names()
    if (store_dir / "segments").is_dir():  # the embedded store: its messages span several segment files
        assert len(list((store_dir / "segments").glob("*.log"))) > 1
    for _ in range(2):
        with open_store(segment_size=SMALL_SEGMENT) as store:
            assert store.global_head == len(written)
            assert store.stream_names() == names
            assert [e for _, e in read_global(store)] == [e for _, _, e in written]
            for name, head in heads.items():
                assert store.head(name) == head
                assert read_stream(store, name) == [(off, e) for n, off, e in written if n == name]
            assert read_global(store, ranges[40].start)[0][1] == written[ranges[40].start][2]
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert commit(store, "s0", heads["s0"], envs(1)) == range(len(written), len(written) + 1)


def test_protocol_classes_are_satisfied_by_the_store_and_its_readers(store):
    assert isinstance(store, protocols.DataStore)
    assert isinstance(store, protocols.Store)
    assert isinstance(store, protocols.GloballyOrderedStore)
    tx, committer = store.begin_tx()
    assert isinstance(tx, protocols.Tx)
    assert isinstance(committer, protocols.Committer)
    committer.rollback()
    reader, _ = store.open_stream(store, "s", 0)
    glob = store.open_global(store, 0)
    assert isinstance(reader, protocols.Stream)
    assert isinstance(glob, protocols.Stream)
    reader.close()
    glob.close()
    # The protocols do check: things without the methods are not streams or stores.
    assert not isinstance(object(), protocols.Stream)
    assert not isinstance(committer, protocols.Store)
    assert not isinstance(reader, protocols.GloballyOrderedStore)


def test_global_head_and_stream_heads_follow_commits(store):
    assert store.global_head == 0
    assert store.head("s") == 0
    commit(store, "s", 0, envs(2))
    commit(store, "t", 0, envs(1))
    assert store.global_head == 3
    assert (store.head("s"), store.head("t")) == (2, 1)
    assert store.stream_names() == ["s", "t"]
