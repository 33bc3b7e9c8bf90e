"""Crash-point enumeration over the coordination steps of several writers.

Two writable stores opened in one process are two participants of ``CONTROL`` exactly as two processes are
(each has its own ``Follower``, turns and write-lock description), so a workload drives participants A and B
from one test, each through a :class:`Participant` (a :class:`~logstore.FileIO` that hands every operation
to one shared :class:`tests.faultfs.FaultFS`: one model of what is durable, as one machine's disk is). The
FaultFS's ``on_op`` callback sees the shadow model after every counted operation of either participant
(their byte-range ``lock``/``unlock`` included): the disk a power loss at that operation leaves. Each such
state is imaged (``keep``, ``drop``, ``pages``, ``torn``, ``names``, as tests/faults/test_crash_points.py
does) and opened by a first opener, which recovers it; then:

- the store equals the model after some prefix of the actions, between the actions acknowledged (their call
  returned, A's and B's alike) and the actions handed over: every acknowledged commit is there exactly once
  and whole, nothing partial, per-stream offsets contiguous (the checks of ``read_state``);
- every message sits at the global offset its commit was acknowledged at (each commit's returned range is
  checked against the workload's offsets as it returns), and ``global_head`` is the end of that prefix: the
  global offsets have no gap;
- no message of an acknowledged action (nor of one the store kept) is in ``lost+found/``;
- the store takes a new transaction, and ``verify`` finds nothing wrong once it is closed.

The workloads (``durability="fsync"``, 64 KiB segments):

1. *catch-up*: A and B alternate commits on shared streams (new streams appear as they go, offsets given
   exactly or as ``ANY``, some stale exact offsets that must conflict and write nothing), across segment
   rolls; and pairs of commits run at once in two threads, held at the flush lock so that one
   participant's ``fdatasync`` makes the other's commit durable (A's commit synced by B's flush, and B's
   by A's);
2. *hand-over*: A commits, B commits, A truncates and deletes (the write lock goes from one to the other at
   each turn), B's commits pass ``checkpoint_bytes``; A closes (an unclean
   checkpoint: B is still open), B goes on, B closes;
3. *takeover*: A dies in its turn (its Participant raises :class:`~tests.faultfs.Crash` at a chosen
   operation, A's store fails with the intent word set and is abandoned): after writing its group past the
   tail, in the middle of a roll (a later segment file made), or after publishing its tail but before its
   sync; B's next commit takes over (``lost+found/``, the later segment removed, the bytes past the tail
   zeroed and synced) and B goes on. A dead group that was never published may come back after a power loss
   only as long as nothing was committed after it; one that was published counts like any commit in flight.

Sized by ``tests.stress.scale``: the CI tier checks every operation of one or two seeds per workload with two modes in
rotation; ``LOGSTORE_STRESS=1`` checks every mode (three draws of ``pages`` and ``torn``) at every operation
of more seeds. Each test prints a summary line (``-s``)::

    LOGSTORE_STRESS=1 python -m pytest -q -s tests/faults/test_crash_points_writers.py
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope, FileIO, OffsetConflictError, StoreFailedError
from logstore.embedded import layout
from logstore.embedded.control import LOCK_FLUSH, LOCK_WRITE
from logstore.embedded.verify import verify
from tests.faultfs import Crash, FaultFS, Op, file_kind, write_image
from tests.faults.test_crash_points import (
    Action,
    Campaign,
    Model,
    State,
    envelopes,
    image_key,
    matches,
    modes_for,
    read_state,
    rng_for,
    scratch_root,
)
from tests.helpers import SMALL_SEGMENT, quiet_logstore
from tests.stress import SEED, STRESS, scale

# -- a participant: its own FileIO over the shared model ------------------------------------------


class Participant(FileIO):
    """One writable store's file system: every operation goes to the shared FaultFS (one model of the disk).

    ``arm(site, n, when)``: the participant dies at the ``n``-th operation of ``site`` (``"pwrite:segment"``)
    from then on, after it is done or instead of it: :class:`Crash` is raised, and from then on every
    operation that changes something raises :class:`Crash` without reaching the files (an ``unlock`` drops
    the lock, as the kernel does for a process that died). ``gate``: called with ``("before"|"after", byte)``
    around each waiting lock of a ``CONTROL`` byte and each try of the flush lock, for tests that hold a participant
    at one step of its turn.
    """

    def __init__(self, fs: FaultFS, name: str) -> None:
        super().__init__()
        self.fs = fs
        self.name = name
        self.dead: Crash | None = None
        self.gate: Callable[[str, int], None] | None = None
        self._arm: tuple[str, int, str] | None = None
        self._seen = 0
        self.fdatasyncs = 0  # of a segment (a commit's flush), by this participant
        self.in_turn = False  # holds the write lock (a flush taken now is a sync inside its turn)

    def arm(self, site: str, n: int, when: str = "after") -> None:
        self._arm, self._seen = (site, n, when), 0

    def _do(self, site: str, call: Callable[[], Any]) -> Any:
        if self.dead is not None:
            raise Crash(None)
        die = False
        if self._arm is not None and self._arm[0] == site:
            self._seen += 1
            die = self._seen == self._arm[1]
        if die and self._arm is not None and self._arm[2] == "before":
            self.dead = Crash(None)
            raise self.dead
        result = call()
        if site == "fdatasync:segment":
            self.fdatasyncs += 1
        if die:
            self.dead = Crash(self.fs.ops[-1] if self.fs.ops else None)
            raise self.dead
        return result

    def _kind(self, fd: int) -> str:
        return _fd_kind(self.fs, fd)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if flags & os.O_CREAT:
            rel = os.path.relpath(path, self.fs.root)
            return int(self._do(f"create:{_kind_of(rel)}", lambda: self.fs.open(path, flags, mode)))
        return self.fs.open(path, flags, mode)

    def close(self, fd: int) -> None:
        self.fs.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        self._do(f"pwrite:{self._kind(fd)}", lambda: self.fs.pwrite(fd, data, position))

    def fdatasync(self, fd: int) -> None:
        self._do(f"fdatasync:{self._kind(fd)}", lambda: self.fs.fdatasync(fd))

    def fsync(self, fd: int) -> None:
        self._do(f"fsync:{self._kind(fd)}", lambda: self.fs.fsync(fd))

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        self._do(f"fallocate:{self._kind(fd)}", lambda: self.fs.fallocate(fd, offset, length))

    def lock_range(self, fd: int, byte: int, exclusive: bool, wait: bool) -> bool:
        gate = self.gate if wait or byte == LOCK_FLUSH else None  # the flush lock is tried, then waited for
        if gate is not None and self.dead is None:
            gate("before", byte)
        site = "lock:FLUSH" if byte == LOCK_FLUSH else f"lock:{self._kind(fd)}"
        taken = bool(self._do(site, lambda: self.fs.lock_range(fd, byte, exclusive, wait)))
        if byte == LOCK_WRITE and taken:
            self.in_turn = True
        if gate is not None:
            gate("after", byte)
        return taken

    def unlock_range(self, fd: int, byte: int) -> None:
        if byte == LOCK_WRITE:
            self.in_turn = False
        if self.dead is not None:
            FileIO.unlock_range(self, fd, byte)  # the kernel drops a dead process's locks: nothing recorded
            return
        self._do(f"unlock:{self._kind(fd)}", lambda: self.fs.unlock_range(fd, byte))

    def rename(self, src: str, dst: str) -> None:
        self._do(f"rename:{_kind_of(os.path.relpath(src, self.fs.root))}", lambda: self.fs.rename(src, dst))

    def unlink(self, path: str) -> None:
        self._do(f"unlink:{_kind_of(os.path.relpath(path, self.fs.root))}", lambda: self.fs.unlink(path))

    def mkdir(self, path: str) -> None:
        self._do(f"mkdir:{_kind_of(os.path.relpath(path, self.fs.root))}", lambda: self.fs.mkdir(path))

    def rmdir(self, path: str) -> None:
        self._do("rmdir", lambda: self.fs.rmdir(path))

    def fsync_dir(self, path: str) -> None:
        self._do(f"fsync_dir:{_kind_of(os.path.relpath(path, self.fs.root))}", lambda: self.fs.fsync_dir(path))


def _kind_of(rel: str) -> str:
    return file_kind(rel)


def _fd_kind(fs: FaultFS, fd: int) -> str:
    return _kind_of(fs._paths.get(fd, f"<fd {fd}>"))


# -- the workloads -------------------------------------------------------------------------------

STREAMS = ("orders", "payments", "shipping", "audit")


@dataclass(frozen=True)
class Move:
    """One thing the workload does: ``do`` action k (by its participant), a ``pair`` (actions k and k+1, by A
    and B, at once: ``how`` says whose flush syncs both), ``close`` a participant, or ``die`` (A's action k,
    cut short at ``how``, ``"<site>/<n>/<after|before>"``)."""

    kind: str
    k: int = 0
    who: str = ""
    how: str = ""


@dataclass
class Scenario:
    name: str
    seed: int
    actions: list[Action]
    who: list[str]  # the participant of each action
    anys: list[frozenset[str]]  # the streams each action appends to at ANY
    moves: list[Move]
    options: dict[str, Any]
    dead: int | None = None  # A's action that dies in its turn
    dead_published: bool = False  # whether the dead action's tail was published before it died
    same_size: bool = False  # every message of the same size (a fixed pad)
    with_dead: list[State] = field(init=False)
    without_dead: list[State] = field(init=False)
    ends: list[int] = field(init=False)  # ends[k]: the global offset after actions < k (the dead one applied)
    ends_without: list[int] = field(init=False)
    goffs: dict[tuple[str, int, int], int] = field(init=False)  # (stream, offset, k) -> its global offset

    def __post_init__(self) -> None:
        self.goffs = {}
        for skip in (False, True):
            model, states, ends, goff = Model(), [], [0], 0
            states.append(model.state())
            for k, action in enumerate(self.actions):
                if self.dead is not None and k > self.dead and skip == self.dead_published:
                    # Nothing is written after an unpublished dead group (the next commit goes where it was);
                    # a published one is followed like any commit.
                    break
                if action.kind in ("tx", "truncate", "delete") and not (skip and k == self.dead):
                    model.apply(k, action)
                    if action.kind == "tx":
                        for stream, offset, n in action.appends:
                            for i in range(n):
                                self.goffs.setdefault((stream, offset + i, k), goff)
                                goff += 1
                    else:
                        goff += 1
                states.append(model.state())
                ends.append(goff)
            if skip:
                self.without_dead, self.ends_without = states, ends
            else:
                self.with_dead, self.ends = states, ends

    def expected_range(self, k: int) -> range:
        """The global offsets action k is acknowledged at (after an unpublished dead group: where it was)."""
        ends = self.ends_without if self.dead is not None and k > self.dead and not self.dead_published else self.ends
        return range(ends[k], ends[k + 1])


class _Gen:
    """Builds a scenario's actions: tracks heads, gives exact or ANY offsets, stale offsets for conflicts."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.heads: dict[str, int] = {}
        self.firsts: dict[str, int] = {}
        self.actions: list[Action] = []
        self.who: list[str] = []
        self.anys: list[frozenset[str]] = []
        self.new = 0
        self.last: dict[str, tuple[str, int]] = {}  # stream -> (participant, head before its last append)

    def tx(self, who: str, streams: list[str] | None = None, sizes: tuple[int, int] = (1, 3)) -> int:
        rng = self.rng
        if streams is None:
            streams = rng.sample(STREAMS, rng.randint(1, 3))
            if rng.random() < 0.3:
                self.new += 1
                streams.append(f"new-{self.new}")
        appends, anys = [], set()
        for stream in streams:
            n = rng.randint(*sizes)
            head = self.heads.get(stream, 0)
            appends.append((stream, head, n))
            self.last[stream] = (who, head)
            self.heads[stream] = head + n
            if rng.random() < 0.4:
                anys.add(stream)
        return self._add(who, Action("tx", tuple(appends)), frozenset(anys))

    def conflict(self, who: str) -> int | None:
        """``who`` appends at the head a stream had before the other participant's last append to it."""
        stale = [(s, head) for s, (w, head) in sorted(self.last.items()) if w != who]
        if not stale:
            return None
        stream, head = self.rng.choice(stale)
        return self._add(who, Action("conflict", ((stream, head, 1),)), frozenset())

    def remove(self, who: str, kind: str) -> int | None:
        """A truncation or deletion that removes something (one that removes nothing writes no record)."""
        live = [s for s in sorted(self.heads) if self.firsts.get(s, 0) < self.heads[s]]
        if not live:
            return None
        stream = self.rng.choice(live)
        if kind == "truncate":
            before = self.rng.randint(self.firsts.get(stream, 0) + 1, self.heads[stream])
            self.firsts[stream] = before
            return self._add(who, Action("truncate", stream=stream, before=before), frozenset())
        self.firsts[stream] = self.heads[stream]
        return self._add(who, Action("delete", stream=stream), frozenset())

    def _add(self, who: str, action: Action, anys: frozenset[str]) -> int:
        self.actions.append(action)
        self.who.append(who)
        self.anys.append(anys)
        return len(self.actions) - 1


