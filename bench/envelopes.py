"""The envelopes every store is given: order-like messages of a chosen encoded size.

The pool is the same in every process (fixed ids and times), so a process
that reads a store can check it against what another process appended.
A benchmark of ``n`` messages cycles through a pool of at most ``POOL``
distinct envelopes (message ``i`` is ``envelope_at(pool, i)``:
``pool[i % len(pool)]`` with an id of its own past the pool), made before
any timing. Memory for the workload's input therefore stays the same
whatever ``n`` is, so peak RSS measures the store, not the input.
"""

from __future__ import annotations

import gc
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from logstore import Envelope
from logstore.envelope import encode

POOL = 20_000
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def root(i: int, body: dict[str, Any], rng: random.Random) -> Envelope:
    """Envelope ``i`` of the pool: a root message with an id drawn from ``rng``."""
    mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    at = EPOCH + timedelta(milliseconds=i)
    return Envelope(mid, mid, mid, at, at, "OrderPlaced", body)


def message(i: int, pad: int) -> dict[str, Any]:
    """An order-like message body; ``pad`` characters of note set its size."""
    return {
        "order_id": f"order-{i:09d}",
        "customer": f"customer-{i % 9973:05d}",
        "lines": [{"sku": f"SKU-{i % 1000:04d}", "qty": 1 + i % 5, "price_cents": 1999}],
        "note": "n" * pad,
    }


def make_pool(count: int, size: int) -> list[Envelope]:
    """``min(count, POOL)`` root envelopes whose msgpack encoding is ``size`` bytes each (about, below 60 B).

    The pool is frozen out of the garbage collector's way (``gc.freeze``), so
    collections triggered by a store do not rescan it.
    """
    probe = root(0, message(0, 0), random.Random(0))
    pad = 0
    for _ in range(4):  # msgpack's string header grows at 32 and 256 bytes: settle in a few steps
        got = len(encode(probe._replace(message=message(0, pad)), "probe"))
        if got == size:
            break
        pad = max(0, pad + size - got)
    rng = random.Random(1)
    pool = [root(i, message(i, pad), rng) for i in range(min(count, POOL))]
    gc.collect()
    gc.freeze()
    return pool


def envelope_at(pool: list[Envelope], i: int) -> Envelope:
    """The ``i``-th envelope of a workload: the pool's, cycled, each round past the first with message ids of
    its own (a stream holds one message id at one offset only: a repeated id would be a duplicate)."""
    env = pool[i % len(pool)]
    if i < len(pool):
        return env
    mid = env.message_id
    return env._replace(message_id=f"{mid[:24]}{i // len(pool):012x}")


def envelope_bytes(pool: list[Envelope], count: int) -> int:
    """The msgpack bytes of ``count`` envelopes cycled from ``pool``: the figure disk use is compared with."""
    sizes = [len(encode(e, "pool")) for e in pool]
    whole, rest = divmod(count, len(pool))
    return whole * sum(sizes) + sum(sizes[:rest])
