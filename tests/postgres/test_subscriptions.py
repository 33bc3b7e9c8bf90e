"""Durable subscriptions on PostgreSQL: what only a server has (tests/contract tests the API on both backends).

- schema version 3: the ``subscriptions`` table, made with the store, and added by the upgrade of a
  store of version 1 or 2 (a read-only open of one is refused);
- a member held across connections, stores and processes (an advisory lock of a session of its own),
  freed by ``close()``, by the store's close and by the death of its process;
- a deletion racing a claim: never a member held whose rows are gone, never rows deleted under a
  held member;
- an acknowledgement is a committed ``UPDATE`` (``synchronous_commit`` on whatever the durability),
  never moves a position back, and says so when the row or the connection is gone;
- a retry committed in the same group as its original returns the original's offsets.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

import logstore
from logstore import ANY, DuplicateMessageError, Envelope, ReadOnlyError, SubscriptionBusyError
from logstore.envelope import encode_many
from logstore.postgres import SCHEMA_VERSION, ConnectionLostError
from logstore.postgres.positions import member_key, name_key
from logstore.subscriptions import MAX_DEFINITION
from tests.contract.backends import POSTGRES_URL
from tests.helpers import spawn_python


def fill(store: Any, n: int = 6) -> None:
    for i in range(n):
        with store.transaction() as tx:
            tx.append(f"order-{i % 3}", ANY, [Envelope.new("Placed" if i % 2 else "Paid", {"i": i})])


def rows(admin: psycopg.Connection[Any], schema: str) -> list[tuple[Any, ...]]:
    return admin.execute(
        sql.SQL(
            "SELECT name, member, category, types, size, position FROM {}.subscriptions ORDER BY name, member"
        ).format(sql.Identifier(schema))
    ).fetchall()


def version_of(admin: psycopg.Connection[Any], schema: str) -> int:
    row = admin.execute(sql.SQL("SELECT schema_version FROM {}.meta").format(sql.Identifier(schema))).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_lock_waiter(admin: psycopg.Connection[Any], key: int) -> None:
    """Return once a session waits for the advisory lock ``key`` (the server's own view, asked again and again)."""
    unsigned = key & (2**64 - 1)
    deadline = time.monotonic() + 30
    while True:
        row = admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = %s AND objid::bigint = %s",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        ).fetchone()
        if row is not None and row[0] > 0:
            return
        assert time.monotonic() < deadline, "no session came to wait for the lock"


def lock_and_unlock(admin: psycopg.Connection[Any], key: int) -> None:
    """Wait (up to 30 s) until no session holds the advisory lock ``key``: take it, then give it back."""
    admin.execute("SET lock_timeout = '30s'")
    admin.execute("SELECT pg_advisory_lock(%s)", (key,))
    admin.execute("SELECT pg_advisory_unlock(%s)", (key,))
    admin.execute("RESET lock_timeout")


# -- the table and the schema version -------------------------------------------------------------


def test_a_new_store_has_the_subscriptions_table_at_version_3(open_pg, schema, admin):
    store = open_pg()
    assert version_of(admin, schema) == SCHEMA_VERSION == 3
    fill(store)
    with store.subscribe("bill", category="order", types=["Paid", "Placed"], group=(1, 3)) as sub:
        assert list(sub)
        sub.ack()
        acked = sub.position
    assert rows(admin, schema) == [
        ("bill", 0, "order", [b"Paid", b"Placed"], 3, 0),
        ("bill", 1, "order", [b"Paid", b"Placed"], 3, acked),
        ("bill", 2, "order", [b"Paid", b"Placed"], 3, 0),
    ]
    columns = admin.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = 'subscriptions' ORDER BY ordinal_position",
        (schema,),
    ).fetchall()
    assert columns == [
        ("name", "text", "NO"),
        ("member", "integer", "NO"),
        ("category", "text", "YES"),
        ("types", "ARRAY", "YES"),
        ("size", "integer", "NO"),
        ("position", "bigint", "NO"),
    ]


