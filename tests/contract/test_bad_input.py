"""Bad input gets a clear error, writes nothing, and leaves the store working: on every backend.

What only a store directory has (its options, its files, its path) is in tests/unit/test_bad_input.py.
"""

from __future__ import annotations

import collections
import enum
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope
from tests.contract.backends import OpenAt, OpenStore
from tests.helpers import SMALL_SEGMENT, commit

# -- helpers ---------------------------------------------------------------------------


def envs(n: int, tag: str = "m") -> list[Envelope]:
    return [Envelope.new(f"{tag}.Happened", {"i": i}) for i in range(n)]


def snapshot(store: logstore.Store) -> tuple[int, dict[str, int], list[Envelope]]:
    """Everything a reader can see: the global head, every stream's head, every envelope."""
    with store.open_global(store, 0) as reader:
        every = list(reader)
    return store.global_head, {name: store.head(name) for name in store.stream_names()}, every


def assert_unchanged_and_writable(store: logstore.Store, before: tuple[int, dict[str, int], list[Envelope]]) -> None:
    assert snapshot(store) == before
    global_head, heads, every = before
    batch = envs(1, "after")
    assert commit(store, "s", heads.get("s", 0), batch) == range(global_head, global_head + 1)
    assert snapshot(store) == (global_head + 1, {**heads, "s": heads.get("s", 0) + 1}, [*every, *batch])


@pytest.fixture
def store(open_store):
    """A store holding stream "s" (offsets 0, 1) and stream "t" (offset 0)."""
    s = open_store(segment_size=SMALL_SEGMENT)
    commit(s, "s", 0, envs(2, "s"))
    commit(s, "t", 0, envs(1, "t"))
    yield s
    s.close()


