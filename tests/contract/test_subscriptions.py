"""Durable subscriptions and consumer groups, on every backend (DESIGN.md section 9).

- ``store.subscribe(name, category=None, types=None, group=None)`` is a reader (the surface of a
  category reader: ``offset()`` is the global offset) that starts at its member's saved position:
  0 for a new subscription, so it delivers everything still in the log, in global order.
- ``sub.ack()`` saves the position after the current message, ``sub.ack(offset)`` after ``offset``
  (at most the current message's); nothing delivered yet, or an offset past the current message, is
  a ``ValueError`` that changes nothing. A position never moves back. It survives closing the
  subscription and the store; a message handled but not acknowledged is delivered again.
- ``category`` and ``types`` filter as the category reader and ``types=`` do.
- ``group=(member, size)``: a message goes to member ``xxh64(stream name) % size``, so the members
  together get every message of the subscription exactly once, each stream whole and in order, to one
  member; each member keeps its own position.
- A later subscribe must name the same category, types and group size (``ValueError`` says what
  differs); a member open already, in this store, another store object or another process, is
  ``SubscriptionBusyError``; closing frees it.
- ``subscriptions()`` lists every subscription (sorted by name) with one position per member;
  ``delete_subscription`` removes one (``True``) or says there was none (``False``), and refuses
  while a member is open. A read-only store lists but does not subscribe.
- ``next(timeout)`` waits for the subscription's own commit; ``anext``/``async for`` on an event loop;
  closing ends a wait with ``StreamClosedError``; a closed subscription refuses everything but ``close``.
- Bad arguments are refused with a clear error and create nothing.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logstore
from logstore import Envelope, LogStoreError, ReadOnlyError, StreamClosedError, SubscriptionBusyError
from logstore.checks import category_of
from logstore.protocols import LocatedStream
from logstore.results import SubscriptionInfo
from logstore.subscriptions import member_of, pending
from tests.contract.backends import BACKENDS, OpenAt, OpenStore
from tests.helpers import SMALL_SEGMENT, spawn_python
from tests.stress import scale

WAIT = 30.0  # seconds a thread or a child process waits before the test fails rather than hangs

TYPES = ["T0", "T1", "T2"]

Row = tuple[int, str, Envelope]
"""A delivered message: (global offset, stream name, envelope)."""


def _streams_of(members: range, size: int, category: str, count: int) -> list[str]:
    """``count`` stream names of ``category`` for each of ``members`` of a group of ``size`` (by the xxh64 rule)."""
    out = []
    for member in members:
        found = 0
        i = 0
        while found < count:
            name = f"{category}-{i}"
            if xxhash.xxh64_intdigest(name.encode()) % size == member:
                out.append(name)
                found += 1
            i += 1
    return out


STREAMS = list(
    dict.fromkeys(
        [
            "order-1",
            "order-3-x",
            "order",
            "user-1",
            "orders-1",
            "-x",
            "user",
            *_streams_of(range(6), 6, "order", 1),  # each member of a group of 2, 3 or 6 has a stream
            *_streams_of(range(6), 6, "user", 1),
        ]
    )
)
"""The streams :func:`_fill` writes: five categories ("" for "-x"), groups of the categories never empty."""


def _env(stream: str, i: int, type_: str = "T0") -> Envelope:
    return Envelope.new(type_, {"stream": stream, "i": i})


def _commit(store: Any, stream: str, type_: str = "T0", n: int = 1) -> range:
    """Append ``n`` messages to ``stream`` at its head, one transaction; its global offsets."""
    with store.transaction() as tx:
        head = store.head(stream)
        tx.append(stream, head, [_env(stream, head + j, type_) for j in range(n)])
    assert tx.global_offsets is not None
    return tx.global_offsets


def _log(store: Any) -> list[Row]:
    with store.global_stream() as log:
        return [(log.offset(), log.stream_name(), env) for env in log]


def _fill(store: Any, rounds: int = 3) -> list[Row]:
    """Interleaved commits of 1 to 3 messages of mixed types to every stream of :data:`STREAMS`; the log."""
    for r in range(rounds):
        for k, name in enumerate(STREAMS):
            n = 1 + (k + r) % 3
            with store.transaction() as tx:
                head = store.head(name)
                tx.append(name, head, [_env(name, head + j, TYPES[(k + j + r) % 3]) for j in range(n)])
    return _log(store)


def _drain(sub: Any) -> list[Row]:
    """What ``sub`` delivers now, checking each message's accessors agree."""
    out = []
    for env in sub:
        assert sub.get() == env
        assert sub.offset() == sub.global_offset()
        out.append((sub.offset(), sub.stream_name(), env))
    assert not sub.try_next()
    return out


def _take(sub: Any, n: int) -> list[Row]:
    """The next ``n`` messages, each of which must be there now."""
    out = []
    for _ in range(n):
        assert sub.try_next()
        out.append((sub.offset(), sub.stream_name(), sub.get()))
    return out


