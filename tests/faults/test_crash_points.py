"""Crash-point enumeration: a crash after any file operation leaves a store that recovers to a prefix of whole txs.

A seeded workload runs once on a
:class:`tests.faultfs.FaultFS`, whose ``on_op`` callback sees the shadow
model after every counted file operation N: the state a crash after
operation N leaves. For each N and each crash-image mode (``keep``, ``drop``,
``pages``, ``torn``, ``names``) the image is written to a fresh directory and
opened, which recovers it; then:

- acknowledged <= recovered <= written: the store equals the model after K
  actions for some K between the actions acknowledged (the call returned, or
  its effect was published to readers, which happens only after its fsync)
  and the actions handed to the store; equality of every stream's head,
  first offset and deleted flag with the model means no transaction is
  partly there (all or nothing, in order), and the messages read back are
  the model's, in commit order;
- global offsets increase, every stream reads back at contiguous offsets
  from its first to its head, each message where it was appended;
- the store takes a new transaction, and ``verify`` finds nothing wrong
  once it is closed.

The workloads (64 KiB segments, so segments roll, checkpoint and retire):
multi-stream transactions; the same with truncations, deletions,
compactions and size retention; the same with ``durability="none"``
(a machine crash may lose acknowledged actions there, a process crash
may not); groups of transactions committed in one write and one fsync,
some with a conflicting transaction that must write nothing; and a hot
stream whose runs move to a run file of its own.

Identical images (a crash after a write that only the page cache holds
leaves the same ``drop`` image as before it) are recovered once and their
result reused; each (operation, mode) is still a crash state checked
against its own bounds.

"Second crash during recovery": the recovering open of an image runs on a
FaultFS of its own, and every state after each of *its* operations is
recovered again with the same checks.

A few real crashes (``crash_at=N``, the :class:`~tests.faultfs.Crash`
raised inside the engine, the store abandoned) check that the enumeration
matches what a crash at operation N does, with exact acknowledgements.

Sized by ``tests.stress.scale``: the CI tier checks every operation of one
seed per workload with two modes in rotation; ``LOGSTORE_STRESS=1`` checks
every mode at every operation (three random draws for ``pages`` and
``torn``) of more seeds, and more second-crash images: well over 100,000
crash states, which each test asserts. Each test prints a summary line
(``crash states: N, distinct images: D, acknowledged lost: 0, partial: 0,
...``; run with ``-s`` to see it)::

    LOGSTORE_STRESS=1 python -m pytest -q -s tests/faults/test_crash_points.py
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope, OffsetConflictError, StoreFailedError
from logstore.embedded.verify import verify
from tests.faultfs import MODES, Crash, FaultFS, Op, write_image
from tests.helpers import SMALL_SEGMENT, quiet_logstore
from tests.stress import SEED, STRESS, scale

STREAMS = ("orders", "payments", "shipping", "audit", "outbox", "s" * 40)


# -- the workload and its model -------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """One call the workload makes: a transaction, a truncation, a deletion or a compaction."""

    kind: str  # "tx", "truncate", "delete", "compact"
    appends: tuple[tuple[str, int, int], ...] = ()  # tx: (stream, offset, number of messages)
    stream: str = ""
    before: int = 0  # truncate: the new first offset; compact: retention_bytes for this call (0: none)


@dataclass(frozen=True)
class State:
    """What a store holds: per stream (first, head, deleted), and the readable messages in commit order."""

    streams: tuple[tuple[str, int, int, bool], ...]
    messages: tuple[tuple[str, int, int], ...]  # (stream, stream offset, action index)


class Model:
    """The expected state after each prefix of the actions."""

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}
        self.firsts: dict[str, int] = {}
        self.deleted: dict[str, bool] = {}
        self.messages: list[tuple[str, int, int]] = []

    def apply(self, k: int, action: Action) -> None:
        if action.kind == "tx":
            for stream, offset, n in action.appends:
                assert offset == self.heads.get(stream, 0)
                self.messages += [(stream, offset + i, k) for i in range(n)]
                self.heads[stream] = offset + n
                self.firsts.setdefault(stream, 0)
                self.deleted[stream] = False
        elif action.kind == "truncate":
            self.firsts[action.stream] = max(self.firsts[action.stream], action.before)
        elif action.kind == "delete":
            self.firsts[action.stream] = self.heads[action.stream]
            self.deleted[action.stream] = True

    def state(self) -> State:
        firsts = self.firsts
        return State(
            tuple((s, firsts[s], self.heads[s], self.deleted[s]) for s in sorted(self.heads)),
            tuple(m for m in self.messages if m[1] >= firsts[m[0]]),
        )


def make_actions(seed: int, transactions: int, removals: bool) -> list[Action]:
    """A seeded workload: multi-stream transactions, with truncations, deletions and compactions if asked."""
    rng = random.Random(seed)
    heads: dict[str, int] = {}
    firsts: dict[str, int] = {}
    actions: list[Action] = []
    for _ in range(transactions):
        if removals and heads and rng.random() < 0.25:
            stream = rng.choice(sorted(heads))
            roll = rng.random()
            if roll < 0.4 and firsts[stream] < heads[stream]:
                before = rng.randint(firsts[stream] + 1, heads[stream])
                actions.append(Action("truncate", stream=stream, before=before))
                firsts[stream] = before
                continue
            if roll < 0.6:
                actions.append(Action("delete", stream=stream))
                firsts[stream] = heads[stream]
                continue
            actions.append(Action("compact"))
            continue
        streams = rng.sample(STREAMS, rng.randint(2, 4))
        appends = []
        for stream in streams:
            n = rng.randint(1, 3)
            appends.append((stream, heads.get(stream, 0), n))
            heads[stream] = heads.get(stream, 0) + n
            firsts.setdefault(stream, 0)
        actions.append(Action("tx", tuple(appends)))
    return actions


def model_states(actions: list[Action]) -> list[State]:
    model = Model()
    states = [model.state()]
    for k, action in enumerate(actions):
        model.apply(k, action)
        states.append(model.state())
    return states


_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def envelopes(seed: int, k: int, stream: str, offset: int, n: int) -> list[Envelope]:
    """Deterministic envelopes (fixed ids, times and sizes) that say which action wrote them, where."""
    rng = random.Random(f"{seed}/{k}/{stream}")
    out = []
    for i in range(n):
        mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        when = _EPOCH + timedelta(seconds=k, microseconds=rng.randint(1, 999_999))
        body = {"k": k, "s": stream, "o": offset + i, "pad": "x" * rng.randint(100, 700)}
        out.append(Envelope(mid, mid, mid, when, when, "E", body))
    return out


@dataclass
class Workload:
    seed: int
    actions: list[Action]
    options: dict[str, Any]
    groups: list[range] | None = None  # actions committed together, as one group of the writer
    states: list[State] = field(init=False)

    def __post_init__(self) -> None:
        self.states = model_states(self.actions)

    @property
    def steps(self) -> list[range]:
        return self.groups if self.groups is not None else [range(k, k + 1) for k in range(len(self.actions))]

    def lower_bound(self, acknowledged: int, mode: str) -> int:
        """What a crash in ``mode`` must keep: every acknowledged action, unless the machine crashed without fsync."""
        return acknowledged if mode == "keep" or self.options.get("durability", "fsync") == "fsync" else 0


def plain_workload(seed: int, transactions: int) -> Workload:
    return Workload(
        seed,
        make_actions(seed, transactions, removals=False),
        {"segment_size": SMALL_SEGMENT, "checkpoint_bytes": 24 * 1024},
    )


def removal_workload(seed: int, transactions: int) -> Workload:
    return Workload(
        seed,
        make_actions(seed, transactions, removals=True),
        {"segment_size": SMALL_SEGMENT, "checkpoint_bytes": 24 * 1024, "retention_bytes": 2 * SMALL_SEGMENT},
    )


class Progress:
    """Where the workload is: actions acknowledged and handed over; read by the op callback in the writer thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked = 0  # actions whose call returned
        self.submitted = 0  # actions handed to the store (acknowledged or in flight)
        self.inflight = range(0)  # the actions in flight
        self.store: logstore.Store | None = None


