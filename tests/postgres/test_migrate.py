"""The PostgreSQL side of ``logstore migrate``, and ``logstore verify``/``dump``/``stats`` of a URL.

- verify of a URL: clean stores, and damage made by SQL behind the store's back (an envelope byte, a
  message id, a missing row, a head below a row, a wrong deleted flag), each named with its global
  offset, stream and offset;
- dump and stats of a URL print what they print for a directory holding the same store;
- compaction gaps: which stream and offset each compacted message had (``assign_removed``), so that a
  store directory can hold them; a Hypothesis test runs random histories through PostgreSQL, a
  directory and PostgreSQL again;
- ``compare`` names the first difference with its global offset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

import logstore
from logstore import Envelope
from logstore.embedded.export import EmbeddedSource
from logstore.embedded.importer import EmbeddedDestination
from logstore.migration import MigrationError, batches, compare, migrate
from logstore.postgres.migration import PgDestination, PgSource, assign_removed
from logstore.subscriptions import member_of
from logstore.tools.cli import main
from tests.contract.backends import POSTGRES_URL
from tests.helpers import assert_verified
from tests.postgres.conftest import drop_schema

URL = POSTGRES_URL


def fill(store: Any) -> None:
    """Two streams interleaved, one truncated, one deleted and written again, compacted."""
    for i in range(6):
        with store.transaction() as tx:
            tx.append("a", i, [Envelope.new("A", {"i": i})])
            tx.append(
                "b", logstore.ANY, [Envelope.new("B", i), Envelope.new("B", -i)] if i == 0 else [Envelope.new("B", i)]
            )
    store.truncate_stream("a", 2)
    store.delete_stream("b")
    with store.transaction() as tx:
        tx.append("b", store.head("b"), [Envelope.new("B", "again")])
    with store.transaction() as tx:
        tx.append("c", 0, [Envelope.new("C", b"\x00" * 10)])


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def sql_run(admin: psycopg.Connection[Any], schema: str, text: str, *params: object) -> None:
    admin.execute(sql.SQL(text).format(s=sql.Identifier(schema)), params)


# -- verify ------------------------------------------------------------------------------------


def test_verify_of_a_url_is_clean_and_names_damage(
    open_pg: Callable[..., Any], schema: str, admin: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with open_pg() as store:
        fill(store)
        store.compact()
    code, out, err = run_cli(capsys, "verify", URL, "--schema", schema, "--json")
    assert (code, err) == (0, "")
    clean = json.loads(out)
    assert clean["ok"] and clean["problems"] == [] and clean["streams"] == 3
    assert clean["gaps"] == 9  # a@0, a@1 and b@0..6 (b's first transaction held two): compacted

    goff = 9  # a@4
    sql_run(
        admin,
        schema,
        "UPDATE {s}.log SET envelope = overlay(envelope placing '\\xff'::bytea from 3 for 1) WHERE goff = %s",
        goff,
    )
    code, out, _err = run_cli(capsys, "verify", URL, "--schema", schema)
    assert code == 1
    assert f"PROBLEM global offset {goff}, stream 'a' offset 4:" in out
    assert "1 problem(s)" in out
    code, out, _err = run_cli(capsys, "verify", URL, "--schema", schema, "--no-decode")
    assert code == 0  # without decoding, the bytes are not looked at

    code, out, _err = run_cli(capsys, "verify", URL, "--schema", schema, "--json")
    problems = json.loads(out)["problems"]
    assert [(p["global_offset"], p["stream"], p["offset"]) for p in problems] == [(goff, "a", 4)]


@pytest.mark.parametrize(
    ("damage", "where", "what"),
    [
        ("UPDATE {s}.log SET message_id = 'x'::bytea WHERE goff = 9", (9, "a", 4), "is not the row's message_id"),
        ("DELETE FROM {s}.log WHERE goff = 9", (11, "a", 5), "previous message row has offset 3"),
        ("DELETE FROM {s}.log WHERE goff = 5", (7, "a", 3), "previous message row has offset 1"),
        ("DELETE FROM {s}.log WHERE goff = 16", (None, "c", None), "offsets 0 .. 0 are readable"),
        ("UPDATE {s}.head SET next_goff = 5", (None, None, None), "at or above head.next_goff"),
        ("UPDATE {s}.streams SET deleted = true WHERE name = 'c'", (None, "c", None), "marked deleted"),
        ("UPDATE {s}.log SET kind = 7 WHERE goff = 9", (9, None, None), "row kind 7"),
        ("UPDATE {s}.log SET soff = 9 WHERE goff = 11", (11, "a", 9), "previous message row has offset 4"),
    ],
)
def test_verify_of_a_url_finds_each_broken_invariant(
    open_pg: Callable[..., Any],
    schema: str,
    admin: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
    damage: str,
    where: tuple[int | None, str | None, int | None],
    what: str,
) -> None:
    with open_pg() as store:
        fill(store)
    sql_run(admin, schema, damage)
    code, out, _err = run_cli(capsys, "verify", URL, "--schema", schema, "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    found = [p for p in problems if what in p["what"]]
    assert found, problems
    goff, stream, offset = where
    assert any(
        (goff is None or p["global_offset"] == goff)
        and (stream is None or p["stream"] == stream)
        and (offset is None or p["offset"] == offset)
        for p in found
    ), found


def test_tools_say_what_is_wrong_with_a_url(schema: str, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("verify", "dump", "stats"):
        code, out, err = run_cli(capsys, command, URL, "--schema", schema)
        assert (code, out) == (2, "")
        assert f"logstore {command}: " in err and "no logstore store there" in err and schema in err
    code, _out, err = run_cli(capsys, "stats", "postgresql://nobody@127.0.0.1:1/none", "--schema", schema)
    assert code == 2 and "could not connect" in err


# -- dump and stats ----------------------------------------------------------------------------


def test_dump_and_stats_of_a_url_match_the_directory_copy(
    open_pg: Callable[..., Any], schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_pg() as store:
        fill(store)
    copy = tmp_path / "copy"
    assert run_cli(capsys, "migrate", URL, str(copy), "--schema", schema)[0] == 0
    for options in ([], ["--json"], ["--stream", "a", "--from", "3"], ["--from", "5", "--limit", "3", "--json"]):
        code, from_pg, err = run_cli(capsys, "dump", URL, "--schema", schema, *options)
        assert (code, err) == (0, "")
        code, from_dir, err = run_cli(capsys, "dump", str(copy), *options)
        assert (code, err) == (0, "")
        assert from_pg == from_dir and from_pg, options
    # --all: the removed but not yet compacted messages and the removal rows, as on a directory
    # (the copy compacted its removed messages, so they show as removed records there).
    code, out, _err = run_cli(capsys, "dump", URL, "--schema", schema, "--all")
    lines = out.splitlines()
    assert "0 a@0 [message, removed]" in lines and "13 a [truncate: offsets before 2 removed]" in lines
    assert "14 b [delete at head 7]" in lines
    code, _out, err = run_cli(capsys, "dump", URL, "--schema", schema, "--stream", "nope")
    assert code == 2 and "no stream named 'nope'" in err

    code, out, _err = run_cli(capsys, "stats", URL, "--schema", schema, "--json")
    pg = json.loads(out)
    code, out, _err = run_cli(capsys, "stats", str(copy), "--json")
    disk = json.loads(out)
    assert pg["global_head"] == disk["global_head"] == 17
    assert pg["messages"] == disk["messages"] == {"readable": 6}
    assert {k: pg["streams"][k] for k in ("total", "live", "deleted", "truncated")} == {
        "total": 3,
        "live": 3,
        "deleted": 0,
        "truncated": 2,
    }
    assert pg["records"] == {"message": 15, "truncate": 1, "delete": 1, "total": 17}
    assert pg["holes"] == {
        "awaiting_compaction": 9,
        "reclaimable_bytes": pg["holes"]["reclaimable_bytes"],
        "compacted": 0,
    }
    assert pg["holes"]["reclaimable_bytes"] > 9 * 50 and pg["migration"] is None
    code, out, _err = run_cli(capsys, "stats", URL, "--schema", schema)
    assert "9 removed messages awaiting compaction" in out and "migration  none" in out


# -- compaction gaps ---------------------------------------------------------------------------


def test_compacted_messages_get_their_streams_and_offsets_back(
    open_pg: Callable[..., Any], schema: str, tmp_path: Path
) -> None:
    with open_pg() as store:
        fill(store)
        store.compact()
    conn = psycopg.connect(URL, autocommit=True)
    with conn:
        plan = assign_removed(conn, schema)
    assert plan.holes == [] and plan.problems == []
    # The log: 0 a0, 1 b0, 2 b1, 3 a1, 4 b2, 5 a2, 6 b3, 7 a3, 8 b4, 9 a4, 10 b5, 11 a5, 12 b6,
    # 13 truncate(a, 2), 14 delete(b, 7), 15 b7, 16 c0. Compacted: a0, a1, b0..b6. a0 stood at a's
    # first_goff and b0 at b's; a1 precedes a's truncation and b's messages its deletion. Which of a1
    # and b1 came first at 2 and 3 is not recorded: any order that respects the rest is right.
    assert plan.removed[0] == ("a", 0) and plan.removed[1] == ("b", 0)
    assert sorted(plan.removed) == [0, 1, 2, 3, 4, 6, 8, 10, 12]
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for goff, (name, offset) in sorted(plan.removed.items()):
        by_stream.setdefault(name, []).append((goff, offset))
    assert [o for _g, o in by_stream["a"]] == [0, 1] and [o for _g, o in by_stream["b"]] == [0, 1, 2, 3, 4, 5, 6]
    copy = tmp_path / "copy"
    source = PgSource(URL, schema)
    try:
        report = migrate(source, EmbeddedDestination(str(copy)))
        assert report.verified
    finally:
        source.close()
    assert_verified(copy)


def test_gaps_no_compacted_message_explains_are_refused_for_a_directory(
    open_pg: Callable[..., Any],
    schema: str,
    admin: psycopg.Connection[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with open_pg() as store:
        fill(store)
    sql_run(admin, schema, "UPDATE {s}.head SET next_goff = next_goff + 5")  # offsets no row and no stream explains
    code, out, err = run_cli(capsys, "migrate", URL, str(tmp_path / "copy"), "--schema", schema)
    assert (code, out) == (2, "")
    assert "global offsets 17 .. 21 hold no record" in err
    assert not (tmp_path / "copy").exists()
    # PostgreSQL keeps such gaps: into another schema the copy is exact.
    other = schema + "_copy"
    try:
        code, _out, err = run_cli(capsys, "migrate", URL, URL, "--src-schema", schema, "--dst-schema", other)
        assert (code, err) == (0, "")
    finally:
        drop_schema(other)


def test_compare_names_the_first_difference(
    open_pg: Callable[..., Any], schema: str, admin: psycopg.Connection[Any]
) -> None:
    with open_pg() as store:
        fill(store)
    other = schema + "_copy"
    try:
        source = PgSource(URL, schema)
        dest = PgDestination(URL, other)
        try:
            assert migrate(source, dest).verified
            copy = dest.as_source()
            assert compare(source, copy) is None
            sql_run(admin, other, "UPDATE {s}.log SET envelope = envelope || '\\x00'::bytea WHERE goff = 15")
            diff = compare(source, copy)
            assert diff is not None and diff.goff == 15
            assert "envelope bytes differ" in str(diff) and "global offset 15" in str(diff)
            sql_run(admin, other, "UPDATE {s}.streams SET first = 1 WHERE name = 'c'")
            diff = compare(source, copy)
            assert diff is not None and diff.goff is None and "stream 'c'" in diff.what
        finally:
            dest.close()
            source.close()
    finally:
        drop_schema(other)


# -- random histories --------------------------------------------------------------------------

_op = st.one_of(
    st.tuples(
        st.just("append"), st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 3)), min_size=1, max_size=3)
    ),
    st.tuples(st.just("truncate"), st.sampled_from("abc"), st.integers(0, 6)),
    st.tuples(st.just("delete"), st.sampled_from("abc")),
    st.tuples(st.just("compact")),
)


def _apply(store: Any, ops: list[Any]) -> None:
    for op in ops:
        if op[0] == "append":
            with store.transaction() as tx:
                for name, n in op[1]:
                    tx.append(name, logstore.ANY, [Envelope.new("E", os.urandom(k)) for k in range(n)])
        elif store.stream_info(op[1] if len(op) > 1 else "a") is None and op[0] != "compact":
            continue
        elif op[0] == "truncate":
            store.truncate_stream(op[1], min(op[2], store.head(op[1])))
        elif op[0] == "delete":
            store.delete_stream(op[1])
        else:
            store.compact()


@given(st.lists(_op, max_size=12))
def test_random_histories_go_through_a_directory_and_back(tmp_path_factory: Any, ops: list[Any]) -> None:
    base = f"pgmig_{os.urandom(6).hex()}"
    first, second = base + "_1", base + "_2"
    copy = tmp_path_factory.mktemp("copy") / "store"
    try:
        with logstore.open(URL, schema=first) as store:
            _apply(store, ops)
        src = PgSource(URL, first)
        try:
            assert migrate(src, EmbeddedDestination(str(copy))).verified
        finally:
            src.close()
        assert_verified(copy)
        with logstore.open(copy, readonly=True) as store:
            back_src = EmbeddedSource(store)
            dest = PgDestination(URL, second)
            try:
                assert migrate(back_src, dest).verified
            finally:
                dest.close()
        a, b = PgSource(URL, first), PgSource(URL, second)
        try:
            assert compare(a, b) is None
            assert a.streams() == b.streams() and a.global_head == b.global_head
            if not any(op[0] == "compact" for op in ops):  # nothing compacted: the copy is not compacted either
                assert list(a.records(0, a.global_head)) == list(b.records(0, b.global_head))
        finally:
            a.close()
            b.close()
    finally:
        drop_schema(first)
        drop_schema(second)


def test_rows_are_read_in_pages_of_bounded_size(
    open_pg: Callable[..., Any],
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from logstore.postgres import migration as pgm

    with open_pg() as store:
        fill(store)
        with store.transaction() as tx:
            tx.append("big", 0, [Envelope.new("Big", os.urandom(3000)) for _ in range(3)])
    monkeypatch.setattr(pgm, "PAGE_ROWS", 4)
    monkeypatch.setattr(pgm, "PAGE_BYTES", 2500)  # each big envelope is a page of its own
    source = PgSource(URL, schema)
    try:
        records = list(source.records(0, source.global_head))
    finally:
        source.close()
    assert [r.goff for r in records] == list(range(20))
    assert [len(r.payload or b"") > 3000 for r in records].count(True) == 3

    pages: list[list[Any]] = []

    class Spy:  # records what each page's query returned
        def __init__(self, conn: psycopg.Connection[Any]) -> None:
            self.conn = conn

        def execute(self, query: Any, params: Any = (), binary: bool = False) -> Any:
            cursor = self.conn.execute(query, params, binary=binary)
            if "ORDER BY l.goff" in query.as_string(self.conn) and "max(goff)" not in query.as_string(self.conn):
                rows = cursor.fetchall()
                pages.append(rows)
                return type("Rows", (), {"fetchall": lambda _self: rows})()
            return cursor

    with psycopg.connect(URL, autocommit=True) as conn:
        rows = list(pgm.paged(Spy(conn), schema, "l.goff, l.envelope", 0))  # type: ignore[arg-type]
    assert [r[0] for r in rows] == list(range(20)) and len(pages) >= 20 // 4 + 3
    for page in pages:
        sizes = [len(r[1] or b"") for r in page]
        assert 1 <= len(page) <= 4 and (sum(sizes) <= 2500 or len(page) == 1), sizes
    code, out, err = run_cli(capsys, "dump", URL, "--schema", schema, "--all", "--json")
    assert (code, err) == (0, "") and [json.loads(line)["global_offset"] for line in out.splitlines()] == list(
        range(20)
    )
    assert run_cli(capsys, "verify", URL, "--schema", schema)[0] == 0
    assert run_cli(capsys, "migrate", URL, str(tmp_path / "copy"), "--schema", schema)[0] == 0
    assert_verified(tmp_path / "copy")


def test_dump_of_a_url_names_an_envelope_that_does_not_decode(
    open_pg: Callable[..., Any], schema: str, admin: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with open_pg() as store:
        fill(store)
    sql_run(admin, schema, "UPDATE {s}.log SET envelope = '\\xc1'::bytea WHERE goff = 16")
    code, out, err = run_cli(capsys, "dump", URL, "--schema", schema)
    assert code == 2
    assert "global offset 16, stream 'c' offset 0: the envelope does not decode" in err
    assert out.splitlines()[-1].startswith("15 b@7 ")  # what came before is printed


class _Cut(Exception):
    """An interruption of a copy, in place of a kill."""


class _Cutting:
    """A destination that is interrupted at its ``at``-th batch: before it is written, or (``after``) after."""

    def __init__(self, inner: Any, at: int, after: bool) -> None:
        self.inner, self.at, self.after, self.calls = inner, at, after, 0
        self.where = inner.where

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, records: Any, end: int) -> None:
        self.calls += 1
        if self.calls == self.at and not self.after:
            raise _Cut
        self.inner.write(records, end)
        if self.calls == self.at:
            raise _Cut


def _copy_with_cuts(source: Any, make: Callable[[], Any], cuts: list[tuple[int, bool]]) -> None:
    """Copy with an interruption at each of ``cuts`` in turn (each on a fresh destination object, as a rerun
    makes), then once more to the end; the last run must verify."""
    for at, after in cuts:
        dest = _Cutting(make(), at, after)
        try:
            migrate(source, dest, max_records=3)
        except _Cut:
            pass
        else:
            return  # finished before this cut
        finally:
            dest.inner.close()
    dest = make()
    try:
        assert migrate(source, dest, max_records=3).verified
    finally:
        dest.close()


@given(st.lists(_op, max_size=10), st.lists(st.tuples(st.integers(1, 4), st.booleans()), max_size=4))
def test_interrupted_copies_resume_to_an_exact_copy(tmp_path_factory: Any, ops: list[Any], cuts: Any) -> None:
    base = f"pgcut_{os.urandom(6).hex()}"
    first, second = base + "_1", base + "_2"
    copy = tmp_path_factory.mktemp("copy") / "store"
    try:
        with logstore.open(URL, schema=first) as store:
            _apply(store, ops)
        src = PgSource(URL, first)
        try:
            _copy_with_cuts(src, lambda: EmbeddedDestination(str(copy)), cuts)
        finally:
            src.close()
        assert_verified(copy)
        assert not (copy / "MIGRATING").exists()
        with logstore.open(copy, readonly=True) as store:
            _copy_with_cuts(EmbeddedSource(store), lambda: PgDestination(URL, second), cuts)
        a, b = PgSource(URL, first), PgSource(URL, second)
        try:
            assert compare(a, b) is None
        finally:
            a.close()
            b.close()
    finally:
        drop_schema(first)
        drop_schema(second)


# -- durable subscriptions ---------------------------------------------------------------------


def _subscribe_some(store: Any) -> list[logstore.SubscriptionInfo]:
    """Three subscriptions of ``fill``'s store: one acknowledged part of the way, a group with one member
    acknowledged, one never read; returns ``store.subscriptions()``."""
    with store.subscribe("all") as sub:
        assert len(list(sub)) >= 5
        sub.ack(4)
    member = member_of("b", 3)
    with store.subscribe("group", category="b", types=["B"], group=(member, 3)) as sub:
        assert list(sub)
        sub.ack()
    with store.subscribe("never", types=["A", "C"]):
        pass
    infos = store.subscriptions()
    assert [i.name for i in infos] == ["all", "group", "never"] and infos[0].positions == (5,)
    assert infos[1].positions[member] > 0
    return infos


def test_subscriptions_go_to_postgres_and_back_with_their_positions(
    tmp_path: Path, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src, back = tmp_path / "src", tmp_path / "back"
    with logstore.open(src) as store:
        fill(store)
        infos = _subscribe_some(store)
        with store.subscribe("all") as sub:
            rest = [(sub.offset(), env) for env in sub]
    code, out, err = run_cli(capsys, "migrate", str(src), URL, "--schema", schema)
    assert (code, err) == (0, "") and "3 subscriptions" in out
    with logstore.open(URL, schema=schema) as pg:
        assert pg.subscriptions() == infos
        with pg.subscribe("all") as sub:  # goes on where it stood, with the same messages
            assert [(sub.offset(), env) for env in sub] == rest
    code, out, err = run_cli(capsys, "migrate", URL, str(back), "--schema", schema, "--json")
    assert (code, err) == (0, "") and json.loads(out)["subscriptions"] == 3
    with logstore.open(back) as store:
        assert store.subscriptions() == infos


def test_a_copy_whose_subscriptions_differ_is_named_and_a_destination_with_one_is_not_empty(
    tmp_path: Path, schema: str, admin: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    with logstore.open(src) as store:
        fill(store)
        _subscribe_some(store)
    assert run_cli(capsys, "migrate", str(src), URL, "--schema", schema)[0] == 0
    sql_run(admin, schema, "UPDATE {s}.subscriptions SET position = 3 WHERE name = 'all'")
    with logstore.open(src, readonly=True) as store:
        pg = PgSource(URL, schema)
        try:
            difference = compare(EmbeddedSource(store), pg)
        finally:
            pg.close()
    assert difference is not None and difference.goff is None
    assert str(difference) == (
        "subscription 'all': category None, types all, group size 1, positions [3];"
        " the source has category None, types all, group size 1, positions [5]"
    )
    # A store that holds nothing but a subscription is not empty.
    lone = tmp_path / "lone"
    with logstore.open(lone) as store:
        store.subscribe("mine").close()
    code, out, err = run_cli(capsys, "migrate", str(src), str(lone))
    assert (code, out) == (2, "") and "not empty (0 global offsets, 0 streams, 1 subscriptions)" in err
    other = f"{schema}_lone"
    try:
        with logstore.open(URL, schema=other) as pg_store:
            pg_store.subscribe("mine").close()
        code, out, err = run_cli(capsys, "migrate", str(src), URL, "--schema", other)
        assert (code, out) == (2, "") and "not empty (0 global offsets, 0 streams, 1 subscriptions)" in err
    finally:
        drop_schema(other)


def test_a_rerun_replaces_the_subscriptions_an_earlier_run_wrote(tmp_path: Path, schema: str) -> None:
    src = tmp_path / "src"
    with logstore.open(src) as store:
        fill(store)
        infos = _subscribe_some(store)
        source = EmbeddedSource(store)
        stale = [
            logstore.SubscriptionInfo("all", "a", None, 2, (1, 2)),  # another definition: made afresh
            logstore.SubscriptionInfo("gone", None, None, 1, (7,)),  # not in the source: deleted
        ]
        for make in (lambda: PgDestination(URL, schema), lambda: EmbeddedDestination(str(tmp_path / "copy"))):
            dest = make()
            try:
                at = dest.start(source)
                for batch, end in batches(source.records(at, source.global_head), source.global_head):
                    dest.write(batch, end)
                dest.put_subscriptions(stale)
                assert dest.as_source().subscriptions() == sorted(stale)
                dest.put_subscriptions(infos)
                assert dest.as_source().subscriptions() == infos
                assert compare(source, dest.as_source()) is None
            finally:
                dest.close()


def test_a_held_member_of_the_postgres_destination_stops_the_copy_of_subscriptions(tmp_path: Path, schema: str) -> None:
    src = tmp_path / "src"
    with logstore.open(src) as store:
        fill(store)
        infos = _subscribe_some(store)
        source = EmbeddedSource(store)
        dest = PgDestination(URL, schema)
        try:
            dest.start(source)
            dest.put_subscriptions(infos)
            with logstore.open(URL, schema=schema) as pg, pg.subscribe("never", types=["A", "C"]):
                with pytest.raises(MigrationError, match="subscription 'never' member 0 is open"):
                    dest.put_subscriptions(infos[:1])
                assert pg.subscriptions() == infos  # nothing was replaced
        finally:
            dest.close()
