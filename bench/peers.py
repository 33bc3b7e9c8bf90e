"""The stores under measurement, behind one small interface.

Every peer stores the same envelopes and makes the same promises inside a
benchmark: an append names the offset it expects (the store checks it inside
the transaction and raises ``OffsetConflictError`` on a mismatch), a
transaction is durable when ``append`` returns (in ``sync`` mode), a load
returns a whole stream as ``Envelope`` objects equal to the ones appended, a
scan returns every envelope in commit (global) order.

- ``logstore``: ``logstore.open(dir, durability=...)`` with its other defaults;
  a load is ``store.read(stream)`` (what a reader from offset 0 iterates, in
  one call), a scan iterates ``open_global``.
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

On PostgreSQL (the ``PG`` workload group; ``PG_URL``, by default the
server at 127.0.0.1:5432, database ``test``), each measurement has a fresh
schema named after its directory (``pg_schema``), dropped afterwards:

- ``pg``: ``logstore.open(PG_URL, schema=..., durability="fsync")``, the
  PostgreSQL backend with its other defaults, with the ``logstore`` peer's
  calls (a load is ``store.read(stream)``: one query); its tail is a read-only
  store's ``open_global`` reader, whose ``next()`` sleeps until a commit's
  notification wakes it.
- ``pg-eventsourcing``: the eventsourcing library's
  ``PostgresApplicationRecorder`` on its ``PostgresDatastore`` (a pool of 10
  connections, as logstore's), in the schema. A stream is an originator
  (``uuid5`` of its name), a stream offset its ``originator_version``, the
  envelope's seven fields msgpack-encoded as the stored event's state. The
  recorder checks offsets with its ``UNIQUE(originator_id,
  originator_version)`` constraint (an offset already taken raises; an
  offset past the head is not caught, as the library does not look for
  gaps) and serialises inserting transactions with an ``EXCLUSIVE`` table
  lock so that notification ids are in commit order. A load is
  ``select_events(originator_id)`` (one query). Scans page through
  ``select_notifications``; the tail polls ``max_notification_id()``.
- ``pg-plain``: one table shaped like Ax's MySQL message store, on psycopg 3
  directly (a ``psycopg_pool`` of up to 10 connections, opened as needed
  from 1 as logstore's are): the global offset taken from a counter row
  updated inside the transaction (its row lock is held to commit, so offsets
  are gap-free and in commit order), the stream's head checked after that,
  ``UNIQUE(stream, stream_offset)``, the envelope's fields as columns (times
  as ``timestamptz``, the message msgpack-encoded in ``data``); a load is one
  ``SELECT ... WHERE stream = %s ORDER BY stream_offset``. Its tail
  polls the counter row.

Both PostgreSQL peers commit with the server's ``synchronous_commit`` (on):
durable when ``append`` returns, as ``pg``'s ``durability="fsync"``.

All three use one handle from every thread: logstore's store is thread-safe,
sqlite's connection is shared under a ``threading.Lock`` (a Python lock hands
the connection over faster than SQLite's own busy-wait between connections),
and LMDB serialises write transactions itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import msgpack

import logstore
from logstore import Envelope, OffsetConflictError

PEERS = ("logstore", "sqlite", "lmdb")
PG_PEERS = ("pg", "pg-eventsourcing", "pg-plain")
"""The stores of the ``PG`` workload group, on one PostgreSQL server; not among the embedded workloads' stores."""
ID_PEERS = ("sqlite-unique",)
"""The stores of the ``ID`` group beside logstore and sqlite: sqlite with a UNIQUE (stream, message_id) index."""
PG_URL = os.environ.get("LOGSTORE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_POOL = 10
"""Connections of each PostgreSQL peer's pool (logstore's ``max_connections`` default)."""

LMDB_MAP_SIZE = 1 << 40  # address space only: the file grows with what is written


def sqlite_table(extra_columns: str = "") -> str:
    """The ``CREATE TABLE`` of the sqlite peers' one table of messages, with ``extra_columns`` (each
    ``name TYPE,``) after the stream's name."""
    return f"""
CREATE TABLE IF NOT EXISTS messages(
    global_offset INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,{extra_columns}
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


SQLITE_SCHEMA = sqlite_table()
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

    def commit(self, stream: str, offset: int, envs: Sequence[Envelope]) -> range:
        """One transaction that may be a retry: the global offsets of ``envs``, written now or before."""
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

    def commit(self, stream: str, offset: int, envs: Sequence[Envelope]) -> range:
        store = self.store
        tx, committer = store.begin_tx()
        store.append_messages(tx, stream, offset, envs)
        return committer.commit()  # a retry writes nothing and returns the original offsets

    def load(self, stream: str) -> list[Envelope]:
        read = getattr(self.store, "read", None)
        if read is None:  # a checkout from before store.read (python -m bench.ab against older code)
            reader, _found = self.store.open_stream(self.store, stream, 0)
            with reader:
                return list(reader)
        return read(stream)  # type: ignore[no-any-return]

    def scan(self) -> Iterator[Envelope]:
        with self.store.open_global(self.store, 0) as reader:
            yield from reader

    def scan_batches(self, size: int = 1000) -> Iterator[list[Envelope]]:
        """Every envelope, in global order, in lists from the reader's batch read (``reader.read``)."""
        with self.store.open_global(self.store, 0) as reader:
            while batch := reader.read(size):
                yield batch

    def close(self) -> None:
        self.store.close()


def sqlite_connect(path: str, mode: str = "sync") -> sqlite3.Connection:
    """The sqlite peer's connection to ``<path>/messages.db`` (made with its directory if missing): WAL,
    ``synchronous=FULL`` in sync mode (each commit durable), ``NORMAL`` in batch mode, autocommit."""
    os.makedirs(path, exist_ok=True)
    conn = sqlite3.connect(os.path.join(path, "messages.db"), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=" + ("FULL" if mode == "sync" else "NORMAL"))
    return conn


class SqlitePeer(Peer):
    name = "sqlite"

    def __init__(self, path: str, mode: str = "sync") -> None:
        conn = sqlite_connect(path, mode)
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


SQLITE_UNIQUE = "CREATE UNIQUE INDEX IF NOT EXISTS messages_stream_id ON messages(stream, message_id)"
SQLITE_FIND = "SELECT stream_offset, global_offset FROM messages WHERE stream = ? AND message_id = ?"


class SqliteUniquePeer(SqlitePeer):
    """sqlite with idempotent appends: a UNIQUE (stream, message_id) index; a commit that breaks it is looked
    up, and is a retry if every id is at the offset it was given (then the original global offsets)."""

    name = "sqlite-unique"

    def __init__(self, path: str, mode: str = "sync") -> None:
        super().__init__(path, mode)
        self.conn.execute(SQLITE_UNIQUE)

    def commit(self, stream: str, offset: int, envs: Sequence[Envelope]) -> range:
        try:
            self.append_many([(stream, offset, envs)])
        except sqlite3.IntegrityError:
            pass  # a message id the stream holds already: a retry, or a duplicate
        except OffsetConflictError:
            pass  # a retry comes below the head
        else:
            with self.lock:
                (last,) = self.conn.execute(SQLITE_LAST).fetchone()
            return range(last - len(envs), last)  # the rowid is the global offset plus 1
        with self.lock:
            find = self.conn.execute
            found = [find(SQLITE_FIND, (stream, e.message_id)).fetchone() for e in envs]
        if any(f is None or f[0] != offset + i for i, f in enumerate(found)):
            raise RuntimeError(f"{stream}: a duplicate message id, not a retry")
        goffs = [f[1] - 1 for f in found]
        if goffs != list(range(goffs[0], goffs[0] + len(goffs))):
            raise RuntimeError(f"{stream}: not a retry of one commit")
        return range(goffs[0], goffs[0] + len(goffs))


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


# -- PostgreSQL (the PG workload group) ----------------------------------------------------------


def pg_schema_prefix(base: str) -> str:
    """The prefix of every schema the run whose directories are under ``base`` makes."""
    return "bench_" + re.sub(r"[^a-z0-9]+", "_", os.path.basename(os.path.normpath(base)).lower()) + "_"


def pg_schema(path: str) -> str:
    """The schema of the PostgreSQL store at measurement directory ``path``: named after it, 63 bytes at most."""
    path = os.path.normpath(path)
    name = pg_schema_prefix(os.path.dirname(path)) + re.sub(r"[^a-z0-9]+", "_", os.path.basename(path).lower())
    if len(name) > 63:
        name = name[:50] + "_" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def pg_connect(autocommit: bool = True) -> Any:
    """A psycopg connection to :data:`PG_URL`."""
    import psycopg

    return psycopg.connect(PG_URL, autocommit=autocommit, connect_timeout=5)


def pg_drop_schemas(prefix: str) -> list[str]:
    """Drop every schema whose name starts with ``prefix``; the names dropped."""
    with pg_connect() as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) ORDER BY nspname", (prefix,)
            )
        ]
        for name in names:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    return names


