"""The shared control file ``CONTROL``: first opener, joining, slots, repair's exclusivity, fork, stats, verify.

Other processes are fresh interpreters (:class:`Opener`) that open a store and
then obey one-line commands on their stdin, answering each on their stdout;
the test waits for each answer with a bounded wait (``WAIT``), never sleeps.
Who holds a lock byte of ``CONTROL`` is probed from yet another process
(:func:`probe`) with non-waiting attempts, which change nothing when they fail
and are dropped with the probing process when they succeed.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import struct
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logstore
from logstore import StoreLockedError
from logstore.embedded import layout
from logstore.embedded.control import LOCK_DMS, LOCK_FLUSH, slot_lock_byte
from logstore.embedded.controlfile import (
    CONTROL_SIZE,
    FLAG_IN_USE,
    FLAG_READONLY,
    FLAG_WRITABLE,
    FLUSH_ASKED_AT,
    FLUSH_SERVED_AT,
    FLUSH_WAIT,
    FLUSHED_AT,
    INIT_PID_AT,
    SLOT_SIZE,
    SLOT_TABLE,
    SLOTS,
    STATE_AT,
    STATE_INITIALIZING,
    STATE_READY,
    TAIL_B,
    TAIL_SIZE,
    WAKE_AT,
    WAKE_FUTEX,
    Control,
    process_start_time,
    slot_flags,
)
from logstore.embedded.fileio import OFD_LOCKS, FileIO
from logstore.embedded.repair import repair
from logstore.embedded.store import own_slot_of, processes_of
from logstore.embedded.verify import verify
from logstore.errors import CorruptionError, FormatVersionError
from logstore.index.header import ControlHeader
from logstore.tools.cli import main
from tests.helpers import (
    SMALL_SEGMENT,
    assert_verified,
    commit,
    run_python,
    spawn_python,
    with_format_version,
)
from tests.stress import scale

pytestmark = pytest.mark.skipif(not OFD_LOCKS, reason="open-file-description locks are a Linux facility")

WAIT = 20.0  # seconds: a bound for anything that should happen promptly; reached only if something hangs

_OPENER = textwrap.dedent(
    """
    import json, os, sys
    import logstore
    from logstore.embedded.store import own_slot_of, processes_of

    path, mode = sys.argv[1], sys.argv[2]
    store = logstore.open(path, readonly=mode == "ro")
    print("open", os.getpid(), store._control.slot, int(store._control.first), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "procs":
            print("procs", json.dumps([dict(p._asdict(), mode=p.mode) for p in processes_of(store)]), flush=True)
        elif cmd[0] == "fork":
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    store.head("s")
                    os.write(w, b"no error")
                except logstore.StoreForkedError:
                    os.write(w, b"StoreForkedError")
                os._exit(0)
            os.close(w)
            said = os.read(r, 100).decode()
            os.waitpid(pid, 0)
            print("forked", said, flush=True)
        elif cmd[0] == "close":
            store.close()
            print("closed", flush=True)
    """
)

_PROBE = textwrap.dedent(
    """
    import os, sys
    from logstore.embedded.fileio import FileIO
    io = FileIO()
    fd = io.open(sys.argv[1], os.O_RDWR)
    print(" ".join("free" if io.lock_range(fd, int(b), True, False) else "held" for b in sys.argv[2:]), flush=True)
    """
)


class Opener:
    """A fresh interpreter that opens the store (``mode`` ``"rw"`` or ``"ro"``) and answers commands."""

    def __init__(self, path: Path, mode: str) -> None:
        self.proc = spawn_python(_OPENER, str(path), mode)
        words = self.expect("open")
        self.pid, self.slot, self.first = int(words[1]), int(words[2]), words[3] == "1"
        assert self.pid == self.proc.pid

    def expect(self, what: str) -> list[str]:
        """The next line of the child's stdout, split; it must start with ``what``."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        if not ready:
            self.proc.kill()
            pytest.fail(f"process {self.proc.pid}: no {what!r} within {WAIT} s: it hangs")
        line = self.proc.stdout.readline()
        if not line.startswith(what):
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=WAIT)
            pytest.fail(f"process {self.proc.pid}: expected {what!r}, got {line!r}; stderr:\n{err}")
        return line.split(" ", 1) if what == "procs" else line.split()

    def ask(self, command: str, answer: str) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(answer)

    def procs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ask("procs", "procs")[1]))

    def close(self) -> None:
        """Close the store, then let the process end."""
        self.ask("close", "closed")
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(WAIT) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)


