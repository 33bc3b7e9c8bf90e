"""Opening a PostgreSQL store: tables created once, the schema version, options, read-only stores."""

from __future__ import annotations

import threading

import psycopg
import pytest
from psycopg import sql

import logstore
from logstore import Envelope
from logstore.postgres import SCHEMA_VERSION, PostgresStore
from tests.contract.backends import POSTGRES_URL


def test_open_dispatches_on_the_url_and_creates_the_tables_with_a_version_row(open_pg, schema, admin, tmp_path):
    store = open_pg()
    assert isinstance(store, PostgresStore)
    assert isinstance(logstore.open(tmp_path / "dir"), logstore.Store)
    tables = {
        r[0]
        for r in admin.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))
    }
    assert tables == {"meta", "head", "streams", "log", "subscriptions"}
    row = admin.execute(
        sql.SQL("SELECT schema_version, store_id FROM {}.meta").format(sql.Identifier(schema))
    ).fetchone()
    assert row == (SCHEMA_VERSION, store.store_id)
    assert "postgres@127.0.0.1" in repr(store) and schema in repr(store)


def test_clients_opening_a_new_schema_at_once_create_one_store(schema):
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4, timeout=30)

    def open_one() -> None:
        try:
            barrier.wait()
            stores.append(logstore.open(POSTGRES_URL, schema=schema))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert len({s.store_id for s in stores}) == 1
    finally:
        for s in stores:
            s.close()


def test_a_store_of_another_schema_version_is_refused(open_pg, schema, admin):
    open_pg().close()
    admin.execute(sql.SQL("UPDATE {}.meta SET schema_version = 99").format(sql.Identifier(schema)))
    with pytest.raises(
        logstore.FormatVersionError, match=f"schema version 99; this logstore reads version {SCHEMA_VERSION}"
    ):
        open_pg()


def test_a_schema_holding_other_tables_is_refused(open_pg, schema, admin):
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    admin.execute(sql.SQL("CREATE TABLE {}.log (x int)").format(sql.Identifier(schema)))
    with pytest.raises(ValueError, match=r"holds tables named \['log'\] but no logstore store"):
        open_pg()


@pytest.mark.parametrize(
    "option", ["segment_size", "checkpoint_bytes", "fsync_interval", "io", "retention_age", "retention_bytes"]
)
def test_options_of_a_store_directory_are_refused(option):
    with pytest.raises(ValueError, match=f"{option} is an option of a store directory"):
        logstore.open(POSTGRES_URL, schema="never_made", **{option: 1})


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword arguments for a PostgreSQL store: \\['bogus'\\]"):
        logstore.open(POSTGRES_URL, bogus=1)
    with pytest.raises(TypeError, match="schema= is an option of a postgresql:// URL"):
        logstore.open(tmp_path / "dir", schema="x")
    with pytest.raises(ValueError, match="durability must be one of"):
        logstore.open(POSTGRES_URL, schema="never_made", durability="sometimes")
    with pytest.raises(ValueError, match="schema must be at most 63 UTF-8 bytes"):
        logstore.open(POSTGRES_URL, schema="s" * 64)


def test_readonly_reads_live_and_refuses_writes(open_pg, schema):
    with pytest.raises(FileNotFoundError, match="no logstore store there"):
        open_pg(readonly=True)
    writer = open_pg()
    reader_store = open_pg(readonly=True)
    with pytest.raises(logstore.ReadOnlyError):
        reader_store.begin_tx()
    with pytest.raises(logstore.ReadOnlyError):
        reader_store.delete_stream("s")
    log = reader_store.global_stream()
    with writer.transaction() as tx:
        tx.append("s", 0, [Envelope.new("T", 1)])
    log.next(timeout=30)
    assert (log.offset(), log.get().message) == (0, 1)


@pytest.mark.parametrize("durability", ["fsync", "batch", "none"])
def test_durability_sets_synchronous_commit(open_pg, durability):
    store = open_pg(durability=durability)
    with store._connection() as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    assert (row[0] == "off") is (durability != "fsync")
    with store.transaction() as tx:
        tx.append("s", 0, [Envelope.new("T", 1)])
    assert store.global_head == 1


