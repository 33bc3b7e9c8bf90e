"""A failed write or fsync is never acknowledged; the store refuses writes until it is reopened."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

import logstore
from logstore import Envelope, StoreFailedError
from tests.faultfs import FailingIO


def _commit(store: logstore.Store, stream: str, offset: int, n: int = 2) -> range:
    with store.transaction() as tx:
        store.append_messages(tx, stream, offset, [Envelope.new("E", {"i": offset + i}) for i in range(n)])
    assert tx.global_offsets is not None
    return tx.global_offsets


@pytest.mark.parametrize("op", ["fdatasync", "pwrite"])
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_failed_write_or_sync_is_not_acknowledged_and_fails_the_store(store_dir: Path, op: str, code: int) -> None:
    io = FailingIO(op, code)
    store = logstore.open(store_dir, segment_size=64 * 1024, io=io)
    assert _commit(store, "a", 0) == range(2)
    io.armed.set()
    with pytest.raises(StoreFailedError) as info:
        _commit(store, "a", 2)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == code
    assert "reopen" in str(info.value)
    # Nothing of the failed commit is visible, and every later write is refused.
    assert store.head("a") == 2
    assert store.global_head == 2
    with store.open_global(store, 0) as everything:
        assert [env.message["i"] for env in everything] == [0, 1]
    with pytest.raises(StoreFailedError):
        _commit(store, "b", 0)
    with pytest.raises(StoreFailedError):
        store.close()  # close reports that the store had failed
    # Reopening recovers: the acknowledged commit is there; the failed one is there only if it reached the disk whole.
    with logstore.open(store_dir, segment_size=64 * 1024) as again:
        assert again.head("a") in (2, 4)
        assert again.head("b") == 0
        offset = again.head("a")
        assert _commit(again, "a", offset) == range(offset, offset + 2)


def test_commits_waiting_in_the_same_group_all_fail(store_dir: Path) -> None:
    io = FailingIO("fdatasync")
    store = logstore.open(store_dir, segment_size=64 * 1024, io=io)
    _commit(store, "seed", 0, 1)
    io.armed.set()
    start = threading.Barrier(4)
    outcomes: list[BaseException | range] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        start.wait()
        try:
            result: BaseException | range = _commit(store, f"s{k}", 0)
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == 4
    assert all(isinstance(o, StoreFailedError) for o in outcomes), outcomes
    assert store.global_head == 1
    with pytest.raises(StoreFailedError):
        store.close()