FSYNC = {"segment_size": SMALL_SEGMENT, "checkpoint_bytes": 32 * 1024, "durability": "fsync"}


def catch_up_scenario(seed: int, rounds: int) -> Scenario:
    """A and B alternate commits (rolls, new streams, ANY, conflicts); every fourth round a pair at once."""
    gen = _Gen(seed)
    moves: list[Move] = []
    for r in range(rounds):
        if r % 4 == 3:
            k = gen.tx("A")
            gen.tx("B")
            moves.append(Move("pair", k, how="B syncs A" if r % 8 == 3 else "A syncs B"))
            continue
        for who in ("A", "B"):
            if gen.rng.random() < 0.12:
                c = gen.conflict(who)
                if c is not None:
                    moves.append(Move("do", c))
            moves.append(Move("do", gen.tx(who)))
    moves += [Move("close", who="A"), Move("close", who="B")]
    return Scenario("catch-up", seed, gen.actions, gen.who, gen.anys, moves, dict(FSYNC))


def hand_over_scenario(seed: int, rounds: int) -> Scenario:
    """A commits, B commits, A truncates or deletes, B's commits pass checkpoint_bytes; A closes first."""
    gen = _Gen(seed)
    moves: list[Move] = []
    for r in range(rounds):
        moves.append(Move("do", gen.tx("A")))
        moves.append(Move("do", gen.tx("B")))
        removal = gen.remove("A", "delete" if r % 3 == 2 else "truncate")
        if removal is not None:
            moves.append(Move("do", removal))
        moves.append(Move("do", gen.tx("B", sizes=(2, 5))))
    moves.append(Move("close", who="A"))
    for _ in range(2):
        moves.append(Move("do", gen.tx("B")))
    moves.append(Move("close", who="B"))
    options = dict(FSYNC, checkpoint_bytes=8 * 1024)
    return Scenario("hand-over", seed, gen.actions, gen.who, gen.anys, moves, options)


