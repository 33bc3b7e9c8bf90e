"""Recovery on open: torn tails and unfinished transactions are cut into lost+found; other damage is refused."""

from __future__ import annotations

import errno
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest

import logstore
import logstore.embedded.walk as walk_module
from logstore import CorruptionError, Envelope, FileIO
from logstore.embedded.verify import verify
from logstore.embedded.walk import data_regions
from logstore.index.header import HEADER_SIZE
from tests.helpers import assert_verified, segment_records, with_format_version

SEGMENT = 256 * 1024


def _envs(tag: str, n: int) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": i, "pad": "x" * 50}) for i in range(n)]


def _records(seg_path: str) -> list[tuple[int, int, int]]:
    """(position, length, flags) of every record in a segment file."""
    return [(pos, rec.length, rec.flags) for pos, rec in segment_records(Path(seg_path).read_bytes())]


def _commit_singles(store: logstore.Store, n: int) -> None:
    """Commit ``n`` one-message transactions to stream "a", from its head on."""
    head = store.head("a")
    for i in range(head, head + n):
        with store.transaction() as tx:
            store.append_messages(tx, "a", i, _envs("a", 1))


def _write(path: Path, durability: str, txs: list[tuple[str, int]]) -> tuple[str, list[range]]:
    """Commit one transaction per (stream, count), then drop the store as a crash would (nothing lost)."""
    store = logstore.open(path, durability=durability, segment_size=SEGMENT)
    ranges = []
    heads: dict[str, int] = {}
    for stream, count in txs:
        with store.transaction() as tx:
            store.append_messages(tx, stream, heads.get(stream, 0), _envs(stream, count))
        heads[stream] = heads.get(stream, 0) + count
        assert tx.global_offsets is not None
        ranges.append(tx.global_offsets)
    seg_path = store._log.active.path
    store._abandon()
    return seg_path, ranges


def _flip(path: str, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x40]))


def _global(store: logstore.Store) -> list[int]:
    with store.open_global(store, 0) as stream:
        return [stream.offset() for _ in stream]


def test_clean_tail_after_crash_is_kept_without_cut(store_dir: Path) -> None:
    _write(store_dir, "fsync", [("a", 3), ("b", 2)])
    with logstore.open(store_dir) as store:
        report = store.recovery_report
        assert report.checkpoint == "used"
        assert report.records_scanned == 5
        assert report.transactions_recovered == 2
        assert report.cut is None and report.clean
        assert _global(store) == [0, 1, 2, 3, 4]


def test_torn_record_at_the_tail_is_cut_into_lost_and_found(store_dir: Path) -> None:
    seg, _ = _write(store_dir, "fsync", [("a", 3), ("b", 2)])
    records = _records(seg)
    end = records[-1][0] + records[-1][1]
    # A header claiming 153 bytes, then noise that ends in a non-zero byte (the cut goes to the last one).
    garbage = b"\x99\x00\x00\x00\x01\x01" + os.urandom(39) + b"\x01"
    with open(seg, "r+b") as f:
        f.seek(end)
        f.write(garbage)
    with logstore.open(store_dir) as store:
        report = store.recovery_report
        assert report.cut == f"{seg}@{end}"
        assert report.bytes_cut == len(garbage)
        assert _global(store) == [0, 1, 2, 3, 4]
        assert store.head("b") == 2
    saved = [p for p in report.lost_found if p.endswith(".bin")]
    assert len(saved) == 1
    assert Path(saved[0]).read_bytes() == garbage
    manifest = json.loads(Path(saved[0][:-4] + ".json").read_text())
    assert manifest["source"] == os.path.join("segments", os.path.basename(seg))
    assert manifest["position"] == end
    assert manifest["length"] == len(garbage)
    # The cut bytes are zero in the log now, and a new commit lands where they were.
    with logstore.open(store_dir) as store:
        assert store.recovery_report.cut is None
        with store.transaction() as tx:
            store.append_messages(tx, "b", 2, _envs("b", 1))
        assert tx.global_offsets == range(5, 6)


