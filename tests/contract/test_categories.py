"""Categories and type filters, on every backend: ``open_category`` and ``types=``.

- A stream's category is its name up to the first ``-``: ``order-42`` and ``order-42-a`` are in
  ``order``, a name without ``-`` is its own category (``order`` is in ``order``, ``orders`` is not),
  and ``-x`` is in the empty category.
- A category reader yields its streams' messages in global order, ``offset()`` the global offset (the
  same as the global reader's for the same message), from the offset it was opened at.
- ``next()`` waits for the category's next message: a commit to another category does not end the
  wait, one to the category does; ``anext()`` the same on an event loop.
- ``types=`` on the global and the category reader yields only those types.
- Truncated, deleted and compacted messages are skipped as the global reader skips them.
- Bad arguments are refused with a clear error.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from logstore import Envelope
from logstore.checks import category_of
from logstore.protocols import CategoryStore, LocatedStream, ShortFormStore
from tests.contract.backends import OpenStore

WAIT = 30.0  # seconds a thread waits before the test fails rather than hangs

NAMES = ["order-1", "order-2-x", "order", "orders-1", "user-1", "a-b-c", "-x", "user"]


def _env(stream: str, i: int, type_: str = "Event") -> Envelope:
    return Envelope.new(type_, {"stream": stream, "i": i})


def _fill(store: Any, rounds: int = 3) -> list[tuple[int, str, Envelope]]:
    """Interleaved commits to every stream of :data:`NAMES`; what the global reader reads back."""
    heads = dict.fromkeys(NAMES, 0)
    for r in range(rounds):
        for k, name in enumerate(NAMES):
            with store.transaction() as tx:
                n = 1 + (k + r) % 3
                tx.append(name, heads[name], [_env(name, heads[name] + j, f"T{(k + j) % 4}") for j in range(n)])
                heads[name] += n
    with store.global_stream() as log:
        return [(log.offset(), log.stream_name(), env) for env in log]


def _read(reader: Any) -> list[tuple[int, str, Envelope]]:
    with reader:
        return [(reader.offset(), reader.stream_name(), env) for env in reader]


def test_category_of_a_name_is_its_part_before_the_first_dash() -> None:
    assert [category_of(n) for n in NAMES] == ["order", "order", "order", "orders", "user", "a", "", "user"]


def test_a_category_reader_reads_its_streams_in_global_order(open_store: OpenStore) -> None:
    with open_store() as store:
        assert isinstance(store, CategoryStore) and isinstance(store, ShortFormStore)
        assert isinstance(store.category("order"), LocatedStream)
        everything = _fill(store)
        for category in ("order", "orders", "user", "a", "", "b", "nothing"):
            want = [row for row in everything if category_of(row[1]) == category]
            got = _read(store.open_category(store, category, 0))
            assert got == want, category
            assert [g for g, _n, _e in got] == sorted(g for g, _n, _e in got)
        assert len(_read(store.category("order"))) > 0


def test_a_category_reader_starts_at_its_global_offset(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store)
        mine = [row for row in everything if category_of(row[1]) == "order"]
        for start in (0, mine[0][0], mine[0][0] + 1, mine[len(mine) // 2][0], mine[-1][0], mine[-1][0] + 1, 10**9):
            assert _read(store.category("order", start)) == [row for row in mine if row[0] >= start], start
        with store.category("order") as reader:
            assert reader.try_next()
            assert (reader.global_offset(), reader.stream_offset()) == (mine[0][0], 0)
            assert reader.get() == mine[0][2]


def test_type_filters_on_the_global_and_the_category_reader(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store, rounds=4)
        for types in (["T1"], ["T0", "T3"], ("T2",), {"T1", "missing"}, frozenset(["missing"])):
            want = [row for row in everything if row[2].type in set(types)]
            assert _read(store.open_global(store, 0, types=types)) == want, types
            assert _read(store.global_stream(types=types)) == want
            for category in ("order", "user"):
                mine = [row for row in want if category_of(row[1]) == category]
                assert _read(store.open_category(store, category, 0, types=types)) == mine, (category, types)
        start = everything[len(everything) // 2][0]
        want = [row for row in everything if row[2].type == "T1" and row[0] >= start]
        assert _read(store.global_stream(start, types=["T1"])) == want
        odd = "\x00ödd-" + "t" * 300  # any str is a type name: NUL, non-ASCII, longer than a short msgpack str
        _commit(store, "order-77", 0, odd)
        (row,) = _read(store.global_stream(types=[odd]))
        assert row[1:] == ("order-77", _read(store.category("order", row[0]))[0][2]) and row[2].type == odd
        assert _read(store.category("order", types=[odd, "T1"]))[-1][0] == row[0]


def test_blocking_next_waits_for_the_categorys_own_commit(open_store: OpenStore) -> None:
    with open_store() as store:
        got: list[tuple[int, str]] = []
        failed: list[BaseException] = []
        waiting = store.category("order")

        def wait() -> None:
            try:
                waiting.next(timeout=WAIT)
                got.append((waiting.offset(), waiting.stream_name()))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                failed.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        with store.transaction() as tx:
            tx.append("user-1", 0, [_env("user-1", 0)])  # another category: the wait goes on
        with store.transaction() as tx:
            tx.append("order-9", 0, [_env("order-9", 0)])
        t.join(WAIT)
        assert not t.is_alive() and not failed, failed
        assert got == [(1, "order-9")]
        with pytest.raises(TimeoutError):
            waiting.next(timeout=0.05)
        waiting.close()


def test_a_waiting_category_reader_ends_when_closed(open_store: OpenStore) -> None:
    with open_store() as store:
        reader = store.category("order", types=["T1"])
        ended: list[BaseException] = []
        started = threading.Event()

        def wait() -> None:
            started.set()
            try:
                reader.next()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                ended.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        started.wait(WAIT)
        reader.close()
        t.join(WAIT)
        assert not t.is_alive()
        assert ended and type(ended[0]).__name__ == "StreamClosedError"


def test_anext_on_a_category_and_a_type_filter(open_store: OpenStore) -> None:
    with open_store() as store:

        async def main() -> list[tuple[int, str, str]]:
            cat = store.category("order")
            typed = store.global_stream(types=["Wanted"])
            first = asyncio.ensure_future(cat.anext(timeout=WAIT))
            second = asyncio.ensure_future(typed.anext(timeout=WAIT))
            await asyncio.sleep(0)
            await asyncio.to_thread(_commit, store, "user-1", 0, "Wanted")
            await asyncio.to_thread(_commit, store, "order-1", 0, "Other")
            a = await first
            b = await second
            out = [(cat.offset(), cat.stream_name(), a.type), (typed.offset(), typed.stream_name(), b.type)]
            cat.close()
            typed.close()
            return out

        assert asyncio.run(main()) == [(1, "order-1", "Other"), (0, "user-1", "Wanted")]


def _commit(store: Any, stream: str, offset: int, type_: str) -> None:
    with store.transaction() as tx:
        tx.append(stream, offset, [_env(stream, offset, type_)])


def test_removed_messages_are_skipped_as_by_the_global_reader(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store, rounds=4)
        store.truncate_stream("order-1", 3)
        store.delete_stream("order-2-x")
        with store.global_stream() as log:
            everything = [(log.offset(), log.stream_name(), env) for env in log]
        want = [row for row in everything if category_of(row[1]) == "order"]
        assert all(n not in ("order-2-x",) for _g, n, _e in want)
        assert _read(store.category("order")) == want
        assert _read(store.category("order", types=["T1"])) == [r for r in want if r[2].type == "T1"]
        # A reader that read ahead before the removal returns none of what was removed after it.
        with store.category("order") as reader:
            assert reader.try_next()
            store.truncate_stream("order", 100 if store.head("order") >= 100 else store.head("order"))
            rest = [(reader.offset(), reader.stream_name()) for _env in reader]
        assert all(name != "order" for _g, name in rest)
        report = store.compact()
        assert report is not None
        assert _read(store.category("order")) == [row for row in want if row[1] != "order"]


def test_a_reopened_store_reads_its_categories(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store)
    with open_store() as store:
        assert _read(store.category("user")) == [row for row in everything if category_of(row[1]) == "user"]
    with open_store(readonly=True) as ro:
        assert _read(ro.category("a")) == [row for row in everything if category_of(row[1]) == "a"]


@pytest.mark.parametrize(
    ("category", "types", "error", "message"),
    [
        (1, None, TypeError, "category must be a str, got int"),
        ("order-1", None, ValueError, "contains '-'"),
        ("a\x00", None, ValueError, "NUL"),
        ("order", "T1", TypeError, "wrap it in a list"),
        ("order", [], ValueError, "at least one type"),
        ("order", [1], TypeError, "type names (str)"),
        ("order", 5, TypeError, "collection of type names"),
    ],
)
def test_bad_arguments_are_refused(open_store: OpenStore, category: Any, types: Any, error: type, message: str) -> None:
    with open_store() as store:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            store.open_category(store, category, 0, types=types)
        if category == "order":
            with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
                store.open_global(store, 0, types=types)
        with pytest.raises(ValueError, match="offset must be >= 0"):
            store.open_category(store, "order", -1)