@pytest.fixture
def opener() -> Iterator[Any]:
    """Start :class:`Opener` processes; any still running when the test ends is killed."""
    started: list[Opener] = []

    def start(path: Path, mode: str) -> Opener:
        child = Opener(path, mode)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.kill()
        for stream in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
            if stream is not None:
                stream.close()


def probe(path: Path, *lock_bytes: int) -> list[str]:
    """From a new process, try each byte of ``path``'s CONTROL exclusively without waiting: "held" or "free"."""
    done = run_python(_PROBE, str(path / layout.CONTROL), *map(str, lock_bytes), timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def new_store(path: Path) -> Path:
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, [logstore.Envelope.new("E", {"i": 0})])
    return path


def read_control(path: Path) -> bytes:
    return (path / layout.CONTROL).read_bytes()


def word(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<Q", data, at)[0])


def slot_record(data: bytes, slot: int) -> tuple[int, ...]:
    return struct.unpack_from("<IIQQQQ", data, SLOT_TABLE + SLOT_SIZE * slot)


# -- first opener, joiners, slots -------------------------------------------------------------------------


def test_the_first_opener_initializes_the_control_file(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    with logstore.open(path) as store:
        assert store._control is not None and store._control.first and store._control.slot == 0
        data = read_control(path)
        assert len(data) == CONTROL_SIZE
        header = ControlHeader.decode(data)
        assert header.store_id == store._log.store_id and header.slots == SLOTS and header.wake == WAKE_FUTEX
        # A writable first opener keeps the store to itself (the switch exclusive, the state not ready: if it
        # dies, a waiting opener becomes the first) until another opener asks to join.
        assert word(data, STATE_AT) == STATE_INITIALIZING
        assert word(data, INIT_PID_AT) == os.getpid() and word(data, INIT_PID_AT + 8) > 0
        pid, flags, start, opened, goff, socket = slot_record(data, 0)
        assert (pid, goff, socket) == (os.getpid(), 0, 0)
        assert flags == slot_flags(False, "fsync") | FLAG_IN_USE and flags & FLAG_WRITABLE
        assert start == process_start_time() > 0 and opened >= word(data, INIT_PID_AT + 8)
        assert data[SLOT_TABLE + SLOT_SIZE :] == bytes(CONTROL_SIZE - SLOT_TABLE - SLOT_SIZE)
        instance = header.instance
        with logstore.open(path, readonly=True) as joiner:
            assert joiner._control is not None and not joiner._control.first and joiner._control.slot == 1
            assert word(read_control(path), STATE_AT) == STATE_READY
    # Closed by everyone: the next opener is first again and rebuilds it (a new instance).
    with logstore.open(path, readonly=True) as store:
        assert store._control is not None and store._control.first
        assert ControlHeader.decode(read_control(path)).instance != instance
        assert slot_record(read_control(path), 0)[1] == FLAG_IN_USE | FLAG_READONLY


def test_a_read_only_opener_in_another_process_joins_and_both_are_listed(tmp_path: Path, opener: Any) -> None:
    path = new_store(tmp_path / "store")
    with logstore.open(path) as store:
        instance = ControlHeader.decode(read_control(path)).instance
        reader = opener(path, "ro")
        assert not reader.first and reader.slot == 1
        assert ControlHeader.decode(read_control(path)).instance == instance  # joined, not rebuilt
        mine = [(p.pid, p.mode, p.durability) for p in processes_of(store)]
        assert mine == [(os.getpid(), "writable", "fsync"), (reader.pid, "read-only", None)]
        theirs = reader.procs()
        assert [(p["slot"], p["pid"]) for p in theirs] == [(0, os.getpid()), (1, reader.pid)]
        assert probe(path, LOCK_DMS, slot_lock_byte(0), slot_lock_byte(1), slot_lock_byte(2)) == [
            "held",
            "held",
            "held",
            "free",
        ]
        reader.close()
        assert [p.pid for p in processes_of(store)] == [os.getpid()]
        assert slot_record(read_control(path), 1) == (0,) * 6  # the slot's record is cleared at close
        # The slot is free again: the next opener takes it.
        again = opener(path, "ro")
        assert again.slot == 1 and not again.first
        again.close()
    assert probe(path, LOCK_DMS, slot_lock_byte(0)) == ["free", "free"]


def test_two_stores_in_one_process_take_two_slots(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    with logstore.open(path) as w, logstore.open(path, readonly=True) as r:
        assert w._control is not None and r._control is not None
        assert (w._control.slot, r._control.slot, w._control.first, r._control.first) == (0, 1, True, False)
        assert [p.slot for p in processes_of(r)] == [0, 1]


def test_a_stale_control_file_of_a_killed_process_is_rebuilt_by_the_next_first_opener(
    tmp_path: Path, opener: Any
) -> None:
    path = new_store(tmp_path / "store")
    writer = opener(path, "rw")
    reader = opener(path, "ro")
    assert writer.first and not reader.first
    old = ControlHeader.decode(read_control(path)).instance
    writer.kill()
    reader.kill()
    stale = read_control(path)
    assert slot_record(stale, 0)[0] == writer.pid and slot_record(stale, 1)[0] == reader.pid  # left behind
    assert probe(path, LOCK_DMS, slot_lock_byte(0), slot_lock_byte(1)) == ["free"] * 3  # the kernel dropped them
    with logstore.open(path, readonly=True) as store:
        assert store._control is not None and store._control.first and store._control.slot == 0
        data = read_control(path)
        assert ControlHeader.decode(data).instance != old
        assert slot_record(data, 0)[0] == os.getpid() and slot_record(data, 1) == (0,) * 6
        assert [p.pid for p in processes_of(store)] == [os.getpid()]
        assert store.head("s") == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00" * 100,
        b"\xff" * CONTROL_SIZE,
        b"not a control file",
        os.urandom(CONTROL_SIZE + 333),
    ],
    ids=["empty", "short-zeros", "all-ff", "text", "random-longer"],
)
def test_a_garbage_control_file_is_rebuilt_by_a_first_opener(tmp_path: Path, garbage: bytes) -> None:
    path = new_store(tmp_path / "store")
    (path / layout.CONTROL).write_bytes(garbage)
    with logstore.open(path) as store:
        assert store._control is not None and store._control.first
        data = read_control(path)
        assert ControlHeader.decode(data).store_id == store._log.store_id
        assert word(data, STATE_AT) == STATE_INITIALIZING  # a writer alone (ready once another joins)
        # Nothing of the garbage is left: zeros but for the words the writer published (its tail).
        assert data[88:WAKE_AT] == bytes(WAKE_AT - 88)
        assert data[TAIL_B + TAIL_SIZE : SLOT_TABLE] == bytes(SLOT_TABLE - TAIL_B - TAIL_SIZE)
        assert store._control.tail() == (store.global_head, 0, store._log.active.end, 1)
        with logstore.open(path, readonly=True) as joined:
            assert joined._control is not None and not joined._control.first
            assert word(read_control(path), STATE_AT) == STATE_READY
    assert_verified(path)


def _damage(path: Path, at: int, data: bytes) -> None:
    with open(path / layout.CONTROL, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.mark.parametrize(
    ("at", "data", "byte", "what"),
    [
        (0, b"XXXXXXXX", 56, "header checksum mismatch"),
        (20, b"\x01", 56, "header checksum mismatch"),
        (16, None, 16, "store id differs"),
        (40, None, 40, "slots, expected 256"),
    ],
    ids=["magic", "store-id-bit", "other-store", "slot-count"],
)
def test_a_damaged_control_file_that_live_processes_share_is_a_corruption_error(
    tmp_path: Path, at: int, data: bytes | None, byte: int, what: str
) -> None:
    path = new_store(tmp_path / "store")
    with logstore.open(path, readonly=True) as holder:
        raw = read_control(path)
        if data is None:  # a consistent header saying something else (checksum recomputed)
            header = ControlHeader.decode(raw)
            forged = header._replace(store_id=os.urandom(16)) if at == 16 else header._replace(slots=8)
            data = forged.encode()
            at = 0
        _damage(path, at, data)
        with pytest.raises(CorruptionError) as info:
            logstore.open(path, readonly=True)
        exc = info.value
        assert exc.path == str(path / layout.CONTROL) and exc.position == byte and what in exc.what
        assert "rebuilt when all of them have closed the store" in str(exc)
        assert [p.pid for p in processes_of(holder)] == [os.getpid()]  # the failed opener left no slot
    with logstore.open(path) as store:  # everyone closed: rebuilt
        assert store._control is not None and store._control.first


def test_a_control_file_of_another_format_version_beside_live_processes_is_a_format_version_error(
    tmp_path: Path,
) -> None:
    path = new_store(tmp_path / "store")
    with logstore.open(path, readonly=True):
        raw = read_control(path)
        _damage(path, 0, with_format_version(raw[:64], 9)[:64])
        with pytest.raises(FormatVersionError, match="format version 9"):
            logstore.open(path, readonly=True)


def test_an_unfinished_initialization_is_redone_by_a_late_opener(tmp_path: Path) -> None:
    """A first opener that died while initializing left state INITIALIZING and released the switch: the next
    opener (finding the switch free) is the first and initializes again."""
    path = new_store(tmp_path / "store")
    with logstore.open(path, readonly=True):
        pass
    _damage(path, STATE_AT, struct.pack("<Q", STATE_INITIALIZING))
    with logstore.open(path, readonly=True) as store:
        assert store._control is not None and store._control.first
        assert word(read_control(path), STATE_AT) == STATE_READY


def test_a_joiner_that_meets_an_unready_file_retries_until_it_is_ready(tmp_path: Path) -> None:
    """Switch held shared by another description but the file not READY (its initializer died after another
    joiner took the switch): the joiner releases the switch and tries again; here the blocker leaves, so
    it becomes the first opener."""
    path = new_store(tmp_path / "store")
    sid = ControlHeader.decode(read_control(path)).store_id
    _damage(path, STATE_AT, struct.pack("<Q", 0))
    io = FileIO()
    fd = io.open(str(path / layout.CONTROL), os.O_RDWR)
    calls = []

    class Releasing(FileIO):
        def unlock_range(self, fd2: int, byte: int) -> None:
            calls.append(byte)
            super().unlock_range(fd2, byte)
            io.unlock_range(fd, LOCK_DMS)  # the other holder leaves meanwhile

    try:
        assert io.lock_range(fd, LOCK_DMS, False, False)
        control = Control.join(Releasing(), str(path), sid, slot_flags(True))
        try:
            assert control.first and calls == [LOCK_DMS]
            assert word(read_control(path), STATE_AT) == STATE_READY
        finally:
            control.close()
    finally:
        io.close(fd)


def test_the_257th_opener_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    io = FileIO()
    fd = io.open(str(path / layout.CONTROL), os.O_RDWR)
    try:
        with logstore.open(path, readonly=True):
            for i in range(1, SLOTS):  # another description takes every other slot
                assert io.lock_range(fd, slot_lock_byte(i), True, False)
            with pytest.raises(StoreLockedError, match=r"256 processes \(or open stores\) have the store open"):
                logstore.open(path, readonly=True)
            io.unlock_range(fd, slot_lock_byte(SLOTS - 1))
            with logstore.open(path, readonly=True) as last:
                assert last._control is not None and last._control.slot == SLOTS - 1
    finally:
        io.close(fd)


def test_writable_opens_in_several_processes_share_the_store_and_repair_refuses_while_any_is_open(
    tmp_path: Path, opener: Any
) -> None:
    path = new_store(tmp_path / "store")
    writer = opener(path, "rw")
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:  # a second writer, beside the first
        commit(store, "s", 1, [logstore.Envelope.new("E", {"i": 1})])
        procs = writer.procs()
        assert [(p["pid"], p["mode"]) for p in procs] == [(writer.pid, "writable"), (os.getpid(), "writable")]
        assert sorted(p["slot"] for p in procs) == sorted([writer.slot, own_slot_of(store)])
        with logstore.open(path, readonly=True) as ro:
            assert [p["mode"] for p in writer.procs()] == ["writable", "writable", "read-only"]
            assert ro.head("s") == 2
        before = sorted(p.name for p in path.rglob("*"))
        with pytest.raises(StoreLockedError, match="a writer holds the store") as info:
            repair(str(path))
        assert str(path) in str(info.value)
        assert main(["repair", str(path)]) == 2  # the tool refuses too
        assert sorted(p.name for p in path.rglob("*")) == before  # nothing done
    # One writer left, in another process: still refused.
    with pytest.raises(StoreLockedError, match="a writer holds the store"):
        repair(str(path))
    assert [(p["pid"], p["mode"]) for p in writer.procs()] == [(writer.pid, "writable")]
    writer.close()
    assert not repair(str(path)).changed  # the store to itself at last
    with logstore.open(path) as store:
        assert store.head("s") == 2


# -- repair -------------------------------------------------------------------------------------------


def test_repair_refuses_while_a_read_only_opener_holds_the_store_and_works_after(tmp_path: Path, opener: Any) -> None:
    path = new_store(tmp_path / "store")
    seg = path / "segments" / "00000000000000000000.log"
    data = bytearray(seg.read_bytes())
    data[200] ^= 0xFF  # a damaged record in the middle: repair has work to do
    seg.write_bytes(bytes(data))
    reader = opener(path, "ro")
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(StoreLockedError) as info:
        repair(str(path))
    message = str(info.value)
    assert f"process {reader.pid} (read-only) has the store open" in message and str(path) in message
    assert "repair needs the store to itself" in message
    assert sorted(p.name for p in path.rglob("*")) == before  # nothing done
    assert main(["repair", str(path)]) == 2  # the tool says the same and exits 2
    assert repair(str(path), dry_run=True).changed  # a dry run changes nothing: allowed
    reader.close()
    report = repair(str(path))
    assert report.changed
    assert_verified(path)
    assert probe(path, LOCK_DMS) == ["free"]  # repair left the store


def test_repair_names_every_process_that_has_the_store_open(tmp_path: Path, opener: Any) -> None:
    path = new_store(tmp_path / "store")
    a, b = opener(path, "ro"), opener(path, "ro")
    with pytest.raises(StoreLockedError) as info:
        repair(str(path))
    assert f"pids {min(a.pid, b.pid)} (read-only), {max(a.pid, b.pid)} (read-only)" in str(info.value)


def test_repair_of_a_whole_store_joins_as_first_opener(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    report = repair(str(path))
    assert not report.changed
    assert slot_record(read_control(path), 0) == (0,) * 6  # it left its slot


# -- fork ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_a_forked_childs_exit_does_not_release_the_parents_switch_or_slot(
    tmp_path: Path, opener: Any, mode: str
) -> None:
    path = new_store(tmp_path / "store")
    parent = opener(path, mode)
    assert parent.ask("fork", "forked")[1] == "StoreForkedError"
    # The child closed its copies and exited: the parent still holds both bytes.
    assert probe(path, LOCK_DMS, slot_lock_byte(parent.slot)) == ["held", "held"]
    assert [p["pid"] for p in parent.procs()] == [parent.pid]
    parent.close()
    assert probe(path, LOCK_DMS, slot_lock_byte(parent.slot)) == ["free", "free"]


def test_a_fork_in_this_process_drops_the_childs_control_copies(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    with logstore.open(path, readonly=True) as store:
        control = store._control
        assert control is not None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the at-fork hook ran; report what it left, leave at once
            try:
                os.write(w, json.dumps([store._control is None, control.fd, control.mm is None]).encode())
            finally:
                os._exit(0)
        os.close(w)
        report = json.loads(os.read(r, 1000))
        os.close(r)
        os.waitpid(pid, 0)
        assert report == [True, None, True]
        assert control.fd is not None and control.mm is not None  # the parent's are untouched
        assert probe(path, LOCK_DMS, slot_lock_byte(control.slot)) == ["held", "held"]


# -- tools ----------------------------------------------------------------------------------------------


def test_stats_lists_the_processes(tmp_path: Path, opener: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = new_store(tmp_path / "store")
    reader = opener(path, "ro")
    with logstore.open(path, durability="batch"):
        assert main(["stats", "--json", str(path)]) == 0
        procs = json.loads(capsys.readouterr().out)["processes"]
        assert [(p["slot"], p["pid"], p["mode"], p["durability"], p["this"]) for p in procs] == [
            (0, reader.pid, "read-only", None, False),
            (1, os.getpid(), "writable", "batch", False),
            (2, os.getpid(), "read-only", None, True),
        ]
        assert all(p["opened_ns"] > 0 for p in procs)
        assert main(["stats", str(path)]) == 0
        table = capsys.readouterr().out
        (line,) = [ln for ln in table.splitlines() if ln.startswith("processes")]
        assert f"3: pid {reader.pid} read-only since" in line
        assert f"pid {os.getpid()} writable (batch) since" in line and line.endswith("(this command)")
    reader.close()


def test_verify_accepts_a_control_file_and_does_not_need_one(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    assert (path / layout.CONTROL).is_file()
    assert_verified(path)
    with logstore.open(path, readonly=True):
        assert verify(str(path)).ok
    (path / layout.CONTROL).unlink()
    assert_verified(path)
    (path / layout.CONTROL).mkdir()
    problems = [str(p) for p in verify(str(path)).problems]
    assert any("CONTROL is not a regular file" in p for p in problems), problems


class NoControl(FileIO):
    """A file system that refuses to create or write ``CONTROL`` (as a read-only file system does)."""

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if os.path.basename(path) == layout.CONTROL:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return super().open(path, flags, mode)


class NoRoomForControl(FileIO):
    """A full file system: no room for ``CONTROL``'s bytes."""

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == layout.CONTROL:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().fallocate(fd, offset, length)


def test_a_read_only_open_that_may_not_write_control_reads_without_joining(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    with logstore.open(path, readonly=True, io=NoControl()) as store:
        assert store._control is None and processes_of(store) == []
        assert store.head("s") == 1
    with pytest.raises(OSError, match="Read-only file system") as info:
        logstore.open(path, io=NoControl())  # a writable open needs it
    assert info.value.errno == errno.EROFS and info.value.filename == str(path / layout.CONTROL)
    logstore.open(path).close()  # and the failed open left the store usable


def test_no_room_for_control_fails_a_writable_open_and_not_a_read_only_one(tmp_path: Path) -> None:
    path = new_store(tmp_path / "store")
    (path / layout.CONTROL).unlink()
    with pytest.raises(logstore.OutOfSpaceError, match="out of space reserving the control file") as info:
        logstore.open(path, io=NoRoomForControl())
    assert info.value.path == str(path / layout.CONTROL) and info.value.requested == CONTROL_SIZE
    with logstore.open(path, readonly=True, io=NoRoomForControl()) as store:
        assert store._control is None and store.head("s") == 1
    assert probe(path, LOCK_DMS) == ["free"]  # the failed joins left no lock behind
    with logstore.open(path) as store:
        assert store._control is not None and store._control.first


# -- fuzzing the header and words ------------------------------------------------------------------------------

_FUZZ_STORE_ID = bytes(range(16))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("control-fuzz")


@settings(max_examples=scale(60, 3000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(st.tuples(st.integers(0, STATE_AT - 1), st.integers(0, 255)), min_size=1, max_size=4),
    tail=st.binary(max_size=24),
)
def test_arbitrary_header_bytes_beside_a_live_process_are_joined_only_if_valid(
    fuzz_dir: Path, edits: list[tuple[int, int]], tail: bytes
) -> None:
    """Header bytes (and reserved words) changed under a live holder: the joiner either joins (the header
    still checks out) or raises CorruptionError naming CONTROL; never anything else, and never a rebuild."""
    io = FileIO()
    holder = Control.join(io, str(fuzz_dir), _FUZZ_STORE_ID, slot_flags(True))
    try:
        raw = bytearray(read_control(fuzz_dir))
        for at, value in edits:
            raw[at] = value
        raw[88 : 88 + len(tail)] = tail  # reserved words: never read
        _damage(fuzz_dir, 0, bytes(raw[:SLOT_TABLE]))
        try:
            header = ControlHeader.decode(bytes(raw[:64]))
            valid = header.store_id == _FUZZ_STORE_ID and header.slots == SLOTS
        except Exception:  # noqa: BLE001 - any decoding failure: the joiner must refuse
            valid = False
        try:
            joiner = Control.join(io, str(fuzz_dir), _FUZZ_STORE_ID, slot_flags(True))
        except CorruptionError as exc:
            assert not valid, exc
            assert exc.path == str(fuzz_dir / layout.CONTROL) and 0 <= exc.position < 64
        else:
            assert valid and not joiner.first and joiner.slot == 1
            joiner.close()
        assert read_control(fuzz_dir)[:SLOT_TABLE] == bytes(raw[:SLOT_TABLE])  # nothing rebuilt under the holder
    finally:
        holder.close()


@settings(max_examples=scale(40, 2000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=CONTROL_SIZE + 100), state=st.sampled_from([None, 0, 1, 2, 3, 2**64 - 1]))
def test_any_file_is_rebuilt_by_a_first_opener(fuzz_dir: Path, data: bytes, state: int | None) -> None:
    raw = bytearray(data)
    if state is not None and len(raw) >= STATE_AT + 8:
        raw[STATE_AT : STATE_AT + 8] = state.to_bytes(8, "little")
    (fuzz_dir / layout.CONTROL).write_bytes(bytes(raw))
    control = Control.join(FileIO(), str(fuzz_dir), _FUZZ_STORE_ID, slot_flags(False, "none"))
    try:
        assert control.first and control.slot == 0
        rebuilt = read_control(fuzz_dir)
        assert ControlHeader.decode(rebuilt).store_id == _FUZZ_STORE_ID
        assert word(rebuilt, STATE_AT) == STATE_READY and word(rebuilt, INIT_PID_AT) == os.getpid()
        assert rebuilt[88:SLOT_TABLE] == bytes(SLOT_TABLE - 88)
        assert rebuilt[SLOT_TABLE + SLOT_SIZE : CONTROL_SIZE] == bytes(CONTROL_SIZE - SLOT_TABLE - SLOT_SIZE)
    finally:
        control.close()


def _spy_on_flush_sleep(control: Control, timeout: float | None = None) -> tuple[threading.Event, list[float | None]]:
    """Make ``control``'s sleeps on the flushed word set the returned event (the ask is counted by then) and
    record the timeout each was given; with ``timeout``, sleep that long instead."""
    flushed = control.flushed
    assert flushed is not None
    sleeping = threading.Event()
    timeouts: list[float | None] = []
    real_wait = flushed.wait

    def wait(expected: int, given: float | None) -> object:
        timeouts.append(given)
        sleeping.set()
        return real_wait(expected, given if timeout is None else timeout)

    flushed.wait = wait  # type: ignore[method-assign]
    return sleeping, timeouts


@pytest.fixture
def two_controls(tmp_path: Path) -> Iterator[tuple[Control, Control]]:
    """The ``CONTROL`` memberships of two writable stores of one directory (two open file descriptions)."""
    path = new_store(tmp_path / "store")
    with logstore.open(path) as a, logstore.open(path) as b:
        assert a._control is not None and b._control is not None
        yield a._control, b._control


def test_a_process_waiting_for_a_sync_wakes_when_the_flush_lock_is_let_go(
    two_controls: tuple[Control, Control],
) -> None:
    """The flush lock's "acquire or wait": a waiter sleeps on the flushed word and the holder wakes it."""
    ca, cb = two_controls
    before = ca.word(FLUSHED_AT)
    assert ca.try_lock_flush()
    ca.unlock_flush()
    assert ca.word(FLUSHED_AT) == before  # nobody slept: no wake-up, the count stays

    assert ca.try_lock_flush()
    seen = cb.flushes()
    assert not cb.try_lock_flush()
    sleeping, _ = _spy_on_flush_sleep(cb, timeout=60.0)  # a wake-up, never the safety timeout, must end it
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (cb.wait_flush(seen), done.set()))
    waiter.start()
    assert sleeping.wait(10)
    assert not done.is_set()
    ca.unlock_flush()
    assert done.wait(10), "the waiter was not woken when the flush lock was let go"
    waiter.join()
    assert ca.word(FLUSHED_AT) == (before + 1) & 0xFFFFFFFF
    assert ca.word(FLUSH_ASKED_AT) == ca.word(FLUSH_SERVED_AT)  # the ask is served: no more wake-ups
    assert cb.try_lock_flush()
    cb.unlock_flush()


def test_a_waiter_for_a_sync_whose_holder_let_go_without_waking_looks_again(
    two_controls: tuple[Control, Control],
) -> None:
    """A holder that dies releases the flush lock without a wake-up: the waiter's sleep ends by itself."""
    ca, cb = two_controls
    before = ca.word(FLUSHED_AT)
    assert ca.try_lock_flush()
    seen = cb.flushes()
    sleeping, timeouts = _spy_on_flush_sleep(cb)
    waiter = threading.Thread(target=cb.wait_flush, args=(seen,))
    waiter.start()
    assert sleeping.wait(10)
    ca.io.unlock_range(ca._fd(), LOCK_FLUSH)  # let go as a death does: no count, no wake-up
    waiter.join(10)
    assert not waiter.is_alive(), "the waiter slept on after the holder died"
    assert timeouts == [FLUSH_WAIT]
    assert ca.word(FLUSHED_AT) == before
    assert cb.try_lock_flush()
    cb.unlock_flush()
    assert ca.word(FLUSH_ASKED_AT) == ca.word(FLUSH_SERVED_AT)
