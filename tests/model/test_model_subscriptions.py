"""Model-based test of durable subscriptions and consumer groups, on every backend (DESIGN.md section 9).

The model is the global log (``(stream, stream offset, envelope)`` per global offset) and, per
subscription, its category, types, group size and one saved position per member; per open member, the
global offset of the last message it delivered in this session. Rules commit (and retry a commit, which
must change nothing), subscribe a member (a busy member and a mismatched category, types or size are
refused), consume some messages, acknowledge (``ack()`` and ``ack(offset)``, in range or not), close a
member without acknowledging what it handled (a consumer that crashed between handling and
acknowledging: the next subscribe must deliver it again), reopen the store, and delete a subscription.
After every step ``subscriptions()`` must equal the model's and every open member's ``position`` its
saved position. The embedded store's machine adds simulated crashes of the whole process (tests/crash.py):
with ``durability="fsync"`` every acknowledgement that returned survives them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import xxhash
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule, run_state_machine_as_test

from logstore import Envelope, SubscriptionBusyError
from logstore.checks import category_of
from logstore.results import SubscriptionInfo
from tests.contract.backends import BACKENDS, OpenAt
from tests.contract.model import teardown_backend
from tests.crash import simulate_crash
from tests.helpers import SMALL_SEGMENT
from tests.statemachine import StoreMachine
from tests.strategies import Plan
from tests.stress import scale

STREAMS = ["a-1", "a-2", "a-3", "a-4", "b-1", "b-2", "c", "-x"]
CATEGORIES: list[str | None] = [None, None, "a", "a", "b", "c", "", "z"]
TYPES = ["T0", "T1", "T2"]
NAMES = ["s0", "s1"]


@dataclass
class Sub:
    """A subscription of the model: what it selects and each member's saved position."""

    category: str | None
    types: frozenset[str] | None
    size: int
    positions: list[int] = field(default_factory=list)


@dataclass
class Member:
    """An open member: the store's subscription object and the last global offset it delivered."""

    reader: Any
    name: str
    member: int
    current: int | None = None


def _member_of(stream: str, size: int) -> int:
    return xxhash.xxh64_intdigest(stream.encode("utf-8")) % size


_batches = st.lists(
    st.builds(lambda t, n: Envelope.new(t, {"n": n}), st.sampled_from(TYPES), st.integers(0, 2**31)),
    min_size=1,
    max_size=3,
)


