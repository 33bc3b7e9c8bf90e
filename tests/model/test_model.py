"""Model-based tests of the embedded store: the contract's model (tests/contract/model.py) with crashes.

Every rule of :class:`~tests.contract.model.ApiModel` (commit, conflict, roll back, read, reopen:
run on every backend by the contract tier) plus a simulated crash (tests/crash.py), which keeps
some prefix of the unsynced tail of the log. The reopened store must then hold exactly the whole
transactions that lie wholly in what the crash kept, which always includes every transaction that
was synced; the model is cut back to what the store holds. Opens check the recovery report.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from logstore.embedded.store import MAX_FSYNC_INTERVAL
from tests.contract.model import ApiModel
from tests.crash import simulate_crash


class StoreModel(ApiModel):
    """The embedded store against the model, with crashes; subclasses choose the durability mode."""

    def _check_opened(self, first: bool) -> None:
        report = self.s.recovery_report
        if first:
            assert report.clean and report.cut is None, report
        else:
            assert report.checkpoint == "clean", report
            assert report.clean and report.cut is None and report.bytes_cut == 0, report

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

    # -- crashing --------------------------------------------------------------------------

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
