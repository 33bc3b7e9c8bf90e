"""Concurrent writers and readers, on every backend: conflicts, ordering, blocking reads, waking, asyncio.

Threads are synchronised with Events and Barriers only. Where a test checks that
``next()`` is really blocked, it joins the reader thread with a short timeout and
asserts that the thread is still waiting; that is an assertion, not a sleep.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope
from tests.contract.backends import OpenStore
from tests.helpers import SMALL_SEGMENT, commit, drain

DURABILITIES = ["fsync", "batch", "none"]
PAD = "p" * 1000  # makes the tests below fill several 64 KiB segments while readers read
WAIT = 20.0  # upper bound for anything that should happen promptly; reached only if the engine hangs


@pytest.fixture
def open_at(open_store: OpenStore) -> OpenStore:
    """``open_at(durability)``: the test's store on the backend under test (small segments where there are files)."""

    def open_at(durability: str = "fsync") -> Any:
        return open_store(durability=durability, fsync_interval=0.005, segment_size=SMALL_SEGMENT)

    return open_at


def assert_segments_rolled(store: Any, store_dir: Path) -> None:
    """A store directory's log filled several segments while the threads ran (a database has no segments)."""
    if isinstance(store, logstore.Store):
        assert len(list((store_dir / "segments").glob("*.log"))) > 1


