"""Model-based tests: the store against a plain Python model of its streams and global log.

The model is a dict ``stream -> [envelopes]`` plus the global log, a list of
``(stream, offset, envelope)`` in commit order, plus the global end offset of
every committed transaction. Rules commit, conflict, roll back, read, reopen
and crash; after every step the store's heads must equal the model's.

A simulated crash (tests/crash.py) keeps some prefix of the unsynced tail of
the log. The reopened store must then hold exactly the whole transactions that
lie wholly in what the crash kept, which always includes every transaction
that was synced; the model is cut back to what the store holds.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from typing import Any, ClassVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

import logstore
from logstore import Envelope
from logstore.embedded.store import MAX_FSYNC_INTERVAL
from tests.crash import simulate_crash
from tests.helpers import SMALL_SEGMENT
from tests.statemachine import StoreMachine
from tests.strategies import Plan, envelope_batches, transaction_plans

CHECKPOINT_BYTES = 16 * 1024


class StoreModel(StoreMachine):
    """The store against the model; subclasses choose the durability mode."""

    open_options: ClassVar[dict[str, Any]] = {"durability": "fsync"}
    batches = envelope_batches

    def __init__(self) -> None:
        super().__init__("logstore-model-")
        self.streams: dict[str, list[Envelope]] = {}  # in order of first commit
        self.log: list[tuple[str, int, Envelope]] = []
        self.tx_ends: list[int] = []  # global end offset of each committed transaction
        self.store = self._open()
        report = self.store.recovery_report
        assert report.clean and report.cut is None, report

    # -- helpers -------------------------------------------------------------------------

    def _open(self) -> logstore.Store:
        return logstore.open(
            self.path, segment_size=SMALL_SEGMENT, checkpoint_bytes=CHECKPOINT_BYTES, **self.open_options
        )

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

    def _check_global(self, start: int) -> None:
        """Reading the global stream from ``start`` gives the model's log from there, then nothing."""
        with self.s.open_global(self.s, start) as stream:
            got = []
            while stream.try_next():
                got.append((stream.offset(), stream.get()))
            assert not stream.try_next()
        assert got == [(start + i, env) for i, (_, _, env) in enumerate(self.log[start:])]

    def _cut_model(self, end: int) -> None:
        """Keep the first ``end`` messages of the global log (a transaction boundary)."""
        assert end == 0 or end in self.tx_ends
        self.log = self.log[:end]
        self.tx_ends = [e for e in self.tx_ends if e <= end]
        self.streams = {}
        for name, offset, env in self.log:
            envs = self.streams.setdefault(name, [])
            assert offset == len(envs)
            envs.append(env)

    # -- writing -------------------------------------------------------------------------

    def _commit(self, data: st.DataObject) -> None:
        self._record(*self._commit_plan(data, self._draw_plan(data, "plan")))

    @rule(data=st.data())
    def conflicting_append(self, data: st.DataObject) -> None:
        """An append at a wrong offset raises at once; it adds nothing to the transaction."""
        plan = data.draw(st.just([]) | transaction_plans(list(self.streams)), label="valid appends first")
        tx, committer, messages, heads = self._begin_with(plan)
        candidates = sorted(set(self.streams) | set(heads))
        if candidates and data.draw(st.booleans(), label="known stream"):
            name = data.draw(st.sampled_from(candidates), label="stream")
        else:
            name = self._unused_name(data)
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

    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        plan = self._draw_plan(data, "plan")
        committer = self._roll_back_plan(data, plan)
        if committer is not None:
            with pytest.raises(ValueError, match="rolled back"):
                committer.commit()
        self._check_heads(name for name, _ in plan)

    # -- reading -------------------------------------------------------------------------

    @rule(data=st.data())
    def read_stream(self, data: st.DataObject) -> None:
        if self.streams and data.draw(st.booleans(), label="known stream"):
            name = data.draw(st.sampled_from(list(self.streams)), label="stream")
        else:
            name = self._unused_name(data)
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

    # -- closing, crashing -----------------------------------------------------------------

    @rule()
    def reopen(self) -> None:
        self.s.close()
        self.store = None
        self.store = self._open()
        report = self.store.recovery_report
        assert report.checkpoint == "clean", report
        assert report.clean and report.cut is None and report.bytes_cut == 0, report

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """A burst of commits, then a crash; the reopened store holds a prefix of whole transactions."""
        for _ in range(data.draw(st.integers(0, 3), label="commits just before the crash")):
            self._commit(data)
        committed = len(self.log)
        done = simulate_crash(self.s, data)
        self.store = None
        assert done["written_goff"] == committed, (
            f"the records after the synced position end at global offset {done['written_goff']}, but {committed} "
            f"messages were committed: store._writer.synced disagrees with the log ({done})"
        )
        assert done["durable_goff"] <= done["intact_goff"] <= committed, done
        self.store = self._open()
        held = self.store.global_head
        # Exactly the whole transactions the crash kept intact, in commit order.
        kept = max([0] + [e for e in self.tx_ends if e <= done["intact_goff"]])
        assert held == kept, (held, kept, done)
        # Every transaction that was synced survives.
        assert max([0] + [e for e in self.tx_ends if e <= done["durable_goff"]]) <= held, (held, done)
        self.check_crash_durability(done, committed, held)
        report = self.store.recovery_report
        assert report.checkpoint == "used", report
        # Recovery cuts exactly when something is left past the last whole transaction.
        must_cut = done["tail_dirty"] or done["intact_goff"] != held
        assert (report.cut is not None) == must_cut, (report, done, held)
        if report.cut is not None:
            assert report.cut_reason, report
            assert report.bytes_cut > 0, report
            assert report.lost_found, report
            assert all(os.path.isfile(p) for p in report.lost_found), report
        else:
            assert report.bytes_cut == 0 and not report.lost_found, report
        event(f"crash: unsynced messages: {done['written_goff'] > done['durable_goff']}")
        event(f"crash: lost acknowledged transactions: {held < committed}")
        event(f"crash: recovery cut the log: {report.cut is not None}")
        self._cut_model(held)
        self._check_global(0)

    def check_crash_durability(self, done: dict[str, Any], committed: int, held: int) -> None:
        """What this durability mode promises on top of keeping every synced transaction."""

    # -- invariants, teardown ------------------------------------------------------------

    @invariant()
    def heads_match(self) -> None:
        self._check_heads()


class FsyncModel(StoreModel):
    """``durability="fsync"``: every acknowledged commit survives a crash."""

    open_options: ClassVar[dict[str, Any]] = {"durability": "fsync"}

    def check_crash_durability(self, done: dict[str, Any], committed: int, held: int) -> None:
        assert done["durable_goff"] == committed, done
        assert held == committed, (held, committed, done)


class BatchModel(StoreModel):
    """``durability="batch"`` with an interval no run reaches: only rolls and checkpoints fsync."""

    open_options: ClassVar[dict[str, Any]] = {"durability": "batch", "fsync_interval": MAX_FSYNC_INTERVAL}


class NoSyncModel(StoreModel):
    """``durability="none"``: acknowledged commits past the last roll or checkpoint may be lost."""

    open_options: ClassVar[dict[str, Any]] = {"durability": "none"}


_settings = settings(stateful_step_count=30)

TestFsyncModel = FsyncModel.TestCase
TestFsyncModel.settings = _settings
TestBatchModel = BatchModel.TestCase
TestBatchModel.settings = _settings
TestNoSyncModel = NoSyncModel.TestCase
TestNoSyncModel.settings = _settings