def pg_table_exists(schema: str, table: str) -> bool:
    """Whether ``schema.table`` exists (the first open of a store makes it; later ones, perhaps concurrent, do not)."""
    with pg_connect() as conn:
        row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()
        return row is not None and row[0] is not None


def pg_settings() -> dict[str, str]:
    """The server's version and the settings that bear on commit and write speed."""
    names = (
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "full_page_writes",
        "wal_level",
        "wal_buffers",
        "wal_writer_delay",
        "commit_delay",
        "shared_buffers",
        "max_wal_size",
        "checkpoint_timeout",
        "max_connections",
    )
    with pg_connect() as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}


class PgPeer(LogstorePeer):
    """logstore's PostgreSQL backend: the embedded peer's calls, on a store opened from a URL."""

    name = "pg"

    def __init__(self, path: str, mode: str = "sync") -> None:
        # The same public API as the embedded store (logstore.protocols), which the inherited calls use.
        self.store = logstore.open(  # type: ignore[assignment]
            PG_URL, schema=pg_schema(path), durability="fsync" if mode == "sync" else "batch"
        )


_ES_NAMESPACE = uuid.UUID("6f1c1a52-3f0e-4b8e-9a57-0b1d2a3c4e5f")
_ES_TOPIC = "bench:Envelope"