DEATHS = {
    # where A dies in its turn: (site/n/when of its dying action, whether its tail was published, its group)
    "group past the tail": ("pwrite:segment/1/after", False, "small"),
    "group past the tail, written back": ("pwrite:segment/1/after", False, "shaped"),
    "in a roll": ("rename:segment.tmp/1/after", False, "big"),
    "after the roll": ("pwrite:segment/2/after", False, "big"),
    "before its sync": ("lock:FLUSH/1/after", True, "small"),  # its tail published, holding the flush lock
}


def takeover_scenario(seed: int, death: str, before: int, after: int) -> Scenario:
    """A and B alternate ``before`` commits; A dies in its next turn (``DEATHS``); B commits ``after`` times."""
    gen = _Gen(seed)
    site, published, group = DEATHS[death]
    moves: list[Move] = []
    for _ in range(before):
        moves.append(Move("do", gen.tx("A")))
        moves.append(Move("do", gen.tx("B")))
    if group == "big":  # about 45 KiB: it does not fit in what the 64 KiB segment has left, it rolls
        k = gen.tx("A", ["orders", "audit"], sizes=(30, 30))
    elif group == "shaped":  # three messages of one size; B's next commit is one like the first of them
        k = gen.tx("A", ["orders"], sizes=(3, 3))
    else:
        k = gen.tx("A")
    moves.append(Move("die", k, how=site))
    if group == "shaped":
        # The system writes the dead group's pages back before the next turn: they are on the disk, and
        # only the takeover's zeroing (synced before B writes) keeps its second and third records from
        # reading as a transaction after B's shorter one.
        moves.append(Move("writeback"))
    if not published:
        # The dead group's offsets were never taken: the next commits go where it was.
        for stream, offset, _n in gen.actions[k].appends:
            gen.heads[stream] = offset
    if group == "shaped":
        moves.append(Move("do", gen.tx("B", ["orders"], sizes=(1, 1))))
    for _ in range(after):
        moves.append(Move("do", gen.tx("B")))
    moves.append(Move("close", who="B"))
    return Scenario(
        f"takeover {death}",
        seed,
        gen.actions,
        gen.who,
        gen.anys,
        moves,
        dict(FSYNC, checkpoint_bytes=256 * 1024),  # no checkpoint (and its sync) in the dying turn but after a roll
        k,
        published,
        group == "shaped",
    )


