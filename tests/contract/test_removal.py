"""Truncation, deletion and compaction on every backend: readers never see removed messages, across reopen.

What only a store directory has (segments, retention, a damaged record, the bytes compaction
reclaims) is in tests/unit/test_removal.py.
"""

from __future__ import annotations

import threading

import pytest

import logstore
from logstore import Envelope
from tests.contract.backends import OpenStore
from tests.helpers import SMALL_SEGMENT, fill_interleaved, readable_global, readable_offsets


def _fill(store: logstore.Store, streams: dict[str, int], pad: int = 200) -> None:
    fill_interleaved(store, streams, pad)


def test_truncate_hides_offsets_below_before_everywhere(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 40, "b": 40})
        store.truncate_stream("a", 25)
        assert readable_offsets(store, "a") == list(range(25, 40))
        assert readable_offsets(store, "a", 30) == list(range(30, 40))
        assert [x for x in readable_global(store) if x[0] == "a"] == [("a", i) for i in range(25, 40)]
        assert readable_offsets(store, "b") == list(range(40))
        assert store.stream_info("a") == (25, 40, False)
        # Offsets are not renumbered: the next append goes at the head.
        _fill(store, {"a": 1})
        assert readable_offsets(store, "a")[-1] == 40
    with open_store() as store:
        assert readable_offsets(store, "a") == list(range(25, 41))
        assert store.stream_info("a") == (25, 41, False)


def test_truncate_is_monotonic_and_checked(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 5})
        store.truncate_stream("a", 3)
        store.truncate_stream("a", 1)  # below what is removed: nothing happens
        assert store.stream_info("a") == (3, 5, False)
        with pytest.raises(ValueError, match="head is 5"):
            store.truncate_stream("a", 6)
        with pytest.raises(ValueError, match="no stream named 'nope'"):
            store.truncate_stream("nope", 0)
        with pytest.raises(ValueError, match="no stream named"):
            store.delete_stream("nope")
        with pytest.raises(ValueError, match=">= 0"):
            store.truncate_stream("a", -1)
        with pytest.raises(TypeError):
            store.truncate_stream("a", "3")  # type: ignore[arg-type]
        head = store.global_head
        store.truncate_stream("a", 5)  # everything
        assert store.global_head == head + 1  # one control record
        assert readable_offsets(store, "a") == []
        assert store.stream_info("a") == (5, 5, False)


@pytest.mark.parametrize("streams", [3, 40])  # 40: more than the writer publishes one by one
def test_one_transaction_brings_many_deleted_streams_back(open_store: OpenStore, streams: int) -> None:
    names = [f"s{k:02d}" for k in range(streams)]
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, dict.fromkeys(names, 2))
        for name in names[::2]:
            store.delete_stream(name)
        assert store.stream_names() == names[1::2]
        with store.transaction() as tx:
            for name in names:
                store.append_messages(tx, name, 2, [Envelope.new("E", {"s": name, "i": 2})])
        for name in names:
            deleted = name in names[::2]
            assert store.stream_info(name) == ((2 if deleted else 0), 3, False), name
            assert readable_offsets(store, name) == ([2] if deleted else [0, 1, 2]), name
        assert store.stream_names() == names
    with open_store() as store:
        assert store.stream_names() == names
        assert all(not store.stream_info(name).deleted for name in names)


def test_delete_then_append_continues_at_old_head(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 7, "b": 3})
        store.delete_stream("a")
        _stream, found = store.open_stream(store, "a", 0)
        _stream.close()
        assert not found
        assert store.stream_names() == ["b"]
        assert store.head("a") == 7
        assert store.stream_info("a") == (7, 7, True)
        assert readable_offsets(store, "a") == []
        head = store.global_head
        store.delete_stream("a")  # already deleted: nothing written
        assert store.global_head == head
        with pytest.raises(logstore.OffsetConflictError), store.transaction() as tx:
            store.append_messages(tx, "a", 0, [Envelope.new("E", {"s": "a", "i": 0})])
    with open_store() as store:
        assert store.stream_info("a") == (7, 7, True)
        _fill(store, {"a": 2})
        assert readable_offsets(store, "a") == [7, 8]
        assert store.stream_info("a") == (7, 9, False)
        assert store.stream_names() == ["a", "b"]
    with open_store() as store:
        assert store.stream_info("a") == (7, 9, False)


def test_readonly_store_refuses_removal(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store, {"a": 2})
    with open_store(readonly=True) as ro:
        with pytest.raises(logstore.ReadOnlyError):
            ro.truncate_stream("a", 1)
        with pytest.raises(logstore.ReadOnlyError):
            ro.delete_stream("a")
        with pytest.raises(logstore.ReadOnlyError):
            ro.compact()


def test_reader_that_decoded_ahead_never_returns_a_message_truncated_since(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 50})
        stream, _ = store.open_stream(store, "a", 0)
        g = store.open_global(store, 0)
        for _ in range(10):  # the readers now hold envelopes decoded ahead
            assert stream.try_next() and g.try_next()
        store.truncate_stream("a", 30)
        assert stream.try_next() and stream.offset() == 30
        assert g.try_next() and g.get().message["i"] == 30
        stream.close()
        g.close()


def test_blocked_reader_wakes_past_a_removal(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 3})
        g = store.open_global(store, store.global_head)
        got: list[int] = []
        ready = threading.Event()

        def wait() -> None:
            ready.set()
            g.next(timeout=30)
            got.append(g.get().message["i"])

        t = threading.Thread(target=wait)
        t.start()
        ready.wait()
        store.truncate_stream("a", 2)  # a control record: not a message, the reader keeps waiting
        _fill(store, {"a": 1})
        t.join()
        assert got == [3]
        g.close()


def test_readers_run_during_compaction(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 200, "b": 200}, pad=300)
        store.truncate_stream("a", 190)
        expected = readable_global(store)
        g = store.open_global(store, 0)
        first = [(g.get().message["s"], g.get().message["i"]) for _ in range(5) if g.try_next()]
        store.compact()
        rest = []
        while g.try_next():
            rest.append((g.get().message["s"], g.get().message["i"]))
        g.close()
        # The reader decoded some messages ahead before the truncation; it dropped them, so all it
        # returns after is readable now.
        assert first + rest == expected or (first == expected[:5] and rest == expected[5:])


def test_compaction_removes_the_messages_and_keeps_every_offset(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 150, "b": 150, "c": 20}, pad=300)
        store.truncate_stream("a", 140)
        store.delete_stream("b")
        before = readable_global(store)
        report = store.compact()
        assert report.messages_removed == 140 + 150
        assert readable_global(store) == before
        assert readable_offsets(store, "a") == list(range(140, 150))
        assert readable_offsets(store, "c") == list(range(20))
        assert store.compact().messages_removed == 0  # nothing more to do
        head = store.global_head
    with open_store() as store:
        assert store.global_head == head
        assert readable_global(store) == before
        assert store.stream_info("a") == (140, 150, False)
        assert store.stream_info("b") == (150, 150, True)
        _fill(store, {"b": 1})
        assert readable_offsets(store, "b") == [150]