def _as_version_2(admin: psycopg.Connection[Any], schema: str) -> None:
    """Turn the store in ``schema`` into what version 2 made: no subscriptions table, version 2's
    ``append_batch`` (a stub with its signature and result, which finds no retry: the upgrade must replace
    it), ``schema_version`` 2."""
    s = sql.Identifier(schema)
    admin.execute(sql.SQL("DROP TABLE {}.subscriptions").format(s))
    admin.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}.append_batch(p_txs integer[], p_names text[], p_offsets bigint[],"
            " p_counts integer[], p_ids bytea[], p_envelopes bytea[], p_types bytea[])"
            " RETURNS TABLE (tx integer, goff bigint, firsts bigint[], stream text, expected bigint, given bigint,"
            " message_id bytea, why text) LANGUAGE sql AS 'SELECT NULL::integer, NULL::bigint, NULL::bigint[],"
            " NULL::text, NULL::bigint, NULL::bigint, NULL::bytea, NULL::text WHERE false'"
        ).format(s)
    )
    admin.execute(sql.SQL("UPDATE {}.meta SET schema_version = 2").format(s))


@pytest.mark.parametrize("version", [1, 2])
def test_a_store_of_version_1_or_2_is_upgraded_by_a_writable_open_and_refused_read_only(
    open_pg, schema, admin, version
):
    from tests.postgres.test_open import _as_version_1

    store = open_pg()
    fill(store)
    with store.global_stream() as log:
        before = [(log.offset(), log.stream_name(), env) for env in log]
    store.close()
    (_as_version_1 if version == 1 else _as_version_2)(admin, schema)
    assert version_of(admin, schema) == version
    with pytest.raises(
        logstore.FormatVersionError,
        match=f"schema version {version}; this logstore reads version 3: open the store once writable",
    ):
        open_pg(readonly=True)
    assert version_of(admin, schema) == version  # a read-only open changed nothing
    upgraded = open_pg()
    assert version_of(admin, schema) == 3
    with upgraded.global_stream() as log:
        assert [(log.offset(), log.stream_name(), env) for env in log] == before
    with upgraded.subscribe("audit", types=["Paid"]) as sub:
        assert list(sub) == [env for _g, _s, env in before if env.type == "Paid"]
        sub.ack()
    assert upgraded.subscriptions() == [logstore.SubscriptionInfo("audit", None, frozenset({"Paid"}), 1, (5,))]
    # The new append_batch: a commit, and a retry of it in the same group, get one range.
    env = Envelope.new("Paid", "after")
    group = [_pending(upgraded, [("order-9", 0, [env])]) for _ in range(2)]
    upgraded._commit_group(group)
    assert [p.result for p in group] == [range(6, 7), range(6, 7)]
    assert rows(admin, schema) == [("audit", 0, None, [b"Paid"], 1, 5)]
    # Opened again: version 3 as it is.
    upgraded.close()
    with open_pg(readonly=True) as again:
        assert again.subscriptions()[0].positions == (5,)


# -- one open subscription per member --------------------------------------------------------------


def test_a_member_is_held_across_stores_and_freed_by_close(open_pg):
    first, second = open_pg(), open_pg()
    fill(first)  # the streams order-0, order-1 and order-2 are member 1's of 2
    sub = first.subscribe("bill", category="order", group=(1, 2))
    with pytest.raises(SubscriptionBusyError, match="subscription 'bill' member 1 is open already") as caught:
        second.subscribe("bill", category="order", group=(1, 2))
    assert (caught.value.name, caught.value.member) == ("bill", 1)
    with pytest.raises(SubscriptionBusyError):
        first.subscribe("bill", category="order", group=(1, 2))  # the same store: another connection
    with second.subscribe("bill", category="order", group=(0, 2)) as other:  # the other member is free
        assert other.position == 0
    assert len(list(sub)) == 6
    sub.ack()
    sub.close()
    with second.subscribe("bill", category="order", group=(1, 2)) as again:  # free at once after close()
        assert again.position == sub.position == 6
    held = second.subscribe("solo")
    assert held.try_next()
    second.close()  # the store's close releases its members
    with first.subscribe("solo") as after:
        assert after.position == 0
    with pytest.raises(logstore.StreamClosedError, match="its store was closed"):
        held.ack()