class SubscriptionModel(StoreMachine):
    """The store of ``open_at`` against the model of its subscriptions."""

    open_at: ClassVar[OpenAt] = BACKENDS["logstore"]
    open_options: ClassVar[dict[str, Any]] = {"durability": "none"}  # a clean close keeps every ack
    batches = _batches

    def __init__(self) -> None:
        super().__init__("logstore-subs-model-")
        self.log: list[tuple[str, int, Envelope]] = []
        self.heads: dict[str, int] = {}
        self.last: tuple[list[tuple[str, int, Envelope]], range] | None = None
        self.subs: dict[str, Sub] = {}
        self.members: dict[tuple[str, int], Member] = {}
        self.store = self._open()

    def _open(self) -> Any:
        opener = type(self).open_at
        return opener(self.path, segment_size=SMALL_SEGMENT, **self.open_options)

    # -- the log --------------------------------------------------------------------------

    @initialize(data=st.data())
    def some_messages(self, data: st.DataObject) -> None:
        """A log to subscribe to from the first step on."""
        for _ in range(data.draw(st.integers(1, 4), label="first commits")):
            self._commit(data)

    def _head(self, name: str) -> int:
        return self.heads.get(name, 0)

    def _known_names(self) -> Collection[str]:
        return STREAMS

    def _draw_plan(self, data: st.DataObject, label: str) -> Plan:
        streams = data.draw(st.lists(st.sampled_from(STREAMS), min_size=1, max_size=3, unique=True), label=label)
        return [(name, data.draw(_batches, label=f"{label}: {name}")) for name in streams]

    def _record(self, messages: list[tuple[str, int, Envelope]], result: range) -> None:
        assert result == range(len(self.log), len(self.log) + len(messages)), (result, len(self.log))
        for name, offset, _env in messages:
            assert offset == self.heads.get(name, 0)
            self.heads[name] = offset + 1
        self.log += messages
        self.last = (messages, result)

    def _commit(self, data: st.DataObject) -> None:
        if self.last is not None and data.draw(st.integers(0, 3), label="retry the last commit first") == 0:
            self._retry(*self.last)
        self._record(*self._commit_plan(data, self._draw_plan(data, "plan")))

    def _retry(self, messages: list[tuple[str, int, Envelope]], result: range) -> None:
        """A transaction appended again (a client unsure it landed): its range again, nothing new."""
        tx, committer = self.s.begin_tx()
        for name, offset, env in messages:
            self.s.append_messages(tx, name, offset, [env])
        assert committer.commit() == result
        assert self.s.global_head == len(self.log)

    # -- what a member is owed -------------------------------------------------------------

    def _selects(self, sub: Sub, member: int, goff: int) -> bool:
        name, _offset, env = self.log[goff]
        return (
            (sub.category is None or category_of(name) == sub.category)
            and (sub.types is None or env.type in sub.types)
            and _member_of(name, sub.size) == member
        )

    def _next_owed(self, m: Member) -> int | None:
        """The global offset of the next message ``m`` must deliver, None when there is none now."""
        sub = self.subs[m.name]
        start = sub.positions[m.member] if m.current is None else m.current + 1
        return next((g for g in range(start, len(self.log)) if self._selects(sub, m.member, g)), None)

    def _pick_open(self, data: st.DataObject) -> Member | None:
        if not self.members:
            return None
        key = data.draw(st.sampled_from(sorted(self.members)), label="open member")
        return self.members[key]

    # -- subscribing ----------------------------------------------------------------------

    def _draw_spec(self, data: st.DataObject) -> tuple[str | None, frozenset[str] | None, int]:
        category = data.draw(st.sampled_from(CATEGORIES), label="category")
        types = data.draw(st.none() | st.none() | st.frozensets(st.sampled_from(TYPES), min_size=1), label="types")
        size = data.draw(st.sampled_from([1, 1, 2, 3]), label="size")
        return category, types, size

    @rule(data=st.data())
    def subscribe(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(NAMES), label="subscription")
        sub = self.subs.get(name)
        if sub is None:
            category, types, size = self._draw_spec(data)
        else:
            category, types, size = sub.category, sub.types, sub.size
            # A mismatch is refused (asked only while no member is open: then busy and mismatched are both true).
            idle = not any(key[0] == name for key in self.members)
            if idle and data.draw(st.integers(0, 4), label="mismatch") == 0:
                other = self._draw_spec(data)
                if other != (category, types, size):
                    before = self.s.subscriptions()
                    with pytest.raises(ValueError):
                        self.s.subscribe(
                            name, other[0], None if other[1] is None else list(other[1]), group=(0, other[2])
                        )
                    assert self.s.subscriptions() == before
                    event("subscribe: mismatch refused")
                    return
        free = [m for m in range(size) if (name, m) not in self.members]
        if free and data.draw(st.integers(0, 3), label="try a busy member") != 0:
            member = data.draw(st.sampled_from(free), label="free member")
        else:
            member = data.draw(st.integers(0, size - 1), label="member")
        group = None if size == 1 and data.draw(st.booleans(), label="no group") else (member, size)
        listed = None if types is None else sorted(types)
        if (name, member) in self.members:
            with pytest.raises(SubscriptionBusyError):
                self.s.subscribe(name, category, listed, group=group)
            event("subscribe: busy")
            return
        reader = self.s.subscribe(name, category, listed, group=group)
        if sub is None:
            self.subs[name] = Sub(category, types, size, [0] * size)
        assert (reader.name, reader.category, reader.types, reader.member, reader.size) == (
            name,
            category,
            types,
            member,
            size,
        )
        self.members[(name, member)] = Member(reader, name, member)
        event(f"subscribe: {'resumed' if reader.position else 'from 0'}")

    # -- consuming and acknowledging ------------------------------------------------------

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        """Some messages, one by one: each the next one the member is owed, then none when it is owed none."""
        m = self._pick_open(data)
        if m is None:
            return
        for _ in range(data.draw(st.integers(1, 6), label="how many")):
            want = self._next_owed(m)
            if want is None:
                assert not m.reader.try_next()
                break
            assert m.reader.try_next()
            name, offset, env = self.log[want]
            assert (m.reader.offset(), m.reader.stream_name(), m.reader.stream_offset()) == (want, name, offset)
            assert m.reader.get() == env
            m.current = want
            event("consume: delivered")
        then = data.draw(st.sampled_from(["handle only", "ack", "ack offset"]), label="then")
        if then == "ack":
            self._ack(m)
        elif then == "ack offset":
            self._ack_offset(m, data)

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        m = self._pick_open(data)
        if m is not None:
            self._ack(m)

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def ack_offset(self, data: st.DataObject) -> None:
        m = self._pick_open(data)
        if m is not None:
            self._ack_offset(m, data)

    def _ack(self, m: Member) -> None:
        """``ack()``: the current message; ``ValueError`` when nothing was delivered yet."""
        positions = self.subs[m.name].positions
        if m.current is None:
            with pytest.raises(ValueError):
                m.reader.ack()
            return
        m.reader.ack()
        event(f"ack: {'moved' if m.current + 1 > positions[m.member] else 'stayed'}")
        positions[m.member] = max(positions[m.member], m.current + 1)

    def _ack_offset(self, m: Member, data: st.DataObject) -> None:
        """``ack(offset)``: up to a delivered offset; ``ValueError`` past the current message."""
        positions = self.subs[m.name].positions
        top = -1 if m.current is None else m.current
        offset = data.draw(st.integers(0, top + 3), label="ack offset")
        if offset > top:
            with pytest.raises(ValueError):
                m.reader.ack(offset)
            return
        m.reader.ack(offset)
        event(f"ack(offset): {'moved' if offset + 1 > positions[m.member] else 'stayed'}")
        positions[m.member] = max(positions[m.member], offset + 1)

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def close_without_ack(self, data: st.DataObject) -> None:
        """The consumer stops (or dies) after handling messages it did not acknowledge: they are owed again."""
        m = self._pick_open(data)
        if m is None:
            return
        m.reader.close()
        assert m.reader.closed
        del self.members[(m.name, m.member)]
        if m.current is not None and m.current >= self.subs[m.name].positions[m.member]:
            event("close: handled messages left unacknowledged")

    @precondition(lambda self: bool(self.members))
    @rule(data=st.data())
    def restart_consumer(self, data: st.DataObject) -> None:
        """A consumer stops (or crashes) between handling and acknowledging, maybe with the whole store,
        and starts again: it resumes at its saved position, so it is given what it did not acknowledge."""
        m = self._pick_open(data)
        if m is None:
            return
        sub = self.subs[m.name]
        unacked = m.current is not None and m.current >= sub.positions[m.member]
        m.reader.close()
        del self.members[(m.name, m.member)]
        if data.draw(st.integers(0, 2), label="the store restarts too") == 0:
            self._reopen()
        types = None if sub.types is None else list(sub.types)
        reader = self.s.subscribe(m.name, sub.category, types, group=(m.member, sub.size))
        again = self.members[(m.name, m.member)] = Member(reader, m.name, m.member)
        assert reader.position == sub.positions[m.member]
        want = self._next_owed(again)
        if want is None:
            assert not reader.try_next()
            return
        assert reader.try_next()
        assert (reader.offset(), reader.get()) == (want, self.log[want][2])
        again.current = want
        if unacked:
            assert want <= m.current  # type: ignore[operator]
            event("restart: an unacknowledged message delivered again")

    # -- deleting ------------------------------------------------------------------------

    @precondition(lambda self: bool(self.subs))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(NAMES), label="subscription")
        if any(key[0] == name for key in self.members):
            before = self.s.subscriptions()
            with pytest.raises(SubscriptionBusyError):
                self.s.delete_subscription(name)
            assert self.s.subscriptions() == before
            return
        assert self.s.delete_subscription(name) is (name in self.subs)
        self.subs.pop(name, None)

    def _reopen(self) -> None:
        """The consumers stop, then the store closes and opens again (that closing a store closes its
        subscriptions is the contract tier's test)."""
        event("reopen")
        for m in self.members.values():
            m.reader.close()
        self.members.clear()
        self.s.close()
        self.store = None
        self.store = self._open()

    # -- invariants, teardown -------------------------------------------------------------

    @invariant()
    def positions_match(self) -> None:
        if self.store is None:
            return
        want = [
            SubscriptionInfo(name, sub.category, sub.types, sub.size, tuple(sub.positions))
            for name, sub in sorted(self.subs.items())
        ]
        assert self.s.subscriptions() == want
        for (name, member), m in self.members.items():
            assert m.reader.position == self.subs[name].positions[member], (name, member)

    def teardown(self) -> None:
        for m in self.members.values():
            m.reader.close()
        self.members.clear()
        teardown_backend(self, super().teardown)


