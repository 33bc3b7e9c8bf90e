"""``Store.read`` of a stream whose envelopes are one run of one segment (``reader.read_run``).

A whole-stream load takes one record loop without a reader object when the stream's envelopes from
the offset asked for are one run of one segment, all readable; anything else goes through a
``StreamReader``. What it returns must be what a reader iterates in every state the store can be
in (runs split by other streams' commits, truncations, deletions, rolls, retention, a reopen), a
removal during the read must not let a removed envelope through, and damage must still be reported
with its file and byte.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import logstore
from logstore import Envelope
from logstore.embedded import reader as reader_mod
from logstore.embedded import store as store_mod
from logstore.embedded.segment import Segment
from logstore.errors import CorruptionError
from tests.helpers import segment_records
from tests.stress import scale


def _envs(tag: str, n: int, first: int = 0) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": first + i, "pad": "x" * 400}) for i in range(n)]


class _Counting:
    """``read_run`` as ``Store.read`` calls it, counting the reads it served and the ones it left."""

    def __init__(self) -> None:
        self.served = 0
        self.left = 0

    def __call__(self, *args: Any) -> list[Envelope] | None:
        got = reader_mod.read_run(*args)
        if got is None:
            self.left += 1
        else:
            self.served += 1
        return got


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> _Counting:
    spy = _Counting()
    monkeypatch.setattr(store_mod, "read_run", spy)
    return spy


def _same_as_a_reader(store: logstore.Store, names: list[str], top: int) -> None:
    for name in names:
        for offset in range(top):
            with store.stream(name, offset) as reader:
                want = list(reader)
            assert store.read(name, offset) == want, (name, offset)


def test_one_transaction_streams_take_the_one_run_read(tmp_path: Path, counting: _Counting) -> None:
    with logstore.open(tmp_path / "s") as store:
        streams = {f"order-{k}": _envs(f"order-{k}", 5) for k in range(20)}
        for name, envs in streams.items():
            with store.transaction() as tx:
                tx.append(name, 0, envs)
        for name, envs in streams.items():
            assert store.read(name) == envs
            assert store.read(name, 3) == envs[3:]
        assert counting.served == 40 and counting.left == 0
        assert store.read("order-99") == [] and store.read("order-1", 5) == []
    with logstore.open(tmp_path / "s") as store:  # reopened: the indexes come from files
        before = counting.served
        assert all(store.read(name) == envs for name, envs in streams.items())
        assert counting.served - before == len(streams)


def test_streams_of_several_runs_or_segments_are_read_through_a_reader(tmp_path: Path, counting: _Counting) -> None:
    with logstore.open(tmp_path / "s", segment_size=1 << 16) as store:
        a = _envs("a", 300)
        for start in range(0, 300, 10):  # runs of ten, split by b's commits, over several segments
            with store.transaction() as tx:
                tx.append("a", start, a[start : start + 10])
            with store.transaction() as tx:
                tx.append("b", start // 10, _envs("b", 1, start // 10))
        assert len(store._log.segments) > 2
        assert store.read("a") == a
        assert counting.left >= 1
        left = counting.left
        assert store.read("a", 295) == a[295:]  # the last run alone: the one-run read
        assert counting.left == left
        _same_as_a_reader(store, ["a", "b"], 301)


def test_removed_offsets_are_skipped_as_a_reader_skips_them(tmp_path: Path, counting: _Counting) -> None:
    with logstore.open(tmp_path / "s") as store:
        a = _envs("a", 8)
        with store.transaction() as tx:
            tx.append("a", 0, a)
            tx.append("b", 0, _envs("b", 3))
        store.truncate_stream("a", 5)
        assert store.read("a") == a[5:] and store.read("a", 2) == a[5:] and store.read("a", 6) == a[6:]
        store.delete_stream("b")
        assert store.read("b") == []
        b = _envs("b", 2, 3)
        with store.transaction() as tx:  # appends after a deletion go on at the old head
            tx.append("b", 3, b)
        assert store.read("b") == b and store.read("b", 4) == b[1:]
        _same_as_a_reader(store, ["a", "b"], 10)
        assert counting.served > 0


def test_a_removal_during_the_read_drops_what_it_read(
    tmp_path: Path, counting: _Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncation that lands while the one-run read decodes: the read is left to a reader, which reads
    the stream as the truncation left it (no removed envelope comes back)."""
    with logstore.open(tmp_path / "s") as store:
        a = _envs("a", 6)
        with store.transaction() as tx:
            tx.append("a", 0, a)
        real = Segment.read
        removed: list[bool] = []

        def read_then_truncate(self: Segment, *args: Any, **kwargs: Any) -> Any:
            got = real(self, *args, **kwargs)
            if not removed:
                removed.append(True)
                store.truncate_stream("a", 4)  # after the records were read, before read_run checks
            return got

        monkeypatch.setattr(Segment, "read", read_then_truncate)
        assert store.read("a") == a[4:]
        assert removed and counting.left == 1 and counting.served == 0


