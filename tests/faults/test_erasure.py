"""Deleting really erases: after ``compact()`` no file of the store holds a removed message's envelope.

Removed messages in the active segment are reached by rolling it first
(through the writer role); what a pass cannot reach (removed after it began,
``roll=False``, ``lost+found/``) is named in the report with the segment file
and the count. The roll and the rewrite are crash-safe: a crash at any point
of them, and in particular between the roll and the rewrite, loses nothing
acknowledged and leaves a store that opens, verifies clean, and is erased by
the next compaction.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.compact import REASON_ACTIVE_LATER, REASON_LATER, REASON_NO_ROLL
from tests.faultfs import MODES, Crash, FaultFS, write_image
from tests.faults.test_crash_points import (
    Action,
    Campaign,
    Progress,
    Workload,
    _report,
    check_image,
    enumerate_crashes,
    envelopes,
    rng_for,
    run_workload,
    scratch,  # noqa: F401 - the fixture
)
from tests.helpers import SMALL_SEGMENT, assert_verified

SEGMENT = 1 << 20  # "a small store": everything below stays in the first, active segment
MARK = b"ERASE-ME-"
TIMEOUT = 30.0


def marked(i: int) -> Envelope:
    """An envelope whose message carries a marker that names it, found by grepping the store's files."""
    return Envelope.new("Personal", {"note": f"ERASE-ME-{i:05d}-X", "pad": "p" * 100})


def markers_in_files(path: Path) -> dict[str, set[int]]:
    """Every marker number found in each file under ``path`` (every byte of every file, except lost+found)."""
    found: dict[str, set[int]] = {}
    pattern = re.compile(re.escape(MARK) + rb"(\d{5})-X")
    for root, _dirs, files in os.walk(path):
        if Path(root).relative_to(path).parts[:1] == ("lost+found",):
            continue
        for name in files:
            full = Path(root) / name
            got = {int(m.group(1)) for m in pattern.finditer(full.read_bytes())}
            if got:
                found[str(full.relative_to(path))] = got
    return found


def read_stream(store: logstore.Store, name: str) -> list[tuple[int, Envelope]]:
    stream, _found = store.open_stream(store, name, 0)
    out = []
    with stream:
        while stream.try_next():
            out.append((stream.offset(), stream.get()))
    return out


def read_global(store: logstore.Store) -> list[tuple[int, Envelope]]:
    out = []
    with store.open_global(store, 0) as g:
        while g.try_next():
            out.append((g.offset(), g.get()))
    return out


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "segments").glob("*.log"))


# -- erasure -----------------------------------------------------------------------------------


