"""A blocked ``next()`` waits without polling, and wakes on a commit from any client."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from logstore import Envelope

WAIT = 30.0


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_a_blocked_next_makes_no_query_while_nothing_is_committed(open_pg, kind):
    store = open_pg()
    queries: list[Any] = []
    query = store._query

    def counting(*args: Any, **kwargs: Any) -> Any:
        queries.append(args[0])
        return query(*args, **kwargs)

    store._query = counting
    reader = store.stream("s") if kind == "stream" else store.global_stream()
    queries.clear()
    with pytest.raises(TimeoutError):
        reader.next(timeout=1.0)
    assert len(queries) == 1  # the read before waiting; none while waiting


def test_several_readers_of_several_stores_wake_on_one_commit_of_another_client(open_pg):
    stores = [open_pg() for _ in range(2)]
    writer = open_pg()
    readers = [s.stream("s") for s in stores] + [s.global_stream() for s in stores]
    got: dict[int, Any] = {}
    threads = []
    for i, reader in enumerate(readers):

        def wait(i: int = i, reader: Any = reader) -> None:
            try:
                reader.next(timeout=WAIT)
                got[i] = reader.get()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                got[i] = exc

        threads.append(threading.Thread(target=wait))
    for t in threads:
        t.start()
    env = Envelope.new("Everyone", 1)
    with writer.transaction() as tx:
        tx.append("s", 0, [env])
    for t in threads:
        t.join(WAIT)
    assert got == dict.fromkeys(range(len(readers)), env)
