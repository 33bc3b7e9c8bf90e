"""Several writing and reading processes on one store, against a plain Python model of the store.

Every store user here is a worker process of its own (tests/processes/worker.py), driven over pipes.
An example starts 2-4 workers; the first two open the store writable, each other one writable or
``readonly=True`` as drawn, and every later open (a restart after a kill, a reopen) draws its mode
again (at least one worker stays writable). Writable workers use ``durability="fsync"``, 64 KiB
segments and a small ``checkpoint_bytes``, so that segments roll and checkpoints are written within a
run; read-only ones the default durability (they follow what is durable, which with fsync writers is
everything acknowledged).

The model holds, per stream (in order of first commit), its messages with their global offsets, the
first offset not removed by truncation or deletion, and its deleted flag; and the next global offset.
It predicts every control record: ``truncate_stream(s, before)`` writes one when ``before`` is above
the stream's first retained offset, ``delete_stream(s)`` one unless ``s`` is deleted. No retention is
configured, so the log start stays 0 and compaction changes nothing a reader can see.

Rules (any writable worker commits or removes; any worker reads):

- a commit at the expected offsets (some at ``ANY``): acknowledged with the model's next global offsets;
- a commit with one append at a stale or future exact offset: ``OffsetConflictError`` naming that
  stream, the given and the model's expected offset, and nothing written;
- two writers commit at once, each at the offsets that were expected before either: both are
  acknowledged, in some order, when neither conflicts with the other once that one is in; otherwise
  exactly one is, and the other raises ``OffsetConflictError`` for an append that conflicts with the
  first (any ``ANY`` append never conflicts);
- ``truncate_stream`` / ``delete_stream`` (valid, already done, past the head, negative, unknown
  stream) from any writer, and ``compact()`` from any writer;
- a worker reads everything with ``try_next()`` (the global log and every stream from 0, heads,
  ``stream_info``, names) and must tell exactly what the model does; a worker reads from a drawn
  offset with ``next(timeout)`` and ``get()`` (global or one stream) what the model has there, and
  then times out at the end; a worker blocks in ``next()`` at the end of the log (global or one
  stream) and a commit in another worker wakes it with its first message;
- a worker is killed with SIGKILL (a writer idle, right after a commit was sent, with its commit
  written and an fdatasync held, at the end of the commit's turn right before it drops the write
  lock, or right after a ``delete_stream`` was sent; a reader idle) and restarts; a commit or
  removal it had in flight is kept whole or lost whole (both are modelled: a surviving process tells
  which), one it acknowledged is kept;
- a worker closes its store and opens it again, writable or read-only.

Invariant after every step: every worker's ``global_head`` equals the model's end (a commit
acknowledged in one process is seen by every other within a bounded wait, polled with a deadline)
and never moved backwards. At the end every worker closes cleanly and the store verifies clean.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.helpers import SMALL_SEGMENT, assert_verified
from tests.processes.test_tailing import Proc
from tests.stress import scale

POOL = ["a", "b", "c", "d"]
"""Stream names the transactions use."""
CHECKPOINT_BYTES = 16 * 1024
WRITER_OPTIONS: dict[str, Any] = {
    "durability": "fsync",
    "segment_size": SMALL_SEGMENT,
    "checkpoint_bytes": CHECKPOINT_BYTES,
}
READER_OPTIONS: dict[str, Any] = {"readonly": True}
MAX_WORKERS = 4
WORKER = st.integers(0, MAX_WORKERS - 1)
"""Which worker: taken modulo the number of workers (or of writable ones) there are."""
SPREAD = st.integers(0, 1023)
"""What an offset is drawn from, then taken modulo its range. Draws never depend on the model's heads:
after a writer was killed with a commit in flight, whether the commit survived varies from run to run,
and so do the heads, but what Hypothesis draws must not. (Which workers are writable depends on draws
only, so choosing among them is fine.)"""
BLOCKING_TIMEOUT = 10
FOLLOW_WAIT = 5.0
"""Seconds within which a commit acknowledged in one process is seen in every other one."""
CONFLICT = re.compile(r"stream '(\w+)': offset (\d+) is not the next unused offset, expected (\d+)")

Appends = list[tuple[str, list[dict[str, Any]]]]
Sent = list[list[Any]]  # [stream, offset or None for ANY, messages] per append


def message(tag: int, pad: int) -> dict[str, Any]:
    """A message as the worker commits it (``plain`` checks the padding and leaves it out on reading)."""
    return {"tag": tag, "n": pad, "pad": "x" * pad}


def plain(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k != "pad"}


@dataclass
class StreamModel:
    msgs: list[dict[str, Any]] = field(default_factory=list)  # as read back (no padding)
    goffs: list[int] = field(default_factory=list)
    first: int = 0  # offsets below it were removed by truncation or deletion
    deleted: bool = False

    @property
    def head(self) -> int:
        return len(self.msgs)

    def records(self, name: str, start: int = 0) -> list[list[Any]]:
        """The readable messages from ``start`` as a reader reports them: [global offset, stream, offset, message]."""
        return [[self.goffs[o], name, o, self.msgs[o]] for o in range(max(start, self.first), self.head)]


@dataclass
class Worker:
    proc: Proc
    writable: bool
    seen: int = 0  # the highest global_head it told


def answer(proc: Proc, op: str, **args: Any) -> dict[str, Any]:
    """Send ``op``; its last line, ``ok`` or not (a worker that reports steps before it must not)."""
    proc.send(op, **args)
    return last_line(proc, op)


def last_line(proc: Proc, op: str) -> dict[str, Any]:
    got = proc.line()
    if "ok" not in got:
        proc.fail(f"unexpected line {got!r} for {op}")
    return got


class ProcessModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="logstore-procmodel-"))
        self.path = self.tmp / "store"
        self.procs: list[Proc] = []
        self.workers: list[Worker] = []
        self.streams: dict[str, StreamModel] = {}
        self.next_goff = 0
        self.tag = 0
        self.spawned = 0

    @initialize(count=st.integers(2, MAX_WORKERS), modes=st.lists(st.booleans(), min_size=2, max_size=2))
    def start(self, count: int, modes: list[bool]) -> None:
        writable = [True, True, *modes][:count]
        event(f"start: {sum(writable)} writers, {count - sum(writable)} readers")
        for w in writable:
            self.workers.append(Worker(self._open(w), w))

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, writable: bool) -> Proc:
        self.spawned += 1
        proc = Proc(self.tmp, f"{'writer' if writable else 'reader'}-{self.spawned}")
        self.procs.append(proc)
        return proc

    def _open(self, writable: bool, proc: Proc | None = None) -> Proc:
        """Open the store writable or read-only (in ``proc``, else in a new worker): it loads the model's end."""
        if proc is None:
            proc = self._spawn(writable)
        if writable:
            info = proc.call("open", path=str(self.path), options=WRITER_OPTIONS, gated=True)
        else:
            info = proc.call("open", path=str(self.path), options=READER_OPTIONS)
        assert info["global_head"] == self.next_goff, (proc.name, info, self.next_goff)
        return proc

    def _writers(self) -> list[Worker]:
        return [w for w in self.workers if w.writable]

    def _writer(self, i: int) -> Worker:
        writers = self._writers()
        return writers[i % len(writers)]

    def _worker(self, i: int) -> Worker:
        return self.workers[i % len(self.workers)]

    def _mode(self, worker: Worker, writable: bool) -> bool:
        """The mode drawn for a new open of ``worker``'s store; writable if it is the only writer left."""
        return writable or self._writers() == [worker]

    def teardown(self) -> None:
        try:
            for proc in self.procs:
                proc.finish()
            for worker in self.workers:
                code = worker.proc.popen.returncode
                if code != 0:
                    worker.proc.fail(f"exited with status {code}")
            if self.workers:
                assert_verified(self.path)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the model -----------------------------------------------------------------------

    def _head(self, name: str) -> int:
        m = self.streams.get(name)
        return 0 if m is None else m.head

    def _apply(self, appends: Appends, start: int) -> None:
        """Add a committed transaction, whose messages start at global offset ``start``."""
        assert start == self.next_goff, (start, self.next_goff)
        goff = start
        for name, msgs in appends:
            m = self.streams.setdefault(name, StreamModel())
            for msg in msgs:
                m.msgs.append(plain(msg))
                m.goffs.append(goff)
                goff += 1
            m.deleted = False  # an append brings a deleted stream back
        self.next_goff = goff

    def _conflicts(self, sent: Sent) -> list[tuple[str, int, int]]:
        """The appends of ``sent`` that conflict with the model now: (stream, given, expected) each."""
        return [(name, off, self._head(name)) for name, off, _ in sent if off is not None and off != self._head(name)]

    def _expected_log(self, start: int = 0) -> list[list[Any]]:
        out = [rec for name, m in self.streams.items() for rec in m.records(name) if rec[0] >= start]
        out.sort(key=lambda rec: rec[0])
        return out

    def _draw_appends(self, data: st.DataObject) -> Appends:
        names = data.draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True), label="streams")
        out = []
        for name in names:
            count = data.draw(st.integers(1, 3), label=f"messages to {name}")
            msgs = []
            for _ in range(count):
                self.tag += 1
                msgs.append(message(self.tag, data.draw(st.sampled_from([0, 10, 500, 3000, 6000]), label="pad")))
            out.append((name, msgs))
        return out

    def _commit_valid(self, data: st.DataObject) -> tuple[Sent, Appends]:
        """A transaction at the expected offsets (some at ``ANY``): what to send, and its appends."""
        appends = self._draw_appends(data)
        sent: Sent = []
        for name, msgs in appends:
            offset = None if data.draw(st.integers(0, 3), label="ANY") == 0 else self._head(name)
            sent.append([name, offset, msgs])
        return sent, appends

    def _size(self, appends: Appends) -> int:
        return sum(len(msgs) for _, msgs in appends)

    def _global_head(self, worker: Worker) -> int:
        head: int = worker.proc.call("info", streams=[])["global_head"]
        return head

    def _check_conflict(self, got: dict[str, Any], allowed: list[tuple[str, int, int]]) -> None:
        assert not got["ok"] and got["error"] == "OffsetConflictError", got
        found = CONFLICT.search(got["message"])
        assert found is not None, got
        told = (found[1], int(found[2]), int(found[3]))
        assert told in allowed, (told, allowed)

    # -- writing -------------------------------------------------------------------------

    @rule(data=st.data(), i=WORKER)
    def commit(self, data: st.DataObject, i: int) -> None:
        writer = self._writer(i)
        sent, appends = self._commit_valid(data)
        got = answer(writer.proc, "commit", appends=sent)
        assert got["ok"], got
        assert got["range"] == [self.next_goff, self.next_goff + self._size(appends)], (got, self.next_goff)
        self._apply(appends, got["range"][0])

    @rule(data=st.data(), i=WORKER)
    def commit_at_wrong_offset(self, data: st.DataObject, i: int) -> None:
        """One append of the transaction at a stale or future offset: ``OffsetConflictError``, nothing written."""
        writer = self._writer(i)
        sent, _ = self._commit_valid(data)
        k = data.draw(st.integers(0, len(sent) - 1), label="wrong append")
        name = sent[k][0]
        expected = self._head(name)
        given = data.draw(SPREAD, label="wrong offset") % (expected + 3)
        if given >= expected:  # anything but the expected offset: below it (stale), or past it
            given += 1
        event(f"conflict: {'stale' if given < expected else 'future'} offset")
        sent[k][1] = given
        got = answer(writer.proc, "commit", appends=sent)
        self._check_conflict(got, [(name, given, expected)])
        assert self._global_head(writer) == self.next_goff

    @rule(data=st.data(), i=WORKER, j=st.integers(1, MAX_WORKERS - 1))
    def racing_commits(self, data: st.DataObject, i: int, j: int) -> None:
        """Two writers are sent a commit each before either answers, both at the offsets expected now."""
        writers = self._writers()
        if len(writers) < 2:
            event("race: one writer only")
            self.commit(data, i)
            return
        first = writers[i % len(writers)]
        second = writers[(i + j) % len(writers)]
        if first is second:
            second = writers[(i + 1) % len(writers)]
        one = self._commit_valid(data)
        two = self._commit_valid(data)
        first.proc.send("commit", appends=one[0])
        second.proc.send("commit", appends=two[0])
        got = [last_line(first.proc, "commit"), last_line(second.proc, "commit")]
        txs = [one, two]
        oks = [k for k in (0, 1) if got[k]["ok"]]
        assert oks, got  # both at the expected offsets: the first to commit cannot conflict
        oks.sort(key=lambda k: got[k]["range"][0])
        for k in oks:
            sent, appends = txs[k]
            assert not self._conflicts(sent), (sent, got)
            assert got[k]["range"] == [self.next_goff, self.next_goff + self._size(appends)], (got, self.next_goff)
            self._apply(appends, got[k]["range"][0])
        if len(oks) == 2:
            event("race: both committed")
        else:
            event("race: one conflicted")
            loser = 1 - oks[0]
            conflicts = self._conflicts(txs[loser][0])
            assert conflicts, (txs[loser][0], got)
            self._check_conflict(got[loser], conflicts)

    def _remove(self, writer: Worker, name: str, before: int | None) -> None:
        """``truncate_stream(name, before)``, or ``delete_stream(name)`` when ``before`` is None."""
        m = self.streams.get(name)
        if before is None:
            got = answer(writer.proc, "delete", stream=name)
        else:
            got = answer(writer.proc, "truncate", stream=name, before=before)
        if before is not None and before < 0:  # checked first, whether the stream exists or not
            assert not got["ok"] and got["error"] == "ValueError" and ">= 0" in got["message"], got
        elif m is None:
            assert not got["ok"] and got["error"] == "ValueError" and "no stream named" in got["message"], got
        elif before is None:
            assert got["ok"], got
            event(f"delete: {'already deleted' if m.deleted else 'written'}")
            if not m.deleted:
                m.first, m.deleted = m.head, True
                self.next_goff += 1  # its DELETE record
        elif before > m.head:
            assert not got["ok"] and got["error"] == "ValueError" and f"head is {m.head}" in got["message"], got
        else:
            assert got["ok"], got
            event(f"truncate: {'written' if before > m.first else 'nothing to do'}")
            if before > m.first:
                m.first = before
                self.next_goff += 1  # its TRUNCATE record
        assert self._global_head(writer) == self.next_goff

    @rule(data=st.data(), i=WORKER)
    def truncate_stream(self, data: st.DataObject, i: int) -> None:
        name = data.draw(st.sampled_from(POOL), label="stream")
        head = self._head(name)
        kind = data.draw(st.sampled_from(["in range"] * 6 + ["past the head", "negative"]), label="before is")
        if kind == "in range":
            before = data.draw(SPREAD, label="before") % (head + 1)
        elif kind == "past the head":
            before = head + data.draw(st.integers(1, 3), label="past the head by")
        else:
            before = data.draw(st.integers(-3, -1), label="before")
        self._remove(self._writer(i), name, before)

    @rule(name=st.sampled_from(POOL), i=WORKER)
    def delete_stream(self, name: str, i: int) -> None:
        self._remove(self._writer(i), name, None)

    @rule(i=WORKER)
    def compact(self, i: int) -> None:
        writer = self._writer(i)
        event(f"compact beside {len(self._writers()) - 1} other writers")
        got = writer.proc.call("compact")
        assert got["ok"]
        event(f"compact: segments {min(len(list((self.path / 'segments').glob('*.log'))), 4)}")
        assert self._global_head(writer) == self.next_goff

    # -- reading -------------------------------------------------------------------------

    def _check_snapshot(self, worker: Worker) -> None:
        """``worker`` tells exactly what the model does."""
        snap = worker.proc.call("snapshot", streams=POOL)
        assert snap["global_head"] == self.next_goff, (worker.proc.name, snap["global_head"], self.next_goff)
        assert snap["log_start"] == 0, snap["log_start"]
        assert snap["log"] == self._expected_log(), (
            [rec[0] for rec in snap["log"]],
            [rec[0] for rec in self._expected_log()],
        )
        assert snap["names"] == [n for n, m in self.streams.items() if not m.deleted], snap["names"]
        for name in POOL:
            m = self.streams.get(name)
            got = snap["streams"][name]
            if m is None:
                assert snap["heads"][name] == 0 and snap["infos"][name] is None, (name, snap)
                assert got == {"found": False, "recs": []}, (name, got)
                continue
            assert snap["heads"][name] == m.head, (name, snap["heads"][name], m.head)
            assert snap["infos"][name] == [m.first, m.head, m.deleted], (name, snap["infos"][name])
            assert got["found"] == (not m.deleted), (name, got["found"])
            assert got["recs"] == m.records(name), (name, [r[2] for r in got["recs"]], m.first, m.head)
        worker.seen = max(worker.seen, snap["global_head"])

    @rule(i=WORKER)
    def read_everything(self, i: int) -> None:
        self._check_snapshot(self._worker(i))

    @rule(data=st.data(), i=WORKER, stream=st.sampled_from([None, *POOL]), count=st.integers(1, 6))
    def read_from(self, data: st.DataObject, i: int, stream: str | None, count: int) -> None:
        """``next(timeout)`` and ``get()`` from a drawn offset of the global log or of one stream: the model's
        records there; at the end, ``next`` times out."""
        proc = self._worker(i).proc
        if stream is None:
            offset = data.draw(SPREAD, label="offset") % (self.next_goff + 1)
            proc.call("reader", rid="from", offset=offset)
            expected = self._expected_log(offset)
        else:
            m = self.streams.get(stream, StreamModel())
            offset = data.draw(SPREAD, label="offset") % (m.head + 1)
            got = proc.call("reader", rid="from", offset=offset, stream=stream)
            assert got["found"] == (stream in self.streams and not m.deleted), (stream, got)
            expected = m.records(stream, offset)
        take = min(count, len(expected))
        if take:
            got = proc.call("take", rid="from", count=take)
            assert got["recs"] == expected[:take], ([r[0] for r in got["recs"]], [r[0] for r in expected[:take]])
        if take == len(expected):
            got = proc.call("next", rid="from", timeout=0.05)
            assert got.get("raised") == "TimeoutError", got
            event("read from: to the end")
        proc.call("drop", rid="from")

    @rule(data=st.data(), i=WORKER, j=WORKER, whole_log=st.booleans(), asleep=st.booleans())
    def blocking_read(self, data: st.DataObject, i: int, j: int, whole_log: bool, asleep: bool) -> None:
        """A worker blocks in ``next()`` at the end of the log (or of a stream); another worker's commit wakes
        it with the commit's first message."""
        reader = self._worker(i)
        writers = [w for w in self._writers() if w is not reader]
        if not writers:
            event("blocking read: no other writer")
            return
        writer = writers[j % len(writers)]
        sent, appends = self._commit_valid(data)
        name, msgs = appends[0]
        if whole_log:
            reader.proc.call("reader", rid="end", offset=self.next_goff)
        else:
            reader.proc.call("reader", rid="end", offset=self._head(name), stream=name)
        reader.proc.send("next", rid="end", timeout=BLOCKING_TIMEOUT)
        reader.proc.expect("waiting")
        if asleep:
            reader.proc.wait_asleep(threads=2)  # in next(), and the follower's watcher
        got = writer.proc.call("commit", appends=sent)
        first = got["range"][0]
        self._apply(appends, first)
        woke = reader.proc.result()
        assert woke.get("rec") == [first, name, self.streams[name].goffs.index(first), plain(msgs[0])], woke
        assert woke["elapsed"] < BLOCKING_TIMEOUT / 2, woke
        reader.proc.call("drop", rid="end")

    # -- killing, reopening ----------------------------------------------------------------

    def _settle(self, pending: tuple[Appends, int], head: int, what: str) -> None:
        """A commit in flight in a killed writer, whose survivors tell ``head``: kept whole or lost whole."""
        appends, size = pending
        assert head in (self.next_goff, self.next_goff + size), (head, self.next_goff, size)
        kept = head == self.next_goff + size
        event(f"kill writer, {what}: commit {'kept' if kept else 'lost'}")
        if kept:
            self._apply(appends, self.next_goff)

    @rule(
        data=st.data(),
        i=WORKER,
        when=st.sampled_from(["idle", "commit sent", "fdatasync held", "lock dropped", "delete sent"]),
        name=st.sampled_from(POOL),
        look_first=st.booleans(),
        writable=st.booleans(),
    )
    def kill(self, data: st.DataObject, i: int, when: str, name: str, look_first: bool, writable: bool) -> None:
        """SIGKILL a worker (a writer idle, right after a commit was sent, with the commit written and an
        fdatasync held, right before it drops the write lock at the end of the commit's turn, or right
        after a ``delete_stream`` was sent); it restarts, writable or read-only.

        A commit that was acknowledged is kept; one in flight is kept whole or not at all.
        """
        worker = self._worker(i)
        proc = worker.proc
        pending: tuple[Appends, int] | None = None
        if worker.writable and when == "delete sent":
            self._kill_deleting(worker, name)
        elif worker.writable and when != "idle":
            sent, appends = self._commit_valid(data)
            if when == "fdatasync held":
                proc.call("arm", armed=True)
            elif when == "lock dropped":
                proc.call("arm", armed=False, die_at_unlock=True)
            proc.send("commit", appends=sent)
            pending = appends, self._size(appends)
            if when == "fdatasync held":
                proc.expect("fdatasync-held")
            elif when == "lock dropped":
                proc.popen.wait(FOLLOW_WAIT)  # it kills itself as its turn ends
        proc.kill()
        acked = [line for line in proc.remaining_lines() if "ok" in line]
        assert all(line["ok"] for line in acked), acked
        if pending is not None and acked:
            self._apply(pending[0], acked[0]["range"][0])
            pending = None
        others = self._others(worker)
        if pending is not None:  # a survivor tells whether it was kept
            self._settle(pending, self._global_head(others[0]), when)
        if look_first:
            self._check_snapshot(others[-1])  # with the worker dead: everything acknowledged is there
        mode = self._mode(worker, writable)
        worker.proc, worker.writable, worker.seen = self._open(mode), mode, 0

    def _others(self, worker: Worker) -> list[Worker]:
        return [w for w in self.workers if w is not worker]

    def _kill_deleting(self, worker: Worker, name: str) -> None:
        """SIGKILL ``worker`` right after it was sent ``delete_stream(name)``: the DELETE record is kept or
        lost (the stream deleted or not), and a surviving process tells which."""
        m = self.streams.get(name)
        worker.proc.send("delete", stream=name)
        worker.proc.kill()
        told = [line for line in worker.proc.remaining_lines() if "ok" in line]
        writes = m is not None and not m.deleted
        if told:
            assert told[0]["ok"] == (m is not None), told
        head = self._global_head(self._others(worker)[0])
        if not writes:
            assert head == self.next_goff, (head, self.next_goff)
            return
        assert m is not None
        assert head in (self.next_goff, self.next_goff + 1) and (head == self.next_goff + 1 or not told), (head, told)
        kept = head == self.next_goff + 1
        event(f"kill writer, delete sent: {'kept' if kept else 'lost'}")
        if kept:
            m.first, m.deleted = m.head, True
            self.next_goff += 1

    @rule(i=WORKER, writable=st.booleans())
    def reopen(self, i: int, writable: bool) -> None:
        """A worker closes its store and opens it again in the same process, writable or read-only."""
        worker = self._worker(i)
        worker.proc.call("close")
        mode = self._mode(worker, writable)
        event(f"reopen: {'writable' if worker.writable else 'read-only'} to {'writable' if mode else 'read-only'}")
        self._open(mode, worker.proc)
        worker.writable = mode

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def every_worker_follows(self) -> None:
        """Every worker's ``global_head`` reaches the model's end within ``FOLLOW_WAIT`` and never goes back."""
        for worker in self.workers:
            deadline = time.monotonic() + FOLLOW_WAIT
            while True:
                head = self._global_head(worker)
                assert head >= worker.seen, (worker.proc.name, head, worker.seen)
                assert head <= self.next_goff, (worker.proc.name, head, self.next_goff)
                worker.seen = head
                if head == self.next_goff:
                    break
                assert time.monotonic() < deadline, (worker.proc.name, head, self.next_goff)
                time.sleep(0.01)  # polling a condition with a deadline


