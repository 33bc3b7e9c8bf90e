"""Compaction's files and retention: what only a store directory has of removal.

Truncation, deletion and compaction as every backend has them are in tests/contract/test_removal.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import logstore
from logstore.embedded.record import Record
from logstore.embedded.walk import walk
from logstore.index.header import HEADER_SIZE
from tests.helpers import SMALL_SEGMENT, assert_verified, fill_interleaved, readable_global, readable_offsets


def _fill(store: logstore.Store, streams: dict[str, int], pad: int = 200) -> None:
    fill_interleaved(store, streams, pad)


def test_compaction_reclaims_space_and_keeps_every_offset(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 150, "b": 150, "c": 20}, pad=300)
        store.truncate_stream("a", 140)
        store.delete_stream("b")
        before = readable_global(store)
        assert _unsealed_removed(store) > 0  # the active segment holds removed messages too
        sizes = _written_bytes(store, store_dir)
        report = store.compact()
        after = _written_bytes(store, store_dir)
        assert report.segments_rewritten >= 3 and report.rolled is not None
        assert report.messages_removed == 140 + 150 and _unsealed_removed(store) == 0
        assert report.bytes_reclaimed == sizes - after > 0
        assert readable_global(store) == before
        assert readable_offsets(store, "a") == list(range(140, 150))
        assert readable_offsets(store, "c") == list(range(20))
        # Compacting again finds nothing more to do.
        again = store.compact()
        assert (again.segments_rewritten, again.bytes_reclaimed) == (0, 0)
        head = store.global_head
    assert_verified(store_dir)
    with logstore.open(store_dir) as store:
        assert store.global_head == head
        assert readable_global(store) == before
        assert store.stream_info("b") == (150, 150, True)
    os.unlink(store_dir / "CHECKPOINT")  # the log alone (with REMOVED records) rebuilds the same state
    with logstore.open(store_dir) as store:
        assert readable_global(store) == before
        assert store.stream_info("a") == (140, 150, False)
        assert store.stream_info("b") == (150, 150, True)
        _fill(store, {"b": 1})
        assert readable_offsets(store, "b") == [150]


def test_compaction_does_not_copy_a_damaged_record(store_dir: Path) -> None:
    # Compaction walks a segment's records with their checksums checked: a damaged record in a sealed
    # segment that holds removed messages is not copied into the new file, the pass raises
    # CorruptionError naming the segment file and the record's byte, and the segment stays as it was.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 150, "c": 150}, pad=300)
    segments = sorted(n for n in os.listdir(store_dir / "segments") if n.endswith(".log"))
    assert len(segments) > 2
    seg = store_dir / "segments" / segments[0]
    data = bytearray(seg.read_bytes())
    recs = [r for r in walk(data, HEADER_SIZE, len(data)) if isinstance(r, Record)]
    victim = next(r for r in recs if r.sid == 1 and r.soff > 0)  # a message of "c", kept by the truncation
    data[victim.payload_start + 5] ^= 0xFF
    seg.write_bytes(bytes(data))
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        store.truncate_stream("a", 50)
        with pytest.raises(logstore.CorruptionError) as caught:
            store.compact(roll=False)
        assert caught.value.path == str(seg) and caught.value.position == victim.position
        assert "record checksum mismatch" in str(caught.value)
        assert not os.path.exists(str(seg) + ".compact")
    assert seg.read_bytes() == bytes(data)
    data[victim.payload_start + 5] ^= 0xFF  # undo: the store verifies clean at teardown
    seg.write_bytes(bytes(data))


def _written_bytes(store: logstore.Store, path: Path) -> int:
    """The segment files' sizes, less the never-written rest of the active one."""
    active = store._log.active
    files = sum(os.path.getsize(p) for p in (path / "segments").glob("*.log"))
    return files - (os.path.getsize(active.path) - active.end)


def _unsealed_removed(store: logstore.Store) -> int:
    """Removed messages in the active segment (compaction rolls it to reach them)."""
    active = store._log.active
    g = active.first
    cat = store._log.catalog
    n = 0
    from logstore.embedded.record import KIND_MESSAGE, parse_record

    pos = 64
    for _ in range(active.count):
        rec = parse_record(active.view, pos, active.size)
        if rec.kind == KIND_MESSAGE and rec.soff < cat.first[rec.sid]:
            n += 1
        pos += rec.length
        g += 1
    return n


def test_retention_bytes_drops_whole_old_segments(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"old": 60}, pad=400)
        _fill(store, {"new": 500, "old": 1}, pad=400)
        _fill(store, {"idle": 1})
        all_before = readable_global(store)
        head = store.global_head
    nseg = len(list((store_dir / "segments").glob("*.log")))
    with logstore.open(store_dir, retention_bytes=3 * SMALL_SEGMENT) as store:
        start = store.log_start
        kept = len(list((store_dir / "segments").glob("*.log")))
        assert start > 0 and kept < nseg and kept <= 3
        readable = readable_global(store)
        assert readable == all_before[len(all_before) - len(readable) :]
        assert len(readable) < len(all_before)
        first_old = store.stream_info("old")
        assert first_old is not None and first_old.head == 61
        assert readable_offsets(store, "old") == list(range(first_old.first, 61))
        assert store.global_head > head  # the RETAIN transaction
    assert_verified(store_dir)
    # Removed for good: a reopen without retention options reads the same.
    with logstore.open(store_dir) as store:
        assert store.log_start == start
        assert readable_global(store) == readable
        _fill(store, {"old": 1})  # heads survive retention
        assert readable_offsets(store, "old")[-1] == 61
    os.unlink(store_dir / "CHECKPOINT")
    with logstore.open(store_dir) as store:
        assert store.log_start == start
        assert readable_global(store) == [*readable, ("old", 61)]
        assert store.stream_info("idle") is not None


def test_retention_by_age_keeps_the_active_segment(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, {"a": 400}, pad=300)
        last = readable_offsets(store, "a")[-5:]
    with logstore.open(store_dir, retention_age=1e-6) as store:
        assert len(list((store_dir / "segments").glob("*.log"))) == 1
        assert store.log_start == store._log.active.first
        assert readable_offsets(store, "a") == [i for i in range(400) if i >= store.stream_info("a").first]  # type: ignore[union-attr]
        assert set(last) <= set(readable_offsets(store, "a"))


def test_retention_while_writing_rolls(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, retention_bytes=2 * SMALL_SEGMENT) as store:
        for _ in range(10):
            _fill(store, {"a": 30, "b": 30}, pad=400)
            assert len(list((store_dir / "segments").glob("*.log"))) <= 3
        info = store.stream_info("a")
        assert info is not None and info.head == 300 and info.first > 0
        assert readable_offsets(store, "a") == list(range(info.first, 300))


@pytest.mark.parametrize("option", [{"retention_age": 0}, {"retention_age": float("inf")}, {"retention_bytes": 0}])
def test_bad_retention_options(tmp_path: Path, option: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retention"):
        logstore.open(tmp_path / "s", **option)  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()


def test_retention_options_refused_read_only(store_dir: Path) -> None:
    logstore.open(store_dir).close()
    with pytest.raises(ValueError, match="writable"):
        logstore.open(store_dir, readonly=True, retention_bytes=1 << 20)
