"""Several writer processes on one store: one global order, offsets checked across processes, live reads of
each other's commits, the creation race, the takeover of a writer that died holding the write lock,
maintenance beside writers, and the clean-close rule.

Every writer is a process of its own (tests/processes/writer_child.py), driven through JSON lines on its
stdin and stdout. Processes that must start something at the same instant wait at a *gate*: a pipe whose
read end each inherited; the test closes the write end and every one of them reads its end at once. A
reader says ``waiting`` right before it blocks in ``next()``; where the test needs it asleep, it also waits
until every thread of the process sleeps in the kernel (``/proc/<pid>/task/*/stat``). No sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.verify import verify
from tests.helpers import SMALL_SEGMENT
from tests.processes.test_tailing import Proc as TailingProc

WAIT = 30.0
"""Seconds within which anything that should happen promptly happens; reached only when something hangs."""


class Gate:
    """A pipe: processes started with it wait on its read end; :meth:`open` lets them all go at once."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def open(self) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def close(self) -> None:
        self.open()
        if self.r >= 0:
            os.close(self.r)
            self.r = -1


class Proc(TailingProc):
    """A writer process (tests/processes/writer_child.py) and the lines it prints."""

    MODULE = "tests.processes.writer_child"
    PROGRESS = ("waiting", "gated", "lock-open")

    def __init__(self, tmp_path: Path, name: str, gate: Gate | None, env: dict[str, str] | None) -> None:
        fds = () if gate is None else (gate.r,)
        super().__init__(tmp_path, name, args=[str(fd) for fd in fds], pass_fds=fds, env=env)

    def died(self) -> int:
        """Wait for the process to end by itself (a kill point); its exit status."""
        try:
            return self.popen.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.fail(f"still running after {WAIT} s")


Spawn = Callable[..., Proc]


@pytest.fixture
def spawn(store_dir: Path, tmp_path: Path) -> Iterator[Spawn]:
    """Start writer processes; every one still running is stopped before ``store_dir`` is verified."""
    procs: list[Proc] = []
    gates: list[Gate] = []

    def start(name: str, gate: Gate | None = None, env: dict[str, str] | None = None) -> Proc:
        if gate is not None and gate not in gates:
            gates.append(gate)
        proc = Proc(tmp_path, name, gate, env)
        procs.append(proc)
        return proc

    yield start
    for gate in gates:
        gate.open()
    for proc in procs:
        proc.finish()
    for gate in gates:
        gate.close()


def opened(spawn: Spawn, path: Path, name: str, gate: Gate | None = None, **options: Any) -> Proc:
    proc = spawn(name, gate)
    proc.call("open", path=str(path), options=options)
    return proc


def msg(who: Any, i: int, pad: int = 0) -> dict[str, Any]:
    return {"w": who, "i": i, "n": pad, "pad": "x" * pad}


def read_all(path: Path) -> tuple[list[tuple[int, str, int, Any]], dict[str, list[tuple[int, str, int, Any]]]]:
    """The whole store read in this process: the global log and every stream, as (goff, stream, offset, message)."""

    def rec(reader: Any) -> tuple[int, str, int, Any]:
        m = reader.get().message
        if isinstance(m, dict):
            m = {k: v for k, v in m.items() if k not in ("pad", "n")}
        return (reader.global_offset(), reader.stream_name(), reader.stream_offset(), m)

    with logstore.open(path, readonly=True, durability="none") as store:
        log = []
        with store.global_stream(0) as everything:
            while everything.try_next():
                log.append(rec(everything))
        streams = {}
        for name in store.stream_names():
            with store.stream(name, 0) as reader:
                recs = []
                while reader.try_next():
                    recs.append(rec(reader))
                streams[name] = recs
    return log, streams


def assert_clean(path: Path) -> None:
    result = verify(os.fspath(path))
    assert result.ok, "verify found problems:\n" + "\n".join(str(p) for p in result.problems)


def checkpoint_clean(path: Path) -> bool:
    ckpt, _ = Checkpoint.decode((path / "CHECKPOINT").read_bytes(), None)
    return ckpt.clean


