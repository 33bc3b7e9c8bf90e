"""The coordination primitives for several processes: OFD byte-range locks, the futex, 8-byte words in a mapping.

These tests pin down the kernel facts the multi-process design relies on, in
real processes (the store's ``CONTROL`` file, built on them, is tested in
test_control_file.py). Each child is forked
(multiprocessing's ``fork`` start method) and talks to the test through a
pipe; the test waits for its messages, never sleeps. Where a test must know
that a child is blocked in the kernel (a lock wait, a futex wait) it watches
the child's state in ``/proc`` until it is sleeping. Every wait is bounded
by ``WAIT``: a child that does not answer in time is killed and the test
fails, so nothing hangs.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import multiprocessing
import os
import platform
import signal
import struct
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest

from logstore import FileIO
from logstore.embedded import control
from logstore.embedded.fileio import FLOCK_FORMAT, OFD_LOCKS, KillPointIO, kill_point, pack_flock, unpack_flock
from logstore.errors import LogStoreError, UnsupportedPlatformError
from tests.faultfs import Crash, FaultFS
from tests.stress import scale

pytestmark = pytest.mark.skipif(not OFD_LOCKS, reason="open-file-description locks are a Linux facility")

WAIT = 20  # seconds: a bound for anything that should happen promptly; reached only if something hangs
CTX = multiprocessing.get_context("fork")
FUTEX = pytest.mark.skipif(not control.available(), reason="futexes need Linux on x86_64 or aarch64")


# -- processes ----------------------------------------------------------------------------------


class Proc:
    """A forked child running ``target(conn, *args)``, with a pipe to talk to it."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.conn, child_conn = CTX.Pipe()
        self.process = CTX.Process(target=_run, args=(target, child_conn, *args), daemon=True)
        self.process.start()
        child_conn.close()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def expect(self, what: str | None = None, timeout: float = WAIT) -> Any:
        """The child's next message (checked to be, or to start with, ``what``); fail if none comes in time."""
        if not self.conn.poll(timeout):
            pytest.fail(f"child {self.pid}: no message within {timeout} s (expected {what!r}): it hangs")
        message = self.conn.recv()
        if isinstance(message, tuple) and message[0] == "error":
            pytest.fail(f"child {self.pid} raised {message[1]}")
        if what is not None:
            head = message[0] if isinstance(message, tuple) else message
            assert head == what, f"child {self.pid}: expected {what!r}, got {message!r}"
        return message

    def pending(self) -> bool:
        """Whether a message from the child is waiting (without waiting for one)."""
        return self.conn.poll(0)

    def send(self, message: Any) -> None:
        self.conn.send(message)

    def join(self, timeout: float = WAIT) -> int:
        """Wait for the child's exit; its exit code (negative: killed by that signal)."""
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            pytest.fail(f"child {self.pid} did not exit within {timeout} s")
        return self.process.exitcode

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()


