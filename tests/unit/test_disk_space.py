"""Disk use follows what the store holds; a full file system gives a clear error and a usable (or reopenable) store.

A segment file starts with a small reservation and grows in steps ahead of
the writer, up to ``segment_size``; out-of-space errors name the file, the
bytes asked for and the option that changes them.
"""

from __future__ import annotations

import errno
import itertools
import os
import random
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import logstore
from logstore import Envelope, FileIO, OutOfSpaceError, StoreFailedError
from logstore.embedded.controlfile import CONTROL_SIZE
from logstore.embedded.segment import RESERVE_FIRST, RESERVE_STEP_MAX
from logstore.index.header import HEADER_SIZE
from tests.crash import simulate_crash
from tests.faultfs import FullDisk
from tests.helpers import SMALL_SEGMENT, assert_verified

MiB = 1 << 20


def allocated(path: Path) -> int:
    """Bytes of disk the files under ``path`` hold (``st_blocks``, what ``du`` counts)."""
    return sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _dirs, files in os.walk(path) for f in files)


def env(i: int, pad: int = 0) -> Envelope:
    return Envelope.new("T", {"i": i, "pad": "x" * pad})


def commit(store: logstore.Store, stream: str, offset: int, n: int = 1, pad: int = 0) -> range:
    tx, committer = store.begin_tx()
    store.append_messages(tx, stream, offset, [env(offset + k, pad) for k in range(n)])
    return committer.commit()


def read_all(store: logstore.Store, stream: str) -> list[int]:
    reader, found = store.open_stream(store, stream, 0)
    assert found
    with reader:
        return [e.message["i"] for e in reader]


# -- disk use ------------------------------------------------------------------------------------------


def test_a_store_of_three_messages_uses_about_a_megabyte_not_its_segment_size(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path) as store:  # the default segment_size, 256 MiB
        for i in range(3):
            commit(store, "s", i)
    used = allocated(path)
    assert used <= 2 * MiB, f"a 3-message store takes {used} bytes of disk"
    (seg,) = (path / "segments").glob("*.log")
    assert seg.stat().st_size == RESERVE_FIRST
    with logstore.open(path) as store:
        assert read_all(store, "s") == [0, 1, 2]
    assert_verified(path)


def test_a_segment_grows_in_doubling_steps_then_rolls_at_segment_size(tmp_path: Path) -> None:
    path = tmp_path / "store"
    size = 8 * MiB
    sizes: set[int] = set()
    n = 0
    with logstore.open(path, segment_size=size, durability="none") as store:
        while len(store._log.segments) < 3:
            commit(store, "s", n, n=4, pad=4000)
            n += 4
            for seg in store._log.segments:
                st_size = os.path.getsize(seg.path)
                assert seg.end <= st_size == seg.size <= size  # the file holds what is written, mapped whole
                assert st_size <= max(RESERVE_FIRST, 2 * seg.end + 64 * 1024), (seg.path, st_size, seg.end)
                if seg is store._log.active:
                    sizes.add(st_size)
        sealed = store._log.segments[:-1]
        assert all(os.path.getsize(seg.path) == size for seg in sealed)  # full: grown to segment_size
        assert all(size - seg.end < 17_000 for seg in sealed)  # filled up to the last record that fit
    assert {1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB} <= sizes
    with logstore.open(path, segment_size=size) as store:
        assert read_all(store, "s") == list(range(n))
        commit(store, "s", n)
        assert read_all(store, "s") == list(range(n + 1))
    assert_verified(path)


class SparseIO(FileIO):
    """Allocates by ``ftruncate`` and skips writes of zeros (no blocks): records each allocation of a segment
    file, so steps can be checked cheaply (``CONTROL``'s reservation at open is not recorded)."""

    def __init__(self) -> None:
        super().__init__()
        self.allocations: list[tuple[int, int]] = []

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) != "CONTROL":
            self.allocations.append((offset, length))
        if os.fstat(fd).st_size < offset + length:
            os.ftruncate(fd, offset + length)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        if bytes(data).count(0) != len(data):
            super().pwrite(fd, data, position)


def test_reservation_steps_double_up_to_their_cap_and_stop_at_the_capacity(tmp_path: Path) -> None:
    io = SparseIO()
    capacity = 100 * MiB
    with logstore.open(tmp_path / "store", segment_size=capacity, io=io) as store:
        seg = store._log.active
        assert (seg.size, io.allocations) == (RESERVE_FIRST, [(0, RESERVE_FIRST)])
        while seg.size < capacity:
            seg.reserve(seg.size + 1)
        seg.reserve(capacity)  # already there: nothing more
        with pytest.raises(AssertionError, match="past the capacity"):
            seg.reserve(capacity + 1)
    ends = [offset + length for offset, length in io.allocations]
    steps = [b - a for a, b in itertools.pairwise(ends)]
    assert steps == [MiB, 2 * MiB, 4 * MiB, 8 * MiB] + [RESERVE_STEP_MAX] * 5 + [4 * MiB]
    assert ends[-1] == capacity


