"""Hostile stream and schema names, and the largest envelopes: stored and read back exactly, never as SQL."""

from __future__ import annotations

import threading

import pytest

import logstore
from logstore import ANY, Envelope, MessageTooLargeError
from tests.postgres.conftest import drop_schema

HOSTILE_NAMES = [
    "order-42",
    "'; DROP TABLE log; --",
    'quote"double',
    "back\\slash",
    "%s %(x)s {} {0} $1 $$",
    "new\nline\ttab\r",
    "ünïcødé ✓ 漢字 🚀 \u200b",
    " leading and trailing ",
    "x" * logstore.MAX_STREAM_NAME,  # the longest name: 1024 UTF-8 bytes
    "é" * (logstore.MAX_STREAM_NAME // 2),
    "\x01\x7f",
    "NULL",
]


def test_hostile_stream_names_are_stored_and_read_back_exactly(open_pg):
    store = open_pg()
    written = []
    with store.transaction() as tx:
        for i, name in enumerate(HOSTILE_NAMES):
            env = Envelope.new("Named", {"i": i})
            tx.append(name, 0, [env])
            written.append((name, env))
    assert store.stream_names() == HOSTILE_NAMES
    for name, env in written:
        reader, found = store.open_stream(store, name, 0)
        assert found
        assert list(reader) == [env]
        assert store.head(name) == 1
        assert store.stream_info(name) == (0, 1, False)
        reader.close()
    with store.global_stream() as log:
        assert [(log.stream_name(), e) for e in log] == written
    store.truncate_stream(HOSTILE_NAMES[1], 1)
    store.delete_stream(HOSTILE_NAMES[2])
    assert store.stream_names() == [n for n in HOSTILE_NAMES if n != HOSTILE_NAMES[2]]
    assert list(store.stream(HOSTILE_NAMES[1])) == []
    # Names the store refuses, before anything reaches the server.
    tx, committer = store.begin_tx()
    with pytest.raises(ValueError, match="NUL"):
        tx.append("nul\x00byte", 0, [Envelope.new("T", 1)])
    with pytest.raises(ValueError, match="the limit is 1024"):
        tx.append("x" * (logstore.MAX_STREAM_NAME + 1), 0, [Envelope.new("T", 1)])
    committer.rollback()


@pytest.mark.parametrize("schema_name", ['we"ird; DROP SCHEMA public', "Ünïcødé schema $$", "UPPER case"])
def test_hostile_schema_names_hold_a_store_of_their_own(schema_name):
    drop_schema(schema_name)
    try:
        from tests.contract.backends import POSTGRES_URL

        with logstore.open(POSTGRES_URL, schema=schema_name) as store:
            with store.transaction() as tx:
                tx.append("s", 0, [Envelope.new("T", schema_name)])
            assert [e.message for e in store.stream("s")] == [schema_name]
            reader = store.global_stream()
            with store.transaction() as tx:
                tx.append("s", ANY, [Envelope.new("T", 2)])
            reader.next(timeout=30)  # the notification channel works for any schema name
            assert reader.get().message == schema_name
        with logstore.open(POSTGRES_URL, schema=schema_name) as store:
            assert store.global_head == 2
    finally:
        drop_schema(schema_name)


def test_the_largest_envelope_round_trips_and_a_larger_one_is_refused(open_pg):
    store = open_pg()
    limit = store.max_envelope_size
    assert limit == logstore.MAX_ENVELOPE_SIZE
    probe = Envelope.new("Big", b"")
    overhead = len(logstore.envelope.encode(probe, "probe"))
    # A bin 32 header (5 bytes) replaces the empty bin's 2 bytes once the payload is over 64 KiB.
    big = probe._replace(message=bytes(range(256)) * ((limit - overhead - 3) // 256))
    big = big._replace(message=big.message + b"\xff" * (limit - overhead - 3 - len(big.message)))
    assert len(logstore.envelope.encode(big, "big")) == limit
    small = Envelope.new("Small", {"k": "v"})
    with store.transaction() as tx:
        tx.append("big", 0, [big, small])
    with store.stream("big") as reader:
        assert list(reader) == [big, small]
    with store.global_stream() as log:
        assert log.try_next() and log.get() == big
    too_big = probe._replace(message=big.message + b"x")
    tx, committer = store.begin_tx()
    with pytest.raises(MessageTooLargeError, match=f"the limit is {limit} bytes"):
        tx.append("big", 2, [too_big])
    assert committer.commit() == range(0)


def test_hostile_message_ids_are_stored_read_and_located(open_pg):
    """A message id is any str (the envelope does not insist on a UUID): NUL, quotes and long ones included."""
    store = open_pg()
    base = Envelope.new("T", 0)
    ids = ["with\x00nul", "'; DROP TABLE log; --", "ü" * 600, "", "%s"]
    envs = [base._replace(message_id=mid, message=i) for i, mid in enumerate(ids)]
    with store.transaction() as tx:
        tx.append("s", 0, envs)
    assert list(store.stream("s")) == envs
    for offset, mid in enumerate(ids):
        assert store.locate(mid) == [("s", offset, offset)]
    assert store.locate("with") == []


def test_a_transaction_of_several_largest_envelopes_commits_whole_and_wakes_a_reader(open_pg):
    """Three envelopes at the limit (48 MiB) in one transaction over two streams: one commit, read back exactly."""
    store = open_pg()
    writer = open_pg()  # another client: the reader is woken by its notification
    limit = store.max_envelope_size
    bigs = []
    for k in range(3):
        probe = Envelope.new("Big", b"")._replace(message_id=f"big-{k}")
        overhead = len(logstore.envelope.encode(probe, "big")) + 3  # a bin 32 header: 5 bytes, not 2
        bigs.append(probe._replace(message=bytes([k]) * (limit - overhead)))
        assert len(logstore.envelope.encode(bigs[-1], "big")) == limit
    reader = store.global_stream()
    woken: dict[str, object] = {}
    entered = threading.Event()

    def wait() -> None:
        entered.set()
        try:
            reader.next(timeout=60)
            woken["offset"] = reader.offset()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            woken["error"] = exc

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert entered.wait(60)
    with writer.transaction() as tx:
        tx.append("big-a", 0, bigs[:2])
        tx.append("big-b", 0, bigs[2:])
    assert tx.global_offsets == range(3)
    thread.join(60)
    assert woken == {"offset": 0}
    assert reader.get() == bigs[0]
    assert list(reader) == bigs[1:]
    assert list(store.stream("big-a")) == bigs[:2]
    assert list(store.stream("big-b")) == bigs[2:]
    assert [loc for b in bigs for loc in store.locate(b.message_id)] == [
        ("big-a", 0, 0),
        ("big-a", 1, 1),
        ("big-b", 0, 2),
    ]