# -- running a scenario --------------------------------------------------------------------------


class Progress:
    """Which actions were handed over and which acknowledged (their call returned); read in the op callback."""

    def __init__(self, dead: int | None = None) -> None:
        self.lock = threading.Lock()
        self.dead = dead  # never acknowledged; the prefixes allowed with or without it are the check's
        self.acked: set[int] = set()
        self.submitted: set[int] = set()
        self.shared: list[str] = []  # the pairs whose commits one participant's fdatasync made durable

    def submit(self, *ks: int) -> None:
        with self.lock:
            self.submitted.update(ks)

    def ack(self, k: int) -> None:
        with self.lock:
            self.acked.add(k)

    def bounds(self) -> tuple[int, int]:
        with self.lock:
            lo = 0
            # The dead action is never acknowledged: past it once a later one is (which lies after it, if it is kept).
            while lo in self.acked or (lo == self.dead and any(k > lo for k in self.acked)):
                lo += 1
            return lo, max(self.submitted, default=-1) + 1


def _perform(store: logstore.Store, sc: Scenario, k: int, progress: Progress) -> None:
    """Action k on ``store``; a conflict must fail and write nothing; a commit's offsets are checked."""
    action = sc.actions[k]
    if action.kind in ("tx", "conflict"):
        try:
            tx, committer = store.begin_tx()
            for stream, offset, n in action.appends:
                at = logstore.ANY if stream in sc.anys[k] else offset
                store.append_messages(tx, stream, at, _envelopes(sc, k, stream, offset, n))
            got = committer.commit()
        except OffsetConflictError:
            if action.kind != "conflict":
                raise
        else:
            if action.kind == "conflict":
                raise AssertionError(f"{sc.name} action {k}: a stale offset committed at {got}")
            want = sc.expected_range(k)
            if got != want:
                raise AssertionError(f"{sc.name} action {k} by {sc.who[k]}: committed at {got}, expected {want}")
    elif action.kind == "truncate":
        store.truncate_stream(action.stream, action.before)
    elif action.kind == "delete":
        store.delete_stream(action.stream)
    progress.ack(k)


