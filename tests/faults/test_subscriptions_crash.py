"""Subscriptions across process deaths, on the embedded store: a consumer process killed with SIGKILL.

- Killed after handling messages but before acknowledging them (in every durability mode: a process
  crash keeps what was handed to the OS): the restarted consumer resumes right after its last
  acknowledgement, so it gets the handled messages again (at least once); the dead process's member
  is free at once.
- Killed at every file operation on ``SUBSCRIPTIONS`` (``LOGSTORE_KILL_AT=any.<when>:<n>:SUBSCRIPTIONS``,
  before and after each, and torn for each ``pwrite``), from the first subscribe through two acks to the
  close: the saved position is the one before or the one after the operation's step (the subscription
  absent or at 0 while it is being created), never anything else; a read-only open lists what a
  writable one then resumes from.
- Killed at a random acknowledgement of a consumer that acks each message: the position is the last
  acknowledgement it reported or the one it was making.
- After every kill, ``logstore verify`` finds the store clean, before and after a writable open.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.fileio import KILL_AT_ENV
from logstore.embedded.verify import verify
from logstore.subscriptions import member_of
from tests.faultfs import FaultFS, Op, write_image
from tests.helpers import ROOT, SMALL_SEGMENT, child_env
from tests.stress import STRESS

WAIT = 60.0  # seconds to wait for a child's line before the test fails rather than hangs
CATEGORY = "order"
STREAMS = [f"order-{i}" for i in range(6)] + ["user-1", "user-2"]
MODES = ("fsync", "batch", "none")
KILL_POINT_MODES = ["fsync", "none"] if STRESS else ["fsync"]
"""The durability modes of the kill-point enumeration: "none" too under ``LOGSTORE_STRESS=1``."""


@pytest.fixture(autouse=True)
def _no_kill_point_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill points are for the consumer processes only."""
    monkeypatch.delenv(KILL_AT_ENV, raising=False)


def _fill(path: Path, rounds: int = 4) -> list[tuple[int, str]]:
    """Interleaved one-message commits to :data:`STREAMS`; (global offset, stream) of the category's messages."""
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for r in range(rounds):
            for name in STREAMS:
                with store.transaction() as tx:
                    tx.append(name, store.head(name), [Envelope.new("E", {"s": name, "r": r})])
        with store.category(CATEGORY) as reader:
            return [(reader.offset(), reader.stream_name()) for _env in reader]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, str]]]:
    """A store with messages and no subscription, copied by each run; the category's (global offset, stream)."""
    path = tmp_path_factory.mktemp("subs-template") / "store"
    return path, _fill(path)


def _copy(template: tuple[Path, list[tuple[int, str]]], to: Path) -> Path:
    if to.exists():
        shutil.rmtree(to)
    shutil.copytree(template[0], to)
    return to


def _assert_clean(path: Path, when: str) -> None:
    result = verify(os.fspath(path))
    assert result.ok, f"verify {when}:\n" + "\n".join(str(p) for p in result.problems)


def _positions(path: Path, readonly: bool = True) -> tuple[int, ...] | None:
    with logstore.open(path, readonly=readonly) as store:
        found = [info for info in store.subscriptions() if info.name == "c"]
    return found[0].positions if found else None


