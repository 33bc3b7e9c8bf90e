"""The CT group's workloads: category reads and type filters, logstore beside sqlite3.

``ct_build`` writes the store once per store and run (not timed as a read): ``messages`` envelopes of
``size`` bytes in transactions of 100, one message to each of 100 categories in turn (stream
``cat<c>-<k>``, 10 streams per category), types ``T0`` .. ``T9`` in turn, so one message in ten is of
any one type and one in a hundred of any one category.

``ct_read`` times one read of that store, in a fresh process, once the store is open (logstore opened
read-only, sqlite connected; as W3 times its scan):

- ``category/read=index``: every message of category ``cat7`` (1 in 100), through the category index
  (logstore: ``store.category("cat7")``; sqlite: ``WHERE category = ?`` on an index of
  ``(category, global_offset)``);
- ``category/read=scan``: the same messages found by a full global scan that filters on the stream
  name in Python (logstore: ``global_stream()``, ``stream_name()``; sqlite: every row, filtered);
- ``types/read=filter``: every message of type ``T3`` (1 in 10), the store filtering (logstore:
  ``global_stream(types=["T3"])``; sqlite: ``WHERE type = ?`` on an index of ``(type, global_offset)``);
- ``types/read=scan``: the same found by an unfiltered scan that decodes every envelope and keeps
  those of type ``T3`` in Python.

Each read is checked against what was written (count, and the first and last envelope). logstore
also reports the records it read (``records_read``): the category read must read only its category's.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import logstore
from bench.envelopes import envelope_at, make_pool
from bench.peers import _COLUMNS, _pack, _sqlite_envelopes, sqlite_connect, sqlite_table
from logstore import Envelope

clock = time.perf_counter

CATEGORIES = 100
STREAMS_PER_CATEGORY = 10
TYPES = 10
CATEGORY = "cat7"
TYPE = "T3"

SCHEMA = (
    sqlite_table("\n    category TEXT NOT NULL,")
    + """;
CREATE INDEX IF NOT EXISTS messages_category ON messages(category, global_offset);
CREATE INDEX IF NOT EXISTS messages_type ON messages(type, global_offset);
"""
)


def _plan(messages: int, size: int) -> Iterator[list[tuple[str, int, Envelope]]]:
    """The transactions of the build: 100 messages each, ``(stream, offset, envelope)``."""
    pool = make_pool(min(messages, 1000), size)
    heads: dict[str, int] = {}
    batch: list[tuple[str, int, Envelope]] = []
    for i in range(messages):
        c = i % CATEGORIES
        stream = f"cat{c}-{(i // CATEGORIES) % STREAMS_PER_CATEGORY}"
        env = envelope_at(pool, i)._replace(type=f"T{i % TYPES}")
        offset = heads.get(stream, 0)
        heads[stream] = offset + 1
        batch.append((stream, offset, env))
        if len(batch) == 100:
            yield batch
            batch = []
    if batch:
        yield batch


def expected(messages: int, size: int, mode: str) -> tuple[int, Envelope, Envelope]:
    """How many messages a read of ``mode`` yields, and its first and last envelope."""
    keep = [
        env
        for batch in _plan(messages, size)
        for stream, _o, env in batch
        if (stream.partition("-")[0] == CATEGORY if mode.startswith("category") else env.type == TYPE)
    ]
    return len(keep), keep[0], keep[-1]


def ct_build(spec: dict[str, Any]) -> dict[str, Any]:
    messages, size, path = spec["messages"], spec["size"], spec["dir"]
    t0 = clock()
    if spec["store"] == "logstore":
        with logstore.open(path, durability="batch") as store:
            for batch in _plan(messages, size):
                with store.transaction() as tx:
                    for stream, offset, env in batch:
                        tx.append(stream, offset, [env])
    else:
        conn = sqlite_connect(path, "batch")  # as logstore's build, durability="batch"
        conn.executescript(SCHEMA)
        for batch in _plan(messages, size):
            rows = [
                (
                    stream,
                    stream.partition("-")[0],
                    offset,
                    e.message_id,
                    e.causation_id,
                    e.correlation_id,
                    e.created_at.isoformat(),
                    e.send_at.isoformat(),
                    e.type,
                    _pack(e.message),
                )
                for stream, offset, e in batch
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO messages(stream, category, stream_offset, message_id, causation_id, correlation_id,"
                " created_at, send_at, type, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        conn.close()
    return {"seconds": clock() - t0}


def _logstore_read(path: str, mode: str) -> tuple[list[Envelope], int, float]:
    with logstore.open(path, readonly=True) as store:
        io = store._log.io  # the benchmark may look inside its own engine: the records it read
        io.records_read = 0
        t0 = clock()
        if mode == "category/read=index":
            with store.category(CATEGORY) as reader:
                out = list(reader)
        elif mode == "category/read=scan":
            with store.global_stream() as log:
                prefix = CATEGORY + "-"
                out = [env for env in log if log.stream_name().startswith(prefix)]
        elif mode == "types/read=filter":
            with store.global_stream(types=[TYPE]) as log:
                out = list(log)
        else:
            with store.global_stream() as log:
                out = [env for env in log if env.type == TYPE]
        return out, io.records_read, clock() - t0


def _sqlite_read(path: str, mode: str) -> tuple[list[Envelope], float]:
    conn = sqlite3.connect(os.path.join(path, "messages.db"), isolation_level=None)
    t0 = clock()
    try:
        return _sqlite_query(conn, mode), clock() - t0
    finally:
        conn.close()


def _sqlite_query(conn: sqlite3.Connection, mode: str) -> list[Envelope]:
    if mode == "category/read=index":
        sql = f"SELECT {_COLUMNS} FROM messages WHERE category = ? ORDER BY global_offset"
        return list(_sqlite_envelopes(conn.execute(sql, (CATEGORY,))))
    if mode == "category/read=scan":
        rows = conn.execute(f"SELECT stream, {_COLUMNS} FROM messages ORDER BY global_offset")
        prefix = CATEGORY + "-"
        return list(_sqlite_envelopes(row[1:] for row in rows if row[0].startswith(prefix)))  # type: ignore[arg-type]
    if mode == "types/read=filter":
        sql = f"SELECT {_COLUMNS} FROM messages WHERE type = ? ORDER BY global_offset"
        return list(_sqlite_envelopes(conn.execute(sql, (TYPE,))))
    everything = _sqlite_envelopes(conn.execute(f"SELECT {_COLUMNS} FROM messages ORDER BY global_offset"))
    return [env for env in everything if env.type == TYPE]


def ct_read(spec: dict[str, Any]) -> dict[str, Any]:
    path, mode = spec["dir"], spec["mode"]
    if spec["store"] == "logstore":
        out, records, seconds = _logstore_read(path, mode)
    else:
        (out, seconds), records = _sqlite_read(path, mode), -1
    count, first, last = expected(spec["messages"], spec["size"], mode)
    if (len(out), out[0], out[-1]) != (count, first, last):
        raise RuntimeError(f"{spec['store']} {mode}: read {len(out)} messages, expected {count} (or others)")
    return {"seconds": seconds, "messages": len(out), "records_read": records}
