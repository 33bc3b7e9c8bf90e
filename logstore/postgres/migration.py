"""A PostgreSQL store as the source or the destination of ``logstore migrate``.

:class:`PgSource` reads a schema's ``log`` rows in global order, envelopes as the bytes the
``envelope`` column holds. A global offset without a row is either a message that ``compact()``
deleted or a hole; :func:`assign_removed` tells them apart and gives each compacted message its
stream and stream offset (see there), because a store directory needs a record at every global
offset.

:class:`PgDestination` writes rows directly, each batch in one server transaction: the ``log`` rows
(``COPY``), the new and changed ``streams`` rows, and ``head.next_goff`` moved to the batch's end,
so a copy that a kill interrupts holds a prefix of the source's log of whole batches and goes on at
``head.next_goff``. It writes what ``append_batch`` and ``remove_stream`` would have written, at
the source's offsets: a message row with its envelope bytes and ``message_id``, a truncation or
deletion row; a directory's REMOVED, LOST and RETAIN records, and its offsets below the log start,
become global offsets without a row, as PostgreSQL's own compaction leaves them. It takes no lock
that the store's writers take in another order: migrate into a store that nothing else writes to.

An unfinished copy is marked by the table ``<schema>.migration`` (one row: the source's identity,
where it was, when the copy began), created in the same transaction that finds the store empty,
and dropped once the copy has been checked. A store that holds a record or a stream and no such
row (or another source's) is refused.
"""

from __future__ import annotations

import bisect
import heapq
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from logstore.checks import category_of
from logstore.envelope import type_of
from logstore.migration import MigrationError, NotEmptyError, RawRecord, Source, StreamState
from logstore.postgres import positions
from logstore.postgres import schema as ddl
from logstore.postgres.errors import ConnectionLostError
from logstore.postgres.store import message_id_of, redact
from logstore.results import SubscriptionInfo

MARKER_TABLE = "migration"
"""The table that marks an unfinished copy into a schema."""

PAGE_ROWS = 256
"""Most rows read in one query."""
PAGE_BYTES = 8 << 20
"""Most envelope bytes read in one query (a larger envelope is read alone)."""
_NO_END = 1 << 62

_KIND_OF = {ddl.KIND_MESSAGE: "message", ddl.KIND_TRUNCATE: "truncate", ddl.KIND_DELETE: "delete"}


def connect(url: str, where: str) -> psycopg.Connection[Any]:
    """A connection of the migration's own (autocommit; transactions are explicit)."""
    try:
        conn = psycopg.connect(url, autocommit=True, client_encoding="UTF8")
    except psycopg.Error as exc:
        raise ConnectionLostError(f"{where}: could not connect: {exc}") from exc
    conn.execute("SET default_transaction_isolation = 'read committed'")
    conn.execute("SET jit = off")
    return conn


def where_of(url: str, schema: str) -> str:
    return f"{redact(url)} schema {schema!r}"


