"""The contract's model: any backend's store against a plain Python model of its streams and global log.

The model is a dict ``stream -> [envelopes]`` plus the global log, a list of ``(stream, offset,
envelope)`` in commit order, plus the global end offset of every committed transaction. Rules
commit, conflict (at append and at commit), roll back, read and reopen; after every step the
store's heads must equal the model's.

:class:`ApiModel` opens its store with ``open_at`` (a backend of :mod:`tests.contract.backends`):
the contract tier runs it on every backend (tests/contract/test_model.py); the embedded store's
model (tests/model/test_model.py) adds simulated crashes and recovery reports to it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

import logstore
from logstore import DuplicateMessageError, Envelope
from logstore.checks import category_of
from tests.contract.backends import BACKENDS, OpenAt
from tests.helpers import SMALL_SEGMENT
from tests.statemachine import StoreMachine
from tests.strategies import Plan, envelope_batches, transaction_plans
from tests.stress import scale

CHECKPOINT_BYTES = 16 * 1024


class ApiModel(StoreMachine):
    """The store of ``open_at`` against the model; subclasses choose the backend and the options."""

    open_at: ClassVar[OpenAt] = BACKENDS["logstore"]
    open_options: ClassVar[dict[str, Any]] = {"durability": "fsync"}
    batches = envelope_batches

    def __init__(self) -> None:
        super().__init__("logstore-model-")
        self.streams: dict[str, list[Envelope]] = {}  # in order of first commit
        self.log: list[tuple[str, int, Envelope]] = []
        self.tx_ends: list[int] = []  # global end offset of each committed transaction
        # A category tail kept open across steps: (reader, category, types, the global offset it read up to).
        self.tail: tuple[Any, str, list[str] | None, int] | None = None
        self.store = self._open()
        self._check_opened(first=True)

    # -- helpers -------------------------------------------------------------------------

    def _open(self) -> Any:
        opener = type(self).open_at  # a plain function kept on the class: not bound to self
        return opener(self.path, segment_size=SMALL_SEGMENT, checkpoint_bytes=CHECKPOINT_BYTES, **self.open_options)

    def _check_opened(self, first: bool) -> None:
        """What a backend promises of a store just opened (``first``: created) or reopened after a clean close."""

    def _head(self, name: str) -> int:
        return len(self.streams.get(name, ()))

    def _known_names(self) -> Collection[str]:
        return self.streams

    def _draw_plan(self, data: st.DataObject, label: str) -> Plan:
        return data.draw(transaction_plans(list(self.streams)), label=label)

    def _record(self, messages: list[tuple[str, int, Envelope]], result: range) -> None:
        """Check a successful commit's range and add its messages to the model."""
        first = len(self.log)
        assert result == range(first, first + len(messages)), (result, first, len(messages))
        for name, offset, env in messages:
            envs = self.streams.setdefault(name, [])
            assert offset == len(envs)
            envs.append(env)
        self.log += messages
        self.tx_ends.append(len(self.log))

    def _check_heads(self, names: Iterable[str] = ()) -> None:
        """The store's heads equal the model's, for its streams and for ``names`` (0 if the model lacks them)."""
        assert self.s.global_head == len(self.log)
        for name in {*self.streams, *names}:
            assert self.s.head(name) == self._head(name), name
        assert self.s.stream_names() == list(self.streams)

    def _rows(self) -> list[tuple[int, str, Envelope]]:
        """Every readable message of the model: (global offset, stream, envelope), in global order."""
        return [(g, name, env) for g, (name, _offset, env) in enumerate(self.log)]

    def _end(self) -> int:
        """The model's next global offset."""
        return len(self.log)

    def _draw_category(self, data: st.DataObject) -> tuple[str, list[str] | None]:
        """A category of the model's streams (or of none), and ``types``: None or some of the types it holds."""
        categories = sorted({category_of(name) for name in self.streams})
        if categories and data.draw(st.booleans(), label="known category"):
            category = data.draw(st.sampled_from(categories), label="category")
        else:
            category = category_of(self._unused_name(data))
        known = sorted({env.type for _n, _o, env in self.log})
        types = None
        if known and data.draw(st.booleans(), label="filter types"):
            types = data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=3, unique=True), label="types")
        return category, types

    def _category_rows(self, category: str, types: list[str] | None, start: int) -> list[tuple[int, str, Envelope]]:
        return [
            (g, name, env)
            for g, name, env in self._rows()
            if g >= start and category_of(name) == category and (types is None or env.type in types)
        ]

    @rule(data=st.data())
    def read_category(self, data: st.DataObject) -> None:
        """A category reader from a global offset yields the model's messages of the category (and types)."""
        category, types = self._draw_category(data)
        start = data.draw(st.integers(0, self._end() + 2), label="from global offset")
        with self.s.open_category(self.s, category, start, types=types) as reader:
            got = [(reader.offset(), reader.stream_name(), env) for env in reader]
            assert not reader.try_next()
        assert got == self._category_rows(category, types, start)

    @rule(data=st.data())
    def tail_category(self, data: st.DataObject) -> None:
        """A category tail, opened at the end and kept across steps, yields each new message of the category."""
        if self.tail is not None and self.tail[0].closed:  # the store was closed (a reopen, a crash)
            self.tail = None
        if self.tail is None:
            category, types = self._draw_category(data)
            end = self._end()
            self.tail = (self.s.category(category, end, types=types), category, types, end)
            return
        reader, category, types, start = self.tail
        got = [(reader.offset(), reader.stream_name(), env) for env in reader]
        assert got == self._category_rows(category, types, start)
        self.tail = (reader, category, types, self._end())

    def _check_global(self, start: int) -> None:
        """Reading the global stream from ``start`` gives the model's log from there, then nothing."""
        with self.s.open_global(self.s, start) as stream:
            got = []
            while stream.try_next():
                got.append((stream.offset(), stream.get()))
            assert not stream.try_next()
        assert got == [(start + i, env) for i, (_, _, env) in enumerate(self.log[start:])]

    # -- writing -------------------------------------------------------------------------

    def _commit(self, data: st.DataObject) -> None:
        self._record(*self._commit_plan(data, self._draw_plan(data, "plan")))

    @rule(data=st.data())
    def conflicting_append(self, data: st.DataObject) -> None:
        """An append at a wrong offset raises at once; it adds nothing to the transaction."""
        plan = data.draw(st.just([]) | transaction_plans(list(self.streams)), label="valid appends first")
        tx, committer, messages, heads = self._begin_with(plan)
        name = self._some_stream(data, sorted(set(self.streams) | set(heads)))
        error = self._append_at_wrong_offset(data, tx, name, heads.get(name, self._head(name)))
        assert isinstance(error, logstore.ConcurrencyError)
        self._check_heads([name, *heads])
        if data.draw(st.booleans(), label="commit the rest"):
            self._record(messages, committer.commit())
        else:
            committer.rollback()
        self._check_heads([name, *heads])

    @rule(data=st.data())
    def conflicting_commit(self, data: st.DataObject) -> None:
        """Transaction B commits to a stream A appended to; A's commit then fails and writes nothing."""
        tx_a, committer_a, pre_heads = self._lose_commit_race(data)
        self._check_heads(pre_heads)  # nothing of A, on any of its streams
        assert tx_a.global_offsets is None
        with pytest.raises(ValueError, match="failed"):
            committer_a.commit()

    # -- idempotent appends ------------------------------------------------------------------

    def _goff(self, index: int) -> int:
        """The global offset of the ``index``-th message of the model's log."""
        return index

    def _still_readable(self, name: str, offset: int) -> bool:
        """Whether message ``offset`` of stream ``name`` is still readable (no removal in this model)."""
        return True

    def _committed(self) -> list[tuple[list[tuple[str, int, Envelope]], range]]:
        """Each committed transaction whose messages are all readable: its messages and its range."""
        out = []
        start = 0
        for end in self.tx_ends:
            messages = self.log[start:end]
            if messages and all(self._still_readable(n, o) for n, o, _e in messages):
                out.append((messages, range(self._goff(start), self._goff(end - 1) + 1)))
            start = end
        return out

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """A committed transaction appended again, as a client that does not know it landed: nothing is
        written and the commit returns the original global offsets."""
        done = self._committed()
        if not done:
            return
        messages, result = data.draw(st.sampled_from(done), label="transaction")
        appends: list[tuple[str, int, list[Envelope]]] = []
        for name, offset, env in messages:  # consecutive messages of one stream: one append
            if appends and appends[-1][0] == name and appends[-1][1] + len(appends[-1][2]) == offset:
                appends[-1][2].append(env)
            else:
                appends.append((name, offset, [env]))
        tx, committer = self.s.begin_tx()
        for name, offset, envs in appends:
            self.s.append_messages(tx, name, offset, envs)
        assert committer.commit() == result
        assert tx.global_offsets == result
        self._check_heads()

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        """A committed message appended again at its stream's head, with new ones or alone:
        ``DuplicateMessageError``, and nothing of the transaction is written."""
        done = [m for m, _r in self._committed() for m in m]
        if not done:
            return
        name, offset, env = data.draw(st.sampled_from(done), label="message")
        head = self._head(name)
        news = data.draw(self.batches, label="new envelopes before it")
        tx, committer = self.s.begin_tx()
        self.s.append_messages(tx, name, head, [*news, env])
        with pytest.raises(DuplicateMessageError) as caught:
            committer.commit()
        assert (caught.value.stream, caught.value.offset, caught.value.existing) == (name, head + len(news), offset)
        self._check_heads([name])

    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        plan = self._draw_plan(data, "plan")
        committer = self._roll_back_plan(data, plan)
        if committer is not None:
            with pytest.raises(ValueError, match="rolled back"):
                committer.commit()
        self._check_heads(name for name, _ in plan)

    def _some_stream(self, data: st.DataObject, known: list[str]) -> str:
        """One of ``known`` streams, or a name never used."""
        if known and data.draw(st.booleans(), label="known stream"):
            return data.draw(st.sampled_from(known), label="stream")
        return self._unused_name(data)

    # -- reading -------------------------------------------------------------------------

    @rule(data=st.data())
    def read_stream(self, data: st.DataObject) -> None:
        name = self._some_stream(data, list(self.streams))
        expected = self.streams.get(name, [])
        start = data.draw(st.integers(0, len(expected) + 2), label="from offset")
        stream, found = self.s.open_stream(self.s, name, start)
        with stream:
            assert found == (name in self.streams)
            with pytest.raises(ValueError):
                stream.get()
            with pytest.raises(ValueError):
                stream.offset()
            got = []
            while stream.try_next():
                got.append((stream.offset(), stream.get()))
            assert not stream.try_next()
        assert got == [(start + i, env) for i, env in enumerate(expected[start:])]

    @rule(data=st.data())
    def read_global(self, data: st.DataObject) -> None:
        self._check_global(data.draw(st.integers(0, len(self.log) + 2), label="from global offset"))

    # -- closing -------------------------------------------------------------------------

    @rule()
    def reopen(self) -> None:
        self.s.close()
        self.store = None
        self.store = self._open()
        self._check_opened(first=False)

    # -- invariants, teardown ------------------------------------------------------------

    @invariant()
    def heads_match(self) -> None:
        self._check_heads()

    def teardown(self) -> None:
        teardown_backend(self, super().teardown)


