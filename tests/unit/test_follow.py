"""The follower of a read-only store (logstore/embedded/follow.py), case by case.

A writable store and a read-only store opened in one process share nothing
but the store's files and ``CONTROL``, exactly as two processes do, so these
cases run in one process where they need to reach inside; tests/processes/
runs the same machinery across real processes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.controlfile import DURABLE_AT, STATE_AT, STATE_INITIALIZING, Control, slot_flags
from logstore.embedded.fileio import FileIO
from logstore.embedded.follow import Follower

SMALL = 64 * 1024


def _commit(store: logstore.Store, stream: str, n: int = 1, pad: int = 0) -> range:
    with store.transaction() as tx:
        store.append_messages(tx, stream, logstore.ANY, [Envelope.new("E", {"p": "x" * pad}) for _ in range(n)])
    return tx.global_offsets


def test_a_fsync_reader_sees_only_what_is_durable_and_makes_a_none_writers_commits_durable(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path, durability="none", checkpoint_bytes=1 << 30) as writer:
        _commit(writer, "a")
        writer._writer.call(writer._writer.sync)
        durable = logstore.open(path, readonly=True)  # durability="fsync", the default
        written = logstore.open(path, readonly=True, durability="none")
        try:
            assert durable.global_head == written.global_head == 1
            control = writer._control
            assert control is not None
            _commit(writer, "a", 3)
            syncs = written._io.syncs
            assert written.global_head == 4  # written and published, not synced: a "none" reader takes it
            assert written._io.syncs == syncs and control.word(DURABLE_AT) == 1
            # A "fsync" reader takes only what is durable. No process is syncing it (no turn runs, nobody
            # holds the flush lock): the reader makes the tail durable itself, then takes it.
            syncs = durable._io.syncs
            with durable.open_global(durable, 1) as g:
                assert g.try_next() and g.offset() == 1
            assert durable._io.syncs == syncs + 1
            assert control.word(DURABLE_AT) == 4
            assert durable.global_head == 4
        finally:
            durable.close()
            written.close()


def test_a_new_read_only_open_beside_a_none_writer_loads_only_what_is_durable(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path, durability="none", checkpoint_bytes=1 << 30) as writer:
        _commit(writer, "a", 2)
        writer._writer.call(writer._writer.sync)
        _commit(writer, "a", 5)
        with logstore.open(path, readonly=True) as durable, logstore.open(path, readonly=True, durability="none") as w:
            assert durable._log.next_goff == 2  # loaded up to the durable bound
            assert w.global_head == 7 and w.head("a") == 7
            assert durable.global_head == 7 and durable.head("a") == 7  # after making the tail durable


def test_a_watcher_that_fails_once_keeps_waking_waiters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store"
    with logstore.open(path) as writer:
        _commit(writer, "a")
        with logstore.open(path, readonly=True) as reader, reader.open_global(reader, 1) as g:
            follower = reader._follower
            assert follower is not None
            real = Follower._refresh_locked
            failures = []

            def fail_once(self: Follower) -> bool:
                if not failures:
                    failures.append(1)
                    raise OSError(24, "Too many open files (injected)")
                return real(self)

            monkeypatch.setattr(Follower, "_refresh_locked", fail_once)
            got: list[int] = []
            errors: list[BaseException] = []
            waiting = threading.Event()

            def read() -> None:
                try:
                    for _ in range(3):
                        waiting.set()
                        g.next(timeout=30)
                        got.append(g.offset())
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            t = threading.Thread(target=read)
            t.start()
            waiting.wait(10)
            for _ in range(3):
                _commit(writer, "a")
            t.join(60)
            assert not t.is_alive()
            # The injected failure surfaced once (in the watcher, or in the reader's own refresh), then both
            # went on: every commit arrived.
            assert failures == [1]
            assert got == [1, 2, 3] or (len(errors) == 1 and isinstance(errors[0], OSError)), (got, errors)


def test_an_initializer_that_dies_before_it_publishes_leaves_the_next_opener_first(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path) as writer:
        _commit(writer, "a", 3)
        store_id = writer._log.store_id
    dead = Control.join(FileIO(), str(path), store_id, slot_flags(False, "fsync"), hold=True)
    assert dead.first and dead.word(STATE_AT) == STATE_INITIALIZING  # not ready while it recovers
    dead.close(clear_slot=False)  # dies: the kernel drops its locks; the state stays INITIALIZING
    with logstore.open(path, readonly=True) as reader:
        assert reader._control is not None and reader._control.first  # it initialized the file anew
        assert reader.global_head == 3
        with logstore.open(path) as writer:
            _commit(writer, "a")
            assert reader.global_head == 4


def test_a_follower_reads_a_segment_that_compaction_replaced_after_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=SMALL, checkpoint_bytes=1 << 30) as writer:
        _commit(writer, "keep")
        with logstore.open(path, readonly=True, segment_size=SMALL) as reader:
            for _ in range(400):
                with writer.transaction() as tx:
                    tx.append("gone", logstore.ANY, [Envelope.new("E", {"p": "x" * 200})])
                    tx.append("keep", logstore.ANY, [Envelope.new("E", {"p": "y" * 100})])
            assert reader.global_head == writer.global_head  # caught up: positions of sealed segments in memory
            writer.truncate_stream("gone", 400)
            report = writer.compact()
            assert report.erased
            _commit(writer, "keep")  # publishes after the compaction's checkpoint
            with reader.global_stream(0) as g:
                seen = [(g.stream_name(), g.stream_offset()) for _ in iter(g.try_next, False)]
            assert seen == [("keep", k) for k in range(402)]
            with writer.global_stream(0) as w:
                assert [(w.stream_name(), w.stream_offset()) for _ in iter(w.try_next, False)] == seen


def test_a_catch_up_that_fails_midway_shows_the_whole_transactions_it_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=SMALL) as writer:
        _commit(writer, "a")
        with logstore.open(path, readonly=True, segment_size=SMALL) as reader:
            follower = reader._follower
            assert follower is not None
            while writer._log.active.first == 0:  # roll: the catch-up opens the next segment
                _commit(writer, "a", pad=1000)
            head = writer.global_head

            def no_more(self: Follower, first: int) -> object:
                raise OSError(24, "Too many open files (injected)")

            monkeypatch.setattr(Follower, "_open_next", no_more)
            with pytest.raises(OSError, match="injected"):
                follower.refresh()
            applied = reader._log.next_goff
            assert 1 < applied < head
            assert reader._pub.visible_end == applied  # what it applied is readable, not held back
            monkeypatch.undo()
            assert reader.global_head == head