def test_delete_stream_then_compact_erases_it_from_the_active_segment(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        kept = []
        for i in range(40):
            other = Envelope.new("Kept", {"i": i})
            with store.transaction() as tx:
                store.append_messages(tx, "user-7", i, [marked(i)])
                store.append_messages(tx, "orders", i, [other])
            kept.append(other)
        assert segment_files(store_dir) == ["00000000000000000000.log"]
        store.delete_stream("user-7")
        assert markers_in_files(store_dir)  # removed, unreadable, but its bytes are still there
        before = read_global(store)
        report = store.compact()
        assert report.bytes_reclaimed > 0
        assert report.messages_removed == 40 and report.segments_rewritten == 1
        assert report.rolled is not None and report.rolled.endswith("00000000000000000000.log")
        assert report.erased and report.unreached == [] and report.lost_found == []
        assert markers_in_files(store_dir) == {}
        # Nothing readable changed; offsets are where they were; the store goes on in the new segment.
        assert read_global(store) == before
        assert [env for _o, env in read_stream(store, "orders")] == kept
        assert store.stream_info("user-7") == (40, 40, True)
        with store.transaction() as tx:
            store.append_messages(tx, "user-7", 40, [Envelope.new("Back", {})])
        assert read_stream(store, "user-7")[0][0] == 40
        assert store.compact().segments_rewritten == 0  # nothing left to erase, and no further roll
    assert markers_in_files(store_dir) == {}
    assert_verified(store_dir)
    with logstore.open(store_dir) as again:
        assert read_global(again)[: len(before)] == before


def test_truncating_1800_outbox_messages_on_a_small_store_erases_them(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        envs = [marked(i) for i in range(2000)]
        for i in range(0, 2000, 50):
            with store.transaction() as tx:
                store.append_messages(tx, "outbox", i, envs[i : i + 50])
        assert segment_files(store_dir) == ["00000000000000000000.log"]
        store.truncate_stream("outbox", 1800)
        globals_before = [g for g, _env in read_global(store)]
        report = store.compact()
        assert report.bytes_reclaimed > 0 and report.messages_removed == 1800 and report.erased
        found = markers_in_files(store_dir)
        assert set().union(*found.values()) == set(range(1800, 2000)), "a removed envelope survived"
        # The kept messages read back equal, at their old stream and global offsets.
        got = read_stream(store, "outbox")
        assert [o for o, _env in got] == list(range(1800, 2000))
        assert [env for _o, env in got] == envs[1800:]
        assert [g for g, _env in read_global(store)] == globals_before == list(range(1800, 2000))
    assert_verified(store_dir)
    with logstore.open(store_dir, readonly=True) as ro:
        assert [env for _o, env in read_stream(ro, "outbox")] == envs[1800:]


def test_compact_rolls_only_when_the_active_segment_holds_a_removed_message(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 0, [marked(i) for i in range(10)])
        report = store.compact()
        assert report.rolled is None and report.erased and report.bytes_reclaimed == 0
        assert segment_files(store_dir) == ["00000000000000000000.log"]
        store.truncate_stream("a", 5)
        assert store.compact().rolled is not None
        assert len(segment_files(store_dir)) == 2
        assert store.compact().rolled is None  # the new active segment holds nothing removed
        assert len(segment_files(store_dir)) == 2
    assert set().union(*markers_in_files(store_dir).values()) == set(range(5, 10))


def test_compact_without_roll_names_the_active_segment_it_left(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 0, [marked(i) for i in range(10)])
        store.truncate_stream("a", 4)
        report = store.compact(roll=False)
        assert report.rolled is None and report.segments_rewritten == 0 and not report.erased
        [left] = report.unreached
        assert left.path == str(store_dir / "segments" / "00000000000000000000.log")
        assert (left.messages, left.reason) == (4, REASON_NO_ROLL)
        assert "00000000000000000000.log: 4 removed message(s)" in str(left)
        assert markers_in_files(store_dir) == {"segments/00000000000000000000.log": set(range(10))}
        with pytest.raises(TypeError, match="roll"):
            store.compact(roll="no")  # type: ignore[arg-type]
        assert store.compact().erased
    assert set().union(*markers_in_files(store_dir).values()) == set(range(4, 10))


def test_the_report_names_removals_made_after_the_compaction_began(store_dir: Path) -> None:
    """Removals committed while the pass runs are left for the next one, and the report says where."""
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 0, [marked(i) for i in range(10)])
            store.append_messages(tx, "b", 0, [marked(100 + i) for i in range(6)])
        store.truncate_stream("a", 3)
        calls = []

        def meanwhile(done: int, total: int) -> None:
            # After the rolled segment was rewritten: remove more from it, and from the new active segment.
            calls.append((done, total))
            store.truncate_stream("b", 2)
            with store.transaction() as tx:
                store.append_messages(tx, "c", 0, [marked(200 + i) for i in range(5)])
            store.truncate_stream("c", 4)

        report = store.compact(meanwhile)
        assert calls == [(1, 1)]
        rolled, active = segment_files(store_dir)
        assert report.rolled == str(store_dir / "segments" / rolled)
        assert [(os.path.basename(u.path), u.messages, u.reason) for u in report.unreached] == [
            (rolled, 2, REASON_LATER),
            (active, 4, REASON_ACTIVE_LATER),
        ]
        assert not report.erased
        # The next pass reaches them: it rolls the active segment again.
        again = store.compact()
        assert again.erased and again.messages_removed == 6 and again.rolled is not None
    found = set().union(*markers_in_files(store_dir).values())
    assert found == set(range(3, 10)) | {102, 103, 104, 105, 204}


def test_the_report_names_lost_and_found_which_compaction_does_not_touch(store_dir: Path) -> None:
    store = logstore.open(store_dir, segment_size=SEGMENT, durability="none")
    with store.transaction() as tx:
        store.append_messages(tx, "a", 0, [marked(i) for i in range(3)])
    active = store._log.active
    path, end = active.path, active.end
    store._abandon()  # a crash: no clean checkpoint, so the next open scans the tail
    with open(path, "r+b") as f:  # a torn write after the last record
        f.seek(end)
        f.write(b"\x07" * 40)
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        lost = store.recovery_report.lost_found
        assert lost
        saved = {p: Path(p).read_bytes() for p in lost}
        store.truncate_stream("a", 3)
        report = store.compact()
        assert report.erased and report.lost_found == sorted(lost)
    assert {p: Path(p).read_bytes() for p in lost} == saved


# -- readers and writers during compaction ---------------------------------------------------------


def test_readers_and_writers_keep_working_while_the_active_segment_is_rolled_and_rewritten(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "gone", 0, [marked(i) for i in range(30)])
            store.append_messages(tx, "live", 0, [Envelope.new("L", {"i": i}) for i in range(30)])
        store.delete_stream("gone")
        # A reader part-way through the active segment, and one blocked at the end of the log.
        partway, _ = store.open_stream(store, "live", 0)
        for i in range(10):
            partway.next(timeout=TIMEOUT)
            assert partway.offset() == i
        tail = store.open_global(store, store.global_head)
        started, stop = threading.Event(), threading.Event()
        written: list[int] = []
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                n = 30
                while not stop.is_set() or n < 30 + 60:  # at least the 60 messages the reader waits for
                    with store.transaction() as tx:
                        store.append_messages(tx, "live", n, [Envelope.new("L", {"i": n})])
                    written.append(tx.global_offsets.start)  # type: ignore[union-attr]
                    n += 1
                    started.set()
                    if n >= 5000:
                        break
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                started.set()

        seen: list[int] = []

        def reader() -> None:
            try:
                while len(seen) < 60:
                    tail.next(timeout=TIMEOUT)
                    seen.append(tail.offset())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        assert started.wait(TIMEOUT)
        report = store.compact()
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in threads) and errors == []
        assert report.rolled is not None and report.messages_removed == 30 and report.erased
        assert seen == written[:60]
        # The reader that was part-way through the rolled segment reads on, across the swap.
        rest = []
        while partway.try_next():
            rest.append((partway.offset(), partway.get().message["i"]))
        assert rest == [(i, i) for i in range(10, 30 + len(written))]
        partway.close()
        tail.close()
    assert markers_in_files(store_dir) == {}
    assert_verified(store_dir)


