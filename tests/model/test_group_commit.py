"""The embedded writer's group commit: who writes a group, and committers interrupted while they wait.

The store's I/O layer holds a ``pwrite`` until the test releases it, so the queue behind the leader
is known; threads are synchronised with Events only. What every backend does under concurrent
commits and readers is in tests/contract/test_concurrency.py.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

import logstore
from logstore import Envelope
from tests.helpers import commit

WAIT = 20.0  # upper bound for anything that should happen promptly; reached only if the engine hangs


class HoldingIO(logstore.FileIO):
    """Plain I/O that records which thread made each ``pwrite``, can hold one ``pwrite`` until released,
    and sets ``synced`` at each ``fdatasync``."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.hold_next = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        self.synced = threading.Event()

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self.synced.set()

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self.hold_next.is_set():
            self.hold_next.clear()
            self.holding.set()
            assert self.release.wait(WAIT), "the held pwrite was never released"
        self.writes.append(threading.current_thread().name)
        return super().pwrite(fd, data, offset)


class SignallingList(list[Any]):
    """A list that sets an event at each append (the writer's queue, watched by a test)."""

    def __init__(self) -> None:
        super().__init__()
        self.appended = threading.Event()

    def append(self, item: Any) -> None:
        super().append(item)
        self.appended.set()


def test_a_lone_commit_is_written_by_its_own_thread(store_dir):
    io = HoldingIO()
    with logstore.open(store_dir, io=io) as store:
        before = len(io.writes)
        commit(store, "solo", 0, [Envelope.new("E", 1)])
        assert io.writes[before:] == [threading.current_thread().name]


def test_commits_queued_behind_a_leader_are_led_by_the_oldest_waiter_as_one_group(store_dir):
    """The leader writes its own group only; the transactions that queued meanwhile go out together,
    written by the thread of the first of them, and every commit gets its own range."""
    io = HoldingIO()
    with logstore.open(store_dir, io=io) as store:
        results: dict[str, range] = {}
        errors: list[BaseException] = []

        def run(name: str) -> None:
            threading.current_thread().name = name
            try:
                results[name] = commit(store, name, 0, [Envelope.new("E", name)])
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        io.hold_next.set()
        leader = threading.Thread(target=run, args=("leader",))
        leader.start()
        assert io.holding.wait(WAIT)  # the leader is inside its pwrite, holding the writer role
        before = len(io.writes)
        writer = store._writer
        queue = SignallingList()
        with writer._cv:
            assert writer._busy and not writer._queue
            writer._queue = queue  # the list the followers queue on while the leader holds the role
        followers = [threading.Thread(target=run, args=(f"follower-{k}",)) for k in range(3)]
        for t in followers:
            queue.appended.clear()
            t.start()
            assert queue.appended.wait(WAIT), "a follower never queued"  # so the queue order is known
        io.release.set()
        for t in (leader, *followers):
            t.join(WAIT)
            assert not t.is_alive()
        assert not errors, errors
        # One pwrite for the leader's group, then one for the three queued transactions, by the oldest waiter.
        assert io.writes[before:] == ["leader", "follower-0"]
        assert results["leader"] == range(1)
        assert sorted(results[f"follower-{k}"].start for k in range(3)) == [1, 2, 3]
        assert results["follower-0"] == range(1, 2)
        assert store.global_head == 4


def _commit_in_thread(store: logstore.Store, stream: str, offset: int, envs: list[Envelope]) -> threading.Event:
    """Commit from a daemon thread; the event is set once the commit returned."""
    returned = threading.Event()

    def run() -> None:
        commit(store, stream, offset, envs)
        returned.set()

    threading.Thread(target=run, daemon=True).start()
    return returned


