"""Model-based tests of removal: truncation, deletion, retention and compaction against a plain Python model.

The model holds, per stream (in order of first commit, which is the order of
stream ids), its envelopes with the global offset of each, the first offset
not removed by truncation, deletion or retention, its deleted flag and the
global offset of its last control record; and for the store, the next global
offset and the log start. A message is readable when its offset is at or
past its stream's first retained offset and its global offset at or past the
log start.

Rules commit (also to deleted streams, which un-deletes them), conflict, roll
back, truncate, delete, compact, reopen (with and without ``retention_bytes``,
with and without the CHECKPOINT, so that the indexes are rebuilt from the log
alone) and crash. Everything is ``durability="fsync"``, so every acknowledged
commit, truncation and deletion survives a crash, and a crash changes nothing.

Global offsets of messages come from what ``commit()`` returns; the model
also predicts every control record, so the store's ``global_head`` is checked
after every step:

- ``truncate_stream(s, before)`` writes one TRUNCATE record when ``before``
  is above the catalog's first retained offset of ``s`` (else nothing);
  ``delete_stream(s)`` writes one DELETE record unless ``s`` is deleted. The
  catalog's value is read from the store: it is the model's first retained
  offset, or after a rebuild from the log anything between that and the first
  readable offset (the log no longer tells what lies below); the invariant
  checks those bounds.
- Retention picks the new log start itself (whole sealed segments), at open
  and in the writer thread after each segment roll, after the commit that
  rolled has returned. The test records each step the writer takes (a
  wrapper around ``Writer.apply_retention``: the log start it chose and the
  global offsets before and after) and waits for the writer to finish
  (``_settle``). For each step the model predicts its RETAIN transaction: a
  RETAIN record, then a TRUNCATE or DELETE at the head of every stream (in
  stream id order) whose messages all lie below the new start, unless a
  control record past the start already names it at its head; then it drops
  every message below the start (heads stay).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from unittest import mock

import pytest
from conftest import SMALL_SEGMENT, assert_verified
from crash import simulate_crash
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from strategies import stream_names, unique_name

import logstore
from logstore import Envelope, OffsetConflictError
from logstore.writer import Writer

CHECKPOINT_BYTES = 16 * 1024
LONG_RUN = os.environ.get("LOGSTORE_HYPOTHESIS_PROFILE", "ci") == "long"

# -- strategies ----------------------------------------------------------------------


def _padded(type_: str, n: int, byte: int, size: int) -> Envelope:
    return Envelope.new(type_, {"n": n, "pad": bytes([byte]) * size})


padded_envelopes = st.builds(
    _padded,
    st.sampled_from(["OrderPlaced", "OrderShipped", "PaymentReceived"]),
    st.integers(0, 2**40),
    st.integers(0, 255),
    st.integers(0, 2500),
)
"""Cheap envelopes of up to about 2.5 KiB: with ``bulk`` commits, a 64 KiB segment fills every few dozen steps."""

padded_batches = st.lists(padded_envelopes, min_size=1, max_size=3)

Plan = list[tuple[str, list[Envelope]]]

# Retention keeps this many segments' worth of log bytes (the active segment included).
retention_options = st.sampled_from([None, None, 1 * SMALL_SEGMENT, 2 * SMALL_SEGMENT, 3 * SMALL_SEGMENT])


# -- recording the retention steps of the writer ------------------------------------------


class RetentionStep(NamedTuple):
    goff: int  # the next global offset before the step
    start: int  # the log start it chose
    end: int  # the next global offset after its RETAIN transaction
    first: list[int]  # the catalog's first retained offset of each stream id before the step


_apply_retention = Writer.apply_retention


def _recording_apply_retention(writer: Writer, *args: Any, **kwargs: Any) -> int:
    """``Writer.apply_retention`` that appends a :class:`RetentionStep` to ``writer.retention_steps``."""
    lg = writer.log
    start, goff = lg.log_start, lg.next_goff
    first = lg.catalog.first[: len(lg.catalog)].tolist()
    try:
        return _apply_retention(writer, *args, **kwargs)
    finally:
        if lg.log_start != start:
            steps = writer.__dict__.setdefault("retention_steps", [])
            steps.append(RetentionStep(goff, lg.log_start, lg.next_goff, first))


# -- the model -----------------------------------------------------------------------


@dataclass
class StreamModel:
    envs: list[Envelope] = field(default_factory=list)
    goffs: list[int] = field(default_factory=list)  # global offset of each message
    first: int = 0  # offsets below it were removed by truncation, deletion or retention's carry records
    deleted: bool = False
    ctrl: int = -1  # global offset of the stream's last control record (-1: none)

    @property
    def head(self) -> int:
        return len(self.envs)

    def readable_first(self, log_start: int) -> int:
        """The first readable offset (the head when none is readable)."""
        for o in range(self.first, self.head):
            if self.goffs[o] >= log_start:
                return o
        return self.head

    def readable(self, log_start: int) -> list[tuple[int, int, Envelope]]:
        """``(offset, global offset, envelope)`` of every readable message, in order."""
        return [(o, self.goffs[o], self.envs[o]) for o in range(self.readable_first(log_start), self.head)]


class _Boom(Exception):
    """Raised inside a ``with store.transaction()`` block to make it roll back."""


class RemovalModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._patch = mock.patch.object(Writer, "apply_retention", _recording_apply_retention)
        self._patch.start()
        self.tmp = tempfile.mkdtemp(prefix="logstore-model-removal-")
        self.path = os.path.join(self.tmp, "store")
        self.streams: dict[str, StreamModel] = {}  # in order of first commit (= stream id order)
        self.next_goff = 0
        self.log_start = 0
        self.compacted: set[int] = set()  # global offsets of messages compaction replaced by REMOVED records
        self.retention: int | None = None
        self.store: logstore.Store | None = None
        try:
            self._open(None)
        except BaseException:
            self._patch.stop()
            raise
        report = self.s.recovery_report
        assert report.clean and report.cut is None, report

    # -- helpers -------------------------------------------------------------------------

    @property
    def s(self) -> logstore.Store:
        assert self.store is not None
        return self.store

    def _open(self, retention: int | None) -> None:
        self.store = logstore.open(
            self.path,
            durability="fsync",
            segment_size=SMALL_SEGMENT,
            checkpoint_bytes=CHECKPOINT_BYTES,
            retention_bytes=retention,
        )
        self.retention = retention
        self._settle()

    def _catalog_first(self, name: str) -> int:
        """The catalog's first retained offset of ``name`` (what decides whether a truncation writes)."""
        cat = self.s._log.catalog
        return int(cat.first[cat.ids[name]])

    def _head(self, name: str) -> int:
        m = self.streams.get(name)
        return 0 if m is None else m.head

    def _unused_name(self, data: st.DataObject) -> str:
        return unique_name(data.draw(stream_names, label="unused stream"), self.streams)

    def _any_name(self, data: st.DataObject) -> str:
        """A known stream (deleted ones included) most of the time, else a new name."""
        if self.streams and data.draw(st.integers(0, 4), label="known stream") > 0:
            return data.draw(st.sampled_from(list(self.streams)), label="stream")
        return self._unused_name(data)

    def _plan(self, data: st.DataObject) -> Plan:
        """A transaction over 1 to 3 distinct streams (known ones, deleted ones included, or new)."""
        count = data.draw(st.integers(1, 3), label="streams")
        chosen: list[str] = []
        for _ in range(count):
            fresh = [n for n in self.streams if n not in chosen]
            if fresh and data.draw(st.booleans(), label="known stream"):
                chosen.append(data.draw(st.sampled_from(fresh), label="stream"))
            else:
                chosen.append(unique_name(data.draw(stream_names, label="new stream"), {*chosen, *self.streams}))
        extra = data.draw(st.lists(st.sampled_from(chosen), max_size=4 - count), label="more appends")
        order = data.draw(st.permutations(chosen + extra), label="order")
        return [(name, data.draw(padded_batches, label="envelopes")) for name in order]

    def _append_plan(self, tx: logstore.Tx, plan: Plan) -> list[tuple[str, int, Envelope]]:
        """Append ``plan`` to ``tx`` at the right offsets; return its messages in global order."""
        heads: dict[str, int] = {}
        messages = []
        for name, envs in plan:
            offset = heads.get(name, self._head(name))
            self.s.append_messages(tx, name, offset, envs)
            heads[name] = offset + len(envs)
            messages += [(name, offset + i, env) for i, env in enumerate(envs)]
        return messages

    def _record(self, messages: list[tuple[str, int, Envelope]], result: range) -> None:
        """Check a successful commit's range and add its messages to the model."""
        assert result == range(self.next_goff, self.next_goff + len(messages)), (result, self.next_goff)
        for goff, (name, offset, env) in enumerate(messages, start=result.start):
            m = self.streams.setdefault(name, StreamModel())
            assert offset == m.head
            m.envs.append(env)
            m.goffs.append(goff)
            m.deleted = False  # an append brings a deleted stream back, from its old head on
        self.next_goff = result.stop
        self._settle()

    def _settle(self) -> None:
        """Wait for the retention the writer thread runs after a roll, then apply its steps to the model."""
        writer = self.s._writer
        if self.retention is not None:
            # Between two groups: a retention due now runs right after this call, before the next one.
            while writer.call(lambda: writer._retention_due):
                pass
        steps: list[RetentionStep] = writer.__dict__.pop("retention_steps", [])
        assert self.retention is not None or not steps, "the log start moved without a retention option"
        if len(steps) > 1:
            event("retention: several steps at once (a RETAIN transaction rolled the segment)")
        for step in steps:
            self._retain(step)
        assert self.s.log_start == self.log_start, (self.s.log_start, self.log_start)
        assert self.s.global_head == self.next_goff, (self.s.global_head, self.next_goff)

    def _retain(self, step: RetentionStep) -> None:
        """A retention step: check its RETAIN transaction against the model, drop what lies below its start."""
        start = step.start
        assert step.goff == self.next_goff, (step, self.next_goff)
        assert self.log_start < start <= self.next_goff, (step, self.log_start)
        assert len(step.first) == len(self.streams), (step, list(self.streams))
        below = [(sid, m) for sid, m in enumerate(self.streams.values()) if m.goffs[-1] < start]
        # A stream needs a record that names it past the start, unless a control record there
        # already does so at its head.
        carry = [m for sid, m in below if not (m.ctrl >= start and step.first[sid] == m.head)]
        event(f"retention carries streams: {min(len(carry), 3)}{'+' if len(carry) >= 3 else ''}")
        for k, m in enumerate(carry, start=1):
            m.ctrl = step.goff + k
        for _, m in below:
            m.first = m.head
        self.next_goff = step.goff + 1 + len(carry)
        assert step.end == self.next_goff, (step, self.next_goff)
        self.log_start = start
        self.compacted = {g for g in self.compacted if g >= start}

    def _expected_global(self, start: int = 0) -> list[tuple[int, Envelope]]:
        out = [(g, env) for m in self.streams.values() for _, g, env in m.readable(self.log_start) if g >= start]
        out.sort(key=lambda x: x[0])
        return out

    def _read_stream(self, name: str, start: int) -> tuple[list[tuple[int, Envelope]], bool]:
        stream, found = self.s.open_stream(self.s, name, start)
        with stream:
            got = []
            while stream.try_next():
                got.append((stream.offset(), stream.get()))
            assert not stream.try_next()
        return got, found

    def _read_global(self, start: int) -> list[tuple[int, Envelope]]:
        with self.s.open_global(self.s, start) as stream:
            got = []
            while stream.try_next():
                got.append((stream.offset(), stream.get()))
            assert not stream.try_next()
        return got

    def _check_stream(self, name: str, start: int = 0) -> None:
        m = self.streams.get(name)
        got, found = self._read_stream(name, start)
        if m is None:
            assert self.s.head(name) == 0
            assert self.s.stream_info(name) is None
            assert not found and got == []
            return
        assert self.s.head(name) == m.head, name
        info = self.s.stream_info(name)
        assert info == (m.readable_first(self.log_start), m.head, m.deleted), (name, info, m.first, self.log_start)
        assert found == (not m.deleted), name
        expected = [(o, env) for o, _, env in m.readable(self.log_start) if o >= start]
        assert got == expected, (name, [o for o, _ in got], [o for o, _ in expected])

    def _check_catalog(self) -> None:
        """The catalog names the model's streams in id order; its first retained offsets lie within bounds."""
        cat = self.s._log.catalog
        assert cat.names[: len(cat)] == list(self.streams)
        for sid, (name, m) in enumerate(self.streams.items()):
            first = int(cat.first[sid])
            # The model's value, or after a rebuild from the log up to the first readable offset.
            assert m.first <= first <= m.readable_first(self.log_start), (name, first, m.first, self.log_start)
            assert cat.trimmed.get(sid, 0) == first, (name, cat.trimmed.get(sid), first)

    def _check_all(self) -> None:
        s = self.s
        assert s.global_head == self.next_goff
        assert s.log_start == self.log_start
        assert s.stream_names() == [n for n, m in self.streams.items() if not m.deleted]
        self._check_catalog()
        for name in self.streams:
            self._check_stream(name)
        got = self._read_global(0)
        expected = self._expected_global()
        assert got == expected, ([g for g, _ in got], [g for g, _ in expected])

    def _remove(self, name: str, before: int | None) -> None:
        """``truncate_stream(name, before)``, or ``delete_stream(name)`` when ``before`` is None."""
        m = self.streams.get(name)
        goff = self.next_goff
        if m is None:
            with pytest.raises(ValueError, match="no stream named"):
                if before is None:
                    self.s.delete_stream(name)
                else:
                    self.s.truncate_stream(name, before)
        elif before is None:
            self.s.delete_stream(name)
            if not m.deleted:
                m.first, m.deleted, m.ctrl = m.head, True, goff
                self.next_goff += 1
            event("delete: " + ("already deleted" if m.ctrl != goff else "written"))
        elif before < 0:
            with pytest.raises(ValueError, match=">= 0"):
                self.s.truncate_stream(name, before)
        elif before > m.head:
            with pytest.raises(ValueError, match=f"head is {m.head}"):
                self.s.truncate_stream(name, before)
        else:
            cat_first = self._catalog_first(name)
            self.s.truncate_stream(name, before)
            if before > cat_first:
                m.ctrl = goff
                self.next_goff += 1
            m.first = max(m.first, before)
            event("truncate: " + ("written" if m.ctrl == goff else "nothing to do"))
        self._settle()

    # -- writing -------------------------------------------------------------------------

    def _commit(self, data: st.DataObject) -> None:
        plan = self._plan(data)
        if data.draw(st.booleans(), label="context manager"):
            with self.s.transaction() as tx:
                messages = self._append_plan(tx, plan)
            assert tx.global_offsets is not None
            result = tx.global_offsets
        else:
            tx, committer = self.s.begin_tx()
            messages = self._append_plan(tx, plan)
            result = committer.commit()
            assert tx.global_offsets == result
        if any(self.streams[n].deleted for n, _ in plan if n in self.streams):
            event("commit: appends to a deleted stream")
        self._record(messages, result)

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        self._commit(data)

    @rule(data=st.data())
    def bulk(self, data: st.DataObject) -> None:
        """Many large envelopes to one stream: fills most of a segment in one commit."""
        name = self._any_name(data)
        count = data.draw(st.integers(5, 25), label="count")
        size = data.draw(st.integers(1000, 3000), label="size")
        envs = [Envelope.new("Bulk", {"i": i, "pad": b"\xa5" * size}) for i in range(count)]
        tx, committer = self.s.begin_tx()
        offset = self._head(name)
        self.s.append_messages(tx, name, offset, envs)
        self._record([(name, offset + i, env) for i, env in enumerate(envs)], committer.commit())

    @rule(data=st.data())
    def conflicting_append(self, data: st.DataObject) -> None:
        """An append at a wrong offset (also 0 on a deleted stream) raises at once and adds nothing."""
        tx, committer = self.s.begin_tx()
        plan = self._plan(data) if data.draw(st.booleans(), label="valid appends first") else []
        messages = self._append_plan(tx, plan)
        heads = {name: offset + 1 for name, offset, _ in messages}  # counting this transaction's appends
        name = self._any_name(data)
        expected = heads.get(name, self._head(name))
        given = data.draw(st.integers(0, expected + 2), label="wrong offset")
        if given >= expected:  # anything but the expected offset: below it, or past it
            given += 1
        with pytest.raises(OffsetConflictError) as info:
            self.s.append_messages(tx, name, given, data.draw(padded_batches, label="envelopes"))
        assert (info.value.stream, info.value.expected, info.value.given) == (name, expected, given)
        if messages and data.draw(st.booleans(), label="commit the rest"):
            self._record(messages, committer.commit())
        else:
            committer.rollback()
            assert self.s.global_head == self.next_goff

    @rule(data=st.data())
    def conflicting_commit(self, data: st.DataObject) -> None:
        """Transaction B commits to a stream A appended to; A's commit then fails and writes nothing."""
        plan_a = self._plan(data)
        target = data.draw(st.sampled_from(sorted({name for name, _ in plan_a})), label="contested stream")
        plan_b = self._plan(data)
        if target not in {name for name, _ in plan_b}:
            plan_b = [(target, data.draw(padded_batches, label="B's contested append")), *plan_b]
        pre_heads = {name: self._head(name) for name, _ in plan_a}
        tx_a, committer_a = self.s.begin_tx()
        self._append_plan(tx_a, plan_a)
        tx_b, committer_b = self.s.begin_tx()
        self._record(self._append_plan(tx_b, plan_b), committer_b.commit())
        streams_b = {name for name, _ in plan_b}
        first_contested = next(name for name, _ in plan_a if name in streams_b)
        with pytest.raises(OffsetConflictError) as info:
            committer_a.commit()
        assert (info.value.stream, info.value.expected, info.value.given) == (
            first_contested,
            self._head(first_contested),
            pre_heads[first_contested],
        )
        assert tx_a.global_offsets is None
        assert self.s.global_head == self.next_goff

    @rule(data=st.data())
    def rollback(self, data: st.DataObject) -> None:
        plan = self._plan(data)
        if data.draw(st.booleans(), label="context manager"):
            with pytest.raises(_Boom), self.s.transaction() as tx:
                self._append_plan(tx, plan)
                raise _Boom
        else:
            tx, committer = self.s.begin_tx()
            self._append_plan(tx, plan)
            committer.rollback()
        assert not tx.active
        assert self.s.global_head == self.next_goff
        for name, _ in plan:
            assert self.s.head(name) == self._head(name)

    # -- removal -------------------------------------------------------------------------

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        if not self.streams or data.draw(st.integers(0, 9), label="unknown stream") == 0:
            self._remove(self._unused_name(data), data.draw(st.integers(0, 3), label="before"))
            return
        name = data.draw(st.sampled_from(list(self.streams)), label="stream")
        m = self.streams[name]
        kind = data.draw(st.sampled_from(["in range"] * 6 + ["past the head", "negative"]), label="before is")
        if kind == "in range":
            before = data.draw(st.integers(0, m.head), label="before")
        elif kind == "past the head":
            before = data.draw(st.integers(m.head + 1, m.head + 3), label="before")
        else:
            before = data.draw(st.integers(-3, -1), label="before")
        self._remove(name, before)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name = self._any_name(data) if self.streams else self._unused_name(data)
        self._remove(name, None)

    @precondition(lambda self: bool(self.streams))
    @rule(data=st.data())
    def remove_during_transaction(self, data: st.DataObject) -> None:
        """A removal between a transaction's appends and its commit: heads do not move, so it commits."""
        plan = self._plan(data)
        tx, committer = self.s.begin_tx()
        messages = self._append_plan(tx, plan)
        name = data.draw(st.sampled_from([n for n, _ in plan if n in self.streams] or list(self.streams)))
        m = self.streams[name]
        self._remove(name, None if data.draw(st.booleans(), label="delete") else m.head)
        self._record(messages, committer.commit())
        if name in {n for n, _ in plan}:
            assert not self.streams[name].deleted

    @precondition(lambda self: bool(self.streams))
    @rule(data=st.data())
    def read_across_removal(self, data: st.DataObject) -> None:
        """Readers that decoded ahead, then a removal: what they return after it is readable now."""
        name = data.draw(st.sampled_from(list(self.streams)), label="stream")
        stream, _ = self.s.open_stream(self.s, name, 0)
        everything = self.s.open_global(self.s, 0)
        with stream, everything:
            got_s = [stream.offset() for _ in range(data.draw(st.integers(0, 5), label="read")) if stream.try_next()]
            got_g = [everything.offset() for _ in range(data.draw(st.integers(0, 5))) if everything.try_next()]
            m = self.streams[name]
            self._remove(name, None if data.draw(st.booleans(), label="delete") else data.draw(st.integers(0, m.head)))
            rest_s = []
            while stream.try_next():
                rest_s.append((stream.offset(), stream.get()))
            rest_g = []
            while everything.try_next():
                rest_g.append((everything.offset(), everything.get()))
        after_s = got_s[-1] + 1 if got_s else 0
        assert rest_s == [(o, env) for o, _, env in m.readable(self.log_start) if o >= after_s]
        after_g = got_g[-1] + 1 if got_g else 0
        assert rest_g == self._expected_global(after_g)

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        report = self.s.compact()
        self._settle()  # compaction applies the store's retention first
        sealed_end = self.s._log.active.first  # the active segment is left alone
        removed = {
            g
            for name, m in self.streams.items()
            for g in m.goffs[: self._catalog_first(name)]
            if self.log_start <= g < sealed_end and g not in self.compacted
        }
        assert report.messages_removed == len(removed), (report, len(removed))
        assert report.bytes_reclaimed >= 0
        assert (report.segments_rewritten > 0) == bool(removed), report
        self.compacted |= removed
        event(f"compact: rewrote segments: {report.segments_rewritten > 0}")
        if data.draw(st.booleans(), label="compact again"):
            again = self.s.compact()
            self._settle()
            assert (again.segments_rewritten, again.messages_removed, again.bytes_reclaimed) == (0, 0, 0), again

    # -- reading -------------------------------------------------------------------------

    @rule(data=st.data())
    def read_from(self, data: st.DataObject) -> None:
        name = self._any_name(data)
        self._check_stream(name, data.draw(st.integers(0, self._head(name) + 2), label="from offset"))
        start = data.draw(st.integers(0, self.next_goff + 2), label="from global offset")
        assert self._read_global(start) == self._expected_global(start)

    # -- closing, crashing -----------------------------------------------------------------

    @rule(retention=retention_options, drop_checkpoint=st.booleans())
    def reopen(self, retention: int | None, drop_checkpoint: bool) -> None:
        self.s.close()
        self.store = None
        if drop_checkpoint:
            os.unlink(os.path.join(self.path, "CHECKPOINT"))
        self._open(retention)
        report = self.s.recovery_report
        assert report.cut is None and report.bytes_cut == 0, report
        if drop_checkpoint:
            assert "CHECKPOINT is missing" in report.checkpoint and "all indexes" in report.rebuilt, report
        else:
            assert report.checkpoint == "clean" and report.clean, report
        event(f"reopen: retention {retention and retention // SMALL_SEGMENT}, rebuilt {drop_checkpoint}")
        self._check_all()

    @rule(data=st.data(), retention=retention_options, drop_checkpoint=st.booleans())
    def crash(self, data: st.DataObject, retention: int | None, drop_checkpoint: bool) -> None:
        """A crash after some commits and removals: with fsync, every acknowledged one survives."""
        for _ in range(data.draw(st.integers(0, 2), label="commits just before the crash")):
            self._commit(data)
        if self.streams and data.draw(st.booleans(), label="remove just before the crash"):
            name = data.draw(st.sampled_from(list(self.streams)))
            self._remove(name, None if data.draw(st.booleans()) else data.draw(st.integers(0, self._head(name))))
        done = simulate_crash(self.s, data)
        self.store = None
        assert done["durable_goff"] == done["written_goff"] == done["intact_goff"] == self.next_goff, done
        if drop_checkpoint:
            os.unlink(os.path.join(self.path, "CHECKPOINT"))
        self._open(retention)
        report = self.s.recovery_report
        assert report.cut is None and report.bytes_cut == 0 and not report.lost_found, report
        if drop_checkpoint:
            assert "CHECKPOINT is missing" in report.checkpoint, report
        else:
            assert report.checkpoint == "used", report
        self._check_all()

    # -- invariants, teardown ------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        self._check_all()

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.store.close()
                self.store = None
                assert_verified(self.path)
        finally:
            self._patch.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)


TestRemovalModel = RemovalModel.TestCase
TestRemovalModel.settings = settings(stateful_step_count=150 if LONG_RUN else 80)
