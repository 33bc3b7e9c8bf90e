"""`logstore migrate SRC DST`: directory -> PostgreSQL -> directory, every offset and envelope byte kept;
refusals; a copy resumed after SIGKILL at random moments.

Needs the PostgreSQL server of the contract tier (``$LOGSTORE_TEST_POSTGRES``); each test makes its
own schemas and drops them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import psycopg
import pytest
from psycopg import sql

import logstore
from logstore import Envelope
from logstore.embedded.export import EmbeddedSource
from logstore.embedded.importer import PLACEHOLDER_TYPE
from logstore.envelope import decode
from logstore.migration import RawRecord
from logstore.postgres.migration import PgSource
from logstore.tools.cli import main
from tests.contract.backends import POSTGRES_URL
from tests.helpers import ROOT, assert_verified, child_env
from tests.terminal import on_a_terminal

URL = POSTGRES_URL
HOSTILE = ['naïve/ü "q"\n\t\'; DROP TABLE log; --', "-", "x" * 1000, "😀-emoji", "a b", "%s{}\\"]


@pytest.fixture
def schemas() -> Iterator[list[str]]:
    """Fresh schema names on demand (append to the list); every one is dropped after the test."""
    made: list[str] = []
    yield made
    with psycopg.connect(URL, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def new_schema(schemas: list[str]) -> str:
    name = f"migtest_{uuid.uuid4().hex[:12]}"
    schemas.append(name)
    return name


def env(type_: str, message: Any) -> Envelope:
    return Envelope.new(type_, message)


def build_rich(store: Any) -> None:
    """Streams with multi-stream transactions, truncations, deletions, a stream made again after its
    deletion, compaction gaps, hostile names, an envelope of MBs, and values whose bytes a decode and
    encode would not give back (a Timestamp with nanoseconds)."""
    names = ["order-1", "order-2", *HOSTILE]
    for i in range(30):
        with store.transaction() as tx:
            for k, name in enumerate(names):
                if (i + k) % 3 == 0:
                    tx.append(name, logstore.ANY, [env("E", {"i": i, "k": k, "b": bytes([i, k])})])
    with store.transaction() as tx:  # bytes that only a byte-for-byte copy keeps
        tx.append("odd", 0, [env("T", msgpack.Timestamp(1, 123)), env("X", msgpack.ExtType(5, b"\x00\x01"))])
    store.truncate_stream("order-1", 4)
    store.delete_stream(HOSTILE[0])
    store.compact()  # the removed messages so far leave REMOVED records (directory) or gaps (PostgreSQL)
    with store.transaction() as tx:
        tx.append(HOSTILE[0], store.head(HOSTILE[0]), [env("Again", 1), env("Again", 2)])
        tx.append("order-2", store.head("order-2"), [env("E", None)])
    with store.transaction() as tx:
        tx.append("big", 0, [env("Big", os.urandom(3 << 20))])
    store.truncate_stream("order-2", 3)  # removed, not compacted
    store.delete_stream("-")
    with store.transaction() as tx:
        tx.append("order-1", store.head("order-1"), [env("E", "last")])


def readable(store: Any) -> list[tuple[int, str, int, Envelope]]:
    """Everything a global reader returns, through the public API."""
    out = []
    with store.global_stream(0) as reader:
        while reader.try_next():
            out.append((reader.offset(), reader.stream_name(), reader.stream_offset(), reader.get()))
    return out


def state(store: Any) -> dict[str, Any]:
    """What the public API says of a store: head, names in order, each stream's info and its messages."""
    names = store.stream_names()
    every = sorted({n for _g, n, _o, _e in readable(store)} | set(names) | {HOSTILE[0], "-", "order-1"})
    streams = {}
    for name in every:
        info = store.stream_info(name)
        msgs = []
        reader, found = store.open_stream(store, name, 0)
        with reader:
            while reader.try_next():
                msgs.append((reader.offset(), reader.get()))
        streams[name] = (info, found, msgs)
    return {"head": store.global_head, "names": names, "streams": streams, "global": readable(store)}


def raw_pg(schema: str) -> list[RawRecord]:
    source = PgSource(URL, schema)
    try:
        return list(source.records(0, source.global_head))
    finally:
        source.close()


def raw_dir(path: Path) -> list[RawRecord]:
    with logstore.open(path, readonly=True) as store:
        return list(EmbeddedSource(store).records(0, store.global_head))