@pytest.fixture
def open_other(backend: OpenAt, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a second store of the backend under test, dropped after the test (if the backend drops stores)."""
    path = tmp_path / "other"
    yield lambda **options: backend(path, **options)
    drop = getattr(backend, "drop", None)
    if drop is not None:
        drop(path)


def make_env(**fields: Any) -> Envelope:
    now = datetime.now(UTC)
    mid = str(uuid.uuid4())
    values = {
        "message_id": mid,
        "causation_id": mid,
        "correlation_id": mid,
        "created_at": now,
        "send_at": now,
        "type": "T",
        "message": {"ok": True},
    }
    values.update(fields)
    return Envelope(**values)


def assert_bad_append(
    store: logstore.Store,
    stream: Any,
    offset: Any,
    batch: Any,
    error: type[BaseException] | tuple[type[BaseException], ...],
    *parts: str,
) -> None:
    """append_messages(stream, offset, batch) raises ``error`` naming ``parts``; the store and tx are untouched."""
    before = snapshot(store)
    tx, committer = store.begin_tx()
    with pytest.raises(error) as info:
        store.append_messages(tx, stream, offset, batch)
    for part in parts:
        assert part in str(info.value), f"{part!r} not in error message {str(info.value)!r}"
    # Nothing was added to the transaction: it commits empty, and stays usable.
    assert tx.active
    assert snapshot(store) == before
    store.append_messages(tx, "s", before[1].get("s", 0), envs(1, "same-tx"))
    assert committer.commit() == range(before[0], before[0] + 1)
    assert snapshot(store)[0] == before[0] + 1


# -- argument types ------------------------------------------------------------------------


@pytest.mark.parametrize("tx", [None, object(), "tx", 0, ("tx", "committer")], ids=repr)
def test_append_messages_with_a_tx_of_the_wrong_type(store, tx):
    before = snapshot(store)
    with pytest.raises(TypeError, match="tx"):
        store.append_messages(tx, "s", 2, envs(1))
    assert_unchanged_and_writable(store, before)


def test_append_messages_with_a_committer_or_a_begin_tx_pair_as_tx(store):
    before = snapshot(store)
    pair = store.begin_tx()
    for wrong in (pair, pair[1]):
        with pytest.raises(TypeError, match="tx"):
            store.append_messages(wrong, "s", 2, envs(1))
    pair[1].rollback()
    assert_unchanged_and_writable(store, before)


class Name(str):
    pass


@pytest.mark.parametrize("stream", [None, 1, b"s", ["s"], Name("s")], ids=repr)
def test_append_messages_with_a_stream_name_of_the_wrong_type(store, stream):
    assert_bad_append(store, stream, 2, envs(1), TypeError, "stream", type(stream).__name__)


@pytest.mark.parametrize("offset", [None, 2.0, "2", [2], 2 + 0j], ids=repr)
def test_append_messages_with_an_offset_of_the_wrong_type(store, offset):
    assert_bad_append(store, "s", offset, envs(1), TypeError, "offset", type(offset).__name__)


@pytest.mark.parametrize("offset", [True, False], ids=repr)
def test_append_messages_refuses_a_bool_offset(open_store, offset):
    # True == 1 and False == 0: each is refused even where its int value would be the right offset.
    with open_store(segment_size=SMALL_SEGMENT) as store:
        if offset:
            commit(store, "s", 0, envs(1))
        assert_bad_append(store, "s", offset, envs(1), TypeError, "offset", "bool")
        with pytest.raises(TypeError, match="offset"):
            store.open_stream(store, "s", offset)
        with pytest.raises(TypeError, match="offset"):
            store.open_global(store, offset)


@pytest.mark.parametrize("offset", [-1, -(2**70)])
def test_append_messages_refuses_a_negative_offset(store, offset):
    assert_bad_append(store, "s", offset, envs(1), ValueError, "offset", str(offset))


@pytest.mark.parametrize(
    ("stream", "offset", "expected"),
    [("s", 0, 2), ("s", 1, 2), ("s", 3, 2), ("t", 5, 1), ("new", 1, 0), ("s", 2**64, 2)],
)
def test_append_messages_at_a_wrong_offset(store, stream, offset, expected):
    assert_bad_append(
        store, stream, offset, envs(1), logstore.OffsetConflictError, repr(stream), str(offset), str(expected)
    )


@pytest.mark.parametrize(
    "batch",
    [None, 5, "abc", b"abc", {"a": 1}, {1, 2}, (e for e in envs(2)), Envelope.new("T", 1)],
    ids=["None", "int", "str", "bytes", "dict", "set", "generator", "one-envelope"],
)
def test_append_messages_with_envs_that_are_not_a_sequence_of_envelopes(store, batch):
    assert_bad_append(store, "s", 2, batch, TypeError, "Envelope")


def test_append_messages_with_no_envelopes(store):
    assert_bad_append(store, "s", 2, [], ValueError, "envs", "at least one")


@pytest.mark.parametrize(
    "item",
    [None, {"type": "T"}, tuple(Envelope.new("T", 1)), "T", 7],
    ids=["None", "dict", "plain-tuple", "str", "int"],
)
def test_append_messages_with_an_item_that_is_not_an_envelope(store, item):
    # The bad item is the third one: the error names the stream and its offset.
    assert_bad_append(store, "s", 2, [*envs(2), item], TypeError, "'s'", "offset 4", "Envelope", type(item).__name__)


def test_append_messages_with_an_envelope_subclass(store):
    class MyEnvelope(Envelope):
        pass

    env = MyEnvelope(*Envelope.new("T", 1))
    assert_bad_append(store, "s", 2, [env], TypeError, "'s'", "offset 2", "MyEnvelope")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message_id", 1),
        ("message_id", uuid.uuid4()),
        ("message_id", None),
        ("causation_id", b"id"),
        ("correlation_id", Name("id")),
        ("type", None),
        ("type", b"T"),
        ("created_at", "2024-01-01T00:00:00Z"),
        ("created_at", 1700000000.0),
        ("created_at", date(2024, 1, 1)),
        ("send_at", None),
    ],
    ids=repr,
)
def test_envelope_field_of_the_wrong_type(store, field, value):
    assert_bad_append(store, "s", 2, [make_env(**{field: value})], TypeError, "'s'", "offset 2", field)


class NoOffset(tzinfo):
    """A tzinfo that does not know its offset: datetimes with it are naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


@pytest.mark.parametrize(
    "naive", [datetime(2024, 1, 1, 12, 0), datetime(2024, 1, 1, tzinfo=NoOffset())], ids=["no-tzinfo", "no-offset"]
)
@pytest.mark.parametrize("field", ["created_at", "send_at"])
def test_envelope_with_a_naive_datetime(store, field, naive):
    assert_bad_append(store, "t", 1, [make_env(**{field: naive})], ValueError, "'t'", "offset 1", field, "aware")


class Colour(enum.IntEnum):
    RED = 1


class Flt(float):
    pass


class Raw(bytes):
    pass


class Thing:
    pass


NOT_ROUND_TRIPPING = {
    "tuple": (1, 2),
    "nested-tuple": {"a": [1, (2, 3)]},
    "str-subclass": Name("x"),
    "bytes-subclass": Raw(b"x"),
    "int-subclass": Colour.RED,
    "float-subclass": Flt(1.5),
    "set": {1, 2},
    "frozenset": frozenset({1}),
    "object": Thing(),
    "complex": 1 + 2j,
    "ordered-dict": collections.OrderedDict(a=1),
    "tuple-key": {(1, 2): "v"},
    "int-too-big": 2**64,
    "int-too-small": -(2**63) - 1,
    "naive-datetime": datetime(2024, 1, 1),
    "date": date(2024, 1, 1),
    "lone-surrogate": "a\ud800b",
    "lone-surrogate-key": {"\udc80": 1},
}


@pytest.mark.parametrize("message", NOT_ROUND_TRIPPING.values(), ids=NOT_ROUND_TRIPPING.keys())
def test_message_that_would_not_round_trip_is_refused(store, message):
    assert_bad_append(store, "s", 2, [*envs(1), Envelope.new("T", message)], (TypeError, ValueError), "'s'", "offset 3")


@pytest.mark.parametrize("message", [bytearray(b"abc"), memoryview(b"abc")], ids=["bytearray", "memoryview"])
def test_bytes_like_message_is_stored_and_read_back_as_bytes(store, message):
    env = Envelope.new("T", {"blob": message, "list": [message]})
    commit(store, "s", 2, [env])
    reader, _ = store.open_stream(store, "s", 2)
    with reader:
        assert reader.try_next()
        got = reader.get()
    assert type(got.message["blob"]) is bytes and type(got.message["list"][0]) is bytes
    assert got.message == {"blob": b"abc", "list": [b"abc"]}
    assert got == env


@pytest.mark.parametrize(
    "when",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5))),
    ],
    ids=["before-year-1-in-utc", "after-year-9999-in-utc"],
)
@pytest.mark.parametrize("where", ["message", "created_at", "send_at"])
def test_aware_datetime_outside_the_utc_range_is_refused(store, when, where):
    # Read envelopes carry UTC datetimes; this instant has none, so it could not be read back.
    env = make_env(message={"at": when}) if where == "message" else make_env(**{where: when})
    assert_bad_append(store, "s", 2, [env], (TypeError, ValueError), "'s'", "offset 2")