# -- one global order --------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["fsync", "none"])
def test_writer_processes_share_one_gap_free_order(store_dir: Path, spawn: Spawn, durability: str) -> None:
    writers, count, pad = 3, 200, 300
    gate = Gate()
    procs = [
        opened(spawn, store_dir, f"writer-{w}", gate, durability=durability, segment_size=SMALL_SEGMENT)
        for w in range(writers)
    ]
    for w, proc in enumerate(procs):
        proc.send("mixed", who=w, count=count, pad=pad, gate=True)
    for proc in procs:
        proc.expect("gated")
    gate.open()
    commits = {w: proc.result()["commits"] for w, proc in enumerate(procs)}
    for proc in procs:
        proc.stop()

    total = writers * count
    expected: dict[int, tuple[str, int | None, dict[str, Any]]] = {}
    for w, done in commits.items():
        assert len(done) == count
        for start, stop, stream, offset, i in done:
            assert stop == start + 1, f"writer {w}, commit {i}: range {start}..{stop} is not one offset"
            assert start not in expected, f"global offset {start} acknowledged twice"
            expected[start] = (stream, offset, {"w": w, "i": i})
    assert sorted(expected) == list(range(total)), "the acknowledged ranges are not exactly 0 .. total - 1"
    segments = sorted((store_dir / "segments").glob("*.log"))
    assert len(segments) > 2, "no segment rolled: the test wrote too little"

    log, streams = read_all(store_dir)
    assert [r[0] for r in log] == list(range(total))
    for goff, stream, soff, m in log:
        want_stream, want_offset, want_msg = expected[goff]
        assert (stream, m) == (want_stream, want_msg), f"global offset {goff}"
        if want_offset is not None:
            assert soff == want_offset, f"global offset {goff}: at {soff}, asked for {want_offset}"
    names = {f"own-{w}" for w in range(writers)} | {"shared-0", "shared-1"}
    assert set(streams) == names
    for name, recs in streams.items():
        assert [r[2] for r in recs] == list(range(len(recs))), f"{name}: offsets not contiguous from 0"
        assert recs == [r for r in log if r[1] == name], f"{name}: differs from the global log"
    assert sum(len(r) for r in streams.values()) == total
    assert not (store_dir / "lost+found").exists()
    assert_clean(store_dir)


# -- offsets checked across processes ----------------------------------------------------------------


def test_an_offset_committed_in_another_process_conflicts(store_dir: Path, spawn: Spawn) -> None:
    a = opened(spawn, store_dir, "a")
    b = opened(spawn, store_dir, "b")  # open before a's commit: its view of "x" is empty
    assert a.call("commit", appends=[["x", 0, [msg("a", 0)]]])["range"] == [0, 1]

    got = b.call("commit", appends=[["b-only", 0, [msg("b", 0)]], ["x", 0, [msg("b", 1)]]])
    assert got.get("raised") == "OffsetConflictError", got
    info = b.call("info")
    assert info["global_head"] == 1
    assert info["heads"] == {"x": 1}, "a part of the conflicting transaction is visible"

    assert b.call("commit", appends=[["b-only", 0, [msg("b", 0)]], ["x", 1, [msg("b", 1)]]])["range"] == [1, 3]
    a.stop()
    b.stop()
    log, _ = read_all(store_dir)
    assert log == [
        (0, "x", 0, {"w": "a", "i": 0}),
        (1, "b-only", 0, {"w": "b", "i": 0}),
        (2, "x", 1, {"w": "b", "i": 1}),
    ]


def test_a_conflict_found_at_commit_writes_nothing(store_dir: Path, spawn: Spawn) -> None:
    a = opened(spawn, store_dir, "a")
    b = opened(spawn, store_dir, "b")
    # b's appends pass its own check (it knows of no "x" yet); a commits first; b's commit must fail whole.
    assert b.call("prepare", appends=[["b-only", 0, [msg("b", 0)]], ["x", 0, [msg("b", 1)]]]) == {"ok": True}
    assert a.call("commit", appends=[["x", 0, [msg("a", 0)]]])["range"] == [0, 1]
    got = b.call("commit_prepared")
    assert got.get("raised") == "OffsetConflictError", got
    assert got["where"] == "commit"
    assert b.call("info")["heads"] == {"x": 1}
    assert b.call("commit", appends=[["x", 1, [msg("b", 2)]]])["range"] == [1, 2]
    a.stop()
    b.stop()
    log, streams = read_all(store_dir)
    assert log == [(0, "x", 0, {"w": "a", "i": 0}), (1, "x", 1, {"w": "b", "i": 2})]
    assert "b-only" not in streams