def _es_envelope(state: bytes) -> Envelope:
    return Envelope(*_unpack(state))


class EventsourcingPeer(Peer):
    """eventsourcing's ``PostgresApplicationRecorder``: stream -> originator, stream offset -> version."""

    name = "pg-eventsourcing"

    def __init__(self, path: str, mode: str = "sync") -> None:
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

        if mode != "sync":
            raise ValueError("pg-eventsourcing: only sync mode (synchronous_commit on) is measured")
        schema = pg_schema(path)
        exists = pg_table_exists(schema, "stored_events")
        if not exists:
            with pg_connect() as conn:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        info = urllib.parse.urlsplit(PG_URL)
        self.datastore = PostgresDatastore(
            dbname=info.path.lstrip("/"),
            host=info.hostname or "127.0.0.1",
            port=info.port or 5432,
            user=info.username or "postgres",
            password=info.password or "",
            schema=schema,
            pool_size=PG_POOL,
            max_waiting=0,
        )
        self.recorder = PostgresApplicationRecorder(self.datastore)
        if not exists:
            self.recorder.create_table()

    def append_many(self, appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> None:
        from eventsourcing.persistence import IntegrityError, StoredEvent

        events = [
            StoredEvent(uuid.uuid5(_ES_NAMESPACE, stream), offset + i, _ES_TOPIC, _pack(tuple(e)))
            for stream, offset, envs in appends
            for i, e in enumerate(envs)
        ]
        try:
            self.recorder.insert_events(events)
        except IntegrityError:
            stream, offset, _envs = appends[0]
            found = self.recorder.select_events(uuid.uuid5(_ES_NAMESPACE, stream), desc=True, limit=1)
            raise OffsetConflictError(stream, found[0].originator_version + 1 if found else 0, offset) from None

    def load(self, stream: str) -> list[Envelope]:
        return [_es_envelope(e.state) for e in self.recorder.select_events(uuid.uuid5(_ES_NAMESPACE, stream))]

    def scan(self) -> Iterator[Envelope]:
        start: int | None = None
        while True:
            page = self.recorder.select_notifications(start, PG_PAGE, inclusive_of_start=False)
            if not page:
                return
            for n in page:
                yield _es_envelope(n.state)
            start = page[-1].id

    def close(self) -> None:
        self.datastore.close()


PG_PAGE = 1000
"""Rows a PostgreSQL peer's scan or tail fetches per query."""

PLAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS {s}.counter(
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    next_offset bigint NOT NULL
);
INSERT INTO {s}.counter(next_offset) VALUES (0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.messages(
    global_offset bigint PRIMARY KEY,
    stream text NOT NULL,
    stream_offset bigint NOT NULL,
    message_id text NOT NULL,
    causation_id text NOT NULL,
    correlation_id text NOT NULL,
    created_at timestamptz NOT NULL,
    send_at timestamptz NOT NULL,
    type text NOT NULL,
    data bytea NOT NULL,
    UNIQUE(stream, stream_offset)
)
"""
PLAIN_TAKE = "UPDATE {s}.counter SET next_offset = next_offset + %s RETURNING next_offset - %s"
PLAIN_HEAD = "SELECT max(stream_offset) FROM {s}.messages WHERE stream = %s"
PLAIN_INSERT = (
    "INSERT INTO {s}.messages(global_offset, stream, stream_offset, message_id, causation_id, correlation_id,"
    " created_at, send_at, type, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
PLAIN_LOAD = f"SELECT {_COLUMNS} FROM {{s}}.messages WHERE stream = %s ORDER BY stream_offset"
PLAIN_FROM = f"SELECT {_COLUMNS} FROM {{s}}.messages WHERE global_offset >= %s ORDER BY global_offset LIMIT %s"
PLAIN_COUNT = "SELECT next_offset FROM {s}.counter"


def _plain_envelopes(rows: Iterable[tuple[Any, ...]]) -> list[Envelope]:
    return [Envelope(mid, cid, corr, c, s, t, _unpack(d)) for mid, cid, corr, c, s, t, d in rows]


class PlainPeer(Peer):
    """A plain table shaped like Ax's MySQL store, a counter row for the global offset; psycopg 3 directly."""

    name = "pg-plain"

    def __init__(self, path: str, mode: str = "sync") -> None:
        from psycopg_pool import ConnectionPool

        if mode != "sync":
            raise ValueError("pg-plain: only sync mode (synchronous_commit on) is measured")
        schema = f'"{pg_schema(path)}"'
        self.sql = {
            k: v.format(s=schema)
            for k, v in (
                ("take", PLAIN_TAKE),
                ("head", PLAIN_HEAD),
                ("insert", PLAIN_INSERT),
                ("load", PLAIN_LOAD),
                ("from", PLAIN_FROM),
                ("count", PLAIN_COUNT),
            )
        }
        if not pg_table_exists(pg_schema(path), "messages"):
            with pg_connect() as conn:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                for statement in PLAIN_SCHEMA.format(s=schema).split(";"):
                    conn.execute(statement)
        self.pool = ConnectionPool(PG_URL, min_size=1, max_size=PG_POOL, open=True)

    def append_many(self, appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> None:
        sql = self.sql
        total = sum(len(envs) for _s, _o, envs in appends)
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(sql["take"], (total, total), prepare=True)
            row = cur.fetchone()
            assert row is not None
            goff = int(row[0])
            rows = []
            for stream, offset, envs in appends:
                cur.execute(sql["head"], (stream,), prepare=True)
                top = cur.fetchone()
                head = 0 if top is None or top[0] is None else int(top[0]) + 1
                if head != offset:
                    raise OffsetConflictError(stream, head, offset)  # leaving the block rolls back
                for i, e in enumerate(envs):
                    rows.append((goff, stream, offset + i, *e[:6], _pack(e.message)))
                    goff += 1
            cur.executemany(sql["insert"], rows)

    def load(self, stream: str) -> list[Envelope]:
        with self.pool.connection() as conn:
            return _plain_envelopes(conn.execute(self.sql["load"], (stream,), prepare=True).fetchall())

    def read(self, start: int) -> list[Envelope]:
        """Up to :data:`PG_PAGE` envelopes from global offset ``start``."""
        with self.pool.connection() as conn:
            return _plain_envelopes(conn.execute(self.sql["from"], (start, PG_PAGE), prepare=True).fetchall())

    def scan(self) -> Iterator[Envelope]:
        start = 0
        while page := self.read(start):
            yield from page
            start += len(page)

    def close(self) -> None:
        self.pool.close()


class PgTail(LogstoreTail):
    """A read-only ``pg`` store's ``open_global``: ``next()`` sleeps until a commit's notification."""

    def __init__(self, path: str, start: int) -> None:
        self.store = logstore.open(PG_URL, schema=pg_schema(path), readonly=True)  # type: ignore[assignment]
        self.reader = self.store.open_global(self.store, start)


class EventsourcingTail(Tail):
    """Polls ``max_notification_id()`` every :data:`POLL_INTERVAL` seconds, reads with ``select_notifications``."""

    def __init__(self, path: str, start: int) -> None:
        self.peer = EventsourcingPeer(path)
        recorder = self.peer.recorder
        # Notification ids count from 1 and are gap-free here (no transaction of the benchmark rolls back).
        self.last = start
        self.ahead: list[Envelope] = []
        self.top = recorder.max_notification_id

    def next(self, timeout: float) -> Envelope:
        ahead = self.ahead
        if not ahead:
            top, sleep, clock = self.top, time.sleep, time.monotonic
            deadline = clock() + timeout
            while (top() or 0) <= self.last:
                sleep(POLL_INTERVAL)
                if clock() >= deadline:
                    raise TimeoutError(f"no message within {timeout} s")
            page = self.peer.recorder.select_notifications(self.last, PG_PAGE, inclusive_of_start=False)
            self.last = page[-1].id
            ahead.extend(reversed([_es_envelope(n.state) for n in page]))
        return ahead.pop()

    def close(self) -> None:
        self.peer.close()


class PlainTail(PollingTail):
    """A connection of its own: the counter row per look, one query for the new rows."""

    def __init__(self, path: str, start: int) -> None:
        super().__init__(start)
        self.peer = PlainPeer(path)
        self.conn = pg_connect()
        self.count_sql = self.peer.sql["count"]

    def count(self) -> int:
        row = self.conn.execute(self.count_sql, prepare=True).fetchone()
        return int(row[0])

    def read(self, start: int) -> list[Envelope]:
        return self.peer.read(start)

    def close(self) -> None:
        self.conn.close()
        self.peer.close()


def open_tail(name: str, path: str, start: int = 0) -> Tail:
    """A tail of the store at ``path`` from global offset ``start``."""
    if name == "logstore":
        return LogstoreTail(path, start)
    if name == "sqlite":
        return SqliteTail(path, start)
    if name == "lmdb":
        return LmdbTail(path, start)
    if name == "pg":
        return PgTail(path, start)
    if name == "pg-eventsourcing":
        return EventsourcingTail(path, start)
    if name == "pg-plain":
        return PlainTail(path, start)
    raise ValueError(f"unknown store {name!r}; expected one of {', '.join(PEERS + PG_PEERS + ID_PEERS)}")


def open_peer(name: str, path: str, mode: str = "sync", **options: Any) -> Peer:
    if name == "logstore":
        return LogstorePeer(path, mode, **options)
    if name == "sqlite":
        return SqlitePeer(path, mode)
    if name == "sqlite-unique":
        return SqliteUniquePeer(path, mode)
    if name == "lmdb":
        return LmdbPeer(path, mode)
    if name == "pg":
        return PgPeer(path, mode)
    if name == "pg-eventsourcing":
        return EventsourcingPeer(path, mode)
    if name == "pg-plain":
        return PlainPeer(path, mode)
    if name == "floor":
        from bench.floor import FloorPeer

        return FloorPeer(path, mode, **options)
    raise ValueError(f"unknown store {name!r}; expected one of {', '.join(PEERS + PG_PEERS + ID_PEERS)}, floor")