def perform(store: logstore.Store, wl: Workload, k: int) -> None:
    action = wl.actions[k]
    if action.kind == "tx":
        tx, committer = store.begin_tx()
        for stream, offset, n in action.appends:
            store.append_messages(tx, stream, offset, envelopes(wl.seed, k, stream, offset, n))
        committer.commit()
    elif action.kind == "truncate":
        store.truncate_stream(action.stream, action.before)
    elif action.kind == "delete":
        store.delete_stream(action.stream)
    else:
        store.compact(retention_bytes=action.before or None)


def perform_group(store: logstore.Store, wl: Workload, group: range) -> None:
    """Commit the transactions of ``group`` as one group of the writer: led together, then released at once.

    A "conflict" action appends at an offset that an earlier transaction of the group takes: it must fail
    alone with ``OffsetConflictError`` and write nothing.
    """
    from logstore.embedded.writer import _Pending

    pendings = []
    for k in group:
        tx, _committer = store.begin_tx()
        for stream, offset, n in wl.actions[k].appends:
            store.append_messages(tx, stream, offset, envelopes(wl.seed, k, stream, offset, n))
        pendings.append(_Pending(tx))
    writer = store._writer
    # With the writer role (as a committing thread takes it), work the whole group at once.
    writer.call(lambda: writer._work(list(pendings)))
    for p in pendings:
        p.done.acquire()
    for k, p in zip(group, pendings, strict=True):
        if wl.actions[k].kind == "conflict":
            if not isinstance(p.error, OffsetConflictError | StoreFailedError):
                raise AssertionError(f"action {k}: a conflicting transaction gave {p.error!r}, {p.result!r}")
        elif p.error is not None:
            raise p.error