def _wanted(
    rows: list[Row],
    category: str | None = None,
    types: Any = None,
    member: int = 0,
    size: int = 1,
    start: int = 0,
) -> list[Row]:
    """What a member of a subscription is owed of ``rows`` from global offset ``start`` on."""
    return [
        (g, name, env)
        for g, name, env in rows
        if g >= start
        and (category is None or category_of(name) == category)
        and (types is None or env.type in set(types))
        and xxhash.xxh64_intdigest(name.encode("utf-8")) % size == member
    ]


def _positions(store: Any, name: str) -> tuple[int, ...] | None:
    """The saved positions of subscription ``name`` as ``subscriptions()`` lists them (None: no such one)."""
    found = [info for info in store.subscriptions() if info.name == name]
    assert len(found) <= 1, found
    return found[0].positions if found else None


# -- errors and types ---------------------------------------------------------------------


def test_subscription_busy_error_is_a_logstore_error_and_pickles(open_store: OpenStore) -> None:
    assert issubclass(SubscriptionBusyError, LogStoreError)
    assert SubscriptionBusyError is logstore.SubscriptionBusyError
    with open_store() as store, store.subscribe("billing"):
        with pytest.raises(SubscriptionBusyError) as caught:
            store.subscribe("billing")
        assert "billing" in str(caught.value)  # the message names the subscription
        again = pickle.loads(pickle.dumps(caught.value))
        assert type(again) is SubscriptionBusyError and str(again) == str(caught.value)


def test_subscription_info_is_a_named_tuple() -> None:
    info = SubscriptionInfo("s", "order", frozenset({"T1"}), 2, (0, 5))
    assert (info.name, info.category, info.types, info.size, info.positions) == info
    assert info == ("s", "order", frozenset({"T1"}), 2, (0, 5))
    assert SubscriptionInfo._fields == ("name", "category", "types", "size", "positions")


# -- delivering and resuming --------------------------------------------------------------


def test_a_new_subscription_delivers_the_whole_log_from_the_start(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store)
        sub = store.subscribe("projector")
        located = isinstance(sub, LocatedStream)  # the surface of the category reader
        assert located
        assert (sub.name, sub.category, sub.types, sub.member, sub.size) == ("projector", None, None, 0, 1)
        assert sub.position == 0
        assert _positions(store, "projector") == (0,)  # created by the first subscribe, before any ack
        assert sub.closed is False
        with pytest.raises(ValueError):
            sub.get()  # nothing delivered yet
        with pytest.raises(ValueError):
            sub.offset()
        assert _drain(sub) == everything
        last = everything[-1]
        assert (sub.global_offset(), sub.stream_name(), sub.get()) == (last[0], last[1], last[2])
        assert sub.stream_offset() == store.head(last[1]) - 1
        assert sub.position == 0  # delivering moves nothing: only an ack does
        # Messages committed later are delivered next.
        more = _commit(store, "order-1", "T2", 2)
        assert [g for g, _n, _e in _drain(sub)] == list(more)
        sub.close()
        assert sub.closed is True


def test_an_acknowledged_position_survives_closing_the_store_and_the_rest_is_delivered_again(
    open_store: OpenStore,
) -> None:
    """At least once: what was handled but not acknowledged is delivered again after a restart."""
    for durability in ("fsync", "batch", "none"):  # a clean close keeps every ack, in every mode
        with open_store(durability=durability) as store:
            store.delete_subscription("s")
            everything = _log(store) or _fill(store)
            with store.subscribe("s") as sub:
                handled = _take(sub, 7)
                assert handled == everything[:7]
                sub.ack(handled[3][0])
                assert sub.position == handled[3][0] + 1
                # handled[4:] were handled but not acknowledged: the consumer stops here.
        with open_store(durability=durability) as store:
            assert _positions(store, "s") == (handled[3][0] + 1,), durability
            late = _commit(store, "user-2", "T1")
            with store.subscribe("s") as sub:
                assert sub.position == handled[3][0] + 1
                again = _drain(sub)
            assert again == [row for row in _log(store) if row[0] > handled[3][0]], durability
            assert again[:3] == handled[4:7] and again[-1][0] == late[-1]


def test_subscribing_again_in_the_same_store_resumes_at_the_saved_position(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store)
        sub = store.subscribe("s")
        _take(sub, 10)
        sub.ack()
        _take(sub, 5)  # handled, not acknowledged
        sub.close()
        with store.subscribe("s") as sub:
            assert sub.position == everything[9][0] + 1
            assert _drain(sub) == everything[10:]
            sub.ack()
            assert sub.position == everything[-1][0] + 1
        with store.subscribe("s") as sub:
            assert _drain(sub) == []
            new = _commit(store, "order", "T0", 3)
            assert [g for g, _n, _e in _drain(sub)] == list(new)


def test_ack_and_ack_offset_move_the_position_forward_only(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store)
        with store.subscribe("s", "order") as sub:
            mine = _wanted(everything, "order")
            got = _take(sub, 6)
            assert got == mine[:6]
            current = got[-1][0]
            sub.ack(got[2][0])
            assert sub.position == got[2][0] + 1 == _positions(store, "s")[0]  # type: ignore[index]
            sub.ack(current)  # the current message's own offset
            assert sub.position == current + 1
            for below in (got[1][0], 0, current):  # at or below the saved position: nothing moves
                sub.ack(below)
                assert sub.position == current + 1
            sub.ack()  # the current message again
            assert sub.position == current + 1
            assert _positions(store, "s") == (current + 1,)
            # Any offset up to the current message's acknowledges up to it, whatever message is there.
            more = _take(sub, 3)
            assert more[2][0] - 1 > current
            sub.ack(more[2][0] - 1)
            assert sub.position == more[2][0]
            sub.ack()
            assert sub.position == more[2][0] + 1 == _positions(store, "s")[0]  # type: ignore[index]