def _pair(
    stores: dict[str, logstore.Store], ios: dict[str, Participant], sc: Scenario, k: int, how: str, progress: Progress
) -> bool:
    """A's action k and B's k+1 at once, held so that one participant's flush may make both durable (``how``);
    returns whether it did (the other made no ``fdatasync`` of a segment).

    "B syncs A": A is held before it waits for the flush lock while B's whole commit runs (B's catch-up or
    its flush syncs the segment, A's group included); A then finds its group durable. "A syncs B": A is held
    holding the flush lock while B's turn writes after A's group, until B waits for the flush lock (or B is
    done: a checkpoint due in its turn syncs there, a roll syncs the segment it seals); A's sync then
    covers both. A sync inside A's own turn (a checkpoint due in it) is not held: B could not write
    until A's turn ends, and the pair then shares no flush.
    """
    a_at, go, b_at = threading.Event(), threading.Event(), threading.Event()
    gate_phase = "before" if how == "B syncs A" else "after"

    def gate_a(phase: str, byte: int) -> None:
        # Not a sync inside A's turn (maintenance that falls due syncs before the checkpoint, holding the
        # write lock): B could not write meanwhile. A's turn then ends with its groups durable, shared with none.
        if byte == LOCK_FLUSH and phase == gate_phase and not a_at.is_set() and not ios["A"].in_turn:
            a_at.set()
            go.wait(60)

    def gate_b(phase: str, byte: int) -> None:
        if byte == LOCK_FLUSH and phase == "before":
            b_at.set()

    errors: list[BaseException] = []

    def run(who: str, kk: int) -> None:
        try:
            _perform(stores[who], sc, kk, progress)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        finally:
            (b_at if who == "B" else a_at).set()  # done (a sync in its turn, a roll) without waiting to flush

    syncs_before = {who: io.fdatasyncs for who, io in ios.items()}
    ios["A"].gate = gate_a
    progress.submit(k)
    ta = threading.Thread(target=run, args=("A", k))
    ta.start()
    try:
        assert a_at.wait(60), "A never reached its flush"
        progress.submit(k + 1)
        if how == "B syncs A":
            run("B", k + 1)
        else:
            ios["B"].gate = gate_b
            tb = threading.Thread(target=run, args=("B", k + 1))
            tb.start()
            assert b_at.wait(60), "B never reached its flush"
            go.set()
            tb.join(60)
    finally:
        go.set()
        ta.join(60)
        ios["A"].gate = ios["B"].gate = None
    if errors:
        raise errors[0]
    synced = {who: io.fdatasyncs - syncs_before[who] for who, io in ios.items()}
    return synced["A" if how == "B syncs A" else "B"] == 0


