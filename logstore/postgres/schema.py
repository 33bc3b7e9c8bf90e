"""The tables and functions of a store in a PostgreSQL schema, created on first open.

docs/POSTGRES.md shows this DDL and argues why it is correct. In short:

- ``meta``: one row, the schema version (:data:`SCHEMA_VERSION`) and the store's id. The
  notification channel is named after the id (``logstore_<32 hex digits>``).
- ``head``: one row, ``next_goff``, the next unused global offset. Every commit updates it;
  its row lock, held to the end of the commit, is the one serialisation point of all writers.
- ``streams``: one row per stream ever written: its id, name, ``head`` (next unused offset),
  ``first`` (first readable offset), ``deleted``, and ``first_goff`` (global offset of its first
  message, for ``stream_names()``'s order of first commit).
- ``log``: one row per global offset. ``kind`` 0 is a message (``soff`` its stream offset,
  ``envelope`` the msgpack bytes the embedded store writes, byte for byte), 1 a truncation and 2 a
  deletion (``soff`` the stream's new first offset, no envelope), as the embedded log records them.
- ``subscriptions``: one row per member of each durable subscription (``store.subscribe``): the
  subscription's definition (``category``, NULL for the whole log; ``types``, the sorted UTF-8 bytes
  of its type names, NULL for every type; ``size``, its group's members) repeated in each of its
  rows, and the member's ``position`` (the next global offset to deliver). Which open subscription
  holds a member is not a row: a session-level advisory lock says so
  (:mod:`logstore.postgres.positions`).
- ``append_batch``: the whole commit of a group of transactions (one, or several that threads of one
  process committed at once) in one statement. It locks the group's streams in byte order
  of their names (creating new ones), checks their heads, then takes the ``head`` row, inserts the
  rows, moves the heads and notifies. Message ids already in a stream are judged (idempotent
  appends); those of the group's earlier transactions count as committed, so a retry that lands in
  its original's group gets the original's offsets, as in the embedded writer. ``remove_stream``
  does the same for a truncation or deletion.

The table and function names are unqualified in the function bodies: each function sets its own
``search_path`` to ``pg_catalog, <schema>, pg_temp``, so the bodies are fixed text and the schema
name (any identifier) is only ever quoted by :mod:`psycopg.sql`.
"""

from __future__ import annotations

import json
import uuid

import psycopg
from psycopg import sql

from logstore.errors import FormatVersionError

SCHEMA_VERSION = 3
"""The layout of the tables and functions this code reads and writes; a store of a newer version is refused,
one of version 1 (without the category and type columns, and with an ``append_batch`` that does not judge
message ids) or 2 (without the ``subscriptions`` table) is upgraded by a writable open (:func:`upgrade`)."""

KIND_MESSAGE, KIND_TRUNCATE, KIND_DELETE = 0, 1, 2
"""``log.kind``: a message, a truncation, a deletion."""

NO_STREAM_STATE = "LS404"
"""SQLSTATE of ``remove_stream`` for a stream never written; DETAIL is JSON ``{"stream"}``."""
PAST_HEAD_STATE = "LS416"
"""SQLSTATE of ``remove_stream`` for a truncation past the head; DETAIL is JSON ``{"stream", "before", "head"}``."""

TABLES = ("meta", "head", "streams", "log", "subscriptions")

