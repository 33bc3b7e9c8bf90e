"""A writer that has its store to itself: it takes no lock of ``CONTROL`` per commit until another opener asks to
join, then shares the store like any writer (logstore/embedded/alone.py).

Writers in other processes are tests/processes/writer_child.py, as in test_writers.py; the opens of one process
use the store directly. No sleeps: an open that must wait for the lone writer returns only once it was let in.
"""

from __future__ import annotations

import errno
import signal
import threading
from pathlib import Path

import pytest

import logstore
from logstore.embedded.controlfile import INTENT_AT
from logstore.errors import StoreFailedError
from tests.faultfs import FailingIO
from tests.processes import test_writers
from tests.processes.test_writers import Spawn, assert_clean, msg, opened, read_all

spawn = test_writers.spawn  # the writer processes' fixture

NEVER = "lock.after:1000000:CONTROL"
"""A kill point that is never reached: the process only counts its lock calls on ``CONTROL``."""


def locks(proc: object) -> int:
    return int(proc.call("kill_counts")["sites"]["lock"])  # type: ignore[attr-defined]


def test_a_lone_writer_takes_no_lock_per_commit_until_another_process_joins(store_dir: Path, spawn: Spawn) -> None:
    a = spawn("a", env={"LOGSTORE_KILL_AT": NEVER})
    a.call("open", path=str(store_dir), options={})
    before = locks(a)
    for i in range(3):
        assert a.call("commit", appends=[["a", i, [msg("a", i)]]])["range"] == [i, i + 1]
    assert locks(a) == before, "a writer alone took locks on CONTROL in its commits"

    b = opened(spawn, store_dir, "b")  # returns once a let it in
    assert b.call("commit", appends=[["b", 0, [msg("b", 0)]]])["range"] == [3, 4]
    before = locks(a)
    assert a.call("commit", appends=[["a", 3, [msg("a", 3)]]])["range"] == [4, 5]
    # durability="fsync": the write lock for the turn, then the flush lock for the sync after it.
    assert locks(a) - before == 2, "a writer that let another in must take the write and flush locks"
    assert a.call("commit", appends=[["a", 4, [msg("a", 4)]]])["range"] == [5, 6]
    assert b.call("commit", appends=[["b", 1, [msg("b", 1)]]])["range"] == [6, 7]
    # Offsets are checked across the two processes from the first shared turn on.
    assert b.call("commit", appends=[["a", 4, [msg("b", 9)]]])["raised"] == "OffsetConflictError"
    a.stop()
    b.stop()
    log, streams = read_all(store_dir)
    assert [(r[0], r[1], r[2]) for r in log] == [
        (0, "a", 0),
        (1, "a", 1),
        (2, "a", 2),
        (3, "b", 0),
        (4, "a", 3),
        (5, "a", 4),
        (6, "b", 1),
    ]
    assert [r[2] for r in streams["a"]] == [0, 1, 2, 3, 4]
    assert_clean(store_dir)


def test_a_lone_writer_killed_leaves_the_next_opener_first_with_every_acknowledged_commit(
    store_dir: Path, spawn: Spawn
) -> None:
    a = opened(spawn, store_dir, "a")
    for i in range(5):
        a.call("commit", appends=[["a", i, [msg("a", i)]]])
    a.popen.send_signal(signal.SIGKILL)
    assert a.died() == -signal.SIGKILL
    with logstore.open(store_dir) as store:
        assert store._control is not None and store._control.first
        assert store.head("a") == 5
        assert _commit(store, "a", 5) == range(5, 6)
    log, _ = read_all(store_dir)
    assert [(r[0], r[1], r[2]) for r in log] == [(i, "a", i) for i in range(6)]
    assert_clean(store_dir)


def _commit(store: logstore.Store, stream: str, offset: int) -> range:
    with store.transaction() as tx:
        store.append_messages(tx, stream, offset, [logstore.Envelope.new("T", {"i": offset})])
    assert tx.global_offsets is not None
    return tx.global_offsets


def test_a_second_open_in_the_same_process_is_let_in(store_dir: Path) -> None:
    first = logstore.open(store_dir)
    try:
        for i in range(3):
            _commit(first, "one", i)
        asks = first._control.join_asks
        assert asks is not None
        asked = asks.value
        assert first._writer.sharing is None
        with logstore.open(store_dir) as second:
            assert asks.value != asked, "the second open came in without asking"
            assert first._writer.sharing is not None
            assert second.head("one") == 3
            _commit(second, "two", 0)
            assert first.head("two") == 1  # the first sees the second's commit
            _commit(first, "one", 3)
            assert second.head("one") == 4
    finally:
        first.close()
    with logstore.open(store_dir) as store:
        assert [store.head("one"), store.head("two")] == [4, 1]
    assert_clean(store_dir)


