"""What the stateful model tests share: a store in a temporary directory, committing a plan, teardown.

``StoreMachine`` holds the store under test (``self.store``, ``self.s``) in a
directory of its own; a subclass keeps its model, opens the store and says
how long each stream is (``_head``). Its transactions are appended with
``_append_plan`` and committed by ``_commit_plan``, which draws whether the
context manager or ``begin_tx``/``commit`` does it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection
from typing import ClassVar

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

import logstore
from logstore import Envelope, OffsetConflictError
from tests.helpers import assert_verified
from tests.strategies import Plan, append_plan, stream_names, unique_name


class Boom(Exception):
    """Raised inside a ``with store.transaction()`` block to make it roll back."""


class StoreMachine(RuleBasedStateMachine):
    """A store under test in a temporary directory, closed, verified and removed at teardown."""

    batches: ClassVar[st.SearchStrategy[list[Envelope]]]
    """What one append of the machine's transactions appends."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.path = os.path.join(self.tmp, "store")
        self.store: logstore.Store | None = None

    @property
    def s(self) -> logstore.Store:
        assert self.store is not None
        return self.store

    def _head(self, name: str) -> int:
        """The model's head of ``name`` (0 for a stream it does not know)."""
        raise NotImplementedError

    def _known_names(self) -> Collection[str]:
        """The names ``_unused_name`` must not return."""
        raise NotImplementedError

    def _draw_plan(self, data: st.DataObject, label: str) -> Plan:
        """A transaction plan over the model's streams and new ones."""
        raise NotImplementedError

    def _record(self, messages: list[tuple[str, int, Envelope]], result: range) -> None:
        """Check a successful commit's range and add its messages to the model."""
        raise NotImplementedError

    def _unused_name(self, data: st.DataObject) -> str:
        return unique_name(data.draw(stream_names, label="unused stream"), self._known_names())

    def _append_plan(self, tx: logstore.Tx, plan: Plan) -> list[tuple[str, int, Envelope]]:
        """Append ``plan`` to ``tx`` at the right offsets; return its messages in global order."""
        return append_plan(self.s, tx, plan, self._head)

    def _commit_plan(self, data: st.DataObject, plan: Plan) -> tuple[list[tuple[str, int, Envelope]], range]:
        """Commit ``plan`` in one transaction; return its messages in global order and the commit's range."""
        if data.draw(st.booleans(), label="context manager"):
            with self.s.transaction() as tx:
                messages = self._append_plan(tx, plan)
            assert tx.global_offsets is not None
            return messages, tx.global_offsets
        tx, committer = self.s.begin_tx()
        messages = self._append_plan(tx, plan)
        result = committer.commit()
        assert tx.global_offsets == result
        return messages, result

    def _roll_back_plan(self, data: st.DataObject, plan: Plan) -> logstore.Committer | None:
        """Append ``plan`` in a transaction that rolls back; return its committer unless the context manager ran it."""
        committer = None
        if data.draw(st.booleans(), label="context manager"):
            with pytest.raises(Boom), self.s.transaction() as tx:
                self._append_plan(tx, plan)
                raise Boom
        else:
            tx, committer = self.s.begin_tx()
            self._append_plan(tx, plan)
            committer.rollback()
        assert not tx.active
        return committer

    def _append_at_wrong_offset(
        self, data: st.DataObject, tx: logstore.Tx, name: str, expected: int
    ) -> OffsetConflictError:
        """An append to ``name`` at any offset but ``expected`` raises at once, naming both; returns the error."""
        given = data.draw(st.integers(0, expected + 2), label="wrong offset")
        if given >= expected:  # anything but the expected offset: below it, or past it
            given += 1
        envs = data.draw(self.batches, label="envelopes")
        with pytest.raises(OffsetConflictError) as info:
            self.s.append_messages(tx, name, given, envs)
        assert (info.value.stream, info.value.expected, info.value.given) == (name, expected, given)
        return info.value

    def _lose_commit_race(self, data: st.DataObject) -> tuple[logstore.Tx, logstore.Committer, dict[str, int]]:
        """Transaction B commits to a stream A appended to; A's commit then fails, naming the first such stream.

        Returns A's transaction and committer and the heads of A's streams before both.
        """
        plan_a = self._draw_plan(data, "plan A")
        target = data.draw(st.sampled_from(sorted({name for name, _ in plan_a})), label="contested stream")
        plan_b = self._draw_plan(data, "plan B")
        if target not in {name for name, _ in plan_b}:
            plan_b = [(target, data.draw(self.batches, label="B's contested append")), *plan_b]
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
        return tx_a, committer_a, pre_heads

    def _begin_with(
        self, plan: Plan
    ) -> tuple[logstore.Tx, logstore.Committer, list[tuple[str, int, Envelope]], dict[str, int]]:
        """A transaction with ``plan`` appended: it, its committer, its messages and the heads they lead to."""
        tx, committer = self.s.begin_tx()
        messages = self._append_plan(tx, plan)
        heads = {name: offset + 1 for name, offset, _ in messages}  # counting this transaction's appends
        return tx, committer, messages, heads

    def _commit(self, data: st.DataObject) -> None:
        """Commit a transaction drawn for the model."""
        raise NotImplementedError

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        self._commit(data)

    def _cleanup(self) -> None:
        """What a subclass undoes at teardown besides the store and its directory."""

    def teardown(self) -> None:
        try:
            if self.store is not None:
                self.store.close()
                self.store = None
                assert_verified(self.path)
        finally:
            self._cleanup()
            shutil.rmtree(self.tmp, ignore_errors=True)
