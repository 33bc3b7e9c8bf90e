"""Read-only views of a PostgreSQL store for the tools: its invariants checked, its records, its counts.

- :func:`verify` checks what the tables must hold (docs/POSTGRES.md, "Tables"), each problem with
  the global offset, stream and offset where it is;
- :func:`iter_records` yields the rows in global order as :class:`logstore.results.RecordInfo`
  (what ``logstore dump`` prints, as for a directory);
- :func:`store_stats` counts streams, rows by kind, readable messages and gaps.

Each opens a connection of its own and reads in ``REPEATABLE READ``: one snapshot, so a live
store's commits meanwhile do not make a consistent store look damaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from logstore.checks import category_of
from logstore.envelope import decode
from logstore.errors import LogStoreError
from logstore.postgres import schema as ddl
from logstore.postgres.migration import MARKER_TABLE, connect, paged, read_marker, where_of
from logstore.results import RecordInfo

_PAGE = 512
_KIND_NAMES = {ddl.KIND_MESSAGE: "message", ddl.KIND_TRUNCATE: "truncate", ddl.KIND_DELETE: "delete"}


@dataclass(frozen=True)
class PgProblem:
    """One problem: where (global offset, stream, stream offset; ``None`` where it does not apply) and what."""

    goff: int | None
    stream: str | None
    offset: int | None
    what: str

    def __str__(self) -> str:
        where = []
        if self.goff is not None:
            where.append(f"global offset {self.goff}")
        if self.stream is not None:
            where.append(f"stream {self.stream!r}" + (f" offset {self.offset}" if self.offset is not None else ""))
        return (", ".join(where) + ": " if where else "") + self.what


@dataclass
class PgVerifyResult:
    """What :func:`verify` found: ``problems`` (exit 1 if any), ``notes`` and counts."""

    path: str
    rows: int = 0
    messages: int = 0
    """Message rows a reader returns (at or past their stream's first offset)."""
    removed: int = 0
    """Message rows below their stream's first offset (``compact()`` deletes them)."""
    control: int = 0
    streams: int = 0
    global_head: int = 0
    gaps: int = 0
    """Global offsets below the head without a row (messages ``compact()`` deleted)."""
    problems: list[PgProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Snapshot:
    """A connection in one ``REPEATABLE READ`` read-only transaction, with the store's schema checked."""

    def __init__(self, url: str, schema: str) -> None:
        self.where = where_of(url, schema)
        self.schema = schema
        self.conn = connect(url, self.where)
        try:
            store_id = ddl.ensure(self.conn, schema, self.where, create=False)
            if store_id is None:
                raise FileNotFoundError(f"{self.where}: no logstore store there")
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except BaseException:
            self.conn.close()
            raise

    def q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    def rows(self, text: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.conn.execute(self.q(text), params, binary=True).fetchall()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> _Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _head(snap: _Snapshot) -> int:
    rows = snap.rows("SELECT next_goff FROM {s}.head")
    return int(rows[0][0]) if rows else 0


# Long on purpose: one check after another, each a query.
def verify(  # noqa: PLR0912, PLR0915
    url: str, schema: str, *, decode_envelopes: bool = True, progress: Callable[[int, int | None], None] | None = None
) -> PgVerifyResult:
    """Check the store in ``schema`` at ``url`` (read-only; safe on a live store: one snapshot).

    Checks: one ``head`` row, whose ``next_goff`` is above every row's global offset; every row's
    kind is 0, 1 or 2 and its stream exists; a message row has an envelope and a ``message_id``,
    a truncation or deletion row neither; per stream, the message rows' offsets rise by one with
    their global offsets, the last is ``head - 1``, and none of ``first .. head - 1`` is missing;
    ``first`` is at least every removal's offset, ``head`` at least each; ``deleted`` is set exactly
    when a deletion row follows the stream's last message row; ``first_goff`` is at or below the
    stream's rows; and (unless ``decode_envelopes`` is false) every envelope decodes as an
    envelope, its id is the row's ``message_id``, its type the row's ``type`` and the row's
    ``category`` its stream's name up to the first ``-``; each durable subscription has a row for
    each member of its group, all with one definition. ``progress(done, total)`` counts rows.
    Raises ``FileNotFoundError`` when the schema holds no store.
    """
    with _Snapshot(url, schema) as snap:
        result = PgVerifyResult(snap.where)
        problems = result.problems
        heads = snap.rows("SELECT count(*), min(next_goff) FROM {s}.head")
        if int(heads[0][0]) != 1:
            problems.append(PgProblem(None, None, None, f"the head table has {heads[0][0]} rows, not 1"))
        head = int(heads[0][1] or 0)
        result.global_head = head
        stats = snap.rows("SELECT count(*), max(goff), min(goff), count(*) FILTER (WHERE kind <> 0) FROM {s}.log")[0]
        result.rows, result.control = int(stats[0]), int(stats[3])
        result.gaps = max(0, head - result.rows)
        if stats[1] is not None and int(stats[1]) >= head:
            problems.append(
                PgProblem(
                    int(stats[1]), None, None, f"a row at or above head.next_goff ({head}): its commit left no mark"
                )
            )
        if stats[2] is not None and int(stats[2]) < 0:
            problems.append(PgProblem(int(stats[2]), None, None, "a negative global offset"))
        for goff, kind in snap.rows(
            "SELECT goff, kind FROM {s}.log WHERE kind NOT IN (0, 1, 2) ORDER BY goff LIMIT 100"
        ):
            problems.append(PgProblem(int(goff), None, None, f"row kind {kind}, not 0 (message), 1 or 2"))
        for goff, sid in snap.rows(
            "SELECT l.goff, l.stream_id FROM {s}.log l LEFT JOIN {s}.streams s ON s.id = l.stream_id"
            " WHERE s.id IS NULL ORDER BY l.goff LIMIT 100"
        ):
            problems.append(PgProblem(int(goff), None, None, f"its stream id {sid} is not in the streams table"))
        for goff, name, soff, kind, _has_env, _has_id in snap.rows(
            "SELECT l.goff, s.name, l.soff, l.kind, l.envelope IS NOT NULL, l.message_id IS NOT NULL"
            " FROM {s}.log l JOIN {s}.streams s ON s.id = l.stream_id"
            " WHERE (l.kind = 0 AND (l.envelope IS NULL OR l.message_id IS NULL))"
            " OR (l.kind IN (1, 2) AND (l.envelope IS NOT NULL OR l.message_id IS NOT NULL)) ORDER BY l.goff LIMIT 100"
        ):
            what = "a message row without its envelope or message_id" if kind == 0 else "a removal row with an envelope"
            problems.append(PgProblem(int(goff), name, int(soff), what))
        # Per stream: offsets rise by one with global offsets.
        for goff, name, soff, prev in snap.rows(
            "SELECT goff, name, soff, prev FROM (SELECT l.goff, s.name, l.soff,"
            " lag(l.soff) OVER (PARTITION BY l.stream_id ORDER BY l.goff) AS prev"
            " FROM {s}.log l JOIN {s}.streams s ON s.id = l.stream_id WHERE l.kind = 0) w"
            " WHERE prev IS NOT NULL AND soff <> prev + 1 ORDER BY goff LIMIT 100"
        ):
            problems.append(
                PgProblem(
                    int(goff), name, int(soff), f"the stream's previous message row has offset {prev}, not {soff - 1}"
                )
            )
        streams = snap.rows(
            "SELECT s.name, s.first, s.head, s.deleted, s.first_goff, m.low, m.high, m.low_goff, m.last_goff,"
            " c.top, c.top_goff, c.last_delete_goff, c.min_goff"
            " FROM {s}.streams s"
            " LEFT JOIN (SELECT stream_id, min(soff) AS low, max(soff) AS high, min(goff) AS low_goff,"
            "  max(goff) AS last_goff FROM {s}.log WHERE kind = 0 GROUP BY stream_id) m ON m.stream_id = s.id"
            " LEFT JOIN (SELECT stream_id, max(soff) AS top, max(goff) AS top_goff,"
            "  max(goff) FILTER (WHERE kind = 2) AS last_delete_goff, min(goff) AS min_goff"
            "  FROM {s}.log WHERE kind <> 0 GROUP BY stream_id) c ON c.stream_id = s.id"
            " ORDER BY s.first_goff NULLS LAST, s.id"
        )
        result.streams = len(streams)
        for (
            name,
            first,
            shead,
            deleted,
            first_goff,
            low,
            high,
            low_goff,
            last_goff,
            top,
            _tg,
            del_goff,
            cmin,
        ) in streams:
            if not 0 <= first <= shead:
                problems.append(PgProblem(None, name, None, f"first offset {first} is not within 0 .. head {shead}"))
            if high is not None and high != shead - 1:
                problems.append(
                    PgProblem(int(last_goff), name, int(high), f"the last message row, but head is {shead}")
                )
            if low is None and first != shead:
                problems.append(
                    PgProblem(None, name, None, f"no message row, but offsets {first} .. {shead - 1} are readable")
                )
            if low is not None and low > first:
                problems.append(
                    PgProblem(
                        int(low_goff), name, int(low), f"offsets {first} .. {low - 1} are readable but have no row"
                    )
                )
            if top is not None and (top > first or top > shead):
                problems.append(
                    PgProblem(None, name, None, f"a removal at offset {top}, but first is {first} and head {shead}")
                )
            deletion_last = del_goff is not None and (last_goff is None or del_goff > last_goff)
            if bool(deleted) != deletion_last:
                what = (
                    "marked deleted without a deletion row after its last message"
                    if deleted
                    else ("a deletion row follows its last message, but it is not marked deleted")
                )
                problems.append(PgProblem(None if del_goff is None else int(del_goff), name, None, what))
            if shead > 0 and first_goff is None:
                problems.append(PgProblem(None, name, None, "first_goff is empty (stream_names() cannot order it)"))
            earliest = min(x for x in (low_goff, cmin) if x is not None) if (low_goff, cmin) != (None, None) else None
            if first_goff is not None and earliest is not None and first_goff > earliest:
                problems.append(
                    PgProblem(int(earliest), name, None, f"first_goff {first_goff} is after the stream's first row")
                )
            if low is not None and low < first:
                result.removed += int(min(high, first - 1) - low + 1)
        result.messages = result.rows - result.control - result.removed
        _check_subscriptions(snap, result)
        if decode_envelopes:
            _check_envelopes(snap, result, progress)
        elif progress is not None:
            progress(result.rows, result.rows)
        marker = read_marker(snap.conn, schema)
        if marker is not None:
            result.notes.append(
                f"{snap.where}: an unfinished `logstore migrate` from {marker['where']} (began {marker['started_at']};"
                f" the table {schema}.{MARKER_TABLE}): run it again to finish"
            )
        return result


def _check_subscriptions(snap: _Snapshot, result: PgVerifyResult) -> None:
    """Each durable subscription has one row per member, all with one definition; a position past the
    log's end is noted (a subscribe begins at the end then)."""
    found: dict[str, list[tuple[int, Any, Any, int, int]]] = {}
    for name, member, category, types, size, position in snap.rows(
        "SELECT name, member, category, types, size, position FROM {s}.subscriptions ORDER BY name, member"
    ):
        found.setdefault(name, []).append((int(member), category, types, int(size), int(position)))
    for name, members in found.items():
        definitions = {(c, None if t is None else tuple(bytes(x) for x in t), n) for _m, c, t, n, _p in members}
        size = members[0][3]
        if len(definitions) > 1:
            result.problems.append(
                PgProblem(None, None, None, f"subscription {name!r}: its rows differ in category, types or size")
            )
        elif [m for m, *_rest in members] != list(range(size)):
            present = [m for m, *_rest in members]
            result.problems.append(
                PgProblem(None, None, None, f"subscription {name!r}: rows of members {present}, of a group of {size}")
            )
        for member, _c, _t, _n, position in members:
            if position > result.global_head:
                result.notes.append(
                    f"{snap.where}: subscription {name!r} member {member} is at global offset {position}, past the"
                    f" log's end {result.global_head} (a subscribe begins at the end)"
                )


def _check_envelopes(
    snap: _Snapshot, result: PgVerifyResult, progress: Callable[[int, int | None], None] | None
) -> None:
    done = 0
    # Every row, the kind tested here: a filter on the kind would lead the planner to the partial index.
    rows = paged(
        snap.conn,
        snap.schema,
        "l.goff, l.kind, s.name, l.soff, l.message_id, l.envelope, l.category, l.type",
        0,
        result.global_head,
    )
    for goff, kind, name, soff, message_id, envelope, category, type_ in rows:
        done += 1
        if progress is not None and done % _PAGE == 0:
            progress(done, result.rows)
        if kind != ddl.KIND_MESSAGE or envelope is None:
            continue
        try:
            env = decode(bytes(envelope))
        except (ValueError, TypeError) as exc:
            result.problems.append(PgProblem(int(goff), name, int(soff), f"the envelope does not decode: {exc}"))
            continue
        mid = env.message_id.encode("utf-8", "surrogatepass") if isinstance(env.message_id, str) else None
        if message_id is not None and mid != bytes(message_id):
            result.problems.append(
                PgProblem(
                    int(goff), name, int(soff), f"the envelope's id {env.message_id!r} is not the row's message_id"
                )
            )
        if category != category_of(name):
            result.problems.append(
                PgProblem(
                    int(goff),
                    name,
                    int(soff),
                    f"the row's category is {category!r}, its stream's name says {category_of(name)!r}",
                )
            )
        if type_ is None or bytes(type_) != env.type.encode("utf-8", "surrogatepass"):
            shown = None if type_ is None else bytes(type_).decode("utf-8", "replace")
            result.problems.append(
                PgProblem(int(goff), name, int(soff), f"the row's type is {shown!r}, the envelope's {env.type!r}")
            )
    if progress is not None:
        progress(done, result.rows)


def iter_records(
    url: str, schema: str, start: int = 0, stream: str | None = None, *, envelopes: bool = True
) -> Iterator[RecordInfo]:
    """Every row from global offset ``start`` on (with ``stream``, that stream's), as a :class:`RecordInfo`.

    A message row is readable when its offset is at or past its stream's first offset. Gaps (messages
    that ``compact()`` deleted) yield nothing. ``ValueError`` for a stream never written, and for an
    envelope that does not decode (naming its global offset, stream and offset).
    """
    with _Snapshot(url, schema) as snap:
        firsts = {name: int(first) for name, first in snap.rows("SELECT name, first FROM {s}.streams")}
        if stream is not None and stream not in firsts:
            raise ValueError(f"no stream named {stream!r}")
        where, params = (
            ("", ()) if stream is None else ("l.stream_id = (SELECT id FROM {s}.streams WHERE name = %s)", (stream,))
        )
        columns = "l.goff, l.kind, s.name, l.soff, l.envelope, octet_length(l.envelope)"
        for goff, kind, name, soff, envelope, size in paged(snap.conn, schema, columns, start, None, where, params):
            kind_name = _KIND_NAMES.get(kind, f"kind {kind}")
            readable = kind == ddl.KIND_MESSAGE and soff >= firsts.get(name, 0)
            env = None
            if envelopes and readable and envelope is not None:
                try:
                    env = decode(bytes(envelope))
                except (ValueError, TypeError) as exc:
                    where_ = f"{snap.where}: global offset {goff}, stream {name!r} offset {soff}"
                    raise ValueError(f"{where_}: the envelope does not decode: {exc}") from None
            yield RecordInfo(int(goff), kind_name, name, int(soff), env, readable, int(size or 0))


def stream_start(url: str, schema: str, stream: str, offset: int) -> int | None:
    """The global offset of ``stream``'s first row at or past stream offset ``offset`` (the head: past them
    all); ``None`` for a stream never written."""
    with _Snapshot(url, schema) as snap:
        if not snap.rows("SELECT 1 FROM {s}.streams WHERE name = %s", (stream,)):
            return None
        rows = snap.rows(
            "SELECT min(l.goff) FROM {s}.log l JOIN {s}.streams s ON s.id = l.stream_id"
            " WHERE s.name = %s AND l.kind = 0 AND l.soff >= %s",
            (stream, offset),
        )
        if rows and rows[0][0] is not None:
            return int(rows[0][0])
        return _head(snap)


def store_stats(url: str, schema: str) -> dict[str, Any]:
    """Counts of the store, as plain JSON-ready values: ``path``, ``global_head``, ``log_start`` (0),
    ``streams`` (``total``, ``live``, ``deleted``, ``truncated``), ``messages`` (``readable``),
    ``records`` (rows by kind and ``total``), ``holes`` (``awaiting_compaction``: message rows below
    their stream's first offset, ``reclaimable_bytes``: their envelope bytes, ``compacted``: global
    offsets without a row), ``table_bytes`` (the ``log`` table with its indexes and TOAST), and
    ``migration`` (the mark of an unfinished ``logstore migrate``, or ``None``)."""
    with _Snapshot(url, schema) as snap:
        head = _head(snap)
        st = snap.rows(
            "SELECT count(*), count(*) FILTER (WHERE head > 0 AND NOT deleted), count(*) FILTER (WHERE deleted),"
            " count(*) FILTER (WHERE first > 0 AND NOT deleted) FROM {s}.streams"
        )[0]
        rec = snap.rows(
            "SELECT count(*) FILTER (WHERE kind = 0), count(*) FILTER (WHERE kind = 1),"
            " count(*) FILTER (WHERE kind = 2), count(*) FROM {s}.log"
        )[0]
        removed = snap.rows(
            "SELECT count(*), coalesce(sum(octet_length(l.envelope)), 0) FROM {s}.log l JOIN {s}.streams s"
            " ON s.id = l.stream_id WHERE l.kind = 0 AND l.soff < s.first"
        )[0]
        size = snap.rows(
            "SELECT pg_total_relation_size(%s::regclass)", (sql.Identifier(schema, "log").as_string(snap.conn),)
        )
        total = int(rec[3])
        return {
            "path": snap.where,
            "global_head": head,
            "log_start": 0,
            "streams": {"total": int(st[0]), "live": int(st[1]), "deleted": int(st[2]), "truncated": int(st[3])},
            "messages": {"readable": int(rec[0]) - int(removed[0])},
            "records": {"message": int(rec[0]), "truncate": int(rec[1]), "delete": int(rec[2]), "total": total},
            "holes": {
                "awaiting_compaction": int(removed[0]),
                "reclaimable_bytes": int(removed[1]),
                "compacted": max(0, head - total),
            },
            "table_bytes": int(size[0][0]),
            "migration": read_marker(snap.conn, schema),
        }


__all__ = [
    "URL_ERRORS",
    "PgProblem",
    "PgVerifyResult",
    "iter_records",
    "store_stats",
    "stream_start",
    "verify",
    "where_of",
]

URL_ERRORS = (LogStoreError, OSError, ValueError, psycopg.Error)
"""What the functions here raise for a store that cannot be read (no server, no store, a refused
statement, a schema of another version): the tools report these with exit 2."""