def test_two_processes_racing_for_each_offset_win_it_once(store_dir: Path, spawn: Spawn) -> None:
    rounds = 25
    a = opened(spawn, store_dir, "a")
    b = opened(spawn, store_dir, "b")
    winners: dict[int, str] = {}
    # Lockstep: both prepare "y" at offset k (neither knows of a commit there), then both commit at once.
    for k in range(rounds):
        for who, proc in (("a", a), ("b", b)):
            assert proc.call("prepare", appends=[["y", k, [msg(who, k)]]]) == {"ok": True}
        a.send("commit_prepared")
        b.send("commit_prepared")
        got = {"a": a.result(), "b": b.result()}
        won = [who for who, r in got.items() if "range" in r]
        assert len(won) == 1, f"offset {k}: {got}"
        loser = "b" if won == ["a"] else "a"
        assert got[loser]["raised"] == "OffsetConflictError" and got[loser]["where"] == "commit", got
        winners[k] = won[0]

    # Free-running: both try every offset from `rounds` on as fast as they can, started at one instant.
    a.stop()
    b.stop()
    gate = Gate()
    a = opened(spawn, store_dir, "a2", gate)
    b = opened(spawn, store_dir, "b2", gate)
    count = 150
    for who, proc in (("a", a), ("b", b)):
        proc.send("race", who=who, stream="z", count=count, gate=True)
    a.expect("gated")
    b.expect("gated")
    gate.open()
    race = {"a": a.result(), "b": b.result()}
    won_z = {who: {k for k, _ in r["won"]} for who, r in race.items()}
    assert won_z["a"].isdisjoint(won_z["b"]), "an offset was won twice"
    assert won_z["a"] | won_z["b"] == set(range(count)), "an offset was won by neither"
    for who, r in race.items():
        assert set(r["lost"]) == set(range(count)) - won_z[who]
    a.stop()
    b.stop()

    _, streams = read_all(store_dir)
    assert [(r[2], r[3]["w"]) for r in streams["y"]] == sorted(winners.items())
    goffs = {who: dict(r["won"]) for who, r in race.items()}
    for goff, _, k, m in streams["z"]:
        assert m == {"w": m["w"], "i": k}
        assert goffs[m["w"]][k] == goff
    assert [r[2] for r in streams["z"]] == list(range(count))
    assert_clean(store_dir)


# -- live reads of another writer's commits ------------------------------------------------------------


def test_a_blocked_reader_in_a_writer_process_wakes_on_another_process_commit(store_dir: Path, spawn: Spawn) -> None:
    a = opened(spawn, store_dir, "a")
    b = opened(spawn, store_dir, "b")
    b.call("commit", appends=[["mine", 0, [msg("b", 0)]]])
    b.call("reader", rid="g", offset=1)
    b.call("reader", rid="s", offset=1, stream="theirs")  # waits past the commit that wakes "g"
    for rid in ("g", "s"):
        b.send("next", rid=rid, timeout=10)
        b.expect("waiting")
        b.wait_asleep()
        committed = time.monotonic()
        k = 0 if rid == "g" else 1
        assert a.call("commit", appends=[["theirs", k, [msg("a", k)]]])["range"] == [1 + k, 2 + k]
        got = b.result()
        assert got.get("rec") == [1 + k, "theirs", k, {"w": "a", "i": k}], got
        assert time.monotonic() - committed < 5
    a.stop()
    b.stop()


def test_a_truncation_in_one_writer_applies_at_once_to_readers_in_another(store_dir: Path, spawn: Spawn) -> None:
    a = opened(spawn, store_dir, "a")
    b = opened(spawn, store_dir, "b")
    a.call("commit", appends=[["s", 0, [msg("a", i) for i in range(10)]]])
    b.call("reader", rid="s", offset=0, stream="s")
    b.call("reader", rid="g", offset=0)
    taken = [b.call("next", rid="s", timeout=5)["rec"][2] for _ in range(3)]
    assert taken == [0, 1, 2]
    assert b.call("next", rid="g", timeout=5)["rec"][0] == 0

    a.call("truncate", stream="s", before=7)  # returned: no reader anywhere may return offsets below 7 now
    got = b.call("next", rid="s", timeout=5)
    assert got.get("rec") == [7, "s", 7, {"w": "a", "i": 7}], got
    got = b.call("next", rid="g", timeout=5)
    assert got.get("rec") == [7, "s", 7, {"w": "a", "i": 7}], got
    b.call("reader", rid="fresh", offset=0, stream="s")
    assert [r[2] for r in b.call("drain", rid="fresh")["recs"]] == [7, 8, 9]
    a.stop()
    b.stop()


# -- creating a store ---------------------------------------------------------------------------------