def test_damage_in_a_one_run_stream_is_reported_with_its_file_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with logstore.open(path) as store:
        with store.transaction() as tx:
            tx.append("a", 0, _envs("a", 4))
        seg_path = store._log.active.path
    with open(seg_path, "rb") as f:
        records = segment_records(f.read())
    position, victim = records[2]
    with open(seg_path, "r+b") as f:  # one byte of the third envelope's payload
        f.seek(victim.payload_start + 20)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with logstore.open(path) as store:
        with pytest.raises(CorruptionError) as caught:
            store.read("a")
        assert os.path.basename(seg_path) in str(caught.value)
        assert str(position) in str(caught.value)


def test_retention_within_the_run(tmp_path: Path, counting: _Counting) -> None:
    """Retention drops whole segments: a stream whose run starts in a dropped one is read from the log's start."""
    with logstore.open(tmp_path / "s", segment_size=1 << 16) as store:
        a = _envs("a", 400)
        with store.transaction() as tx:  # one run over several segments
            tx.append("a", 0, a)
        b = _envs("b", 2)
        with store.transaction() as tx:
            tx.append("b", 0, b)
        store.compact(retention_bytes=1 << 16)
        start = store._pub.log_start
        assert start > 0
        got = store.read("a")
        assert got == a[len(a) - len(got) :] and len(got) < len(a)
        assert counting.left == 1 and counting.served == 0  # below the log's start: a reader skips to it
        assert store.read("a", 399) == a[399:] and store.read("b") == b
        assert counting.served == 2
        _same_as_a_reader(store, ["a"], 401)


_APPENDS = st.lists(st.tuples(st.integers(0, 3), st.integers(1, 6)), min_size=1, max_size=3)
"""One transaction: (stream number, envelopes) pairs."""


@settings(max_examples=scale(40, 1000), deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), _APPENDS),
            st.tuples(st.just("truncate"), st.integers(0, 3), st.integers(0, 12)),
            st.tuples(st.just("delete"), st.integers(0, 3)),
            st.just(("reopen",)),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_read_is_what_a_reader_iterates_after_any_history(
    tmp_path_factory: pytest.TempPathFactory, ops: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("h")
    store = logstore.open(path, segment_size=1 << 16)
    names = [f"s-{k}" for k in range(4)]
    try:
        for op in ops:
            if op[0] == "append":
                with store.transaction() as tx:
                    for k, n in dict(op[1]).items():
                        name = names[k]
                        head = store.head(name)
                        tx.append(name, head, _envs(name, n, head))
            elif op[0] == "truncate":
                name = names[op[1]]
                if store.stream_info(name) is not None:
                    store.truncate_stream(name, min(op[2], store.head(name)))
            elif op[0] == "delete":
                if store.stream_info(names[op[1]]) is not None:
                    store.delete_stream(names[op[1]])
            else:
                store.close()
                store = logstore.open(path, segment_size=1 << 16)
            for name in names:
                head = store.head(name)
                for offset in {0, 1, head // 2, max(head - 1, 0), head}:
                    with store.stream(name, offset) as reader:
                        want = list(reader)
                    assert store.read(name, offset) == want, (name, offset)
    finally:
        store.close()