def test_ack_refuses_what_was_not_delivered(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store)
        with store.subscribe("s") as sub:
            with pytest.raises(ValueError):
                sub.ack()  # nothing delivered yet
            with pytest.raises(ValueError):
                sub.ack(0)  # not delivered yet either
            assert sub.position == 0
            got = _take(sub, 4)
            current = got[-1][0]
            for beyond in (current + 1, everything[-1][0], everything[-1][0] + 1, 10**12):
                with pytest.raises(ValueError):
                    sub.ack(beyond)
            with pytest.raises(ValueError):
                sub.ack(-1)
            with pytest.raises(TypeError):
                sub.ack("1")
            with pytest.raises(TypeError):
                sub.ack(1.0)
            assert sub.position == 0 and _positions(store, "s") == (0,)  # the refusals changed nothing
            sub.ack(1)
            assert sub.position == 2
        with store.subscribe("s") as sub:
            with pytest.raises(ValueError):
                sub.ack()  # resumed, but nothing delivered in this subscription yet
            assert sub.position == 2
            assert _take(sub, 1) == everything[2:3]


def test_removed_messages_are_not_delivered(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store)
        store.truncate_stream("order-1", 2)
        store.delete_stream("user-1")
        readable = _log(store)
        with store.subscribe("all") as sub:
            assert _drain(sub) == readable
        with store.subscribe("orders", "order") as sub:
            assert _drain(sub) == _wanted(readable, "order")
        # Removed after a consumer acknowledged part of the log, then compacted: it resumes with the rest.
        with store.subscribe("all") as sub:
            _take(sub, 5)
            sub.ack()
            saved = sub.position
        store.truncate_stream("order-3-x", store.head("order-3-x"))
        store.compact()
        readable = _log(store)
        with store.subscribe("all") as sub:
            assert sub.position == saved
            assert _drain(sub) == [row for row in readable if row[0] >= saved]


def test_subscriptions_begin_at_what_the_log_still_holds(open_store: OpenStore) -> None:
    """Retention (the embedded store's option) drops the oldest segments: a new subscription delivers what
    the log still holds, and one whose saved position retention passed resumes at the log's start."""
    with open_store(segment_size=SMALL_SEGMENT, retention_bytes=3 * SMALL_SEGMENT) as store:
        for i in range(10):
            _commit(store, f"order-{i % 3}")
        with store.subscribe("old", "order") as sub:
            _take(sub, 6)
            sub.ack()
            saved = sub.position
        for i in range(300):
            with store.transaction() as tx:
                name = f"order-{i % 3}"
                tx.append(name, store.head(name), [Envelope.new("T0", {"i": i, "pad": "p" * 1000})])
        rows = _log(store)
        if store.log_start:  # the embedded store: retention dropped segments past the saved position
            assert rows[0][0] > saved
        with store.subscribe("new", "order") as sub:
            assert _drain(sub) == rows
        with store.subscribe("old", "order") as sub:
            assert sub.position == saved
            assert _drain(sub) == [row for row in rows if row[0] >= saved]
            sub.ack()
            assert sub.position == rows[-1][0] + 1


# -- filters ------------------------------------------------------------------------------


def test_category_and_type_filters(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store, rounds=4)
        cases: list[tuple[str | None, Any]] = [
            ("order", None),
            ("user", ["T1"]),
            ("orders", None),
            ("", None),  # the category of "-x"
            (None, ("T0", "T2")),
            ("order", {"T2", "missing"}),
            ("nothing", None),
            (None, frozenset(["missing"])),
        ]
        for k, (category, types) in enumerate(cases):
            with store.subscribe(f"f{k}", category, types) as sub:
                assert sub.category == category
                assert sub.types == (None if types is None else frozenset(types))
                want = _wanted(everything, category, types)
                assert _drain(sub) == want, (category, types)
                if want:
                    sub.ack()
            # The position is after the last message delivered; a resumed subscription continues from there.
            assert _positions(store, f"f{k}") == ((want[-1][0] + 1) if want else 0,)
        late = [_commit(store, name, "T2") for name in ("user-2", "order-2", "-x", "orders-1")]
        for k, (category, types) in enumerate(cases):
            start = everything[-1][0] + 1
            now = _log(store)
            with store.subscribe(f"f{k}", category, types) as sub:
                assert _drain(sub) == _wanted(now, category, types, start=start), (category, types)
        assert sum(len(r) for r in late) == 4


# -- groups -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["order-1", "", "é-ü", "😀" * 40, "x" * 1000, "a\x7fb"])
def test_member_of_is_the_xxh64_rule(name: str) -> None:
    for size in (1, 2, 3, 7, 64, 1024):
        assert member_of(name, size) == xxhash.xxh64_intdigest(name.encode("utf-8")) % size