class CrashingSubscriptionModel(SubscriptionModel):
    """The embedded store with ``durability="fsync"``, and crashes: every acknowledgement survives them."""

    open_options: ClassVar[dict[str, Any]] = {"durability": "fsync"}

    @precondition(lambda self: any(p > 0 for sub in self.subs.values() for p in sub.positions))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """The process dies (some acknowledged positions saved): every position is there after recovery."""
        simulate_crash(self.s, data)
        self.store = None
        self.members.clear()  # the consumers died with the process
        self.store = self._open()
        assert self.s.global_head == len(self.log)  # fsync: every commit that returned is there


EXAMPLES = scale(25, 400)
"""Examples of the model on each backend; the crashing machine (every ack synced) runs fewer."""
STEPS = 40


def _run(machine: type[SubscriptionModel], backend: str, examples: int = EXAMPLES) -> None:
    on_backend = type(f"{machine.__name__}_{backend}", (machine,), {"open_at": BACKENDS[backend]})
    assert settings.default is not None
    count = min(settings.default.max_examples, examples)
    run_state_machine_as_test(on_backend, settings=settings(stateful_step_count=STEPS, max_examples=count))


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_subscriptions_follow_the_model(backend: str) -> None:
    _run(SubscriptionModel, backend)


def test_subscriptions_survive_crashes() -> None:
    _run(CrashingSubscriptionModel, "logstore", scale(12, 200))
