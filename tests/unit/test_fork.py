"""A store carried into a forked child raises ``StoreForkedError`` there and never touches the parent's state.

Each test forks with ``os.fork()`` (or multiprocessing's ``fork`` start method);
the child reports what happened through a pipe and always leaves with
``os._exit``. A child that does not report in time is killed and the test
fails: that is how a hang in the child shows.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.lock import writer_is_live
from logstore.embedded.repair import repair
from logstore.embedded.store import processes_of
from tests.helpers import SMALL_SEGMENT, assert_verified, run_python

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0  # upper bound for anything that should happen promptly; reached only if something hangs


class Child:
    """A forked child running ``fn``; :meth:`report` returns what it returned or raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report fn's outcome through the pipe, then leave at once, always
            code = 1
            try:
                os.close(r)
                try:
                    report: dict[str, Any] = {"result": fn()}
                except BaseException as exc:  # noqa: BLE001 - report whatever it is
                    report = {"error": type(exc).__name__, "message": str(exc)}
                data = json.dumps(report).encode()
                while data:
                    data = data[os.write(w, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self.pid = pid
        self._r = r

    def report(self, timeout: float = WAIT) -> dict[str, Any]:
        """The child's report, once it has exited; a child that does not finish in time is killed."""
        deadline = time.monotonic() + timeout
        chunks = []
        try:
            while True:
                ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    pytest.fail(f"the forked child did not finish within {timeout} s: it hangs")
                chunk = os.read(self._r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self._r)
        _, status = os.waitpid(self.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child failed before it could report"
        report: dict[str, Any] = json.loads(b"".join(chunks))
        return report


class Gate:
    """A pipe the parent opens once to let waiting children go on."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()

    def wait(self) -> None:  # in a child
        os.close(self._w)  # the child's copy: the gate opens when every copy of the write end is closed
        ready, _, _ = select.select([self._r], [], [], WAIT)
        assert ready, "the parent never opened the gate"

    def open(self) -> None:  # in the parent
        os.close(self._w)

    def close(self) -> None:
        os.close(self._r)


def outcome(fn: Callable[[], object]) -> str:
    """``"ok"`` or ``"<error class>: <message>"``."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - report whatever it is
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def env(i: int) -> Envelope:
    return Envelope.new("E", {"i": i})


def commit(store: logstore.Store, stream: str, envs: list[Envelope]) -> range:
    with store.transaction() as tx:
        store.append_messages(tx, stream, store.head(stream), envs)
    assert tx.global_offsets is not None
    return tx.global_offsets


def read_stream(store: logstore.Store, stream: str) -> list[Envelope]:
    reader, _found = store.open_stream(store, stream, 0)
    with reader:
        return list(reader)


def open_elsewhere(path: Path, readonly: bool = False) -> str:
    """Open the store for writing in a fresh interpreter: the class name of what it raised, or ``opened``."""
    code = (
        "import sys, logstore\n"
        "try:\n"
        "    logstore.open(sys.argv[1]).close()\n"
        "except logstore.LogStoreError as exc:\n"
        "    print(type(exc).__name__)\n"
        "else:\n"
        "    print('opened')\n"
    )
    done = run_python(code, str(path), timeout=WAIT * 3)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def assert_parent_holds(store: logstore.Store) -> None:
    """The parent's writable ``store`` still holds ``LOCK`` (shared) and its slot of ``CONTROL``, and no other
    process has the store open: ``LOCK`` cannot be taken exclusively, and ``logstore repair`` refuses."""
    assert writer_is_live(store.path)
    assert [(p.pid, p.mode) for p in processes_of(store)] == [(os.getpid(), "writable")]
    with pytest.raises(logstore.StoreLockedError, match="a writer holds the store"):
        repair(store.path)


def assert_forked_error(report: str, parent: int) -> None:
    assert report.startswith("StoreForkedError: "), report
    assert f"opened by process {parent}" in report
    assert "does not cross fork()" in report
    assert "open the store in the child after the fork" in report.lower()


def test_a_commit_in_a_forked_child_raises_and_every_acknowledged_parent_commit_stays(store_dir):
    parent = os.getpid()
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    try:
        sent = [env(0), env(1)]
        first = commit(store, "parent", sent[:1])

        def child() -> dict[str, Any]:
            try:
                commit(store, "child", [env(100)])
            except logstore.LogStoreError as exc:
                return {"error": f"{type(exc).__name__}: {exc}", "pid": os.getpid()}
            return {"error": "none: the commit was acknowledged", "pid": os.getpid()}

        got = Child(child).report()["result"]
        assert_forked_error(got["error"], parent)
        assert f"used in process {got['pid']}" in got["error"]
        assert str(store_dir) in got["error"]
        assert "gunicorn --preload" in got["error"]
        second = commit(store, "parent", sent[1:])
        assert (first, second) == (range(1), range(1, 2))
    finally:
        store.close()
    assert_verified(store_dir)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert read_stream(store, "parent") == sent
        assert store.stream_names() == ["parent"]
        assert store.global_head == 2


def test_two_children_trying_to_write_both_raise_and_the_store_stays_clean(store_dir):
    parent = os.getpid()
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    gate = Gate()
    try:
        commit(store, "parent", [env(0)])
        tx, committer = store.begin_tx()
        store.append_messages(tx, "early", 0, [env(1)])

        def child(name: str) -> Callable[[], list[str]]:
            def run() -> list[str]:
                gate.wait()
                return [
                    outcome(lambda: commit(store, name, [env(2)])),
                    outcome(committer.commit),  # the transaction begun before the fork
                ]

            return run

        children = [Child(child("a")), Child(child("b"))]
        gate.open()
        for c in children:
            for got in c.report()["result"]:
                assert_forked_error(got, parent)
        assert committer.commit() == range(1, 2)  # the parent's own transaction is intact
        assert commit(store, "parent", [env(3)]) == range(2, 3)
    finally:
        gate.close()
        store.close()
    assert_verified(store_dir)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.stream_names() == ["parent", "early"]
        assert store.global_head == 3
        assert [e.message for e in read_stream(store, "parent")] == [{"i": 0}, {"i": 3}]


@pytest.mark.parametrize("leave", ["close", "with", "exit"])
def test_a_child_never_releases_the_parents_lock(store_dir, leave):
    """``close()`` in the child, a ``with store:`` block ending there with an error, or an exit without
    close (which left the lock alone before too: the kernel unlocks only when the last descriptor of the
    open file description closes): the parent keeps the writer lock, and its store goes on working."""
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    try:
        commit(store, "s", [env(0)])
        reader = store.open_global(store, 0)
        tx, _committer = store.begin_tx()
        store.append_messages(tx, "s", 1, [env(1)])

        def child() -> list[str]:
            if leave == "close":
                return [outcome(store.close), outcome(store.close), outcome(reader.close)]
            if leave == "with":  # the end, in the child, of a `with store:` block entered before the fork
                error = RuntimeError("the application's own error")  # the block's exit must not raise on top of it
                return [outcome(lambda: store.__exit__(RuntimeError, error, None))]
            return []

        got = Child(child).report()["result"]
        if leave == "close":
            assert got == ["ok", "ok", "ok"]  # quiet and idempotent
        elif leave == "with":
            assert got == ["ok"]
        assert_parent_holds(store)
        assert open_elsewhere(store_dir) == "opened"  # another writer process opens and closes beside it
        assert_parent_holds(store)
        assert commit(store, "s", [env(1)]) == range(1, 2)
        assert reader.try_next() and reader.offset() == 0
        assert reader.try_next() and reader.offset() == 1
        reader.close()
    finally:
        store.close()
    assert not writer_is_live(str(store_dir))
    assert not repair(str(store_dir)).changed  # the store to itself: nothing holds CONTROL either


@pytest.mark.parametrize("durability", ["fsync", "none"])  # each: its own sync path (after the turn, or none)
def test_a_living_child_keeps_no_hold_on_the_lock_and_may_open_the_store_once_the_parent_closed_it(
    store_dir, durability
):
    """The child drops its copies of the LOCK and CONTROL descriptors (and CONTROL's mapping) at the fork: once
    the parent closes the store, nothing holds either while the child still lives (``logstore repair`` may take
    the store), and the child may open the store itself and write."""
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT, durability=durability)
    gate = Gate()
    try:
        commit(store, "parent", [env(0)])

        def child() -> list[object]:
            gate.wait()  # the parent has closed its store
            with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as own:
                return [list(commit(own, "child", [env(1)])), outcome(lambda: store.head("parent"))]

        c = Child(child)
        assert_parent_holds(store)
        store.close()
        # The child lives on, waiting at the gate.
        assert not writer_is_live(str(store_dir))
        assert not repair(str(store_dir)).changed  # repair needs the store to itself: nothing holds it
        gate.open()
        got = c.report()["result"]
        assert got[0] == [1]  # range(1, 2)
        assert got[1].startswith("StoreForkedError: ")
    finally:
        gate.close()
        store.close()
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.stream_names() == ["parent", "child"]


def test_every_method_of_the_store_its_readers_and_its_transactions_raises_in_a_child(store_dir):
    parent = os.getpid()
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    try:
        commit(store, "s", [env(0), env(1), env(2)])
        stream, found = store.open_stream(store, "s", 0)
        assert found
        stream.next(timeout=WAIT)
        whole = store.open_global(store, 0)
        assert whole.try_next()
        tx, committer = store.begin_tx()
        store.append_messages(tx, "s", 3, [env(3)])
        tx2, committer2 = store.begin_tx()

        async def await_next() -> None:
            await whole.anext(timeout=0)

        async def async_for() -> None:
            async for _env in stream:
                break

        def child() -> dict[str, str]:
            calls: dict[str, Callable[[], object]] = {
                "begin_tx": store.begin_tx,
                "transaction": lambda: store.transaction().__enter__(),
                "append_messages": lambda: store.append_messages(tx2, "t", 0, [env(9)]),
                "commit": committer.commit,
                "rollback": committer2.rollback,
                "open_stream": lambda: store.open_stream(store, "s", 0),
                "open_global": lambda: store.open_global(store, 0),
                "head": lambda: store.head("s"),
                "stream_info": lambda: store.stream_info("s"),
                "stream_names": store.stream_names,
                "global_head": lambda: store.global_head,
                "log_start": lambda: store.log_start,
                "truncate_stream": lambda: store.truncate_stream("s", 1),
                "delete_stream": lambda: store.delete_stream("s"),
                "compact": store.compact,
                "next": lambda: stream.next(timeout=0),
                "try_next": whole.try_next,
                "get": stream.get,
                "offset": whole.offset,
                "iteration": lambda: next(iter(stream)),
                "list": lambda: list(whole),
                "anext": lambda: asyncio.run(await_next()),
                "async for": lambda: asyncio.run(async_for()),
            }
            got = {name: outcome(call) for name, call in calls.items()}
            got["closing"] = outcome(lambda: (stream.close(), whole.close(), store.close(), store.close()))
            got["closed"] = str(store.closed)
            return got

        got = Child(child).report()["result"]
        assert got.pop("closing") == "ok"
        assert got.pop("closed") == "True"
        for name, what in got.items():
            assert what.startswith("StoreForkedError: "), f"{name}: {what}"
            assert_forked_error(what, parent)
        # In the parent all of it goes on: the readers where they were, the transaction as built.
        assert stream.offset() == 0
        assert stream.get().message == {"i": 0}
        assert [e.message for e in stream] == [{"i": 1}, {"i": 2}]
        assert whole.offset() == 0
        assert committer.commit() == range(3, 4)
        assert store.head("s") == 4
        stream.close()
        whole.close()
    finally:
        store.close()
    assert_verified(store_dir)


def test_a_readonly_store_raises_in_a_child_and_goes_on_in_the_parent(store_dir):
    parent = os.getpid()
    writer = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    try:
        commit(writer, "s", [env(0), env(1)])
        ro = logstore.open(store_dir, readonly=True)
        try:
            stream, _found = ro.open_stream(ro, "s", 0)

            def child() -> list[str]:
                return [
                    outcome(lambda: ro.open_stream(ro, "s", 0)),
                    outcome(lambda: ro.head("s")),
                    outcome(stream.try_next),
                    outcome(ro.begin_tx),  # the fork, not the read-only mode, is what is wrong
                    outcome(ro.close),
                    outcome(stream.close),
                ]

            got = Child(child).report()["result"]
            for what in got[:4]:
                assert_forked_error(what, parent)
            assert got[4:] == ["ok", "ok"]
            assert [e.message for e in stream] == [{"i": 0}, {"i": 1}]
            assert ro.head("s") == 2
        finally:
            ro.close()
        assert_parent_holds(writer)
        commit(writer, "s", [env(2)])
    finally:
        writer.close()
    assert_verified(store_dir)


class BlockingSyncIO(logstore.FileIO):
    """Plain I/O whose next ``fdatasync`` waits, once armed, until released (a commit caught mid-way)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed.is_set():
            self.armed.clear()
            self.holding.set()
            assert self.release.wait(WAIT), "the held fdatasync was never released"
        super().fdatasync(fd)


def test_fork_while_another_thread_is_mid_commit(store_dir):
    """The child of a fork taken while a parent thread holds the writer role neither hangs nor writes."""
    parent = os.getpid()
    io = BlockingSyncIO()
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT, io=io)
    try:
        commit(store, "s", [env(0)])
        tx, committer = store.begin_tx()
        store.append_messages(tx, "t", 0, [env(1)])
        io.armed.set()
        results: list[object] = []
        thread = threading.Thread(target=lambda: results.append(commit(store, "s", [env(2)])))
        thread.start()
        try:
            assert io.holding.wait(WAIT), "the commit never reached its fdatasync"

            def child() -> list[str]:
                return [
                    outcome(committer.commit),
                    outcome(lambda: commit(store, "u", [env(3)])),
                    outcome(store.close),
                ]

            got = Child(child).report(timeout=WAIT / 2)  # a hang shows before the held sync gives up
        finally:
            io.release.set()
            thread.join(WAIT)
        got_result = got["result"]
        assert_forked_error(got_result[0], parent)
        assert_forked_error(got_result[1], parent)
        assert got_result[2] == "ok"
        assert results == [range(1, 2)]
        assert committer.commit() == range(2, 3)
    finally:
        store.close()
    assert_verified(store_dir)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.global_head == 3
        assert store.stream_names() == ["s", "t"]


def _worker(store: logstore.Store, conn: Any) -> None:
    """A multiprocessing worker handed the parent's store (the ``fork`` start method copies it)."""
    refused = [outcome(lambda: commit(store, "worker", [env(1)])), outcome(store.close)]
    with logstore.open(store.path, readonly=True) as own:  # what a worker does instead: open its own
        conn.send([*refused, [e.message for e in read_stream(own, "s")]])
    conn.close()


def test_multiprocessing_fork_start_method(store_dir):
    parent = os.getpid()
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    try:
        commit(store, "s", [env(0)])
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_worker, args=(store, send))
        process.start()
        send.close()
        try:
            assert receive.poll(WAIT), "the worker did not report"
            got = receive.recv()
        finally:
            process.join(WAIT)
            if process.exitcode is None:
                process.kill()
                process.join()
        assert process.exitcode == 0
        assert_forked_error(got[0], parent)
        assert got[1] == "ok"
        assert got[2] == [{"i": 0}]
        assert_parent_holds(store)
        assert commit(store, "s", [env(2)]) == range(1, 2)
    finally:
        store.close()
    assert_verified(store_dir)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.stream_names() == ["s"]
