"""Regressions from the review of removal, retention, compaction and repair: each test is one reproduction.

Where the original reproduction relied on a race, the interleaving is forced with an I/O hook (a
``FileIO`` subclass) or a wrapped lookup that runs the other thread's work to completion at the one
moment that broke; threads wait on ``threading.Event``, never on time (the timeouts below only turn a
deadlock into a failure).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope, FileIO
from logstore.embedded.log import Log
from logstore.embedded.record import KIND_RETAIN
from logstore.embedded.repair import repair
from logstore.embedded.segment import Segment
from logstore.embedded.verify import verify
from logstore.errors import CorruptionError
from logstore.results import CompactReport
from tests.crash import simulate_crash
from tests.faultfs import Crash, CrashIO
from tests.helpers import SMALL_SEGMENT, assert_verified, segment_records

_DEADLOCK = 60.0  # seconds: only a guard against a hang, never part of the synchronisation


def _fill(store: logstore.Store, name: str, n: int, pad: int = 200) -> None:
    """Append ``n`` messages to ``name``, one commit each; message ``i`` says its stream offset."""
    for _ in range(n):
        with store.transaction() as tx:
            h = store.head(name)
            store.append_messages(tx, name, h, [Envelope.new("E", {"i": h, "pad": "x" * pad})])


def _read(store: logstore.Store, name: str, offset: int = 0) -> list[int]:
    """The offsets of ``name`` readable from ``offset``, checking that each message says its offset."""
    stream, _found = store.open_stream(store, name, offset)
    out = []
    with stream:
        while stream.try_next():
            assert stream.get().message["i"] == stream.offset()
            out.append(stream.offset())
    return out


def _segment_names(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path / "segments") if n.endswith(".log"))


def _damage_record(path: Path, match: Callable[[Any], bool], at: Callable[[int, Any], int]) -> int:
    """Flip one byte (at ``at(position, record)``) of every record ``match`` selects; returns how many."""
    n = 0
    for name in _segment_names(path):
        f = path / "segments" / name
        data = bytearray(f.read_bytes())
        for pos, rec in segment_records(data):
            if match(rec):
                data[at(pos, rec)] ^= 0xFF
                n += 1
        f.write_bytes(bytes(data))
    return n


# -- compaction ------------------------------------------------------------------------------------


class _LoseEverythingUnsynced(random.Random):
    """Crash choices for ``simulate_crash``: cut at the synced position, no torn bytes (the worst case)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls = 0

    def randint(self, a: int, b: int) -> int:
        # The calls are: the mode (0: cut anywhere), the cut (lowest: the synced position), torn? (not 0: no).
        self.calls += 1
        return b if self.calls == 3 else a


def test_compaction_in_batch_mode_syncs_the_removal_before_the_swap(store_dir: Path) -> None:
    # Without an fsync before the swap, the checkpoint the swap writes covered a TRUNCATE and a commit
    # that were only written: after a power loss the checkpoint named records the log no longer held.
    s = logstore.open(store_dir, segment_size=SMALL_SEGMENT, durability="batch", fsync_interval=3600)
    _fill(s, "a", 800)  # several segments; each roll fsyncs and checkpoints
    s.truncate_stream("a", 100)  # written, not fsynced (batch)
    _fill(s, "a", 1)  # acknowledged, not fsynced (batch)
    report = s.compact()
    assert report.segments_rewritten == 1
    info = simulate_crash(s, _LoseEverythingUnsynced())
    assert info["durable_goff"] == info["written_goff"], info  # the swap synced what it checkpointed
    with logstore.open(store_dir) as s2:
        assert s2.stream_info("a") == (100, 801, False)
        assert _read(s2, "a") == list(range(100, 801))
        assert _read(s2, "a", 795) == list(range(795, 801))