def test_group_members_partition_the_category_each_stream_whole_and_in_order(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store, rounds=4)
        mine = _wanted(everything, "order")
        size = 3
        subs = [store.subscribe("workers", "order", group=(m, size)) for m in range(size)]
        got = {m: _drain(sub) for m, sub in enumerate(subs)}
        for m, sub in enumerate(subs):
            assert (sub.member, sub.size) == (m, size)
            assert got[m] == _wanted(everything, "order", member=m, size=size)
            assert all(member_of(name, size) == m for _g, name, _e in got[m])
            assert [g for g, _n, _e in got[m]] == sorted(g for g, _n, _e in got[m])
        union = sorted(row for rows in got.values() for row in rows)
        assert [g for g, _n, _e in union] == [g for g, _n, _e in mine]  # every message exactly once
        owner = {name: m for m, rows in got.items() for _g, name, _e in rows}
        for m, rows in got.items():
            assert {owner[name] for _g, name, _e in rows} == {m}  # a stream goes to one member only
            for name in {n for _g, n, _e in rows}:
                offsets = [env.message["i"] for _g, n, env in rows if n == name]
                assert offsets == list(range(store.head(name)))  # whole and in order
        for sub in subs:
            sub.close()


def test_the_current_message_is_the_members_own(open_store: OpenStore) -> None:
    """A try_next that finds none of the member's messages (but others' after its current one) leaves
    the current message as it was: get(), offset() and ack() all speak of the member's own last message."""
    with open_store() as store:
        everything = _fill(store, rounds=2)
        size = 3
        owed_by = {m: _wanted(everything, "order", member=m, size=size) for m in range(size)}
        # The members whose last message has other members' messages after it.
        members = [m for m, owed in owed_by.items() if owed[-1][0] < _wanted(everything, "order")[-1][0]]
        assert len(members) >= 2
        for m in members:
            owed = owed_by[m]
            with store.subscribe("cur", "order", group=(m, size)) as sub:
                assert _drain(sub) == owed
                last = owed[-1]
                assert not sub.try_next()
                assert (sub.offset(), sub.global_offset(), sub.stream_name(), sub.get()) == (last[0], *last), m
                assert sub.stream_offset() == last[2].message["i"]
                sub.ack()
                assert sub.position == last[0] + 1


def test_group_positions_are_kept_per_member(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store, rounds=4)
        size = 2
        owed = [_wanted(everything, "order", member=m, size=size) for m in range(size)]
        assert owed[0] and owed[1], "the fill must give both members something"
        with store.subscribe("g", "order", group=(1, size)) as one:
            assert _positions(store, "g") == (0, 0)  # every member created at once
            _take(one, 2)
            one.ack()
        assert _positions(store, "g") == (0, owed[1][1][0] + 1)
    with open_store() as store:
        with store.subscribe("g", "order", group=(0, size)) as zero:
            assert zero.position == 0
            assert _drain(zero) == owed[0]
            zero.ack(owed[0][0][0])
        with store.subscribe("g", "order", group=(1, size)) as one:
            assert one.position == owed[1][1][0] + 1
            assert _drain(one) == owed[1][2:]
        assert _positions(store, "g") == (owed[0][0][0] + 1, owed[1][1][0] + 1)
        (info,) = store.subscriptions()
        assert info == SubscriptionInfo("g", "order", None, size, (owed[0][0][0] + 1, owed[1][1][0] + 1))


def test_no_group_is_a_group_of_one(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store)
        with store.subscribe("solo", "user") as sub:
            assert (sub.member, sub.size) == (0, 1)
            _take(sub, 1)
            sub.ack()
        with store.subscribe("solo", "user", group=(0, 1)) as sub:
            assert sub.position == _wanted(everything, "user")[0][0] + 1
            assert _drain(sub) == _wanted(everything, "user")[1:]
        with pytest.raises(ValueError, match="size"):
            store.subscribe("solo", "user", group=(0, 2))
        with store.subscribe("pair", "user", group=(1, 2)) as sub:
            pass
        with pytest.raises(ValueError, match="size"):
            store.subscribe("pair", "user")  # None is (0, 1): a size of 1, not 2
        assert sub.closed


def test_a_large_group(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store, rounds=2)
        size = 1024
        members = sorted({member_of(name, size) for name in STREAMS})
        for m in members:
            with store.subscribe("wide", None, group=(m, size)) as sub:
                assert _drain(sub) == _wanted(everything, member=m, size=size)
        with store.subscribe("wide", None, group=(size - 1, size)) as last:
            assert _drain(last) == _wanted(everything, member=size - 1, size=size)
        (info,) = store.subscriptions()
        assert info.size == size and info.positions == (0,) * size