def test_transactions_over_streams_in_opposite_orders_never_deadlock(open_pg):
    """Two threads commit to A then B and to B then A at once, many times: the server locks streams in one order."""
    store = open_pg()
    rounds = 100
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=30)

    def work(names: tuple[str, str]) -> None:
        try:
            for i in range(rounds):
                tx, committer = store.begin_tx()
                for name in names:
                    tx.append(name, logstore.ANY, [Envelope.new("T", i)])
                barrier.wait()
                committer.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(n,)) for n in (("A", "B"), ("B", "A"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert (store.head("A"), store.head("B"), store.global_head) == (2 * rounds, 2 * rounds, 4 * rounds)


def test_docs_show_the_tables_as_they_are_created():
    """docs/POSTGRES.md shows the DDL of logstore/postgres/schema.py, for ``schema="logstore"``."""
    from logstore.postgres import schema as ddl
    from tests.helpers import ROOT

    doc = (ROOT / "docs" / "POSTGRES.md").read_text(encoding="utf-8")
    statements = [s.strip() for s in ddl._CREATE_TABLES.replace("{s}", "logstore").split(";") if s.strip()]
    assert len(statements) == 9
    for statement in statements:
        assert statement + ";" in doc


def test_the_embedded_store_never_imports_the_driver():
    """psycopg is an optional extra: ``import logstore`` and a directory store do without it."""
    from tests.helpers import run_python

    code = (
        "import sys, tempfile, logstore\n"
        "logstore.open(tempfile.mkdtemp() + '/s').close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool')))\n"
    )
    done = run_python(code, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_password_never_shows_in_messages(schema):
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = POSTGRES_URL.replace("postgres@", "postgres:s3cret@", 1) + f"{sep}password=s3cret"
    with logstore.open(url, schema=schema) as store:
        assert "s3cret" not in repr(store) and "s3cret" not in store.path
        assert "***" in store.path
        with pytest.raises(ValueError, match="no stream named") as info:
            store.delete_stream("missing")
        assert "s3cret" not in str(info.value)
    with pytest.raises(logstore.StoreClosedError) as closed:
        store.head("s")
    assert "s3cret" not in str(closed.value)


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_the_writing_functions_refuse_to_run_above_read_committed(open_pg, schema, admin, level):
    """A commit is one statement in autocommit, READ COMMITTED by the session's default; should a
    session run it at another level (where a writer that waited for the head row would fail rather than
    queue), the functions refuse before they lock anything."""
    store = open_pg()
    env = Envelope.new("A", 0)
    with store.transaction() as tx:
        tx.append("s", 0, [env])
    s = sql.Identifier(schema)
    calls = [
        sql.SQL(
            "SELECT * FROM {}.append_batch('{{1}}', '{{s}}', '{{1}}', '{{1}}', '{{x}}', '{{x}}', '{{T}}'::bytea[])"
        ).format(s),
        sql.SQL("SELECT {}.remove_stream('s', 1::smallint, 1)").format(s),
    ]
    for call in calls:
        admin.execute(sql.SQL("BEGIN ISOLATION LEVEL {}").format(sql.SQL(level)))
        with pytest.raises(
            psycopg.errors.InvalidTransactionState, match=f"logstore writes run in READ COMMITTED, not {level.lower()}"
        ):
            admin.execute(call)
        admin.execute("ROLLBACK")
    assert store.head("s") == 1 and store.global_head == 1 and store.read("s") == [env]


# A version-1 store's append_batch as far as the migration sees it: its signature and its result's columns.
_V1_APPEND_BATCH = (
    "CREATE FUNCTION {}.append_batch(p_txs integer[], p_names text[], p_offsets bigint[], p_counts integer[],"
    " p_ids bytea[], p_envelopes bytea[])"
    " RETURNS TABLE (tx integer, goff bigint, firsts bigint[], stream text, expected bigint, given bigint)"
    " LANGUAGE sql AS 'SELECT NULL::integer, NULL::bigint, NULL::bigint[], NULL::text, NULL::bigint,"
    " NULL::bigint WHERE false'"
)


def _as_version_1(admin, schema: str) -> None:
    """Turn the store in ``schema`` into what version 1 made: no category or type column (nor their
    indexes), no subscriptions table, an ``append_batch`` without the types (a stub with version 1's
    signature and result: the store is closed, and the upgrade replaces it), ``schema_version`` 1."""
    s = sql.Identifier(schema)
    admin.execute(sql.SQL("DROP TABLE {}.subscriptions").format(s))
    admin.execute(sql.SQL("ALTER TABLE {}.log DROP COLUMN category, DROP COLUMN type").format(s))
    admin.execute(
        sql.SQL(
            "DROP FUNCTION {s}.append_batch(integer[], text[], bigint[], integer[], bytea[], bytea[], bytea[])"
        ).format(s=s)
    )
    admin.execute(sql.SQL(_V1_APPEND_BATCH).format(s))
    admin.execute(sql.SQL("UPDATE {}.meta SET schema_version = 1").format(s))


def test_a_version_1_store_is_upgraded_by_a_writable_open_and_refused_read_only(open_pg, schema, admin):
    store = open_pg()
    for i in range(30):
        with store.transaction() as tx:
            tx.append(f"{'order' if i % 3 else 'user'}-{i % 4}", logstore.ANY, [Envelope.new(f"T{i % 5}", {"i": i})])
    store.truncate_stream("order-1", 2)
    with store.global_stream() as log:
        everything = [(log.offset(), log.stream_name(), env) for env in log]
    store.close()
    _as_version_1(admin, schema)
    # A version 1 store: its functions take no types, its rows have no category.
    with pytest.raises(logstore.FormatVersionError, match="open the store once writable"):
        open_pg(readonly=True)
    upgraded = open_pg()
    row = admin.execute(sql.SQL("SELECT schema_version FROM {}.meta").format(sql.Identifier(schema))).fetchone()
    assert row == (SCHEMA_VERSION,)
    with upgraded.category("order") as orders:
        assert [(orders.offset(), orders.stream_name(), env) for env in orders] == [
            r for r in everything if r[1].startswith("order-")
        ]
    with upgraded.global_stream(types=["T2"]) as typed:
        assert list(typed) == [r[2] for r in everything if r[2].type == "T2"]
    with upgraded.transaction() as tx:
        tx.append("order-9", 0, [Envelope.new("T2", {})])
    with upgraded.category("order", everything[-1][0] + 1, types=["T2"]) as tail:
        assert [(tail.stream_name(), env.type) for env in tail] == [("order-9", "T2")]


def test_verify_checks_each_rows_category_and_type(open_pg, schema, admin):
    from logstore.postgres.inspect import verify

    store = open_pg()
    with store.transaction() as tx:
        tx.append("order-1", 0, [Envelope.new("Placed", {}), Envelope.new("Paid", {})])
        tx.append("user", 0, [Envelope.new("Seen", {})])
    store.close()
    assert verify(POSTGRES_URL, schema).problems == []
    s = sql.Identifier(schema)
    admin.execute(sql.SQL("UPDATE {}.log SET category = 'orders' WHERE goff = 0").format(s))
    admin.execute(sql.SQL("UPDATE {}.log SET type = 'Placed'::bytea WHERE goff = 1").format(s))
    problems = [str(p) for p in verify(POSTGRES_URL, schema).problems]
    assert len(problems) == 2, problems
    assert "category is 'orders', its stream's name says 'order'" in problems[0]
    assert "type is 'Placed', the envelope's 'Paid'" in problems[1]


def test_a_version_1_store_upgraded_judges_retries_and_locates(open_pg, schema, admin):
    """Version 2's append_batch judges message ids; a writable open upgrades a version-1 store to it."""
    env = Envelope.new("E", 1)
    store = open_pg()
    with store.transaction() as tx:
        tx.append("s", 0, [env])
    store.close()
    s = sql.Identifier(schema)
    _as_version_1(admin, schema)
    store = open_pg()
    try:
        (version,) = admin.execute(sql.SQL("SELECT schema_version FROM {}.meta").format(s)).fetchone()
        assert version == SCHEMA_VERSION == 3
        tx, committer = store.begin_tx()
        store.append_messages(tx, "s", 0, [env])
        assert committer.commit() == range(1)  # a retry: the migrated function judges message ids
        with store.transaction() as tx:
            tx.append("s", 1, [Envelope.new("E", 2)])
        assert tx.global_offsets == range(1, 2)
        assert [tuple(p) for p in store.locate(env.message_id)] == [("s", 0, 0)]
    finally:
        store.close()
