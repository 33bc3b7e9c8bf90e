"""A stream read over several of the stream's runs at once (``StreamReader._gather``, ``walk.read_gather``).

A stream appended to in one-message transactions beside another stream has runs of one message:
its reads step over the other stream's records between them instead of reading run by run. What
a read hands out must be what the global reader sees of that stream, offsets included; damage
must still be reported (by the run-by-run read the gathered one falls back to), and damage in the
other stream's records must not stop the stream's read.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.reader import GATHER_GAP
from logstore.embedded.segment import Segment, SegmentRetired
from logstore.errors import CorruptionError
from tests.helpers import fill_interleaved, segment_records


def _read(store: logstore.Store, name: str, offset: int = 0) -> list[tuple[int, int, Envelope]]:
    """(stream offset, global offset, envelope) of each message of ``name`` readable from ``offset``."""
    out = []
    with store.stream(name, offset) as reader:
        while reader.try_next():
            out.append((reader.offset(), reader.global_offset(), reader.get()))
    return out


def _truth(store: logstore.Store, name: str, offset: int = 0) -> list[tuple[int, int, Envelope]]:
    """The same, as the global reader sees the log."""
    out = []
    with store.global_stream() as log:
        while log.try_next():
            if log.stream_name() == name and log.stream_offset() >= offset:
                out.append((log.stream_offset(), log.offset(), log.get()))
    return out


@pytest.fixture
def gathered(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many envelopes each gathered read took (0: it fell back to reading one run)."""
    calls: list[int] = []
    original = Segment.gather

    def counting(self: Segment, *args: Any) -> Any:
        got = original(self, *args)
        calls.append(0 if got is None else len(got[0]))
        return got

    monkeypatch.setattr(Segment, "gather", counting)
    return calls


def test_a_stream_of_one_message_runs_is_read_many_runs_at_a_time(store_dir: Path, gathered: list[int]) -> None:
    with logstore.open(store_dir) as store:
        fill_interleaved(store, {"a": 300, "b": 300}, pad=40)
        got = _read(store, "a")
        assert got == _truth(store, "a")
        assert [g[0] for g in got] == list(range(300))
        assert gathered and min(gathered) > 0, gathered  # none fell back
        assert max(gathered) > 16, gathered  # more than one run per read, growing with the prefetch
        assert _read(store, "b", 123) == _truth(store, "b", 123)  # from the middle, the other stream


def test_a_truncated_stream_is_read_from_its_first_kept_offset(store_dir: Path, gathered: list[int]) -> None:
    with logstore.open(store_dir) as store:
        fill_interleaved(store, {"a": 100, "b": 100, "c": 50}, pad=10)
        store.truncate_stream("a", 40)
        got = _read(store, "a")
        assert [g[0] for g in got] == list(range(40, 100))
        assert got == _truth(store, "a", 40)
        assert max(gathered) > 1


def test_runs_farther_apart_than_the_gap_are_read_apart(store_dir: Path, gathered: list[int]) -> None:
    with logstore.open(store_dir) as store:
        for i in range(6):
            with store.transaction() as tx:
                store.append_messages(tx, "a", i, [Envelope.new("A", i)])
            with store.transaction() as tx:
                store.append_messages(tx, "b", store.head("b"), [Envelope.new("B", 0) for _ in range(GATHER_GAP + 5)])
        got = _read(store, "a")
        assert [env.message for _s, _g, env in got] == list(range(6))
        assert got == _truth(store, "a")
        assert max(gathered) == 1  # each run alone: the next one is past the gap


def _flip(path: Path, pick: Any, byte: int) -> int:
    """Flip byte ``byte`` (from the record's start) of the records ``pick(record)`` selects; how many."""
    n = 0
    for f in sorted((path / "segments").glob("*.log")):
        data = bytearray(f.read_bytes())
        for pos, rec in segment_records(data):
            if pick(rec):
                data[pos + byte] ^= 0xFF
                n += 1
        f.write_bytes(bytes(data))
    return n


def _sid(path: Path, name: str) -> int:
    for f in sorted((path / "segments").glob("*.log")):
        for _pos, rec in segment_records(f.read_bytes()):
            if rec.name == name:
                return rec.sid
    raise AssertionError(f"no record names {name!r}")