def test_a_later_subscribe_must_name_the_same_category_types_and_size(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store)
        store.subscribe("s", "order", ["T1", "T2"], group=(0, 2)).close()
        before = store.subscriptions()
        for category, types, group, what in [
            ("user", ["T1", "T2"], (0, 2), "category"),
            (None, ["T1", "T2"], (0, 2), "category"),
            ("order", ["T1"], (0, 2), "types"),
            ("order", None, (0, 2), "types"),
            ("order", ["T1", "T2", "T0"], (1, 2), "types"),
            ("order", ["T1", "T2"], (0, 3), "size"),
            ("order", ["T1", "T2"], None, "size"),
        ]:
            with pytest.raises(ValueError, match=what):
                store.subscribe("s", category, types, group=group)
        assert store.subscriptions() == before  # nothing changed
        # The same set of types in another collection, and another member: the same subscription.
        with store.subscribe("s", "order", ("T2", "T1", "T2"), group=(1, 2)) as sub:
            assert sub.types == frozenset({"T1", "T2"})
        # Deleting it is how it changes.
        assert store.delete_subscription("s") is True
        with store.subscribe("s", "user", group=(2, 3)) as sub:
            assert (sub.category, sub.types, sub.size, sub.position) == ("user", None, 3, 0)
        assert store.subscriptions() == [SubscriptionInfo("s", "user", None, 3, (0, 0, 0))]


# -- one consumer per member ---------------------------------------------------------------


def test_a_member_is_consumed_by_one_subscription_at_a_time(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store)
        first = store.subscribe("g", "order", group=(0, 2))
        with pytest.raises(SubscriptionBusyError):
            store.subscribe("g", "order", group=(0, 2))
        with store.subscribe("g", "order", group=(1, 2)):  # another member is free
            pass
        with store.subscribe("other", "order", group=(0, 2)):  # another subscription too
            pass
        with open_store() as second:  # another store object of the same store, in this process
            with pytest.raises(SubscriptionBusyError):
                second.subscribe("g", "order", group=(0, 2))
            first.close()  # closing frees the member, for every store object
            with second.subscribe("g", "order", group=(0, 2)) as taken:
                with pytest.raises(SubscriptionBusyError):
                    store.subscribe("g", "order", group=(0, 2))
                assert taken.try_next()
        again = store.subscribe("g", "order", group=(0, 2))
    assert again.closed  # closing the store closes its subscriptions ...
    with open_store() as store, store.subscribe("g", "order", group=(0, 2)):  # ... and frees their members
        pass


_CHILD = r"""
import sys
from tests.contract.backends import BACKENDS

store = BACKENDS[sys.argv[1]](sys.argv[2])
sub = store.subscribe("shared", "order", group=(1, 2))
print("open", flush=True)
sys.stdin.readline()
sub.close()
print("closed", flush=True)
sys.stdin.readline()
store.close()
"""


def test_a_member_open_in_another_process_is_busy(backend: OpenAt, open_store: OpenStore, store_dir: Path) -> None:
    name = next(n for n, b in BACKENDS.items() if b is backend)
    with open_store() as store:
        _fill(store, rounds=1)
        child = spawn_python(_CHILD, name, str(store_dir))
        try:
            assert child.stdout is not None and child.stdin is not None
            line = child.stdout.readline()
            assert line == "open\n", (line, child.stderr.read() if child.stderr else "")
            with pytest.raises(SubscriptionBusyError):
                store.subscribe("shared", "order", group=(1, 2))
            with pytest.raises(SubscriptionBusyError):
                store.delete_subscription("shared")
            with store.subscribe("shared", "order", group=(0, 2)):
                pass
            child.stdin.write("close\n")
            child.stdin.flush()
            assert child.stdout.readline() == "closed\n"
            with store.subscribe("shared", "order", group=(1, 2)) as sub:
                assert sub.position == 0
            child.stdin.write("exit\n")
            child.stdin.flush()
            assert child.wait(WAIT) == 0, child.stderr.read() if child.stderr else ""
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            for pipe in (child.stdin, child.stdout, child.stderr):
                if pipe is not None:
                    pipe.close()


# -- listing and deleting -----------------------------------------------------------------


def test_subscriptions_are_listed_by_name_and_deleted(open_store: OpenStore) -> None:
    with open_store() as store:
        assert store.subscriptions() == []
        everything = _fill(store)
        with store.subscribe("zeta", None, ["T0"]) as sub:
            _take(sub, 2)
            sub.ack()
            zeta = sub.position
        store.subscribe("alpha", "order", group=(2, 3)).close()
        store.subscribe("mid", "user").close()
        want = [
            SubscriptionInfo("alpha", "order", None, 3, (0, 0, 0)),
            SubscriptionInfo("mid", "user", None, 1, (0,)),
            SubscriptionInfo("zeta", None, frozenset({"T0"}), 1, (zeta,)),
        ]
        listed = store.subscriptions()
        assert listed == want
        assert all(isinstance(info, SubscriptionInfo) for info in listed)
        assert zeta == _wanted(everything, types=["T0"])[1][0] + 1
    with open_store() as store:
        assert store.subscriptions() == want  # kept across a reopen
        assert store.delete_subscription("mid") is True
        assert store.delete_subscription("mid") is False
        assert store.delete_subscription("never") is False
        assert [info.name for info in store.subscriptions()] == ["alpha", "zeta"]
    with open_store() as store:
        assert [info.name for info in store.subscriptions()] == ["alpha", "zeta"]  # the deletion is kept
        assert store.delete_subscription("zeta") is True
        with store.subscribe("zeta", None, ["T0"]) as sub:  # created anew: from the start again
            assert sub.position == 0
            assert _take(sub, 1) == _wanted(everything, types=["T0"])[:1]