def test_transaction_without_its_end_record_is_cut(store_dir: Path) -> None:
    seg, _ = _write(store_dir, "fsync", [("a", 2), ("b", 4)])
    records = _records(seg)
    last_pos, last_len, last_flags = records[-1]
    assert last_flags & 1  # TX_END
    with open(seg, "r+b") as f:  # the transaction's last record never reached the disk
        f.seek(last_pos)
        f.write(bytes(last_len))
    tx_start = records[2][0]
    # The cut takes up to the last non-zero byte: the record before may end in zero bytes of its checksum.
    cut = len(Path(seg).read_bytes()[tx_start:last_pos].rstrip(b"\0"))
    with logstore.open(store_dir) as store:
        report = store.recovery_report
        assert report.cut == f"{seg}@{tx_start}"
        assert "transaction without its end record" in (report.cut_reason or "")
        assert report.bytes_cut == cut
        assert _global(store) == [0, 1]
        assert store.head("b") == 0
        stream, found = store.open_stream(store, "b", 0)
        assert not found
        stream.close()


def test_damage_followed_by_synced_data_is_refused_not_cut(store_dir: Path) -> None:
    seg, _ = _write(store_dir, "fsync", [("a", 3), ("b", 3)])
    records = _records(seg)
    assert records[3][2] & 4  # the second transaction's first record says what precedes it was fsynced
    _flip(seg, records[1][0] + 30)  # inside the first transaction, which was durable
    before = Path(seg).read_bytes()
    with pytest.raises(CorruptionError) as info:
        logstore.open(store_dir)
    err = info.value
    assert err.path == seg
    assert err.position == records[1][0]
    assert "repair" in str(err)
    assert Path(seg).read_bytes() == before, "a refused open must not change the log"
    assert not (store_dir / "lost+found").exists()
    found = verify(str(store_dir)).problems
    assert (found[0].path, found[0].position) == (seg, records[1][0])
    _flip(seg, records[1][0] + 30)  # undo: the store verifies clean at teardown


def test_damage_inside_the_last_unsynced_write_is_a_torn_tail(store_dir: Path) -> None:
    seg, _ = _write(store_dir, "fsync", [("a", 3), ("b", 4)])
    records = _records(seg)
    _flip(seg, records[4][0] + 30)  # second record of the last transaction; nothing synced follows it
    with logstore.open(store_dir) as store:
        report = store.recovery_report
        assert report.cut == f"{seg}@{records[3][0]}"
        assert "checksum" in (report.cut_reason or "")
        assert _global(store) == [0, 1, 2]


def test_unsynced_mode_cuts_at_the_first_damage(store_dir: Path) -> None:
    seg, _ = _write(store_dir, "none", [("a", 2), ("b", 2), ("c", 2)])
    records = _records(seg)
    assert not any(flags & 4 for _p, _l, flags in records[1:]), "nothing was synced after the first write"
    _flip(seg, records[2][0] + 30)
    end = records[-1][0] + records[-1][1]
    # The cut saves up to the last non-zero byte: the last record's checksum may end in zeros.
    cut = Path(seg).read_bytes()[records[2][0] : end].rstrip(b"\0")
    with logstore.open(store_dir) as store:
        assert store.recovery_report.cut == f"{seg}@{records[2][0]}"
        assert _global(store) == [0, 1]
        assert store.head("c") == 0
    saved = Path(next(p for p in store.recovery_report.lost_found if p.endswith(".bin"))).read_bytes()
    assert saved == cut