def payloads(records: list[RawRecord]) -> dict[int, tuple[str | None, int | None, bytes | None]]:
    """Message records by global offset: stream, offset, envelope bytes."""
    return {r.goff: (r.stream, r.offset, r.payload) for r in records if r.kind == "message"}


def controls(records: list[RawRecord]) -> list[tuple[int, str, str | None, int | None]]:
    return [(r.goff, r.kind, r.stream, r.offset) for r in records if r.kind in ("truncate", "delete")]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_directory_to_postgres_to_directory_keeps_every_offset_and_byte(
    tmp_path: Path, schemas: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    src, back = tmp_path / "src", tmp_path / "back"
    schema = new_schema(schemas)
    with logstore.open(src, segment_size=4 << 20) as store:
        build_rich(store)
        before = state(store)
    code, out, err = run_cli(capsys, "migrate", str(src), URL, "--schema", schema, "--batch", "7")
    assert (code, err) == (0, ""), err
    assert "verified" in out
    code, out, err = run_cli(capsys, "migrate", URL, str(back), "--schema", schema, "--json")
    assert (code, err) == (0, ""), err
    report = json.loads(out)
    assert report["verified"] is True and report["difference"] is None
    assert report["global_head"] == before["head"] and report["resumed_at"] == 0
    assert report["messages"] > 0 and report["control"] == 4 and report["removed"] > 0

    with logstore.open(URL, schema=schema, readonly=True) as pg:
        assert state(pg) == before
    with logstore.open(back, readonly=True) as copy:
        assert state(copy) == before
    assert_verified(back)
    assert not (back / "MIGRATING").exists()

    # Raw: the same envelope bytes at the same global and stream offsets on all three, the same removals;
    # what the source removed (compacted or not) is a REMOVED record in the copy or a gap in PostgreSQL.
    a, p, b = raw_dir(src), raw_pg(schema), raw_dir(back)
    with logstore.open(src, readonly=True) as store:
        firsts = {s.name: s.first for s in EmbeddedSource(store).streams()}
    live = {g: m for g, m in payloads(a).items() if m[1] is not None and m[1] >= firsts[str(m[0])]}
    assert {g: m for g, m in payloads(p).items() if g in live} == live
    assert {g: m for g, m in payloads(b).items() if g in live} == live
    assert set(payloads(b)) == set(live)  # the copy was compacted: nothing removed keeps an envelope
    assert controls(a) == controls(p) == controls(b)
    assert [r.goff for r in b] == list(range(before["head"]))
    gone_a = {r.goff for r in a if r.goff not in live and r.kind not in ("truncate", "delete")}
    gone_b = {r.goff for r in b if r.kind == "removed"}
    assert gone_a == gone_b
    assert len(payloads(a)[max(live, key=lambda g: len(live[g][2] or b""))][2] or b"") > 3 << 20
    odd = [m for m in live.values() if m[0] == "odd"]
    assert msgpack.unpackb(odd[0][2], timestamp=0)[6] == msgpack.Timestamp(1, 123)  # nanoseconds kept

    code, out, _err = run_cli(capsys, "verify", URL, "--schema", schema)
    assert code == 0 and "clean" in out


def test_a_store_written_on_postgres_goes_to_a_directory_and_back_exactly(
    tmp_path: Path, schemas: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = new_schema(schemas), new_schema(schemas)
    with logstore.open(URL, schema=first) as pg:
        build_rich(pg)
        pg.compact()  # PostgreSQL deletes every removed row: gaps, which the directory fills with REMOVED records
        before = state(pg)
    copy = tmp_path / "copy"
    code, _out, err = run_cli(capsys, "migrate", URL, str(copy), "--schema", first)
    assert (code, err) == (0, "")
    assert_verified(copy)
    with logstore.open(copy, readonly=True) as store:
        assert state(store) == before
        kinds = {r.kind for r in EmbeddedSource(store).records(0, store.global_head)}
    assert "removed" in kinds
    code, _out, err = run_cli(capsys, "migrate", str(copy), URL, "--dst-schema", second)
    assert (code, err) == (0, "")

    def rows(schema: str) -> tuple[list[Any], list[Any], int]:
        s = sql.Identifier(schema)
        with psycopg.connect(URL) as conn:
            log = conn.execute(
                sql.SQL(
                    "SELECT l.goff, l.kind, s.name, l.soff, l.message_id, l.envelope FROM {s}.log l"
                    " JOIN {s}.streams s ON s.id = l.stream_id ORDER BY l.goff"
                ).format(s=s)
            ).fetchall()
            streams = conn.execute(
                sql.SQL("SELECT name, head, first, deleted, first_goff FROM {s}.streams ORDER BY first_goff").format(
                    s=s
                )
            ).fetchall()
            row = conn.execute(sql.SQL("SELECT next_goff FROM {s}.head").format(s=s)).fetchone()
            assert row is not None
            return log, streams, row[0]

    assert rows(second) == rows(first)  # row for row, byte for byte, the same gaps


def test_refuses_a_destination_that_is_not_empty(
    tmp_path: Path, schemas: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    src, other = tmp_path / "src", tmp_path / "other"
    with logstore.open(src) as store:
        build_small(store, 5)
    with logstore.open(other) as store:
        build_small(store, 1)
    code, out, err = run_cli(capsys, "migrate", str(src), str(other))
    assert (code, out) == (2, "")
    assert str(other) in err and "not empty" in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    code, _out, err = run_cli(capsys, "migrate", str(src), str(junk))
    assert code == 2 and "not empty and holds no store" in err
    assert (junk / "notes.txt").read_text() == "mine" and sorted(os.listdir(junk)) == ["notes.txt"]

    schema = new_schema(schemas)
    with logstore.open(URL, schema=schema) as pg:
        build_small(pg, 1)
    code, _out, err = run_cli(capsys, "migrate", str(src), URL, "--schema", schema)
    assert code == 2 and f"schema '{schema}'" in err and "not empty" in err
    with logstore.open(URL, schema=schema, readonly=True) as pg:
        assert pg.global_head == 1  # untouched

    # A finished copy is an ordinary store: a second run refuses it too.
    done = new_schema(schemas)
    assert run_cli(capsys, "migrate", str(src), URL, "--schema", done)[0] == 0
    code, _out, err = run_cli(capsys, "migrate", str(src), URL, "--schema", done)
    assert code == 2 and "not empty" in err
    # An unfinished copy of another store is refused, naming it.
    half = tmp_path / "half"
    assert run_cli(capsys, "migrate", URL, str(half), "--schema", done)[0] == 0
    (half / "MIGRATING").write_text(json.dumps({"source": "directory 00", "where": "/elsewhere"}))
    code, _out, err = run_cli(capsys, "migrate", str(src), str(half))
    assert code == 2 and "unfinished copy of another store" in err and "/elsewhere" in err


def test_options_that_do_not_fit_are_refused(
    tmp_path: Path, schemas: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    with logstore.open(src) as store:
        build_small(store, 2)
    cases = [
        (["migrate", str(src), str(tmp_path / "d"), "--schema", "s"], "neither SRC nor DST"),
        (["migrate", str(src), str(tmp_path / "d"), "--src-schema", "s"], "--src-schema is an option"),
        (["migrate", str(src), URL, "--segment-size", "65536"], "--segment-size is an option of a store directory"),
        (["migrate", str(src), str(src)], "the destination is the source"),
        (["migrate", str(tmp_path / "nothing"), str(tmp_path / "d")], "no such directory"),
        (["migrate", URL, str(tmp_path / "d"), "--schema", new_schema(schemas)], "no logstore store there"),
        (["verify", str(src), "--schema", "s"], "--schema is an option of a postgresql:// URL"),
        (["dump", str(src), "--schema", "s"], "--schema is an option of a postgresql:// URL"),
        (["stats", str(src), "--schema", "s"], "--schema is an option of a postgresql:// URL"),
        (["compact", URL], "compact works on a store directory, not on a postgresql:// URL"),
        (["repair", URL], "repair works on a store directory, not on a postgresql:// URL"),
        (["demo", URL], "demo works on a store directory, not on a postgresql:// URL"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        assert (code, out) == (2, ""), argv
        assert message in err, (argv, err)
    assert not (tmp_path / "d").exists()


def build_small(store: Any, n: int) -> None:
    for i in range(n):
        with store.transaction() as tx:
            tx.append(f"s-{i % 3}", logstore.ANY, [env("E", i)])


# -- interrupted copies -----------------------------------------------------------------------


def _dest_head(dst: str, schema: str | None) -> int:
    """How far the destination is (0 before it exists), read beside the running copy."""
    if schema is not None:
        with psycopg.connect(URL, autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".head',)).fetchone()
            if row is None or row[0] is None:
                return 0
            head = conn.execute(sql.SQL("SELECT next_goff FROM {}.head").format(sql.Identifier(schema))).fetchone()
            return 0 if head is None else int(head[0])
    if not (Path(dst) / "CHECKPOINT").exists():
        return 0
    try:
        with logstore.open(dst, readonly=True) as store:
            return store.global_head
    except (logstore.LogStoreError, OSError, ValueError):
        return 0  # being created


def _kill_rounds(src: str, dst: str, dst_schema: str | None, src_schema: str | None, total: int) -> int:
    """Run the copy and SIGKILL it at random moments, each a little further; return the rounds killed."""
    rng = random.Random(1234)
    argv = [sys.executable, "-m", "logstore", "migrate", src, dst, "--batch", "40"]
    if src_schema is not None:
        argv += ["--src-schema", src_schema]
    if dst_schema is not None:
        argv += ["--dst-schema", dst_schema]
    killed = 0
    rounds = 4
    for k in range(rounds):
        # Each round stops somewhere in the next slice of the first two thirds of the log: the copy
        # is always left unfinished, and the kills fall early, late, and inside batches.
        low, high = total * 2 * k // (3 * rounds), total * 2 * (k + 1) // (3 * rounds)
        goal = rng.randrange(low, high) + 1
        environ = child_env()
        if dst_schema is None:
            # Into a directory the copy kills itself (LOGSTORE_KILL_AT), before a write to its segments or
            # in the middle of one (torn), at most one write per record away from the goal: a poll from here
            # reads the destination's head by opening it, which on a loaded machine can take longer than the
            # whole copy, so a copy polled for could finish unseen.
            writes = max(goal - _dest_head(dst, dst_schema), 0) + 1
            environ["LOGSTORE_KILL_AT"] = f"pwrite{'.torn' if k % 2 else ''}:{writes}:segments/"
        proc = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if dst_schema is not None:
            deadline = time.monotonic() + 60
            while proc.poll() is None and _dest_head(dst, dst_schema) < goal and time.monotonic() < deadline:
                time.sleep(0.005)  # a bounded poll of another process's progress
            time.sleep(rng.random() * 0.005)  # somewhere inside the next batch
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
        # What the interrupted copy left is a prefix of the source, never more, never torn.
        head = _dest_head(dst, dst_schema)
        assert 0 <= head <= total
        if head:
            _assert_prefix(src, src_schema, dst, dst_schema, head)
    return killed


def _raw(path: str, schema: str | None, end: int) -> list[RawRecord]:
    if schema is not None:
        source = PgSource(path, schema)
        try:
            return list(source.records(0, end))
        finally:
            source.close()
    with logstore.open(path, readonly=True) as store:
        return list(EmbeddedSource(store).records(0, end))


def _assert_prefix(src: str, src_schema: str | None, dst: str, dst_schema: str | None, head: int) -> None:
    """The destination's records below ``head`` are the source's: the same envelope bytes at the same offsets,
    the same removals; nothing is duplicated or missing."""
    a, b = _raw(src, src_schema, head), _raw(dst, dst_schema, head)
    held = payloads(b)
    # A directory holds a placeholder where the source's message was compacted, until its own compaction.
    placeholders = {g for g, m in held.items() if decode(m[2] or b"").type == PLACEHOLDER_TYPE}
    assert placeholders <= {r.goff for r in a if r.kind == "removed"}
    assert {g: m for g, m in held.items() if g not in placeholders} == payloads(a)
    assert controls(a) == controls(b)


def _source_messages(path_or_schema: str, is_schema: bool) -> list[tuple[int, str, int, Envelope]]:
    if is_schema:
        with logstore.open(URL, schema=path_or_schema, readonly=True) as store:
            return readable(store)
    with logstore.open(path_or_schema, readonly=True) as store:
        return readable(store)


@pytest.mark.parametrize("direction", ["to-postgres", "to-directory"])
def test_a_copy_killed_at_random_moments_resumes_and_verifies(
    tmp_path: Path, schemas: list[str], capsys: pytest.CaptureFixture[str], direction: str
) -> None:
    schema = new_schema(schemas)
    src_dir = tmp_path / "src"
    with logstore.open(
        URL if direction == "to-directory" else src_dir,
        **({"schema": schema} if direction == "to-directory" else {"durability": "none"}),
    ) as store:
        for i in range(1000):
            with store.transaction() as tx:
                for k in range(4):
                    tx.append(f"s-{k}", logstore.ANY, [env("E", {"i": i, "pad": "p" * 100})])
            if i % 97 == 50:
                store.truncate_stream(f"s-{i % 4}", store.head(f"s-{i % 4}") - 3)
        store.delete_stream("s-3")
        store.compact()
        total = store.global_head
    if direction == "to-postgres":
        src, dst, src_schema, dst_schema = str(src_dir), URL, None, schema
    else:
        src, dst, src_schema, dst_schema = URL, str(tmp_path / "dst"), schema, None
    killed = _kill_rounds(src, dst, dst_schema, src_schema, total)
    assert killed >= 2
    if _dest_head(dst, dst_schema) < total:  # (the last kill may have come just after the last batch)
        # Mid-copy, a stream may show offsets whose messages the source compacted before the removal that
        # explains them is copied: verify may report that, and always names the unfinished copy.
        code, out, _err = run_cli(capsys, "verify", dst, *(["--schema", dst_schema] if dst_schema else []))
        assert code in (0, 1) and "unfinished `logstore migrate`" in out, out
    argv = ["migrate", src, dst, "--json"]
    argv += ["--src-schema", src_schema] if src_schema else []
    argv += ["--dst-schema", dst_schema] if dst_schema else []
    code, out, err = run_cli(capsys, *argv)
    assert (code, err) == (0, ""), err
    report = json.loads(out)
    assert report["verified"] and report["global_head"] == total
    expected = _source_messages(schema if direction == "to-directory" else str(src_dir), direction == "to-directory")
    assert _source_messages(dst_schema or dst, dst_schema is not None) == expected
    if dst_schema is None:
        assert_verified(dst)
        assert not (Path(dst) / "MIGRATING").exists()


def test_progress_bar_on_a_terminal_but_not_with_json(tmp_path: Path, schemas: list[str]) -> None:
    src = tmp_path / "src"
    with logstore.open(src) as store:
        build_small(store, 30)
    code, screen, _err = on_a_terminal(["migrate", str(src), URL, "--schema", new_schema(schemas)])
    assert code == 0 and "copying" in screen and "verified: global head 30" in screen
    code, screen, _err = on_a_terminal(["migrate", str(src), URL, "--schema", new_schema(schemas), "--json"])
    assert code == 0 and "copying" not in screen and json.loads(screen)["verified"] is True


def test_a_copy_that_differs_from_its_source_exits_1_and_stays_marked(
    tmp_path: Path, schemas: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    with logstore.open(src) as store:
        build_small(store, 10)
        identity = EmbeddedSource(store).identity
    schema = new_schema(schemas)
    assert run_cli(capsys, "migrate", str(src), URL, "--schema", schema)[0] == 0
    # Behind the copy's back: one envelope byte changed, and the copy marked unfinished again.
    s = sql.Identifier(schema)
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {}.log SET envelope = overlay(envelope placing '\\x00'::bytea from 40 for 1) WHERE goff = 6"
            ).format(s)
        )
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (one boolean PRIMARY KEY DEFAULT true, source text, origin text,"
                " started_at timestamptz DEFAULT now())"
            ).format(sql.Identifier(schema, "migration"))
        )
        conn.execute(
            sql.SQL("INSERT INTO {} (source, origin) VALUES (%s, %s)").format(sql.Identifier(schema, "migration")),
            (identity, str(src)),
        )
    code, out, err = run_cli(capsys, "migrate", str(src), URL, "--schema", schema)
    assert (code, err) == (1, "")
    assert "resumed at global offset 10" in out
    assert (
        "DIFFERENCE global offset 6: a message of 's-0' at offset 2" in out
        and "envelope bytes differ at byte 39" in out
    )
    code, out, _err = run_cli(capsys, "stats", URL, "--schema", schema, "--json")
    assert json.loads(out)["migration"]["where"] == str(src)  # still marked: nothing takes it for a finished copy