def test_delete_refuses_while_a_member_is_open(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store)
        with store.subscribe("g", "order", group=(0, 2)) as zero:
            _take(zero, 1)
            zero.ack()
        before = store.subscriptions()
        one = store.subscribe("g", "order", group=(1, 2))
        with pytest.raises(SubscriptionBusyError):
            store.delete_subscription("g")
        with open_store() as second, pytest.raises(SubscriptionBusyError):
            second.delete_subscription("g")
        assert store.subscriptions() == before  # nothing was deleted
        assert one.try_next()  # the open member works on
        one.close()
        assert store.delete_subscription("g") is True
        assert store.subscriptions() == []


def test_a_read_only_store_lists_but_does_not_subscribe(open_store: OpenStore) -> None:
    open_store().close()
    with open_store(readonly=True) as ro:
        assert ro.subscriptions() == []  # no subscription yet (nor a file of them)
        with pytest.raises(ReadOnlyError):
            ro.subscribe("s")
    with open_store() as store:
        everything = _fill(store)
        with store.subscribe("s", "order", group=(0, 2)) as sub:
            _take(sub, 1)
            sub.ack()
            want = store.subscriptions()
        with open_store(readonly=True) as ro:
            assert ro.subscriptions() == want
            assert want[0].positions == (_wanted(everything, "order", member=0, size=2)[0][0] + 1, 0)
            with pytest.raises(ReadOnlyError):
                ro.subscribe("s", "order", group=(0, 2))
            with pytest.raises(ReadOnlyError):
                ro.subscribe("new")
            with pytest.raises(ReadOnlyError):
                ro.delete_subscription("s")
            assert ro.subscriptions() == want
            # A read-only store sees acks made after it opened.
            with store.subscribe("s", "order", group=(1, 2)) as sub:
                _take(sub, 1)
                sub.ack()
            assert ro.subscriptions() == store.subscriptions() != want


def test_a_closed_store_refuses_subscription_calls(open_store: OpenStore) -> None:
    store = open_store()
    store.close()
    for call in (lambda: store.subscribe("s"), store.subscriptions, lambda: store.delete_subscription("s")):
        with pytest.raises(logstore.StoreClosedError):
            call()


# -- waiting ------------------------------------------------------------------------------


def test_next_waits_for_a_commit_to_the_subscription(open_store: OpenStore) -> None:
    with open_store() as store:
        size = 2
        theirs, mine = _streams_of(range(size), size, "order", 1)
        sub = store.subscribe("w", "order", ["T1"], group=(1, size))
        got: list[tuple[int, str]] = []
        failed: list[BaseException] = []
        started = threading.Event()

        def wait() -> None:
            started.set()
            try:
                sub.next(timeout=WAIT)
                got.append((sub.offset(), sub.stream_name()))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                failed.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        assert started.wait(WAIT)
        _commit(store, "user-1", "T1")  # another category
        _commit(store, theirs, "T1")  # another member's stream
        _commit(store, mine, "T0")  # another type
        want = _commit(store, mine, "T1")
        t.join(WAIT)
        assert not t.is_alive() and not failed, failed
        assert got == [(want[0], mine)]
        with pytest.raises(TimeoutError):
            sub.next(timeout=0.05)
        sub.ack()
        assert sub.position == want[0] + 1
        sub.close()


def test_a_waiting_next_ends_when_the_subscription_is_closed(open_store: OpenStore) -> None:
    with open_store() as store:
        sub = store.subscribe("w")
        ended: list[BaseException] = []
        started = threading.Event()

        def wait() -> None:
            started.set()
            try:
                sub.next()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                ended.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        assert started.wait(WAIT)
        sub.close()
        t.join(WAIT)
        assert not t.is_alive()
        assert len(ended) == 1 and isinstance(ended[0], StreamClosedError), ended
        with store.subscribe("w"):  # closed: the member is free
            pass


def test_anext_and_async_for(open_store: OpenStore) -> None:
    with open_store() as store:

        async def main() -> tuple[list[int], list[int]]:
            sub = store.subscribe("a", "order")
            first = asyncio.ensure_future(sub.anext(timeout=WAIT))
            await asyncio.sleep(0)
            await asyncio.to_thread(_commit, store, "user-1", "T0")
            await asyncio.to_thread(_commit, store, "order-1", "T1")
            env = await first
            assert env.type == "T1" and sub.stream_name() == "order-1"
            got = [sub.offset()]
            sub.ack()
            later = await asyncio.to_thread(_commit, store, "order-2", "T0", 3)
            async for _env in sub:
                got.append(sub.offset())
                if len(got) == 4:
                    sub.ack()
                    sub.close()  # ends the loop
            with pytest.raises(TimeoutError):
                await store.subscribe("b", "nothing").anext(timeout=0.05)
            return got, list(later)

        got, later = asyncio.run(main())
        assert got == [1, *later]
        assert _positions(store, "a") == (later[-1] + 1,)


