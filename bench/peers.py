"""The stores under measurement, behind one small interface.

Every peer stores the same envelopes and makes the same promises inside a
benchmark: an append names the offset it expects (the store checks it inside
the transaction and raises ``OffsetConflictError`` on a mismatch), a
transaction is durable when ``append`` returns (in ``sync`` mode), a load
returns a whole stream as ``Envelope`` objects equal to the ones appended, a
scan returns every envelope in commit (global) order.

- ``logstore``: ``logstore.open(dir, durability=...)`` with its other defaults.
- ``sqlite``: WAL, ``synchronous=FULL`` (``NORMAL`` in batch mode: the WAL is
  synced at checkpoints only, so a power loss can take the last commits, as in
  logstore's ``durability="batch"``). One table shaped like Ax's MySQL store:
  the global offset as the integer primary key, ``UNIQUE(stream, stream_offset)``,
  the envelope's fields as columns, the message msgpack-encoded in ``data``,
  datetimes as ISO 8601 text.
- ``lmdb``: py-lmdb with ``sync=True`` (``sync=False`` in batch mode: the OS
  writes the pages back when it likes). A message table keyed by the 8-byte
  big-endian global offset, holding the msgpack array of the stream, the
  stream offset and the envelope's seven fields; a stream index table keyed
  by ``stream + NUL + 8-byte big-endian stream offset``, holding the global
  offset. The stream's head is found by a cursor seek in the index.

For W10 each store also has a *tail* (``open_tail``): a reader in a process
of its own that follows the global order as another process commits.
logstore's is a read-only store's ``open_global`` reader, whose ``next()``
sleeps until the writer's commit wakes it; sqlite3 and LMDB have no way to
wake another process, so theirs look for new rows every millisecond (sqlite:
``SELECT max(rowid)`` on a connection of its own; LMDB: the entry count of
the message table in a read transaction of a read-only environment) and
then read and decode them.

All three use one handle from every thread: logstore's store is thread-safe,
sqlite's connection is shared under a ``threading.Lock`` (a Python lock hands
the connection over faster than SQLite's own busy-wait between connections),
and LMDB serialises write transactions itself.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import msgpack

import logstore
from logstore import Envelope, OffsetConflictError

PEERS = ("logstore", "sqlite", "lmdb")

LMDB_MAP_SIZE = 1 << 40  # address space only: the file grows with what is written

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages(
    global_offset INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    stream_offset INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    causation_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    send_at TEXT NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    UNIQUE(stream, stream_offset)
)
"""
SQLITE_HEAD = "SELECT MAX(stream_offset) FROM messages WHERE stream = ?"
SQLITE_INSERT = (
    "INSERT INTO messages(stream, stream_offset, message_id, causation_id, correlation_id,"
    " created_at, send_at, type, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = "message_id, causation_id, correlation_id, created_at, send_at, type, data"
SQLITE_SCAN = f"SELECT {_COLUMNS} FROM messages ORDER BY global_offset"
SQLITE_LOAD = f"SELECT {_COLUMNS} FROM messages WHERE stream = ? ORDER BY stream_offset"
# The global offset is the rowid less 1 (SQLite numbers an INTEGER PRIMARY KEY from 1).
SQLITE_FROM = f"SELECT {_COLUMNS} FROM messages WHERE global_offset > ? ORDER BY global_offset"
SQLITE_LAST = "SELECT max(rowid) FROM messages"
POLL_INTERVAL = 0.001
"""Seconds a polling tail (sqlite, LMDB) sleeps between two looks for new rows."""

_pack = msgpack.Packer(use_bin_type=True, datetime=True, autoreset=True).pack
_u64 = struct.Struct(">Q")


def _unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, timestamp=3, strict_map_key=False)


def _sqlite_envelopes(cursor: sqlite3.Cursor) -> Iterator[Envelope]:
    fromiso = datetime.fromisoformat
    unpack = _unpack
    for mid, cid, corr, created, send_at, typ, data in cursor:
        yield Envelope(mid, cid, corr, fromiso(created), fromiso(send_at), typ, unpack(data))


