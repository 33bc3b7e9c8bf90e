"""The asyncio form on PostgreSQL: ``anext()`` wakes on another client's commit, times out, cancels, closes.

The queries of ``anext()`` run in a worker thread; a cancelled ``anext()`` must consume nothing.
"""

from __future__ import annotations

import asyncio

import pytest

import logstore
from logstore import Envelope

WAIT = 30.0


def _commit(store, stream: str, offset: int, envs: list[Envelope]) -> range:
    with store.transaction() as tx:
        tx.append(stream, offset, envs)
    assert tx.global_offsets is not None
    return tx.global_offsets


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_anext_wakes_on_another_clients_commit_and_times_out(open_pg, kind):
    store, other = open_pg(), open_pg()

    async def main() -> None:
        reader = store.stream("s") if kind == "stream" else store.global_stream()
        with pytest.raises(TimeoutError, match=r"no message within 0\.05 s"):
            await reader.anext(timeout=0.05)
        task = asyncio.create_task(reader.anext(timeout=WAIT))
        await asyncio.sleep(0)
        assert not task.done()
        batch = [Envelope.new("A", i) for i in range(2)]
        assert await asyncio.to_thread(_commit, other, "s", 0, batch) == range(2)
        assert await asyncio.wait_for(task, WAIT) == batch[0]
        assert reader.offset() == 0
        assert await reader.anext(timeout=WAIT) == batch[1]
        with pytest.raises(TimeoutError):
            await reader.anext(timeout=0.05)
        reader.close()
        with pytest.raises(logstore.StreamClosedError):
            await reader.anext(timeout=1)

    asyncio.run(main())


def test_a_cancelled_anext_consumes_nothing(open_pg):
    store = open_pg()

    async def main() -> None:
        reader = store.stream("s")
        for i in range(3):
            task = asyncio.create_task(reader.anext(timeout=WAIT))
            await asyncio.sleep(0)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            if i == 0:
                with pytest.raises(ValueError, match="before a successful"):
                    reader.get()
            else:
                assert reader.offset() == i - 1
            batch = [Envelope.new("After", i)]
            await asyncio.to_thread(_commit, store, "s", i, batch)
            assert await reader.anext(timeout=WAIT) == batch[0]
            assert reader.offset() == i
        reader.close()

    asyncio.run(main())