_CREATE_TABLES = """
CREATE TABLE {s}.meta (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    schema_version integer NOT NULL,
    store_id       uuid NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.head (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    next_goff bigint NOT NULL
);
CREATE TABLE {s}.streams (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text COLLATE "C" NOT NULL UNIQUE,
    head       bigint NOT NULL DEFAULT 0,
    first      bigint NOT NULL DEFAULT 0,
    deleted    boolean NOT NULL DEFAULT false,
    first_goff bigint
);
CREATE TABLE {s}.log (
    goff       bigint PRIMARY KEY,
    kind       smallint NOT NULL,
    stream_id  bigint NOT NULL,
    soff       bigint NOT NULL,
    message_id bytea,
    envelope   bytea,
    category   text COLLATE "C",
    type       bytea
);
CREATE UNIQUE INDEX log_stream_offset ON {s}.log (stream_id, soff) WHERE kind = 0;
CREATE INDEX log_message_id ON {s}.log (message_id) WHERE kind = 0;
CREATE INDEX log_category ON {s}.log (category, goff) WHERE kind = 0;
CREATE INDEX log_type ON {s}.log (type, goff) WHERE kind = 0;
CREATE TABLE {s}.subscriptions (
    name     text COLLATE "C" NOT NULL,
    member   integer NOT NULL CHECK (member >= 0 AND member < size),
    category text COLLATE "C",
    types    bytea[],
    size     integer NOT NULL CHECK (size BETWEEN 1 AND 1024),
    position bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
    PRIMARY KEY (name, member)
);
"""