def test_a_member_is_freed_when_its_process_dies(open_pg, schema, admin):
    store = open_pg()
    fill(store)
    code = (
        "import sys, logstore\n"
        f"store = logstore.open({POSTGRES_URL!r}, schema={schema!r})\n"
        "sub = store.subscribe('bill', group=(1, 2))\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = spawn_python(code)
    try:
        assert child.stdout is not None and child.stdout.readline() == "held\n"
        with pytest.raises(SubscriptionBusyError):
            store.subscribe("bill", group=(1, 2))
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lock_and_unlock(admin, member_key(schema, "bill", 1))  # the server ends the dead client's session
    with store.subscribe("bill", group=(1, 2)) as sub:
        assert sub.position == 0


def test_a_read_only_store_lists_but_neither_subscribes_nor_deletes(open_pg):
    store = open_pg()
    with store.subscribe("a", category="order"):
        pass
    reader = open_pg(readonly=True)
    assert reader.subscriptions() == [logstore.SubscriptionInfo("a", "order", None, 1, (0,))]
    with pytest.raises(ReadOnlyError):
        reader.subscribe("a", category="order")
    with pytest.raises(ReadOnlyError):
        reader.delete_subscription("a")


# -- deleting ----------------------------------------------------------------------------------


def test_a_delete_refuses_while_any_member_is_held_in_another_store_and_deletes_nothing(open_pg, schema, admin):
    first, second = open_pg(), open_pg()
    held = first.subscribe("bill", group=(2, 3))
    before = rows(admin, schema)
    with pytest.raises(SubscriptionBusyError, match="subscription 'bill' member 2 is open") as caught:
        second.delete_subscription("bill")
    assert (caught.value.name, caught.value.member) == ("bill", 2)
    assert rows(admin, schema) == before and len(before) == 3
    held.close()
    assert second.delete_subscription("bill") is True
    assert rows(admin, schema) == []
    assert second.delete_subscription("bill") is False


def test_a_claim_waits_for_a_delete_in_progress_and_creates_the_subscription_afresh(open_pg, schema, admin):
    store = open_pg()
    fill(store)
    with store.subscribe("bill") as sub:
        assert list(sub)
        sub.ack()
    # A deletion in progress, as delete_subscription makes it: the name's lock, the rows deleted, not committed.
    admin.execute("BEGIN")
    admin.execute("SELECT pg_advisory_xact_lock(%s)", (name_key(schema, "bill"),))
    admin.execute(sql.SQL("DELETE FROM {}.subscriptions WHERE name = 'bill'").format(sql.Identifier(schema)))
    got: dict[str, Any] = {}

    def subscribe() -> None:
        try:
            got["sub"] = store.subscribe("bill")
        except BaseException as exc:  # noqa: BLE001 - reported below
            got["error"] = exc

    thread = threading.Thread(target=subscribe)
    thread.start()
    wait_for_lock_waiter(admin, name_key(schema, "bill"))  # the claim waits for the name's lock
    admin.execute("COMMIT")
    thread.join(30)
    assert "error" not in got, got
    with got["sub"] as sub:
        assert sub.position == 0  # created afresh: it read the rows after the deletion
        assert rows(admin, schema) == [("bill", 0, None, None, 1, 0)]
        assert list(sub)
        sub.ack()  # its row exists


def _race(first: Any, second: Any, lead: int) -> dict[str, Any]:
    """``second.delete_subscription("race")`` and ``first.subscribe("race")`` at once: what each gave.

    The deletion starts after ``lead`` reads of ``second`` (a claim makes a connection first, so with
    no lead the deletion always wins: the rounds vary it, so that either comes first)."""
    barrier = threading.Barrier(2, timeout=30)
    got: dict[str, Any] = {}

    def delete() -> None:
        barrier.wait()
        for _ in range(lead):
            assert second.global_head >= 0
        try:
            got["deleted"] = second.delete_subscription("race")
        except SubscriptionBusyError:
            got["deleted"] = "busy"

    def claim() -> None:
        barrier.wait()
        got["sub"] = first.subscribe("race")

    threads = [threading.Thread(target=delete), threading.Thread(target=claim)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return got


def test_deletes_and_claims_racing_never_leave_a_held_member_without_its_row(open_pg, schema, admin):
    first, second = open_pg(), open_pg()
    fill(first)
    outcomes = set()
    for round_ in range(40):
        second.delete_subscription("race")  # each round begins with a subscription at position 4
        with first.subscribe("race") as sub:
            assert list(sub)
            sub.ack(3)
        got = _race(first, second, round_ % 20 * 4)
        outcomes.add(got["deleted"])
        sub = got["sub"]
        try:
            if got["deleted"] == "busy":  # the claim came first: nothing was deleted
                assert sub.position == 4, round_
                assert [r[5] for r in rows(admin, schema)] == [4]
            else:  # the deletion came first: the claim created the subscription again
                assert got["deleted"] is True
                assert sub.position == 0, round_
                assert [r[5] for r in rows(admin, schema)] == [0]
            assert sub.try_next()
            sub.ack()  # the held member's row is there
        finally:
            sub.close()
    assert outcomes == {True, "busy"}  # both orders happened


# -- acknowledging ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["fsync", "none"])
def test_an_ack_is_a_committed_update_that_never_moves_back(open_pg, schema, admin, durability):
    store = open_pg(durability=durability)
    fill(store)
    other = open_pg()
    with store.subscribe("bill") as sub:
        assert sub._claim.conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        for _ in range(3):
            assert sub.try_next()
        sub.ack()
        assert other.subscriptions()[0].positions == (3,)  # visible to every client when it returns
        admin.execute(sql.SQL("UPDATE {}.subscriptions SET position = 5").format(sql.Identifier(schema)))
        assert sub.try_next()
        sub.ack()  # 4 < 5: greatest() keeps the row's position
        assert rows(admin, schema)[0][5] == 5
        sub.ack(1)  # below the position this subscription saved: nothing to do
        assert rows(admin, schema)[0][5] == 5


def test_an_ack_whose_row_is_gone_says_so(open_pg, schema, admin):
    store = open_pg()
    fill(store)
    with store.subscribe("bill") as sub:
        assert sub.try_next()
        admin.execute(sql.SQL("DELETE FROM {}.subscriptions").format(sql.Identifier(schema)))
        with pytest.raises(logstore.LogStoreError, match=r"its row in .*subscriptions is gone"):
            sub.ack()
        assert sub.position == 0


def test_an_ack_on_a_broken_connection_raises_and_frees_the_member(open_pg, schema, admin):
    store = open_pg()
    fill(store)
    sub = store.subscribe("bill")
    assert sub.try_next()
    pid = sub._claim.conn.info.backend_pid
    row = admin.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,)).fetchone()
    assert row == (True,)
    with pytest.raises(ConnectionLostError, match="The member is free for another subscription now"):
        sub.ack()
    with store.subscribe("bill") as again:  # the session ended, and its lock with it
        assert again.position == 0
    sub.close()
    with pytest.raises(logstore.StreamClosedError):
        sub.ack()


