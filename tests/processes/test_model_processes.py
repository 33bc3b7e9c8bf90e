"""A writing process and read-only processes following it, against a plain Python model of the store.

Every store user here is a process of its own (tests/processes/worker.py): one writer
(``durability="fsync"``, 64 KiB segments, a small ``checkpoint_bytes`` so that segments roll and
checkpoints are written within a run) and two readers opened ``readonly=True`` beside it (the default
durability: they follow what is durable, which with a fsync writer is everything acknowledged).

The model holds, per stream (in order of first commit), its messages with their global offsets, the
first offset not removed by truncation or deletion, and its deleted flag; and the next global offset.
It predicts every control record: ``truncate_stream(s, before)`` writes one when ``before`` is above
the stream's first retained offset, ``delete_stream(s)`` one unless ``s`` is deleted. No retention is
configured, so the log start stays 0 and compaction changes nothing a reader can see.

Rules: the writer commits (at the expected offsets, at ``ANY``, or with one append at a wrong offset,
which raises ``OffsetConflictError`` and writes nothing), truncates, deletes and compacts; a reader
reads everything (the global log and every stream from 0, heads, ``stream_info``, names) and must
tell exactly what the model does; a reader blocks in ``next()`` at the end of the log and the writer's
next commit wakes it; the writer is killed with SIGKILL (idle, or with a commit in flight) and a new
writer process opens the store, while the readers stay open and follow the new one; a reader is
killed and a new one opens beside the writer; a reader closes its store and opens it again. After
every step each reader's ``global_head`` equals the model's end and never moved backwards.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.helpers import SMALL_SEGMENT, assert_verified
from tests.processes.test_tailing import Proc
from tests.stress import scale

POOL = ["a", "b", "c", "d"]
"""Stream names the transactions use (two of them lie outside what most transactions pick)."""
CHECKPOINT_BYTES = 16 * 1024
WRITER_OPTIONS: dict[str, Any] = {
    "durability": "fsync",
    "segment_size": SMALL_SEGMENT,
    "checkpoint_bytes": CHECKPOINT_BYTES,
}
READERS = 2
SPREAD = st.integers(0, 1023)
"""What an offset is drawn from, then taken modulo its range. Draws never depend on the model: after a
writer was killed with a commit in flight, whether the commit survived varies from run to run, and so
do the heads, but what Hypothesis draws must not."""
BLOCKING_TIMEOUT = 10


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

    def records(self, name: str) -> list[list[Any]]:
        """The readable messages as a reader reports them: [global offset, stream, offset, message]."""
        return [[self.goffs[o], name, o, self.msgs[o]] for o in range(self.first, self.head)]


def answer(proc: Proc, op: str, **args: Any) -> dict[str, Any]:
    """Send ``op``; its last line, ``ok`` or not (a worker that reports steps before it must not)."""
    proc.send(op, **args)
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
        self.streams: dict[str, StreamModel] = {}
        self.next_goff = 0
        self.tag = 0
        self.spawned = 0
        self.readers: list[Proc] = []
        self.seen: list[int] = []  # the highest global_head each reader told
        try:
            self.writer = self._open_writer()
            for _ in range(READERS):
                self.readers.append(self._open_reader())
                self.seen.append(0)
        except BaseException:  # no teardown() after a failed __init__
            self._finish()
            raise

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, role: str) -> Proc:
        self.spawned += 1
        proc = Proc(self.tmp, f"{role}-{self.spawned}")
        self.procs.append(proc)
        return proc

    def _open_writer(self) -> Proc:
        proc = self._spawn("writer")
        info = proc.call("open", path=str(self.path), options=WRITER_OPTIONS, gated=True)
        assert info["global_head"] == self.next_goff, (info, self.next_goff)
        return proc

    def _open_reader(self) -> Proc:
        proc = self._spawn("reader")
        info = proc.call("open", path=str(self.path), options={"readonly": True})
        assert info["global_head"] == self.next_goff, (info, self.next_goff)
        return proc

    def _finish(self) -> None:
        for proc in self.procs:
            proc.finish()

    def teardown(self) -> None:
        try:
            self._finish()
            for proc in self.procs:
                assert proc.popen.poll() is not None, f"{proc.name} still runs"
            if self.writer.popen.returncode == 0:  # it closed the store
                assert_verified(self.path)
            else:
                self.writer.fail(f"exited with status {self.writer.popen.returncode}")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the model -----------------------------------------------------------------------

    def _head(self, name: str) -> int:
        m = self.streams.get(name)
        return 0 if m is None else m.head

    def _apply(self, appends: list[tuple[str, list[dict[str, Any]]]], start: int) -> None:
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

    def _expected_log(self) -> list[list[Any]]:
        out = [rec for name, m in self.streams.items() for rec in m.records(name)]
        out.sort(key=lambda rec: rec[0])
        return out

    def _draw_appends(self, data: st.DataObject) -> list[tuple[str, list[dict[str, Any]]]]:
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

    def _commit_valid(self, data: st.DataObject, writer: Proc) -> tuple[list[Any], list[tuple[str, Any]]]:
        """A transaction at the expected offsets (some at ``ANY``): what to send, and its appends."""
        appends = self._draw_appends(data)
        sent = []
        for name, msgs in appends:
            offset = None if data.draw(st.integers(0, 3), label="ANY") == 0 else self._head(name)
            sent.append([name, offset, msgs])
        return sent, appends

    def _writer_head(self) -> int:
        head: int = self.writer.call("info", streams=[])["global_head"]
        return head

    # -- writing -------------------------------------------------------------------------

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        sent, appends = self._commit_valid(data, self.writer)
        got = answer(self.writer, "commit", appends=sent)
        assert got["ok"], got
        size = sum(len(msgs) for _, msgs in appends)
        assert got["range"] == [self.next_goff, self.next_goff + size], (got, self.next_goff)
        self._apply(appends, got["range"][0])

    @rule(data=st.data())
    def commit_at_wrong_offset(self, data: st.DataObject) -> None:
        """One append of the transaction at a wrong offset: ``OffsetConflictError``, and nothing is written."""
        sent, _ = self._commit_valid(data, self.writer)
        k = data.draw(st.integers(0, len(sent) - 1), label="wrong append")
        name = sent[k][0]
        expected = self._head(name)
        given = data.draw(SPREAD, label="wrong offset") % (expected + 3)
        if given >= expected:  # anything but the expected offset: below it, or past it
            given += 1
        sent[k][1] = given
        got = answer(self.writer, "commit", appends=sent)
        assert not got["ok"] and got["error"] == "OffsetConflictError", got
        assert f"offset {given} is not the next unused offset, expected {expected}" in got["message"], got
        assert self._writer_head() == self.next_goff

    def _remove(self, name: str, before: int | None) -> None:
        """``truncate_stream(name, before)``, or ``delete_stream(name)`` when ``before`` is None."""
        m = self.streams.get(name)
        if before is None:
            got = answer(self.writer, "delete", stream=name)
        else:
            got = answer(self.writer, "truncate", stream=name, before=before)
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
        assert self._writer_head() == self.next_goff

    @rule(data=st.data())
    def truncate_stream(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(POOL), label="stream")
        head = self._head(name)
        kind = data.draw(st.sampled_from(["in range"] * 6 + ["past the head", "negative"]), label="before is")
        if kind == "in range":
            before = data.draw(SPREAD, label="before") % (head + 1)
        elif kind == "past the head":
            before = head + data.draw(st.integers(1, 3), label="past the head by")
        else:
            before = data.draw(st.integers(-3, -1), label="before")
        self._remove(name, before)

    @rule(name=st.sampled_from(POOL))
    def delete_stream(self, name: str) -> None:
        self._remove(name, None)

    @rule()
    def compact(self) -> None:
        got = self.writer.call("compact")
        assert got["ok"]
        event(f"compact: segments {min(len(list((self.path / 'segments').glob('*.log'))), 4)}")
        assert self._writer_head() == self.next_goff

    # -- reading -------------------------------------------------------------------------

    def _check_reader(self, i: int) -> None:
        """Reader ``i`` tells exactly what the model does."""
        snap = self.readers[i].call("snapshot", streams=POOL)
        assert snap["global_head"] == self.next_goff, (snap["global_head"], self.next_goff)
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
        self.seen[i] = max(self.seen[i], snap["global_head"])

    @rule(i=st.integers(0, READERS - 1))
    def read(self, i: int) -> None:
        self._check_reader(i)

    @rule(data=st.data(), i=st.integers(0, READERS - 1), asleep=st.booleans())
    def blocking_read(self, data: st.DataObject, i: int, asleep: bool) -> None:
        """A reader blocks in ``next()`` at the end of the log; the writer's commit wakes it with its first message."""
        reader = self.readers[i]
        reader.call("reader", rid="end", offset=self.next_goff)
        reader.send("next", rid="end", timeout=BLOCKING_TIMEOUT)
        reader.expect("waiting")
        if asleep:
            reader.wait_asleep(threads=2)  # in next(), and the follower's watcher
        sent, appends = self._commit_valid(data, self.writer)
        got = self.writer.call("commit", appends=sent)
        first = got["range"][0]
        self._apply(appends, first)
        woke = reader.result()
        name, msgs = appends[0]
        assert woke.get("rec") == [first, name, self.streams[name].goffs.index(first), plain(msgs[0])], woke
        assert woke["elapsed"] < BLOCKING_TIMEOUT / 2, woke
        reader.call("drop", rid="end")

    # -- killing, reopening ----------------------------------------------------------------

    @rule(data=st.data(), when=st.sampled_from(["idle", "commit sent", "fdatasync held"]), look_first=st.booleans())
    def kill_writer(self, data: st.DataObject, when: str, look_first: bool) -> None:
        """SIGKILL the writer (idle, right after a commit was sent, or with the commit written and its
        fdatasync held); a new writer process opens the store.

        A commit that was acknowledged is kept; one in flight is kept whole or not at all.
        """
        pending: tuple[list[tuple[str, Any]], int] | None = None
        if when != "idle":
            sent, appends = self._commit_valid(data, self.writer)
            if when == "fdatasync held":
                self.writer.call("arm", armed=True)
            self.writer.send("commit", appends=sent)
            pending = appends, sum(len(msgs) for _, msgs in appends)
            if when == "fdatasync held":
                self.writer.expect("fdatasync-held")
        self.writer.kill()
        acked = [line for line in self.writer.remaining_lines() if "ok" in line]
        assert all(line["ok"] for line in acked), acked
        if pending is not None and acked:
            self._apply(pending[0], acked[0]["range"][0])
            pending = None
        if look_first and pending is None:
            self._check_reader(0)  # with no writer: everything acknowledged is still there
        self.writer = self._spawn("writer")
        info = self.writer.call("open", path=str(self.path), options=WRITER_OPTIONS, gated=True)
        if pending is not None:
            appends, size = pending
            assert info["global_head"] in (self.next_goff, self.next_goff + size), (info, self.next_goff, size)
            kept = info["global_head"] == self.next_goff + size
            event(f"kill writer, {when}: commit {'kept' if kept else 'lost'}")
            if kept:
                self._apply(appends, self.next_goff)
        assert info["global_head"] == self.next_goff, (info, self.next_goff)

    @rule(i=st.integers(0, READERS - 1))
    def kill_reader(self, i: int) -> None:
        self.readers[i].kill()
        self.readers[i] = self._open_reader()
        self.seen[i] = 0

    @rule(i=st.integers(0, READERS - 1), writable_first=st.booleans())
    def reopen_reader(self, i: int, writable_first: bool) -> None:
        """The reader closes its store and opens it again (after a writable open the live writer's lock refuses)."""
        reader = self.readers[i]
        reader.call("close")
        if writable_first:
            got = answer(reader, "open", path=str(self.path), options=WRITER_OPTIONS)
            assert not got["ok"] and got["error"] == "StoreLockedError", got
        info = reader.call("open", path=str(self.path), options={"readonly": True})
        assert info["global_head"] == self.next_goff, (info, self.next_goff)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def readers_follow(self) -> None:
        for i, reader in enumerate(self.readers):
            head = reader.call("info", streams=[])["global_head"]
            assert head >= self.seen[i], (i, head, self.seen[i])
            assert head == self.next_goff, (i, head, self.next_goff)
            self.seen[i] = head


# Each example starts three processes or more: far fewer examples and steps than the in-process models.
TestProcessModel = ProcessModel.TestCase
TestProcessModel.settings = settings(
    max_examples=scale(8, 60),
    stateful_step_count=scale(25, 50),
)