# The commit of a group of transactions (one, or several that threads of one process committed at once).
# Lock order: the streams' rows in byte order of their names, then the head row; every writer (and
# remove_stream) takes them in that order, so no two writers wait on each other in a cycle. Each
# transaction of the group is checked against the heads as the transactions before it in the group
# leave them: one that conflicts is left out (a row says so) and the others commit.
_APPEND_BATCH = """
#variable_conflict use_column
DECLARE
    v_streams text[];
    v_sids bigint[] := '{}';
    v_heads bigint[] := '{}';
    v_new boolean[] := '{}';
    v_used boolean[] := '{}';
    v_fgoffs bigint[] := '{}';
    v_starts integer[] := '{}';
    v_firsts bigint[] := '{}';
    v_ok_tx integer[] := '{}';
    v_ok_rel bigint[] := '{}';
    v_ok_from integer[] := '{}';
    v_ok_to integer[] := '{}';
    v_m_idx integer[] := '{}';
    v_m_sids bigint[] := '{}';
    v_m_soffs bigint[] := '{}';
    v_m_cats text[] := '{}';
    v_napp integer := coalesce(cardinality(p_names), 0);
    v_ntx integer := coalesce(p_txs[coalesce(cardinality(p_txs), 0)], 0);
    v_total bigint := 0;
    v_rel bigint;
    v_sid bigint;
    v_head bigint;
    v_goff bigint;
    v_k integer;
    v_i integer := 1;
    v_j integer;
    v_at integer := 1;
    v_ok boolean;
    v_made boolean;
    v_sfirst bigint[] := '{}';
    v_first bigint;
    v_msid bigint[] := '{}';
    v_check boolean;
    v_keys text[];
    v_gk text[] := '{}';
    v_gsoff bigint[] := '{}';
    v_grel bigint[] := '{}';
    v_base bigint;
    v_key text;
    v_x integer;
    v_want bigint;
    v_at_any bigint;
    v_so bigint[];
    v_go bigint[];
    v_p integer;
    v_mg bigint[];
    v_rf bigint[];
    v_fresh boolean;
    v_dup boolean;
    v_why text;
    v_exist bigint;
    v_fm_stream text;
    v_fm_id bytea;
    v_fm_soff bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'logstore writes run in READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    SELECT array_agg(DISTINCT n ORDER BY n) INTO v_streams FROM unnest(p_names) AS n;
    FOR v_k IN 1 .. coalesce(cardinality(v_streams), 0) LOOP
        -- An existing stream is locked at once; a new one is inserted first (the insert waits for a
        -- concurrent insert of the same name to end), then locked.
        SELECT id, head, first INTO v_sid, v_head, v_first FROM streams WHERE name = v_streams[v_k] FOR UPDATE;
        v_made := false;
        IF NOT FOUND THEN
            INSERT INTO streams (name) VALUES (v_streams[v_k]) ON CONFLICT (name) DO NOTHING RETURNING id INTO v_sid;
            v_made := v_sid IS NOT NULL;
            SELECT id, head, first INTO v_sid, v_head, v_first FROM streams WHERE name = v_streams[v_k] FOR UPDATE;
        END IF;
        v_sfirst := v_sfirst || v_first;
        v_new := v_new || v_made;
        v_sids := v_sids || v_sid;
        v_heads := v_heads || v_head;
        v_used := v_used || false;
        v_fgoffs := v_fgoffs || NULL::bigint;
    END LOOP;
    FOR v_a IN 1 .. v_napp LOOP
        v_starts := v_starts || v_at;
        v_firsts := v_firsts || NULL::bigint;
        v_at := v_at + p_counts[v_a];
        v_sid := v_sids[array_position(v_streams, p_names[v_a])];
        v_msid := v_msid || array_fill(v_sid, ARRAY[p_counts[v_a]]);
    END LOOP;
    -- Idempotent appends: only a group with a message id its stream holds already (or twice in the
    -- group) takes the slow path below, which judges each transaction (a retry, or a duplicate).
    v_check := EXISTS (
            SELECT 1 FROM unnest(v_msid, p_ids) AS u(sid, mid)
            JOIN log AS l ON l.message_id = u.mid AND l.stream_id = u.sid AND l.kind = 0)
        OR (SELECT count(*) <> count(DISTINCT (u.sid, u.mid)) FROM unnest(v_msid, p_ids) AS u(sid, mid));
    FOR v_t IN 1 .. v_ntx LOOP
        v_j := v_i;
        WHILE v_j < v_napp AND p_txs[v_j + 1] = v_t LOOP
            v_j := v_j + 1;
        END LOOP;
        v_ok := true;
        IF v_check THEN
            -- Where each stream of the transaction holds its message ids already (see docs/POSTGRES.md).
            v_keys := '{}';
            v_mg := '{}';
            v_rf := '{}';
            v_fresh := false;
            v_dup := false;
            v_fm_stream := NULL;
            FOR v_a IN v_i .. v_j LOOP
                v_k := array_position(v_streams, p_names[v_a]);
                v_at_any := NULL;
                FOR m IN 0 .. p_counts[v_a] - 1 LOOP
                    v_x := v_starts[v_a] + m;
                    v_key := v_sids[v_k]::text || ':' || encode(p_ids[v_x], 'hex');
                    v_want := p_offsets[v_a] + m;
                    v_why := NULL;
                    IF v_key = ANY (v_keys) THEN
                        v_dup := true;
                        v_exist := -1;
                        v_why := 'twice in one transaction';
                    ELSE
                        v_keys := v_keys || v_key;
                        SELECT array_agg(l.soff ORDER BY l.soff), array_agg(l.goff ORDER BY l.soff) INTO v_so, v_go
                            FROM log AS l WHERE l.message_id = p_ids[v_x] AND l.stream_id = v_sids[v_k]
                            AND l.kind = 0 AND l.soff >= v_sfirst[v_k];
                        IF v_key = ANY (v_gk) THEN
                            -- In a transaction of this group before this one: committed as far as this one
                            -- can tell (the embedded writer's rule), at the head's global offset (locked now,
                            -- after the streams as always) plus its place in the group.
                            IF v_base IS NULL THEN
                                SELECT next_goff INTO v_base FROM head FOR UPDATE;
                            END IF;
                            SELECT coalesce(v_so, '{}') || array_agg(g.so ORDER BY g.so),
                                    coalesce(v_go, '{}') || array_agg(v_base + g.rel ORDER BY g.so)
                                INTO v_so, v_go
                                FROM unnest(v_gk, v_gsoff, v_grel) AS g(k, so, rel) WHERE g.k = v_key;
                        END IF;
                        IF v_so IS NULL THEN
                            v_fresh := true;
                        ELSE
                            IF p_offsets[v_a] IS NULL THEN
                                IF m = 0 THEN
                                    v_at_any := v_so[1];
                                END IF;
                                v_p := array_position(v_so, v_at_any + m);
                            ELSE
                                v_p := array_position(v_so, v_want);
                            END IF;
                            IF v_p IS NULL THEN
                                v_dup := true;
                                v_exist := v_so[1];
                            ELSE
                                v_mg := v_mg || v_go[v_p];
                                IF v_fm_stream IS NULL THEN
                                    v_fm_stream := p_names[v_a];
                                    v_fm_id := p_ids[v_x];
                                    v_fm_soff := v_so[v_p];
                                END IF;
                            END IF;
                        END IF;
                    END IF;
                    IF v_dup THEN
                        tx := v_t;
                        goff := NULL;
                        firsts := NULL;
                        stream := p_names[v_a];
                        expected := v_exist;
                        given := v_want;
                        message_id := p_ids[v_x];
                        why := v_why;
                        RETURN NEXT;
                        EXIT;
                    END IF;
                END LOOP;
                EXIT WHEN v_dup;
                v_rf := v_rf || coalesce(p_offsets[v_a], v_at_any);
            END LOOP;
            IF v_dup THEN
                v_ok := false;
            ELSIF cardinality(v_mg) > 0 THEN
                v_ok := false;
                tx := v_t;
                stream := v_fm_stream;
                expected := v_fm_soff;
                given := v_fm_soff;
                message_id := v_fm_id;
                IF v_fresh THEN
                    goff := NULL;
                    firsts := NULL;
                    why := 'committed there already, and the transaction also holds new messages: '
                        'it is not a retry of one commit, so nothing of it is written';
                ELSIF (SELECT max(g) - min(g) + 1 = count(*) AND count(DISTINCT g) = count(*) FROM unnest(v_mg) AS g)
                THEN
                    -- A retry: nothing is written, the original global offsets are the result.
                    goff := (SELECT min(g) FROM unnest(v_mg) AS g);
                    firsts := v_rf;
                    stream := NULL;
                    expected := NULL;
                    given := NULL;
                    message_id := NULL;
                    why := NULL;
                ELSE
                    goff := NULL;
                    firsts := NULL;
                    why := 'every message of the transaction is committed already, but not at one range '
                        'of global offsets: it is not a retry of one commit';
                END IF;
                RETURN NEXT;
            END IF;
            message_id := NULL;
            why := NULL;
        END IF;
        -- The first append of each stream in the transaction: an exact offset must be the head.
        FOR v_a IN v_i .. v_j LOOP
            EXIT WHEN NOT v_ok;
            IF p_offsets[v_a] IS NOT NULL AND NOT (p_names[v_a] = ANY (p_names[v_i:v_a - 1])) THEN
                v_k := array_position(v_streams, p_names[v_a]);
                IF p_offsets[v_a] <> v_heads[v_k] THEN
                    v_ok := false;
                    tx := v_t;
                    goff := NULL;
                    firsts := NULL;
                    stream := p_names[v_a];
                    expected := v_heads[v_k];
                    given := p_offsets[v_a];
                    RETURN NEXT;
                    EXIT;
                END IF;
            END IF;
        END LOOP;
        IF v_ok THEN
            v_rel := v_total;
            FOR v_a IN v_i .. v_j LOOP
                v_k := array_position(v_streams, p_names[v_a]);
                v_firsts[v_a] := v_heads[v_k];
                IF v_fgoffs[v_k] IS NULL THEN
                    v_fgoffs[v_k] := v_total;
                END IF;
                v_used[v_k] := true;
                FOR m IN 0 .. p_counts[v_a] - 1 LOOP
                    v_m_idx := v_m_idx || (v_starts[v_a] + m);
                    v_m_sids := v_m_sids || v_sids[v_k];
                    v_m_soffs := v_m_soffs || (v_heads[v_k] + m);
                    v_m_cats := v_m_cats || split_part(p_names[v_a], '-', 1);
                    IF v_check THEN
                        -- Where the later transactions of the group find this message (see above).
                        v_gk := v_gk || (v_sids[v_k]::text || ':' || encode(p_ids[v_starts[v_a] + m], 'hex'));
                        v_gsoff := v_gsoff || (v_heads[v_k] + m);
                        v_grel := v_grel || (v_total + m);
                    END IF;
                END LOOP;
                v_heads[v_k] := v_heads[v_k] + p_counts[v_a];
                v_total := v_total + p_counts[v_a];
            END LOOP;
            v_ok_tx := v_ok_tx || v_t;
            v_ok_rel := v_ok_rel || v_rel;
            v_ok_from := v_ok_from || v_i;
            v_ok_to := v_ok_to || v_j;
        END IF;
        v_i := v_j + 1;
    END LOOP;
    IF v_total > 0 THEN
        -- The serialisation point, taken last: held until the commit has become visible.
        UPDATE head SET next_goff = next_goff + v_total RETURNING next_goff - v_total INTO v_goff;
        INSERT INTO log (goff, kind, stream_id, soff, message_id, envelope, category, type)
            SELECT v_goff + m.n - 1, 0, m.sid, m.soff, p_ids[m.idx], p_envelopes[m.idx], m.cat, p_types[m.idx]
            FROM unnest(v_m_sids, v_m_soffs, v_m_idx, v_m_cats) WITH ORDINALITY AS m(sid, soff, idx, cat, n);
        UPDATE streams AS s SET head = u.head, deleted = false, first_goff = coalesce(s.first_goff, v_goff + u.fgoff)
            FROM unnest(v_sids, v_heads, v_fgoffs, v_used) AS u(id, head, fgoff, used) WHERE s.id = u.id AND u.used;
        PERFORM pg_notify('{channel}', (v_goff + v_total)::text);
    END IF;
    -- A stream this group made whose every transaction conflicted was never written: it must not exist.
    IF true = ANY (v_new) THEN
        DELETE FROM streams WHERE id IN (
            SELECT u.id FROM unnest(v_sids, v_new, v_used) AS u(id, new, used) WHERE u.new AND NOT u.used);
    END IF;
    FOR v_r IN 1 .. coalesce(cardinality(v_ok_tx), 0) LOOP
        tx := v_ok_tx[v_r];
        goff := v_goff + v_ok_rel[v_r];
        firsts := v_firsts[v_ok_from[v_r]:v_ok_to[v_r]];
        stream := NULL;
        expected := NULL;
        given := NULL;
        RETURN NEXT;
    END LOOP;
END
"""