class RecordingIO(FileIO):
    """Records, in order, each allocation, write (whether all zeros) and data sync of the segment files."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int, int, bool]] = []
        self._segments: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if path.endswith((".log", ".log.tmp")):
            self._segments.add(fd)
        return fd

    def close(self, fd: int) -> None:
        self._segments.discard(fd)
        super().close(fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if fd in self._segments:
            self.ops.append(("fallocate", offset, length, True))
        super().fallocate(fd, offset, length)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        if fd in self._segments:
            self.ops.append(("pwrite", position, len(data), bytes(data).count(0) == len(data)))
        super().pwrite(fd, data, position)

    def fdatasync(self, fd: int) -> None:
        if fd in self._segments:
            self.ops.append(("sync", 0, 0, True))
        super().fdatasync(fd)


def test_each_step_is_written_with_zeros_and_synced_before_records_go_there(tmp_path: Path) -> None:
    io = RecordingIO()
    path = tmp_path / "store"
    with logstore.open(path, segment_size=4 * MiB, io=io) as store:
        for i in range(300):
            commit(store, "s", i, pad=8000)
        assert len(store._log.segments) == 1 and store._log.active.size == 4 * MiB
    steps = [(k, off, length) for k, (op, off, length, _z) in enumerate(io.ops) if op == "fallocate" and off > 0]
    assert [(off, length) for _k, off, length in steps] == [(MiB, MiB), (2 * MiB, 2 * MiB)]
    for k, off, length in steps:
        after = io.ops[k + 1 :]
        sync = next(j for j, op in enumerate(after) if op[0] == "sync")
        zeros = sorted((o, n) for op, o, n, zero in after[:sync] if op == "pwrite" and zero)
        covered = off
        for o, n in zeros:
            assert o == covered
            covered += n
        assert covered == off + length  # the whole step is written with zeros, then synced
        assert not [op for op in after[:sync] if op[0] == "pwrite" and not op[3]]  # no record before that
    assert_verified(path)


def test_reads_holding_the_old_mapping_stay_valid_while_the_segment_grows(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=8 * MiB, durability="none") as store:
        commit(store, "s", 0, pad=1000)
        seg = store._log.active
        old_view = seg.view
        first = bytes(old_view[: HEADER_SIZE + 200])
        total = 1200
        done = threading.Event()
        got: list[int] = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                with store.open_global(store, 0) as reader:
                    while len(got) < total:
                        reader.next(timeout=30)
                        got.append(reader.get().message["i"])
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
            finally:
                done.set()

        t = threading.Thread(target=read)
        t.start()
        for i in range(1, total):
            commit(store, "s", i, pad=4000)
        assert done.wait(60)
        t.join(5)
        assert not errors, errors
        assert got == list(range(total))
        assert seg.size > len(old_view)  # the segment grew and was mapped again
        assert bytes(old_view[: HEADER_SIZE + 200]) == first  # the old mapping still reads the same bytes
    assert_verified(path)


# -- recovery with any file size -----------------------------------------------------------------------


@given(st.data())
def test_recovery_takes_a_segment_file_of_any_size_between_its_records_and_its_capacity(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    path = tmp_path_factory.mktemp("any-size") / "store"
    n = data.draw(st.integers(1, 40), label="messages")
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for i in range(n):
            commit(store, "s", i, pad=data.draw(st.integers(0, 3000), label="pad"))
        active = store._log.active
        end, capacity, active_path = active.end, active.capacity, active.path
    size = data.draw(st.integers(end, capacity), label="file size")
    os.truncate(active_path, size)  # cut the reservation short, or grow it with a hole of zeros
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.cut is None
        assert read_all(store, "s") == list(range(n))
        for i in range(n, n + 30):
            commit(store, "s", i, pad=1000)
        assert read_all(store, "s") == list(range(n + 30))
    assert_verified(path)


def test_a_crash_while_segments_grow_and_roll_keeps_every_acknowledged_commit(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "store"
    mid_growth = 0  # crashes while the active segment's file was short of its capacity
    # At least 10 rounds, and on until 3 of them crashed mid-growth: with durability="batch" what a crash
    # keeps depends on when the writer thread synced, so where later rounds start varies from run to run.
    for round_ in range(30):
        if round_ >= 10 and mid_growth >= 3:
            break
        store = logstore.open(path, segment_size=4 * MiB, durability="batch", fsync_interval=0.001)
        acked = store.head("s")
        for _ in range(rng.randint(100, 400)):
            commit(store, "s", acked, n=3, pad=rng.randint(100, 6000))
            acked += 3
        mid_growth += os.path.getsize(store._log.active.path) < 4 * MiB
        crash = simulate_crash(store, rng)
        with logstore.open(path, segment_size=4 * MiB) as reopened:
            got = read_all(reopened, "s")
            assert got == list(range(len(got))), round_
            assert crash["durable_goff"] <= len(got) <= acked, (round_, crash, len(got))
            assert len(reopened._log.segments) >= 1
        assert_verified(path)
    with logstore.open(path, segment_size=4 * MiB) as store:
        assert len(store._log.segments) >= 3  # it grew past several steps and rolled
    assert mid_growth >= 3


# -- out of space ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_open_of_a_new_store_on_a_full_disk_names_the_file_and_size_and_leaves_nothing(
    tmp_path: Path, err: int
) -> None:
    path = tmp_path / "store"
    io = FullDisk("all", err)
    io.full = True
    io.largest = CONTROL_SIZE  # CONTROL (joined first) fits; the segment does not
    with pytest.raises(OutOfSpaceError) as info:
        logstore.open(path, io=io)
    exc = info.value
    assert isinstance(exc, OSError) and isinstance(exc, logstore.LogStoreError)
    assert exc.errno == err
    message = str(exc)
    assert "00000000000000000000.log" in message and exc.filename == exc.path
    assert f"{RESERVE_FIRST} bytes asked for" in message and "segment_size" in message
    assert "bytes free on that file system" in message
    assert not path.exists()  # the half-created directory is gone


def test_open_of_a_new_store_with_no_room_for_control_names_it_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = FullDisk("all")
    io.full = True
    with pytest.raises(OutOfSpaceError) as info:
        logstore.open(path, io=io)
    message = str(info.value)
    assert info.value.filename == str(path / "CONTROL") and f"{CONTROL_SIZE} bytes asked for" in message
    assert not path.exists()  # the directory this open made is gone, CONTROL with it


def test_a_failed_creation_in_an_existing_directory_removes_only_what_it_made(tmp_path: Path) -> None:
    path = tmp_path / "store"
    (path / "lost+found").mkdir(parents=True)
    (path / "lost+found" / "keep.bin").write_bytes(b"mine")
    io = FullDisk("index")  # the segment is made, the first checkpoint fails
    io.full = True
    with pytest.raises(OutOfSpaceError, match="out of space writing an index file") as info:
        logstore.open(path, io=io)
    assert info.value.path.endswith(".pos") and info.value.requested > 0  # the first index file written
    # LOCK and CONTROL stay: see the docstring of Store._remove_created
    assert sorted(p.name for p in path.iterdir()) == ["CONTROL", "LOCK", "lost+found"]
    assert (path / "lost+found" / "keep.bin").read_bytes() == b"mine"
    with logstore.open(path) as store:  # space again: the directory makes a store
        commit(store, "s", 0)
    assert_verified(path)


def test_a_commit_that_cannot_extend_the_reservation_fails_alone_and_the_store_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = FullDisk("extend")
    long_name = "t" * 1000  # a truncation of it needs a record of over 1 KiB
    with logstore.open(path, segment_size=8 * MiB, io=io) as store:
        commit(store, long_name, 0, n=2)
        n = 0
        while store._log.active.end + 3 * 4100 < store._log.active.size:  # fill up to the reservation
            commit(store, "s", n, pad=4000)
            n += 1
        seg = store._log.active
        end, size = seg.end, seg.size
        io.full = True
        with pytest.raises(OutOfSpaceError) as info:
            commit(store, "s", n, n=4, pad=4000)
        message = str(info.value)
        assert seg.path in message and "segment_size" in message and "extending the segment" in message
        assert info.value.errno == errno.ENOSPC
        assert len(io.refused) == 2 and io.refused[0][1] == RESERVE_FIRST  # one step, then the exact need
        assert info.value.requested == io.refused[1][1] < RESERVE_FIRST
        assert (seg.end, seg.size, os.path.getsize(seg.path)) == (end, size, size)  # nothing written
        assert store.head("s") == n
        with open(seg.path, "rb") as f:
            f.seek(end)
            assert not any(f.read())
        # Small commits still fit in what is left of the reservation, until one does not.
        with pytest.raises(OutOfSpaceError):
            for _ in range(1000):
                commit(store, "s", n, pad=40)
                n += 1
        # A control record needs room too: it fails alike, changing nothing.
        with pytest.raises(OutOfSpaceError):
            store.truncate_stream(long_name, 1)
        assert store.stream_info(long_name) == (0, 2, False)
        io.full = False  # space again: the store goes on
        store.truncate_stream(long_name, 1)
        assert commit(store, "s", n, n=4, pad=4000) == range(n + 3, n + 7)
        assert read_all(store, "s") == list(range(n + 4))
    with logstore.open(path, segment_size=8 * MiB) as store:
        assert read_all(store, "s") == list(range(n + 4))
        assert read_all(store, long_name) == [1]
    assert_verified(path)


def test_room_for_the_commit_but_not_for_a_whole_step_reserves_what_the_commit_needs(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = FullDisk("extend")
    with logstore.open(path, segment_size=8 * MiB, io=io) as store:
        n = 0
        while store._log.active.end + 3 * 4100 < store._log.active.size:
            commit(store, "s", n, pad=4000)
            n += 1
        seg = store._log.active
        io.full, io.largest = True, 64 * 1024  # a whole step (1 MiB) does not fit, one commit does
        for _ in range(3):
            size = seg.size
            commit(store, "s", n, n=4, pad=4000)
            n += 4
            assert size < seg.size <= size + 64 * 1024  # what the commit needed, not a step
            assert os.path.getsize(seg.path) == seg.size and seg.end <= seg.size
        assert len(io.refused) == 3 and all(length >= RESERVE_FIRST for _p, length in io.refused)  # the steps
        assert read_all(store, "s") == list(range(n))
    assert_verified(path)


def test_running_out_of_space_at_a_roll_fails_the_store_clearly_and_a_reopen_recovers(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = FullDisk("create")
    store = logstore.open(path, segment_size=SMALL_SEGMENT, io=io)
    io.full = True
    acked = 0
    with pytest.raises(StoreFailedError) as info:
        for _ in range(100):  # until the segment is full
            commit(store, "s", acked, n=3, pad=500)
            acked += 3
    cause = info.value.__cause__
    assert isinstance(cause, OutOfSpaceError) and cause.errno == errno.ENOSPC
    message = str(info.value)
    assert ".log.tmp" in message and f"{SMALL_SEGMENT} bytes asked for" in message and "segment_size" in message
    assert "reopen" in message
    with pytest.raises(StoreFailedError):
        commit(store, "s", acked)
    with pytest.raises(StoreFailedError):
        store.close()
    assert [p.name for p in (path / "segments").glob("*.tmp")] == []  # its space was given back
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        got = read_all(store, "s")
        assert got[:acked] == list(range(acked)) and len(got) in (acked, acked + 3)
        commit(store, "s", len(got))
    assert_verified(path)


def test_running_out_of_space_for_the_checkpoint_names_the_index_file(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = FullDisk("index")
    store = logstore.open(path, io=io, checkpoint_bytes=4096)
    io.full = True
    with pytest.raises(StoreFailedError) as info:
        for i in range(20):
            commit(store, "s", i, pad=1000)
    message = str(info.value)
    assert "out of space writing an index file of the checkpoint" in message and "bytes asked for" in message
    assert isinstance(info.value.__cause__, OutOfSpaceError)
    assert info.value.__cause__.path.startswith(str(path))
    with pytest.raises(StoreFailedError):
        store.close()
    with logstore.open(path) as store:
        assert read_all(store, "s") == list(range(len(read_all(store, "s"))))
    assert_verified(path)


@pytest.mark.parametrize("where", ["create", "name"])
def test_compaction_on_a_full_disk_reports_the_active_segment_and_the_store_goes_on(tmp_path: Path, where: str) -> None:
    """Deleting and compacting is how a user frees space: a roll that finds no room must not fail the store,
    whether the new segment's file gets no blocks (``create``) or cannot be made at all (``name``)."""
    path = tmp_path / "store"
    io = FullDisk(where)
    store = logstore.open(path, segment_size=SMALL_SEGMENT, io=io)
    commit(store, "gone", 0, n=3, pad=200)
    commit(store, "kept", 0, n=2)
    store.delete_stream("gone")
    io.full = True  # no room for the next segment the roll would create
    report = store.compact()
    assert report.rolled is None and not report.erased
    (unreached,) = report.unreached
    assert unreached.path == str(path / "segments" / "00000000000000000000.log") and unreached.messages == 3
    assert "no space for the next segment" in unreached.reason and "segment_size" in unreached.reason
    assert [p.name for p in (path / "segments").glob("*.tmp")] == []
    commit(store, "kept", 2)  # the store goes on: the failed roll changed nothing
    io.full = False
    report = store.compact()  # with room again, the same call erases them
    assert report.rolled is not None and report.erased and report.messages_removed == 3
    assert read_all(store, "kept") == [0, 1, 2]
    store.close()
    assert_verified(path)