@pytest.mark.parametrize("field", ["message_id", "causation_id", "correlation_id", "type"])
def test_envelope_string_field_with_a_lone_surrogate(store, field):
    assert_bad_append(store, "s", 2, [make_env(**{field: "x\ud800"})], (TypeError, ValueError), "'s'", "offset 2")


# -- stream names ---------------------------------------------------------------------------


BAD_NAMES = {
    "empty": ("", "empty"),
    "nul": ("a\x00b", "NUL"),
    "lone-surrogate": ("order-\ud800", "UTF-8"),
    "too-long-ascii": ("x" * (logstore.MAX_STREAM_NAME + 1), str(logstore.MAX_STREAM_NAME + 1)),
    "too-long-2-byte": ("é" * (logstore.MAX_STREAM_NAME // 2) + "x", str(logstore.MAX_STREAM_NAME + 1)),
    "too-long-4-byte": ("🚀" * (logstore.MAX_STREAM_NAME // 4 + 1), str(logstore.MAX_STREAM_NAME + 4)),
}


@pytest.mark.parametrize(("name", "part"), BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_bad_stream_name_is_refused(store, name, part):
    assert_bad_append(store, name, 0, envs(1), ValueError, "stream name", part)
    with pytest.raises(ValueError, match="stream name") as info:
        store.open_stream(store, name, 0)
    assert part in str(info.value)


def test_stream_name_over_the_limit_names_the_limit(store):
    name = "x" * (logstore.MAX_STREAM_NAME + 1)
    assert_bad_append(store, name, 0, envs(1), ValueError, str(logstore.MAX_STREAM_NAME), "UTF-8 bytes")


@pytest.mark.parametrize(
    "name",
    ["x" * logstore.MAX_STREAM_NAME, "é" * (logstore.MAX_STREAM_NAME // 2), "🚀" * (logstore.MAX_STREAM_NAME // 4)],
    ids=["ascii", "2-byte", "4-byte"],
)
def test_stream_name_exactly_at_the_limit_is_accepted(open_store, name):
    assert len(name.encode()) == logstore.MAX_STREAM_NAME
    batch = envs(3)
    with open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, name, 0, batch[:2])
        commit(store, name, 2, batch[2:])
        reader, found = store.open_stream(store, name, 0)
        assert found is True
        assert list(reader) == batch
        reader.close()
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert store.stream_names() == [name]
        reader, _ = store.open_stream(store, name, 0)
        assert list(reader) == batch
        reader.close()


# -- message size --------------------------------------------------------------------------


def sized_envelope(size: int) -> Envelope:
    """An envelope whose encoded size is exactly ``size`` bytes (past msgpack's bin8 range: a store's limit is).

    The message's bin header grows from 3 bytes (bin16) to 5 (bin32) past 64 KiB: measured, then trimmed.
    """
    from logstore.envelope import encode

    base = make_env(message=b"\x00" * 1000)
    overhead = len(encode(base, "")) - 1000
    env = base._replace(message=b"\x00" * (size - overhead))
    env = env._replace(message=b"\x00" * (size - overhead - (len(encode(env, "")) - size)))
    assert len(encode(env, "")) == size
    return env


def test_message_over_the_size_limit(store):
    limit = store.max_envelope_size
    assert 0 < limit <= logstore.MAX_ENVELOPE_SIZE
    big = sized_envelope(limit + 1)
    before = snapshot(store)
    tx, committer = store.begin_tx()
    with pytest.raises(logstore.MessageTooLargeError) as info:
        store.append_messages(tx, "s", 2, [*envs(1), big])
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, logstore.LogStoreError)
    assert (err.stream, err.offset, err.size, err.limit) == ("s", 3, limit + 1, limit)
    for part in ("'s'", "offset 3", str(limit + 1), str(limit)):
        assert part in str(err)
    committer.rollback()
    assert_unchanged_and_writable(store, before)


def test_message_exactly_at_the_size_limit_is_accepted_even_with_the_longest_name(open_store):
    name = "n" * logstore.MAX_STREAM_NAME
    with open_store(segment_size=SMALL_SEGMENT) as store:
        biggest = sized_envelope(store.max_envelope_size)
        # Another message of the same size: one message id is at one offset of a stream only.
        other = biggest._replace(message_id=biggest.message_id[:-1] + ("0" if biggest.message_id[-1] != "0" else "1"))
        commit(store, "small", 0, envs(1))
        commit(store, name, 0, [biggest])
        commit(store, name, 1, [other])
        commit(store, "small", 1, envs(1))
        reader, _ = store.open_stream(store, name, 0)
        assert list(reader) == [biggest, other]
        reader.close()
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert store.global_head == 4
        reader, _ = store.open_stream(store, name, 0)
        assert list(reader) == [biggest, other]
        reader.close()


# -- transactions in the wrong state or from the wrong store ---------------------------------


def test_tx_from_another_store(store, open_other):
    before = snapshot(store)
    with open_other(segment_size=SMALL_SEGMENT) as other:
        other_before = snapshot(other)
        tx, committer = other.begin_tx()
        with pytest.raises(ValueError, match="another store"):
            store.append_messages(tx, "s", 2, envs(1))
        committer.rollback()
        assert snapshot(other) == other_before
    assert_unchanged_and_writable(store, before)


def assert_tx_refused(
    store: logstore.Store, tx: logstore.Tx, committer: logstore.Committer, offset: int, match: str
) -> None:
    """A finished transaction takes no more appends and no second commit; both errors match ``match``."""
    with pytest.raises(ValueError, match=match):
        store.append_messages(tx, "s", offset, envs(1))
    with pytest.raises(ValueError, match=match):
        committer.commit()


def test_tx_used_after_commit(store):
    tx, committer = store.begin_tx()
    store.append_messages(tx, "s", 2, envs(1))
    committer.commit()
    before = snapshot(store)
    assert_tx_refused(store, tx, committer, 3, "committed")
    committer.rollback()  # rolling back a committed transaction does nothing
    assert tx.global_offsets == range(3, 4)
    assert_unchanged_and_writable(store, before)


def test_tx_used_after_rollback(store):
    before = snapshot(store)
    tx, committer = store.begin_tx()
    store.append_messages(tx, "s", 2, envs(1))
    committer.rollback()
    assert_tx_refused(store, tx, committer, 2, "rolled back")
    assert tx.global_offsets is None
    assert_unchanged_and_writable(store, before)


def test_tx_used_after_a_failed_commit(store):
    tx, committer = store.begin_tx()
    store.append_messages(tx, "s", 2, envs(1, "loser"))
    commit(store, "s", 2, envs(1, "winner"))
    with pytest.raises(logstore.OffsetConflictError):
        committer.commit()
    before = snapshot(store)
    assert_tx_refused(store, tx, committer, 3, "transaction")
    assert_unchanged_and_writable(store, before)


# -- data store argument of the readers ------------------------------------------------------


@pytest.mark.parametrize("ds", [None, "store", 0, object()], ids=repr)
def test_open_with_a_data_store_that_is_not_this_store(store, ds):
    with pytest.raises((TypeError, ValueError), match="data store"):
        store.open_stream(ds, "s", 0)
    with pytest.raises((TypeError, ValueError), match="data store"):
        store.open_global(ds, 0)


def test_open_with_another_store_as_data_store(store, open_other):
    with open_other(segment_size=SMALL_SEGMENT) as other:
        with pytest.raises((TypeError, ValueError), match="data store"):
            store.open_stream(other, "s", 0)
        with pytest.raises((TypeError, ValueError), match="data store"):
            other.open_global(store, 0)


@pytest.mark.parametrize(
    ("offset", "error"), [(None, TypeError), ("0", TypeError), (0.0, TypeError), (-1, ValueError)], ids=repr
)
def test_open_stream_and_open_global_with_a_bad_offset(store, offset, error):
    with pytest.raises(error, match="offset"):
        store.open_stream(store, "s", offset)
    with pytest.raises(error, match="offset"):
        store.open_global(store, offset)


@pytest.mark.parametrize("stream", [None, 1, b"s"], ids=repr)
def test_open_stream_with_a_stream_name_of_the_wrong_type(store, stream):
    with pytest.raises(TypeError, match="stream"):
        store.open_stream(store, stream, 0)


@pytest.mark.parametrize("timeout", ["1", [1], object()], ids=["str", "list", "object"])
def test_next_with_a_timeout_of_the_wrong_type(store, timeout):
    reader, _ = store.open_stream(store, "empty", 0)
    with pytest.raises(TypeError, match="timeout"):
        reader.next(timeout=timeout)
    reader.close()


# -- closed and read-only stores -------------------------------------------------------------


def test_store_used_after_close(open_store):
    store = open_store(segment_size=SMALL_SEGMENT)
    commit(store, "s", 0, envs(2))
    before = snapshot(store)
    tx, committer = store.begin_tx()
    store.append_messages(tx, "s", 2, envs(1, "queued"))
    store.close()
    calls = {
        "begin_tx": store.begin_tx,
        "transaction": lambda: store.transaction().__enter__(),
        "append_messages": lambda: store.append_messages(tx, "s", 3, envs(1)),
        "commit": committer.commit,
        "open_stream": lambda: store.open_stream(store, "s", 0),
        "open_global": lambda: store.open_global(store, 0),
        "head": lambda: store.head("s"),
    }
    for call in calls.values():
        with pytest.raises(logstore.StoreClosedError, match="closed"):
            call()
    with open_store(segment_size=SMALL_SEGMENT) as again:
        assert_unchanged_and_writable(again, before)


def test_read_only_store_refuses_writes(open_store):
    with open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, envs(2))
        before = snapshot(store)
        writable_tx, writable_committer = store.begin_tx()
        with open_store(readonly=True) as ro:
            assert snapshot(ro) == before
            with pytest.raises(logstore.ReadOnlyError, match="read-only"):
                ro.begin_tx()
            with pytest.raises(logstore.ReadOnlyError, match="read-only"):
                ro.transaction().__enter__()
            with pytest.raises(logstore.ReadOnlyError, match="read-only"):
                ro.append_messages(writable_tx, "s", 2, envs(1))
            assert snapshot(ro) == before
        writable_committer.rollback()
        assert_unchanged_and_writable(store, before)


def test_two_writers_of_one_store_both_commit_and_a_conflict_between_them_raises(open_store):
    """Each writable open is a participant of its own, in one process as in two: both commit, each checks its
    offsets against the other's commits, and the loser of a race writes nothing."""
    with open_store(segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, envs(2))
        with open_store(segment_size=SMALL_SEGMENT) as other:
            assert snapshot(other) == snapshot(store)
            assert commit(other, "s", 2, envs(1, "other")) == range(2, 3)
            assert store.head("s") == 3  # the first sees the second's commit
            # An offset below the head the store knows: refused at once, in either store.
            for who in (store, other):
                tx, committer = who.begin_tx()
                with pytest.raises(logstore.OffsetConflictError) as info:
                    who.append_messages(tx, "s", 2, envs(1, "late"))
                assert (info.value.stream, info.value.expected, info.value.given) == ("s", 3, 2)
                assert isinstance(info.value, logstore.LogStoreError)
                committer.rollback()
            # Both append at the head both know; the first to commit wins, the other's commit raises.
            tx_a, commit_a = store.begin_tx()
            store.append_messages(tx_a, "s", 3, envs(1, "a"))
            store.append_messages(tx_a, "t", 0, envs(1, "a"))
            tx_b, commit_b = other.begin_tx()
            other.append_messages(tx_b, "s", 3, envs(1, "b"))
            other.append_messages(tx_b, "u", 0, envs(1, "b"))
            assert commit_b.commit() == range(3, 5)
            before = snapshot(store)
            with pytest.raises(logstore.OffsetConflictError) as info:
                commit_a.commit()
            assert (info.value.stream, info.value.given) == ("s", 3)
            # Nothing of the losing transaction was written, in either store's view.
            assert snapshot(store) == before == snapshot(other)
            assert before[1] == {"s": 4, "u": 1}
            assert [e.type for e in before[2]] == ["m.Happened"] * 2 + ["other.Happened", "b.Happened", "b.Happened"]
            # A read-only open works beside both writers and sees what both committed.
            with open_store(readonly=True) as ro:
                assert snapshot(ro) == before
            # The conflict took nothing away from either writer.
            assert_unchanged_and_writable(store, before)
            assert commit(other, "u", 1, envs(1, "other")) == range(6, 7)
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert store.global_head == 7
        assert {n: store.head(n) for n in store.stream_names()} == {"s": 5, "u": 2}