# A truncation (p_kind 1) or deletion (p_kind 2): the stream's row, then the head row, as append_batch.
_REMOVE_STREAM = """
DECLARE
    v_sid bigint;
    v_head bigint;
    v_first bigint;
    v_deleted boolean;
    v_before bigint := p_before;
    v_goff bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'logstore writes run in READ COMMITTED, not %', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    SELECT id, head, first, deleted INTO v_sid, v_head, v_first, v_deleted
        FROM streams WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no such stream' USING ERRCODE = '{no_stream}',
            DETAIL = json_build_object('stream', p_name)::text;
    END IF;
    IF p_kind = 2 THEN
        v_before := v_head;
        IF v_deleted AND v_first = v_head THEN
            RETURN -1;
        END IF;
    ELSIF v_before > v_head THEN
        RAISE EXCEPTION 'truncation past the head' USING ERRCODE = '{past_head}',
            DETAIL = json_build_object('stream', p_name, 'before', v_before, 'head', v_head)::text;
    ELSIF v_before <= v_first THEN
        RETURN -1;
    END IF;
    UPDATE head SET next_goff = next_goff + 1 RETURNING next_goff - 1 INTO v_goff;
    INSERT INTO log (goff, kind, stream_id, soff) VALUES (v_goff, p_kind, v_sid, v_before);
    UPDATE streams SET first = v_before, deleted = (p_kind = 2) WHERE id = v_sid;
    PERFORM pg_notify('{channel}', 'r' || (v_goff + 1)::text);
    RETURN v_goff;
END
"""