class _Child:
    """A consumer process talking over pipes; its lines read with a deadline (select), never with sleeps."""

    def __init__(self, code: str, *args: str, kill_at: str | None = None) -> None:
        env = child_env()
        if kill_at is not None:
            env[KILL_AT_ENV] = kill_at
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.buf = b""

    def line(self) -> str:
        """The next line ("" at the end of the output)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            ready, _, _ = select.select([fd], [], [], WAIT)
            assert ready, f"the consumer printed nothing for {WAIT} s"
            chunk = os.read(fd, 65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line.decode()
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode() + "\n"

    def stderr(self) -> str:
        """What the consumer said on stderr (once it has exited)."""
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, str, str]:
        """Wait for the end; (exit status, the rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=WAIT)
        return self.proc.returncode, (self.buf + out).decode(), err.decode(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def children() -> Iterator[list[_Child]]:
    started: list[_Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.kill()


# -- killed between handling and acknowledging ---------------------------------------------

_CONSUMER = r"""
import sys
import logstore

path, durability, member, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = logstore.open(path, durability=durability)
sub = store.subscribe("c", "order", group=(member, size))
print("ready", sub.position, flush=True)
for command in sys.stdin:
    if command.startswith("take"):
        assert sub.try_next()
        print("handled", sub.offset(), sub.stream_name(), flush=True)
    elif command.startswith("ack"):
        sub.ack()
        print("acked", sub.position, flush=True)
"""


@pytest.mark.parametrize("durability", MODES)
def test_a_consumer_killed_before_acknowledging_gets_the_messages_again(
    template: tuple[Path, list[tuple[int, str]]], tmp_path: Path, durability: str, children: list[_Child]
) -> None:
    path = _copy(template, tmp_path / "store")
    size = 2
    owed = [(g, s) for g, s in template[1] if member_of(s, size) == 1]
    child = _Child(_CONSUMER, str(path), durability, "1", str(size))
    children.append(child)
    assert child.line().split() == ["ready", "0"], child.stderr()
    handled = []
    for _ in range(4):
        child.send("take")
        handled.append(child.line().split())
    child.send("ack")
    assert child.line().split() == ["acked", str(int(handled[-1][1]) + 1)]
    for _ in range(3):  # handled, never acknowledged
        child.send("take")
        handled.append(child.line().split())
    assert [(int(g), s) for _h, g, s in handled] == owed[:7]
    child.kill()
    assert child.proc.returncode == -signal.SIGKILL

    _assert_clean(path, "after the kill")
    saved = owed[3][0] + 1
    assert _positions(path) == (0, saved)
    # The dead process's member is free; the restarted consumer gets the unacknowledged messages again.
    with logstore.open(path, durability=durability) as store:
        with store.subscribe("c", CATEGORY, group=(1, size)) as sub:
            assert sub.position == saved
            again = [(sub.offset(), sub.stream_name()) for _env in sub]
        assert again == owed[4:]
    _assert_clean(path, "after the restart")


_ACKER = r"""
import sys
import logstore

path, durability = sys.argv[1], sys.argv[2]
store = logstore.open(path, durability=durability)
sub = store.subscribe("c", "order")
print("ready", flush=True)
while sub.try_next():
    print("acking", sub.offset(), flush=True)
    sub.ack()
    print("acked", sub.position, flush=True)
print("end", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("durability", MODES)
def test_a_consumer_killed_at_a_random_acknowledgement(
    template: tuple[Path, list[tuple[int, str]]], tmp_path: Path, durability: str, children: list[_Child]
) -> None:
    owed = [g for g, _s in template[1]]
    moments: tuple[int, ...] = (1, len(owed) // 3, len(owed) - 2)
    if not STRESS:  # CI: one kill per mode, each at another moment
        moments = moments[MODES.index(durability) : MODES.index(durability) + 1]
    for k, after in enumerate(moments):
        path = _copy(template, tmp_path / f"store-{k}")
        child = _Child(_ACKER, str(path), durability)
        children.append(child)
        assert child.line() == "ready\n", child.stderr()
        seen: list[str] = []
        while sum(line.startswith("acked") for line in seen) < after:
            seen.append(child.line())
        child.proc.send_signal(signal.SIGKILL)
        code, rest, _err = child.finish()  # and every line it printed before it died
        assert code == -signal.SIGKILL
        last, acking = 0, -1
        # A kill may cut the child's last line short: only whole lines (ended by a newline) are read.
        for words in (line.split() for line in [*seen, *rest.split("\n")[:-1]]):
            if words[0] == "acking":
                acking = int(words[1])
            elif words[0] == "acked":
                last = int(words[1])
        _assert_clean(path, f"after a kill after {after} acknowledgements")
        listed = _positions(path)
        assert listed is not None
        (position,) = listed
        # The last acknowledgement that returned, or the one it was making when it died.
        allowed = {last, acking + 1} if acking >= last else {last}
        assert position in allowed, (position, allowed)
        with logstore.open(path, durability=durability) as store, store.subscribe("c", CATEGORY) as sub:
            assert [sub.offset() for _env in sub] == [g for g in owed if g >= position]
        _assert_clean(path, "after the restart")


# -- killed at each file operation on SUBSCRIPTIONS -----------------------------------------

_STEPS = r"""
import os, sys
import logstore
from logstore.embedded.fileio import KILL_AT_ENV, kill_point

path, durability = sys.argv[1], sys.argv[2]
point = kill_point(os.environ[KILL_AT_ENV])
store = logstore.open(path, durability=durability)
print("opened", point.calls, flush=True)
sub = store.subscribe("c", "order")
print("subscribed", point.calls, sub.position, flush=True)
for _ in range(3):
    assert sub.try_next()
sub.ack()
print("acked", point.calls, sub.position, flush=True)
for _ in range(4):
    assert sub.try_next()
sub.ack()
print("acked", point.calls, sub.position, flush=True)
sub.close()
store.close()
print("closed", point.calls, flush=True)
"""

_KILL_LINE = re.compile(r"SIGKILL (before|after|torn) (\w+)")


def _run_steps(path: Path, durability: str, kill_at: str) -> tuple[int, list[list[str]], str]:
    child = _Child(_STEPS, str(path), durability, kill_at=kill_at)
    code, out, err = child.finish()
    return code, [line.split() for line in out.splitlines()], err


@pytest.mark.parametrize("durability", KILL_POINT_MODES)
def test_a_consumer_killed_at_each_operation_on_the_subscriptions_file(
    template: tuple[Path, list[tuple[int, str]]], tmp_path: Path, durability: str
) -> None:
    owed = [g for g, _s in template[1]]
    probe = _copy(template, tmp_path / "probe")
    code, lines, err = _run_steps(probe, durability, "any:1000000000:SUBSCRIPTIONS")
    assert code == 0, err
    assert [words[0] for words in lines] == ["opened", "subscribed", "acked", "acked", "closed"], lines
    opened, subscribed, first, second, closed = (int(words[1]) for words in lines)
    p1, p2 = owed[2] + 1, owed[6] + 1
    assert [int(lines[2][2]), int(lines[3][2])] == [p1, p2]
    # Every acknowledgement writes the file through the I/O seam, so kill points reach it.
    assert opened <= subscribed < first < second <= closed, lines

    def allowed(n: int) -> set[int | None]:
        if n <= subscribed:
            return {None, 0}  # being created: absent, or there at position 0
        if n <= first:
            return {0, p1}
        if n <= second:
            return {p1, p2}
        return {p2}  # closing writes nothing that could lose the last ack

    # Before and after each operation, and torn for a pwrite (found by the kill before it): in the CI tier
    # those of the acknowledgements (the crash images of the next test cover the subscribe's in CI).
    runs = [(n, when) for when in ("before", "after", "torn") for n in range(1, closed + 1)]
    if not STRESS:
        runs = [(n, when) for n, when in runs if n > subscribed]
    kills = 0
    pwrites: set[int] = set()
    problems: list[str] = []
    for n, when in runs:
        if when == "torn" and n not in pwrites:
            continue
        path = _copy(template, tmp_path / "store")
        code, lines, err = _run_steps(path, durability, f"any.{when}:{n}:SUBSCRIPTIONS")
        what = f"{durability}: killed {when} operation #{n} on SUBSCRIPTIONS"
        assert code == -signal.SIGKILL, f"{what}: the consumer was not killed (exit {code}): {err}"
        said = _KILL_LINE.search(err)
        assert said is not None, err
        if said.group(2) == "pwrite" and when == "before":
            pwrites.add(n)
        kills += 1
        for finding in _check_after_kill(path, durability, allowed(n), owed):
            problems.append(f"{what} ({err.strip().rpartition(': ')[2]}): {finding}")
    print(f"{durability}: {kills} kills at {closed} operations on SUBSCRIPTIONS ({len(pwrites)} pwrites)")
    assert not problems, f"{len(problems)} of {kills} kills left a damaged store:\n" + "\n".join(problems)
    assert kills >= 2 * (second - first)


def _check_after_kill(path: Path, durability: str, allowed: set[int | None], owed: list[int]) -> list[str]:
    """What is wrong with the store a consumer killed during a subscription write left: it must verify clean,
    list an allowed position (read-only and writable alike), resume there and take a new ack."""
    found = []
    result = verify(os.fspath(path))
    if not result.ok:
        found.append("verify after the kill: " + "; ".join(str(p) for p in result.problems))
    try:
        listed = _positions(path)
        position = None if listed is None else listed[0]
        if position not in allowed or (listed is not None and len(listed) != 1):
            found.append(f"read-only open lists positions {listed}, expected one of {allowed}")
        with logstore.open(path, durability=durability) as store:
            now = [info.positions for info in store.subscriptions()]
            if now != ([] if listed is None else [listed]):
                found.append(f"a writable open lists {now}, the read-only one {listed}")
            with store.subscribe("c", CATEGORY) as sub:  # the dead process's member is free
                start = position or 0
                delivered = [sub.offset() for _env in sub]
                if (sub.position, delivered) != (start, [g for g in owed if g >= start]):
                    found.append(f"resumed at {sub.position} with {delivered}, expected {start} and the rest")
                sub.ack()
        if _positions(path) != (owed[-1] + 1,):
            found.append(f"after a new ack: positions {_positions(path)}, expected {(owed[-1] + 1,)}")
    except Exception as exc:  # noqa: BLE001 - what the store refused is the finding
        found.append(f"{type(exc).__name__}: {exc}")
    result = verify(os.fspath(path))
    if not result.ok:
        found.append("verify after a writable open and an ack: " + "; ".join(str(p) for p in result.problems))
    return found


# -- machine crashes: what reached the disk ---------------------------------------------------

IMAGE_MODES = ("keep", "drop", "pages", "torn", "names")
"""The crash images of tests/faultfs.py: a process's crash ("keep"), and a machine's, which loses what was not
synced (all of it, by page, the last write torn, directory entries undone)."""


def test_a_machine_crash_at_each_operation_keeps_every_acknowledged_position(
    template: tuple[Path, list[tuple[int, str]]], tmp_path: Path
) -> None:
    """With durability="fsync" an ack is durable when it returns: a crash image taken after any operation
    of subscribing and acknowledging (of a process crash, or of a machine's: unsynced writes lost, kept by
    page, torn, directory entries undone) holds the position before the step or after it, and every
    position an ack returned; it verifies clean and resumes."""
    path = _copy(template, tmp_path / "store")
    owed = [g for g, _s in template[1]]
    images: list[tuple[int, str, str, dict[str, bytes | None]]] = []
    recording = [False]

    def on_op(fs: FaultFS, op: Op) -> None:
        if recording[0]:
            for mode in IMAGE_MODES:
                images.append((op.index, f"{op} ({op.site})", mode, fs.image_files(mode, random.Random(op.index))))

    fs = FaultFS(path, on_op=on_op)
    with logstore.open(path, io=fs, durability="fsync") as store:
        recording[0] = True
        sub = store.subscribe("c", CATEGORY)
        subscribed = fs.count
        for _ in range(3):
            assert sub.try_next()
        sub.ack()
        first, p1 = fs.count, sub.position
        for _ in range(4):
            assert sub.try_next()
        sub.ack()
        second, p2 = fs.count, sub.position
        recording[0] = False
        sub.close()
    assert subscribed < first < second and (p1, p2) == (owed[2] + 1, owed[6] + 1)

    def allowed(n: int) -> set[int | None]:
        if n <= subscribed:
            return {None, 0}
        if n < first:
            return {0, p1}
        if n < second:
            return {p1, p2}  # the first ack returned after operation `first`: it is durable from there
        return {p2}

    problems = []
    for k, (n, op, mode, files) in enumerate(images):
        image = tmp_path / f"image-{k}"
        write_image(image, files)
        for finding in _check_after_kill(image, "fsync", allowed(n), owed):
            problems.append(f"crash image {mode} after operation {op}: {finding}")
        shutil.rmtree(image)
    print(f"{len(images)} crash images of {second} operations")
    assert not problems, f"{len(problems)} findings in {len(images)} crash images:\n" + "\n".join(problems)


def test_with_batch_durability_an_ack_is_synced_within_the_interval(
    template: tuple[Path, list[tuple[int, str]]], tmp_path: Path
) -> None:
    """durability="batch": an ack reaches the disk within ``fsync_interval`` of returning, with no later ack
    and no close to push it: a machine crash after that keeps it."""
    path = _copy(template, tmp_path / "store")
    owed = [g for g, _s in template[1]]
    synced = threading.Event()
    acked = threading.Event()

    def on_op(fs: FaultFS, op: Op) -> None:
        if acked.is_set() and op.name in ("fsync", "fdatasync") and op.path == "SUBSCRIPTIONS":
            synced.set()

    fs = FaultFS(path, on_op=on_op)
    interval = 0.05
    store = logstore.open(path, io=fs, durability="batch", fsync_interval=interval)
    with store, store.subscribe("c", CATEGORY) as sub:
        for _ in range(3):
            assert sub.try_next()
        sub.ack()
        assert sub.try_next()
        acked.set()
        sub.ack()  # the last ack: nothing after it pushes it to the disk but the interval
        # An event, not a sleep: the sync itself sets it. The bound leaves room for a loaded machine.
        assert synced.wait(40 * interval), f"no sync of SUBSCRIPTIONS within {40 * interval} s of the ack"
        image = tmp_path / "image"
        fs.image(image, "drop")
        assert _positions(image) == (owed[3] + 1,)