class Peer:
    """One open store. ``mode`` is ``"sync"`` (durable on return) or ``"batch"``."""

    name = ""

    def append(self, stream: str, offset: int, envs: Sequence[Envelope]) -> None:
        """One transaction: ``envs`` at ``offset`` of ``stream``."""
        self.append_many([(stream, offset, envs)])

    def append_many(self, appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> None:
        """One transaction over several streams."""
        raise NotImplementedError

    def load(self, stream: str) -> list[Envelope]:
        """Every envelope of ``stream``, in stream order."""
        raise NotImplementedError

    def scan(self) -> Iterator[Envelope]:
        """Every envelope, in global order."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class LogstorePeer(Peer):
    name = "logstore"

    def __init__(self, path: str, mode: str = "sync", **options: Any) -> None:
        self.store: logstore.Store = logstore.open(path, durability="fsync" if mode == "sync" else "batch", **options)

    def append(self, stream: str, offset: int, envs: Sequence[Envelope]) -> None:
        store = self.store
        tx, committer = store.begin_tx()
        store.append_messages(tx, stream, offset, envs)
        committer.commit()

    def append_many(self, appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> None:
        store = self.store
        tx, committer = store.begin_tx()
        for stream, offset, envs in appends:
            store.append_messages(tx, stream, offset, envs)
        committer.commit()

    def load(self, stream: str) -> list[Envelope]:
        reader, _found = self.store.open_stream(self.store, stream, 0)
        with reader:
            return list(reader)

    def scan(self) -> Iterator[Envelope]:
        with self.store.open_global(self.store, 0) as reader:
            yield from reader

    def close(self) -> None:
        self.store.close()


class SqlitePeer(Peer):
    name = "sqlite"

    def __init__(self, path: str, mode: str = "sync") -> None:
        os.makedirs(path, exist_ok=True)
        conn = sqlite3.connect(os.path.join(path, "messages.db"), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=" + ("FULL" if mode == "sync" else "NORMAL"))
        conn.execute(SQLITE_SCHEMA)
        self.db = os.path.join(path, "messages.db")
        self.conn = conn
        self.lock = threading.Lock()

    def append_many(self, appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> None:
        rows = [
            (
                stream,
                offset + i,
                e.message_id,
                e.causation_id,
                e.correlation_id,
                e.created_at.isoformat(),
                e.send_at.isoformat(),
                e.type,
                _pack(e.message),
            )
            for stream, offset, envs in appends
            for i, e in enumerate(envs)
        ]
        with self.lock:
            execute = self.conn.execute
            execute("BEGIN IMMEDIATE")
            try:
                for stream, offset, _envs in appends:
                    (top,) = execute(SQLITE_HEAD, (stream,)).fetchone()
                    head = 0 if top is None else top + 1
                    if head != offset:
                        raise OffsetConflictError(stream, head, offset)
                self.conn.executemany(SQLITE_INSERT, rows)
            except BaseException:
                execute("ROLLBACK")
                raise
            execute("COMMIT")

    def load(self, stream: str) -> list[Envelope]:
        with self.lock:
            return list(_sqlite_envelopes(self.conn.execute(SQLITE_LOAD, (stream,))))

    def scan(self) -> Iterator[Envelope]:
        # A connection of its own, so a long scan does not hold the writers' lock.
        conn = sqlite3.connect(self.db, isolation_level=None)
        try:
            yield from _sqlite_envelopes(conn.execute(SQLITE_SCAN))
        finally:
            conn.close()

    def close(self) -> None:
        self.conn.close()


class LmdbPeer(Peer):
    name = "lmdb"

    def __init__(self, path: str, mode: str = "sync") -> None:
        import lmdb

        self.env = lmdb.open(
            path, map_size=LMDB_MAP_SIZE, max_dbs=2, sync=mode == "sync", metasync=mode == "sync", readahead=False
        )
        self.messages = self.env.open_db(b"messages")
        self.streams = self.env.open_db(b"streams")

    def _head(self, cursor: Any, key: bytes) -> int:
        """The next unused offset of the stream whose index keys start with ``key`` (name + NUL)."""
        # The first key past the stream's keys, then one back; or the last key when none is past.
        found = cursor.prev() if cursor.set_range(key[:-1] + b"\x01") else cursor.last()
        if found:
            k = cursor.key()
            if k[: len(key)] == key and len(k) == len(key) + 8:
                return int(_u64.unpack_from(k, len(key))[0]) + 1
        return 0

    def append_many(self, appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> None:
        u64 = _u64.pack
        pack = _pack
        with self.env.begin(write=True) as txn:
            mcur = txn.cursor(self.messages)
            scur = txn.cursor(self.streams)
            goff = _u64.unpack(mcur.key())[0] + 1 if mcur.last() else 0
            for stream, offset, envs in appends:
                key = stream.encode() + b"\x00"
                head = self._head(scur, key)
                if head != offset:
                    raise OffsetConflictError(stream, head, offset)  # leaving the block aborts the txn
                for i, e in enumerate(envs):
                    gkey = u64(goff)
                    mcur.put(gkey, pack((stream, offset + i, *e)), append=True)
                    scur.put(key + u64(offset + i), gkey)
                    goff += 1

    def load(self, stream: str) -> list[Envelope]:
        key = stream.encode() + b"\x00"
        n = len(key)
        out = []
        with self.env.begin(buffers=True) as txn:
            scur = txn.cursor(self.streams)
            get = txn.cursor(self.messages).get
            if scur.set_range(key):
                for k, goff in scur:
                    if bytes(k[:n]) != key:
                        break
                    value = get(goff)
                    if value is None:
                        raise RuntimeError(f"lmdb: stream index entry {bytes(k)!r} names no message")
                    out.append(Envelope(*_unpack(value)[2:]))
        return out

    def scan(self) -> Iterator[Envelope]:
        with self.env.begin(buffers=True) as txn:
            for _key, value in txn.cursor(self.messages):
                yield Envelope(*_unpack(value)[2:])

    def close(self) -> None:
        self.env.close()


# -- tailing from another process (W10) ---------------------------------------------------------


class Tail:
    """A reader in another process than the writer's, following the store's global order from an offset."""

    def next(self, timeout: float) -> Envelope:
        """The next envelope, waiting up to ``timeout`` seconds for it to be committed (``TimeoutError``)."""
        raise NotImplementedError

    def idle(self, seconds: float) -> None:
        """Wait ``seconds`` for a next envelope as :meth:`next` does; raise if one comes."""
        try:
            env = self.next(seconds)
        except TimeoutError:
            return
        raise RuntimeError(f"{type(self).__name__}: a message came while nothing was committed: {env!r:.100}")

    def close(self) -> None:
        raise NotImplementedError


class LogstoreTail(Tail):
    """``logstore.open(path, readonly=True)`` and ``open_global``: ``next()`` sleeps until the writer's commit."""

    def __init__(self, path: str, start: int) -> None:
        self.store = logstore.open(path, readonly=True)
        self.reader = self.store.open_global(self.store, start)

    def next(self, timeout: float) -> Envelope:
        reader = self.reader
        reader.next(timeout)
        return reader.get()

    def close(self) -> None:
        self.reader.close()
        self.store.close()


class PollingTail(Tail):
    """Looks at the number of rows every :data:`POLL_INTERVAL` seconds; reads and decodes the new ones."""

    def __init__(self, start: int) -> None:
        self.seen = start  # the next envelope's global offset
        self.ahead: list[Envelope] = []  # read with an earlier one, not returned yet

    def count(self) -> int:
        """How many envelopes the store holds now."""
        raise NotImplementedError

    def read(self, start: int) -> list[Envelope]:
        """The envelopes from global offset ``start`` on."""
        raise NotImplementedError

    def next(self, timeout: float) -> Envelope:
        ahead = self.ahead
        if not ahead:
            count, sleep, clock = self.count, time.sleep, time.monotonic
            deadline = clock() + timeout
            while count() <= self.seen:
                sleep(POLL_INTERVAL)
                if clock() >= deadline:
                    raise TimeoutError(f"no message within {timeout} s")
            got = self.read(self.seen)
            self.seen += len(got)
            ahead.extend(reversed(got))
        return ahead.pop()


class SqliteTail(PollingTail):
    """A connection of its own to the WAL database: ``SELECT max(rowid)`` per look, one query for the new rows."""

    def __init__(self, path: str, start: int) -> None:
        super().__init__(start)
        self.conn = sqlite3.connect(os.path.join(path, "messages.db"), isolation_level=None)

    def count(self) -> int:
        (last,) = self.conn.execute(SQLITE_LAST).fetchone()
        return 0 if last is None else int(last)

    def read(self, start: int) -> list[Envelope]:
        return list(_sqlite_envelopes(self.conn.execute(SQLITE_FROM, (start,))))

    def close(self) -> None:
        self.conn.close()


class LmdbTail(PollingTail):
    """A read-only environment: ``txn.stat(messages)['entries']`` per look, a cursor from the first new key."""

    def __init__(self, path: str, start: int) -> None:
        super().__init__(start)
        import lmdb

        self.env = lmdb.open(path, map_size=LMDB_MAP_SIZE, max_dbs=2, readonly=True, readahead=False)
        self.messages = self.env.open_db(b"messages", create=False)

    def count(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.messages)["entries"])

    def read(self, start: int) -> list[Envelope]:
        with self.env.begin(db=self.messages, buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(_u64.pack(start)):
                return []
            return [Envelope(*_unpack(value)[2:]) for _key, value in cursor]

    def close(self) -> None:
        self.env.close()


def open_tail(name: str, path: str, start: int = 0) -> Tail:
    """A tail of the store at ``path`` from global offset ``start``."""
    if name == "logstore":
        return LogstoreTail(path, start)
    if name == "sqlite":
        return SqliteTail(path, start)
    if name == "lmdb":
        return LmdbTail(path, start)
    raise ValueError(f"unknown store {name!r}; expected one of {', '.join(PEERS)}")


def open_peer(name: str, path: str, mode: str = "sync", **options: Any) -> Peer:
    if name == "logstore":
        return LogstorePeer(path, mode, **options)
    if name == "sqlite":
        return SqlitePeer(path, mode)
    if name == "lmdb":
        return LmdbPeer(path, mode)
    raise ValueError(f"unknown store {name!r}; expected one of {', '.join(PEERS)}")