def channel_of(store_id: uuid.UUID) -> str:
    """The LISTEN/NOTIFY channel of the store with id ``store_id`` (an identifier needing no quotes)."""
    return f"logstore_{store_id.hex}"


def _functions(schema: sql.Identifier, channel: str) -> list[sql.Composed]:
    codes = {
        "{channel}": channel,
        "{no_stream}": NO_STREAM_STATE,
        "{past_head}": PAST_HEAD_STATE,
    }
    append_body, remove_body = _APPEND_BATCH, _REMOVE_STREAM
    for key, value in codes.items():  # not str.format: the bodies hold braces ('{}', an empty array)
        append_body = append_body.replace(key, value)
        remove_body = remove_body.replace(key, value)
    path = sql.SQL("SET search_path = pg_catalog, {}, pg_temp").format(schema)
    return [
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {s}.append_batch(p_txs integer[], p_names text[], p_offsets bigint[],"
            " p_counts integer[], p_ids bytea[], p_envelopes bytea[], p_types bytea[])"
            " RETURNS TABLE (tx integer, goff bigint, firsts bigint[], stream text, expected bigint, given bigint,"
            " message_id bytea, why text)"
            " LANGUAGE plpgsql {path} AS {body}"
        ).format(s=schema, path=path, body=sql.Literal(append_body)),
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {s}.remove_stream(p_name text, p_kind smallint, p_before bigint)"
            " RETURNS bigint LANGUAGE plpgsql {path} AS {body}"
        ).format(s=schema, path=path, body=sql.Literal(remove_body)),
    ]


