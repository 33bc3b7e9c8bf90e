"""Idempotent appends and ``store.locate``, on every backend (DESIGN.md section 9).

- A retry (the same envelopes, stream and offsets again) commits nothing and returns the original
  global offsets; at ``logstore.ANY`` too, with the original stream offsets in ``tx.stream_offsets``.
- The same ids at other offsets of the stream raise ``DuplicateMessageError``, nothing written; so do
  an id twice in one transaction and a retry mixed with new envelopes (in the same or another stream).
- The rule is per stream: one message may be in several streams, in one transaction or later.
- ``store.locate`` lists every readable place of a message, empty when none; removed places are gone.
"""

from __future__ import annotations

import pickle

import pytest

import logstore
from logstore import ANY, DuplicateMessageError, Envelope, LogStoreError, OffsetConflictError
from logstore.results import Location
from tests.contract.backends import OpenStore
from tests.helpers import SMALL_SEGMENT


def _envs(tag: str, n: int) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": i}) for i in range(n)]


def _commit(store: logstore.Store, *appends: tuple[str, object, list[Envelope]]) -> range:
    tx, committer = store.begin_tx()
    for stream, offset, envs in appends:
        store.append_messages(tx, stream, offset, envs)  # type: ignore[arg-type]
    return committer.commit()


def _snapshot(store: logstore.Store) -> list[tuple[int, str, int, Envelope]]:
    out = []
    with store.global_stream(0) as log:
        while log.try_next():
            out.append((log.offset(), log.stream_name(), log.stream_offset(), log.get()))
    return out


def test_duplicate_message_error_is_a_logstore_error_and_pickles() -> None:
    err = DuplicateMessageError("s", "m-1", 3, 1)
    assert isinstance(err, LogStoreError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.stream, again.message_id, again.offset, again.existing) == ("s", "m-1", 3, 1)
    assert str(again) == str(err) == "stream 's': message 'm-1' at offset 3 is already in the stream at offset 1"


