"""A PostgreSQL store's durable subscriptions: the ``subscriptions`` table and advisory locks.

:class:`PgPositions` is the :class:`logstore.subscriptions.Positions` of :class:`PostgresStore`:

- a subscription is ``size`` rows of ``<schema>.subscriptions``, one per member (the definition
  repeated in each, and the member's ``position``), created together by its first ``subscribe``;
- an open subscription holds its member with a **session-level advisory lock** on a connection of
  its own (not a pooled one: a pooled connection serves other statements and would carry the lock to
  them). The lock's key is a stable 64-bit hash of the schema, the subscription's name and the
  member (:func:`member_key`). The lock lives as long as that session: ``close()`` of the
  subscription (or of the store) unlocks it and closes the connection, and a process that dies
  ends its sessions, which frees its members;
- an acknowledgement is one ``UPDATE ... SET position = greatest(position, $1)`` in autocommit on
  that connection: durable when it returns (the connection commits with ``synchronous_commit`` at
  least ``on`` whatever the store's ``durability``), and never moving a position back, but for a
  position past the log's end (which only a server crash that lost commits leaves): ``subscribe``
  saves the end in its place.

Claims and deletions of one subscription take turns: each runs in a transaction that first takes
the transaction-level advisory lock of the subscription's name (:func:`name_key`, waiting for it).
A claim then reads the rows (inserting them if there are none), checks the definition, and tries
the member's session lock (:class:`~logstore.SubscriptionBusyError` if another session holds it);
a deletion tries each member's lock as a transaction-level lock
(``pg_try_advisory_xact_lock``: refused, nothing deleted, if a subscription holds one) and deletes
the rows. So a deletion never removes the rows of a member that a subscription holds, and a claim
never holds a member whose rows a deletion is removing: after the deletion it creates the
subscription afresh.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any

import msgpack
import psycopg
import xxhash
from psycopg import sql

from logstore.errors import (
    LogStoreError,
    StoreClosedError,
    StoreForkedError,
    StreamClosedError,
    SubscriptionBusyError,
)
from logstore.postgres.errors import ConnectionLostError, ServerError
from logstore.results import SubscriptionInfo
from logstore.subscriptions import Definition, check_definition_size, info_of


def _key(schema: str, name: str, member: int) -> int:
    digest = xxhash.xxh64_intdigest(msgpack.packb(["logstore subscription", schema, name, member]))
    return digest - (1 << 64) if digest >= 1 << 63 else digest  # a bigint


def member_key(schema: str, name: str, member: int) -> int:
    """The advisory lock key (a signed 64-bit int) of a member of the subscription ``name`` in ``schema``."""
    return _key(schema, name, member)


def name_key(schema: str, name: str) -> int:
    """The advisory lock key that claims and deletions of the subscription ``name`` take turns on."""
    return _key(schema, name, -1)


def encode_types(types: frozenset[str] | None) -> list[bytes] | None:
    """A definition's types as the ``types`` column holds them: their UTF-8 bytes, sorted (NULL: every type)."""
    return None if types is None else sorted(t.encode("utf-8") for t in types)


def decode_types(raw: list[bytes] | None) -> frozenset[str] | None:
    return None if raw is None else frozenset(bytes(t).decode("utf-8") for t in raw)


def definition_of_row(name: str, category: str | None, types: list[bytes] | None, size: int) -> Definition:
    return Definition(name, category, decode_types(types), int(size))


LIST = "SELECT name, member, category, types, size, position FROM {s}.subscriptions ORDER BY name, member"
"""Every row of the ``subscriptions`` table, for :func:`infos_of_rows` (``{s}``: the schema)."""


def infos_of_rows(rows: Iterable[Sequence[Any]]) -> list[SubscriptionInfo]:
    """The subscriptions that the rows of :data:`LIST` hold, sorted by name (a member without a row is at 0)."""
    found: dict[str, tuple[Definition, dict[int, int]]] = {}
    for name, member, category, types, size, position in rows:
        entry = found.setdefault(name, (definition_of_row(name, category, types, size), {}))
        entry[1][int(member)] = int(position)
    return [
        info_of(definition, [positions.get(m, 0) for m in range(definition.size)])
        for definition, positions in (found[name] for name in sorted(found))
    ]


