"""Read-only stores in other processes follow the writing process live (logstore/embedded/follow.py).

Every writer and reader here is a process of its own (tests/processes/worker.py), driven through lines
on its stdin and stdout: a reader says ``waiting`` right before it blocks in ``next()``, a writer prints
each ``commit()`` once it has returned. Where a test needs a reader to be asleep (not merely about to
call ``next()``), it also waits until every thread of the reader process sleeps in the kernel
(``/proc/<pid>/task/*/stat``). Times are asserted only as generous bounds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.helpers import ROOT, child_env
from tests.processes.worker import FOLLOWED, plain, plan

WAIT = 30.0
"""Seconds within which anything that should happen promptly happens; reached only when something hangs."""
SEED = 20240611


def worker_env() -> dict[str, str]:
    """A worker's environment: this checkout's logstore, and numpy's BLAS without a thread pool.

    OpenBLAS starts a pool thread at import that spins for a while before it sleeps (tens of ms of CPU
    in a worker's first seconds, nothing to do with logstore); the idle-CPU test measures the process.
    """
    return {**child_env(), "OPENBLAS_NUM_THREADS": "1"}


class Proc:
    """A worker process (tests/processes/worker.py, or ``MODULE`` of a subclass) and the lines it prints."""

    MODULE = "tests.processes.worker"
    PROGRESS: tuple[str, ...] = ("waiting", "reading")
    """The ``at`` of lines a command may print before its result (``result`` skips them)."""

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        *,
        args: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.err_path = tmp_path / f"{name}.stderr"
        with open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", self.MODULE, *args],
                cwd=ROOT,
                env={**worker_env(), **(env or {})},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                pass_fds=pass_fds,
            )
        self._buf = b""
        self.pid: int = self.line()["pid"]

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def fail(self, what: str) -> NoReturn:
        pytest.fail(f"{self.name} (pid {self.popen.pid}): {what}\n--- its stderr:\n{self.stderr()}")

    def send(self, op: str, **args: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.popen.stdin.flush()

    def _fill(self, deadline: float) -> bool:
        """Read what the process printed, until ``deadline``; whether anything came."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
        if not ready:
            return False
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            self.popen.wait(WAIT)
            self.fail(f"exited with status {self.popen.returncode} before it printed a whole line")
        self._buf += chunk
        return True

    def line(self, timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if not self._fill(deadline) and time.monotonic() >= deadline:
                self.fail(f"printed no line within {timeout} s")
        raw, _, self._buf = self._buf.partition(b"\n")
        out: dict[str, Any] = json.loads(raw)
        return out

    def quiet_for(self, seconds: float) -> bool:
        """Whether the process prints nothing for ``seconds`` (a negative check: nothing must happen)."""
        return b"\n" not in self._buf and not self._fill(time.monotonic() + seconds)

    def expect(self, at: str) -> dict[str, Any]:
        got = self.line()
        if got.get("at") != at:
            self.fail(f"expected {at!r}, got {got!r}")
        return got

    def result(self, steps: list[dict[str, Any]] | None = None, timeout: float = WAIT) -> dict[str, Any]:
        """The command's last line (``ok``); the lines before it go to ``steps``. A failed command fails the test."""
        while True:
            got = self.line(timeout)
            if "ok" in got:
                if not got["ok"]:
                    self.fail(f"{got['error']}: {got['message']}\n{got['trace']}")
                return got
            if steps is not None:
                steps.append(got)
            elif got.get("at") not in self.PROGRESS:
                self.fail(f"unexpected line {got!r}")

    def call(
        self, op: str, *, into: list[dict[str, Any]] | None = None, wait: float = WAIT, **args: Any
    ) -> dict[str, Any]:
        """Send command ``op`` with ``args``; its result (the lines before it go to ``into``)."""
        self.send(op, **args)
        return self.result(into, wait)

    def wait_asleep(self, threads: int = 1) -> None:
        """Until every thread of the process (at least ``threads`` of them) sleeps in the kernel.

        Polls ``/proc``: a condition, not a delay. A reader that said ``waiting`` is then blocked for sure.
        """
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            states = []
            for task in os.listdir(f"/proc/{self.pid}/task"):
                try:
                    with open(f"/proc/{self.pid}/task/{task}/stat") as f:
                        states.append(f.read().rsplit(")", 1)[1].split()[0])
                except FileNotFoundError:
                    continue  # a thread that just ended
            if len(states) >= threads and all(s == "S" for s in states):
                return
            time.sleep(0.005)
        self.fail(f"its threads did not all go to sleep within {WAIT} s")

    def stop(self) -> None:
        """Ask it to close its store and exit; it must exit cleanly."""
        if self.popen.poll() is None:
            self.send("exit")
        try:
            code = self.popen.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.kill()
            self.fail(f"did not exit within {WAIT} s")
        if code != 0:
            self.fail(f"exited with status {code}")

    def remaining_lines(self) -> list[dict[str, Any]]:
        """After the process died: every whole line it printed that was not read yet."""
        assert self.popen.poll() is not None and self.popen.stdout is not None
        self._buf += self.popen.stdout.read()
        lines, _, self._buf = self._buf.rpartition(b"\n")
        return [json.loads(raw) for raw in lines.split(b"\n") if raw]

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(WAIT)

    def finish(self) -> None:
        """Teardown: exit if it still runs (killed if it does not), and let go of the pipes."""
        if self.popen.poll() is None:
            try:
                self.send("exit")
                self.popen.wait(WAIT)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def spawn(store_dir: Path, tmp_path: Path) -> Iterator[Callable[[str], Proc]]:
    """Start worker processes; every one still running is stopped before ``store_dir`` is verified."""
    procs: list[Proc] = []

    def start(name: str) -> Proc:
        proc = Proc(tmp_path, name)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.finish()


# -- helpers -------------------------------------------------------------------------------------------


def open_writer(spawn: Callable[[str], Proc], path: Path, name: str = "writer", **options: Any) -> Proc:
    gated = options.pop("gated", False)
    proc = spawn(name)
    proc.call("open", path=str(path), options=options, gated=gated)
    return proc


def open_reader(spawn: Callable[[str], Proc], path: Path, name: str = "reader", **options: Any) -> Proc:
    """A read-only store in a process of its own; ``options`` for ``logstore.open`` (its ``durability`` says
    how far it follows: ``"fsync"``, the default, only what the writer synced)."""
    proc = spawn(name)
    proc.call("open", path=str(path), options={"readonly": True, **options})
    return proc


def commits(
    writer: Proc, first: int, count: int, *, who: int = 1, pad: int = 0, end: bool = False
) -> list[dict[str, Any]]:
    """Have ``writer`` commit planned transactions ``first`` .. ``first + count - 1``; their acks."""
    acks: list[dict[str, Any]] = []
    writer.call("commits", into=acks, seed=SEED, writer=who, first=first, count=count, pad=pad, end=end)
    assert len(acks) == count and all("ack" in a for a in acks)
    return acks


def log_of(acks: list[dict[str, Any]]) -> dict[int, list[Any]]:
    """The records the acknowledged transactions put in the log: [global offset, stream, stream offset, message]
    by global offset (a transaction's messages take its global offsets in the order it appended them)."""
    out: dict[int, list[Any]] = {}
    for ack in acks:
        goff, stop = ack["ack"]
        for stream, head, msgs in ack["appends"]:
            for i, msg in enumerate(msgs):
                out[goff] = [goff, stream, head + i, msg]
                goff += 1
        assert goff == stop, f"transaction {ack['tx']} took {ack['ack']}, its appends {goff - ack['ack'][0]} offsets"
    return out


def inside(heads: set[int], acks: list[dict[str, Any]]) -> list[tuple[int, list[int]]]:
    """The ``global_head`` values in ``heads`` that fall inside an acknowledged transaction, with it.

    Between transactions, truncations and retention add records of their own to the global log
    (readers pass over them), so a head may also be past such a record: only inside is wrong.
    """
    return [(h, a["ack"]) for a in acks for h in sorted(heads) if a["ack"][0] < h < a["ack"][1]]


def planned(who: int, tx: int, pad: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Transaction ``tx`` of writer ``who`` as (stream, message) in log order."""
    return [(stream, plain(m)) for stream, msgs in plan(SEED, who, tx, pad) for m in msgs]


# -- waking ------------------------------------------------------------------------------------------


def test_a_next_blocked_in_another_process_wakes_on_a_commit(store_dir: Path, spawn: Callable[[str], Proc]) -> None:
    writer = open_writer(spawn, store_dir)
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="g", offset=0)
    reader.send("next", rid="g", timeout=30)
    reader.expect("waiting")
    reader.wait_asleep(threads=2)  # the main thread in next() and the follower's watcher
    committed_at = time.monotonic()
    assert writer.call("commit", appends=[["a", 0, [{"hello": "world"}]]])["range"] == [0, 1]
    got = reader.result()
    arrived = time.monotonic() - committed_at
    assert got["rec"] == [0, "a", 0, {"hello": "world"}]
    assert arrived < 5, f"the reader took {arrived:.2f} s to see the commit"
    writer.stop()
    reader.stop()


def test_closing_the_stream_from_another_thread_wakes_a_blocked_next(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    open_writer(spawn, store_dir)
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="g", offset=0)
    reader.send("close_while_waiting", rid="g")
    reader.expect("waiting")
    reader.wait_asleep(threads=3)  # next(), the watcher and the thread that will close
    reader.send("close")  # the closing thread's cue
    got = reader.result()
    assert got["raised"] == "StreamClosedError", got
    assert got["elapsed"] < 5


def test_next_with_a_timeout_raises_timeout_error_when_nothing_is_committed(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    writer = open_writer(spawn, store_dir)
    writer.call("commit", appends=[["a", 0, [{"n": 1}]]])
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="g", offset=1)
    reader.send("next", rid="g", timeout=0.2)
    reader.expect("waiting")
    got = reader.result()
    assert got["raised"] == "TimeoutError", got
    assert 0.2 <= got["elapsed"] < 5
    assert reader.call("info")["global_head"] == 1


def test_anext_in_another_process_wakes_on_a_commit(store_dir: Path, spawn: Callable[[str], Proc]) -> None:
    writer = open_writer(spawn, store_dir)
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="s", offset=0, stream="orders")
    reader.send("anext", rid="s", timeout=30)
    reader.expect("waiting")
    reader.wait_asleep(threads=2)
    committed_at = time.monotonic()
    writer.call("commit", appends=[["other", 0, [{"n": 0}]], ["orders", 0, [{"n": 1}]]])
    got = reader.result()
    assert got["rec"] == [1, "orders", 0, {"n": 1}]
    assert time.monotonic() - committed_at < 5


def test_an_idle_waiter_uses_no_cpu(store_dir: Path, spawn: Callable[[str], Proc]) -> None:
    open_writer(spawn, store_dir)  # open and idle: the reader follows it
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="g", offset=0)
    reader.send("idle_cpu", rid="g", seconds=3)
    reader.expect("waiting")
    got = reader.result()
    assert got["outcome"] == "TimeoutError"
    assert got["elapsed"] >= 3
    assert got["cpu"] < 0.030, f"the waiting process used {got['cpu'] * 1000:.1f} ms of CPU in 3 s"


# -- order, wholeness, durability ---------------------------------------------------------------------


@pytest.mark.slow
def test_readers_in_other_processes_see_every_acknowledged_transaction_whole_and_in_order(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    count = 300
    writer = open_writer(spawn, store_dir, durability="batch")
    acks = commits(writer, 0, 1)  # creates the followed streams
    global_reader = open_reader(spawn, store_dir, "global-reader")
    global_reader.call("reader", rid="g", offset=0)
    stream_reader = open_reader(spawn, store_dir, "stream-reader")
    for name in FOLLOWED:
        assert stream_reader.call("reader", rid=name, offset=0, stream=name)["found"]

    expected_counts = dict.fromkeys(FOLLOWED, 0)
    for tx in range(count):
        for stream, _msg in planned(1, tx):
            if stream in expected_counts:
                expected_counts[stream] += 1
    global_reader.send("read", rid="g")
    global_reader.expect("reading")
    stream_reader.send("read_streams", ids=list(FOLLOWED), counts=[expected_counts[n] for n in FOLLOWED])
    stream_reader.expect("reading")
    acks += commits(writer, 1, count - 1, end=True)

    log = log_of(acks)
    expected = [log[g] for g in sorted(log)]
    assert sorted(log) == list(range(len(log)))
    got = global_reader.result()["recs"]
    assert [r[:4] for r in got] == expected
    assert not inside({r[5] for r in got}, acks), "global_head seen inside a transaction"

    streams = stream_reader.result()["streams"]
    for name in FOLLOWED:
        recs = streams[name]
        assert isinstance(recs, list), f"{name}: {recs}"
        assert [r[:4] for r in recs] == [r for r in expected if r[1] == name]
        assert not inside({r[4] for r in recs}, acks), f"{name}: global_head seen inside a transaction"
    writer.stop()
    global_reader.stop()
    stream_reader.stop()


def test_no_reader_sees_a_commit_before_its_fdatasync_returned(store_dir: Path, spawn: Callable[[str], Proc]) -> None:
    writer = open_writer(spawn, store_dir, durability="fsync", gated=True)
    writer.call("commit", appends=[["a", 0, [{"n": 0}]]])
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="a", offset=1, stream="a")
    reader.send("next", rid="a", timeout=30)
    reader.expect("waiting")
    reader.wait_asleep(threads=2)

    writer.call("arm", armed=True)
    writer.send("commit", appends=[["a", 1, [{"n": 1}]]])
    assert writer.expect("fdatasync-held")
    # The commit is written but its fdatasync is held: the reader must go on waiting. Longer than the
    # follower's safety wake-up (1 s), so that a look at the tail without a wake-up is covered too.
    assert reader.quiet_for(2.5), "a reader in another process saw the commit before its fdatasync returned"
    released_at = time.monotonic()
    writer.send("release")
    while True:  # a commit may sync more than once (each held in turn)
        line = writer.line()
        if line.get("at") == "fdatasync-held":
            assert reader.quiet_for(0.5), "a reader saw the commit before all of its fdatasyncs returned"
            writer.send("release")
            continue
        assert line.get("ok"), line
        assert line["range"] == [1, 2]
        break
    got = reader.result()
    assert got["rec"] == [1, "a", 1, {"n": 1}]
    assert time.monotonic() - released_at < 5
    writer.call("arm", armed=False)
    writer.stop()
    reader.stop()


# -- removals, retention, compaction, reload ----------------------------------------------------------


def test_truncation_and_deletion_in_the_writer_apply_at_once_to_a_reader_holding_decoded_envelopes(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    writer = open_writer(spawn, store_dir, durability="none")
    for stream in ("s", "d"):
        for first in range(0, 300, 100):
            writer.call("commit", appends=[[stream, first, [{"o": first + i} for i in range(100)]]])
    reader = open_reader(spawn, store_dir, durability="none")  # follows what the "none" writer wrote
    reader.call("reader", rid="s", offset=0, stream="s")
    assert [r[2] for r in reader.call("take", rid="s", count=10)["recs"]] == list(range(10))

    writer.call("truncate", stream="s", before=200)
    got = reader.call("next", rid="s", timeout=5)
    assert "rec" in got, got
    assert got["rec"][2] >= 200, f"read {got['rec']} after the truncation before 200 returned"
    assert got["rec"][1:] == ["s", 200, {"o": 200}]

    reader.call("reader", rid="d", offset=0, stream="d")
    assert [r[2] for r in reader.call("take", rid="d", count=10)["recs"]] == list(range(10))
    writer.call("delete", stream="d")
    got = reader.call("next", rid="d", timeout=0.5)
    assert got.get("raised") == "TimeoutError", f"read from a deleted stream: {got}"
    assert reader.call("reader", rid="d2", offset=0, stream="d")["found"] is False
    writer.stop()
    reader.stop()


RETAINING: dict[str, Any] = {
    "durability": "none",
    "segment_size": 64 * 1024,
    "checkpoint_bytes": 16 * 1024,
    "retention_bytes": 256 * 1024,
}


@pytest.mark.slow
def test_a_follower_reads_through_retention_and_compaction(store_dir: Path, spawn: Callable[[str], Proc]) -> None:
    writer = open_writer(spawn, store_dir, **RETAINING)
    acks = commits(writer, 0, 1, pad=600)
    reader = open_reader(spawn, store_dir, durability="none")  # follows what the "none" writer wrote
    reader.call("reader", rid="g", offset=0)
    reader.send("read", rid="g")
    reader.expect("reading")
    tx = 1
    rounds = 8
    for round_no in range(rounds):
        acks += commits(writer, tx, 40, pad=600, end=round_no == rounds - 1)
        tx += 40
        heads = writer.call("info")["heads"]
        victim = ("t0", "t1", "t2", "t3")[round_no % 4]
        if heads.get(victim, 0) > 1:
            writer.call("truncate", stream=victim, before=heads[victim] - 1)
        if round_no % 2:
            writer.call("compact")
    final = writer.call("info")
    assert final["log_start"] > 0, "retention dropped nothing: the test wrote too little"

    log = log_of(acks)
    got = reader.result()["recs"]
    offsets = [r[0] for r in got]
    assert offsets == sorted(set(offsets)), "the follower read an offset twice or out of order"
    for goff, stream, soff, msg, log_start, _head in got:
        assert goff >= log_start, f"read global offset {goff} below log_start {log_start}"
        assert [goff, stream, soff, msg] == log[goff]
    assert offsets[-1] == acks[-1]["ack"][1] - 1
    assert not inside({r[5] for r in got}, acks), "the follower saw global_head inside a transaction"
    writer.stop()
    reader.stop()


@pytest.mark.slow
def test_an_idle_follower_whose_segment_retention_dropped_loads_again(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    writer = open_writer(spawn, store_dir, **RETAINING)
    acks = commits(writer, 0, 5, pad=600)
    # Reads nothing and never waits until the end; follows what the "none" writer wrote.
    reader = open_reader(spawn, store_dir, durability="none")
    acks += commits(writer, 5, 400, pad=600)
    final = writer.call("info")
    assert final["log_start"] > acks[4]["ack"][1], "retention did not drop the segment the reader had open"

    names = sorted(final["heads"])
    seen = reader.call("info", streams=names)
    assert seen["global_head"] == final["global_head"]
    assert seen["log_start"] == final["log_start"]
    assert seen["heads"] == final["heads"]
    assert "loading the log again" in reader.stderr(), "the follower did not take the reload path"

    log = log_of(acks)
    start = final["log_start"]
    # The messages from log_start on (retention's own records take global offsets that readers pass over).
    kept = [log[g] for g in sorted(log) if g >= start]
    reader.call("reader", rid="g", offset=start)
    got = reader.call("read", rid="g", until_end=False, count=len(kept), timeout=5)
    assert [r[:4] for r in got["recs"]] == kept
    assert reader.call("next", rid="g", timeout=0.2).get("raised") == "TimeoutError"
    want = [rec for rec in kept if rec[1] == "s0"]
    reader.call("reader", rid="s0", offset=0, stream="s0")
    got = reader.call("take", rid="s0", count=len(want))
    assert got["recs"] == want
    assert reader.call("next", rid="s0", timeout=0.2).get("raised") == "TimeoutError"
    writer.stop()
    reader.stop()


# -- writers that die, a read-only first opener, fork ---------------------------------------------------


def _transactions(recs: list[list[Any]]) -> list[list[list[Any]]]:
    """``recs`` cut into transactions by the messages' writer and transaction number."""
    out: list[list[list[Any]]] = []
    for rec in recs:
        msg = rec[3]
        if out and (out[-1][0][3]["w"], out[-1][0][3]["tx"]) == (msg["w"], msg["tx"]):
            out[-1].append(rec)
        else:
            out.append([rec])
    return out


@pytest.mark.slow
def test_a_follower_outlives_a_killed_writer_and_follows_the_next_one(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    first = open_writer(spawn, store_dir, "first-writer", durability="batch")
    acks1 = commits(first, 0, 1)
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="g", offset=0)
    reader.send("read", rid="g")
    reader.expect("reading")
    first.send("commits", seed=SEED, writer=1, first=1, count=10**6, pad=0, end=False)
    while len(acks1) < 60:
        line = first.line()
        assert "ack" in line, line
        acks1.append(line)
    first.kill()  # SIGKILL, in the middle of its stream of commits
    acks1 += [line for line in first.remaining_lines() if "ack" in line]  # printed before it died

    second = open_writer(spawn, store_dir, "second-writer", durability="batch")
    acks2 = commits(second, 0, 20, who=2, end=True)
    got = reader.result()["recs"]
    recs = [r[:4] for r in got]
    assert [r[0] for r in recs] == list(range(len(recs))), "the global offsets read are not 0, 1, 2, ..."

    log1 = log_of(acks1)
    acked1 = [log1[g] for g in sorted(log1)]
    assert recs[: len(acked1)] == acked1, "the follower lost or changed a transaction the first writer acknowledged"
    start2 = acks2[0]["ack"][0]
    log2 = log_of(acks2)
    assert recs[start2:] == [log2[g] for g in sorted(log2)]
    # Between them: whole transactions the first writer finished without printing their ack, in its order.
    between = _transactions(recs[len(acked1) : start2])
    next_tx = acks1[-1]["tx"] + 1
    for tx_recs in between:
        assert [(r[1], r[3]) for r in tx_recs] == planned(1, next_tx), f"transaction {next_tx} is not whole"
        next_tx += 1
    read_txs = [{"ack": [tx[0][0], tx[-1][0] + 1]} for tx in _transactions(recs)]
    assert not inside({r[5] for r in got}, read_txs), "the follower saw global_head inside a transaction"
    assert second.call("info")["global_head"] == len(recs)
    second.stop()
    reader.stop()


@pytest.mark.slow
def test_a_read_only_first_opener_after_a_killed_writer_follows_the_next_writer(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    first = open_writer(spawn, store_dir, "first-writer", durability="fsync")
    acks1 = commits(first, 0, 20)
    first.kill()  # nothing else has the store open

    reader = open_reader(spawn, store_dir)  # the first opener: it publishes the tail for the others
    head1 = acks1[-1]["ack"][1]
    assert reader.call("info")["global_head"] == head1
    reader.call("reader", rid="g", offset=0)
    reader.send("read", rid="g")
    reader.expect("reading")

    second = open_writer(spawn, store_dir, "second-writer", durability="fsync")
    assert second.call("info")["global_head"] == head1
    acks2 = commits(second, 0, 15, who=2, end=True)
    log = log_of(acks1 + acks2)
    got = reader.result()["recs"]
    assert [r[:4] for r in got] == [log[g] for g in range(len(log))]
    assert not inside({r[5] for r in got}, acks1 + acks2), "global_head seen inside a transaction"
    second.stop()
    reader.stop()


def test_a_forked_child_cannot_use_the_store_and_the_parent_keeps_following(
    store_dir: Path, spawn: Callable[[str], Proc]
) -> None:
    writer = open_writer(spawn, store_dir)
    writer.call("commit", appends=[["s0", 0, [{"n": 0}]]])
    reader = open_reader(spawn, store_dir)
    reader.call("reader", rid="g", offset=0)
    assert reader.call("next", rid="g", timeout=5)["rec"] == [0, "s0", 0, {"n": 0}]
    reader.send("next", rid="g", timeout=0.2)
    reader.expect("waiting")
    assert reader.result()["raised"] == "TimeoutError"  # the watcher thread runs in the parent now

    forked = reader.call("fork")
    assert forked["status"] == 0
    assert forked["child"] == {
        "global_head": "StoreForkedError",
        "open_global": "StoreForkedError",
        "head": "StoreForkedError",
        "next": "StoreForkedError",
    }

    reader.send("next", rid="g", timeout=30)
    reader.expect("waiting")
    reader.wait_asleep(threads=2)
    writer.call("commit", appends=[["s0", 1, [{"n": 1}]]])
    assert reader.result()["rec"] == [1, "s0", 1, {"n": 1}]
    assert reader.call("info")["global_head"] == 2
    writer.stop()
    reader.stop()