def _write_back(fs: FaultFS, workdir: Path) -> None:
    """The system writes the segments' dirty pages back (recorded as an fdatasync of each: they are durable)."""
    seg_dir = workdir / layout.SEGMENTS
    for name in sorted(os.listdir(seg_dir)):
        fd = fs.open(os.fspath(seg_dir / name), os.O_RDONLY)
        try:
            fs.fdatasync(fd)
        finally:
            fs.close(fd)


def run_scenario(sc: Scenario, workdir: Path, fs: FaultFS, progress: Progress) -> list[Op]:
    ios = {who: Participant(fs, who) for who in ("A", "B")}
    stores: dict[str, logstore.Store] = {}
    try:
        for who in ("A", "B"):
            stores[who] = logstore.open(workdir, io=ios[who], **sc.options)
        for move in sc.moves:
            if move.kind == "do":
                progress.submit(move.k)
                _perform(stores[sc.who[move.k]], sc, move.k, progress)
            elif move.kind == "pair":
                if _pair(stores, ios, sc, move.k, move.how, progress):
                    progress.shared.append(move.how)
            elif move.kind == "writeback":
                _write_back(fs, workdir)
            elif move.kind == "close":
                stores.pop(move.who).close()
            else:  # die
                site, n, when = move.how.split("/")
                ios["A"].arm(site, int(n), when)
                progress.submit(move.k)
                with contextlib.suppress(Crash, StoreFailedError):
                    _perform(stores["A"], sc, move.k, progress)
                    raise AssertionError(f"{sc.name}: A did not die at {move.how}")
                assert ios["A"].dead is not None, f"{sc.name}: A failed without dying at {move.how}"
                stores.pop("A")._abandon()
    finally:
        for store in stores.values():
            store._abandon()
    return list(fs.ops)


# -- recovering an image and checking it ---------------------------------------------------------


@dataclass
class Recovered:
    with_dead: frozenset[int]  # the prefixes (of the actions, the dead one applied) the store equals
    without_dead: frozenset[int]  # the same with the dead action left out
    lost: frozenset[int]  # the actions with a message in lost+found
    problem: str | None


def _ids(sc: Scenario, k: int) -> list[bytes]:
    action = sc.actions[k]
    return [
        env.message_id.encode() for stream, offset, n in action.appends for env in _envelopes(sc, k, stream, offset, n)
    ]


def _envelopes(sc: Scenario, k: int, stream: str, offset: int, n: int) -> list[Envelope]:
    envs = envelopes(sc.seed, k, stream, offset, n)
    if sc.same_size:
        envs = [env._replace(message={**env.message, "pad": "x" * 300}) for env in envs]
    return envs


def recover_image(image: Path, sc: Scenario) -> Recovered:
    """Open ``image`` as a first opener (recovering it), read it, check offsets, append, close, verify."""
    names = {s for a in sc.actions for s, _o, _n in a.appends}
    none = frozenset[int]()
    try:
        store = logstore.open(image, **sc.options)
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        return Recovered(none, none, none, f"open failed: {exc!r}")
    try:
        state, problems = read_state(store, names)
        log_start = store.log_start
        ks_with = frozenset(k for k, s in enumerate(sc.with_dead) if matches(s, state, log_start))
        ks_without = frozenset(k for k, s in enumerate(sc.without_dead) if matches(s, state, log_start))
        head = store.global_head
        with store.open_global(store, 0) as everything:
            while everything.try_next():
                m = everything.get().message
                want = sc.goffs.get((m["s"], m["o"], m["k"]))
                if everything.offset() != want:
                    problems.append(
                        f"{m['s']}@{m['o']} of action {m['k']} at global offset {everything.offset()}, "
                        f"acknowledged at {want}"
                    )
        ends = {k: sc.ends[k] for k in ks_with} | {k: sc.ends_without[k] for k in ks_without}
        if ends and head not in ends.values():
            problems.append(f"global head {head}, the recovered prefixes end at {sorted(set(ends.values()))}")
        lost: set[int] = set()
        found = image / layout.LOST_FOUND
        if found.is_dir():
            saved = b"".join(p.read_bytes() for p in sorted(found.iterdir()) if not p.name.endswith(".json"))
            lost = {k for k, a in enumerate(sc.actions) if a.kind == "tx" and any(i in saved for i in _ids(sc, k))}
        if problems:
            return Recovered(ks_with, ks_without, frozenset(lost), "; ".join(problems[:5]))
        with store.transaction() as tx:
            store.append_messages(tx, "after-crash", store.head("after-crash"), [Envelope.new("After", {"ok": 1})])
    except Exception as exc:  # noqa: BLE001
        with contextlib.suppress(Exception):
            store.close()
        return Recovered(none, none, none, f"after recovery: {exc!r}")
    try:
        store.close()
    except Exception as exc:  # noqa: BLE001
        return Recovered(ks_with, ks_without, frozenset(lost), f"close failed: {exc!r}")
    result = verify(os.fspath(image))
    if not result.ok:
        return Recovered(
            ks_with, ks_without, frozenset(lost), "verify: " + "; ".join(str(p) for p in result.problems[:3])
        )
    return Recovered(ks_with, ks_without, frozenset(lost), None)


