"""The PostgreSQL store: the embedded store's API over tables in a PostgreSQL schema.

>>> store = logstore.open("postgresql://postgres@127.0.0.1/test", schema="logstore")  # doctest: +SKIP
>>> with store.transaction() as tx:  # doctest: +SKIP
...     tx.append("order-42", 0, [logstore.Envelope.new("OrderPlaced", {"sku": "A1"})])
>>> tx.global_offsets  # doctest: +SKIP
range(0, 1)

Transactions are built on the client, as in the embedded store (:class:`logstore.Tx`: the envelopes
are checked and encoded by ``append_messages``). ``commit()`` sends the whole transaction as one
statement in autocommit, ``SELECT * FROM append_batch(...)``, a READ COMMITTED transaction of its own:
one round trip, in which the server takes the streams' locks, checks their heads, takes the global lock
last and holds it only while it inserts the rows and commits (:mod:`logstore.postgres.schema`).

Connections come from a pool (``psycopg_pool``); each query, and each commit, is one statement in
autocommit. One more connection per store LISTENs for commits
(:mod:`logstore.postgres.listener`).

Lock rules: ``_heads_lock`` guards ``_heads`` (stream heads this client knows; they only grow, so a
known head is a lower bound of the real one); ``_close_lock`` guards ``_closed``.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import Any

import msgpack
import psycopg
import psycopg_pool
from psycopg import sql

from logstore.checks import (
    MAX_ENVELOPE_SIZE,
    URL_SCHEMES,
    StoreBase,
    check_category,
    check_expected,
    check_message_id,
    check_offset,
    check_stream_name,
    check_types,
    committed_at,
)
from logstore.envelope import Envelope, decode, encode_many, type_of
from logstore.errors import (
    DuplicateMessageError,
    LogStoreError,
    OffsetConflictError,
    StoreClosedError,
    StoreForkedError,
)
from logstore.postgres import schema as ddl
from logstore.postgres.errors import CommitOutcomeUnknownError, ConnectionLostError, ServerError
from logstore.postgres.listener import Listener, Signal
from logstore.postgres.positions import PgClaim, PgPositions
from logstore.postgres.reader import FETCH_BYTES, PgGlobalReader, PgSelectReader, PgStreamReader, close_readers
from logstore.results import CompactReport, Location, StreamInfo, SubscriptionInfo
from logstore.subscriptions import Subscription, check_subscription_name, definition_of, open_subscription
from logstore.tx import ANY, ANY_OFFSET, AnyOffset, Committer, Tx

DEFAULT_SCHEMA = "logstore"
DURABILITY_MODES = ("fsync", "batch", "none")
DEFAULT_MAX_CONNECTIONS = 10
"""Most pooled connections of one store (the listening connection aside)."""
DEFAULT_TIMEOUT = 30.0
"""Seconds to wait for a connection (at open, and when every pooled one is busy)."""
MAX_SCHEMA_NAME = 63
"""PostgreSQL's longest identifier, in bytes."""
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3
"""TCP keepalives of every connection: probes after 30 s of silence, every 10 s, 3 unanswered end it."""
READ_PAGE = 1000
"""Most messages one query of :meth:`PostgresStore.read` fetches."""
MAX_RECONNECT = 5.0
"""Longest a pool keeps retrying one new connection (pausing 1 s, doubling), in seconds; half the ``timeout`` if
that is shorter. The pool's pause grows with every failure, so a longer retry would leave a server that came
back unused for as long as it was gone; after giving up, the next request for a connection tries at once."""
HEADS_KEPT = 100_000
"""Most stream heads a store remembers for ``append_messages``'s check (then it forgets them all)."""

DISK_ONLY_OPTIONS = {
    "segment_size": "segment files",
    "checkpoint_bytes": "checkpoints",
    "fsync_interval": "an fsync schedule (the server's wal_writer_delay plays its part)",
    "io": "a file-I/O layer",
    "retention_age": "retention by segment (delete with truncate_stream/delete_stream)",
    "retention_bytes": "retention by segment (delete with truncate_stream/delete_stream)",
}
"""Options of ``logstore.open`` that mean something only for a store directory, with what they are about."""


def is_url(path: object) -> bool:
    """Whether ``logstore.open``'s ``path`` is a PostgreSQL connection URL."""
    return isinstance(path, str) and path.startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """``url`` without its password (in the user part or a ``password=`` parameter), for messages and ``repr``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        user, host = parts.netloc.rsplit("@", 1)
        parts = parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}")
    if parts.query:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(query="&".join(f"{k}={'***' if k == 'password' else v}" for k, v in query))
    return urllib.parse.urlunsplit(parts)


def open_postgres(url: str, **options: Any) -> PostgresStore:
    """``logstore.open(url, schema=..., ...)`` for a ``postgresql://`` URL (see :class:`PostgresStore`)."""
    for name in options:
        if name in DISK_ONLY_OPTIONS:
            raise ValueError(
                f"{name} is an option of a store directory ({DISK_ONLY_OPTIONS[name]});"
                " a PostgreSQL store has no use for it: leave it out"
            )
    known = {"schema", "durability", "readonly", "max_connections", "timeout"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"logstore.open() got unexpected keyword arguments for a PostgreSQL store: {unknown}")
    return PostgresStore(url, **options)


def _message_id(payload: bytes) -> str:
    """The message id of an encoded envelope (its first field) without decoding the rest."""
    for head in (payload[:512], payload):  # an id longer than the first 512 bytes is rare
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(head)
        try:
            unpacker.read_array_header()
            mid = unpacker.unpack()
        except msgpack.OutOfData:
            continue
        assert isinstance(mid, str)
        return mid
    raise AssertionError("an encoded envelope without its message id")


message_id_of = _message_id
"""The message id of an encoded envelope (``logstore migrate`` fills ``log.message_id`` with it)."""


