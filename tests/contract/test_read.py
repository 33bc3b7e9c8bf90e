"""``store.read(stream, offset=0)``: every message of a stream committed now, in one call.

- It returns what a reader opened at ``offset`` iterates: removed offsets skipped, nothing for a
  stream that does not exist, is deleted, or ends before ``offset``; streams longer than a page of
  the PostgreSQL backend's query come whole and in order.
- It sees every commit that completed before the call began, while another thread commits.
- It checks its arguments as ``open_stream`` does, and a closed store refuses it.
- A reader opened before a commit sees that commit when it is used afterwards (the PostgreSQL
  backend fetches a first batch at open: it is data, not a proof of the stream's end).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import logstore
from logstore import Envelope
from logstore.protocols import ShortFormStore
from tests.contract.backends import BAD_STREAM_ARGUMENTS, OpenStore

WAIT = 30.0  # seconds a thread or event waits before the test fails rather than hangs


def _envs(tag: str, n: int, first: int = 0) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": first + i, "pad": "x" * 100}) for i in range(n)]


def test_read_returns_what_a_reader_iterates(open_store: OpenStore) -> None:
    with open_store() as store:
        assert isinstance(store, ShortFormStore)
        a = _envs("a", 7)
        with store.transaction() as tx:
            tx.append("a", 0, a[:3])
            tx.append("b", 0, _envs("b", 2))
        with store.transaction() as tx:
            tx.append("a", 3, a[3:])
        assert store.read("a") == a
        assert store.read("a", 0) == a and store.read("a", offset=4) == a[4:]
        assert store.read("a", 7) == [] and store.read("a", 100) == []
        assert store.read("never-written") == []
        store.truncate_stream("a", 2)
        assert store.read("a") == a[2:] and store.read("a", 1) == a[2:] and store.read("a", 5) == a[5:]
        store.delete_stream("b")
        assert store.read("b") == []
        for name in ("a", "b", "never-written"):
            for offset in (0, 1, 3, 6, 7, 9):
                with store.stream(name, offset) as reader:
                    assert store.read(name, offset) == list(reader), (name, offset)


def test_read_returns_a_long_stream_whole_and_in_order(open_store: OpenStore) -> None:
    with open_store() as store:
        envs = _envs("long", 2500)
        for start in range(0, len(envs), 500):
            with store.transaction() as tx:
                tx.append("long", start, envs[start : start + 500])
            with store.transaction() as tx:
                tx.append("other", start // 500, _envs("other", 1, start // 500))
        assert store.read("long") == envs
        assert store.read("long", 999) == envs[999:] and store.read("long", 1000) == envs[1000:]
        store.truncate_stream("long", 1500)
        assert store.read("long", 10) == envs[1500:]


def test_read_sees_every_commit_completed_before_it_began(open_store: OpenStore) -> None:
    with open_store() as store:
        committed = 0  # messages of "s" whose commit has returned (written by the writer thread only)
        stop = threading.Event()
        failed: list[BaseException] = []
        envs = _envs("s", 400)

        def writer() -> None:
            nonlocal committed
            try:
                for i in range(len(envs)):
                    if stop.is_set():
                        return
                    with store.transaction() as tx:
                        tx.append("s", i, [envs[i]])
                    committed = i + 1
            except BaseException as exc:  # noqa: BLE001  # reported by the test below
                failed.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        reads = 0
        try:
            while thread.is_alive() or reads == 0:
                before = committed
                got = store.read("s")
                assert len(got) >= before, f"read {len(got)} messages, {before} were committed before it began"
                assert got == envs[: len(got)]
                reads += 1
        finally:
            stop.set()
            thread.join(WAIT)
        assert not failed, failed
        assert store.read("s") == envs[:committed] and reads > 1


@pytest.mark.parametrize(("args", "error", "match"), BAD_STREAM_ARGUMENTS)
def test_read_checks_like_open_stream(
    open_store: OpenStore, args: tuple[Any, Any], error: type[Exception], match: str
) -> None:
    with open_store() as store:
        with pytest.raises(error, match=match):
            store.read(*args)
        with pytest.raises(error, match=match):
            store.open_stream(store, *args)
    with pytest.raises(logstore.StoreClosedError):
        store.read("s")


@pytest.mark.parametrize("use", ["iterate", "try_next"])
def test_a_reader_sees_commits_made_between_its_opening_and_its_use(open_store: OpenStore, use: str) -> None:
    with open_store() as store:
        envs = _envs("s", 40)
        with store.transaction() as tx:
            tx.append("s", 0, envs[:2])
        reader, found = store.open_stream(store, "s", 0)
        later, later_found = store.open_stream(store, "later", 0)
        assert found and not later_found
        with store.transaction() as tx:
            tx.append("s", 2, envs[2:])
            tx.append("later", 0, envs[:1])
        with reader, later:
            if use == "iterate":
                assert list(reader) == envs and list(later) == envs[:1]
            else:
                got = []
                while reader.try_next():
                    got.append(reader.get())
                assert got == envs
                assert later.try_next() and later.get() == envs[0] and not later.try_next()
            with store.transaction() as tx:
                tx.append("s", 40, _envs("t", 1))
            assert reader.try_next() and reader.offset() == 40 and not reader.try_next()