Connection = psycopg.Connection[Any]


class PgClaim:
    """One member held by an open subscription: the connection whose session holds the member's lock."""

    def __init__(self, definition: Definition, member: int, position: int, key: int, conn: Connection) -> None:
        self.definition = definition
        self.member = member
        self.position = position
        self.key = key
        self.conn: Connection | None = conn
        self.lock = threading.Lock()  # an acknowledgement and the release, which may come from other threads


class PgPositions:
    """The subscriptions of a :class:`~logstore.postgres.PostgresStore` (see the module docstring).

    What it uses of the store, handed in by it: ``where`` (the store, for messages), ``schema``,
    ``connect()`` (a new connection for a claim), ``pooled()`` (a pooled connection, as a context),
    ``query(statement)`` (rows of a read, retried on a broken connection), ``translate(exc, conn,
    what)`` (the error to raise for psycopg's) and ``forked()`` (the error of a store used in a
    child made by ``fork()``, None in the process that opened it).
    """

    def __init__(
        self,
        where: str,
        schema: str,
        connect: Callable[[], Connection],
        pooled: Callable[[], AbstractContextManager[Connection]],
        query: Callable[[bytes], list[Any]],
        translate: Callable[[psycopg.Error, Connection, str], Exception],
        forked: Callable[[], StoreForkedError | None],
    ) -> None:
        self.where = where
        self.schema = schema
        self._connect = connect
        self._pooled = pooled
        self._query = query
        self._translate = translate
        self._forked = forked
        self._claims: set[PgClaim] = set()
        self._claims_lock = threading.Lock()  # guards _claims and _closed
        self._closed = False
        s = sql.Identifier(schema)
        self._select = sql.SQL(
            "SELECT member, category, types, size, position FROM {}.subscriptions WHERE name = %s ORDER BY member"
        ).format(s)
        self._insert = sql.SQL(
            "INSERT INTO {}.subscriptions (name, member, category, types, size)"
            " SELECT %s, m, %s::text, %s::bytea[], %s::integer FROM generate_series(0, %s::integer - 1) AS m"
            " ON CONFLICT (name, member) DO NOTHING"
        ).format(s)
        # Never back, but from a position past the log's end (left by a crash that lost commits), which
        # subscribe saves as the end.
        self._update = sql.SQL(
            "UPDATE {s}.subscriptions SET position = CASE WHEN position > (SELECT next_goff FROM {s}.head)"
            " THEN %(p)s ELSE greatest(position, %(p)s) END WHERE name = %(n)s AND member = %(m)s"
        ).format(s=s)
        self._list = sql.SQL(LIST).format(s=s).as_bytes(None)
        self._delete = sql.SQL("DELETE FROM {}.subscriptions WHERE name = %s").format(s)

    # -- Positions ------------------------------------------------------------------------------

    def claim(self, definition: Definition, member: int) -> PgClaim:
        name = definition.name
        key = member_key(self.schema, name, member)
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise ConnectionLostError(f"{self.where}: could not connect: {exc}") from exc
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (name_key(self.schema, name),))
                rows = conn.execute(self._select, (name,)).fetchall()
                if rows:
                    _m, category, types, size, _p = rows[0]
                    why = definition_of_row(name, category, types, size).mismatch(definition)
                    if why is not None:
                        raise ValueError(why)
                else:
                    check_definition_size(definition)
                if len(rows) < definition.size:  # new, or a member's row missing: create them
                    conn.execute(
                        self._insert,
                        (name, definition.category, encode_types(definition.types), definition.size, definition.size),
                    )
                    rows = conn.execute(self._select, (name,)).fetchall()
                position = next(int(r[4]) for r in rows if r[0] == member)
                taken = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if taken is None or not taken[0]:
                    raise SubscriptionBusyError(
                        name,
                        member,
                        f"{self.where}: subscription {name!r} member {member} is open already"
                        " (in this process or another); close that subscription first",
                    )
        except psycopg.Error as exc:
            error = self._translate(exc, conn, f"subscribe to {name!r}")  # before the close: is it broken?
            conn.close()
            raise error from exc
        except BaseException:
            conn.close()  # ends the session: a lock it took is gone with it
            raise
        claim = PgClaim(definition, member, position, key, conn)
        with self._claims_lock:
            closed = self._closed
            if not closed:
                self._claims.add(claim)
        if closed:  # the store closed meanwhile: its close() did not see this claim
            self.release(claim)
            raise StoreClosedError(f"{self.where}: the store is closed")
        return claim

    def save(self, claim: PgClaim, position: int) -> None:
        name, member = claim.definition.name, claim.member
        with claim.lock:
            conn = claim.conn
            if conn is None:
                raise StreamClosedError(f"subscription {name!r}: its store was closed")
            forked = self._forked()
            if forked is not None:
                raise forked  # the connection is the parent's
            try:
                updated = conn.execute(self._update, {"p": position, "n": name, "m": member}).rowcount
            except psycopg.Error as exc:
                if not (conn.closed or conn.broken):
                    raise ServerError(
                        f"{self.where}: subscription {name!r} member {member}: the acknowledgement failed:"
                        f" the server refused: {exc}",
                        exc.sqlstate,
                    ) from exc
                # The session is gone, and the member's lock with it: this subscription holds it no more.
                self._drop(claim)
                raise ConnectionLostError(
                    f"{self.where}: subscription {name!r} member {member}: the connection that held the member"
                    f" broke during an acknowledgement ({exc}); the saved position is the old or the new one."
                    " The member is free for another subscription now: close this one and subscribe again"
                    " (what was not acknowledged is delivered again)"
                ) from exc
            if updated != 1:
                raise LogStoreError(
                    f"{self.where}: subscription {name!r} member {member}: its row in {self.schema}.subscriptions"
                    " is gone (deleted behind the store's back, while the member was held); nothing was saved"
                )
            claim.position = position

    def release(self, claim: PgClaim) -> None:
        with claim.lock:
            conn, claim.conn = claim.conn, None
            with self._claims_lock:
                self._claims.discard(claim)
            if conn is None:
                return
            if self._forked() is not None:
                return  # the parent's connection: closing it here would end the parent's session
            try:
                # Unlocked before the connection closes: the server ends a closed session a moment after
                # the client has gone, and a subscribe right after this must find the member free.
                conn.execute("SELECT pg_advisory_unlock(%s)", (claim.key,))
            except psycopg.Error:
                pass  # a broken connection: its session, and the lock, are ending anyway
            finally:
                conn.close()

    def _drop(self, claim: PgClaim) -> None:
        """Forget a claim whose session ended (the caller holds ``claim.lock``)."""
        conn, claim.conn = claim.conn, None
        with self._claims_lock:
            self._claims.discard(claim)
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def list(self) -> list[SubscriptionInfo]:
        return infos_of_rows(self._query(self._list))

    def delete(self, name: str) -> bool:
        with self._pooled() as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (name_key(self.schema, name),))
                    members = [int(r[0]) for r in conn.execute(self._select, (name,)).fetchall()]
                    if not members:
                        return False
                    for member in members:
                        row = conn.execute(
                            "SELECT pg_try_advisory_xact_lock(%s)", (member_key(self.schema, name, member),)
                        ).fetchone()
                        if row is None or not row[0]:
                            raise SubscriptionBusyError(
                                name,
                                member,
                                f"{self.where}: subscription {name!r} member {member} is open;"
                                " close its subscriptions before deleting it",
                            )
                    conn.execute(self._delete, (name,))
            except psycopg.Error as exc:
                raise self._translate(exc, conn, f"delete subscription {name!r}") from exc
        return True

    def close(self) -> None:
        """Release every member still held (the store is closing); their subscriptions can no longer ack."""
        with self._claims_lock:
            self._closed = True
            claims = list(self._claims)
        for claim in claims:
            self.release(claim)