def test_a_writer_closing_after_another_writers_compaction_leaves_a_store_that_verifies(tmp_path: Path) -> None:
    """Writer A truncates and compacts (replacing segment 0); writer B, which has not looked at the store
    since, closes last: its closing checkpoint must describe the compacted file."""
    path = tmp_path / "store"
    a, b = Proc(tmp_path, "a"), Proc(tmp_path, "b")
    try:
        for proc in (a, b):
            proc.call("open", path=str(path), options=WRITER_OPTIONS)
        a.call("commit", appends=[["a", 0, [message(1, 0)]]])
        b.call("commit", appends=[["a", 1, [message(2, 0)]]])
        a.call("truncate", stream="a", before=1)
        a.call("compact")
        a.call("close")
        b.call("close")
    finally:
        a.finish()
        b.finish()
    assert_verified(path)


@pytest.mark.parametrize("last", ["a", "b"])
def test_writers_closing_after_a_compaction_they_looked_at_leave_a_store_that_verifies(
    tmp_path: Path, last: str
) -> None:
    """Writers A and B commit in turn; A truncates, B compacts (replacing segment 0); both then ask
    ``global_head`` (which follows the swap) and close, ``last`` closing last."""
    path = tmp_path / "store"
    procs = {"a": Proc(tmp_path, "a"), "b": Proc(tmp_path, "b")}
    a, b = procs["a"], procs["b"]
    try:
        for proc in (a, b):
            proc.call("open", path=str(path), options=WRITER_OPTIONS)
        for k in range(4):
            (a, b)[k % 2].call("commit", appends=[["s", None, [message(k, 10)]]])
        a.call("truncate", stream="s", before=2)
        b.call("compact")
        for proc in (a, b):
            assert proc.call("info", streams=[])["global_head"] == 5
        procs["b" if last == "a" else "a"].call("close")
        procs[last].call("close")
    finally:
        a.finish()
        b.finish()
    assert_verified(path)


# Each example starts two processes or more: far fewer examples and steps than the in-process models.
TestProcessModel = ProcessModel.TestCase
TestProcessModel.settings = settings(
    max_examples=scale(8, 60),
    stateful_step_count=scale(25, 50),
)