def test_damage_in_the_stream_is_reported_where_it_is(tmp_path: Path, gathered: list[int]) -> None:
    path = tmp_path / "store"
    with logstore.open(path) as store:
        fill_interleaved(store, {"a": 60, "b": 60}, pad=40)
    sid = _sid(path, "a")
    # The last byte of the envelope of stream offset 37: its checksum no longer matches.
    assert _flip(path, lambda r: r.sid == sid and r.soff == 37, 40) == 1
    with logstore.open(path) as store:
        taken = []
        with store.stream("a") as reader, pytest.raises(CorruptionError, match="checksum"):
            while reader.try_next():
                taken.append(reader.offset())
        assert taken == list(range(37))  # everything before the damage, nothing after it
        assert 0 in gathered  # the gathered read met the damage and left it to the one-run read


def test_a_message_whose_kind_byte_reads_removed_is_reported_not_skipped(tmp_path: Path, gathered: list[int]) -> None:
    """Bit 2 of a MESSAGE record's kind byte makes it read as REMOVED (1 -> 5): the gathered read checks the
    checksums of the records it skips too, so the flip is damage, reported, and no offset goes missing."""
    path = tmp_path / "store"
    with logstore.open(path) as store:
        fill_interleaved(store, {"a": 60, "b": 60}, pad=40)
    sid = _sid(path, "a")
    seg = sorted((path / "segments").glob("*.log"))[0]
    data = bytearray(seg.read_bytes())
    (pos,) = [p for p, r in segment_records(bytes(data)) if r.sid == sid and r.soff == 21]
    data[pos + 4] ^= 0x04  # the kind byte
    seg.write_bytes(bytes(data))
    with logstore.open(path) as store:
        taken = []
        with store.stream("a") as reader, pytest.raises(CorruptionError, match="checksum"):
            while reader.try_next():
                taken.append(reader.offset())
        assert taken == list(range(21))  # everything before the damage, nothing skipped
        assert store.read("a", 22)[0].message["i"] == 22  # past the damage the stream reads on


def test_damage_in_another_streams_records_does_not_stop_the_read(tmp_path: Path, gathered: list[int]) -> None:
    path = tmp_path / "store"
    with logstore.open(path) as store:
        fill_interleaved(store, {"a": 60, "b": 60}, pad=40)
        want = _read(store, "a")
    sid = _sid(path, "b")
    # The global offset field of stream b's offset 20 (header bytes 20-27): the header disagrees with the index.
    assert _flip(path, lambda r: r.sid == sid and r.soff == 20, 20) == 1
    with logstore.open(path) as store:
        assert _read(store, "a") == want
        assert 0 in gathered and max(gathered) > 1  # around the damage, run by run; elsewhere, gathered


def test_a_segment_retired_under_a_gathered_read_is_read_again(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Compaction swaps a segment under a read, which then raises SegmentRetired: the read looks the
    # segment up again and goes on. Here the first gathered read is told so.
    original = Segment.gather
    retired: list[int] = []

    def once(self: Segment, *args: Any) -> Any:
        if not retired:
            retired.append(args[0])
            raise SegmentRetired(self.path)
        return original(self, *args)

    monkeypatch.setattr(Segment, "gather", once)
    with logstore.open(store_dir) as store:
        fill_interleaved(store, {"a": 50, "b": 50}, pad=10)
        assert _read(store, "a") == _truth(store, "a")
        assert retired == [0]


@pytest.mark.parametrize("seed", range(6))
def test_reads_of_randomly_interleaved_streams_match_the_global_log(store_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    names = ["a", "b", "c", "d"]
    weights = [rng.random() for _ in names]  # some streams dense, some sparse
    with logstore.open(store_dir, segment_size=256 * 1024) as store:  # several segments
        for i in range(900):
            name = rng.choices(names, weights)[0]
            with store.transaction() as tx:
                n = rng.choice((1, 1, 1, 2, 5, 40))
                store.append_messages(tx, name, store.head(name), [Envelope.new("E", [name, i, j]) for j in range(n)])
            if i == 600:
                victim = rng.choice(names)
                store.truncate_stream(victim, store.head(victim) // 3)
        for name in names:
            for start in (0, rng.randrange(0, store.head(name) + 1)):
                assert _read(store, name, start) == _truth(store, name, start), (name, start)