def test_a_committer_interrupted_while_it_waits_leaves_the_store_working(store_dir):
    """KeyboardInterrupt in a thread waiting behind a leader: the caller gets it, its transaction is still
    written in its turn, the writer role is never handed to it, and later commits go through."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")  # pytest runs tests in the main thread
    io = HoldingIO()
    with logstore.open(store_dir, io=io) as store:
        io.hold_next.set()
        leader = threading.Thread(target=commit, args=(store, "leader", 0, [Envelope.new("E", 0)]))
        leader.start()
        assert io.holding.wait(WAIT)
        writer = store._writer
        queue = SignallingList()
        with writer._cv:
            writer._queue = queue

        # CPython looks for a signal before a lock wait blocks, not while: a SIGINT that lands between
        # that look and the wait is seen only at the wait's next wake-up. So the signal is sent until
        # the handler has run, and the handler raises KeyboardInterrupt once (later ones do nothing).
        interrupted = threading.Event()

        def raise_once(_signum: int, _frame: Any) -> None:
            if not interrupted.is_set():
                interrupted.set()
                raise KeyboardInterrupt

        def interrupt_when_queued() -> None:
            assert queue.appended.wait(WAIT)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                if interrupted.wait(0.05):
                    break

        previous = signal.signal(signal.SIGINT, raise_once)
        try:
            interrupter = threading.Thread(target=interrupt_when_queued)
            interrupter.start()
            with pytest.raises(KeyboardInterrupt):
                commit(store, "main", 0, [Envelope.new("E", "main")])
            interrupter.join(WAIT)
        finally:
            signal.signal(signal.SIGINT, previous)
        io.release.set()
        leader.join(WAIT)
        assert not leader.is_alive()
        # The interrupted transaction was written after all (its caller no longer waited for it) ...
        assert _commit_in_thread(store, "later", 0, [Envelope.new("E", "later")]).wait(WAIT), (
            "a commit after the interrupt hung"
        )
        assert store.head("main") == 1 and store.head("leader") == 1 and store.head("later") == 1
        assert commit(store, "main", 1, [Envelope.new("E", "again")]) == range(3, 4)


def _messages(path: Any, stream: str) -> list[Any]:
    with logstore.open(path) as store:
        reader, _found = store.open_stream(store, stream, 0)
        with reader:
            return [env.message for env in reader]


def test_a_committer_interrupted_as_it_takes_the_writer_role_hands_it_to_the_writer_thread(store_dir):
    """KeyboardInterrupt in a lone committer right after it took the writer role, before it took the
    queue: the caller gets the interrupt, the role goes to the writer thread, which writes the
    transaction in its turn, and later commits and the close go through."""
    store = logstore.open(store_dir)
    writer = store._writer
    lead = writer._lead

    def interrupted(*args: Any) -> None:
        writer._lead = lead  # once
        raise KeyboardInterrupt

    writer._lead = interrupted
    with pytest.raises(KeyboardInterrupt):
        commit(store, "main", 0, [Envelope.new("E", "first")])
    if not _commit_in_thread(store, "later", 0, [Envelope.new("E", "later")]).wait(WAIT):
        pytest.fail("a commit after the interrupt hung")  # the store is left open: its close would hang too
    store.close()
    assert _messages(store_dir, "main") == ["first"]
    assert _messages(store_dir, "later") == ["later"]


def test_a_committer_interrupted_as_it_is_handed_the_writer_role_hands_it_to_the_writer_thread(store_dir):
    """KeyboardInterrupt in a waiting committer just as the leader before it handed it the role: the
    role goes to the writer thread, which writes the transaction, and nothing hangs."""
    io = HoldingIO()
    store = logstore.open(store_dir, io=io)
    writer = store._writer
    io.hold_next.set()
    leader = threading.Thread(target=commit, args=(store, "leader", 0, [Envelope.new("E", 0)]), daemon=True)
    leader.start()
    assert io.holding.wait(WAIT)
    queue = SignallingList()
    with writer._cv:
        writer._queue = queue
    lead = writer._lead
    main = threading.current_thread()

    def interrupted(*args: Any) -> None:
        if threading.current_thread() is main:
            writer._lead = lead  # once
            raise KeyboardInterrupt
        lead(*args)

    writer._lead = interrupted

    def release_when_queued() -> None:
        assert queue.appended.wait(WAIT)
        io.release.set()

    threading.Thread(target=release_when_queued, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        commit(store, "main", 0, [Envelope.new("E", "main")])
    leader.join(WAIT)
    assert not leader.is_alive()
    if not _commit_in_thread(store, "later", 0, [Envelope.new("E", "later")]).wait(WAIT):
        pytest.fail("a commit after the interrupt hung")  # the store is left open: its close would hang too
    store.close()
    assert _messages(store_dir, "main") == ["main"]
    assert _messages(store_dir, "leader") == [0]
    assert _messages(store_dir, "later") == ["later"]


def test_batch_mode_syncs_when_the_interval_ran_out_while_the_role_was_held(store_dir):
    """durability="batch": when the fsync interval runs out while a thread holds the writer role, the
    writer thread, waiting out the interval, is woken when the role is released and syncs then."""
    io = HoldingIO()
    store = logstore.open(store_dir, io=io, durability="batch", fsync_interval=3600.0)
    writer = store._writer
    cv_wait = writer._cv.wait
    timing = threading.Event()

    def wait(timeout: float | None = None) -> bool:
        if writer._timing:
            timing.set()
        return cv_wait(timeout)

    writer._cv.wait = wait  # type: ignore[method-assign]
    io.synced.clear()
    commit(store, "s", 0, [Envelope.new("E", 1)])  # unsynced: the writer thread starts timing the fsync
    assert timing.wait(WAIT)
    assert not io.synced.is_set()

    def run_out() -> None:  # the interval runs out while this thread holds the role
        writer._last_sync -= 7200.0

    writer.call(run_out)
    assert io.synced.wait(WAIT), "the overdue fsync did not happen"
    store.close()