# -- crash safety of roll + compaction --------------------------------------------------------------


def _erasure_workload() -> Workload:
    """Transactions that stay in the active segment, removals of their messages, then a compaction that must roll."""
    actions = []
    heads: dict[str, int] = {}
    for k in range(10):
        appends = []
        for stream in ("orders", "user-1", "outbox")[: 2 + k % 2]:
            appends.append((stream, heads.get(stream, 0), 2))
            heads[stream] = heads.get(stream, 0) + 2
        actions.append(Action("tx", tuple(appends)))
    actions += [
        Action("delete", stream="user-1"),
        Action("truncate", stream="outbox", before=6),
        Action("compact"),
        Action("tx", (("orders", heads["orders"], 1),)),
    ]
    return Workload(7, actions, {"segment_size": SMALL_SEGMENT, "checkpoint_bytes": 1 << 20})


def _erasure_ids(wl: Workload, actions: int) -> tuple[set[bytes], set[bytes]]:
    """The message ids (as stored: UUID strings) of the removed and of the kept messages of the first actions."""
    removed: set[bytes] = set()
    kept: set[bytes] = set()
    for k, action in enumerate(wl.actions[:actions]):
        for stream, offset, n in action.appends:
            for i, env in enumerate(envelopes(wl.seed, k, stream, offset, n)):
                gone = stream == "user-1" or (stream == "outbox" and offset + i < 6)
                (removed if gone else kept).add(env.message_id.encode())
    return removed, kept