EXAMPLES = scale(20, 400)
"""Examples of a model run on each backend: the embedded store's own models (tests/model) run more, with crashes."""


def run_model(machine: type[ApiModel], backend: OpenAt, steps: int = 30) -> None:
    """Run ``machine`` on ``backend``: the loaded profile (derandomized in CI), :data:`EXAMPLES` examples of
    ``steps`` steps (fewer if the profile says so)."""
    label = getattr(backend, "__name__", type(backend).__name__).strip("_")
    on_backend = type(f"{machine.__name__}_{label}", (machine,), {"open_at": backend})
    count = min(settings.default.max_examples, EXAMPLES)
    run_state_machine_as_test(on_backend, settings=settings(stateful_step_count=steps, max_examples=count))


class RemovalApiModel(ApiModel):
    """The model with truncation, deletion and compaction (no retention: that is a store directory's).

    Per stream the model keeps its first readable offset and whether it is deleted; each global offset
    of a message is what its commit returned, and every truncation that moves the first offset and every
    deletion of a live stream takes one global offset of its own (a control record).
    """

    def __init__(self) -> None:
        self.first: dict[str, int] = {}
        self.deleted: dict[str, bool] = {}
        self.goffs: list[int] = []  # the global offset of each message of ``self.log``
        self.next_goff = 0
        self.compacted = 0  # removed messages compact() has reported
        super().__init__()

    def _record(self, messages: list[tuple[str, int, Envelope]], result: range) -> None:
        assert result == range(self.next_goff, self.next_goff + len(messages)), (result, self.next_goff)
        for name, offset, env in messages:
            envs = self.streams.setdefault(name, [])
            assert offset == len(envs)
            envs.append(env)
            self.first.setdefault(name, 0)
            self.deleted[name] = False  # an append brings a deleted stream back, from its old head
        self.log += messages
        self.goffs += list(result)
        self.next_goff += len(messages)  # an empty commit's range is empty: it says nothing of where it is
        self.tx_ends.append(len(self.log))

    def _live(self, name: str) -> bool:
        return name in self.streams and not self.deleted[name]

    def _goff(self, index: int) -> int:
        return self.goffs[index]

    def _still_readable(self, name: str, offset: int) -> bool:
        return offset >= self.first[name]

    def _check_heads(self, names: Iterable[str] = ()) -> None:
        assert self.s.global_head == self.next_goff
        for name in {*self.streams, *names}:
            assert self.s.head(name) == self._head(name), name
        assert self.s.stream_names() == [n for n in self.streams if self._live(n)]
        for name in self.streams:
            assert self.s.stream_info(name) == (self.first[name], self._head(name), self.deleted[name]), name

    def _rows(self) -> list[tuple[int, str, Envelope]]:
        return [
            (g, name, env)
            for g, (name, offset, env) in zip(self.goffs, self.log, strict=True)
            if offset >= self.first[name]
        ]

    def _end(self) -> int:
        return self.next_goff

    def _readable(self, start: int) -> list[tuple[int, Envelope]]:
        return [
            (g, env)
            for g, (name, offset, env) in zip(self.goffs, self.log, strict=True)
            if g >= start and offset >= self.first[name]
        ]

    def _check_global(self, start: int) -> None:
        with self.s.open_global(self.s, start) as stream:
            got = []
            while stream.try_next():
                got.append((stream.offset(), stream.get()))
        assert got == self._readable(start)

    @rule(data=st.data())
    def read_global(self, data: st.DataObject) -> None:
        self._check_global(data.draw(st.integers(0, self.next_goff + 2), label="from global offset"))

    @rule(data=st.data())
    def read_stream(self, data: st.DataObject) -> None:
        name = self._some_stream(data, list(self.streams))
        envs = self.streams.get(name, [])
        start = data.draw(st.integers(0, len(envs) + 2), label="from offset")
        stream, found = self.s.open_stream(self.s, name, start)
        with stream:
            assert found == self._live(name)
            got = []
            while stream.try_next():
                got.append((stream.offset(), stream.get()))
        first = max(start, self.first.get(name, 0))
        assert got == [(first + i, env) for i, env in enumerate(envs[first:])]

    def _known(self, data: st.DataObject) -> str | None:
        if not self.streams:
            return None
        return data.draw(st.sampled_from(list(self.streams)), label="stream")

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        """``truncate_stream`` in range moves the first offset (a control record) or, at or below it, does nothing."""
        name = self._known(data)
        if name is None:
            return
        head = self._head(name)
        before = data.draw(st.integers(0, head), label="before")
        self.s.truncate_stream(name, before)
        if before > self.first[name]:
            self.first[name] = before
            self.next_goff += 1

    @rule(data=st.data())
    def bad_removal(self, data: st.DataObject) -> None:
        """Past the head, below zero, an unknown stream: ``ValueError``, and nothing changes."""
        name = self._known(data)
        if name is not None and data.draw(st.booleans(), label="past the head"):
            with pytest.raises(ValueError, match="head is"):
                self.s.truncate_stream(name, self._head(name) + data.draw(st.integers(1, 3), label="past by"))
            with pytest.raises(ValueError, match=">= 0"):
                self.s.truncate_stream(name, -1)
            return
        unknown = self._unused_name(data)
        with pytest.raises(ValueError, match="no stream named"):
            self.s.truncate_stream(unknown, 0)
        with pytest.raises(ValueError, match="no stream named"):
            self.s.delete_stream(unknown)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        """``delete_stream`` of a live stream removes every message (a control record); of a deleted one, nothing."""
        name = self._known(data)
        if name is None:
            return
        self.s.delete_stream(name)
        if not self.deleted[name]:
            self.deleted[name] = True
            self.first[name] = self._head(name)
            self.next_goff += 1

    @rule()
    def compact(self) -> None:
        """``compact()`` removes every removed message once, and changes nothing a reader sees."""
        removed = sum(self.first.values())
        report = self.s.compact()
        assert report.messages_removed == removed - self.compacted, (report, removed, self.compacted)
        self.compacted = removed
        self._check_global(0)


def teardown_backend(machine: Any, base_teardown: Callable[[], None]) -> None:
    """A model's teardown on its backend: a store directory is closed and verified by ``StoreMachine``
    (``base_teardown``); a backend that drops its store (PostgreSQL's schema) closes it, then drops it."""
    drop = getattr(type(machine).open_at, "drop", None)
    if drop is None:
        base_teardown()
        return
    try:
        if machine.store is not None:
            machine.store.close()
            machine.store = None
    finally:
        drop(machine.path)
        base_teardown()