def _run(target: Callable[..., None], conn: Connection, *args: Any) -> None:
    try:
        target(conn, *args)
    except BaseException as exc:  # reported to the test, whatever it is
        conn.send(("error", repr(exc)))
        raise


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    """Start children; any still running when the test ends is killed."""
    children: list[Proc] = []

    def start(target: Callable[..., None], *args: Any) -> Proc:
        child = Proc(target, *args)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def wait_until_blocked(pid: int, timeout: float = WAIT) -> None:
    """Return once process ``pid`` sleeps in the kernel (state S): the blocking call it announced has begun."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        if state == "S":
            return
        os.sched_yield()
    pytest.fail(f"process {pid} did not block within {timeout} s")


@pytest.fixture
def control_file(tmp_path: Path) -> str:
    path = str(tmp_path / "CONTROL")
    with open(path, "wb") as f:
        f.write(bytes(2 * 4096))
    return path


def _open(path: str) -> int:
    """A new open file description of ``path``."""
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


IO = FileIO()


# -- OFD locks ------------------------------------------------------------------------------------------


def _hold(conn: Connection, path: str, byte: int, exclusive: bool) -> None:
    """Lock ``byte``; then obey "unlock" / "lock shared" / "lock exclusive" / "try ..." until "exit"."""
    fd = _open(path)
    assert IO.lock_range(fd, byte, exclusive, wait=False)
    conn.send("held")
    while True:
        command = conn.recv()
        if command == "exit":
            return
        if command == "unlock":
            IO.unlock_range(fd, byte)
            conn.send("unlocked")
        else:
            _, kind = command
            conn.send(("taken", IO.lock_range(fd, byte, kind == "exclusive", wait=False)))


def _wait_for_lock(conn: Connection, path: str, byte: int) -> None:
    fd = _open(path)
    conn.send("waiting")
    IO.lock_range(fd, byte, exclusive=True, wait=True)
    conn.send("got")
    conn.recv()  # hold it until told to exit


def test_the_flock_struct_has_the_kernels_layout(spawn: Callable[..., Proc], control_file: str) -> None:
    """F_OFD_GETLK reads back a lock another process holds: type, start and length where the kernel put them."""
    if platform.machine() in ("x86_64", "aarch64"):
        assert struct.calcsize(FLOCK_FORMAT) == 32
    holder = spawn(_hold, control_file, 7, True)
    holder.expect("held")
    fd = _open(control_file)
    try:
        held = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, pack_flock(fcntl.F_RDLCK, 7))
        assert unpack_flock(held) == (fcntl.F_WRLCK, os.SEEK_SET, 7, 1, -1)  # OFD locks do not say who holds them
        free = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, pack_flock(fcntl.F_WRLCK, 8))
        assert unpack_flock(free)[0] == fcntl.F_UNLCK
    finally:
        os.close(fd)
    holder.send("exit")
    assert holder.join() == 0


def test_a_byte_held_in_another_process_refuses_a_non_waiting_attempt(
    spawn: Callable[..., Proc], control_file: str
) -> None:
    holder = spawn(_hold, control_file, control.LOCK_WRITE, True)
    holder.expect("held")
    fd = _open(control_file)
    try:
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False) is False
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=False, wait=False) is False
        assert IO.lock_range(fd, control.LOCK_FLUSH, exclusive=True, wait=False) is True  # one byte only
        holder.send("unlock")
        holder.expect("unlocked")
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False) is True
    finally:
        os.close(fd)
    holder.send("exit")
    assert holder.join() == 0


def test_two_opens_in_one_process_conflict_and_descriptors_of_one_open_share(control_file: str) -> None:
    """Unlike POSIX record locks, OFD locks belong to the open file description, not to the process."""
    a, b = _open(control_file), _open(control_file)
    a2 = os.dup(a)
    try:
        assert IO.lock_range(a, control.LOCK_WRITE, exclusive=True, wait=False)
        assert not IO.lock_range(b, control.LOCK_WRITE, exclusive=True, wait=False)
        assert not IO.lock_range(b, control.LOCK_WRITE, exclusive=False, wait=False)
        assert IO.lock_range(a2, control.LOCK_WRITE, exclusive=True, wait=False)  # the same description
        c = _open(control_file)
        os.close(c)  # closing another description of the file leaves a's lock alone (POSIX locks would drop it)
        assert not IO.lock_range(b, control.LOCK_WRITE, exclusive=True, wait=False)
        IO.unlock_range(a2, control.LOCK_WRITE)  # an unlock through any descriptor of the description drops it
        assert IO.lock_range(b, control.LOCK_WRITE, exclusive=True, wait=False)
        IO.unlock_range(b, control.LOCK_WRITE)
        IO.unlock_range(b, control.LOCK_WRITE)  # unlocking a byte not held is no error
    finally:
        for fd in (a, a2, b):
            os.close(fd)


def test_the_kernel_releases_the_lock_of_a_sigkilled_holder(spawn: Callable[..., Proc], control_file: str) -> None:
    holder = spawn(_hold, control_file, control.LOCK_WRITE, True)
    holder.expect("held")
    waiter = spawn(_wait_for_lock, control_file, control.LOCK_WRITE)
    waiter.expect("waiting")
    wait_until_blocked(waiter.pid)
    fd = _open(control_file)
    try:
        assert not IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)
        assert not waiter.pending()
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.join() == -signal.SIGKILL
        waiter.expect("got")  # the blocked F_OFD_SETLKW is granted once the kernel dropped the dead one's lock
        assert not IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)  # the waiter holds it now
        waiter.send("exit")
        assert waiter.join() == 0
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)  # its exit released it
    finally:
        os.close(fd)


def test_shared_locks_coexist_and_an_exclusive_one_excludes_them(spawn: Callable[..., Proc], control_file: str) -> None:
    reader = spawn(_hold, control_file, control.LOCK_DMS, False)
    reader.expect("held")
    fd, other = _open(control_file), _open(control_file)
    try:
        assert IO.lock_range(fd, control.LOCK_DMS, exclusive=False, wait=False)  # shared beside shared
        assert IO.lock_range(other, control.LOCK_DMS, exclusive=False, wait=False)  # and another
        assert not IO.lock_range(other, control.LOCK_DMS, exclusive=True, wait=False)  # not alone: no conversion
        IO.unlock_range(other, control.LOCK_DMS)
        reader.send(("try", "exclusive"))
        assert reader.expect("taken") == ("taken", False)  # the parent's shared lock excludes it
        IO.unlock_range(fd, control.LOCK_DMS)
        reader.send(("try", "exclusive"))
        assert reader.expect("taken") == ("taken", True)  # the only holder converts in place
        assert not IO.lock_range(fd, control.LOCK_DMS, exclusive=False, wait=False)  # exclusive excludes shared
    finally:
        os.close(fd)
        os.close(other)
    reader.send("exit")
    assert reader.join() == 0


def test_a_lock_converts_in_place_both_ways(spawn: Callable[..., Proc], control_file: str) -> None:
    """Shared -> exclusive once alone, exclusive -> shared at once; the description never lets go meanwhile."""
    child = spawn(_hold, control_file, control.LOCK_WRITE, False)
    child.expect("held")
    fd = _open(control_file)
    try:
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=False, wait=False)
        assert not IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)  # the child's shared lock
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=False, wait=False)  # the refusal left it shared
        child.send("unlock")
        child.expect("unlocked")
        probe = _open(control_file)
        assert not IO.lock_range(probe, control.LOCK_WRITE, exclusive=True, wait=False)  # still held, shared
        os.close(probe)
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)  # shared -> exclusive
        child.send(("try", "shared"))
        assert child.expect("taken") == ("taken", False)
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=False, wait=False)  # exclusive -> shared
        child.send(("try", "shared"))
        assert child.expect("taken") == ("taken", True)
        child.send(("try", "exclusive"))
        assert child.expect("taken") == ("taken", False)  # the parent still holds it shared
    finally:
        os.close(fd)
    child.send("exit")
    assert child.join() == 0


def _close_inherited(conn: Connection, fd: int) -> None:
    os.close(fd)
    conn.send("closed")


def _unlock_inherited(conn: Connection, fd: int, byte: int) -> None:
    IO.unlock_range(fd, byte)
    conn.send("unlocked")


def test_a_forked_child_must_close_an_inherited_descriptor_never_unlock_through_it(
    spawn: Callable[..., Proc], control_file: str
) -> None:
    """Why the engine's fork rule is "close, never unlock, in the child".

    A forked child's copy of a descriptor shares the parent's open file
    description, and with it every OFD lock taken through it. Closing the
    copy (or the child's exit) drops one reference to the description: the
    lock lives on with the parent's. An unlock through the copy acts on the
    description itself, so it releases the parent's lock, behind its back.
    """
    fd = _open(control_file)
    probe = _open(control_file)
    try:
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)
        assert IO.lock_range(fd, control.LOCK_FLUSH, exclusive=True, wait=False)
        closer = spawn(_close_inherited, fd)
        closer.expect("closed")
        assert closer.join() == 0
        assert not IO.lock_range(probe, control.LOCK_WRITE, exclusive=True, wait=False)  # still the parent's
        assert not IO.lock_range(probe, control.LOCK_FLUSH, exclusive=True, wait=False)
        unlocker = spawn(_unlock_inherited, fd, control.LOCK_WRITE)
        unlocker.expect("unlocked")
        assert unlocker.join() == 0
        assert IO.lock_range(probe, control.LOCK_WRITE, exclusive=True, wait=False)  # the parent lost it
        assert not IO.lock_range(probe, control.LOCK_FLUSH, exclusive=True, wait=False)  # untouched
    finally:
        os.close(fd)
        os.close(probe)


def _interrupted_lock_wait(conn: Connection, path: str) -> None:
    returned = []

    def note(signum: int, frame: object) -> None:
        returned.append(signum)
        conn.send("handled")  # the handler returns: the wait goes on

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGUSR2, note)
    signal.signal(signal.SIGUSR1, interrupt)
    fd = _open(path)
    conn.send("waiting")
    try:
        IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=True)
    except KeyboardInterrupt:
        conn.send(("interrupted", len(returned)))
    else:
        conn.send(("locked", len(returned)))
    conn.recv()


def test_a_signal_ends_a_lock_wait_only_if_its_handler_raises(spawn: Callable[..., Proc], control_file: str) -> None:
    """EINTR in F_OFD_SETLKW: a handler that returns lets the wait go on; one that raises ends it with its exception."""
    fd = _open(control_file)
    try:
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)
        child = spawn(_interrupted_lock_wait, control_file)
        child.expect("waiting")
        wait_until_blocked(child.pid)
        os.kill(child.pid, signal.SIGUSR2)
        child.expect("handled")
        wait_until_blocked(child.pid)  # back in the wait
        assert not child.pending()
        os.kill(child.pid, signal.SIGUSR1)
        assert child.expect("interrupted") == ("interrupted", 1)
        IO.unlock_range(fd, control.LOCK_WRITE)
        probe = _open(control_file)
        assert IO.lock_range(probe, control.LOCK_WRITE, exclusive=True, wait=False)  # the child never got it
        os.close(probe)
        child.send("exit")
        assert child.join() == 0
    finally:
        os.close(fd)


def test_without_ofd_locks_lock_range_says_what_is_needed(control_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("logstore.embedded.fileio.OFD_LOCKS", False)
    fd = _open(control_file)
    try:
        with pytest.raises(UnsupportedPlatformError, match="open-file-description locks") as raised:
            IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)
        assert isinstance(raised.value, OSError) and isinstance(raised.value, LogStoreError)
        assert raised.value.errno == errno.ENOTSUP
        with pytest.raises(UnsupportedPlatformError):
            IO.unlock_range(fd, control.LOCK_WRITE)
    finally:
        os.close(fd)


def test_lock_bytes() -> None:
    assert (control.LOCK_DMS, control.LOCK_WRITE, control.LOCK_FLUSH, control.LOCK_COMPACT) == (0, 1, 2, 3)
    assert control.slot_lock_byte(0) == 1024 and control.slot_lock_byte(255) == 1279
    with pytest.raises(ValueError, match="slot"):
        control.slot_lock_byte(-1)


# -- the fault layers see every lock operation ----------------------------------------------------------


def test_the_fault_layers_count_lock_operations_and_crash_at_them(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    fs = FaultFS(store)
    fd = fs.open(str(store / "CONTROL"), os.O_RDWR | os.O_CREAT)
    probe = os.open(store / "CONTROL", os.O_RDWR)
    try:
        assert fs.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)
        assert not fs.lock_range(probe, control.LOCK_WRITE, exclusive=True, wait=False)  # uncounted: not fs's fd
        fs.unlock_range(fd, control.LOCK_WRITE)
        assert [op.site for op in fs.ops] == ["create:CONTROL", "lock:CONTROL", "unlock:CONTROL"]
        assert fs.locks == 3  # FileIO's own count: every lock and unlock call
    finally:
        fs.close(fd)

    crashing = FaultFS(store, crash_at=1, crash_when="before")
    fd = crashing.open(str(store / "CONTROL"), os.O_RDWR)
    try:
        with pytest.raises(Crash) as crash:
            crashing.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=True)
        assert str(crash.value.op) == "op 1 lock CONTROL"
        assert IO.lock_range(probe, control.LOCK_WRITE, exclusive=True, wait=False)  # "before": not taken
    finally:
        crashing.close(fd)
        os.close(probe)

    killer = KillPointIO(kill_point("unlock:1000000"))
    fd = killer.open(str(store / "CONTROL"), os.O_RDWR)
    try:
        killer.lock_range(fd, control.LOCK_FLUSH, exclusive=False, wait=False)
        killer.unlock_range(fd, control.LOCK_FLUSH)
        assert (killer.point.site_calls["lock"], killer.point.site_calls["unlock"]) == (1, 1)
    finally:
        killer.close(fd)


def _killed_at_lock(conn: Connection, path: str) -> None:
    io = KillPointIO(kill_point("lock.after:2:CONTROL"))
    fd = io.open(path, os.O_RDWR)
    io.lock_range(fd, control.LOCK_DMS, exclusive=False, wait=False)
    conn.send("first")
    io.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=True)
    conn.send("survived")


def test_a_kill_point_at_a_lock_kills_with_the_lock_taken_and_the_kernel_drops_it(
    spawn: Callable[..., Proc], control_file: str
) -> None:
    child = spawn(_killed_at_lock, control_file)
    child.expect("first")
    assert child.join() == -signal.SIGKILL
    with pytest.raises(EOFError):  # it never said "survived"
        child.conn.recv()
    fd = _open(control_file)
    try:
        assert IO.lock_range(fd, control.LOCK_WRITE, exclusive=True, wait=False)
        assert IO.lock_range(fd, control.LOCK_DMS, exclusive=True, wait=False)
    finally:
        os.close(fd)


# -- futex -----------------------------------------------------------------------------------------------------

WORD = 4096 + 128  # the futex word's byte in the test file (the design's wake_seq is at byte 128 of CONTROL)


def _futex_waiter(conn: Connection, path: str) -> None:
    fd = _open(path)
    futex = control.Futex(fd, WORD)
    os.close(fd)
    seen = futex.value
    conn.send(("waiting", seen))
    outcome = futex.wait(seen, WAIT)
    conn.send(("returned", outcome.name, futex.value))
    futex.close()


@FUTEX
def test_a_futex_waiter_in_another_process_wakes_when_woken(spawn: Callable[..., Proc], control_file: str) -> None:
    fd = _open(control_file)
    futex = control.Futex(fd, WORD)
    os.close(fd)
    try:
        child = spawn(_futex_waiter, control_file)
        _, seen = child.expect("waiting")
        wait_until_blocked(child.pid)
        assert not child.pending()
        assert futex.wake() == 1  # one waiter woken
        assert child.expect("returned") == ("returned", "WOKEN", (seen + 1) & 0xFFFFFFFF)
        assert futex.value == (seen + 1) & 0xFFFFFFFF
        assert child.join() == 0
        with open(control_file, "rb") as f:  # the word is the file's: a little-endian u32 at its byte
            f.seek(WORD)
            assert struct.unpack("<I", f.read(4))[0] == futex.value
    finally:
        futex.close()


@FUTEX
def test_a_futex_wait_returns_at_once_when_the_word_changed_and_at_its_timeout(control_file: str) -> None:
    fd = _open(control_file)
    try:
        with control.Futex(fd, WORD) as futex:
            value = futex.value
            assert futex.wait(value + 1, WAIT) is control.Wake.CHANGED
            assert futex.wake() == 0  # nobody waits
            assert futex.wait(value, WAIT) is control.Wake.CHANGED  # the wake changed the word
            assert futex.wait(value + 1, 0.01) is control.Wake.TIMED_OUT
            assert futex.wait(value + 1, 0) is control.Wake.TIMED_OUT
            assert futex.wait(value + 1, -1.0) is control.Wake.TIMED_OUT
        assert futex.closed
        with pytest.raises(ValueError, match="after close"):
            futex.wake()
        futex.close()  # idempotent
        with pytest.raises(ValueError, match="multiple of 8"):
            control.Futex(fd, WORD + 4)
        with pytest.raises(ValueError, match="past the end"):
            control.Futex(fd, 2 * 4096)
    finally:
        os.close(fd)


@FUTEX
def test_a_futex_word_wraps(control_file: str) -> None:
    with open(control_file, "r+b") as f:
        f.seek(WORD)
        f.write(struct.pack("<I", 0xFFFFFFFF))
    fd = _open(control_file)
    try:
        with control.Futex(fd, WORD) as futex:
            assert futex.value == 0xFFFFFFFF
            futex.wake()
            assert futex.value == 0
    finally:
        os.close(fd)


def _waker(conn: Connection, path: str, start: Event, wakes: int) -> None:
    fd = _open(path)
    futex = control.Futex(fd, WORD)
    os.close(fd)
    conn.send("ready")
    start.wait(WAIT)
    for _ in range(wakes):
        futex.wake()
    conn.send("done")
    futex.close()


@FUTEX
def test_wake_op_adds_exactly_one_per_call_across_processes(spawn: Callable[..., Proc], control_file: str) -> None:
    processes, wakes = scale(4, 8), scale(2_000, 200_000)
    fd = _open(control_file)
    futex = control.Futex(fd, WORD)
    os.close(fd)
    try:
        before = futex.value
        start = CTX.Event()
        children = [spawn(_waker, control_file, start, wakes) for _ in range(processes)]
        for child in children:
            child.expect("ready")
        start.set()
        for child in children:
            child.expect("done", timeout=scale(WAIT, 600))
            assert child.join() == 0
        assert futex.value == (before + processes * wakes) & 0xFFFFFFFF
    finally:
        futex.close()


def _interrupted_futex_wait(conn: Connection, path: str) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGUSR1, interrupt)
    fd = _open(path)
    futex = control.Futex(fd, WORD)
    conn.send("waiting")
    try:
        outcome = futex.wait(futex.value, WAIT)
    except KeyboardInterrupt:
        conn.send("interrupted")
    else:
        conn.send(("returned", outcome.name))


@FUTEX
def test_a_signal_handler_that_raises_ends_a_futex_wait(spawn: Callable[..., Proc], control_file: str) -> None:
    child = spawn(_interrupted_futex_wait, control_file)
    child.expect("waiting")
    wait_until_blocked(child.pid)
    os.kill(child.pid, signal.SIGUSR1)
    child.expect("interrupted")
    assert child.join() == 0


@FUTEX
def test_the_futex_system_call_table_and_wake_op_encoding() -> None:
    assert control.SYS_FUTEX == {"x86_64": 202, "aarch64": 98}
    assert control.WAKE_OP_ADD_ONE == 0x10001000  # op ADD << 28 | cmp EQ << 24 | oparg 1 << 12 | cmparg 0
    assert control.available()


def test_without_futexes_available_is_false_and_a_futex_says_why(
    control_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    assert control._probe() == (
        None,
        "no futex system call number known for machine 'riscv64' (known: x86_64, aarch64)",
    )
    monkeypatch.setattr(control, "_libc", None)
    monkeypatch.setattr(control, "_libc_error", "no futex system call number known for machine 'riscv64'")
    assert not control.available()
    fd = _open(control_file)
    try:
        with pytest.raises(UnsupportedPlatformError, match="futex: no futex system call number known") as raised:
            control.Futex(fd, WORD)
        assert isinstance(raised.value, OSError)
    finally:
        os.close(fd)


@FUTEX
def test_a_python_mapping_of_the_file_closes_while_a_futex_maps_its_word(control_file: str) -> None:
    """The futex's address comes from its own mapping: no buffer export pins a Python ``mmap`` of the file."""
    fd = _open(control_file)
    try:
        mapping = mmap.mmap(fd, 2 * 4096)
        with control.Futex(fd, WORD) as futex:
            futex.wake()
            assert struct.unpack_from("<I", mapping, WORD)[0] == futex.value == 1
            mapping.close()  # no BufferError
            assert futex.value == 1
    finally:
        os.close(fd)


# -- 8-byte words in a shared mapping ------------------------------------------------------------------------

WORDS = (1, 2, 7, 8, 9, 511, 512, 1023)  # word indexes: several cache lines and both pages of the file
ONES = 0x0101010101010101


def _store_words(conn: Connection, path: str, stop: Event) -> None:
    fd = _open(path)
    mapping = mmap.mmap(fd, 2 * 4096)
    os.close(fd)
    words = memoryview(mapping).cast("Q")
    conn.send("storing")
    k = 0
    while not stop.is_set():
        for _ in range(4096):
            k += 1
            value = (k & 0xFF) * ONES  # consecutive values differ in every byte
            for i in WORDS:
                words[i] = value
    conn.send(("stored", k))
    words.release()
    mapping.close()


def _load_words(conn: Connection, path: str, reads: int, limit: float) -> None:
    fd = _open(path)
    mapping = mmap.mmap(fd, 2 * 4096)
    os.close(fd)
    words = memoryview(mapping).cast("Q")
    torn: list[int] = []
    seen: set[int] = set()
    done = 0
    deadline = time.monotonic() + limit
    while done < reads or len(seen) < 3:
        for i in WORDS:
            value = words[i]
            if value != (value & 0xFF) * ONES:
                torn.append(value)
            seen.add(value & 0xFF)
        done += 1
        if done % 4096 == 0 and time.monotonic() > deadline:
            break
    conn.send(("loaded", done * len(WORDS), len(seen), [hex(v) for v in torn[:10]], len(torn)))
    words.release()
    mapping.close()


def test_aligned_8_byte_words_of_a_shared_mapping_are_never_read_torn(
    spawn: Callable[..., Proc], control_file: str
) -> None:
    """One process stores k * 0x0101010101010101 through memoryview.cast("Q"); readers never see mixed bytes."""
    readers, reads, limit = scale(2, 3), scale(50_000, 5_000_000), scale(WAIT, 1800)
    stop = CTX.Event()
    writer = spawn(_store_words, control_file, stop)
    writer.expect("storing")
    children = [spawn(_load_words, control_file, reads, limit) for _ in range(readers)]
    results = [child.expect("loaded", timeout=limit + WAIT) for child in children]
    stop.set()
    _, stored = writer.expect("stored")
    for child in (writer, *children):
        assert child.join() == 0
    for _, loads, distinct, examples, torn in results:
        assert torn == 0, f"{torn} torn loads of {loads}, e.g. {examples}"
        assert distinct >= 3, f"the readers saw only {distinct} values: the writer did not run beside them"
        assert loads >= reads * len(WORDS)
    assert stored > 0