def test_processes_creating_one_store_at_once_make_one_store(store_dir: Path, spawn: Spawn) -> None:
    # Pinned interleaving: creator 0 holds LOCK exclusively in the middle of creating the store (before it
    # makes segments/); the three others have looked at the directory (no store yet) and gone for LOCK.
    gate = Gate()
    procs = [spawn(f"creator-{i}", gate) for i in range(4)]
    options = {"segment_size": SMALL_SEGMENT}
    procs[0].send("open", path=str(store_dir), options=options, signal=True, hold=True)
    procs[0].expect("lock-open")
    procs[0].expect("held")
    for proc in procs[1:]:
        proc.send("open", path=str(store_dir), options=options, signal=True)
        proc.expect("lock-open")
    gate.open()  # creator 0 finishes the store (milliseconds) and keeps it open
    opened_ok = {}
    for i, proc in enumerate(procs):
        while True:
            got = proc.line()
            if "ok" in got:
                break
        opened_ok[i] = got
    failed = {i: f"{got['error']}: {got['message']}" for i, got in opened_ok.items() if not got["ok"]}
    assert not failed, f"opens beside the store's creation failed: {failed}"
    ranges = {}
    for i, proc in enumerate(procs):
        got = proc.call("commit", appends=[["all", None, [msg(i, 0)]], [f"own-{i}", 0, [msg(i, 1)]]])
        ranges[i] = got["range"]
    for proc in procs:
        proc.stop()
    assert sorted(r[0] for r in ranges.values()) == [0, 2, 4, 6]
    assert sorted((store_dir / "segments").glob("*.log")) == [store_dir / "segments" / f"{0:020d}.log"]
    assert not (store_dir / "lost+found").exists()
    log, streams = read_all(store_dir)
    for i, (start, stop) in ranges.items():
        assert [(r[0], r[1], r[3]) for r in log[start:stop]] == [
            (start, "all", {"w": i, "i": 0}),
            (start + 1, f"own-{i}", {"w": i, "i": 1}),
        ]
    assert [r[2] for r in streams["all"]] == [0, 1, 2, 3]
    assert len(log) == 8
    assert_clean(store_dir)


# -- a writer that died holding the write lock ----------------------------------------------------------


def test_a_writer_killed_mid_write_is_taken_over_by_a_live_writer(store_dir: Path, spawn: Spawn) -> None:
    dies_at = 4  # the 4th segment pwrite of the doomed process: its 4th commit, torn in half
    b = opened(spawn, store_dir, "b")
    acks_b: list[dict[str, Any]] = []
    b.call("series", who="b", stream="b", first=0, count=3, into=acks_b)
    a = spawn("a", env={"LOGSTORE_KILL_AT": f"pwrite.torn:{dies_at}:segments/"})
    a.call("open", path=str(store_dir), options={})
    a.send("series", who="a", stream="a", first=0, count=10, pad=3000, fill="Z")
    assert a.died() == -signal.SIGKILL
    acks_a = [line for line in a.remaining_lines() if "ack" in line]
    assert f"SIGKILL torn pwrite #{dies_at}" in a.stderr()
    assert len(acks_a) == dies_at - 1

    b.call("series", who="b", stream="b", first=3, count=3, into=acks_b)  # takes over, then writes
    manifests = [json.loads(p.read_text()) for p in sorted((store_dir / "lost+found").glob("*.json"))]
    assert len(manifests) == 1, manifests
    manifest = manifests[0]
    assert f"process {a.pid}" in manifest["reason"], manifest
    assert manifest["source"].startswith("segments/")
    saved = next((store_dir / "lost+found").glob("*.bin")).read_bytes()
    assert len(saved) == manifest["length"] > 0
    assert f"a-{dies_at - 1}".encode() in saved, "lost+found does not hold the torn commit"
    assert b"Z" * 1000 in saved
    b.stop()

    log, _ = read_all(store_dir)
    acked = sorted(
        (ack["ack"][0], ack["stream"], {k: v for k, v in ack["msg"].items() if k not in ("n",)})
        for ack in acks_a + acks_b
    )
    assert [(r[0], r[1], r[3]) for r in log] == acked, "an acknowledged commit is lost or one not acknowledged kept"
    assert [r[0] for r in log] == list(range(len(log)))
    assert_clean(store_dir)