def run_workload(path: Path, wl: Workload, io: FaultFS, progress: Progress) -> BaseException | None:
    """Run every action on a store at ``path`` through ``io``; returns the crash or failure that stopped it."""
    store = None
    try:
        store = logstore.open(path, io=io, **wl.options)
        progress.store = store
        for step in wl.steps:
            with progress.lock:
                progress.inflight = step
                progress.submitted = step.stop
            if wl.groups is None:
                perform(store, wl, step.start)
            else:
                perform_group(store, wl, step)
            with progress.lock:
                progress.acked = step.stop
                progress.inflight = range(0)
        progress.store = None
        store.close()
    except (Crash, StoreFailedError) as exc:
        if store is not None:
            store._abandon()
        return exc
    return None


def published(store: logstore.Store | None, action: Action) -> bool:
    """Whether the writer has published ``action`` (which it does only once the action is durable)."""
    if store is None:
        return False
    cat = store._log.catalog
    if action.kind == "tx":
        return all(cat.head_of(s) >= offset + n for s, offset, n in action.appends)
    if action.kind in ("truncate", "delete"):
        sid = cat.ids.get(action.stream)
        if sid is None:
            return False
        first = int(cat.first[sid])
        if action.kind == "truncate":
            return first >= action.before
        return first == int(cat.head[sid]) and bool(cat.flags[sid] & 1)
    return True  # a compaction, or a conflicting transaction, changes nothing a reader sees


def bounds(wl: Workload, progress: Progress) -> tuple[int, int]:
    """(actions certainly acknowledged, actions handed over) right now; called in the op callback."""
    with progress.lock:
        lo, hi, inflight = progress.acked, progress.submitted, progress.inflight
    for k in inflight:
        if wl.actions[k].kind != "conflict" and not published(progress.store, wl.actions[k]):
            break
        lo = k + 1
    return lo, hi


# -- recovering an image and checking it ------------------------------------------------------------