def run_thread(target: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``target(*args)`` in a daemon thread; its return value or exception lands in the dict."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict[str, Any]) -> Any:
    thread.join(WAIT)
    assert not thread.is_alive(), "thread did not finish"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def start_blocked_next(reader: Any, timeout: float = WAIT) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``reader.next()`` in a thread and check that it is waiting; the result is (offset, envelope)."""
    entering = threading.Event()

    def call() -> tuple[int, Envelope]:
        entering.set()
        reader.next(timeout=timeout)
        return reader.offset(), reader.get()

    thread, result = run_thread(call)
    assert entering.wait(WAIT)
    thread.join(0.05)
    assert thread.is_alive(), f"next() did not block: {result}"
    return thread, result


# -- (a) concurrent committers with conflicts ----------------------------------------------------


@dataclass
class Attempt:
    thread: int
    round: int
    shared: str
    shared_head: int
    messages: list[tuple[str, int, Envelope]]
    result: range | None = None
    conflict: logstore.OffsetConflictError | None = None
    other: BaseException | None = None


@dataclass
class Outcome:
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def successes(self) -> list[Attempt]:
        return [a for a in self.attempts if a.result is not None]


def check_log_against_commits(store: logstore.Store, attempts: list[Attempt]) -> None:
    """The store holds exactly the successful attempts' messages, at the offsets their commits returned."""
    successes = [a for a in attempts if a.result is not None]
    failed_ids = {e.message_id for a in attempts if a.result is None for _, _, e in a.messages}
    # The commit ranges are disjoint and together are 0 .. N-1.
    ranges = sorted((a.result for a in successes), key=lambda r: r.start)
    total = sum(len(r) for r in ranges)
    assert [g for r in ranges for g in r] == list(range(total))
    assert store.global_head == total
    # Reading the global stream yields each transaction's messages together, in its range.
    with store.open_global(store, 0) as glob:
        every = drain(glob)
    assert [g for g, _ in every] == list(range(total))
    for a in successes:
        assert len(a.result) == len(a.messages)
        assert [every[g][1] for g in a.result] == [e for _, _, e in a.messages]
    assert not failed_ids & {e.message_id for _, e in every}, "a conflicting transaction left messages behind"
    # Every stream holds its offsets 0 .. head-1 once each, in global order.
    by_stream: dict[str, list[tuple[int, int, Envelope]]] = {}
    for a in successes:
        for (name, offset, env), g in zip(a.messages, a.result, strict=True):
            by_stream.setdefault(name, []).append((g, offset, env))
    assert sorted(store.stream_names()) == sorted(by_stream)
    for name, entries in by_stream.items():
        entries.sort()
        assert [off for _, off, _ in entries] == list(range(len(entries))), f"{name}: offsets not in global order"
        reader, found = store.open_stream(store, name, 0)
        assert found is True
        with reader:
            assert drain(reader) == [(off, env) for _, off, env in entries]
        assert store.head(name) == len(entries)


THREADS = 8
ROUNDS = 20
SHARED = ("shared-a", "shared-b")


@pytest.mark.parametrize("durability", DURABILITIES)
def test_concurrent_commits_in_lockstep_raise_every_conflict(open_at, store_dir, durability):
    """In each round every thread reads the heads, then all append and commit at once.

    Threads on the same shared stream all saw the same head, so exactly one of
    them commits and every other one gets OffsetConflictError (at append or at
    commit); their private appends are not written either.
    """
    store = open_at(durability)
    barrier = threading.Barrier(THREADS, timeout=WAIT)
    outcomes = [Outcome() for _ in range(THREADS)]
    crashes: list[BaseException] = []

    def worker(t: int) -> None:
        private = f"private-{t}"
        try:
            for rnd in range(ROUNDS):
                shared = SHARED[(t + rnd) % 2]
                shared_head, private_head = store.head(shared), store.head(private)
                private_batch = [
                    Envelope.new("Private", {"t": t, "round": rnd, "k": k, "pad": PAD}) for k in range(1 + t % 2)
                ]
                shared_env = Envelope.new("Shared", {"t": t, "round": rnd, "seen": shared_head, "pad": PAD})
                attempt = Attempt(
                    t,
                    rnd,
                    shared,
                    shared_head,
                    [(private, private_head + k, e) for k, e in enumerate(private_batch)]
                    + [(shared, shared_head, shared_env)],
                )
                barrier.wait()
                tx, committer = store.begin_tx()
                try:
                    store.append_messages(tx, private, private_head, private_batch)
                    store.append_messages(tx, shared, shared_head, [shared_env])
                    attempt.result = committer.commit()
                except logstore.OffsetConflictError as exc:
                    committer.rollback()
                    attempt.conflict = exc
                except BaseException as exc:  # noqa: BLE001 - counted as a failure of the test
                    attempt.other = exc
                outcomes[t].attempts.append(attempt)
                barrier.wait()
        except BaseException as exc:  # noqa: BLE001
            crashes.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(4 * WAIT)
    assert not any(th.is_alive() for th in threads)
    assert crashes == []
    attempts = [a for o in outcomes for a in o.attempts]
    # Every attempt either committed or raised OffsetConflictError: nothing else, nothing both.
    assert len(attempts) == THREADS * ROUNDS
    assert [a.other for a in attempts if a.other is not None] == []
    assert all((a.result is None) != (a.conflict is None) for a in attempts)
    for rnd in range(ROUNDS):
        for shared in SHARED:
            contenders = [a for a in attempts if a.round == rnd and a.shared == shared]
            winners = [a for a in contenders if a.result is not None]
            assert len(winners) == 1, f"round {rnd} {shared}: {len(winners)} commits from one head"
            for a in contenders:
                if a.conflict is not None:
                    err = a.conflict
                    assert (err.stream, err.given, err.expected) == (shared, a.shared_head, a.shared_head + 1)
    successes = sum(len(o.successes) for o in outcomes)
    conflicts = sum(a.conflict is not None for a in attempts)
    assert successes + conflicts == len(attempts)
    assert successes == ROUNDS * len(SHARED)
    check_log_against_commits(store, attempts)
    # Each thread's commits are in its own order in the global log.
    for o in outcomes:
        starts = [a.result.start for a in o.successes]
        assert starts == sorted(starts)
    store.close()
    assert_segments_rolled(store, store_dir)
    with open_at(durability) as again:
        check_log_against_commits(again, attempts)


PER_THREAD = 20


@pytest.mark.parametrize("durability", DURABILITIES)
def test_concurrent_commits_with_retry_lose_no_update(open_at, store_dir, durability):
    """Threads increment one shared counter stream with retries; no increment is lost or duplicated."""
    store = open_at(durability)
    start = threading.Barrier(THREADS, timeout=WAIT)
    outcomes = [Outcome() for _ in range(THREADS)]

    def worker(t: int) -> None:
        start.wait()
        done = 0
        while done < PER_THREAD:
            head = store.head("counter")
            private_head = store.head(f"own-{t}")
            env = Envelope.new("Incremented", {"t": t, "n": done, "value": head + 1, "pad": PAD})
            own = Envelope.new("Did", {"t": t, "n": done})
            attempt = Attempt(t, done, "counter", head, [(f"own-{t}", private_head, own), ("counter", head, env)])
            outcomes[t].attempts.append(attempt)
            tx, committer = store.begin_tx()
            try:
                store.append_messages(tx, f"own-{t}", private_head, [own])
                store.append_messages(tx, "counter", head, [env])
                attempt.result = committer.commit()
            except logstore.OffsetConflictError as exc:
                committer.rollback()
                attempt.conflict = exc
                continue
            done += 1

    def follow() -> list[int]:
        # Reads the counter while it is written (its many runs move to their own index meanwhile).
        reader, _ = store.open_stream(store, "counter", 0)
        with reader:
            values = []
            for _ in range(THREADS * PER_THREAD):
                reader.next(timeout=WAIT)
                values.append(reader.get().message["value"])
            return values

    follower = run_thread(follow)
    threads = [run_thread(worker, t) for t in range(THREADS)]
    for th, result in threads:
        finish(th, result)
    assert finish(*follower) == list(range(1, THREADS * PER_THREAD + 1))
    attempts = [a for o in outcomes for a in o.attempts]
    assert all((a.result is None) != (a.conflict is None) for a in attempts)
    assert sum(a.result is not None for a in attempts) == THREADS * PER_THREAD
    for a in attempts:
        if a.conflict is not None:
            assert a.conflict.stream == "counter"
            assert a.conflict.given == a.shared_head
            assert a.conflict.expected > a.shared_head
    check_log_against_commits(store, attempts)
    with store.open_stream(store, "counter", 0)[0] as counter:
        values = [env.message["value"] for env in counter]
    assert values == list(range(1, THREADS * PER_THREAD + 1))
    for t in range(THREADS):
        assert store.head(f"own-{t}") == PER_THREAD
    store.close()
    assert_segments_rolled(store, store_dir)
    with open_at(durability) as again:
        check_log_against_commits(again, attempts)


@pytest.mark.parametrize("durability", DURABILITIES)
def test_store_close_during_concurrent_commits_keeps_every_acknowledged_commit(open_at, durability):
    """Commits racing close() either are acknowledged and kept, or raise StoreClosedError and write nothing."""
    store = open_at(durability)
    acknowledged = threading.Semaphore(0)
    outcomes = [Outcome() for _ in range(4)]

    def worker(t: int) -> None:
        name = f"w{t}"
        n = 0
        while True:
            env = Envelope.new("Racing", {"t": t, "n": n, "pad": PAD})
            attempt = Attempt(t, n, name, n, [(name, n, env)])
            outcomes[t].attempts.append(attempt)
            try:
                tx, committer = store.begin_tx()
                store.append_messages(tx, name, n, [env])
                attempt.result = committer.commit()
            except logstore.StoreClosedError:
                return
            n += 1
            acknowledged.release()

    threads = [run_thread(worker, t) for t in range(4)]
    for _ in range(40):
        assert acknowledged.acquire(timeout=WAIT)
    store.close()
    for th, result in threads:
        finish(th, result)
    attempts = [a for o in outcomes for a in o.attempts]
    assert sum(a.result is not None for a in attempts) >= 40
    with open_at(durability) as again:
        check_log_against_commits(again, attempts)


# -- (b) blocked readers see every commit once, in order -------------------------------------------


def make_plan(seed: int, streams: tuple[str, ...], count: int) -> list[list[tuple[str, int]]]:
    """``count`` transactions, each a list of (stream, number of messages) appends."""
    rng = random.Random(seed)
    plan = []
    for _ in range(count):
        names = rng.sample(streams, rng.randint(1, len(streams)))
        plan.append([(name, rng.randint(1, 3)) for name in names])
    return plan


@pytest.mark.parametrize("durability", DURABILITIES)
def test_blocked_readers_each_see_every_commit_once_in_order(open_at, durability):
    store = open_at(durability)
    owners = {0: ("a", "b"), 1: ("c", "d")}
    plans = {w: make_plan(w, names, 25) for w, names in owners.items()}
    counts: dict[str, int] = {}
    for plan in plans.values():
        for tx_plan in plan:
            for name, n in tx_plan:
                counts[name] = counts.get(name, 0) + n
    total = sum(counts.values())

    readers: dict[str, Any] = {name: store.open_stream(store, name, 0)[0] for name in counts}
    readers["*global*"] = store.open_global(store, 0)
    want = {**counts, "*global*": total}
    ready = {name: threading.Event() for name in readers}

    def read(name: str) -> list[tuple[int, Envelope]]:
        reader = readers[name]
        got = []
        ready[name].set()
        for _ in range(want[name]):
            reader.next(timeout=WAIT)
            got.append((reader.offset(), reader.get()))
        assert reader.try_next() is False
        return got

    reader_threads = {name: run_thread(read, name) for name in readers}
    for event in ready.values():
        assert event.wait(WAIT)

    def write(w: int) -> list[tuple[range, list[tuple[str, int, Envelope]]]]:
        heads = dict.fromkeys(owners[w], 0)
        done = []
        for i, tx_plan in enumerate(plans[w]):
            tx, committer = store.begin_tx()
            messages = []
            for name, n in tx_plan:
                batch = [Envelope.new("W", {"w": w, "tx": i, "k": k, "pad": PAD}) for k in range(n)]
                store.append_messages(tx, name, heads[name], batch)
                messages += [(name, heads[name] + k, e) for k, e in enumerate(batch)]
                heads[name] += n
            done.append((committer.commit(), messages))
        return done

    writers = [run_thread(write, w) for w in owners]
    committed = [c for th, result in writers for c in finish(th, result)]
    got = {name: finish(*reader_threads[name]) for name in readers}

    by_global = sorted(
        (g, name, off, env) for r, msgs in committed for g, (name, off, env) in zip(r, msgs, strict=True)
    )
    assert [g for g, *_ in by_global] == list(range(total))
    assert got["*global*"] == [(g, env) for g, _, _, env in by_global]
    for name, count in counts.items():
        assert got[name] == [(off, env) for _, n, off, env in by_global if n == name]
        assert [off for off, _ in got[name]] == list(range(count))
    for reader in readers.values():
        reader.close()
    store.close()


@pytest.mark.parametrize("durability", DURABILITIES)
def test_readers_only_ever_see_whole_transactions(open_at, durability):
    """A reader that has drained what is visible always stops at a transaction boundary."""
    store = open_at(durability)
    rng = random.Random(3)
    plan = [[("a", rng.randint(1, 4)), ("b", rng.randint(1, 3)), ("a", rng.randint(1, 2))] for _ in range(40)]
    global_bounds, a_bounds = {0}, {0}
    g = a = 0
    for tx_plan in plan:
        for name, n in tx_plan:
            g += n
            a += n if name == "a" else 0
        global_bounds.add(g)
        a_bounds.add(a)

    def watch(reader: Any, end: int, ready: threading.Event) -> list[int]:
        seen, stops = 0, []
        ready.set()
        while seen < end:
            reader.next(timeout=WAIT)
            seen += 1
            while reader.try_next():
                seen += 1
            stops.append(seen)
        return stops

    glob = store.open_global(store, 0)
    stream_a, _ = store.open_stream(store, "a", 0)
    ready = [threading.Event(), threading.Event()]
    watchers = [run_thread(watch, glob, g, ready[0]), run_thread(watch, stream_a, a, ready[1])]
    for event in ready:
        assert event.wait(WAIT)
    heads = {"a": 0, "b": 0}
    for tx_plan in plan:
        tx, committer = store.begin_tx()
        for name, n in tx_plan:
            store.append_messages(tx, name, heads[name], [Envelope.new("X", k) for k in range(n)])
            heads[name] += n
        committer.commit()
    global_stops = finish(*watchers[0])
    a_stops = finish(*watchers[1])
    assert set(global_stops) <= global_bounds, sorted(set(global_stops) - global_bounds)
    assert set(a_stops) <= a_bounds, sorted(set(a_stops) - a_bounds)
    assert global_stops[-1] == g
    assert a_stops[-1] == a
    glob.close()
    stream_a.close()
    store.close()


# -- (c) waking and timeouts -----------------------------------------------------------------------


def open_reader(store: logstore.Store, kind: str) -> Any:
    if kind == "stream":
        return store.open_stream(store, "s", 0)[0]
    return store.open_global(store, 0)


@pytest.mark.parametrize("kind", ["stream", "global"])
@pytest.mark.parametrize("durability", DURABILITIES)
def test_next_wakes_on_a_commit_from_another_thread(open_at, durability, kind):
    with open_at(durability) as store:
        reader = open_reader(store, kind)
        for i in range(3):
            thread, result = start_blocked_next(reader)
            batch = [Envelope.new("Woke", i)]
            assert commit(store, "s", i, batch) == range(i, i + 1)
            assert finish(thread, result) == (i, batch[0])
        reader.close()


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_next_with_a_timeout_raises_timeout_error_when_nothing_comes(open_at, kind):
    with open_at() as store:
        commit(store, "s", 0, [Envelope.new("First", 0)])
        reader = open_reader(store, kind)
        reader.next(timeout=1)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            reader.next(timeout=0.05)
        assert time.monotonic() - started >= 0.05
        with pytest.raises(TimeoutError):
            reader.next(timeout=0)
        # The stream stays where it was and goes on when a message comes.
        assert reader.offset() == 0
        commit(store, "other", 0, [Envelope.new("Elsewhere", 0)])
        if kind == "stream":
            with pytest.raises(TimeoutError):
                reader.next(timeout=0.05)  # a commit to another stream is not for this one
        else:
            reader.next(timeout=1)
            assert reader.get().type == "Elsewhere"
        batch = [Envelope.new("Second", 1)]
        commit(store, "s", 1, batch)
        reader.next(timeout=0.05)
        assert reader.get() == batch[0]
        reader.close()


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_close_from_another_thread_wakes_a_blocked_next(open_at, kind):
    with open_at() as store:
        reader = open_reader(store, kind)
        thread, result = start_blocked_next(reader)
        closer = threading.Thread(target=reader.close)
        closer.start()
        closer.join(WAIT)
        with pytest.raises(logstore.StreamClosedError):
            finish(thread, result)
        # The store is unaffected.
        assert commit(store, "s", 0, [Envelope.new("After", 0)]) == range(1)


def test_closing_one_stream_does_not_wake_another(open_at):
    with open_at() as store:
        waiting, _ = store.open_stream(store, "s", 0)
        other, _ = store.open_stream(store, "s", 0)
        thread, result = start_blocked_next(waiting)
        other.close()
        thread.join(0.05)
        assert thread.is_alive(), f"closing another stream ended next(): {result}"
        batch = [Envelope.new("For", "waiting")]
        commit(store, "s", 0, batch)
        assert finish(thread, result) == (0, batch[0])
        waiting.close()


def test_store_close_wakes_blocked_readers(open_at):
    store = open_at()
    commit(store, "existing", 0, [Envelope.new("E", 0)])
    readers = [
        store.open_stream(store, "existing", 1)[0],
        store.open_stream(store, "missing", 0)[0],
        store.open_global(store, 1),
        store.open_global(store, 10),
    ]
    blocked = [start_blocked_next(r) for r in readers]
    store.close()
    for thread, result in blocked:
        with pytest.raises(logstore.StreamClosedError):
            finish(thread, result)
    assert all(r.closed for r in readers)


# -- (d) asyncio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_anext_returns_the_next_message_or_times_out(open_at, kind):
    async def main(store: logstore.Store) -> None:
        reader = open_reader(store, kind)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await reader.anext(timeout=0.05)
        assert time.monotonic() - started >= 0.05
        batch = [Envelope.new("A", i) for i in range(2)]
        commit(store, "s", 0, batch)
        assert await reader.anext(timeout=1) == batch[0]
        assert reader.offset() == 0
        assert await reader.anext(timeout=1) == batch[1]
        assert reader.offset() == 1
        with pytest.raises(TimeoutError):
            await reader.anext(timeout=0.05)
        reader.close()
        with pytest.raises(logstore.StreamClosedError):
            await reader.anext(timeout=1)

    with open_at() as store:
        asyncio.run(main(store))


@pytest.mark.parametrize("durability", DURABILITIES)
def test_commit_from_another_thread_wakes_an_awaiting_anext(open_at, durability):
    async def main(store: logstore.Store) -> None:
        stream, _ = store.open_stream(store, "s", 0)
        glob = store.open_global(store, 0)
        for i in range(3):
            tasks = [asyncio.create_task(stream.anext(timeout=WAIT)), asyncio.create_task(glob.anext(timeout=WAIT))]
            await asyncio.sleep(0)  # let both reach their await
            assert not any(t.done() for t in tasks)
            batch = [Envelope.new("Async", i)]
            assert await asyncio.to_thread(commit, store, "s", i, batch) == range(i, i + 1)
            assert await asyncio.wait_for(asyncio.gather(*tasks), WAIT) == [batch[0], batch[0]]
            assert stream.offset() == glob.offset() == i
        stream.close()
        glob.close()

    with open_at(durability) as store:
        asyncio.run(main(store))


def test_one_commit_wakes_anext_in_several_event_loops(open_at):
    with open_at() as store:
        readers = [store.open_stream(store, "s", 0)[0] for _ in range(3)]
        entered = threading.Barrier(len(readers) + 1, timeout=WAIT)

        async def wait_one(reader: Any) -> Envelope:
            task = asyncio.create_task(reader.anext(timeout=WAIT))
            await asyncio.sleep(0)
            assert not task.done()
            await asyncio.to_thread(entered.wait)
            return await task

        threads = [run_thread(asyncio.run, wait_one(r)) for r in readers]
        entered.wait()
        batch = [Envelope.new("Everyone", 0)]
        commit(store, "s", 0, batch)
        assert [finish(th, result) for th, result in threads] == [batch[0]] * len(readers)
        for r in readers:
            r.close()


def test_cancelling_a_pending_anext(open_at):
    async def main(store: logstore.Store) -> None:
        reader, _ = store.open_stream(store, "s", 0)
        task = asyncio.create_task(reader.anext())
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancelled call consumed nothing; the stream goes on.
        with pytest.raises(ValueError, match="before a successful"):
            reader.get()
        first = [Envelope.new("After", 0)]
        await asyncio.to_thread(commit, store, "s", 0, first)
        assert await reader.anext(timeout=1) == first[0]
        assert reader.offset() == 0
        # Cancelled while a timeout is pending too.
        task = asyncio.create_task(reader.anext(timeout=WAIT))
        await asyncio.sleep(0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reader.offset() == 0
        second = [Envelope.new("After", 1)]
        await asyncio.to_thread(commit, store, "s", 1, second)
        assert await reader.anext(timeout=1) == second[0]
        assert reader.offset() == 1
        reader.close()

    with open_at() as store:
        asyncio.run(main(store))


def test_async_for_ends_when_the_stream_is_closed(open_at):
    async def main(store: logstore.Store) -> list[Envelope]:
        reader, _ = store.open_stream(store, "s", 0)
        first = [Envelope.new("Early", i) for i in range(2)]
        commit(store, "s", 0, first)
        got: list[Envelope] = []
        three = asyncio.Event()

        async def consume() -> None:
            async for env in reader:
                got.append(env)
                if len(got) == 3:
                    three.set()

        task = asyncio.create_task(consume())
        late = [Envelope.new("Late", 0)]
        await asyncio.to_thread(commit, store, "s", 2, late)  # arrives while the loop waits
        await asyncio.wait_for(three.wait(), WAIT)
        assert not task.done()
        await asyncio.to_thread(reader.close)  # from another thread
        await asyncio.wait_for(task, WAIT)
        assert got == first + late
        return got

    with open_at() as store:
        assert len(asyncio.run(main(store))) == 3


def test_store_close_ends_async_for_and_wakes_anext(open_at):
    async def main(store: logstore.Store) -> None:
        stream, _ = store.open_stream(store, "s", 0)
        glob = store.open_global(store, 0)
        got: list[Envelope] = []

        async def consume() -> None:
            async for env in stream:
                got.append(env)

        iterating = asyncio.create_task(consume())
        awaiting = asyncio.create_task(glob.anext(timeout=WAIT))
        await asyncio.sleep(0)
        assert not iterating.done()
        assert not awaiting.done()
        await asyncio.to_thread(store.close)
        await asyncio.wait_for(iterating, WAIT)
        assert got == []
        with pytest.raises(logstore.StreamClosedError):
            await asyncio.wait_for(awaiting, WAIT)

    store = open_at()
    asyncio.run(main(store))
    assert store.closed