@pytest.mark.parametrize("kill_at", ["before_rename_segment:1", "after_rename_segment:1"])
def test_a_writer_killed_in_a_roll_is_taken_over_by_a_live_writer(store_dir: Path, spawn: Spawn, kill_at: str) -> None:
    b = opened(spawn, store_dir, "b", segment_size=SMALL_SEGMENT)
    acks: list[dict[str, Any]] = []
    b.call("series", who="b", stream="b", first=0, count=2, into=acks)
    a = spawn("a", env={"LOGSTORE_KILL_AT": kill_at})
    a.call("open", path=str(store_dir), options={"segment_size": SMALL_SEGMENT})
    a.send("series", who="a", stream="a", first=0, count=1000, pad=1000)  # rolls within 64 KiB
    assert a.died() == -signal.SIGKILL
    acks += [line for line in a.remaining_lines() if "ack" in line]
    assert f"SIGKILL {kill_at.partition('_')[0]} rename (rename_segment)" in a.stderr()
    names_at_death = sorted(p.name for p in (store_dir / "segments").iterdir() if ".log" in p.name)
    assert len(names_at_death) == 2 and names_at_death[0] == f"{0:020d}.log", names_at_death
    assert names_at_death[1].endswith(".log.tmp" if kill_at.startswith("before") else ".log"), names_at_death

    b.call("series", who="b", stream="b", first=2, count=3, into=acks)  # takes over, then writes
    # b's own commits roll too (the active segment is full), to a segment of the same first offset: a new file.
    segments = sorted(p.name for p in (store_dir / "segments").iterdir() if ".log" in p.name)
    assert segments == [f"{0:020d}.log", names_at_death[1].removesuffix(".tmp")], segments
    manifests = [json.loads(p.read_text()) for p in sorted((store_dir / "lost+found").glob("*.json"))]
    if kill_at.startswith("after"):  # a named segment past the tail: saved whole, then removed
        assert len(manifests) == 1, manifests
        assert f"process {a.pid}" in manifests[0]["reason"]
        assert manifests[0]["source"] == f"segments/{names_at_death[-1]}"
    else:  # an unnamed roll's file: removed; nothing was written past the tail
        assert manifests == []
    b.stop()

    log, _ = read_all(store_dir)
    acked = sorted((ack["ack"][0], ack["stream"], ack["msg"]) for ack in acks)
    assert [(r[0], r[1], r[3]) for r in log] == acked, "an acknowledged commit is lost or one not acknowledged kept"
    assert_clean(store_dir)


def test_a_writer_killed_right_after_taking_the_write_lock_blocks_no_one(store_dir: Path, spawn: Spawn) -> None:
    b = opened(spawn, store_dir, "b")
    b.call("commit", appends=[["b", 0, [msg("b", 0)]]])
    # b has the store to itself until another opener asks to join (it then shares it for good): let one in
    # first, so that the opens counted below take the same locks (no wait for the dead-man switch).
    opened(spawn, store_dir, "first joiner").stop()
    never = "lock.after:1000000:CONTROL"
    probe = spawn("probe", env={"LOGSTORE_KILL_AT": never})
    probe.call("open", path=str(store_dir), options={})
    at_open = probe.call("kill_counts")["sites"]["lock"]
    probe.call("commit", appends=[["probe", 0, [msg("probe", 0)]]])
    per_commit = probe.call("kill_counts")["sites"]["lock"] - at_open
    # durability="fsync": the write lock for the turn, then the flush lock for the sync after it.
    assert per_commit == 2, f"a commit took {per_commit} locks on CONTROL, the write and flush locks were expected"
    probe.stop()

    a = spawn("a", env={"LOGSTORE_KILL_AT": f"lock.after:{at_open + 1}:CONTROL"})
    a.call("open", path=str(store_dir), options={})
    a.send("commit", appends=[["a", 0, [msg("a", 0)]]])
    assert a.died() == -signal.SIGKILL
    assert f"SIGKILL after lock #{at_open + 1}" in a.stderr()

    assert b.call("commit", appends=[["b", 1, [msg("b", 1)]]])["range"] == [2, 3]
    b.stop()
    log, streams = read_all(store_dir)
    assert [(r[0], r[1], r[2]) for r in log] == [(0, "b", 0), (1, "probe", 0), (2, "b", 1)]
    assert "a" not in streams
    assert_clean(store_dir)


# -- maintenance beside writers -----------------------------------------------------------------------