def test_damaged_record_before_the_checkpoint_fails_the_read_not_the_open(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        _commit_singles(store, 3)
        seg = store._log.active.path
    records = _records(seg)
    _flip(seg, records[1][0] + 40)
    with logstore.open(store_dir) as store:
        stream, _ = store.open_stream(store, "a", 0)
        with stream:
            assert stream.try_next()
            with pytest.raises(CorruptionError) as info:
                stream.try_next()
        assert info.value.path == seg
        assert info.value.position == records[1][0]
        assert "checksum" in str(info.value)
    found = verify(str(store_dir)).problems
    assert (found[0].path, found[0].position) == (seg, records[1][0])
    _flip(seg, records[1][0] + 40)  # undo: the store verifies clean at teardown


@pytest.mark.parametrize("reader", ["stream", "global"])
@pytest.mark.parametrize("where", ["payload", "stream-id", "stream-offset", "checksum"])
def test_damage_inside_a_long_read_hands_out_what_precedes_it_then_names_the_record(
    store_dir: Path, reader: str, where: str
) -> None:
    """Long reads check their records' headers in one go (logstore.embedded.walk.read_indexed); damage in the middle of
    such a batch gives the same envelopes and the same error, at the same byte, as a record-by-record read."""
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 0, _envs("a", 400))
        seg = store._log.active.path
    records = _records(seg)
    victim = 300
    pos, length, _flags = records[victim]
    # The record header is <IBBHIQQ: the stream id is bytes 8-11, the stream offset bytes 12-19.
    offset = {"payload": 60, "stream-id": 9, "stream-offset": 14, "checksum": length - 3}[where]
    _flip(seg, pos + offset)
    with logstore.open(store_dir) as store:
        got = []
        with pytest.raises(CorruptionError) as info:
            it = store.open_stream(store, "a", 0)[0] if reader == "stream" else store.open_global(store, 0)
            with it:
                while it.try_next():
                    got.append(it.get())
        assert info.value.path == seg
        assert info.value.position == pos
        assert [e.message["i"] for e in got] == list(range(victim))
    _flip(seg, pos + offset)  # undo: the store verifies clean at teardown


