"""``reader.read(max_count)``: the messages available now, in one call, on every kind of reader.

- Stream, global and category readers (with and without types) and a subscription return, over
  successive calls, exactly what iteration returns, in order, at most ``max_count`` per call, and an
  empty list once nothing is left; the last message returned is the current one (``offset()``,
  ``stream_name()``, ``get()``).
- It never waits, reads on after a later commit, skips removed messages, checks ``max_count`` and
  refuses once closed.
"""

from __future__ import annotations

from typing import Any

import pytest

import logstore
from logstore import ANY, Envelope
from tests.contract.backends import OpenStore


def _fill(store: Any, n: int) -> list[tuple[str, Envelope]]:
    rows = []
    with store.transaction() as tx:
        for i in range(n):
            stream = f"{'order' if i % 3 else 'user'}-{i % 5}"
            env = Envelope.new("Placed" if i % 2 else "Paid", {"i": i})
            tx.append(stream, ANY, [env])
            rows.append((stream, env))
    return rows


def _read_all(reader: Any, max_count: int) -> list[Envelope]:
    out: list[Envelope] = []
    while True:
        batch = reader.read(max_count)
        assert len(batch) <= max_count
        if not batch:
            return out
        assert reader.get() == batch[-1]
        out += batch


@pytest.mark.parametrize("max_count", [1, 7, 1000])
def test_read_returns_what_iteration_returns(open_store: OpenStore, max_count: int) -> None:
    with open_store() as store:
        rows = _fill(store, 600)
        openers = {
            "global": store.global_stream,
            "global typed": lambda: store.global_stream(types=["Paid"]),
            "category": lambda: store.category("order"),
            "category typed": lambda: store.category("order", 10, types=["Placed"]),
            "stream": lambda: store.stream("order-1", 3),
        }
        for what, opener in openers.items():
            with opener() as a, opener() as b:
                assert _read_all(a, max_count) == list(b), what
                assert a.offset() == b.offset() and a.stream_name() == b.stream_name(), what
        assert _read_all(store.global_stream(), max_count) == [env for _s, env in rows]


def test_read_never_waits_and_reads_on_after_a_commit(open_store: OpenStore) -> None:
    with open_store() as store, store.category("order") as reader:
        assert reader.read() == []
        rows = _fill(store, 10)
        want = [env for stream, env in rows if stream.startswith("order-")]
        assert reader.read(2) == want[:2] and reader.offset() == 2
        assert reader.read() == want[2:] and reader.read() == []
        more = _fill(store, 4)
        assert reader.read() == [env for stream, env in more if stream.startswith("order-")]


def test_read_skips_removed_messages(open_store: OpenStore) -> None:
    with open_store() as store:
        rows = _fill(store, 30)
        store.truncate_stream("order-1", 2)
        with store.global_stream() as reader:
            got = _read_all(reader, 4)
        removed = [env for stream, env in rows if stream == "order-1"][:2]
        assert got == [env for _s, env in rows if env not in removed]


def test_read_checks_max_count_and_refuses_once_closed(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store, 3)
        reader = store.global_stream()
        for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
            with pytest.raises(error, match="max_count"):
                reader.read(bad)
        reader.close()
        with pytest.raises(logstore.StreamClosedError):
            reader.read()


def test_a_subscription_reads_in_batches_too(open_store: OpenStore) -> None:
    with open_store() as store:
        rows = _fill(store, 50)
        with store.subscribe("batch", category="order") as sub:
            got = _read_all(sub, 6)
            sub.ack()
        assert got == [env for stream, env in rows if stream.startswith("order-")]
        with store.subscribe("batch", category="order") as sub:
            assert sub.read() == []
        members = []
        for m in range(3):
            with store.subscribe("group", category="order", group=(m, 3)) as sub:
                members.append(_read_all(sub, 4))
        assert sorted(env.message_id for part in members for env in part) == sorted(env.message_id for env in got)