def test_retention_and_compaction_in_one_writer_while_another_writes_and_reads(store_dir: Path, spawn: Spawn) -> None:
    retaining: dict[str, Any] = {
        "durability": "none",
        "segment_size": SMALL_SEGMENT,
        "checkpoint_bytes": 16 * 1024,
        "retention_bytes": 192 * 1024,
    }
    a = opened(spawn, store_dir, "a", **retaining)
    b = opened(spawn, store_dir, "b", durability="none", segment_size=SMALL_SEGMENT)
    b.call("reader", rid="g", offset=0)
    b.call("read_in_thread", name="g", rid="g")
    acks: list[dict[str, Any]] = []
    start_seen = []
    for round_no in range(6):
        a.send("series", who="a", stream=f"a{round_no % 2}", first=round_no * 60, count=60, pad=900)
        b.call("series", who="b", stream="b", first=round_no * 5, count=5, pad=100, into=acks)
        if round_no == 3:
            b.call("compact")  # while a commits
        a.result(acks)
        start_seen.append(b.call("info")["log_start"])
    b.call("series", who="b", stream="b", first=100, count=1, end=True, into=acks)
    read = b.call("join", name="g")
    assert "raised" not in read, read["raised"]
    assert start_seen[-1] > 0, "retention dropped nothing: the test wrote too little"
    assert start_seen == sorted(start_seen)

    log = {ack["ack"][0]: (ack["stream"], {k: v for k, v in ack["msg"].items() if k != "n"}) for ack in acks}
    recs = read["recs"]
    assert recs[-1][3]["end"]
    previous = None
    for goff, stream, _soff, m, log_start in recs:
        assert goff >= log_start, f"read global offset {goff} below log_start {log_start}"
        assert (stream, m) == log[goff]
        if previous is not None:
            skipped = [g for g in log if previous < g < goff]
            # Only what retention had dropped before this next() may be passed over.
            assert all(g < log_start for g in skipped), f"skipped {skipped} between {previous} and {goff}"
        previous = goff
    a.stop()
    b.stop()
    assert_clean(store_dir)


def test_compaction_in_one_writer_while_another_commits(store_dir: Path, spawn: Spawn) -> None:
    a = opened(spawn, store_dir, "a", segment_size=SMALL_SEGMENT, durability="none")
    b = opened(spawn, store_dir, "b", segment_size=SMALL_SEGMENT, durability="none")
    c = opened(spawn, store_dir, "c", segment_size=SMALL_SEGMENT, durability="none")  # open, idle in the compaction
    acks: list[dict[str, Any]] = []
    b.call("series", who="b", stream="gone", first=0, count=150, pad=900, into=acks)
    b.call("truncate", stream="gone", before=140)
    c.call("series", who="c", stream="c", first=0, count=1, into=acks)  # c catches up with b's segments
    a.send("series", who="a", stream="a", first=0, count=200, pad=500)
    assert b.call("compact")["erased"] is True  # while a commits
    a.result(acks)
    b.call("series", who="b", stream="gone", first=150, count=2, into=acks)
    c.call("series", who="c", stream="c", first=1, count=1, into=acks)
    for proc in (a, b, c):
        proc.call("close")
        proc.stop()
    log, streams = read_all(store_dir)
    assert [r[2] for r in streams["gone"]] == list(range(140, 152))
    assert [r[2] for r in streams["a"]] == list(range(200))
    by_goff = {r[0]: (r[1], r[3]) for r in log}
    for ack in acks:
        if ack["stream"] == "gone" and ack["msg"]["i"] < 140:
            assert ack["ack"][0] not in by_goff
        else:
            assert by_goff[ack["ack"][0]] == (ack["stream"], {k: v for k, v in ack["msg"].items() if k != "n"})
    assert_clean(store_dir)


# -- closing ------------------------------------------------------------------------------------------


def test_only_the_last_writer_to_close_writes_a_clean_checkpoint(store_dir: Path, spawn: Spawn) -> None:
    a = opened(spawn, store_dir, "a")
    b = opened(spawn, store_dir, "b")
    a.call("commit", appends=[["a", 0, [msg("a", 0)]]])
    b.call("commit", appends=[["b", 0, [msg("b", 0)]]])
    a.call("close")
    assert not checkpoint_clean(store_dir), "a clean checkpoint while another writer has the store open"
    assert b.call("commit", appends=[["b", 1, [msg("b", 1)]]])["range"] == [2, 3]
    assert not checkpoint_clean(store_dir)
    b.call("close")
    assert checkpoint_clean(store_dir)
    a.stop()
    b.stop()
    log, _ = read_all(store_dir)
    assert [(r[0], r[1], r[2]) for r in log] == [(0, "a", 0), (1, "b", 0), (2, "b", 1)]
