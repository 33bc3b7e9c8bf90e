"""The SB group's workload: a durable subscription consuming one category, logstore beside sqlite3.

The store is the CT group's (``bench/categories.py``: 100 categories, one message in a hundred in
category ``cat7``), built once per store. ``sb_consume`` times, in a fresh process, one consumer that
reads every message of ``cat7`` from the start and acknowledges as ``ack`` says, with its position
saved durably in the store:

- ``ack=each``: after every message (logstore: ``sub.ack()``; sqlite: ``UPDATE subscriptions SET
  position = ?`` in its own transaction);
- ``ack=100``: after every hundredth message and at the end (``sub.ack(offset)``; one UPDATE).

logstore opens the store with ``durability="fsync"`` (an acknowledgement is durable when it returns);
sqlite in WAL mode with ``synchronous=FULL`` (each UPDATE's commit is durable). sqlite reads the
category through an index of ``(category, global_offset)``, 500 rows per query, from its saved
position. Each run ends by checking that the count and the saved position are right; a second
consumer of the same subscription then starts at the end.
"""

from __future__ import annotations

import time
from typing import Any

import logstore
from bench.categories import CATEGORY, expected
from bench.peers import _COLUMNS, _sqlite_envelopes, sqlite_connect

clock = time.perf_counter

PAGE = 500
SB_MODES = ("ack=each", "ack=100")


def _every(mode: str) -> int:
    return 1 if mode == "ack=each" else 100


def _logstore_consume(path: str, mode: str) -> tuple[int, int, float]:
    every = _every(mode)
    with logstore.open(path, durability="fsync") as store:
        name = f"bench-{mode}"
        store.delete_subscription(name)
        store.subscribe(name, category=CATEGORY).close()  # made before the clock starts, as sqlite's row is
        t0 = clock()
        count = 0
        with store.subscribe(name, category=CATEGORY) as sub:
            for _env in sub:
                count += 1
                if count % every == 0:
                    sub.ack()
            if count % every:
                sub.ack()
            seconds = clock() - t0
            position = sub.position
        with store.subscribe(name, category=CATEGORY) as again:
            if again.try_next():
                raise RuntimeError("logstore: a second consumer found a message past the saved position")
    return count, position, seconds


def _sqlite_consume(path: str, mode: str) -> tuple[int, int, float]:
    every = _every(mode)
    conn = sqlite_connect(path, "sync")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS subscriptions(name TEXT PRIMARY KEY, position INTEGER NOT NULL)")
        name = f"bench-{mode}"
        conn.execute("INSERT OR REPLACE INTO subscriptions VALUES (?, 0)", (name,))
        t0 = clock()
        (position,) = conn.execute("SELECT position FROM subscriptions WHERE name = ?", (name,)).fetchone()
        count = 0
        last = position - 1
        query = (
            f"SELECT global_offset, {_COLUMNS} FROM messages WHERE category = ? AND global_offset >= ?"
            " ORDER BY global_offset LIMIT ?"
        )
        while True:
            rows = conn.execute(query, (CATEGORY, last + 1, PAGE)).fetchall()
            if not rows:
                break
            for row, _env in zip(rows, _sqlite_envelopes(row[1:] for row in rows), strict=True):  # type: ignore[arg-type]
                last = row[0]
                count += 1
                if count % every == 0:
                    conn.execute("UPDATE subscriptions SET position = ? WHERE name = ?", (last + 1, name))
        if count % every:
            conn.execute("UPDATE subscriptions SET position = ? WHERE name = ?", (last + 1, name))
        seconds = clock() - t0
        (position,) = conn.execute("SELECT position FROM subscriptions WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return count, position, seconds


def sb_consume(spec: dict[str, Any]) -> dict[str, Any]:
    path, mode = spec["dir"], spec["mode"]
    consume = _logstore_consume if spec["store"] == "logstore" else _sqlite_consume
    count, position, seconds = consume(path, mode)
    want, _first, _last = expected(spec["messages"], spec["size"], "category/read=index")
    last = spec["messages"] - 100 + 7  # the last message of cat7, at global offset i for message i
    if spec["store"] == "sqlite":
        last += 1  # an INTEGER PRIMARY KEY counts from 1
    if count != want or position != last + 1:
        raise RuntimeError(f"{spec['store']} {mode}: consumed {count} (expected {want}), saved position {position}")
    return {"seconds": seconds, "messages": count, "acks": -(-count // _every(mode))}