def _is_broken(conn: psycopg.Connection[Any]) -> bool:
    return bool(conn.closed or conn.broken)


_ENDING = frozenset({"FATAL", "PANIC"})
"""Severities of a server message that ends the connection."""


def _watch_for_goodbye(conn: psycopg.Connection[Any]) -> None:
    """Mark ``conn`` ended when the server says it ends it (see :func:`_check_idle`)."""
    ref = weakref.ref(conn)

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        target = ref()
        if target is not None and diag.severity_nonlocalized in _ENDING:
            _ended.add(target)

    conn.add_notice_handler(on_notice)


_ended: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
"""Pooled connections whose server said it ends them, while they sat idle."""


def _check_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check on lending a connection, without a round trip: a server that ended an idle
    connection (a restart, ``pg_terminate_backend``, an idle timeout) has left its reason, and then the
    end, in the socket. Reading them makes the pool take another connection, so a commit never starts
    on a connection known dead (which would make its outcome look unknown). Only a connection ended
    in the instant between this check and the commit can still be met by a commit."""
    if _is_broken(conn) or conn in _ended:
        conn.close()
        raise psycopg.OperationalError("the connection is closed")
    pgconn = conn.pgconn
    poller = select.poll()  # not select(): descriptors past 1023 are common in a busy application
    poller.register(pgconn.socket, select.POLLIN)
    # The reason arrives first: libpq hands it to the notice handler of an idle connection when it parses
    # the input (is_busy() parses); the end, if it came too, makes consume_input raise.
    for _ in range(8):
        if not poller.poll(0):
            break
        pgconn.consume_input()
        pgconn.is_busy()
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the server closed the connection")
    if conn in _ended:
        conn.close()  # the pool puts back a connection that failed its check unless it is closed
        raise psycopg.OperationalError("the server ended the connection")


_live_stores: weakref.WeakSet[PostgresStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_live_stores):
        store._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Pending:
    """A transaction handed to the writer, until its commit is done (or it is handed the leader's role)."""

    __slots__ = ("done", "error", "gone", "lead", "result", "tx")

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.done = threading.Event()
        self.lead = False  # set (with done) to hand this thread the leader's role
        self.gone = False  # its caller stopped waiting (an interrupt): never handed the role
        self.result: range | None = None
        self.error: BaseException | None = None


class _PgWriter:
    """What :class:`logstore.Committer` commits a transaction through: group commit across threads.

    The first thread to commit leads: it takes every transaction waiting at that moment (its own first)
    and commits them in one round trip (``append_batch``, one server transaction, one WAL flush), then
    hands the role to the first transaction that arrived meanwhile. So threads that commit at once share
    a round trip and a flush, and a lone committer never waits for another thread. A caller interrupted
    while it waits (``KeyboardInterrupt``) is never handed the role; its transaction is committed in its
    turn, as the embedded writer does.

    ``_lock`` guards ``_queue``, ``_busy`` (a leader is at work) and each pending's ``lead`` and ``gone``.
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False

    def commit(self, tx: Tx) -> range:
        pending = _Pending(tx)
        with self._lock:
            self._queue.append(pending)
            leading = not self._busy
            self._busy = True
        if not leading:
            try:
                pending.done.wait()
            except BaseException:
                with self._lock:
                    pending.gone = True
                    handed = pending.lead
                if handed:  # the role came with the interrupt: lead once, so that the queue has a leader
                    self._lead(pending)
                raise
            leading = pending.lead
        if leading:
            self._lead(pending)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _lead(self, own: _Pending) -> None:
        """Commit what is queued (``own`` among it), then hand the role on (or give it up)."""
        while True:
            with self._lock:
                group, self._queue = self._queue, []
            try:
                self._store._commit_group(group)
            except BaseException as exc:  # every transaction of the group fails alike  # noqa: BLE001
                for p in group:
                    p.error = exc if p is own else _copy_error(exc)
            with self._lock:
                nxt = next((p for p in self._queue if not p.gone), None)
                again = nxt is None and bool(self._queue)  # only interrupted callers wait: commit theirs too
                if nxt is not None:
                    nxt.lead = True
                elif not again:
                    self._busy = False
            for p in group:
                if p is not own:
                    p.done.set()
            if nxt is not None:
                nxt.done.set()
            if not again:
                return


def _copy_error(exc: BaseException) -> BaseException:
    """An error like ``exc`` for another thread of the group (one exception object is raised in one thread)."""
    if isinstance(exc, ServerError):
        copy: BaseException = ServerError(str(exc), exc.sqlstate)
    elif isinstance(exc, LogStoreError):
        copy = type(exc).__new__(type(exc))
        copy.args = exc.args
        copy.__dict__.update(exc.__dict__)
    else:
        copy = LogStoreError(f"the commit of another transaction of the same group failed: {exc!r}")
    copy.__cause__ = exc
    return copy


class PostgresStore(StoreBase):
    """A store in a PostgreSQL schema: the same API, semantics and errors as :class:`logstore.Store`.

    Get one from ``logstore.open("postgresql://user@host:5432/db", schema="logstore")``. Options:

    - ``schema``: the schema that holds the store's tables (created on first open, with the schema
      if need be; default ``"logstore"``). Several stores live side by side in several schemas.
    - ``durability``: ``"fsync"`` (default: commit returns once the server has flushed the commit
      to its WAL; a server whose ``synchronous_commit`` is ``off`` is set to ``on`` for this store's
      connections, any other setting is kept) or ``"batch"``/``"none"`` (``synchronous_commit = off``:
      commit returns before the flush; a server crash may lose the last commits, about three times
      ``wal_writer_delay``, never half of one).
    - ``readonly``: never write (and never create the tables); writes raise ``ReadOnlyError``.
    - ``max_connections``: most pooled connections (default 10), beside the one that listens.
    - ``timeout``: seconds to wait for a connection (default 30).

    The options of a store directory (``segment_size``, ``checkpoint_bytes``, ``fsync_interval``,
    ``io``, ``retention_age``, ``retention_bytes``) raise ``ValueError``.

    Thread-safe, like the embedded store. Errors of its own:
    :class:`~logstore.postgres.ConnectionLostError` (the server could not be reached; nothing took
    effect) and :class:`~logstore.postgres.CommitOutcomeUnknownError` (the connection broke while
    the commit may have landed; find out with :meth:`locate`).
    """

    # Long on purpose: the open's steps in order, with the cleanup each failure needs.
    def __init__(  # noqa: PLR0915
        self,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        durability: str = "fsync",
        readonly: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if type(schema) is not str or not schema:
            raise TypeError(f"schema must be a non-empty str, got {schema!r}")
        if "\x00" in schema or len(schema.encode("utf-8", "surrogatepass")) > MAX_SCHEMA_NAME:
            raise ValueError(f"schema must be at most {MAX_SCHEMA_NAME} UTF-8 bytes without NUL, got {schema!r}")
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}, got {durability!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be an int >= 1, got {max_connections!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = redact(url)
        self._dsn = url  # with its password: for the connections of subscriptions (positions.py)
        self.schema = schema
        self.path = f"{self.url} schema {schema!r}"
        """Where the store is, for messages (the URL without its password, and the schema)."""
        self.durability = durability
        self.readonly = bool(readonly)
        self._timeout = float(timeout)
        self._max_connections = max_connections
        self._closed = False
        self._forked = False
        self._close_lock = threading.Lock()
        self._signal = Signal()
        self._readers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._heads: dict[str, int] = {}
        self._heads_lock = threading.Lock()
        self._writer = _PgWriter(self)
        self._listener: Listener | None = None
        self._positions = PgPositions(
            self.path,
            schema,
            self._connect_claim,
            self._connection,
            self._query,
            self._translate,
            lambda: self._forked_error() if self._forked else None,
        )
        # Each connection's server process (pid, backend_start): where a commit that broke may still run.
        self._sessions: weakref.WeakKeyDictionary[psycopg.Connection[Any], tuple[int, datetime]] = (
            weakref.WeakKeyDictionary()
        )
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._kwargs: dict[str, Any] = {
            "connect_timeout": max(1, int(timeout)),
            "client_encoding": "UTF8",
            # What pg_stat_activity shows for the store's connections (operators find them by it).
            "application_name": f"logstore {schema}"[:MAX_SCHEMA_NAME],
            # A server that vanished without closing its connections (a failover, a cut network) is found
            # within about a minute, not never: the listening connection would otherwise wait for ever.
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE,
            "keepalives_interval": KEEPALIVE_INTERVAL,
            "keepalives_count": KEEPALIVE_COUNT,
        }
        try:
            first = psycopg.connect(url, autocommit=True, **self._kwargs)
        except psycopg.Error as exc:
            raise ConnectionLostError(f"{self.path}: could not connect: {exc}") from exc
        try:
            with first:
                self._setup(first)
                store_id = ddl.ensure(first, schema, self.path, create=not self.readonly)
                self._sql = _Statements(schema, first)
        except psycopg.Error as exc:
            raise self._translate(exc, first, "could not open the store") from exc
        if store_id is None:
            raise FileNotFoundError(f"{self.path}: no logstore store there (readonly=True creates none)")
        self.store_id = store_id
        _live_stores.add(self)
        try:
            self._pool = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=max_connections,
                kwargs={"autocommit": True, **self._kwargs},
                configure=self._setup,
                check=_check_idle,
                timeout=self._timeout,
                reconnect_timeout=min(MAX_RECONNECT, self._timeout / 2),
                name=f"logstore {schema}",
                open=False,
            )
            self._pool.open(wait=True, timeout=self._timeout)
            self._listener = Listener(url, self._kwargs, ddl.channel_of(store_id), self._signal)
            if not self._listener.listening.wait(self._timeout):
                raise ConnectionLostError(f"{self.path}: could not LISTEN within {self._timeout} s")
        except BaseException:
            self._release()
            raise

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        """Settings of every connection: READ COMMITTED, the durability's ``synchronous_commit``, read-only."""
        row = conn.execute(
            "SELECT current_setting('server_encoding'), current_setting('synchronous_commit'),"
            " pg_backend_pid(), (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
        ).fetchone()
        assert row is not None
        encoding, sync, pid, start = row
        self._sessions[conn] = (pid, start)
        _watch_for_goodbye(conn)
        if encoding != "UTF8":
            raise ValueError(f"{self.path}: the database's encoding is {encoding}; a logstore store needs UTF8")
        conn.execute("SET default_transaction_isolation = 'read committed'")
        # Every statement of the store is a short index lookup: compiling one never pays, and a poor row
        # estimate (a table not analyzed yet) must not make the planner try.
        conn.execute("SET jit = off")
        if self.durability != "fsync":
            conn.execute("SET synchronous_commit = off")
        elif sync == "off":
            conn.execute("SET synchronous_commit = on")
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")

    def _connect_claim(self) -> psycopg.Connection[Any]:
        """A connection of its own for an open subscription, whose session holds its member's lock.

        Autocommit and READ COMMITTED as the pool's; ``synchronous_commit`` at least ``on`` whatever
        the store's durability, so that an acknowledgement is durable when it returns.
        """
        conn = psycopg.connect(
            self._dsn,
            autocommit=True,
            **{**self._kwargs, "application_name": f"logstore {self.schema} subscription"[:MAX_SCHEMA_NAME]},
        )
        try:
            conn.execute("SET default_transaction_isolation = 'read committed'")
            conn.execute("SET jit = off")
            row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
            if row is not None and row[0] == "off":
                conn.execute("SET synchronous_commit = on")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- connections -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is None:
            raise StoreClosedError(f"{self.path}: the store is closed")
        try:
            conn = pool.getconn()
        except psycopg_pool.PoolClosed:
            raise StoreClosedError(f"{self.path}: the store is closed") from None
        except psycopg_pool.PoolTimeout as exc:
            raise ConnectionLostError(
                f"{self.path}: no connection to the server within {self._timeout} s (is it running?)"
            ) from exc
        try:
            yield conn
        finally:
            pool.putconn(conn)  # a broken connection is discarded by the pool

    def _query(self, query: bytes, params: Sequence[object] = (), binary: bool = False) -> list[Any]:
        """Run a read-only statement (its own snapshot) and return its rows.

        A connection that broke is dropped and the statement runs again on another, as many times as the
        pool may hold connections (a server restart breaks them all), plus one on a new connection.
        """
        attempts = self._max_connections + 1
        for attempt in range(attempts):
            with self._connection() as conn:
                try:
                    rows: list[Any] = conn.execute(query, params, binary=binary).fetchall()
                    return rows
                except psycopg.Error as exc:
                    if not _is_broken(conn) or attempt == attempts - 1:
                        raise self._translate(exc, conn, "the read failed") from exc
        raise AssertionError("unreachable")

    def _translate(self, exc: psycopg.Error, conn: psycopg.Connection[Any], what: str) -> Exception:
        """The error to raise for psycopg's ``exc`` on ``conn``: the connection broke, or the server refused."""
        if _is_broken(conn):
            return ConnectionLostError(f"{self.path}: {what}: the connection to the server broke: {exc}")
        return ServerError(f"{self.path}: {what}: the server refused: {exc}", exc.sqlstate)

    def _run_commit(
        self, query: bytes, params: Sequence[object], what: str, message_ids: list[str], streams: list[str]
    ) -> list[Any]:
        """Run ``query``, one statement, as a transaction of its own; return its rows.

        The connection is in autocommit, so the statement is a transaction by itself (READ COMMITTED,
        the session's default, which the functions check): the server commits it before it says the
        statement is done, and psycopg returns only then. One message to the server and one reply: the
        commit is in the same round trip as the statement, and the statement is prepared once per
        connection.

        A server error (the connection alive) means nothing was committed: psycopg's error is raised,
        for the callers to translate (their functions' SQLSTATEs, else :class:`ServerError`). A
        connection that broke once the statement was sent raises :class:`CommitOutcomeUnknownError`:
        the server may have committed before the break.
        """
        with self._connection() as conn:
            try:
                rows: list[Any] = conn.execute(query, params, prepare=True, binary=True).fetchall()
            except psycopg.Error as exc:
                if _is_broken(conn):
                    pid, start = self._sessions.get(conn, (None, None))
                    raise CommitOutcomeUnknownError(f"{self.path}: {what}", message_ids, streams, pid, start) from exc
                raise
            return rows

    # -- the messagestore API ----------------------------------------------------------------

    def begin_tx(self) -> tuple[Tx, Committer]:
        """Begin a transaction: Ax's ``DataStore.BeginTx``."""
        self._check_writable()
        tx = Tx(self, self._writer, None)
        return tx, Committer(tx)

    def append_messages(self, tx: Tx, stream: str, offset: int | AnyOffset, envs: Sequence[Envelope]) -> None:
        """Append ``envs`` to ``stream`` at ``offset`` within ``tx``: as :meth:`logstore.Store.append_messages`.

        The offset is checked against the head this client knows when it matches (the check is repeated
        at commit, against every client's commits), and against the server's head otherwise.
        """
        nameb, offset = self._check_append(tx, stream, offset, envs)
        if offset is ANY:
            tx.stage(
                stream,
                nameb,
                ANY_OFFSET,
                encode_many(envs, stream, None, MAX_ENVELOPE_SIZE),
                [e.message_id for e in envs],
            )
            return
        expected = tx.staged_head(stream)
        if expected is None:
            with self._heads_lock:
                expected = self._heads.get(stream)
            if expected != offset:
                expected = self.head(stream)
            if offset < expected and committed_at(self, stream, offset, envs):
                expected = offset  # a retry of a commit: the commit judges it (DuplicateMessageError)
        check_expected(stream, expected, offset)
        tx.stage(
            stream, nameb, offset, encode_many(envs, stream, offset, MAX_ENVELOPE_SIZE), [e.message_id for e in envs]
        )

    def _commit_group(self, group: list[_Pending]) -> None:
        """Commit the transactions of ``group`` in one ``append_batch`` (the writer's leader calls this).

        Sets each one's result (its range of global offsets) or error: :class:`OffsetConflictError` for
        one that conflicts (the others commit), or, for all alike, the error of a failed round trip
        (:class:`CommitOutcomeUnknownError` each with its own message ids, :class:`ServerError`,
        :class:`ConnectionLostError`). Raises only for what is not a commit's failure (a closed store).
        """
        self._check_writable()
        txs: list[int] = []
        names: list[str] = []
        offsets: list[int | None] = []
        counts: list[int] = []
        payloads: list[bytes] = []
        ids: list[list[str]] = []
        for k, p in enumerate(group, 1):
            appends = p.tx.appends
            txs += [k] * len(appends)
            names += [a[0] for a in appends]
            offsets += [None if a[2] == ANY_OFFSET else a[2] for a in appends]
            counts += [len(a[3]) for a in appends]
            mine = [q for a in appends for q in a[3]]
            payloads += mine
            ids.append([_message_id(q) for q in mine])
        flat_ids = [i for tx_ids in ids for i in tx_ids]
        try:
            rows = self._run_commit(
                self._sql.append,
                (
                    txs,
                    names,
                    offsets,
                    counts,
                    [i.encode("utf-8") for i in flat_ids],
                    payloads,
                    [type_of(q).encode("utf-8") for q in payloads],
                ),
                f"commit of {len(payloads)} messages",
                flat_ids,
                sorted(set(names)),
            )
        except CommitOutcomeUnknownError as exc:
            for p, tx_ids in zip(group, ids, strict=True):
                streams = sorted({a[0] for a in p.tx.appends})
                p.error = CommitOutcomeUnknownError(
                    f"{self.path}: commit of {len(tx_ids)} messages",
                    tx_ids,
                    streams,
                    exc.backend_pid,
                    exc.backend_start,
                )
                p.error.__cause__ = exc.__cause__
            return
        except psycopg.Error as exc:
            for p in group:
                p.error = ServerError(f"{self.path}: the commit failed: the server refused: {exc}", exc.sqlstate)
                p.error.__cause__ = exc
            return
        committed = False
        for k, goff, firsts, stream, expected, given, message_id, why in rows:
            p = group[k - 1]
            if message_id is not None:  # already in the stream elsewhere: nothing of the transaction is written
                p.error = DuplicateMessageError(
                    stream,
                    bytes(message_id).decode("utf-8"),
                    None if given is None else int(given),
                    int(expected),
                    why or "",
                )
                continue
            if goff is None:
                self._saw_head(stream, expected)
                p.error = OffsetConflictError(stream, int(expected), int(given))
                continue
            committed = True
            appends = p.tx.appends
            p.tx.assign([(n, nb, int(f), q) for (n, nb, _f, q), f in zip(appends, firsts, strict=True)])
            for (name, _nb, _f, q), f in zip(appends, firsts, strict=True):
                self._saw_head(name, int(f) + len(q))
            p.result = range(int(goff), int(goff) + sum(len(a[3]) for a in appends))
        if committed:
            self._signal.bump()  # this process's readers need not wait for the notification

    def _saw_head(self, stream: str, head: int | None) -> None:
        """Note that ``stream``'s head is at least ``head``."""
        if head is None:
            return
        with self._heads_lock:
            if len(self._heads) >= HEADS_KEPT:
                self._heads.clear()
            if self._heads.get(stream, -1) < head:
                self._heads[stream] = head

    # -- removal ---------------------------------------------------------------------------

    def truncate_stream(self, stream: str, before: int) -> None:
        """Make the offsets of ``stream`` below ``before`` unreadable, for good: as the embedded store.

        Recorded as a row of the log (it takes a global offset, as the embedded TRUNCATE record does);
        readers skip the removed messages at once and :meth:`compact` deletes their rows. Raises
        ``ValueError`` if the stream has never been written or ``before`` is past its head.
        """
        self._check_writable()
        check_stream_name(stream)
        check_offset(before)
        self._remove(stream, ddl.KIND_TRUNCATE, before)

    def delete_stream(self, stream: str) -> None:
        """Make every message of ``stream`` unreadable (a soft delete), for good: as the embedded store.

        ``open_stream`` then returns ``found=False`` and ``stream_names`` leaves it out until a later
        append, which continues at the old head. Raises ``ValueError`` if the stream has never been written.
        """
        self._check_writable()
        check_stream_name(stream)
        self._remove(stream, ddl.KIND_DELETE, 0)

    def _remove(self, stream: str, kind: int, before: int) -> None:
        try:
            goff = self._run_commit(
                self._sql.remove, (stream, kind, before), f"removal in stream {stream!r}", [], [stream]
            )[0][0]
        except psycopg.Error as exc:
            detail = ddl.parse_detail(exc.diag.message_detail) if exc.sqlstate else {}
            if exc.sqlstate == ddl.NO_STREAM_STATE:
                raise ValueError(f"no stream named {stream!r}") from None
            if exc.sqlstate == ddl.PAST_HEAD_STATE:
                raise ValueError(
                    f"stream {stream!r}: cannot truncate before offset {detail['before']}, its head is {detail['head']}"
                ) from None
            raise ServerError(f"{self.path}: the removal failed: the server refused: {exc}", exc.sqlstate) from exc
        if goff >= 0:
            self._signal.bump(removal=True)  # this process's readers drop what they fetched ahead, at once

    def compact(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        retention_age: float | None = None,
        retention_bytes: int | None = None,
        roll: bool = True,
    ) -> CompactReport:
        """Delete the rows of the messages that truncation and deletion removed (VACUUM then reclaims them).

        Readers and writers go on meanwhile (it takes no lock that they wait for). ``roll`` has no
        meaning here (there are no segments); retention is not available on PostgreSQL, so
        ``retention_age``/``retention_bytes`` raise ``ValueError``. The report's ``messages_removed``
        counts the rows deleted. ``progress(done, total)`` is called once, at the end.
        """
        self._check_writable()
        if retention_age is not None or retention_bytes is not None:
            raise ValueError("retention is not available on a PostgreSQL store; use truncate_stream/delete_stream")
        if not isinstance(roll, bool):
            raise TypeError(f"roll must be True or False, not {roll!r}")
        with self._connection() as conn:
            try:
                removed = conn.execute(self._sql.compact).rowcount
            except psycopg.Error as exc:
                raise self._translate(exc, conn, "compact failed") from exc
        if progress is not None:
            progress(1, 1)
        return CompactReport(messages_removed=max(0, removed))

    # -- reading ---------------------------------------------------------------------------

    def open_stream(self, ds: PostgresStore, stream: str, offset: int) -> tuple[PgStreamReader, bool]:
        """Open ``stream`` for reading from ``offset`` (which may be beyond its end).

        Returns ``(stream, found)``; ``found`` is False if the stream has no committed message yet, or
        is deleted. The stream works either way: ``next()`` waits for its messages.
        """
        self._check_open()
        self._check_ds(ds)
        check_stream_name(stream)
        check_offset(offset)
        # One round trip: whether the stream exists, and the reader's first batch (one snapshot).
        removals = self._signal.removals  # before the query, as a reader's fetch (see PgStreamReader)
        limit = PgStreamReader.FIRST_PREFETCH
        rows = self._query(self._sql.open_stream, (offset, limit, FETCH_BYTES, stream), binary=True)
        found = bool(rows and rows[0][0])
        batch = [(soff, goff, env) for _found, soff, goff, env in rows if soff is not None]
        reader = PgStreamReader(self, stream, offset, found, (batch, limit, removals))
        self._readers.add(reader)
        return reader, found

    def open_global(self, ds: PostgresStore, offset: int, types: Collection[str] | None = None) -> PgGlobalReader:
        """Open the whole store as one stream in commit order, from global ``offset`` (may be beyond the end).

        ``types``: read only the messages of these types; the server selects them by the ``type``
        column, so the others are never fetched.
        """
        self._check_open()
        self._check_ds(ds)
        check_offset(offset)
        wanted = check_types(types)
        reader = PgGlobalReader(self, offset) if wanted is None else PgSelectReader(self, offset, None, wanted)
        self._readers.add(reader)
        return reader

    def open_category(
        self, ds: PostgresStore, category: str, offset: int, types: Collection[str] | None = None
    ) -> PgSelectReader:
        """Open every stream of ``category`` (stream names up to their first ``-``) as one stream in commit
        order, from global ``offset``; ``types`` filters as in :meth:`open_global`. Read through the
        index on ``log (category, goff)``."""
        self._check_open()
        self._check_ds(ds)
        check_category(category)
        check_offset(offset)
        wanted = check_types(types)
        reader = PgSelectReader(self, offset, category, wanted)
        self._readers.add(reader)
        return reader

    def stream(self, stream: str, offset: int = 0) -> PgStreamReader:
        """``open_stream(store, stream, offset)`` in short: the reader, whose ``found`` says whether it exists."""
        return self.open_stream(self, stream, offset)[0]

    def global_stream(self, offset: int = 0, types: Collection[str] | None = None) -> PgGlobalReader:
        """``open_global(store, offset, types)`` in short: every stream in commit order, from global ``offset``."""
        return self.open_global(self, offset, types)

    def category(self, category: str, offset: int = 0, types: Collection[str] | None = None) -> PgSelectReader:
        """``open_category(store, category, offset, types)`` in short."""
        return self.open_category(self, category, offset, types)

    def read(self, stream: str, offset: int = 0) -> list[Envelope]:
        """Every message of ``stream`` from ``offset`` on that is committed now, in offset order.

        What a reader opened at ``offset`` iterates (``list(store.stream(stream, offset))``), in one
        call: the way to load a whole stream (an event-sourced entity, say). One query, one round trip,
        for a stream of up to :data:`READ_PAGE` messages from ``offset`` (one more per further page):
        a page shorter than asked for has reached the stream's end as of a query made during this call,
        so no further query is needed to know it. Empty for a stream that does not exist, is deleted, or
        ends before ``offset``; removed offsets are skipped.
        """
        self._check_open()
        check_stream_name(stream)
        check_offset(offset)
        out: list[Envelope] = []
        start = offset
        while True:
            rows = self._read_stream(stream, start, READ_PAGE)
            out += [decode(env) for _soff, _goff, env in rows]
            if len(rows) < READ_PAGE and sum(len(env) for _soff, _goff, env in rows) < FETCH_BYTES:
                break  # neither bound cut the page: it reached the stream's end
            start = int(rows[-1][0]) + 1
        if rows:
            self._saw_head(stream, int(rows[-1][0]) + 1)
        return out

    def _read_stream(self, name: str, start: int, limit: int) -> list[tuple[int, int, bytes]]:
        self._check_open()
        return self._query(self._sql.read_stream, (name, start, limit, FETCH_BYTES), binary=True)

    def _read_global(self, start: int, limit: int) -> tuple[int, list[tuple[int, str, int, bytes]]]:
        self._check_open()
        rows = self._query(self._sql.read_global, (start, limit, FETCH_BYTES), binary=True)
        end = next(int(soff) for goff, _name, soff, _env in rows if goff == -1)
        return end, sorted((row for row in rows if row[0] != -1), key=lambda row: int(row[0]))

    def _read_select(
        self, category: str | None, types: list[bytes] | None, start: int, limit: int
    ) -> tuple[int, list[tuple[int, str, int, bytes]]]:
        self._check_open()
        args: tuple[object, ...]
        if category is None:
            statement, args = self._sql.read_types, (types, start, limit, FETCH_BYTES)
        elif types is None:
            statement, args = self._sql.read_category, (category, start, limit, FETCH_BYTES)
        else:
            statement, args = self._sql.read_category_types, (category, types, start, limit, FETCH_BYTES)
        rows = self._query(statement, args, binary=True)
        end = next(int(soff) for goff, _name, soff, _env in rows if goff == -1)
        return end, sorted((row for row in rows if row[0] != -1), key=lambda row: int(row[0]))

    # -- durable subscriptions ---------------------------------------------------------------

    def subscribe(
        self,
        name: str,
        category: str | None = None,
        types: Collection[str] | None = None,
        group: tuple[int, int] | None = None,
    ) -> Subscription[PgClaim]:
        """A durable subscription: a stream that begins where the subscription ``name`` last acknowledged.

        As :meth:`logstore.Store.subscribe`: ``category`` (the whole log when None), ``types`` (every
        type when None), ``group=(member, size)``; the first subscribe of a name creates it at the
        start of the log, later ones must give the same category, types and group size
        (``ValueError``). The positions are rows of the ``subscriptions`` table;
        :meth:`Subscription.ack` saves one with a committed ``UPDATE`` (durable when it returns). An
        open subscription holds its member with an advisory lock on a connection of its own (beside
        the pool's): a second one, in any process, raises :class:`~logstore.SubscriptionBusyError`.
        """
        self._check_writable()
        definition, member = definition_of(name, category, types, group)
        return open_subscription(self, self._positions, definition, member)

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Every durable subscription of the store, sorted by name, with each member's saved position."""
        self._check_open()
        return self._positions.list()

    def delete_subscription(self, name: str) -> bool:
        """Delete a durable subscription and its positions; whether it existed.

        Raises :class:`~logstore.SubscriptionBusyError` (and deletes nothing) while one of its
        members is open.
        """
        self._check_writable()
        return self._positions.delete(check_subscription_name(name))

    # -- state -----------------------------------------------------------------------------

    def head(self, stream: str) -> int:
        """The next unused offset of ``stream`` (0 if it has no committed message); as the embedded store."""
        self._check_open()
        check_stream_name(stream)
        rows = self._query(self._sql.head, (stream,))
        head = int(rows[0][0]) if rows else 0
        self._saw_head(stream, head)
        return head

    def stream_info(self, stream: str) -> StreamInfo | None:
        """``(first, head, deleted)`` of ``stream``, or ``None`` if it has never been written."""
        self._check_open()
        check_stream_name(stream)
        rows = self._query(self._sql.info, (stream,))
        if not rows:
            return None
        first, head, deleted = rows[0]
        return StreamInfo(int(first), int(head), bool(deleted))

    def stream_names(self) -> list[str]:
        """Every stream with a committed message that is not deleted, in order of first commit."""
        self._check_open()
        return [row[0] for row in self._query(self._sql.names)]

    @property
    def global_head(self) -> int:
        """The next unused global offset (messages, truncations and deletions committed)."""
        self._check_open()
        return int(self._query(self._sql.global_head)[0][0])

    @property
    def log_start(self) -> int:
        """The first global offset kept: always 0 (no retention on PostgreSQL)."""
        self._check_open()
        return 0

    @property
    def max_envelope_size(self) -> int:
        """The largest encoded envelope this store accepts, in bytes (16 MiB, as the embedded store)."""
        return MAX_ENVELOPE_SIZE

    def locate(self, message_id: str) -> list[Location]:
        """Every place the message with ``message_id`` is readable: ``(stream, offset, global_offset)``.

        Empty if no committed, unremoved message has that id: after a
        :class:`~logstore.postgres.CommitOutcomeUnknownError`, the way to learn whether the commit
        landed (all of its messages did, or none).
        """
        self._check_open()
        check_message_id(message_id)
        rows = self._query(self._sql.locate, (message_id.encode("utf-8"),), binary=True)
        return [Location(n, int(o), int(g)) for n, o, g in rows]

    def commit_outcome(self, error: CommitOutcomeUnknownError, timeout: float | None = None) -> range | None:
        """Whether the commit that raised ``error`` landed: its global offsets, or None if it did not.

        First makes sure the transaction can no longer commit: the server process of the broken
        connection is ended (``pg_terminate_backend``, if it is still there: the client is gone) and
        waited for, up to ``timeout`` seconds (the store's ``timeout`` by default). Then the messages are
        looked up by id: a commit is all there or not at all. A retry after None is safe.

        Raises ``error`` again if the answer cannot be known: the old server process did not end in
        time, or the server process is unknown (a connection made before the error's
        ``backend_pid`` was recorded). A truncation or deletion (no message ids) raises ``ValueError``:
        ``stream_info`` shows whether it happened. :class:`ConnectionLostError` if the server is
        still unreachable.
        """
        self._check_open()
        if not isinstance(error, CommitOutcomeUnknownError):
            raise TypeError(f"error must be a CommitOutcomeUnknownError, got {type(error).__name__}")
        if not error.message_ids:
            raise ValueError("a removal has no message ids to look up: stream_info() shows whether it happened")
        if error.backend_pid is None or error.backend_start is None:
            raise error
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        session = (error.backend_pid, error.backend_start)
        while self._query(self._sql.end_session, session)[0][0]:
            if time.monotonic() >= deadline:
                raise error
            time.sleep(0.01)  # the server's own view is polled: there is no event for a process's end
        ids = [i.encode("utf-8") for i in error.message_ids]
        located = self._query(self._sql.locate_any, (ids[0],), binary=True)
        for (goff,) in located:
            rows = self._query(self._sql.ids_at, (goff, goff + len(ids)), binary=True)
            if [bytes(r[0]) for r in rows] == ids:
                return range(goff, goff + len(ids))
        return None

    @property
    def closed(self) -> bool:
        return self._closed

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close every open stream (a ``next()`` waiting in another thread raises ``StreamClosedError``),
        stop listening and close the connections. Idempotent."""
        if self._forked:
            # In a child made by fork(): the connections are the parent's. Closing one would send the
            # server a goodbye on the parent's socket; psycopg never closes them in a child either.
            self._closed = True
            close_readers(self._readers)
            return
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        close_readers(self._readers)
        self._signal.bump()
        try:
            self._positions.close()  # open subscriptions' members are released
        finally:
            self._release()

    def _release(self) -> None:
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        try:
            if listener is not None:
                listener.stop()
        finally:
            if pool is not None:
                pool.close()

    def _forked_error(self) -> StoreForkedError:
        return StoreForkedError(
            f"{self.path}: this store was opened in another process and is used in a child made by fork();"
            " its connections cannot be shared: open the store in the child instead"
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else self.durability)
        return f"<logstore.PostgresStore {self.path} {state}>"


class _Statements:
    """The store's statements, composed once for its schema (as bytes: psycopg then converts each one
    once, where a :class:`psycopg.sql.Composed` would be rendered again on every execution)."""

    def __init__(self, schema: str, conn: psycopg.Connection[Any]) -> None:
        s = sql.Identifier(schema)

        def q(text: str) -> bytes:
            return sql.SQL(text).format(s=s).as_bytes(conn)

        self.append = q("SELECT * FROM {s}.append_batch(%s, %s, %s, %s, %b, %b, %b)")
        self.remove = q("SELECT {s}.remove_stream(%s, %s::smallint, %s)")
        self.head = q("SELECT head FROM {s}.streams WHERE name = %s")
        self.info = q("SELECT first, head, deleted FROM {s}.streams WHERE name = %s")
        self.names = q("SELECT name FROM {s}.streams WHERE head > 0 AND NOT deleted ORDER BY first_goff")
        self.global_head = q("SELECT next_goff FROM {s}.head")
        self.locate = q(
            "SELECT s.name, l.soff, l.goff FROM {s}.log l JOIN {s}.streams s ON s.id = l.stream_id"
            " WHERE l.message_id = %s AND l.kind = 0 AND l.soff >= s.first ORDER BY l.goff"
        )
        # Ends a broken commit's server process if it is still there; true while it still is.
        self.end_session = q(
            "SELECT count(pg_terminate_backend(pid)) > 0 FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
        )
        self.locate_any = q("SELECT goff FROM {s}.log WHERE message_id = %s AND kind = 0 ORDER BY goff")
        self.ids_at = q("SELECT message_id FROM {s}.log WHERE goff >= %s AND goff < %s ORDER BY goff")
        # The stream's row and its first messages (a lateral join: no row for a stream never written, one
        # row with NULL messages for a stream without readable ones), for open_stream: one snapshot.
        # Every read of envelopes is bounded in messages (LIMIT) and in bytes (FETCH_BYTES): a message is
        # fetched only if the envelopes before it in the batch come to less than the bound. The running sum
        # is of octet_length, which reads a stored value's size without fetching it.
        self.open_stream = q(
            "SELECT s.head > 0 AND NOT s.deleted, l.soff, l.goff, l.envelope FROM {s}.streams s"
            " LEFT JOIN LATERAL (SELECT soff, goff, envelope FROM"
            "  (SELECT soff, goff, envelope,"
            "    sum(octet_length(envelope)) OVER (ORDER BY soff ROWS UNBOUNDED PRECEDING)"
            "     - octet_length(envelope) AS before"
            "   FROM (SELECT soff, goff, envelope FROM {s}.log"
            "    WHERE stream_id = s.id AND kind = 0 AND soff >= greatest(%s, s.first) ORDER BY soff LIMIT %s) r) w"
            "  WHERE before < %s) l ON true"
            " WHERE s.name = %s ORDER BY l.soff"
        )
        self.read_stream = q(
            "SELECT soff, goff, envelope FROM"
            " (SELECT soff, goff, envelope,"
            "   sum(octet_length(envelope)) OVER (ORDER BY soff ROWS UNBOUNDED PRECEDING)"
            "    - octet_length(envelope) AS before"
            "  FROM (SELECT l.soff, l.goff, l.envelope FROM {s}.streams s JOIN {s}.log l ON l.stream_id = s.id"
            "   WHERE s.name = %s AND l.kind = 0 AND l.soff >= greatest(%s, s.first)"
            "   ORDER BY l.soff LIMIT %s) r) w"
            " WHERE before < %s ORDER BY soff"
        )
        # One statement, one snapshot: the end (head row, marked by goff -1, its next_goff as soff) and the
        # messages below it agree. A union rather than a join: the head table's row estimate then does not
        # multiply the plan's cost (which made the planner JIT-compile a 256-row read).
        self.read_global = q(
            "(SELECT goff, name, soff, envelope FROM"
            " (SELECT goff, name, soff, envelope,"
            "   sum(octet_length(envelope)) OVER (ORDER BY goff ROWS UNBOUNDED PRECEDING)"
            "    - octet_length(envelope) AS before"
            "  FROM (SELECT l.goff, s.name, l.soff, l.envelope FROM {s}.log l JOIN {s}.streams s ON s.id = l.stream_id"
            "   WHERE l.goff >= %s AND l.kind = 0 AND l.soff >= s.first ORDER BY l.goff LIMIT %s) r) w"
            " WHERE before < %s)"
            " UNION ALL (SELECT -1, NULL, next_goff, NULL FROM {s}.head)"
        )
        # The category and type-filtered reads: read_global's statement with the category's or the types'
        # condition, which the indexes log_category (category, goff) and log_type (type, goff) serve.
        select = (
            "(SELECT goff, name, soff, envelope FROM"
            " (SELECT goff, name, soff, envelope,"
            "   sum(octet_length(envelope)) OVER (ORDER BY goff ROWS UNBOUNDED PRECEDING)"
            "    - octet_length(envelope) AS before"
            "  FROM (SELECT l.goff, s.name, l.soff, l.envelope FROM {s}.log l JOIN {s}.streams s ON s.id = l.stream_id"
            "   WHERE {where} AND l.goff >= %s AND l.kind = 0 AND l.soff >= s.first ORDER BY l.goff LIMIT %s) r) w"
            " WHERE before < %s)"
            " UNION ALL (SELECT -1, NULL, next_goff, NULL FROM {s}.head)"
        )
        self.read_category = q(select.replace("{where}", "l.category = %s"))
        self.read_types = q(select.replace("{where}", "l.type = ANY(%b)"))
        self.read_category_types = q(select.replace("{where}", "l.category = %s AND l.type = ANY(%b)"))
        self.compact = q(
            "DELETE FROM {s}.log l USING {s}.streams s WHERE l.stream_id = s.id AND l.kind = 0 AND l.soff < s.first"
        )