@dataclass
class Findings(Campaign):
    lost_found: int = 0
    results: dict[bytes, Recovered] = field(default_factory=dict)

    def summary(self) -> str:
        return super().summary() + f", acknowledged in lost+found: {self.lost_found}"


def allowed(sc: Scenario, rec: Recovered) -> frozenset[int]:
    """The prefixes the recovered store may stand for: an unpublished dead group only with nothing after it."""
    if sc.dead is None:
        return rec.with_dead
    if sc.dead_published:
        return rec.with_dead
    return rec.without_dead | (rec.with_dead & {sc.dead + 1})


def check_image(
    findings: Findings, files: dict[str, bytes | None], sc: Scenario, lo: int, hi: int, where: str, scratch: Path
) -> None:
    findings.states += 1
    key = image_key(files)
    rec = findings.results.get(key)
    if rec is None:
        findings.distinct += 1
        path = scratch / f"img-{findings.distinct}"
        write_image(path, files)
        try:
            rec = recover_image(path, sc)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        if len(findings.results) < 50_000:
            findings.results[key] = rec
    ks = allowed(sc, rec)
    if rec.problem is not None:
        findings.other += 1
        findings.fail(f"{where}: {rec.problem} (prefixes {sorted(ks)})")
        return
    if not ks:
        findings.partial += 1
        findings.fail(
            f"{where}: the recovered store equals no prefix of whole actions "
            f"(with the dead action {sorted(rec.with_dead)}, without {sorted(rec.without_dead)})"
        )
        return
    if max(ks) < lo:
        findings.acknowledged_lost += 1
        findings.fail(f"{where}: recovered {sorted(ks)} actions, {lo} were acknowledged")
    elif min(ks) > hi:
        findings.beyond_written += 1
        findings.fail(f"{where}: recovered {sorted(ks)} actions, only {hi} were handed over")
    elif not any(lo <= k <= hi for k in ks):
        findings.other += 1
        findings.fail(f"{where}: recovered {sorted(ks)} outside [{lo}, {hi}]")
    bad = rec.lost & (set(range(max(lo, *ks))) - {sc.dead})  # acknowledged, or kept in the log
    if bad:
        findings.lost_found += 1
        findings.fail(f"{where}: messages of actions {sorted(bad)} in lost+found (acknowledged below {lo})")


def enumerate_scenario(
    sc: Scenario, scratch: Path, findings: Findings, draws: int, few: int = 2
) -> tuple[list[Op], list[str]]:
    """Run the scenario once and check the crash state after each of its operations; returns the operations,
    and the pairs whose commits one participant's sync made durable."""
    progress = Progress(sc.dead)
    workdir = scratch / f"work-{sc.name.replace(' ', '-')}-{sc.seed}"
    workdir.mkdir()

    def on_op(fs: FaultFS, op: Op) -> None:
        lo, hi = progress.bounds()
        try:
            for mode in modes_for(op.index, STRESS, few):
                for d in range(draws if mode in ("pages", "torn") else 1):
                    files = fs.image_files(mode, rng_for(sc.name, sc.seed, op.index, mode, d))
                    where = f"{sc.name} seed {sc.seed} {op} ({op.site}, {op.thread}) {mode}/{d}"
                    check_image(findings, files, sc, lo, hi, where, scratch)
        except Exception as exc:  # noqa: BLE001 - never let a finding kill a writer: report it
            findings.other += 1
            findings.fail(f"{sc.name} seed {sc.seed} {op}: the check itself raised {exc!r}")

    fs = FaultFS(workdir, on_op=on_op)
    ops = run_scenario(sc, workdir, fs, progress)
    want = {k for k, a in enumerate(sc.actions) if k != sc.dead}
    assert progress.acked == want, sorted(want - progress.acked)
    shutil.rmtree(workdir, ignore_errors=True)
    return ops, progress.shared


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    root = scratch_root(tmp_path)
    with quiet_logstore():
        yield root
    shutil.rmtree(root, ignore_errors=True)