def scratch_root(tmp_path: Path) -> Path:
    """Where images go: tmpfs when there is one (the recovering opens fsync for real), else ``tmp_path``."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="crashpoints-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="crashpoints-", dir=tmp_path))


def image_key(files: dict[str, bytes | None]) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for path, content in files.items():
        h.update(path.encode() + b"\0")
        h.update(b"D" if content is None else len(content).to_bytes(8, "little") + content)
    return h.digest()


def read_state(store: logstore.Store, names: set[str]) -> tuple[State, list[str]]:
    """The recovered state, and every problem seen reading it (offsets, placement, contiguity)."""
    problems: list[str] = []
    messages: list[tuple[str, int, int]] = []
    last = -1
    with store.open_global(store, 0) as everything:
        while everything.try_next():
            goff, env = everything.offset(), everything.get()
            if goff <= last:
                problems.append(f"global offset {goff} after {last}")
            last = goff
            messages.append((env.message["s"], env.message["o"], env.message["k"]))
    streams = []
    for name in sorted(names):
        info = store.stream_info(name)
        if info is None:
            continue
        streams.append((name, info.first, info.head, info.deleted))
        stream, found = store.open_stream(store, name, 0)
        with stream:
            offsets = []
            while stream.try_next():
                env = stream.get()
                if (env.message["s"], env.message["o"]) != (name, stream.offset()):
                    problems.append(f"{name}@{stream.offset()} holds {env.message['s']}@{env.message['o']}")
                offsets.append(stream.offset())
        want = [o for s, o, _k in messages if s == name]
        if offsets != want:
            problems.append(f"{name}: stream read gives offsets {offsets[:8]}..., the global read {want[:8]}...")
        if offsets and offsets != list(range(offsets[0], info.head)):
            problems.append(f"{name}: offsets {offsets[:8]}... not contiguous up to head {info.head}")
        if found != (info.head > 0 and not info.deleted):
            problems.append(f"{name}: open_stream found={found}, stream_info {info}")
    return State(tuple(streams), tuple(messages)), problems


def matches(model: State, got: State, log_start: int) -> bool:
    """Whether ``got`` is ``model`` (retention may have dropped a prefix of the log and moved firsts up)."""
    if len(got.streams) != len(model.streams):
        return False
    for (name, first, head, deleted), (gname, gfirst, ghead, gdeleted) in zip(model.streams, got.streams, strict=True):
        if (name, head, deleted) != (gname, ghead, gdeleted) or gfirst < first or (gfirst != first and not log_start):
            return False
    skip = len(model.messages) - len(got.messages)
    if skip < 0 or (skip and not log_start):
        return False
    return model.messages[skip:] == got.messages


@dataclass
class Recovery:
    """What recovering one image gave: the model prefixes it equals, or what went wrong."""

    ks: frozenset[int]
    problem: str | None


def recover(image: Path, wl: Workload, new_stream: str = "after-crash") -> Recovery:
    """Open ``image`` (recovering it), read it, append a transaction, close, verify."""
    names = {s for a in wl.actions for s, _o, _n in a.appends}
    try:
        store = logstore.open(image, **wl.options)
    except Exception as exc:  # noqa: BLE001 - any refusal is the finding
        return Recovery(frozenset(), f"open failed: {exc!r}")
    try:
        state, problems = read_state(store, names)
        log_start = store.log_start
        ks = frozenset(k for k, s in enumerate(wl.states) if matches(s, state, log_start))
        if problems:
            return Recovery(ks, "; ".join(problems[:5]))
        with store.transaction() as tx:
            store.append_messages(tx, new_stream, store.head(new_stream), [Envelope.new("After", {"ok": True})])
        if store.head(new_stream) < 1:
            return Recovery(ks, "the new transaction is not visible")
    except Exception as exc:  # noqa: BLE001
        with contextlib.suppress(Exception):
            store.close()
        return Recovery(frozenset(), f"after recovery: {exc!r}")
    try:
        store.close()
    except Exception as exc:  # noqa: BLE001
        return Recovery(ks, f"close failed: {exc!r}")
    result = verify(os.fspath(image))
    if not result.ok:
        return Recovery(ks, "verify: " + "; ".join(str(p) for p in result.problems[:3]))
    if not ks:
        detail = f"heads {state.streams}, {len(state.messages)} messages, log start {log_start}"
        return Recovery(ks, f"the recovered store equals no prefix of whole actions ({detail})")
    return Recovery(ks, None)


@dataclass
class Campaign:
    """Counts and findings over many crash states."""

    states: int = 0
    distinct: int = 0
    acknowledged_lost: int = 0
    partial: int = 0
    beyond_written: int = 0
    other: int = 0
    failures: list[str] = field(default_factory=list)
    cache: dict[bytes, Recovery] = field(default_factory=dict)

    def fail(self, what: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(what)

    def summary(self) -> str:
        return (
            f"crash states: {self.states}, distinct images: {self.distinct}, "
            f"acknowledged lost: {self.acknowledged_lost}, partial: {self.partial}, "
            f"beyond written: {self.beyond_written}, other problems: {self.other}"
        )


def check_image(
    campaign: Campaign, files: dict[str, bytes | None], wl: Workload, lo: int, hi: int, where: str, scratch: Path
) -> None:
    """Recover one crash image (or reuse the result for an identical one) and check it against [lo, hi]."""
    campaign.states += 1
    key = image_key(files)
    rec = campaign.cache.get(key)
    if rec is None:
        campaign.distinct += 1
        path = scratch / f"img-{campaign.distinct}"
        write_image(path, files)
        try:
            rec = recover(path, wl)
        finally:
            shutil.rmtree(path, ignore_errors=True)
        if len(campaign.cache) < 50_000:
            campaign.cache[key] = rec
    if rec.problem is not None and rec.ks:
        campaign.other += 1
        campaign.fail(f"{where}: {rec.problem}")
        return
    if not rec.ks:
        if rec.problem and "no prefix" in rec.problem:
            campaign.partial += 1
        else:
            campaign.other += 1
        campaign.fail(f"{where}: {rec.problem}")
        return
    if max(rec.ks) < lo:
        campaign.acknowledged_lost += 1
        campaign.fail(f"{where}: recovered {sorted(rec.ks)} actions, {lo} were acknowledged")
    elif min(rec.ks) > hi:
        campaign.beyond_written += 1
        campaign.fail(f"{where}: recovered {sorted(rec.ks)} actions, only {hi} were handed over")
    elif not any(lo <= k <= hi for k in rec.ks):
        campaign.other += 1
        campaign.fail(f"{where}: recovered {sorted(rec.ks)} outside [{lo}, {hi}]")


def modes_for(n: int, every: bool, few: int = 2) -> list[str]:
    """Every mode, or (CI) ``few`` per operation in rotation so that each mode meets every kind of operation."""
    if every:
        return list(MODES)
    return [MODES[(n + 2 * i) % len(MODES)] for i in range(few)]


def rng_for(*parts: object) -> random.Random:
    return random.Random("/".join(str(p) for p in parts))


def enumerate_crashes(
    wl: Workload,
    workdir: Path,
    scratch: Path,
    campaign: Campaign,
    every_mode: bool,
    draws: int,
    second: Callable[[Op, dict[str, bytes | None], int, int], None] | None = None,
    few: int = 2,
) -> list[Op]:
    """Run the workload once and check the crash state after each of its operations; returns the operations."""
    progress = Progress()

    def on_op(fs: FaultFS, op: Op) -> None:
        lo, hi = bounds(wl, progress)
        try:
            for mode in modes_for(op.index, every_mode, few):
                for d in range(draws if mode in ("pages", "torn") else 1):
                    files = fs.image_files(mode, rng_for(wl.seed, op.index, mode, d))
                    low = wl.lower_bound(lo, mode)
                    check_image(campaign, files, wl, low, hi, f"seed {wl.seed} {op} ({op.site}) {mode}/{d}", scratch)
                    if second is not None:
                        second(op, files, low, hi)
        except Exception as exc:  # noqa: BLE001 - never let a finding kill the writer thread: report it
            campaign.other += 1
            campaign.fail(f"seed {wl.seed} {op}: the check itself raised {exc!r}")

    workdir.mkdir()
    fs = FaultFS(workdir, on_op=on_op)
    stopped = run_workload(workdir, wl, fs, progress)
    assert stopped is None, f"the workload failed without a crash: {stopped!r}"
    assert progress.acked == len(wl.actions)
    return fs.ops


def second_crashes(
    wl: Workload,
    files: dict[str, bytes | None],
    lo: int,
    hi: int,
    scratch: Path,
    campaign: Campaign,
    label: str,
    every_mode: bool,
) -> int:
    """Crash the recovering open (and close) of an image at each of its operations; check every such state."""
    base = scratch / f"second-{campaign.states}"
    write_image(base, files)

    def on_op(fs: FaultFS, op: Op) -> None:
        for mode in modes_for(op.index + 1, every_mode):
            image = fs.image_files(mode, rng_for(label, op.index, mode))
            check_image(campaign, image, wl, lo, hi, f"{label}, then recovery {op} ({op.site}) {mode}", scratch)

    fs = FaultFS(base, on_op=on_op)
    try:
        logstore.open(base, io=fs, **wl.options).close()
    except Exception as exc:  # noqa: BLE001 - the finding is recorded with the others
        campaign.other += 1
        campaign.fail(f"{label}: the recovery (with no second crash) raised {exc!r}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return fs.count


# -- the tests ----------------------------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    root = scratch_root(tmp_path)
    with quiet_logstore():
        yield root
    shutil.rmtree(root, ignore_errors=True)


def _report(campaign: Campaign) -> None:
    print(campaign.summary())
    assert not campaign.failures, campaign.summary() + "\n" + "\n".join(campaign.failures)


def _crash_campaign(
    scratch: Path, workloads: Iterable[Workload], draws: int, least: int, few: int = 2
) -> list[tuple[Workload, list[Op]]]:
    """Check the crash state after every operation of each workload (``enumerate_crashes``); fail on any
    finding, or if fewer than ``least`` states were checked. Returns each workload with its operations."""
    campaign = Campaign()
    runs = []
    for wl in workloads:
        runs.append((wl, enumerate_crashes(wl, scratch / f"work-{wl.seed}", scratch, campaign, STRESS, draws, few=few)))
    _report(campaign)
    assert campaign.states >= least
    return runs


@pytest.mark.slow
def test_every_crash_point_of_multi_stream_transactions_recovers_a_prefix(scratch: Path) -> None:
    workloads = (plain_workload(seed, scale(70, 110)) for seed in range(SEED, SEED + scale(1, 12)))
    for _wl, ops in _crash_campaign(scratch, workloads, scale(1, 3), scale(200, 30_000)):
        sites = {op.site for op in ops}
        # The workload reaches what it is meant to: rolls, checkpoints, the close.
        assert {"fallocate:segment.tmp", "rename:CHECKPOINT.tmp", "pwrite:pos", "unlink:catalog"} <= sites, sites
        assert sum(op.site == "rename:segment.tmp" for op in ops) >= 3


@pytest.mark.slow
def test_every_crash_point_with_truncation_deletion_compaction_and_retention(scratch: Path) -> None:
    workloads = (removal_workload(seed, scale(80, 120)) for seed in range(SEED + 100, SEED + 100 + scale(1, 10)))
    for wl, ops in _crash_campaign(scratch, workloads, scale(1, 3), scale(200, 30_000)):
        kinds = {a.kind for a in wl.actions}
        assert kinds == {"tx", "truncate", "delete", "compact"}, kinds
        sites = {op.site for op in ops}
        assert {"rename:segment.compact", "unlink:segment", "unlink:pos"} <= sites, sites


@pytest.mark.slow
def test_every_crash_point_without_fsync_keeps_whole_transactions_in_order(scratch: Path) -> None:
    """``durability="none"``: a machine crash may lose acknowledged commits, never order or atomicity."""
    workloads = [removal_workload(seed, scale(80, 120)) for seed in range(SEED + 150, SEED + 150 + scale(1, 6))]
    for wl in workloads:
        wl.options["durability"] = "none"
    _crash_campaign(scratch, workloads, scale(1, 3), scale(150, 15_000))


def hot_stream_workload(seed: int, transactions: int) -> Workload:
    """Every transaction appends to one hot stream and another: the hot one gets a run per transaction.

    Past 128 runs it moves to a run file of its own (``streams/<id>.runs``), appended at each checkpoint.
    """
    rng = random.Random(seed)
    heads: dict[str, int] = {}
    actions = []
    for _ in range(transactions):
        appends = []
        for stream, n in (("hot", 1), (rng.choice(STREAMS), rng.randint(1, 2))):
            appends.append((stream, heads.get(stream, 0), n))
            heads[stream] = heads.get(stream, 0) + n
        actions.append(Action("tx", tuple(appends)))
    return Workload(seed, actions, {"segment_size": SMALL_SEGMENT, "checkpoint_bytes": 16 * 1024})


@pytest.mark.slow
def test_every_crash_point_of_a_stream_with_its_own_run_file(scratch: Path) -> None:
    workloads = (hot_stream_workload(seed, scale(150, 220)) for seed in range(SEED + 350, SEED + 350 + scale(1, 4)))
    for _wl, ops in _crash_campaign(scratch, workloads, scale(1, 2), scale(150, 8_000), few=1):
        assert {"create:runs", "pwrite:runs", "fsync:runs", "fsync_dir:streams"} <= {op.site for op in ops}


def group_workload(seed: int, groups: int) -> Workload:
    """Groups of 2 to 4 transactions on disjoint streams committed together, some with a conflicting one last."""
    rng = random.Random(seed)
    heads: dict[str, int] = {}
    actions: list[Action] = []
    spans: list[range] = []
    for _ in range(groups):
        start = len(actions)
        pool = rng.sample(STREAMS, len(STREAMS))
        before = dict(heads)
        while len(pool) >= 2 and len(actions) - start < 4:
            appends = []
            for stream in (pool.pop(), pool.pop())[: rng.randint(1, 2)]:
                n = rng.randint(1, 3)
                appends.append((stream, heads.get(stream, 0), n))
                heads[stream] = heads.get(stream, 0) + n
            actions.append(Action("tx", tuple(appends)))
            if rng.random() < 0.4:
                break
        if rng.random() < 0.5:
            stream = rng.choice([s for a in actions[start:] for s, _o, _n in a.appends])
            actions.append(Action("conflict", ((stream, before.get(stream, 0), 1),)))
        spans.append(range(start, len(actions)))
    options = {"segment_size": SMALL_SEGMENT, "checkpoint_bytes": 24 * 1024}
    return Workload(seed, actions, options, spans)


@pytest.mark.slow
def test_every_crash_point_of_group_commits_with_a_conflict_recovers_whole_transactions(scratch: Path) -> None:
    """Several transactions in one write and one fsync; a crash inside keeps a prefix of them, whole."""
    workloads = [group_workload(seed, scale(30, 60)) for seed in range(SEED + 250, SEED + 250 + scale(1, 6))]
    for wl in workloads:
        assert any(a.kind == "conflict" for a in wl.actions)
        assert any(len([k for k in g if wl.actions[k].kind == "tx"]) >= 3 for g in wl.steps)
    _crash_campaign(scratch, workloads, scale(1, 3), scale(100, 10_000))


@pytest.mark.slow
def test_a_second_crash_during_recovery_also_recovers_a_prefix(scratch: Path) -> None:
    """First crash states whose recovery has work to do (a tail to cut, an interrupted roll or checkpoint)."""
    campaign = Campaign()
    recovery_ops: list[int] = []
    done: set[tuple[bytes, int, int]] = set()  # first crash states already crashed again (same image, same bounds)
    for seed in range(SEED + 200, SEED + 200 + scale(1, 3)):
        wl = removal_workload(seed, scale(40, 90))
        sample = scale(7, 2)  # the first crash states of every 7th (CI) or 2nd (long) operation

        def second(
            op: Op, files: dict[str, bytes | None], lo: int, hi: int, wl: Workload = wl, sample: int = sample
        ) -> None:
            key = (image_key(files), lo, hi)
            if op.index % sample == 0 and key not in done:
                done.add(key)
                label = f"seed {wl.seed} {op} ({op.site})"
                recovery_ops.append(second_crashes(wl, files, lo, hi, scratch, campaign, label, STRESS))

        enumerate_crashes(wl, scratch / f"work-{seed}", scratch, campaign, False, 1, second)
    _report(campaign)
    assert recovery_ops and max(recovery_ops) >= 20, recovery_ops  # some recoveries cut, checkpoint, and close
    assert campaign.states >= scale(300, 40_000)


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_real_crash_at_operation_n_matches_the_enumeration(scratch: Path, when: str) -> None:
    """``crash_at=N`` stops the engine there (a Crash in the writer or the caller); the image recovers exactly."""
    wl = removal_workload(SEED + 300, 60)
    counter = FaultFS(_fresh(scratch / "count"))
    assert run_workload(scratch / "count", wl, counter, Progress()) is None
    total = counter.count
    campaign = Campaign()
    rng = random.Random(SEED + 301)
    picks = sorted({1, 2, total, *rng.sample(range(3, total), min(total - 3, scale(12, 400)))})
    for n in picks:
        path = _fresh(scratch / f"crash-{n}-{when}")
        fs = FaultFS(path, crash_at=n, crash_when=when)
        progress = Progress()
        stopped = run_workload(path, wl, fs, progress)
        assert isinstance(stopped, Crash | StoreFailedError), (n, stopped)
        assert fs.crashed is not None and fs.crashed.op is not None and fs.crashed.op.index == n
        # The same operations as the counting run, up to the crash: the enumeration saw this very state.
        assert [(o.name, o.path) for o in fs.ops[:n]] == [(o.name, o.path) for o in counter.ops[:n]], n
        lo, hi = progress.acked, progress.submitted
        for mode in MODES:
            files = fs.image_files(mode, rng_for("real", n, mode))
            check_image(
                campaign,
                files,
                wl,
                wl.lower_bound(lo, mode),
                hi,
                f"crash_at={n} {when} ({fs.crashed.op.site}) {mode}",
                scratch,
            )
        shutil.rmtree(path)
    _report(campaign)


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


# -- the FaultFS itself ---------------------------------------------------------------------------


def _write(fs: FaultFS, path: Path, data: bytes, position: int = 0, sync: bool = False) -> None:
    fd = fs.open(os.fspath(path), os.O_RDWR | os.O_CREAT)
    try:
        fs.pwrite(fd, data, position)
        if sync:
            fs.fsync(fd)
    finally:
        fs.close(fd)


def test_faultfs_images_keep_drop_and_names(tmp_path: Path) -> None:
    root = _fresh(tmp_path / "root")
    (root / "old").write_bytes(b"durable")
    (root / "gone").write_bytes(b"was here")
    fs = FaultFS(root)
    _write(fs, root / "new", b"synced", sync=True)
    _write(fs, root / "new", b"+unsynced", 6)
    fs.rename(os.fspath(root / "old"), os.fspath(root / "renamed"))
    fs.unlink(os.fspath(root / "gone"))
    assert [op.site for op in fs.ops] == [
        "create:new",
        "pwrite:new",
        "fsync:new",
        "create:new",
        "pwrite:new",
        "rename:old",
        "unlink:gone",
    ]
    assert fs.image_files("keep") == {"new": b"synced+unsynced", "renamed": b"durable"}
    assert fs.image_files("drop") == {"new": b"synced", "renamed": b"durable"}
    # Nothing fsynced the directory: the create, the rename and the unlink are all undone.
    assert fs.image_files("names") == {"gone": b"was here", "old": b"durable"}
    fs.fsync_dir(os.fspath(root))
    assert fs.image_files("names") == {"new": b"synced", "renamed": b"durable"}
    fs.image(tmp_path / "image", "keep")
    assert (tmp_path / "image" / "new").read_bytes() == b"synced+unsynced"


def test_faultfs_pages_are_kept_or_lost_whole_and_torn_cuts_only_the_last_write(tmp_path: Path) -> None:
    root = _fresh(tmp_path / "root")
    fs = FaultFS(root)
    _write(fs, root / "f", bytes(4 * 4096), sync=True)
    _write(fs, root / "f", b"\x01" * (3 * 4096), 0)
    _write(fs, root / "f", b"\x02" * 100, 3 * 4096)
    seen = set()
    for seed in range(40):
        image = fs.image_files("pages", random.Random(seed))["f"]
        assert image is not None and len(image) == 4 * 4096
        pages = tuple(image[p * 4096 : (p + 1) * 4096] for p in range(4))
        assert all(len(set(page)) == 1 for page in pages[:3]), "a page is kept or lost whole"
        seen.add(tuple(page[0] for page in pages))
    assert len(seen) > 8  # pages kept and lost independently
    for seed in range(40):
        image = fs.image_files("torn", random.Random(seed))["f"]
        assert image is not None
        assert image[: 3 * 4096] == b"\x01" * (3 * 4096), "only the last write is torn"
        tail = image[3 * 4096 : 3 * 4096 + 100]
        cut = len(tail) - len(tail.lstrip(b"\x02"))
        assert cut < 100 and tail[:cut] == b"\x02" * cut


def test_faultfs_crash_before_or_after_an_operation_then_nothing_more_happens(tmp_path: Path) -> None:
    for when, expect in (("before", b""), ("after", b"abc")):
        root = _fresh(tmp_path / when)
        fs = FaultFS(root, crash_at=2, crash_when=when)
        fd = fs.open(os.fspath(root / "f"), os.O_RDWR | os.O_CREAT)
        with pytest.raises(Crash) as info:
            fs.pwrite(fd, b"abc", 0)
        assert info.value.op is not None and info.value.op.index == 2
        assert (root / "f").read_bytes() == expect
        with pytest.raises(Crash):
            fs.fsync(fd)  # the process is dead
        assert fs.pread(fd, 10, 0) == expect  # reads and close still work
        fs.close(fd)
        assert fs.image_files("keep") == {"f": expect} and fs.image_files("drop") == {"f": b""}


def test_faultfs_fails_once_persistently_or_at_one_site(tmp_path: Path) -> None:
    import errno

    root = _fresh(tmp_path / "root")
    fs = FaultFS(root, fail_at=2, errno=errno.ENOSPC)
    fd = fs.open(os.fspath(root / "f"), os.O_RDWR | os.O_CREAT)
    with pytest.raises(OSError, match="No space left") as info:
        fs.pwrite(fd, b"abc", 0)
    assert info.value.errno == errno.ENOSPC
    fs.pwrite(fd, b"abc", 0)  # once only
    fs.close(fd)
    assert (root / "f").read_bytes() == b"abc"
    fs = FaultFS(root, fail_at=1, persistent=True, site="fsync")
    fd = fs.open(os.fspath(root / "f"), os.O_RDWR)
    fs.pwrite(fd, b"x", 0)
    for _ in range(2):
        with pytest.raises(OSError) as info:
            fs.fsync(fd)
        assert info.value.errno == errno.EIO
    fs.close(fd)
    assert [op.site for op in fs.failed_ops] == ["fsync:f", "fsync:f"]