@pytest.mark.parametrize("victim", ["CHECKPOINT", "catalog"])
@pytest.mark.parametrize("how", ["missing", "damaged"])
def test_missing_or_damaged_index_files_are_rebuilt_from_the_log(store_dir: Path, victim: str, how: str) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store:
        for i in range(40):
            with store.transaction() as tx:
                store.append_messages(tx, f"s{i % 4}", (i // 4) * 3, _envs("s", 3))
    target = next(p for p in store_dir.iterdir() if p.name.startswith(victim))
    if how == "missing":
        target.unlink()
    else:
        _flip(str(target), HEADER_SIZE + 3)
    with logstore.open(store_dir) as store:
        report = store.recovery_report
        assert report.records_scanned == 120
        assert "rebuilt" in report.checkpoint or report.rebuilt
        assert [store.head(f"s{k}") for k in range(4)] == [30, 30, 30, 30]
        assert len(_global(store)) == 120
    assert_verified(store_dir)


def test_damaged_position_file_is_rebuilt_and_rewritten(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store:
        for i in range(200):
            with store.transaction() as tx:
                store.append_messages(tx, "a", i * 3, _envs("a", 3))
    assert len(list((store_dir / "segments").glob("*.log"))) >= 2
    pos_file = store_dir / "segments" / "00000000000000000000.pos"
    _flip(str(pos_file), HEADER_SIZE + 5)
    io = FileIO()
    with logstore.open(store_dir, io=io) as store:
        assert io.records_read == 0
        stream, _ = store.open_stream(store, "a", 0)
        with stream:
            assert [e.message["i"] for e in stream][:6] == [0, 1, 2, 0, 1, 2]
        assert io.records_read > 0  # the first segment was rescanned to rebuild its positions
    assert_verified(store_dir)


def test_leftovers_of_an_interrupted_checkpoint_are_removed(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store, store.transaction() as tx:
        store.append_messages(tx, "a", 0, _envs("a", 2))
    (store_dir / "catalog.99999999999999999999").write_bytes(b"half-written")
    (store_dir / "segments" / "00000000000000000002.log.tmp").write_bytes(b"")
    with logstore.open(store_dir) as store:
        assert store.head("a") == 2
    assert not (store_dir / "catalog.99999999999999999999").exists()
    assert not (store_dir / "segments" / "00000000000000000002.log.tmp").exists()


def test_missing_segment_in_the_middle_is_refused(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store:
        for i in range(300):
            with store.transaction() as tx:
                store.append_messages(tx, "a", i * 3, _envs("a", 3))
    segments = sorted((store_dir / "segments").glob("*.log"))
    assert len(segments) >= 3
    hidden = segments[1].with_suffix(".hidden")
    segments[1].rename(hidden)
    with pytest.raises(CorruptionError) as info:
        logstore.open(store_dir)
    assert "missing" in str(info.value)
    assert str(segments[1]) in str(info.value)
    hidden.rename(segments[1])


def test_failed_open_releases_the_writer_lock(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store, store.transaction() as tx:
        store.append_messages(tx, "a", 0, _envs("a", 1))
    (store_dir / "CHECKPOINT").unlink()
    seg = store_dir / "segments" / "00000000000000000000.log"
    _flip(str(seg), 20)  # the first segment's header: the store id cannot be read
    for _ in range(2):  # the second attempt must fail the same way, not with StoreLockedError
        with pytest.raises(CorruptionError, match="segment header"):
            logstore.open(store_dir)
    _flip(str(seg), 20)
    with logstore.open(store_dir) as store:
        assert store.head("a") == 1


def test_index_file_of_an_unknown_format_version_is_refused(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store, store.transaction() as tx:
        store.append_messages(tx, "a", 0, _envs("a", 1))
    catalog = next(store_dir.glob("catalog.*"))
    original = catalog.read_bytes()
    raw = with_format_version(original, 2)
    catalog.write_bytes(raw)
    with pytest.raises(logstore.FormatVersionError, match="format version 2"):
        logstore.open(store_dir)
    assert catalog.read_bytes() == raw, "a refused open must not rewrite the file"
    catalog.write_bytes(original)


class _OrderIO(FileIO):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.names: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        self.names[fd] = os.path.basename(path)
        return fd

    def fdatasync(self, fd: int) -> None:
        self.events.append("fdatasync " + self.names.get(fd, "?"))
        super().fdatasync(fd)

    def rename(self, src: str, dst: str) -> None:
        self.events.append("rename " + os.path.basename(dst))
        super().rename(src, dst)


def test_recovered_tail_is_made_durable_before_the_checkpoint_covers_it(store_dir: Path) -> None:
    _write(store_dir, "none", [("a", 3), ("b", 2)])
    io = _OrderIO()
    with logstore.open(store_dir, io=io) as store:
        assert store.recovery_report.transactions_recovered == 2
    first_checkpoint = io.events.index("rename CHECKPOINT")
    assert "fdatasync 00000000000000000000.log" in io.events[:first_checkpoint]


def test_damaged_position_file_header_is_rewritten(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store:
        for i in range(200):
            with store.transaction() as tx:
                store.append_messages(tx, "a", i * 3, _envs("a", 3))
    pos_file = store_dir / "segments" / "00000000000000000000.pos"
    _flip(str(pos_file), 20)
    with logstore.open(store_dir) as store:
        stream, _ = store.open_stream(store, "a", 0)
        with stream:
            assert sum(1 for _ in stream) == 600
    assert_verified(store_dir)


def test_cutting_the_same_bytes_twice_keeps_both_copies(store_dir: Path) -> None:
    seg, _ = _write(store_dir, "fsync", [("a", 2)])
    records = _records(seg)
    end = records[-1][0] + records[-1][1]
    for _ in range(2):  # as if recovery were interrupted after saving and before zeroing
        with open(seg, "r+b") as f:
            f.seek(end)
            f.write(b"\x77" * 30)
        with logstore.open(store_dir) as store:
            assert store.recovery_report.bytes_cut == 30
    saved = sorted((store_dir / "lost+found").glob("*.bin"))
    assert len(saved) == 2
    assert all(p.read_bytes() == b"\x77" * 30 for p in saved)
    manifests = sorted((store_dir / "lost+found").glob("*.json"))
    assert [m.name[:-5] for m in manifests] == [b.name[:-4] for b in saved]
    assert all(json.loads(m.read_text())["length"] == 30 for m in manifests)


def test_regression_synced_position_counts_the_group_it_synced(store_dir: Path) -> None:
    """The writer's record of what is durable once lagged one group behind in global offset."""
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 0, _envs("a", 3))
        first, position, next_goff = store._writer.synced
        assert (first, position, next_goff) == (0, store._log.active.end, 3)


def test_position_file_removed_while_open_is_written_whole_at_the_next_checkpoint(store_dir: Path) -> None:
    # checkpoint_bytes=1: every commit is followed by a checkpoint, so the file holds all 20 entries.
    with logstore.open(store_dir, segment_size=64 * 1024, checkpoint_bytes=1) as store:
        _commit_singles(store, 20)
        pos_file = Path(store._log.active.pos_path)
        assert pos_file.exists()
        pos_file.unlink()
    assert pos_file.stat().st_size == HEADER_SIZE + 4 * 20
    assert_verified(store_dir)


class _CrashAt(FileIO):
    """Raises at the first call of ``op`` whose path or descriptor matches, as if the process died there."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.fired = False
        self.segment_fds: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if path.endswith(".log"):
            self.segment_fds.add(fd)
        return fd

    def _crash(self, op: str) -> None:
        if op == self.op and not self.fired:
            self.fired = True
            raise OSError(5, f"simulated crash at {op}")

    def unlink(self, path: str) -> None:
        if path.endswith(".log"):
            self._crash("unlink")
        super().unlink(path)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        if fd in self.segment_fds and not any(bytes(data[:64])):
            self._crash("zero")
        super().pwrite(fd, data, position)


class _DiesWritingTheNewSegment(FileIO):
    """Fails the first data write into a segment created after opening: the process 'dies' mid-roll."""

    def __init__(self) -> None:
        super().__init__()
        self.new_fds: set[int] = set()
        self.armed = False

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if self.armed and path.endswith(".log.tmp"):
            self.new_fds.add(fd)
        return fd

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        if fd in self.new_fds and position >= HEADER_SIZE:
            raise OSError(5, "the process died during this write")
        super().pwrite(fd, data, position)


def _torn_transaction_across_a_roll(path: Path) -> tuple[int, str]:
    """A store whose last transaction began in one segment and died before the next got its records.

    Returns the number of messages committed before it and the new segment's path.
    """
    io = _DiesWritingTheNewSegment()
    store = logstore.open(path, segment_size=64 * 1024, io=io)
    i = 0
    while store._log.active.end < 60 * 1024:
        with store.transaction() as tx:
            store.append_messages(tx, "a", i, _envs("a", 1))
        i += 1
    io.armed = True
    with pytest.raises(logstore.StoreFailedError), store.transaction() as tx:
        store.append_messages(tx, "b", 0, _envs("b", 100))  # about 12 KiB: needs the next segment
    assert len(store._log.segments) == 2
    second = store._log.active.path
    store._abandon()
    return i, second


@pytest.mark.parametrize("crash_at", ["unlink", "zero"])
def test_regression_crash_during_a_cut_leaves_a_store_that_opens(store_dir: Path, crash_at: str) -> None:
    """A cut once zeroed the kept segment before removing later ones; a crash between left an unopenable store."""
    kept, second = _torn_transaction_across_a_roll(store_dir)
    io = _CrashAt(crash_at)
    with pytest.raises(OSError, match="simulated crash"):
        logstore.open(store_dir, io=io)
    assert io.fired
    if crash_at == "zero":
        assert not os.path.exists(second)
    with logstore.open(store_dir) as store:  # not StoreLockedError: the failed open released the lock
        assert store.recovery_report.cut is not None
        assert store.global_head == kept
        assert store.head("b") == 0
    assert_verified(store_dir)


def test_regression_run_lookup_while_a_stream_moves_to_its_own_file() -> None:
    """A reader that looked in ``large`` before a merge and in the shared table after it found nothing."""
    from logstore.index.runs import LARGE_RUNS, RunIndex

    index = RunIndex()
    for i in range(LARGE_RUNS + 1):
        index.add(0, i, 2 * i)
    assert index.merge() == [0]

    class StaleOnce(dict):  # type: ignore[type-arg]
        stale = True

        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            if self.stale:
                self.stale = False
                return default  # what a reader saw just before the merge published the stream
            return super().get(key, default)

    index.large = StaleOnce(index.large)
    assert index.find(0, 5) == (5, 10, 6)


def test_regression_damage_with_no_usable_checkpoint_is_refused_when_valid_data_follows(store_dir: Path) -> None:
    """With the checkpoint unusable, damage before valid whole transactions was cut as a torn tail."""
    with logstore.open(store_dir, durability="batch", fsync_interval=3600, segment_size=SEGMENT) as store:
        _commit_singles(store, 100)
        seg = store._log.active.path
    records = _records(seg)
    _flip(seg, records[50][0] + 40)
    checkpoint = store_dir / "CHECKPOINT"
    original = checkpoint.read_bytes()
    _flip(str(checkpoint), HEADER_SIZE + 2)
    before = Path(seg).read_bytes()
    with pytest.raises(CorruptionError) as info:
        logstore.open(store_dir)
    assert (info.value.path, info.value.position) == (seg, records[50][0])
    assert Path(seg).read_bytes() == before
    checkpoint.write_bytes(original)
    _flip(seg, records[50][0] + 40)


class _FakeOS:
    """The ``os`` module as ``logstore.embedded.segment`` sees it, with ``lseek(SEEK_DATA)`` and
    ``lseek(SEEK_HOLE)`` answering ``data`` and ``hole``: an offset, or an error to raise."""

    def __init__(self, data: int | OSError, hole: int | OSError) -> None:
        self.answers = {os.SEEK_DATA: data, os.SEEK_HOLE: hole}

    def lseek(self, fd: int, pos: int, how: int) -> int:
        if how not in self.answers:
            return os.lseek(fd, pos, how)
        answer = self.answers[how]
        if isinstance(answer, OSError):
            raise answer
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_data_regions_cover_every_written_byte_and_skip_the_holes(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    size = 8 << 20
    written = [(0, 4096), (4 << 20, (4 << 20) + 4096)]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)  # all hole
        for lo, hi in written:
            os.pwrite(fd, b"\x07" * (hi - lo), lo)
        regions = data_regions(fd, 0, size)
        assert regions == sorted(regions)
        assert all(0 <= lo < hi <= size for lo, hi in regions)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(regions))
        for lo, hi in written:
            assert any(a <= lo and hi <= b for a, b in regions), (lo, hi, regions)
        assert sum(hi - lo for lo, hi in regions) < size // 2  # the holes are skipped
        assert data_regions(fd, 4096, 4 << 20) == []  # nothing but hole between the two writes
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("fake", "expected"),
    [
        ({"data": OSError(errno.EINVAL, "unsupported")}, [(100, 1000)]),  # no hole reporting: everything
        ({"data": OSError(errno.ENXIO, "past the data")}, []),  # a hole to the end of the file
        ({"data": 200, "hole": OSError(errno.EINVAL, "unsupported")}, [(200, 1000)]),
        ({"data": 200, "hole": 150}, [(200, 1000)]),  # a hole before its data: the file changed, search the rest
        ({"data": 2000}, []),  # the data starts past the range
    ],
)
def test_data_regions_falls_back_to_searching_when_hole_reports_fail(
    monkeypatch: pytest.MonkeyPatch, fake: dict[str, Any], expected: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(walk_module, "os", _FakeOS(fake["data"], fake.get("hole", 0)))
    assert data_regions(-1, 100, 1000) == expected


@pytest.mark.parametrize("seek_errno", [errno.EINVAL, errno.EOPNOTSUPP])
def test_recovery_finds_the_tail_on_a_file_system_without_hole_reports(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, seek_errno: int
) -> None:
    seg, _ = _write(store_dir, "fsync", [("a", 3), ("b", 2)])
    records = _records(seg)
    end = records[-1][0] + records[-1][1]
    garbage = b"\x99\x00\x00\x00\x01\x01" + os.urandom(40)  # a torn record after the last one
    with open(seg, "r+b") as f:
        f.seek(end)
        f.write(garbage)
    unsupported = OSError(seek_errno, os.strerror(seek_errno))
    monkeypatch.setattr(walk_module, "os", _FakeOS(unsupported, unsupported))
    with logstore.open(store_dir) as store:
        report = store.recovery_report
        assert report.records_scanned == 5
        assert report.cut == f"{seg}@{end}"
        assert _global(store) == [0, 1, 2, 3, 4]