def ddl(schema: str, store_id: uuid.UUID) -> list[sql.Composed]:
    """The statements that create a store in ``schema`` (which may exist already, empty), in order."""
    s = sql.Identifier(schema)
    statements = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s)]
    for text in _CREATE_TABLES.split(";"):
        if text.strip():
            statements.append(sql.SQL(text.strip()).format(s=s))
    statements += _functions(s, channel_of(store_id))
    statements.append(
        sql.SQL("INSERT INTO {}.meta (schema_version, store_id) VALUES ({}, {})").format(
            s, sql.Literal(SCHEMA_VERSION), sql.Literal(store_id)
        )
    )
    statements.append(sql.SQL("INSERT INTO {}.head (next_goff) VALUES (0)").format(s))
    return statements


def ensure(conn: psycopg.Connection[tuple[object, ...]], schema: str, where: str, create: bool) -> uuid.UUID | None:
    """Create the store in ``schema`` if it has none (and ``create``); return its id (None: none, not created).

    Runs in one transaction under an advisory lock named after the schema, so that two clients opening
    a new store at once create it once. Raises :class:`~logstore.FormatVersionError` for a store of
    another schema version, and ``ValueError`` for a schema that holds tables of these names but no
    store. ``where`` names the store in messages.
    """
    s = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('logstore schema ' || %s, 0))", (schema,))
        found = {
            row[0]
            for row in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (schema, list(TABLES)),
            )
        }
        if "meta" in found:
            row = conn.execute(sql.SQL("SELECT schema_version, store_id FROM {}.meta").format(s)).fetchone()
            if row is None:
                raise ValueError(f"{where}: the table {schema}.meta has no row: not a logstore store")
            version, store_id = row
            if version in UPGRADABLE and create:
                assert isinstance(store_id, uuid.UUID)
                upgrade(conn, schema, channel_of(store_id), version)
                version = SCHEMA_VERSION
            elif version in UPGRADABLE:
                raise FormatVersionError(
                    where,
                    0,
                    f"schema version {version}; this logstore reads version {SCHEMA_VERSION}:"
                    " open the store once writable (not read-only) to upgrade it in place",
                )
            if version != SCHEMA_VERSION:
                raise FormatVersionError(
                    where, 0, f"schema version {version}; this logstore reads version {SCHEMA_VERSION}"
                )
            assert isinstance(store_id, uuid.UUID)
            return store_id
        if found:
            raise ValueError(
                f"{where}: schema {schema!r} holds tables named {sorted(str(n) for n in found)} but no logstore store;"
                " choose another schema"
            )
        if not create:
            return None
        store_id = uuid.uuid4()
        for statement in ddl(schema, store_id):
            conn.execute(statement)
        return store_id