def test_a_failed_lone_writer_lets_an_opener_in_which_cuts_what_it_left(store_dir: Path) -> None:
    io = FailingIO("fdatasync", errno.EIO)
    failed = logstore.open(store_dir, io=io)
    try:
        _commit(failed, "s", 0)
        io.armed.set()
        with pytest.raises(StoreFailedError):
            _commit(failed, "s", 1)  # written, never synced nor published
        with logstore.open(store_dir) as other:
            assert other._control is not None and not other._control.first
            assert other._control.word(INTENT_AT) != 0
            assert other.head("s") == 1
            _commit(other, "s", 1)  # its first turn cuts what the failed writer left past the tail
            assert other.head("s") == 2
    finally:
        with pytest.raises(StoreFailedError):
            failed.close()
    log, _ = read_all(store_dir)
    assert [(r[0], r[1], r[2], r[3]["i"]) for r in log] == [(0, "s", 0, 0), (1, "s", 1, 1)]
    assert list((store_dir / "lost+found").glob("*.json")), "the cut bytes must be kept in lost+found"
    assert_clean(store_dir)


def test_a_read_only_opener_in_another_thread_is_let_in_and_follows(store_dir: Path) -> None:
    first = logstore.open(store_dir)
    try:
        _commit(first, "s", 0)
        seen: list[object] = []
        done = threading.Event()

        def follow() -> None:
            try:
                with logstore.open(store_dir, readonly=True) as ro, ro.stream("s", 0) as reader:
                    for _ in range(2):
                        reader.next(timeout=30)
                        seen.append(reader.get().message["i"])
                        if len(seen) == 1:
                            _commit(first, "s", 1)  # from this thread: the first store shares by now
            except BaseException as exc:  # noqa: BLE001 - reported below
                seen.append(exc)
            done.set()

        t = threading.Thread(target=follow)
        t.start()
        assert done.wait(60), "a read-only opener was never let in, or never saw the next commit"
        t.join()
        assert seen == [0, 1]
    finally:
        first.close()


class _Queue(list):  # type: ignore[type-arg]
    """The writer's queue, telling each append (the test waits for the items it expects to be queued)."""

    def __init__(self) -> None:
        super().__init__()
        self.appended = threading.Condition()

    def append(self, item: object) -> None:
        with self.appended:
            super().append(item)
            self.appended.notify_all()

    def wait_for(self, n: int) -> bool:
        with self.appended:
            return self.appended.wait_for(lambda: len(self) >= n, timeout=30)


def test_a_commit_in_the_turn_that_lets_others_in_is_written_and_acknowledged(store_dir: Path) -> None:
    """The call that lets an opener in and a commit queued behind it run in one turn of the writer role; the
    commit is written as the store alone writes (synced in the turn), and the switch comes at the turn's end."""
    first = logstore.open(store_dir)
    try:
        _commit(first, "s", 0)
        writer = first._writer
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            assert release.wait(30)

        holder = threading.Thread(target=writer.call, args=(hold,))
        holder.start()
        assert held.wait(30)
        queue = _Queue()
        writer._queue = queue  # the role is held: nothing swaps the queue out until it is passed on
        joined: list[object] = []
        joiner = threading.Thread(target=lambda: joined.append(logstore.open(store_dir, readonly=True)))
        joiner.start()
        assert queue.wait_for(1), "the opener's ask never queued the call that lets it in"
        committed: list[range] = []
        committer = threading.Thread(target=lambda: committed.append(_commit(first, "s", 1)))
        committer.start()
        assert queue.wait_for(2)
        release.set()
        for t in (holder, committer, joiner):
            t.join(30)
            assert not t.is_alive(), "a thread hangs: the commit or the opener was never let through"
        assert committed == [range(1, 2)]
        assert first._writer.sharing is not None
        (ro,) = joined
        assert isinstance(ro, logstore.Store)
        try:
            assert ro.head("s") == 2
        finally:
            ro.close()
        assert _commit(first, "s", 2) == range(2, 3)  # a shared turn now
    finally:
        first.close()
    assert_clean(store_dir)