def test_a_retry_returns_the_original_offsets_and_writes_nothing(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _commit(store, ("other", 0, _envs("o", 2)))
        envs = _envs("a", 3)
        first = _commit(store, ("s", 0, envs))
        _commit(store, ("s", 3, _envs("b", 1)))
        before = _snapshot(store)
        tx, committer = store.begin_tx()
        store.append_messages(tx, "s", 0, envs)
        assert committer.commit() == first == range(2, 5)
        assert tx.stream_offsets == {"s": range(3)}
        assert _snapshot(store) == before
        assert store.global_head == 6
        # A retry of part of a commit is a retry too.
        assert _commit(store, ("s", 1, envs[1:])) == range(3, 5)
        assert _snapshot(store) == before
    with open_store(segment_size=SMALL_SEGMENT) as store:  # and after a reopen
        assert _commit(store, ("s", 0, envs)) == first
        assert _snapshot(store) == before


def test_a_retry_of_a_transaction_over_two_streams(open_store: OpenStore) -> None:
    """The seed's suite appends one envelope to two streams in one transaction: its retry is a retry."""
    with open_store(segment_size=SMALL_SEGMENT) as store:
        env = _envs("x", 1)
        more = _envs("y", 2)
        first = _commit(store, ("a", 0, env), ("b", 0, env + more))
        assert first == range(4)
        before = _snapshot(store)
        assert _commit(store, ("a", 0, env), ("b", 0, env + more)) == first
        assert _snapshot(store) == before
        assert store.locate(env[0].message_id) == [Location("a", 0, 0), Location("b", 0, 1)]


def test_a_retry_at_any_returns_the_original_stream_offsets(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _commit(store, ("outbox", 0, _envs("p", 2)))
        envs = _envs("q", 2)
        tx, committer = store.begin_tx()
        store.append_messages(tx, "outbox", ANY, envs)
        first = committer.commit()
        assert tx.stream_offsets == {"outbox": range(2, 4)}
        _commit(store, ("outbox", ANY, _envs("r", 1)))
        before = _snapshot(store)
        tx, committer = store.begin_tx()
        store.append_messages(tx, "outbox", ANY, envs)
        assert committer.commit() == first
        assert tx.stream_offsets == {"outbox": range(2, 4)}
        assert _snapshot(store) == before
        # At ANY, the same ids in another order are not where a retry would put them.
        with pytest.raises(DuplicateMessageError) as caught:
            _commit(store, ("outbox", ANY, envs[::-1]))
        assert caught.value.offset is None
        assert _snapshot(store) == before


def test_the_same_ids_at_other_offsets_raise_and_write_nothing(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        envs = _envs("a", 2)
        _commit(store, ("s", 0, envs))
        before = _snapshot(store)
        with pytest.raises(DuplicateMessageError) as caught:
            _commit(store, ("s", 2, [envs[0]]))
        err = caught.value
        assert (err.stream, err.message_id, err.offset, err.existing) == ("s", envs[0].message_id, 2, 0)
        assert f"message {envs[0].message_id!r} at offset 2 is already in the stream at offset 0" in str(err)
        with pytest.raises(DuplicateMessageError):  # with new envelopes around it, and another stream
            _commit(store, ("t", 0, _envs("n", 1)), ("s", 2, [*_envs("n", 1), envs[1]]))
        with pytest.raises(DuplicateMessageError):
            _commit(store, ("s", ANY, [envs[1], envs[0]]))
        assert _commit(store, ("s", ANY, [envs[1]])) == range(1, 2)  # where it is: a retry at ANY
        assert _snapshot(store) == before
        assert store.stream_info("t") is None
        assert store.head("s") == 2
        _commit(store, ("s", 2, _envs("c", 1)))  # the store goes on


def test_an_id_twice_in_one_transaction_raises(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        env = _envs("a", 1)[0]
        with pytest.raises(DuplicateMessageError, match="twice in one transaction"):
            _commit(store, ("s", 0, [env, env]))
        with pytest.raises(DuplicateMessageError, match="twice in one transaction"):
            _commit(store, ("s", 0, [env]), ("s", 1, [env]))
        assert store.global_head == 0
        assert store.stream_info("s") is None
        # Twice in one transaction, in two streams: allowed (the rule is per stream).
        assert _commit(store, ("s", 0, [env]), ("t", 0, [env])) == range(2)


def test_a_retry_mixed_with_new_envelopes_raises_and_writes_nothing(open_store: OpenStore) -> None:
    """Documented choice: a transaction holding committed envelopes beside new ones is not a retry of one
    commit, even when the new ones are in another stream; nothing of it is written."""
    with open_store(segment_size=SMALL_SEGMENT) as store:
        envs = _envs("a", 2)
        _commit(store, ("s", 0, envs))
        before = _snapshot(store)
        with pytest.raises(DuplicateMessageError, match="not a retry of one commit") as caught:
            _commit(store, ("s", 0, envs), ("t", 0, _envs("new", 1)))
        assert (caught.value.stream, caught.value.existing) == ("s", 0)
        with pytest.raises(DuplicateMessageError, match="not a retry of one commit"):
            _commit(store, ("s", 0, envs), ("s", 2, _envs("new", 1)))
        assert _snapshot(store) == before
        assert store.stream_info("t") is None


def test_a_retry_of_two_commits_in_one_transaction_raises(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        a, b = _envs("a", 1), _envs("b", 1)
        _commit(store, ("s", 0, a))
        _commit(store, ("x", 0, _envs("between", 1)))
        _commit(store, ("s", 1, b))
        before = _snapshot(store)
        with pytest.raises(DuplicateMessageError, match="not at one range of global offsets"):
            _commit(store, ("s", 0, a + b))
        assert _snapshot(store) == before


def test_one_message_in_other_streams_later(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        env = _envs("a", 1)
        _commit(store, ("s", 0, env))
        assert _commit(store, ("t", 0, env)) == range(1, 2)
        assert _commit(store, ("u", ANY, env)) == range(2, 3)
        assert store.locate(env[0].message_id) == [Location("s", 0, 0), Location("t", 0, 1), Location("u", 0, 2)]


def test_a_stale_offset_without_a_retry_is_still_an_offset_conflict(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _commit(store, ("s", 0, _envs("a", 2)))
        tx, committer = store.begin_tx()
        with pytest.raises(OffsetConflictError):
            store.append_messages(tx, "s", 0, _envs("b", 1))
        committer.rollback()
        # A retry staged below the head, and the stream moved on: still a retry (the ids decide).
        envs = _envs("c", 1)
        _commit(store, ("s", 2, envs))
        assert _commit(store, ("s", 2, envs)) == range(2, 3)


def test_locate(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert store.locate("no-such-id") == []
        envs = _envs("a", 3)
        _commit(store, ("s", 0, envs))
        places = store.locate(envs[1].message_id)
        assert places == [Location("s", 1, 1)]
        assert places[0].stream == "s" and places[0].stream_offset == 1 and places[0].global_offset == 1
        store.truncate_stream("s", 2)
        assert store.locate(envs[1].message_id) == []
        assert store.locate(envs[2].message_id) == [Location("s", 2, 2)]
        store.delete_stream("s")
        assert store.locate(envs[2].message_id) == []
        with pytest.raises(TypeError, match="message_id must be a str"):
            store.locate(b"bytes")  # type: ignore[arg-type]
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert store.locate(envs[2].message_id) == []


def test_a_removed_message_may_be_appended_again(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        envs = _envs("a", 2)
        _commit(store, ("s", 0, envs))
        store.truncate_stream("s", 1)
        assert _commit(store, ("s", 2, [envs[0]])) == range(3, 4)
        assert store.locate(envs[0].message_id) == [Location("s", 2, 3)]
        with pytest.raises(DuplicateMessageError):
            _commit(store, ("s", 3, [envs[1]]))


def test_many_messages_over_segment_rolls(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        written = []
        for k in range(60):
            envs = _envs(f"k{k}", 5)
            g = _commit(store, (f"s-{k % 7}", ANY, envs))
            written.append((envs, g))
        for envs, g in written[::7]:
            stream = store.locate(envs[0].message_id)[0].stream
            head = store.locate(envs[0].message_id)[0].stream_offset
            assert _commit(store, (stream, head, envs)) == g
        head = store.global_head
    with open_store(segment_size=SMALL_SEGMENT) as store:
        for envs, g in written:
            assert [p.global_offset for e in envs for p in store.locate(e.message_id)] == list(g)
        envs, g = written[3]
        loc = store.locate(envs[0].message_id)[0]
        assert _commit(store, (loc.stream, loc.stream_offset, envs)) == g
        assert store.global_head == head
