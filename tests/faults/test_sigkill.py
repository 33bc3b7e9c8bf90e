"""SIGKILL campaigns: a real writer process (tests/faults/killer.py) killed at random moments and at every I/O site.

Each campaign runs the worker on one store directory again and again, kills
it, reopens (recovers) the store in this process and checks, against what
the worker acknowledged on its stdout (a line printed after ``commit()``
returned):

- every acknowledged transaction is there, at the acknowledged global and
  stream offsets, with the exact content (:func:`tests.faults.killer.plan`);
- no transaction is there in part: each is all of its messages, at
  consecutive global offsets, or none of them;
- each worker thread's transactions are a prefix of what it committed, in
  commit order, and at most one past its last acknowledgement (killed
  between ``commit()`` returning and the line being printed);
- whatever a check found stays there at every later check;
- every stream's offsets are contiguous from its first readable offset to
  its head, and the global log holds exactly the streams' messages, in
  increasing global order;
- ``logstore.embedded.verify`` finds the store clean after recovery, and again after
  a new append (which must work).

Sometimes the check is skipped, so that the next worker's open recovers the
previous kill itself and may be killed while doing it.

:func:`test_sigkill_at_random_moments` kills after a random number of
acknowledgements (read from the pipe: no sleeping to synchronise) or at a
random moment just after start, while the store opens.
:func:`test_sigkill_at_kill_points` arms ``LOGSTORE_KILL_AT`` (see
``logstore/embedded/fileio.py``) for each I/O site, before and after the operation
(and a torn ``pwrite``), at a range of call numbers, also restricted to
index, checkpoint, catalog and lost+found files.

CI tier: 12 kills at random moments and 20 kill points. ``LOGSTORE_STRESS=1``: over 1,000 kills in all.
``-s`` shows a summary line per campaign: ``kills: N, acknowledged lost: 0, partial: 0``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore.embedded.fileio import KILL_AT_ENV, KILL_SITES, KILL_STEPS
from logstore.embedded.verify import verify
from tests.faults.killer import CHECKPOINT_BYTES, PROBE, SCRATCH, SCRATCH_THREAD, SEGMENT_SIZE, TYPE, plan
from tests.helpers import drain
from tests.stress import SEED, scale

REPO = Path(__file__).resolve().parents[2]
KILLER = REPO / "tests" / "faults" / "killer.py"
READ_TIMEOUT = 120.0  # seconds without a line from the worker before the test gives up (a hang is a finding)

Key = tuple[int, int, int]  # (run, thread, seq); thread SCRATCH_THREAD for thread 0's scratch transactions
Placement = tuple[tuple[str, int, int], ...]  # (stream, first offset, count) per append


@pytest.fixture(autouse=True)
def _no_kill_point_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill point is for the worker only: this process must not kill itself."""
    monkeypatch.delenv(KILL_AT_ENV, raising=False)


# -- the worker process ----------------------------------------------------------------