def paged(
    conn: psycopg.Connection[Any],
    schema: str,
    columns: str,
    start: int,
    end: int | None = None,
    where: str = "",
    params: tuple[Any, ...] = (),
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``log l JOIN streams s`` at global offsets ``start`` .. ``end - 1`` (and ``where``), in
    global order, ``columns`` of each: read a page at a time, at most :data:`PAGE_ROWS` rows and
    :data:`PAGE_BYTES` envelope bytes (one larger envelope alone), so that envelopes of megabytes do
    not pile up in memory. ``columns`` (of ``l`` and ``s``) and ``where`` (of ``l`` only) are SQL text
    with ``{s}`` for the schema."""
    cond = "l.goff >= %s AND l.goff < %s" + (f" AND {where}" if where else "")
    # The page's last global offset: the first PAGE_ROWS rows (the primary key's order, then LIMIT), and of
    # those as many as fit in PAGE_BYTES. The window runs over the limited rows only.
    bound_query = sql.SQL(
        "SELECT max(goff) FROM (SELECT goff, sum(size) OVER (ORDER BY goff) AS total,"
        " row_number() OVER (ORDER BY goff) AS n FROM (SELECT l.goff, coalesce(octet_length(l.envelope), 0) AS size"
        " FROM {s}.log l WHERE " + cond + " ORDER BY l.goff LIMIT %s) p) w WHERE total <= %s OR n = 1"
    ).format(s=sql.Identifier(schema))
    rows_query = sql.SQL(
        "SELECT "
        + columns
        + " FROM {s}.log l JOIN {s}.streams s ON s.id = l.stream_id WHERE "
        + cond
        + " ORDER BY l.goff"
    ).format(s=sql.Identifier(schema))
    stop = _NO_END if end is None else end
    at = start
    while at < stop:
        row = conn.execute(bound_query, (at, stop, *params, PAGE_ROWS, PAGE_BYTES)).fetchone()
        if row is None or row[0] is None:
            return
        bound = int(row[0]) + 1
        yield from conn.execute(rows_query, (at, bound, *params), binary=True).fetchall()
        at = bound


def has_marker(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, MARKER_TABLE).as_string(conn),)).fetchone()
    return row is not None and row[0] is not None


def read_marker(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any] | None:
    """The row of the marker table (``source``, ``origin``, ``started_at``), or ``None`` when unmarked."""
    if not has_marker(conn, schema):
        return None
    row = conn.execute(
        sql.SQL("SELECT source, origin, started_at FROM {}").format(sql.Identifier(schema, MARKER_TABLE))
    ).fetchone()
    if row is None:
        return None
    return {"source": row[0], "where": row[1], "started_at": row[2].isoformat()}


# -- the source --------------------------------------------------------------------------------


class PgSource:
    """The records and streams of the store in ``schema`` at ``url`` (its own connection; ``close()`` it)."""

    def __init__(self, url: str, schema: str) -> None:
        self.where = where_of(url, schema)
        self.schema = schema
        self.conn = connect(url, self.where)
        try:
            store_id = ddl.ensure(self.conn, schema, self.where, create=False)
        except BaseException:
            self.conn.close()
            raise
        if store_id is None:
            self.conn.close()
            raise FileNotFoundError(f"{self.where}: no logstore store there")
        self.store_id: uuid.UUID = store_id
        self._plan: Plan | None = None

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    @property
    def identity(self) -> str:
        return "postgresql " + self.store_id.hex

    @property
    def global_head(self) -> int:
        row = self.conn.execute(self._q("SELECT next_goff FROM {s}.head")).fetchone()
        return 0 if row is None else int(row[0])

    @property
    def log_start(self) -> int:
        return 0

    def streams(self) -> list[StreamState]:
        rows = self.conn.execute(
            self._q("SELECT name, first, head, deleted, first_goff FROM {s}.streams ORDER BY first_goff NULLS LAST, id")
        ).fetchall()
        return [StreamState(r[0], int(r[1]), int(r[2]), bool(r[3]), r[4]) for r in rows]

    def subscriptions(self) -> list[SubscriptionInfo]:
        return positions.infos_of_rows(self.conn.execute(self._q(positions.LIST)).fetchall())

    def plan(self) -> Plan:
        """The compacted messages among the gaps, and the holes (computed once)."""
        if self._plan is None:
            self._plan = assign_removed(self.conn, self.schema)
        return self._plan

    def holes(self) -> list[tuple[int, int]]:
        """Ranges ``(start, end)`` of global offsets without a row that no compacted message accounts for.

        Raises :class:`~logstore.migration.MigrationError` when the rows contradict each other (a
        compacted message that fits no gap), which ``logstore verify`` of the URL reports in detail.
        """
        plan = self.plan()
        if plan.problems:
            raise MigrationError(f"{self.where}: " + "; ".join(plan.problems[:3]) + " (run logstore verify on it)")
        return plan.holes

    def records(self, start: int, end: int) -> Iterator[RawRecord]:
        removed = self.plan().removed
        goffs = sorted(removed)
        k = bisect.bisect_left(goffs, start)
        for goff, kind, name, soff, envelope in paged(
            self.conn, self.schema, "l.goff, l.kind, s.name, l.soff, l.envelope", start, end
        ):
            while k < len(goffs) and goffs[k] < goff:
                g = goffs[k]
                yield RawRecord(g, "removed", removed[g][0], removed[g][1], None, None)
                k += 1
            kind_name = _KIND_OF.get(kind)
            if kind_name is None:
                raise MigrationError(f"{self.where}: global offset {goff}: a row of kind {kind}, not 0, 1 or 2")
            payload = bytes(envelope) if envelope is not None else None
            if kind_name == "message" and payload is None:
                raise MigrationError(f"{self.where}: global offset {goff}: a message row without an envelope")
            yield RawRecord(int(goff), kind_name, name, int(soff), payload, None)
        while k < len(goffs) and goffs[k] < end:
            g = goffs[k]
            yield RawRecord(g, "removed", removed[g][0], removed[g][1], None, None)
            k += 1

    def close(self) -> None:
        self.conn.close()


class Plan:
    """What the global offsets without a row were: ``removed`` (goff -> (stream, offset)) and ``holes``."""

    def __init__(self) -> None:
        self.removed: dict[int, tuple[str, int]] = {}
        self.holes: list[tuple[int, int]] = []
        self.problems: list[str] = []


def _gaps(conn: psycopg.Connection[Any], s: sql.Identifier) -> list[tuple[int, int]]:
    """The ranges ``(start, end)`` of global offsets below ``head.next_goff`` without a row."""
    q = sql.SQL(
        "SELECT goff + 1, nxt FROM (SELECT goff, lead(goff) OVER (ORDER BY goff) AS nxt FROM {s}.log) g"
        " WHERE nxt > goff + 1 ORDER BY goff"
    ).format(s=s)
    inner = [(int(a), int(b)) for a, b in conn.execute(q)]
    row = conn.execute(
        sql.SQL("SELECT min(goff), max(goff), (SELECT next_goff FROM {s}.head) FROM {s}.log").format(s=s)
    ).fetchone()
    assert row is not None
    low, high, head = row
    head = int(head or 0)
    if low is None:
        return [(0, head)] if head else []
    out = [(0, int(low))] if low > 0 else []
    out += inner
    if high + 1 < head:
        out.append((int(high) + 1, head))
    return out


@dataclass
class _S:
    """A stream with compacted messages, while :func:`assign_removed` hands out gaps: its next missing offset ``k``."""

    name: str
    missing: int
    first_goff: int | None
    stop: int | None
    k: int = 0
    deadline_befores: list[int] = field(default_factory=list)
    deadline_goffs: list[int] = field(default_factory=list)
    deletes: list[tuple[int, int]] = field(default_factory=list)


# Long on purpose: one scheduling pass, its rules inline.
def assign_removed(conn: psycopg.Connection[Any], schema: str) -> Plan:  # noqa: PLR0912, PLR0915
    """Give each global offset without a row the compacted message it held, where the log tells.

    ``compact()`` deletes the message rows below their stream's first offset, so a stream whose
    lowest message row has offset ``m`` lost exactly its offsets ``0 .. m - 1`` (all of them, ``head``,
    when no message row is left). Each of those stood at a global offset that now has no row, and
    the rest of the log bounds where: offset 0 stood at the stream's ``first_goff``; each offset
    stood after the previous one, after every deletion of the stream at or below it (a deletion
    row's offset is the stream's head when it was written), and before the stream's first
    remaining message and before every truncation or deletion that removed it (one whose offset is
    above it). The gaps are handed out in global order, each to the stream whose next missing
    offset must come soonest (earliest deadline first, which finds an assignment whenever one
    exists). PostgreSQL does not record which of two streams' removed messages came first when
    both would fit, so an assignment may differ from the original order there; no reader can tell,
    since both are removed. Gaps that no missing offset fits are holes (a directory's LOST and
    RETAIN records and its offsets below the log start, when the store was copied from one).
    """
    s = sql.Identifier(schema)
    plan = Plan()
    gaps = _gaps(conn, s)
    if not gaps:
        return plan
    streams = conn.execute(
        sql.SQL(
            "SELECT s.id, s.name, s.head, s.first_goff, m.low, m.low_goff FROM {s}.streams s"
            " LEFT JOIN (SELECT stream_id, min(soff) AS low, min(goff) AS low_goff FROM {s}.log WHERE kind = 0"
            " GROUP BY stream_id) m ON m.stream_id = s.id"
        ).format(s=s)
    ).fetchall()
    controls: dict[int, list[tuple[int, int, int]]] = {}
    for sid, goff, kind, soff in conn.execute(
        sql.SQL("SELECT stream_id, goff, kind, soff FROM {s}.log WHERE kind <> 0 ORDER BY goff").format(s=s)
    ):
        controls.setdefault(int(sid), []).append((int(goff), int(kind), int(soff)))

    state: dict[int, _S] = {}
    pinned: dict[int, int] = {}  # first_goff -> stream id, for streams missing offset 0
    for sid, name, head, first_goff, low, low_goff in streams:
        missing = int(head) if low is None else int(low)
        if missing <= 0:
            continue
        # The stream's first remaining message comes after every missing offset.
        st = _S(name, missing, first_goff, int(low_goff) if low_goff is not None else None)
        ctl = controls.get(int(sid), [])
        # Deadlines from removals: the earliest global offset among those whose offset exceeds k.
        by_before = sorted((soff, goff) for goff, _kind, soff in ctl)
        suffix: list[int] = [0] * len(by_before)
        best = None
        for i in range(len(by_before) - 1, -1, -1):
            g = by_before[i][1]
            best = g if best is None else min(best, g)
            suffix[i] = best
        st.deadline_befores = [b for b, _g in by_before]
        st.deadline_goffs = suffix
        st.deletes = sorted((soff, goff) for goff, kind, soff in ctl if kind == ddl.KIND_DELETE)
        state[int(sid)] = st
        if first_goff is None:
            plan.problems.append(f"stream {name!r}: offsets 0 .. {missing - 1} have no row and no first_goff")
            continue
        pinned[int(first_goff)] = int(sid)

    def deadline(st: _S) -> int:
        k = st.k
        i = bisect.bisect_right(st.deadline_befores, k)
        d = st.deadline_goffs[i] if i < len(st.deadline_goffs) else None
        if st.stop is not None:
            d = st.stop if d is None else min(d, st.stop)
        return d if d is not None else 1 << 63

    def release(st: _S) -> int:
        i = bisect.bisect_right(st.deletes, (st.k, 1 << 63))
        return st.deletes[i - 1][1] + 1 if i else 0

    ready: list[tuple[int, int, int]] = []  # (deadline, first_goff, sid): next offset released
    waiting: list[tuple[int, int, int]] = []  # (release, first_goff, sid)

    def queue(sid: int, st: _S) -> None:
        waiting.append((release(st), st.first_goff or 0, sid))
        heapq.heapify(waiting)

    unassigned: list[int] = []
    for start, end in gaps:
        for g in range(start, end):
            while waiting and waiting[0][0] <= g:
                _r, fg, sid = heapq.heappop(waiting)
                heapq.heappush(ready, (deadline(state[sid]), fg, sid))
            pick = pinned.get(g)
            if pick is None and ready:
                pick = heapq.heappop(ready)[2]
            if pick is None:
                unassigned.append(g)
                continue
            st = state[pick]
            if g >= deadline(st):
                plan.problems.append(
                    f"stream {st.name!r}: offset {st.k} has no row and no global offset left where it fits"
                )
            plan.removed[g] = (st.name, st.k)
            st.k += 1
            if st.k < st.missing:
                queue(pick, st)
    for g in unassigned:
        if plan.holes and plan.holes[-1][1] == g:
            plan.holes[-1] = (plan.holes[-1][0], g + 1)
        else:
            plan.holes.append((g, g + 1))
    for st in state.values():
        if st.k < st.missing and st.first_goff is not None:
            plan.problems.append(f"stream {st.name!r}: offsets {st.k} .. {st.missing - 1} have no row and no gap")
    return plan


# -- the destination ---------------------------------------------------------------------------


class PgDestination:
    """The store in ``schema`` at ``url`` that ``logstore migrate`` copies into (created if missing)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.where = where_of(url, schema)
        self.conn: psycopg.Connection[Any] | None = None
        self._channel = ""
        self._streams: dict[str, list[Any]] = {}  # name -> [id, head, first, deleted]
        self._first_goffs: dict[str, int | None] = {}
        self._readers: list[PgSource] = []

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema), m=sql.Identifier(self.schema, MARKER_TABLE))

    def start(self, source: Source) -> int:
        self.conn = conn = connect(self.url, self.where)
        store_id = ddl.ensure(conn, self.schema, self.where, create=True)
        assert store_id is not None
        self._channel = ddl.channel_of(store_id)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('logstore migrate ' || %s, 0))", (self.schema,))
            marker = read_marker(conn, self.schema)
            if marker is not None:
                if marker["source"] != source.identity:
                    raise NotEmptyError(
                        f"{self.where}: holds an unfinished copy of another store ({marker['where']},"
                        f" {marker['source']}); not of {source.where}"
                    )
            else:
                counts = conn.execute(
                    self._q(
                        "SELECT (SELECT next_goff FROM {s}.head), (SELECT count(*) FROM {s}.streams),"
                        " (SELECT count(DISTINCT name) FROM {s}.subscriptions)"
                    )
                ).fetchone()
                head, nstreams, nsubs = counts or (0, 0, 0)
                if head or nstreams or nsubs:
                    subs = f", {nsubs} subscriptions" if nsubs else ""
                    raise NotEmptyError(
                        f"{self.where}: not empty ({head} global offsets, {nstreams} streams{subs}); migrate copies"
                        " into an empty store, or resumes its own unfinished copy"
                    )
                conn.execute(
                    self._q(
                        "CREATE TABLE {m} (one boolean PRIMARY KEY DEFAULT true CHECK (one), source text NOT NULL,"
                        " origin text NOT NULL, started_at timestamptz NOT NULL DEFAULT now())"
                    )
                )
                conn.execute(
                    self._q("INSERT INTO {m} (source, origin) VALUES (%s, %s)"), (source.identity, source.where)
                )
            for sid, name, head, first, deleted in conn.execute(
                self._q("SELECT id, name, head, first, deleted FROM {s}.streams")
            ):
                self._streams[name] = [sid, head, first, deleted]
            row = conn.execute(self._q("SELECT next_goff FROM {s}.head")).fetchone()
            at = int(row[0]) if row is not None else 0
        self._first_goffs = {st.name: st.first_goff for st in source.streams()}
        return at

    def write(self, records: Sequence[RawRecord], end: int) -> None:
        conn = self.conn
        if conn is None:
            raise MigrationError(f"{self.where}: not started")
        rows: list[tuple[int, int, int, int, bytes | None, bytes | None, str | None, bytes | None]] = []
        touched: dict[str, list[Any]] = {}
        with conn.transaction():
            for rec in records:
                name = rec.stream
                if name is None:
                    continue  # a RETAIN record, a LOST record of no stream: a global offset without a row
                st = self._streams.get(name)
                if st is None:
                    first_goff = self._first_goffs.get(name)
                    row = conn.execute(
                        self._q("INSERT INTO {s}.streams (name, first_goff) VALUES (%s, %s) RETURNING id"),
                        (name, rec.goff if first_goff is None else first_goff),
                    ).fetchone()
                    assert row is not None
                    st = self._streams[name] = [row[0], 0, 0, False]
                touched[name] = st
                offset = int(rec.offset or 0)
                if rec.kind == "message":
                    payload = rec.payload
                    assert payload is not None
                    rows.append(
                        (
                            rec.goff,
                            ddl.KIND_MESSAGE,
                            st[0],
                            offset,
                            message_id_of(payload).encode(),
                            payload,
                            category_of(name),
                            type_of(payload).encode("utf-8"),
                        )
                    )
                    st[1], st[3] = max(st[1], offset + 1), False
                elif rec.kind in ("removed", "lost"):
                    st[1] = max(st[1], offset + 1)
                elif rec.kind == "truncate":
                    rows.append((rec.goff, ddl.KIND_TRUNCATE, st[0], offset, None, None, None, None))
                    st[1], st[2] = max(st[1], offset), max(st[2], offset)
                elif rec.kind == "delete":
                    rows.append((rec.goff, ddl.KIND_DELETE, st[0], offset, None, None, None, None))
                    st[1], st[2], st[3] = max(st[1], offset), max(st[2], offset), True
            if rows:
                copy_sql = self._q(
                    "COPY {s}.log (goff, kind, stream_id, soff, message_id, envelope, category, type) FROM STDIN"
                )
                with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    copy.set_types(["int8", "int2", "int8", "int8", "bytea", "bytea", "text", "bytea"])
                    for r in rows:
                        copy.write_row(r)
            for st in touched.values():
                conn.execute(
                    self._q("UPDATE {s}.streams SET head = %s, first = %s, deleted = %s WHERE id = %s"),
                    (st[1], st[2], st[3], st[0]),
                )
            conn.execute(self._q("UPDATE {s}.head SET next_goff = %s"), (end,))
            conn.execute("SELECT pg_notify(%s, %s)", (self._channel, str(end)))

    def finish(self) -> None:
        """Analyze the tables, which the copy filled faster than autovacuum looks (the planner then has
        their sizes). Compacted messages need nothing: they are global offsets without a row already."""
        assert self.conn is not None
        self.conn.execute(self._q("ANALYZE {s}.log, {s}.streams"))

    def put_subscriptions(self, subscriptions: Sequence[SubscriptionInfo]) -> None:
        """Replace the ``subscriptions`` rows with the source's, in one transaction (refused while a
        subscription holds a member of one that is there: nothing may use the destination)."""
        conn = self.conn
        if conn is None:
            raise MigrationError(f"{self.where}: not started")
        rows = [
            (info.name, member, info.category, positions.encode_types(info.types), info.size, position)
            for info in subscriptions
            for member, position in enumerate(info.positions)
        ]
        with conn.transaction():
            for name, member in conn.execute(self._q("SELECT name, member FROM {s}.subscriptions")).fetchall():
                held = conn.execute(
                    "SELECT pg_try_advisory_xact_lock(%s)", (positions.member_key(self.schema, name, member),)
                ).fetchone()
                if held is None or not held[0]:
                    raise MigrationError(
                        f"{self.where}: subscription {name!r} member {member} is open: nothing may use the"
                        " destination of a copy"
                    )
            conn.execute(self._q("DELETE FROM {s}.subscriptions"))
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        self._q(
                            "INSERT INTO {s}.subscriptions (name, member, category, types, size, position)"
                            " VALUES (%s, %s, %s, %s, %s, %s)"
                        ),
                        rows,
                    )

    def as_source(self) -> PgSource:
        reader = PgSource(self.url, self.schema)
        self._readers.append(reader)
        return reader

    def unmark(self) -> None:
        assert self.conn is not None
        self.conn.execute(self._q("DROP TABLE {m}"))

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