UPGRADE_BATCH = 10_000
"""Messages whose type an upgrade from version 1 reads and writes per statement."""
UPGRADABLE = (1, 2)
"""Schema versions that a writable open upgrades to :data:`SCHEMA_VERSION` in place."""


def upgrade(conn: psycopg.Connection[tuple[object, ...]], schema: str, channel: str, version: int) -> None:
    """Upgrade a store of schema version 1 or 2 to :data:`SCHEMA_VERSION` in place (in the caller's transaction).

    Version 2 added ``log.category`` and ``log.type`` with their indexes, and an ``append_batch`` that
    takes the types and judges message ids (idempotent appends: its result has two more columns).
    From version 1: add the columns; set each message's category from its stream's name; read the
    envelopes in batches of :data:`UPGRADE_BATCH` and set each one's type; create the indexes; drop
    version 1's ``append_batch``. Version 3 adds the ``subscriptions`` table, and an ``append_batch``
    that finds a retry committed in the same group as its original (the same signature and result
    as version 2's). From either: create the table, replace the functions, set the version. One
    transaction: a failure leaves the store as it was. Clients of version 1's code fail on the new
    ``append_batch`` from then on, and every earlier client refuses to open the store again (they
    must be upgraded too).
    """
    s = sql.Identifier(schema)
    if version == 1:
        _upgrade_from_1(conn, s)
    for text in _CREATE_TABLES.split(";"):
        if "TABLE {s}.subscriptions" in text:
            conn.execute(sql.SQL(text.strip()).format(s=s))
    for statement in _functions(s, channel):
        conn.execute(statement)
    conn.execute(sql.SQL("UPDATE {}.meta SET schema_version = {}").format(s, sql.Literal(SCHEMA_VERSION)))


def _upgrade_from_1(conn: psycopg.Connection[tuple[object, ...]], s: sql.Identifier) -> None:
    """Version 1 to 2, less the new functions (:func:`upgrade` creates them)."""
    from logstore.envelope import decode  # noqa: PLC0415 - the upgrade alone reads envelopes here

    conn.execute(sql.SQL('ALTER TABLE {}.log ADD COLUMN category text COLLATE "C", ADD COLUMN type bytea').format(s))
    conn.execute(
        sql.SQL(
            "UPDATE {s}.log l SET category = split_part(st.name, '-', 1) FROM {s}.streams st"
            " WHERE st.id = l.stream_id AND l.kind = 0"
        ).format(s=s)
    )
    start = 0
    while True:
        rows = conn.execute(
            sql.SQL("SELECT goff, envelope FROM {}.log WHERE kind = 0 AND goff >= %s ORDER BY goff LIMIT %s").format(s),
            (start, UPGRADE_BATCH),
        ).fetchall()
        if not rows:
            break
        goffs = [int(g) for g, _env in rows]  # type: ignore[call-overload]
        types = [decode(env).type.encode("utf-8") for _g, env in rows]  # type: ignore[arg-type]
        conn.execute(
            sql.SQL(
                "UPDATE {}.log l SET type = u.t FROM unnest(%s::bigint[], %s::bytea[]) AS u(g, t) WHERE l.goff = u.g"
            ).format(s),
            (goffs, types),
        )
        start = goffs[-1] + 1
    for text in _CREATE_TABLES.split(";"):
        if "log_category" in text or "log_type" in text:
            conn.execute(sql.SQL(text.strip()).format(s=s))
    conn.execute(
        sql.SQL(
            "DROP FUNCTION IF EXISTS {}.append_batch(integer[], text[], bigint[], integer[], bytea[], bytea[])"
        ).format(s)
    )
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}.remove_stream(text, smallint, bigint)").format(s))


def parse_detail(detail: str | None) -> dict[str, object]:
    """The JSON DETAIL of one of the functions' errors."""
    value = json.loads(detail or "{}")
    assert isinstance(value, dict)
    return value