@dataclass
class Outcome:
    """One worker run: its exit status and what it printed."""

    returncode: int
    lines: list[str]
    stderr: str
    killed_by_test: bool

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def step_counts(self) -> dict[str, int] | None:
        for line in self.lines:
            if line.startswith("steps"):
                return {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
        return None

    def done_counts(self) -> dict[str, int] | None:
        for line in self.lines:
            if line.startswith("done"):
                return {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
        return None


class _LineReader:
    """Lines from a pipe, with a deadline per line (select + os.read; no sleeping)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.eof = False

    def lines(self) -> Iterator[str]:
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                yield line.decode()
            if self.eof:
                # An unfinished line (none so far: each line is one write of less than PIPE_BUF bytes)
                # would acknowledge nothing.
                return
            ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT)
            if not ready:
                self.proc.kill()
                raise AssertionError(f"the worker printed nothing for {READ_TIMEOUT} s (hung?)")
            chunk = os.read(self.fd, 65536)
            if chunk:
                self.buf += chunk
            else:
                self.eof = True


def run_worker(
    path: Path,
    run: int,
    *,
    kill_after_acks: int | None = None,
    kill_after_start: float | None = None,
    kill_at: str | None = None,
    threads: int = 4,
    txs: int = 100_000,
    truncate_every: int = 4,
    compact_every: int = 3,
) -> Outcome:
    """Run tests/faults/killer.py on ``path`` and kill it as asked; returns when it has exited.

    ``kill_after_acks``: SIGKILL once that many ``ack`` lines have been read.
    ``kill_after_start``: SIGKILL that many seconds after the ``start`` line
    (the store is being opened and recovered about then). ``kill_at``: the
    worker's ``LOGSTORE_KILL_AT``. Every line is read to the end, so every
    acknowledgement the worker printed before it died is in ``lines``.
    """
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    argv = [sys.executable, str(KILLER), str(path), "--run", str(run), "--threads", str(threads), "--txs", str(txs)]
    argv += ["--truncate-every", str(truncate_every), "--compact-every", str(compact_every)]
    err_path = path.parent / f"worker-{run}.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=str(REPO))
    lines: list[str] = []
    killed_by_test = False
    try:
        reader = _LineReader(proc)
        acks = 0
        for line in reader.lines():
            lines.append(line)
            if killed_by_test:
                continue
            if line.startswith("ack"):
                acks += 1
            if (kill_after_acks is not None and acks >= kill_after_acks) or (
                kill_after_start is not None and line.startswith("start")
            ):
                if kill_after_start:
                    time.sleep(kill_after_start)  # the random moment itself, not a synchronisation
                proc.send_signal(signal.SIGKILL)
                killed_by_test = True
        returncode = proc.wait(timeout=READ_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    stderr = err_path.read_text(errors="replace")
    err_path.unlink()
    return Outcome(returncode, lines, stderr, killed_by_test)


# -- what the test knows, and the check ----------------------------------------------------


@dataclass
class Model:
    """What the worker acknowledged so far, and what earlier checks found, for one store directory."""

    acked: dict[Key, tuple[int, Placement]] = field(default_factory=dict)  # key -> (first global offset, placement)
    truncated: int = 0  # the highest acknowledged truncation point of the scratch stream
    present: dict[Key, tuple[int, Placement]] = field(default_factory=dict)  # found whole by a check
    runs: dict[int, int] = field(default_factory=dict)  # run -> worker threads
    probes: int = 0  # probe transactions this process committed (one message each)

    def absorb(self, run: int, threads: int, outcome: Outcome) -> int:
        """Take in a worker's acknowledgements; returns how many there were."""
        self.runs[run] = threads
        n = 0
        for line in outcome.lines:
            words = line.split()
            if words and words[0] == "ack":
                r, t, s, g0 = (int(w) for w in words[1:5])
                placement = []
                for item in words[5:]:
                    stream, off, count = item.rsplit(":", 2)
                    placement.append((stream, int(off), int(count)))
                self.acked[r, t, s] = (g0, tuple(placement))
                n += 1
            elif words and words[0] == "trunc":
                self.truncated = max(self.truncated, int(words[2]))
        return n


@dataclass
class Stats:
    kills: int = 0
    acks: int = 0
    checks: int = 0
    lost: int = 0
    partial: int = 0
    recovered_cuts: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        return (
            f"{name}: kills: {self.kills}, acknowledged lost: {self.lost}, partial: {self.partial} "
            f"({self.acks} acknowledged transactions, {self.checks} checks, {self.recovered_cuts} recoveries that cut)"
        )


def _read_all(reader: Any) -> list[tuple[int, logstore.Envelope]]:
    with reader:
        return drain(reader)


def check_store(path: Path, model: Model, stats: Stats, what: str) -> None:
    """Recover the store in this process and check every invariant (see the module docstring).

    Problems go to ``stats.problems`` (the campaign stops at the first check that finds one).
    """
    problems: list[str] = []
    stats.checks += 1
    try:
        store = logstore.open(path, durability="fsync", segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES)
    except Exception as exc:  # noqa: BLE001 - a recovery that fails is the finding
        stats.problems.append(f"{what}: recovery failed: {exc!r}")
        return
    try:
        if store.recovery_report.cut:
            stats.recovered_cuts += 1
        # Every stream, read from its first readable offset: contiguous offsets up to its head.
        by_id: dict[str, tuple[str, int, logstore.Envelope]] = {}
        scratch_first = 0
        for name in store.stream_names():
            info = store.stream_info(name)
            assert info is not None
            if name == SCRATCH:
                scratch_first = info.first
            stream, _found = store.open_stream(store, name, 0)
            got = _read_all(stream)
            offsets = [o for o, _ in got]
            if offsets != list(range(info.first, info.head)):
                problems.append(f"stream {name!r}: offsets {offsets[:5]}... not contiguous {info.first}..{info.head}")
            for o, env in got:
                by_id[env.message_id] = (name, o, env)
        if scratch_first < model.truncated:
            problems.append(f"scratch starts at {scratch_first}, below the acknowledged truncation {model.truncated}")
        # The global log: exactly the streams' messages, in increasing global order.
        everything = _read_all(store.open_global(store, 0))
        goffs = [g for g, _ in everything]
        if goffs != sorted(set(goffs)):
            problems.append("global offsets not increasing")
        if len(everything) != len(by_id) or any(env.message_id not in by_id for _, env in everything):
            problems.append(f"the global log holds {len(everything)} messages, the streams {len(by_id)}")
        # Group the messages by transaction.
        groups: dict[Key, list[tuple[int, str, int, Any]]] = {}
        probes = []
        for g, env in everything:
            name, soff, _ = by_id.get(env.message_id, ("?", -1, env))
            if name == PROBE:
                probes.append(env.message)
                continue
            m = env.message
            if env.type != TYPE or not isinstance(m, dict) or {"r", "t", "s", "k", "pad"} != set(m):
                problems.append(f"global offset {g}: a message the worker never wrote: {env!r}")
                continue
            groups.setdefault((m["r"], m["t"], m["s"]), []).append((g, name, soff, m))
        if probes != [{"probe": i} for i in range(model.probes)]:
            problems.append(f"probe stream holds {probes}, expected {model.probes} probes")
        found: dict[Key, tuple[int, Placement]] = {}
        for key, msgs in groups.items():
            msgs.sort(key=lambda x: x[3]["k"])
            expected = [(stream, m) for stream, ms in plan(*key) for m in ms]
            whole = (
                len(msgs) == len(expected)
                and all(msgs[i][0] == msgs[0][0] + i for i in range(len(msgs)))
                and [(n, m) for _, n, _, m in msgs] == expected
            )
            placement: list[tuple[str, int, int]] = []
            for _g, name, soff, _m in msgs:
                if placement and placement[-1][0] == name and placement[-1][1] + placement[-1][2] == soff:
                    placement[-1] = (name, placement[-1][1], placement[-1][2] + 1)
                else:
                    placement.append((name, soff, 1))
            if not whole or len(placement) != len(plan(*key)):
                stats.partial += 1
                problems.append(f"transaction {key} is there in part or altered: {len(msgs)} of {len(expected)}")
                continue
            found[key] = (msgs[0][0], tuple(placement))

        def truncated_away(key: Key, placement: Placement) -> bool:
            return key[1] == SCRATCH_THREAD and placement[0][1] + placement[0][2] <= scratch_first

        for key, (g0, placement) in model.acked.items():
            if key in found:
                if found[key] != (g0, placement):
                    problems.append(f"acknowledged {key} at {(g0, placement)} but found at {found[key]}")
            elif not truncated_away(key, placement):
                stats.lost += 1
                problems.append(f"acknowledged transaction {key} {placement} is lost")
        for key, (_g0, placement) in model.present.items():
            if key not in found and key not in model.acked and not truncated_away(key, placement):
                problems.append(f"transaction {key}, found by an earlier check, is gone")
        # Per worker thread: a prefix of what it committed, in commit order, at most one past its last ack.
        for run, threads in model.runs.items():
            for t in [SCRATCH_THREAD, *range(threads)]:
                seqs = sorted(s for (r, tt, s) in found if r == run and tt == t)
                acked = [s for (r, tt, s) in model.acked if r == run and tt == t]
                top = max(acked, default=-1)
                lo = seqs[0] if t == SCRATCH_THREAD and seqs else 0  # scratch: truncation removes a prefix
                if seqs != list(range(lo, lo + len(seqs))) or (seqs and seqs[-1] > top + 1):
                    problems.append(f"run {run} thread {t}: transactions {seqs} (last acknowledged {top})")
                order = [found[run, t, s][0] for s in seqs]
                if order != sorted(order):
                    problems.append(f"run {run} thread {t}: transactions out of commit order")
        model.present.update(found)
    finally:
        store.close()
    # What recovery left verifies clean (before an append could rewrite an index file it left damaged).
    result = verify(os.fspath(path))
    if not result.ok:
        problems.append("verify after recovery: " + "; ".join(str(p) for p in result.problems))
    # A new append works, and the store verifies clean after it too.
    with logstore.open(path, durability="fsync", segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES) as store:
        with store.transaction() as tx:
            probe = logstore.Envelope.new("Probe", {"probe": model.probes})
            store.append_messages(tx, PROBE, store.head(PROBE), [probe])
        model.probes += 1
    result = verify(os.fspath(path))
    if not result.ok:
        problems.append("verify after an append: " + "; ".join(str(p) for p in result.problems))
    stats.problems += [f"{what}: {p}" for p in problems]


def _report(stats: Stats, outcome: Outcome | None, name: str, extra: str = "") -> None:
    """Print the campaign's summary line; fail with the first problems and the worker's stderr, if any."""
    print(stats.summary(name) + extra)
    if stats.problems:
        detail = "\n".join(stats.problems[:20])
        if outcome is not None:
            detail += "\n-- worker stderr (last 3000 chars):\n" + outcome.stderr[-3000:]
        pytest.fail(f"{name}: {len(stats.problems)} problems:\n{detail}")


# -- campaign (a): kills at random moments -------------------------------------------------------


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(f"sigkill-random/{SEED}")
    kills = scale(12, 1000)
    per_directory = scale(12, 40)  # a fresh directory now and then keeps the checks' full scans short
    stats = Stats()
    model = Model()
    path = tmp_path / "store-0"
    outcome: Outcome | None = None
    for run in range(kills):
        if run and run % per_directory == 0:
            path = tmp_path / f"store-{run // per_directory}"
            model = Model()
        threads = rng.randint(2, 5)
        if rng.random() < 0.2:
            outcome = run_worker(path, run, kill_after_start=rng.uniform(0.0, 0.03), threads=threads)
            how = "after start"
        else:
            outcome = run_worker(path, run, kill_after_acks=rng.randint(0, 120), threads=threads)
            how = "after acks"
        what = f"run {run} (killed {how}, {path.name})"
        if not outcome.killed:
            stats.problems.append(f"{what}: exit status {outcome.returncode}, not SIGKILL")
        else:
            stats.kills += 1
        stats.acks += model.absorb(run, threads, outcome)
        # Now and then leave the crash for the next worker's open to recover (and be killed in).
        last = run == kills - 1 or (run + 1) % per_directory == 0
        if last or rng.random() < 0.7:
            check_store(path, model, stats, what)
        if stats.problems:
            break
    _report(stats, outcome, "random moments")
    assert stats.kills == kills and stats.lost == 0 and stats.partial == 0


# -- campaign (b): kill points ---------------------------------------------------------------------------

# Sites and moments; a path substring restricts the count to those files (None: every file).
_SUBSTRINGS = (None, None, None, "segments/", ".pos", "CHECKPOINT", "catalog.", ".runs", "lost+found", ".compact")


def _kill_points(rng: random.Random, counts: dict[str, int], n_points: int) -> list[tuple[str, str]]:
    """``n_points`` (LOGSTORE_KILL_AT value, site) pairs, every site and moment in turn, ``n`` spread over its calls.

    Only the sites the calibration run reached (``counts``) take turns: a site the engine does not
    use in this workload would give kill points that never fire.
    """
    used = [site for site in KILL_SITES if site == "any" or counts.get(site, 0) > 0]
    combos = [(site, when) for site in used for when in ("before", "after")]
    combos += [("pwrite", "torn"), ("any", "torn")]
    rng.shuffle(combos)
    out = []
    for i in range(n_points):
        site, when = combos[i % len(combos)]
        substring = rng.choice(_SUBSTRINGS) if i >= len(combos) else None
        if substring is None:
            calls = sum(counts.values()) if site == "any" else counts.get(site, 1)
            n = rng.randint(1, max(1, calls + calls // 8))  # an eighth past the calibrated count: sometimes not reached
        else:
            n = rng.randint(1, 6)
        spec = f"{site}.{when}:{n}" + (f":{substring}" if substring else "")
        out.append((spec, site))
    return out


def test_sigkill_at_kill_points(tmp_path: Path) -> None:
    rng = random.Random(f"sigkill-points/{SEED}")
    n_points = scale(20, 600)
    per_directory = scale(10, 50)

    def small(run: int, kill_at: str) -> Outcome:
        return run_worker(path, run, kill_at=kill_at, threads=3, txs=12, truncate_every=2, compact_every=2)

    stats = Stats()
    model = Model()
    path = tmp_path / "store-0"
    # Calibrate: a run whose kill point is never reached counts the calls of each site.
    outcome = small(0, "any:1000000000")
    counts = outcome.done_counts()
    assert outcome.returncode == 0 and counts, outcome.stderr
    stats.acks += model.absorb(0, 3, outcome)
    check_store(path, model, stats, "calibration run")
    reached = dict.fromkeys(KILL_SITES, 0)
    unchecked_kill = False
    for i, (spec, site) in enumerate(_kill_points(rng, counts, n_points), start=1):
        if i % per_directory == 0:  # a fresh store
            path = tmp_path / f"store-{i // per_directory}"
            model = Model()
        if (i % per_directory == 0 or unchecked_kill) and rng.random() < 0.5:
            # Aim at the first I/O calls: the store's creation, or the recovery of the last kill.
            spec, site = f"any.{rng.choice(('before', 'after', 'torn'))}:{rng.randint(1, 30)}", "any"
        outcome = small(i, spec)
        what = f"run {i} ({KILL_AT_ENV}={spec}, {path.name})"
        if outcome.killed:
            stats.kills += 1
            reached[site] += 1
            if f"{KILL_AT_ENV}={spec}: SIGKILL" not in outcome.stderr:
                stats.problems.append(f"{what}: killed, but not by its kill point")
        elif outcome.returncode == 0:
            done = outcome.done_counts()
            n = int(spec.split(":")[1])
            calls = None if done is None else (sum(done.values()) if site == "any" else done[site])
            if calls is None or calls >= n:
                stats.problems.append(f"{what}: exited normally after {calls} calls of {site}, kill point not reached")
        else:
            stats.problems.append(f"{what}: exit status {outcome.returncode}")
        stats.acks += model.absorb(i, 3, outcome)
        last = i == n_points or (i + 1) % per_directory == 0
        unchecked_kill = outcome.killed and not last and rng.random() < 0.3
        if not unchecked_kill:
            check_store(path, model, stats, what)
        if stats.problems:
            break
    per_site = {k: v for k, v in reached.items() if v}
    _report(stats, outcome, "kill points", f"; kills per site: {per_site}")
    assert stats.lost == 0 and stats.partial == 0
    assert stats.kills >= n_points // 2


# -- campaign (c): kill points named by protocol step ------------------------------------------------------


# Steps the worker's small load does not reach: a segment grows past its first reservation only after
# a megabyte, and none is dropped whole. test_kill_point_by_protocol_step_counts_that_step_only reaches them.
_BEYOND_THE_SMALL_LOAD = {"grow_segment", "unlink_segment"}


def test_sigkill_at_protocol_steps(tmp_path: Path) -> None:
    """Every protocol step of KILL_STEPS the worker's load reaches, before and after, is survived."""
    rng = random.Random(f"sigkill-steps/{SEED}")
    rounds = scale(1, 10)

    def small(path: Path, run: int, kill_at: str) -> Outcome:
        return run_worker(path, run, kill_at=kill_at, threads=3, txs=12, truncate_every=2, compact_every=2)

    stats = Stats()
    path = tmp_path / "calibration"
    outcome = small(path, 0, "before_sync_group:1000000000")
    steps = outcome.step_counts()
    assert outcome.returncode == 0 and steps is not None, outcome.stderr
    assert set(steps) == set(KILL_STEPS)
    unreached = {step for step, n in steps.items() if n == 0}
    assert unreached <= _BEYOND_THE_SMALL_LOAD, f"protocol steps the worker's load never reaches: {unreached} ({steps})"
    reached = [step for step in KILL_STEPS if step not in unreached]
    run = 1
    for r in range(rounds):
        for step in reached:
            for when in ("before", "after"):
                # A fresh store per kill: the count then starts where the calibration run's did.
                path = tmp_path / f"store-{r}-{step}-{when}"
                model = Model()
                # Group commits batch as the threads race, so a step's count varies from run to run:
                # n within the first half of the calibrated count is nearly always reached.
                n = rng.randint(1, max(1, steps[step] // 2))
                spec = f"{when}_{step}:{n}"
                outcome = small(path, run, spec)
                what = f"run {run} ({KILL_AT_ENV}={spec})"
                site = KILL_STEPS[step][0]
                if outcome.returncode == 0:
                    done = outcome.step_counts()
                    calls = None if done is None else done[step]
                    if calls is None or calls >= n:
                        stats.problems.append(f"{what}: exited normally after {calls} calls, kill point not reached")
                elif not outcome.killed:
                    stats.problems.append(f"{what}: exit status {outcome.returncode}, not SIGKILL")
                elif f"{KILL_AT_ENV}={spec}: SIGKILL {when} {site} ({step}) #" not in outcome.stderr:
                    stats.problems.append(f"{what}: killed, but not by its kill point")
                else:
                    stats.kills += 1
                stats.acks += model.absorb(run, 3, outcome)
                check_store(path, model, stats, what)
                run += 1
                if stats.problems:
                    break
    _report(stats, outcome, "protocol steps")
    assert stats.lost == 0 and stats.partial == 0
    assert stats.kills >= rounds * len(reached)


# -- regressions: each found by the campaigns above, named after what broke --------------------------


@pytest.mark.parametrize(
    "kill_at",
    [
        "mkdir.after:2",  # segments/ made: no CHECKPOINT, no segment
        "mkdir.after:3",  # streams/ made too
        "create.after:1:segments/",  # the first segment's .tmp file exists, empty
        "rename.before:1:segments/",  # the first segment written, not yet renamed into place
    ],
)
def test_kill_while_creating_the_store_leaves_it_openable(tmp_path: Path, kill_at: str) -> None:
    """A kill before the first segment was in place left a store that every open refused.

    ``open`` raised ``CorruptionError: no CHECKPOINT and no segment files``.
    Fixed in ``Store._prepare_directory``: a directory holding only what an
    unfinished creation leaves is created again.
    """
    path = tmp_path / "store"
    outcome = run_worker(path, 0, kill_at=kill_at, threads=0)
    assert outcome.killed, outcome.stderr
    stats, model = Stats(), Model()
    check_store(path, model, stats, kill_at)
    assert not stats.problems, stats.problems


@pytest.mark.parametrize("kill_at", ["create.after:1:.pos", "pwrite.before:1:.pos"])
def test_kill_before_the_first_position_file_is_written_leaves_a_store_that_verifies(
    tmp_path: Path, kill_at: str
) -> None:
    """A kill between creating the new store's first ``.pos`` file and writing its header left it 0 bytes long.

    Recovery rebuilt the indexes but kept the empty file (its segment had no
    records, so the checkpoint wrote nothing to it), and ``verify`` reported
    ``file is 0 bytes, shorter than its 64-byte header`` for ever after.
    Fixed in ``Log.load``: a rebuild removes the old position files, and the
    checkpoint after it writes them afresh.
    """
    path = tmp_path / "store"
    outcome = run_worker(path, 0, kill_at=kill_at, threads=0)
    assert outcome.killed, outcome.stderr
    assert (path / "segments" / "00000000000000000000.pos").stat().st_size == 0
    stats, model = Stats(), Model()
    check_store(path, model, stats, kill_at)
    assert not stats.problems, stats.problems


# -- the kill-point syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        *("fsync", "fsync:0", "fsync:x", "fsync:-1", "nosuch:1", "fsync.during:1", "fsync.torn:1", "fsync:1:", ":1"),
        *("before_nosuch:1", "after_sync_group", "after_sync_group:0", "before_sync_group.after:1"),
    ],
)
def test_malformed_kill_point_is_a_value_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(KILL_AT_ENV, value)
    with pytest.raises(ValueError, match=KILL_AT_ENV):
        logstore.open(tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_kill_point_io_only_when_the_variable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from logstore.embedded.fileio import FileIO, KillPointIO, default_io

    assert type(default_io()) is FileIO
    monkeypatch.setenv(KILL_AT_ENV, "")
    assert type(default_io()) is FileIO
    monkeypatch.setenv(KILL_AT_ENV, "rename.after:2:CHECKPOINT")
    io = default_io()
    assert isinstance(io, KillPointIO)
    assert (io.point.site, io.point.when, io.point.n, io.point.substring) == ("rename", "after", 2, "CHECKPOINT")
    assert default_io().point is io.point  # one count per process


def test_kill_point_by_protocol_step_counts_that_step_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from logstore.embedded.fileio import KillPointIO, default_io

    monkeypatch.setenv(KILL_AT_ENV, "after_rename_catalog:1000000")
    io = default_io()
    assert isinstance(io, KillPointIO)
    point = io.point
    assert (point.step, point.site, point.when, point.n) == ("rename_catalog", "rename", "after", 1000000)
    with logstore.open(tmp_path / "store", io=io, checkpoint_bytes=1) as store:
        for i in range(3):
            with store.transaction() as tx:
                store.append_messages(tx, "s", i, [logstore.Envelope.new("T", {"i": i})])
    big = {"segment_size": 2 << 20, "retention_bytes": 2 << 20, "durability": "none"}
    with logstore.open(tmp_path / "big", io=io, **big) as store:
        pad = "x" * 60_000
        for _ in range(120):  # 7 MB: segments grow past their first reservation, roll, and retention drops some
            with store.transaction() as tx:
                store.append_messages(tx, "big", logstore.ANY, [logstore.Envelope.new("T", {"pad": pad})])
    assert point.step_calls["grow_segment"] >= 1
    assert point.step_calls["unlink_segment"] >= 1
    catalogs = point.step_calls["rename_catalog"]
    assert point.calls == catalogs >= 1
    assert point.site_calls["rename"] > catalogs  # CHECKPOINT and segment renames are not counted for the step
    assert point.step_calls["sync_group"] >= 3
    assert point.step_calls["rename_checkpoint"] >= 1


def test_kill_point_torn_pwrite_writes_half_then_dies(tmp_path: Path) -> None:
    """``pwrite.torn`` leaves the first half of the bytes; the worker dies by SIGKILL with the site on stderr."""
    target = tmp_path / "f"
    code = (
        "import os; from logstore.embedded.fileio import default_io; io = default_io(); "
        f"fd = io.open({str(target)!r}, os.O_RDWR | os.O_CREAT); io.pwrite(fd, b'abcdefgh', 0)"
    )
    env = {**os.environ, KILL_AT_ENV: "pwrite.torn:1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert b"SIGKILL torn pwrite #1 " + str(target).encode() in proc.stderr
    assert target.read_bytes() == b"abcd"