# -- threads ------------------------------------------------------------------------------


def test_members_acknowledge_from_threads_of_their_own(open_store: OpenStore) -> None:
    """Each member of a group consumed and acknowledged message by message in a thread of its own: every
    position ends after the member's last message, none written over by another's."""
    with open_store(durability="none") as store:  # the acks' writes race, not their syncs
        everything = _fill(store)
        size = 3
        failed: list[BaseException] = []
        done: list[tuple[int, list[Row]]] = []
        subs = [store.subscribe("threads", None, group=(m, size)) for m in range(size)]

        def consume(m: int) -> None:
            try:
                got = []
                for env in subs[m]:
                    got.append((subs[m].offset(), subs[m].stream_name(), env))
                    subs[m].ack()
                done.append((m, got))
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                failed.append(exc)

        threads = [threading.Thread(target=consume, args=(m,)) for m in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads) and not failed, failed
        for m, got in done:
            assert got == _wanted(everything, member=m, size=size)
            assert subs[m].position == got[-1][0] + 1
        assert _positions(store, "threads") == tuple(subs[m].position for m in range(size))
        for sub in subs:
            sub.close()


def test_closing_from_another_thread_while_acknowledging(open_store: OpenStore) -> None:
    """A consumer acknowledging each message while another thread closes its subscription: its next call
    raises ``StreamClosedError`` and nothing else, and the saved position is that of an ack it made."""
    with open_store() as store:
        everything = _fill(store, rounds=6)
        sub = store.subscribe("race")
        acked: list[int] = []
        ended: list[BaseException] = []
        some = threading.Event()

        def consume() -> None:
            try:
                while True:
                    sub.next(timeout=WAIT)
                    sub.ack()
                    acked.append(sub.position)
                    if len(acked) == 5:
                        some.set()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                ended.append(exc)
                some.set()

        t = threading.Thread(target=consume)
        t.start()
        assert some.wait(WAIT)
        sub.close()
        t.join(WAIT)
        assert not t.is_alive()
        assert len(ended) == 1 and isinstance(ended[0], StreamClosedError), ended
        (saved,) = _positions(store, "race") or (None,)
        # The last ack that returned, or the one under way when the close came (it may have been saved).
        in_flight = [g + 1 for g, _n, _e in everything if g + 1 > acked[-1]][:1]
        assert saved in {acked[-1], *in_flight}, (saved, acked[-3:])
        with store.subscribe("race") as again:
            assert again.position == saved


# -- a closed subscription ----------------------------------------------------------------


def test_a_closed_subscription_refuses_everything_but_close(open_store: OpenStore) -> None:
    with open_store() as store:
        _fill(store, rounds=1)
        sub = store.subscribe("c")
        _take(sub, 2)
        sub.close()
        assert sub.closed is True
        sub.close()  # closing twice is harmless
        for call in (sub.try_next, sub.next, sub.get, sub.offset, sub.ack, lambda: sub.ack(0)):
            with pytest.raises(StreamClosedError):
                call()
        assert _positions(store, "c") == (0,)  # the refused acks saved nothing
        with store.subscribe("c") as again:
            assert again.try_next() and again.offset() == 0
        # Closing the store closes its subscriptions.
        open_sub = store.subscribe("d")
    assert open_sub.closed is True
    for call in (open_sub.try_next, open_sub.ack, lambda: open_sub.ack(0)):  # nothing delivered: closed wins
        with pytest.raises(StreamClosedError):
            call()


# -- bad arguments ------------------------------------------------------------------------


def _match(message: str) -> str | None:
    return message.replace("(", r"\(").replace(")", r"\)") or None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": ""}, ValueError, ""),
        ({"name": 1}, TypeError, ""),
        ({"name": None}, TypeError, ""),
        ({"name": b"s"}, TypeError, ""),
        ({"name": "a\x00b"}, ValueError, "NUL"),
        ({"name": "x" * 256}, ValueError, "255"),
        ({"name": "é" * 128}, ValueError, "255"),  # 256 UTF-8 bytes
        ({"name": "\ud800"}, ValueError, ""),  # not encodable as UTF-8
        ({"category": 1}, TypeError, "category must be a str, got int"),
        ({"category": "order-1"}, ValueError, "contains '-'"),
        ({"category": "a\x00"}, ValueError, "NUL"),
        ({"types": "T1"}, TypeError, "wrap it in a list"),
        ({"types": []}, ValueError, "at least one type"),
        ({"types": [1]}, TypeError, "type names (str)"),
        ({"types": 5}, TypeError, "collection of type names"),
        ({"group": (0, 0)}, ValueError, "size"),
        ({"group": (0, 1025)}, ValueError, "size"),
        ({"group": (0, -1)}, ValueError, "size"),
        ({"group": (2, 2)}, ValueError, "member"),
        ({"group": (-1, 2)}, ValueError, "member"),
        ({"group": (0, 1.0)}, TypeError, ""),
        ({"group": ("0", 2)}, TypeError, ""),
        ({"group": 2}, TypeError, ""),
    ],
)
def test_bad_arguments_are_refused_and_create_nothing(
    open_store: OpenStore, kwargs: dict[str, Any], error: type, message: str
) -> None:
    call = {"name": "s", "category": None, "types": None, "group": None, **kwargs}
    with open_store() as store:
        with pytest.raises(error, match=_match(message)):
            store.subscribe(call["name"], call["category"], call["types"], group=call["group"])
        assert store.subscriptions() == []
        with store.subscribe("s"):  # and the store works on
            pass