class _PauseFirstCopyIO(FileIO):
    """Pauses the thread named ``A`` right after it closes its first ``.log.compact`` copy."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[int, str] = {}
        self.paused = threading.Event()
        self.resume = threading.Event()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        path = self.paths.pop(fd, "")
        super().close(fd)
        if threading.current_thread().name == "A" and path.endswith(".log.compact") and not self.paused.is_set():
            self.paused.set()
            assert self.resume.wait(_DEADLOCK), "thread A was never resumed"


class _AnnouncingLock:
    """Wraps the store's compaction lock: says when thread ``B`` asks for it, then waits for it."""

    def __init__(self, lock: Any, asked: threading.Event) -> None:
        self.lock = lock
        self.asked = asked

    def __enter__(self) -> _AnnouncingLock:
        if threading.current_thread().name == "B":
            self.asked.set()
        self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_concurrent_compactions_do_not_fail_the_store(store_dir: Path) -> None:
    # Two compactions shared the '<first>.log.compact' names: the second one replaced the first's copy
    # and swapped it in, and the first's swap then failed on the missing file inside the writer thread,
    # which failed the whole store. Now compactions take turns; B asks while A is inside its copy.
    io = _PauseFirstCopyIO()
    s = logstore.open(store_dir, segment_size=SMALL_SEGMENT, io=io)
    _fill(s, "a", 400)
    s.truncate_stream("a", 300)
    removable = [seg.path for seg in s._log.segments[:-1]]
    assert len(removable) >= 2

    b_arrived = threading.Event()  # B waits for the lock (fixed engine) or, without one, B has finished
    lock = getattr(s, "_compact_lock", None)
    if lock is not None:
        s._compact_lock = _AnnouncingLock(lock, b_arrived)  # type: ignore[assignment]
    results: dict[str, CompactReport | BaseException] = {}

    def run(name: str) -> None:
        try:
            results[name] = s.compact()
        except BaseException as exc:  # noqa: BLE001 - reported through results
            results[name] = exc
        finally:
            if name == "B":
                b_arrived.set()

    a = threading.Thread(target=run, args=("A",), name="A")
    b = threading.Thread(target=run, args=("B",), name="B")
    a.start()
    assert io.paused.wait(_DEADLOCK), "compaction A never wrote a copy"
    try:
        b.start()  # while A is inside its copy of the first segment
        assert b_arrived.wait(_DEADLOCK), "compaction B neither waited for the lock nor finished"
    finally:
        io.resume.set()
    a.join(_DEADLOCK)
    b.join(_DEADLOCK)
    assert not a.is_alive() and not b.is_alive()

    assert isinstance(results["A"], CompactReport), results["A"]
    assert isinstance(results["B"], CompactReport), results["B"]
    assert sorted(results["A"].rewritten + results["B"].rewritten) == removable
    assert s._writer.failed is None
    _fill(s, "a", 1)  # the store still commits
    assert _read(s, "a") == list(range(300, 401))
    s.close()


def test_compaction_skips_a_segment_that_retention_dropped_during_the_copy(store_dir: Path) -> None:
    # compact() walks a snapshot of the sealed segments; commits from other threads (here: from the
    # progress callback) roll a segment and retention closes one of the snapshot's meanwhile: reading
    # its released mapping raised ValueError out of compact().
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, retention_bytes=3 * SMALL_SEGMENT) as s:
        _fill(s, "a", 500)
        s.truncate_stream("a", 450)
        snapshot = list(s._log.segments[:-1])
        assert len(snapshot) >= 2

        def progress(done: int, _total: int) -> None:
            if done == 1:
                _fill(s, "a", 300, pad=200)
                assert snapshot[1].closed  # retention dropped the segment compaction reads next

        # roll=False: a roll would apply the store's retention first and move the snapshot.
        report = s.compact(progress, roll=False)
        assert snapshot[1].path not in report.rewritten
        assert s._writer.failed is None
        _fill(s, "a", 1)
        info = s.stream_info("a")
        assert info is not None and info.head == 801
        assert _read(s, "a") == list(range(info.first, 801))