def test_a_definition_too_large_for_a_directory_is_refused_here_too(open_pg):
    from logstore.embedded.positions import MAX_DEFINITION as EMBEDDED_MAX

    store = open_pg()
    assert MAX_DEFINITION == EMBEDDED_MAX
    types = [f"type-{i:04}" for i in range(MAX_DEFINITION // 8)]
    with pytest.raises(ValueError, match=f"the limit is {MAX_DEFINITION}"):
        store.subscribe("big", types=types)
    assert store.subscriptions() == []


# -- a retry in the same group as its original ------------------------------------------------------


def _pending(store: Any, plan: list[tuple[str, Any, list[Envelope]]]) -> Any:
    """A transaction staged as ``append_messages`` stages it (without its checks), for ``_commit_group``."""
    from logstore.postgres.store import _Pending

    tx, _committer = store.begin_tx()
    tx.assign(
        [
            (name, name.encode(), -1 if offset is ANY else offset, encode_many(envs, name, None, 1 << 20))
            for name, offset, envs in plan
        ]
    )
    return _Pending(tx)


def test_a_retry_in_the_same_group_as_its_original_gets_the_originals_offsets(open_pg):
    """Two threads committing one transaction at once may land in one append_batch: the later one is
    judged as if the earlier were committed (as the embedded writer does), a retry or a duplicate."""
    store = open_pg()
    with store.transaction() as tx:
        tx.append("before", 0, [Envelope.new("B", 0)])
    envs = [Envelope.new("E", i) for i in range(3)]
    original = [("s", 0, envs[:2]), ("t", 0, envs[2:])]
    group = [
        _pending(store, original),
        _pending(store, original),  # the same transaction again: a retry
        _pending(store, [("s", ANY, envs[:2]), ("t", ANY, envs[2:])]),  # at ANY: a retry too
        _pending(store, [("s", 0, envs[:1])]),  # its first message alone, where it was: a retry of it
        _pending(store, [("s", 0, [*envs[:1], Envelope.new("E", "new")])]),  # committed and new: a duplicate
        _pending(store, [("s", 1, envs[:1])]),  # at another offset: a duplicate
    ]
    store._commit_group(group)
    assert [p.result for p in group] == [range(1, 4), range(1, 4), range(1, 4), range(1, 2), None, None]
    assert [p.error for p in group[:4]] == [None] * 4
    assert group[2].tx.appends[0][2] == 0 and group[2].tx.appends[1][2] == 0  # the ANY appends got the offsets
    dup, moved = group[4].error, group[5].error
    assert isinstance(dup, DuplicateMessageError) and "also holds new messages" in str(dup)
    assert isinstance(moved, DuplicateMessageError) and (moved.existing, moved.offset) == (0, 1)
    assert store.global_head == 4 and (store.head("s"), store.head("t")) == (2, 1)
    # The same judgements, made one transaction at a time, are what the embedded store gives (tests/contract).
    again = [_pending(store, original)]
    store._commit_group(again)
    assert again[0].result == range(1, 4)


# -- verify of a URL --------------------------------------------------------------------------------


def test_verify_checks_each_subscriptions_rows(open_pg, schema, admin):
    from logstore.postgres.inspect import verify

    store = open_pg()
    fill(store)
    store.subscribe("group", group=(0, 3)).close()
    store.subscribe("other", category="order").close()
    store.close()
    assert verify(POSTGRES_URL, schema).problems == []
    s = sql.Identifier(schema)
    admin.execute(sql.SQL("UPDATE {}.subscriptions SET position = 99 WHERE name = 'other'").format(s))
    result = verify(POSTGRES_URL, schema)
    assert result.problems == []
    assert any("subscription 'other' member 0 is at global offset 99, past the log's end 6" in n for n in result.notes)
    admin.execute(sql.SQL("DELETE FROM {}.subscriptions WHERE name = 'group' AND member = 1").format(s))
    admin.execute(sql.SQL("UPDATE {}.subscriptions SET types = '{{T}}' WHERE name = 'other'").format(s))
    admin.execute(sql.SQL("INSERT INTO {}.subscriptions VALUES ('other', 1, 'order', NULL, 2, 0)").format(s))
    problems = [str(p) for p in verify(POSTGRES_URL, schema).problems]
    assert problems == [
        "subscription 'group': rows of members [0, 2], of a group of 3",
        "subscription 'other': its rows differ in category, types or size",
    ]


def test_a_forked_child_neither_acks_nor_frees_the_parents_member(open_pg, schema):
    import os

    store = open_pg()
    fill(store)
    other = open_pg()
    sub = store.subscribe("bill")
    assert sub.try_next()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: ack, then close the subscription and the store; report what happened
        os.close(read_end)
        try:
            sub.ack()
            outcome = "acked"
        except logstore.StoreForkedError:
            outcome = "forked"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            outcome = type(exc).__name__
        sub.close()
        store.close()
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        outcome = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert outcome == "forked"
    with pytest.raises(SubscriptionBusyError):  # the child's close() left the parent's session alone
        other.subscribe("bill")
    sub.ack()
    assert other.subscriptions()[0].positions == (1,)
    sub.close()


def test_a_position_past_the_logs_end_is_saved_as_the_end(open_pg, schema, admin, caplog):
    """Only a server crash that lost commits leaves one: subscribe begins at the end and saves it, and the
    acknowledgements after it are saved although they are below the position the row held."""
    store = open_pg()
    fill(store)
    with store.subscribe("bill") as sub:
        assert sub.try_next()
        sub.ack()
    admin.execute(sql.SQL("UPDATE {}.subscriptions SET position = 99").format(sql.Identifier(schema)))
    with caplog.at_level("WARNING", logger="logstore"), store.subscribe("bill") as sub:
        assert sub.position == 6 and rows(admin, schema)[0][5] == 6
        assert "member 0 is at global offset 99, past the log's end 6" in caplog.text
        fill(store, 2)
        assert sub.try_next() and sub.offset() == 6
        sub.ack()
        assert rows(admin, schema)[0][5] == 7