@pytest.mark.parametrize("name", ["x" * 255, "é" * 127 + "a", "a b/c-d:é😀", "s" * 251 + "😀"])
def test_names_up_to_255_bytes(open_store: OpenStore, name: str) -> None:
    with open_store() as store:
        assert len(name.encode("utf-8")) <= 255
        _commit(store, "order-1")
        with store.subscribe(name) as sub:
            _take(sub, 1)
            sub.ack()
    with open_store() as store:
        assert store.subscriptions() == [SubscriptionInfo(name, None, None, 1, (1,))]


# -- pending ------------------------------------------------------------------------------


def test_pending_counts_what_a_member_would_be_given(open_store: OpenStore) -> None:
    with open_store() as store:
        everything = _fill(store, rounds=4)
        with store.subscribe("p", "order", ["T0", "T1"], group=(1, 2)) as sub:
            _take(sub, 2)
            sub.ack()
        (info,) = store.subscriptions()
        for member in (0, 1):
            owed = _wanted(everything, "order", ["T0", "T1"], member, 2, start=info.positions[member])
            assert pending(store, info, member) == len(owed), member
            assert pending(store, info, member, limit=3) == min(3, len(owed)), member
            assert pending(store, info, member, limit=0) == 0


# -- a property: members partition the category ------------------------------------------

_examples = iter(range(10**9))


@settings(
    max_examples=scale(20, 300),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    commits=st.lists(
        st.lists(st.tuples(st.integers(0, 2), st.integers(0, 7), st.sampled_from(TYPES)), min_size=1, max_size=4),
        min_size=1,
        max_size=12,
    ),
    size=st.integers(1, 6),
    types=st.none() | st.sets(st.sampled_from(TYPES), min_size=1),
    acks=st.lists(st.integers(0, 40), max_size=6),
)
def test_property_members_share_the_category_exactly(
    open_store: OpenStore,
    commits: list[list[tuple[int, int, str]]],
    size: int,
    types: set[str] | None,
    acks: list[int],
) -> None:
    """Random commits over three categories: the members of a group get every message of their category
    (and types) exactly once, in global order, each stream whole and in order at one member; after each
    member acknowledges part of it, the members resumed get exactly the rest."""
    n = next(_examples)
    category = f"p{n}c0"  # a category of this example alone: the store is shared by the examples
    with open_store() as store:
        for appends in commits:
            with store.transaction() as tx:
                heads: dict[str, int] = {}
                for c, s, type_ in appends:
                    stream = f"p{n}c{c}-{s}"
                    head = heads.get(stream, store.head(stream))
                    tx.append(stream, head, [_env(stream, head, type_)])
                    heads[stream] = head + 1
        rows = _log(store)
        got: list[list[Row]] = []
        for m in range(size):
            with store.subscribe(f"g{n}", category, types, group=(m, size)) as sub:
                got.append(_drain(sub))
                if got[m] and acks:
                    sub.ack(got[m][min(acks[m % len(acks)], len(got[m]) - 1)][0])
        mine = _wanted(rows, category, types)
        assert sorted(row for rows_ in got for row in rows_) == mine
        for m, delivered in enumerate(got):
            assert delivered == _wanted(rows, category, types, m, size)
            for stream in {name for _g, name, _e in delivered}:
                assert [env.message["i"] for _g, name, env in delivered if name == stream] == [
                    env.message["i"] for _g, name, env in mine if name == stream
                ]
        (info,) = [i for i in store.subscriptions() if i.name == f"g{n}"]
        for m in range(size):
            with store.subscribe(f"g{n}", category, types, group=(m, size)) as sub:
                assert sub.position == info.positions[m]
                assert _drain(sub) == [row for row in got[m] if row[0] >= info.positions[m]]


def test_a_forked_child_cannot_acknowledge_for_its_parent(open_store: OpenStore) -> None:
    """A subscription carried into a child made by ``fork()`` refuses to acknowledge with
    ``StoreForkedError`` on every backend; the parent's subscription goes on as before."""
    with open_store() as store:
        _commit(store, "order-1")
        _commit(store, "order-1")
        with store.subscribe("forked", "order") as sub:
            assert sub.try_next()
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: report what ack() raised, then leave without any cleanup
                try:
                    sub.ack()
                    what = "no error"
                except Exception as exc:  # noqa: BLE001 - the child reports whatever it was
                    what = type(exc).__name__
                os.write(write, what.encode())
                os._exit(0)
            os.close(write)
            _, status = os.waitpid(pid, 0)
            with os.fdopen(read, "rb") as answer:
                assert answer.read().decode() == "StoreForkedError" and status == 0
            sub.ack()
            assert sub.position == sub.offset() + 1