def test_reader_of_a_lazily_indexed_segment_swapped_by_compaction_looks_it_up_again(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After an open, sealed segments load their position file on first use. A reader that looked such a
    # segment up and read it after compaction swapped it walked the released mapping to rebuild the
    # positions, outside the try that turns a closed segment into a new lookup: ValueError escaped.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as s:
        _fill(s, "a", 400)
    s = logstore.open(store_dir)
    s.truncate_stream("a", 10)
    orig = Log.segment_for
    seen: list[tuple[Segment, bool]] = []
    reports: list[CompactReport] = []

    def segment_for(self: Log, goff: int) -> Segment:
        seg = orig(self, goff)
        if not seen:  # another thread compacts right after the reader's lookup
            seen.append((seg, seg._lazy is not None))
            t = threading.Thread(target=lambda: reports.append(s.compact()))
            t.start()
            t.join(_DEADLOCK)
            assert not t.is_alive()
        return seg

    monkeypatch.setattr(Log, "segment_for", segment_for)
    g = s.open_global(s, 0)
    with g:
        assert g.try_next()
        assert g.offset() == 10
        got = [g.get().message["i"]]
        while g.try_next():
            got.append(g.get().message["i"])
    monkeypatch.undo()
    ((seg, lazy),) = seen
    assert lazy and seg.first == 0  # the reader held the not yet indexed segment 0 ...
    assert reports and seg.path in reports[0].rewritten  # ... which compaction swapped
    assert got == list(range(10, 400))
    s.close()


# -- readers ---------------------------------------------------------------------------------------


def test_try_next_is_not_false_when_a_removal_races_the_read(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A removal on any stream between a reader's read of the removal count and its fill made it drop
    # what it had read and report "nothing available": try_next() was False and iteration stopped.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as s:
        with s.transaction() as tx:
            s.append_messages(tx, "a", 0, [Envelope.new("E", {"i": i}) for i in range(10)])
            s.append_messages(tx, "other", 0, [Envelope.new("E", {"i": i}) for i in range(3)])
        orig = Segment.read
        fired: list[int] = []

        def read(self: Segment, *args: Any, **kwargs: Any) -> Any:
            result = orig(self, *args, **kwargs)
            if not fired:  # another thread truncates an unrelated stream right now
                fired.append(1)
                info = s.stream_info("other")
                assert info is not None
                s.truncate_stream("other", info.first + 1)
            return result

        monkeypatch.setattr(Segment, "read", read)
        st, found = s.open_stream(s, "a", 0)
        with st:
            assert found
            assert st.try_next()
            assert st.offset() == 0
        assert fired == [1]

        fired.clear()  # the same through the iterator protocol
        st, _found = s.open_stream(s, "a", 0)
        with st:
            assert [env.message["i"] for env in st] == list(range(10))
        assert fired == [1]
        monkeypatch.undo()
        assert s.stream_info("other") == (2, 3, False)


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_readers_survive_retention_dropping_the_segment_they_were_about_to_read(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # A reader that read log_start just before retention moved it looked up a dropped segment: the
    # KeyError of Log.segment_for escaped try_next() on an open store.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as s:
        _fill(s, "a", 600)
        orig = Log.segment_for
        fired: list[int] = []

        def segment_for(self: Log, goff: int) -> Segment:
            if not fired:  # retention (another thread's compact) runs between the log_start read and this lookup
                fired.append(goff)
                t = threading.Thread(target=lambda: s.compact(retention_bytes=70000))
                t.start()
                t.join(_DEADLOCK)
                assert not t.is_alive()
            return orig(self, goff)

        monkeypatch.setattr(Log, "segment_for", segment_for)
        reader = s.open_stream(s, "a", 0)[0] if kind == "stream" else s.open_global(s, 0)
        with reader:
            got = []
            while reader.try_next():
                got.append(reader.get().message["i"])
        monkeypatch.undo()
        assert fired == [0]
        assert s.log_start > 0  # retention dropped the segment the reader was about to read
        info = s.stream_info("a")
        assert info is not None and info.first > 0
        assert got == list(range(info.first, 600))


def test_read_only_open_retries_when_retention_removes_a_segment_under_it(store_dir: Path) -> None:
    # A read-only open beside a live writer reads CHECKPOINT, then lists segments/. When the writer's
    # retention dropped a segment in between, the open reported log damage on a healthy store.
    w = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    _fill(w, "a", 600)

    class RetentionBetweenCheckpointAndListing(FileIO):
        fired = False

        def listdir(self, path: str) -> list[str]:
            if path.endswith("segments") and not self.fired:  # the writer runs retention right now
                self.fired = True
                w.compact(retention_bytes=70000)
            return super().listdir(path)

    io = RetentionBetweenCheckpointAndListing()
    with logstore.open(store_dir, readonly=True, io=io) as ro:
        assert io.fired
        assert w.log_start > 0
        assert ro.log_start == w.log_start
        assert ro.stream_info("a") == w.stream_info("a")
        info = ro.stream_info("a")
        assert info is not None
        assert _read(ro, "a") == list(range(info.first, 600))
    w.close()


# -- rebuild and repair ----------------------------------------------------------------------------


def test_rebuild_keeps_first_as_the_truncation_offset(store_dir: Path) -> None:
    # Retention dropped a stream's messages but kept its TRUNCATE record: the rebuild from the log set
    # the catalog's first to the stream's next message instead of the truncation offset, which the
    # checkpointed catalog, FORMAT.md and verify all have; the engine's own rebuild then failed verify.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as s:
        with s.transaction() as tx:
            s.append_messages(tx, "s", 0, [Envelope.new("E", {"i": i}) for i in range(50)])
        while len(s._log.segments) < 2:
            _fill(s, "f", 1, pad=1000)
        s.truncate_stream("s", 10)  # in segment 1, which retention keeps
        with s.transaction() as tx:
            s.append_messages(tx, "s", 50, [Envelope.new("E", {"i": 50})])
        while len(s._log.segments) < 3:
            _fill(s, "f", 1, pad=1000)
        s.compact(retention_bytes=2 * SMALL_SEGMENT)  # drops segment 0, which holds s:0..49
        assert s.log_start > 50
        checkpointed_first = int(s._log.catalog.first[s._log.catalog.ids["s"]])
    assert checkpointed_first == 10
    assert_verified(store_dir)
    os.unlink(store_dir / "CHECKPOINT")  # e.g. a damaged checkpoint: the next open rebuilds from the log
    with logstore.open(store_dir) as s:
        assert s.recovery_report.rebuilt
        assert int(s._log.catalog.first[s._log.catalog.ids["s"]]) == 10
        assert _read(s, "s") == [50]
    assert_verified(store_dir)
    with logstore.open(store_dir) as s:
        s.truncate_stream("s", 30)
        assert _read(s, "s") == [50]
    assert repair(str(store_dir)).actions == ["verify finds no problem: nothing to repair"]


@pytest.mark.parametrize("later_commit", [False, True], ids=["truncate_then_one_message", "another_stream_after"])
def test_repair_attributes_a_message_lost_just_before_a_truncation(store_dir: Path, later_commit: bool) -> None:
    # A TRUNCATE record between a destroyed message and the stream's next message moved the stream's
    # last offset past the gap, so the lost offset was marked LOST for no stream: the repaired store had
    # a hole in the stream (its next open cut the stream's later message), or repair itself failed.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as s:
        with s.transaction() as tx:
            s.append_messages(tx, "a", 0, [Envelope.new("E", {"i": i}) for i in range(4)])  # goffs 0-3
        with s.transaction() as tx:
            s.append_messages(tx, "a", 4, [Envelope.new("E", {"i": 4})])  # goff 4: will be destroyed
        s.truncate_stream("a", 2)  # goff 5
        with s.transaction() as tx:
            s.append_messages(tx, "a", 5, [Envelope.new("E", {"i": 5})])  # goff 6
        if later_commit:
            with s.transaction() as tx:
                s.append_messages(tx, "b", 0, [Envelope.new("E", {"i": 0})])  # goff 7
    # One flipped payload byte in the record of a:4.
    assert _damage_record(store_dir, lambda r: r.goff == 4, lambda pos, r: pos + r.length - 12) == 1
    assert not verify(str(store_dir)).ok

    report = repair(str(store_dir))
    assert report.lost_offsets == {"a": [4]}
    assert report.records_lost == 1
    assert verify(str(store_dir)).ok
    again = repair(str(store_dir))
    assert again.lost_offsets == {} and again.records_lost == 0
    with logstore.open(store_dir) as s:
        assert s.recovery_report.cut is None
        assert s.stream_info("a") == (2, 6, False)
        assert _read(s, "a") == [2, 3, 5]
        assert s.global_head == (8 if later_commit else 7)
        if later_commit:
            assert _read(s, "b") == [0]


def test_repair_of_a_damaged_retain_record_does_not_refill_dropped_offsets(store_dir: Path) -> None:
    # With the RETAIN record among the damaged records, repair took the log to start at 0 and filled
    # every global offset retention had dropped with LOST records, in a new segment 0, although the
    # checkpoint said where the log starts.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as s:
        for _ in range(1500):
            with s.transaction() as tx:
                for n in ("a", "b"):
                    s.append_messages(tx, n, s.head(n), [Envelope.new("E", {"i": s.head(n), "pad": "x" * 100})])
        s.compact(retention_bytes=3 * SMALL_SEGMENT)
        _fill(s, "a", 1)
        log_start = s.log_start
        assert log_start > 0
        info_a, info_b, head = s.stream_info("a"), s.stream_info("b"), s.global_head
    names = _segment_names(store_dir)
    assert int(names[0].split(".")[0]) == log_start
    assert _damage_record(store_dir, lambda r: r.kind == KIND_RETAIN, lambda pos, r: pos + 30) == 1

    report = repair(str(store_dir))
    assert report.records_lost == 1  # the RETAIN record, and nothing below the log start
    assert _segment_names(store_dir) == names
    with logstore.open(store_dir) as s:
        assert s.log_start == log_start
        assert s.stream_info("a") == info_a
        assert s.stream_info("b") == info_b
        assert s.global_head == head
        assert info_a is not None and _read(s, "a") == list(range(info_a.first, info_a.head))


def test_repair_finishes_after_a_crash_between_rename_and_unlink(store_dir: Path) -> None:
    # Repair writes a segment whose first global offset changes as <new>.log.repair, renames it to
    # <new>.log, then unlinks <old>.log. A crash between the rename and the unlink left two segments
    # with the same global offsets beside the old CHECKPOINT: a plain open succeeded on inconsistent
    # files, and every later repair failed.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as s:
        _fill(s, "a", 840, pad=120)
    logs = _segment_names(store_dir)
    assert len(logs) >= 4
    firsts = [int(n.split(".")[0]) for n in logs]
    os.unlink(store_dir / "segments" / logs[1])  # the damage: a middle segment is gone

    class CrashAtOldUnlink(CrashIO):
        def unlink(self, path: str) -> None:
            if path.endswith(logs[2]):
                raise Crash("unlink " + path)
            super().unlink(path)

    with pytest.raises(Crash):
        repair(str(store_dir), io=CrashAtOldUnlink())
    assert (store_dir / "segments" / logs[2]).exists()  # the crash left the old segment beside its rewrite
    with pytest.raises(CorruptionError):  # the checkpoint is gone: the open reads the inconsistent log
        logstore.open(store_dir).close()

    report = repair(str(store_dir))
    assert report.lost_found  # the duplicate segment is kept aside, not deleted
    assert not (store_dir / "segments" / logs[2]).exists()
    assert_verified(store_dir)
    assert repair(str(store_dir)).actions == ["verify finds no problem: nothing to repair"]
    with logstore.open(store_dir) as s:
        assert s.stream_info("a") == (0, 840, False)
        assert _read(s, "a") == list(range(firsts[1])) + list(range(firsts[2], 840))