def _report(findings: Findings, started: float) -> None:
    print(f"{findings.summary()} ({time.monotonic() - started:.1f} s)")
    assert not findings.failures, findings.summary() + "\n" + "\n".join(findings.failures)


def _campaign(
    scratch: Path, scenarios: list[Scenario], least: int, draws: int = 1
) -> list[tuple[Scenario, list[Op], list[str]]]:
    """Enumerate every scenario's crash states; fail on any finding, or if fewer than ``least`` were checked."""
    started = time.monotonic()
    findings = Findings()
    runs = [(sc, *enumerate_scenario(sc, scratch, findings, draws)) for sc in scenarios]
    _report(findings, started)
    assert findings.states >= least, findings.summary()
    return runs


def _sites(ops: list[Op]) -> set[str]:
    return {op.site for op in ops}


@pytest.mark.slow
def test_every_crash_point_of_two_writers_catching_up_with_each_other(scratch: Path) -> None:
    """A and B alternate commits across rolls; pairs at once share one participant's flush."""
    scenarios = [catch_up_scenario(seed, scale(16, 40)) for seed in range(SEED, SEED + scale(2, 6))]
    shared: set[str] = set()
    for sc, ops, pairs in _campaign(scratch, scenarios, scale(300, 20_000), scale(1, 3)):
        shared.update(pairs)
        kinds = {a.kind for a in sc.actions}
        assert kinds == {"tx", "conflict"}, kinds
        assert any(sc.anys) and any(s.startswith("new-") for a in sc.actions for s, _o, _n in a.appends)
        assert {m.how for m in sc.moves if m.kind == "pair"} == {"A syncs B", "B syncs A"}
        assert sum(op.site == "rename:segment.tmp" for op in ops) >= 2, "no roll"  # the first segment, a roll
    assert shared == {"A syncs B", "B syncs A"}, shared  # each participant's sync made the other's commit durable


@pytest.mark.slow
def test_every_crash_point_of_the_write_lock_handed_over_between_writers(scratch: Path) -> None:
    """A commits, B commits, A truncates or deletes, B checkpoints; A closes unclean, B goes on, closes."""
    scenarios = [hand_over_scenario(seed, scale(6, 12)) for seed in range(SEED + 100, SEED + 100 + scale(2, 6))]
    for sc, ops, _pairs in _campaign(scratch, scenarios, scale(300, 20_000), scale(1, 3)):
        assert {"truncate", "delete"} <= {a.kind for a in sc.actions}
        assert {"rename:CHECKPOINT.tmp", "unlink:catalog"} <= _sites(ops)


@pytest.mark.slow
@pytest.mark.parametrize("death", sorted(DEATHS))
def test_every_crash_point_of_a_takeover_after_a_writer_died_in_its_turn(scratch: Path, death: str) -> None:
    """A dies in its turn; B's next commit takes over; a power loss anywhere in it or after it."""
    # A big group rolls from a half-full segment; the death before the sync needs a group that does not roll
    # (a roll syncs inside the turn, and the sync after it would find nothing to do).
    before = 8 if DEATHS[death][2] == "big" or death == "before its sync" else scale(8, 14)
    scenarios = [
        takeover_scenario(seed, death, before, scale(3, 6))
        for seed in range(SEED + 200, SEED + 200 + scale(1, 4 if before > 8 else 6))  # shorter ones: more of them
    ]
    for sc, ops, _pairs in _campaign(scratch, scenarios, scale(200, 10_000), scale(1, 3)):
        sites = _sites(ops)
        if not sc.dead_published:
            # The takeover saved what lay past the tail, and (a roll begun) removed the later segment.
            assert {"mkdir:lost+found", "pwrite:lost+found", "fdatasync:segment"} <= sites, sites
            if death in {"in a roll", "after the roll"}:
                assert "unlink:segment" in sites, sites