def _ids_in_files(path: Path, ids: set[bytes]) -> set[bytes]:
    """The ids found in any file under ``path`` (lost+found aside)."""
    blobs = [p.read_bytes() for p in path.rglob("*") if p.is_file() and p.relative_to(path).parts[0] != "lost+found"]
    return {i for i in ids if any(i in b for b in blobs)}


def _roll_and_copy(sites: list[str]) -> tuple[int, int]:
    """The indexes of the compaction's roll (its rename) and of the creation of its first copy."""
    copy = sites.index("create:segment.compact")
    rolls = [i for i in range(copy) if sites[i] == "rename:segment.tmp"]
    assert len(rolls) >= 2, "the compaction did not roll the active segment (only the store's creation did)"
    return rolls[-1], copy


def test_every_crash_point_of_rolling_and_compacting_the_active_segment_recovers(scratch: Path) -> None:  # noqa: F811
    wl = _erasure_workload()
    campaign = Campaign()
    ops = enumerate_crashes(wl, scratch / "work", scratch, campaign, every_mode=True, draws=1)
    sites = [op.site for op in ops]
    roll, copy = _roll_and_copy(sites)
    assert roll < copy < sites.index("rename:segment.compact")
    _report(campaign)
    assert campaign.states >= len(ops)


def test_a_crash_between_the_roll_and_the_rewrite_loses_nothing_and_the_next_compaction_erases(
    scratch: Path,  # noqa: F811
) -> None:
    wl = _erasure_workload()
    removed, kept = _erasure_ids(wl, len(wl.actions))
    counter = FaultFS(_fresh(scratch / "count"))
    assert run_workload(scratch / "count", wl, counter, Progress()) is None
    assert _ids_in_files(scratch / "count", removed | kept) == kept
    roll, copy = _roll_and_copy([op.site for op in counter.ops])
    campaign = Campaign()
    # Operations are numbered from 1: crash before each one from the roll's rename to the copy's creation.
    for n in range(roll + 1, copy + 2):
        path = _fresh(scratch / f"crash-{n}")
        fs = FaultFS(path, crash_at=n, crash_when="before")
        progress = Progress()
        stopped = run_workload(path, wl, fs, progress)
        assert isinstance(stopped, Crash | logstore.StoreFailedError), (n, stopped)
        assert wl.actions[progress.submitted - 1].kind == "compact", n
        for mode in MODES:
            files = fs.image_files(mode, rng_for("erasure", n, mode))
            where = f"crash before operation {n} ({counter.ops[n - 1].site}) {mode}"
            check_image(campaign, files, wl, wl.lower_bound(progress.acked, mode), progress.submitted, where, scratch)
            # Whatever the crash kept, the next compaction erases every removed envelope, and only those.
            removed, kept = _erasure_ids(wl, progress.submitted)
            image = scratch / f"image-{n}-{mode}"
            write_image(image, files)
            with logstore.open(image, **wl.options) as store:
                head = store.head("user-1")
                assert store.stream_info("user-1") == (head, head, True)
                assert store.compact().erased
            assert _ids_in_files(image, removed | kept) == kept, where
            assert_verified(image)
            shutil.rmtree(image)
        shutil.rmtree(path)
    _report(campaign)
    assert campaign.states == len(MODES) * (copy - roll + 1)


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path
