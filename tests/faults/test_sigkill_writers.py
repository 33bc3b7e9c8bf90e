"""SIGKILL campaign with several writer processes and tailing reader processes on one store.

Each round makes a fresh store (64 KiB segments, so that rolls are frequent; ``durability`` ``"fsync"``
or ``"none"`` for the round, or each writer its own and one reader of each), starts two reader processes
and 2-3 writer processes (tests/faults/multiwriter.py, 1-2 threads each), and then:

1. lets the writers commit (multi-stream transactions: shared streams at ``logstore.ANY``, each thread's
   own stream at exact offsets, now and then a new stream) and kills one of them, the *victim*: either
   by ``SIGKILL`` from the test after a random number of acknowledgements, or at a ``LOGSTORE_KILL_AT``
   kill point (logstore/embedded/fileio.py) drawn from the sites and protocol steps that a calibration round
   reached (``pwrite`` torn included, ``lock``/``unlock`` on ``CONTROL``, segment and checkpoint files);
2. waits until every surviving writer has committed again (the next holder of the write lock takes over
   from the victim if it died in its turn);
3. restarts the victim (a new life of the same writer, continuing its own streams) and waits until it and
   the survivors commit;
4. closes every writer (stdin closed: each closes its store cleanly), tells the readers the global head,
   and waits until each has read up to it; or, in some rounds, kills every writer at once and stops the
   readers where they are (the final open then recovers as the first opener).

Then, with everything closed, the test opens the store and checks exactly:

- every acknowledged transaction is there once, whole, at its acknowledged global offsets and stream
  offsets, with the content its key plans (tests/faults/multiwriter.py ``plan``);
- nothing else is there but, for the victim's killed life, at most the one transaction per thread that
  was in flight (the one after its last acknowledgement), whole; no transaction is ever there in part;
- global offsets run from 0 without a gap; every stream's offsets are contiguous from 0 to its head;
- each reader read exactly the final log, in order (same message ids at the same global and stream
  offsets), or a prefix of it after a crash end: nothing it saw was later cut or is partial, nothing
  is missing;
- the final open cuts nothing after a clean end, and ``logstore verify`` is clean.

CI tier: 2 calibration rounds (no kill) and 6 kill rounds, fixed seeds. ``LOGSTORE_STRESS=1``: 200 kill
rounds (``LOGSTORE_STRESS_SEED`` changes the seeds); ``-s`` prints the totals (acknowledged transactions,
kills by site, takeovers).
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import logstore
from logstore.embedded.fileio import KILL_AT_ENV, file_kind
from logstore.embedded.verify import verify
from tests.faults.multiwriter import CHECKPOINT_BYTES, FIELDS, SEGMENT_SIZE, TYPE, Key, plan
from tests.stress import SEED, STRESS, scale

REPO = Path(__file__).resolve().parents[2]
WAIT = 60.0  # seconds a phase may take before the round counts as hung (a hang is a finding)
CALIBRATION_ACKS = 60  # acknowledgements (all writers together) of a calibration round
TAKEOVER = "died or failed holding the write lock"  # the takeover's warning (logstore/embedded/follow.py)


@pytest.fixture(autouse=True)
def _no_kill_point_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kill point is for the victim only: this process and the other writers must not kill themselves."""
    monkeypatch.delenv(KILL_AT_ENV, raising=False)


class RoundFailed(AssertionError):
    pass


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    return env


# -- processes -----------------------------------------------------------------------------------------


@dataclass(eq=False)
class WriterProc:
    """One life of one writer process, and what it printed."""

    writer: int
    life: int
    threads: int
    proc: subprocess.Popen[bytes]
    err_path: Path
    kill_at: str | None
    buf: bytes = b""
    eof: bool = False
    lines: list[str] = field(default_factory=list)
    acks: list[list[str]] = field(default_factory=list)
    killed_by_test: bool = False

    @property
    def name(self) -> str:
        return f"writer {self.writer} life {self.life}"

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def done_counts(self) -> dict[str, int] | None:
        for line in self.lines:
            if line.startswith("done"):
                return {k: int(v) for k, v in (item.rsplit("=", 1) for item in line.split()[1:])}
        return None


def start_writer(
    path: Path, writer: int, life: int, threads: int, durability: str, kill_at: str | None = None
) -> WriterProc:
    argv = [sys.executable, "-m", "tests.faults.multiwriter", "writer", str(path)]
    argv += ["--writer", str(writer), "--life", str(life), "--threads", str(threads), "--durability", durability]
    err_path = path.parent / f"writer-{writer}-{life}.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=_env(kill_at), cwd=str(REPO)
        )
    return WriterProc(writer, life, threads, proc, err_path, kill_at)


def start_reader(path: Path, n: int, durability: str) -> tuple[subprocess.Popen[str], Path]:
    out = path.parent / f"reader-{n}.txt"
    argv = [sys.executable, "-m", "tests.faults.multiwriter", "reader", str(path), str(out)]
    proc = subprocess.Popen(
        [*argv, "--durability", durability],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=str(REPO),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        raise RoundFailed(f"reader {n} did not open: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, out


def pump(writers: list[WriterProc], until: Callable[[], bool], what: str) -> None:
    """Read the writers' lines (select on their pipes: no sleeping) until ``until()`` holds.

    A writer whose pipe ends is waited for. Raises :class:`RoundFailed` after :data:`WAIT` seconds.
    """
    deadline = time.monotonic() + WAIT
    with selectors.DefaultSelector() as sel:
        for w in writers:
            if not w.eof:
                assert w.proc.stdout is not None
                sel.register(w.proc.stdout.fileno(), selectors.EVENT_READ, w)
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RoundFailed(
                    f"waited {WAIT} s for {what}; acks so far: {[(w.name, len(w.acks)) for w in writers]}"
                )
            if not sel.get_map():
                raise RoundFailed(f"every writer has exited, still waiting for {what}")
            for sk, _ in sel.select(left):
                w = sk.data
                chunk = os.read(sk.fd, 65536)
                if not chunk:
                    sel.unregister(sk.fd)
                    w.eof = True
                    w.proc.wait(timeout=WAIT)
                    continue
                w.buf += chunk
                *complete, w.buf = w.buf.split(b"\n")
                for raw in complete:
                    line = raw.decode()
                    w.lines.append(line)
                    if line.startswith("ack "):
                        w.acks.append(line.split())


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()


# -- kill points --------------------------------------------------------------------------------------

SITES = ("pwrite", "fdatasync", "fsync", "rename", "unlink", "create", "fallocate", "lock", "unlock", "fsync_dir")


def kill_specs(counts: dict[str, int]) -> list[tuple[str, int]]:
    """(LOGSTORE_KILL_AT value without ``:<n>``-and-after, calls in a calibration life) for every site and
    step the calibration reached: each site before and after, ``pwrite`` torn (anywhere, in segments, in the
    checkpoint's files), each protocol step before and after. ``lock``/``unlock`` are all on ``CONTROL``."""
    out: list[tuple[str, int]] = []
    for site in SITES:
        n = counts.get(site, 0)
        if n:
            out += [(f"{site}.before", n), (f"{site}.after", n)]
    out.append(("pwrite.torn", counts.get("pwrite", 0)))
    if counts.get("step:write_group", 0):
        out.append(("pwrite.torn:segments/", counts["step:write_group"]))
    if counts.get("step:write_checkpoint", 0):
        out.append(("pwrite.torn:CHECKPOINT", counts["step:write_checkpoint"]))
    for key, n in counts.items():
        if key.startswith("step:") and n:
            step = key[5:]
            out += [(f"before_{step}", n), (f"after_{step}", n)]
    return [(spec, n) for spec, n in out if n]


HOT = ("pwrite.torn", "before_write_group", "after_write_group", "before_sync_group", "after_sync_group", "lock.after")
"""Kill points inside a turn of the writer role (intent set, or write lock just taken): drawn more often."""


def spec_with_n(spec: str, n: int) -> str:
    head, _, substring = spec.partition(":")
    return f"{head}:{n}" + (f":{substring}" if substring else "")


# -- the check ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    rounds: int = 0
    kills: int = 0
    kills_by: Counter[str] = field(default_factory=Counter)
    unreached: int = 0  # kill points not reached in time: the test killed the victim instead
    acks: int = 0
    in_flight_present: int = 0  # unacknowledged transactions of a killed life found whole
    takeovers: int = 0
    crash_ends: int = 0  # rounds ended by killing every writer (the final open recovers)
    durability: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(self.kills_by.items()))
        return (
            f"several writers: {self.rounds} rounds ({dict(self.durability)}), {self.kills} kills, "
            f"{self.acks} acknowledged transactions, {self.takeovers} takeovers, {self.crash_ends} crash ends, "
            f"{self.in_flight_present} unacknowledged in-flight transactions found whole, "
            f"{self.unreached} kill points not reached (killed by the test instead), {self.seconds:.1f} s\n"
            f"kills by site: {by}"
        )


Message = tuple[int, str, int, logstore.Envelope]  # global offset, stream, stream offset, envelope


def final_log(path: Path, problems: list[str], clean: bool) -> list[Message]:
    """Open the store (first opener: recovery), read everything, check streams and verify.

    After a ``clean`` end (every writer closed) the open must cut nothing."""
    with logstore.open(path, durability="fsync", segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES) as store:
        if clean and store.recovery_report.bytes_cut:
            problems.append(f"the open after every writer closed cut {store.recovery_report}")
        log: list[Message] = []
        with store.open_global(store, 0) as g:
            while g.try_next():
                log.append((g.offset(), g.stream_name(), g.stream_offset(), g.get()))
        by_stream: dict[str, list[int]] = {}
        for _g, s, o, _e in log:
            by_stream.setdefault(s, []).append(o)
        for name in store.stream_names():
            info = store.stream_info(name)
            assert info is not None
            offsets = []
            with store.open_stream(store, name, 0)[0] as r:
                while r.try_next():
                    offsets.append(r.offset())
            if offsets != list(range(info.head)) or info.first != 0:
                problems.append(f"stream {name!r}: offsets {offsets[:8]}... not 0..{info.head} (first {info.first})")
            if by_stream.pop(name, None) != offsets:
                problems.append(f"stream {name!r}: the global log holds other offsets of it than the stream")
        if by_stream:
            problems.append(f"the global log holds streams the store does not list: {sorted(by_stream)}")
    if [m[0] for m in log] != list(range(len(log))):
        problems.append("global offsets are not 0, 1, 2, ... without a gap")
    result = verify(os.fspath(path))
    if not result.ok:
        problems.append("verify: " + "; ".join(str(p) for p in result.problems[:5]))
    return log


def check_round(
    log: list[Message], lives: list[WriterProc], killed: set[tuple[int, int]], stats: Stats, problems: list[str]
) -> None:
    """Every acknowledged transaction whole at its offsets; nothing else but a killed life's in-flight ones."""
    groups: dict[Key, list[Message]] = {}
    for m in log:
        msg = m[3].message
        if m[3].type != TYPE or not isinstance(msg, dict) or set(msg) != FIELDS:
            problems.append(f"global offset {m[0]}: a message no writer wrote: {m[3]!r}")
            continue
        groups.setdefault((msg["w"], msg["l"], msg["t"], msg["s"]), []).append(m)
    found: dict[Key, tuple[int, int, list[str]]] = {}
    for key, msgs in groups.items():
        expected = [(stream, msg) for stream, _exact, ms in plan(key) for msg in ms]
        got = [(s, e.message) for _g, s, _o, e in msgs]
        g0 = msgs[0][0]
        placed: list[str] = []
        for stream, _exact, ms in plan(key):
            offs = [o for _g, s, o, _e in msgs if s == stream]
            placed.append(f"{stream}:{offs[0] if offs else '?'}:{len(offs)}")
            if offs != list(range(offs[0], offs[0] + len(ms))) if offs else True:
                problems.append(f"transaction {key}: stream {stream} offsets {offs}, planned {len(ms)} messages")
        if got != expected or [m[0] for m in msgs] != list(range(g0, g0 + len(expected))):
            problems.append(
                f"transaction {key} is there in part or altered: {len(msgs)} of {len(expected)} messages at "
                f"global offsets {[m[0] for m in msgs][:8]}"
            )
            continue
        found[key] = (g0, g0 + len(expected), placed)
    for life in lives:
        seqs: dict[int, set[int]] = {t: set() for t in range(life.threads)}
        for words in life.acks:
            w, lf, t, s, g0, g1 = (int(x) for x in words[1:7])
            key = (w, lf, t, s)
            seqs[t].add(s)
            if key not in found:
                problems.append(f"acknowledged transaction {key} (global {g0}..{g1}) is not there whole")
            elif found[key] != (g0, g1, words[7:]):
                problems.append(f"acknowledged transaction {key} at {g0}..{g1} {words[7:]}, found at {found[key]}")
        for t in range(life.threads):
            acked = seqs[t]
            if acked != set(range(len(acked))):
                problems.append(f"{life.name} thread {t}: acknowledgements {sorted(acked)} are not 0, 1, 2, ...")
            there = {s for (w, lf, tt, s) in found if (w, lf, tt) == (life.writer, life.life, t)}
            extra = there - acked
            allowed = {len(acked)} if (life.writer, life.life) in killed else set()
            if not extra <= allowed:
                problems.append(
                    f"{life.name} thread {t}: unacknowledged transactions {sorted(extra)} are there "
                    f"(acknowledged 0..{len(acked) - 1}, killed: {bool(allowed)})"
                )
            stats.in_flight_present += len(extra & allowed)
    known = {(w.writer, w.life) for w in lives}
    strays = sorted({k for k in groups if k[:2] not in known})
    if strays:
        problems.append(f"transactions of writer lives that never ran: {strays[:5]}")


def check_reader(n: int, out: Path, log: list[Message], problems: list[str], whole: bool) -> None:
    """The reader's sequence is the final log (``whole``) or a prefix of it."""
    seen = [line.split() for line in out.read_text().splitlines()]
    want = [[str(g), s, str(o), e.message_id] for g, s, o, e in log]
    if not whole:
        want = want[: len(seen)]
    if seen != want:
        i = next((i for i, (a, b) in enumerate(zip(seen, want, strict=False)) if a != b), min(len(seen), len(want)))
        problems.append(
            f"reader {n} read {len(seen)} messages, the log holds {len(want)}; first difference at index {i}: "
            f"read {seen[i] if i < len(seen) else None}, log {want[i] if i < len(want) else None}"
        )


# -- a round ----------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a round does (all drawn from its seed)."""

    seed: str
    durability: str  # "fsync", "none", or "mixed": each writer and reader its own (the victim's restart keeps its)
    threads: list[int]  # per writer
    victim: int | None  # None: a calibration round (no kill)
    kill_at: str | None = None  # the victim's LOGSTORE_KILL_AT (None: SIGKILL from the test)
    kill_after: int = 0  # acknowledgements (all writers) before the test's SIGKILL
    delay: float = 0.0  # then this long (the random moment itself, not a synchronisation)
    after_kill: int = 0  # acknowledgements by the survivors after the kill
    after_restart: int = 0  # acknowledgements by the restarted victim
    crash_end: bool = False  # end the round by killing every writer instead of closing them

    def of_writer(self, n: int) -> str:
        if self.durability != "mixed":
            return self.durability
        return random.Random(f"{self.seed}/writer/{n}").choice(("fsync", "none"))

    def of_reader(self, n: int) -> str:
        return self.durability if self.durability != "mixed" else ("fsync", "none")[n % 2]

    def describe(self) -> str:
        how = f"{KILL_AT_ENV}={self.kill_at}" if self.kill_at else f"SIGKILL after {self.kill_after} acks"
        kill = "no kill" if self.victim is None else f"victim writer {self.victim}, {how}"
        if self.crash_end:
            kill += ", every writer killed at the end"
        mixed = (
            f" (writers {[self.of_writer(n) for n in range(len(self.threads))]})" if self.durability == "mixed" else ""
        )
        return f"round {self.seed}: durability={self.durability}{mixed}, threads {self.threads}, {kill}"


def draw_plan(seed: str, specs: dict[str, list[tuple[str, int]]], crash_end: bool) -> Plan:
    rng = random.Random(seed)
    durability = rng.choice(("fsync", "none", "mixed"))
    threads = [rng.randint(1, 2) for _ in range(rng.randint(2, 3))]
    victim = rng.randrange(len(threads))
    p = Plan(seed, durability, threads, victim)
    if rng.random() < 0.6:
        choices = specs[p.of_writer(victim)]
        hot = [c for c in choices if c[0].split(":")[0] in HOT]
        spec, calls = rng.choice(hot if hot and rng.random() < 0.4 else choices)
        p.kill_at = spec_with_n(spec, rng.randint(1, max(1, calls + calls // 10)))
    else:
        p.kill_after = rng.randint(0, 40)
        p.delay = rng.choice((0.0, 0.0, rng.uniform(0.0, 0.005)))
    p.after_kill = rng.randint(2, 20)
    p.after_restart = rng.randint(1, 10)
    p.crash_end = crash_end
    return p


def run_round(path: Path, p: Plan, stats: Stats) -> dict[str, int]:
    """Run one round on a fresh store at ``path``; raise :class:`RoundFailed` naming every problem.

    Returns the kill-point calls per site and step of the round's writers (most of any life), for calibration.
    """
    t0 = time.monotonic()
    logstore.open(path, segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES).close()
    readers: list[tuple[subprocess.Popen[str], Path]] = []
    lives: list[WriterProc] = []
    killed: set[tuple[int, int]] = set()
    problems: list[str] = []
    calibrating = p.victim is None
    try:
        readers = [start_reader(path, n, p.of_reader(n)) for n in range(2)]
        for number, threads in enumerate(p.threads):
            arm = "any:1000000000" if calibrating else (p.kill_at if number == p.victim else None)
            lives.append(start_writer(path, number, 0, threads, p.of_writer(number), arm))
        writers = list(lives)

        def acks() -> int:
            return sum(len(w.acks) for w in lives)

        if calibrating:
            pump(lives, lambda: acks() >= CALIBRATION_ACKS, "the calibration's acknowledgements")
        else:
            assert p.victim is not None
            victim = writers[p.victim]
            survivors = [w for w in writers if w is not victim]
            if p.kill_at is None:
                pump(lives, lambda: acks() >= p.kill_after or victim.eof, f"{p.kill_after} acknowledgements")
                if p.delay:
                    time.sleep(p.delay)
                victim.proc.send_signal(signal.SIGKILL)
                victim.killed_by_test = True
            else:
                cap = acks() + 6 * CALIBRATION_ACKS
                pump(lives, lambda: victim.eof or acks() >= cap, "the victim's kill point")
                if not victim.eof:
                    stats.unreached += 1
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.killed_by_test = True
            pump(lives, lambda: victim.eof, "the victim's end")
            if victim.proc.returncode != -signal.SIGKILL:
                raise RoundFailed(f"the victim exited with status {victim.proc.returncode}:\n{victim.stderr()[-3000:]}")
            killed.add((victim.writer, 0))
            stats.kills += 1
            if victim.killed_by_test:
                stats.kills_by["SIGKILL from the test"] += 1
            else:
                line = next(
                    (ln for ln in victim.stderr().splitlines() if f"{KILL_AT_ENV}={p.kill_at}: SIGKILL" in ln), ""
                )
                if not line:
                    raise RoundFailed(f"the victim died, but not at its kill point:\n{victim.stderr()[-3000:]}")
                # "...: SIGKILL before pwrite (write_group) #3 /path" -> "before pwrite (write_group) [segment]"
                what, _, paths = line.split(": SIGKILL ", 1)[1].partition(" #")
                target = paths.split(" ", 1)[1].split(" -> ")[-1]
                stats.kills_by[f"{what} [{file_kind(target, what.split()[1] in ('mkdir', 'fsync_dir'))}]"] += 1
            # The survivors go on: each commits again, the next write-lock holder taking over.
            base = {id(w): len(w.acks) for w in survivors}

            def survivors_went_on(need: int) -> bool:
                new = [len(w.acks) - base[id(w)] for w in survivors]
                return min(new) >= 1 and sum(new) >= need

            pump(lives, lambda: survivors_went_on(p.after_kill), "the survivors' commits after the kill")
            for w in survivors:
                if w.eof:
                    raise RoundFailed(f"{w.name} exited with status {w.proc.returncode}:\n{w.stderr()[-3000:]}")
            # The victim again, as a new life: it reopens beside the survivors and commits.
            again = start_writer(path, victim.writer, 1, victim.threads, p.of_writer(victim.writer))
            lives.append(again)
            base = {id(w): len(w.acks) for w in survivors}
            pump(
                lives,
                lambda: len(again.acks) >= p.after_restart and survivors_went_on(1),
                "the restarted victim's commits",
            )
        live = [w for w in lives if not w.eof]
        if p.crash_end:
            # Every writer killed at once: the first opener after them recovers.
            for w in live:
                w.proc.send_signal(signal.SIGKILL)
            pump(lives, lambda: all(w.eof for w in live), "the writers' end")
            for w in live:
                if w.proc.returncode != -signal.SIGKILL:
                    problems.append(f"{w.name} exited with status {w.proc.returncode}:\n{w.stderr()[-3000:]}")
                killed.add((w.writer, w.life))
        else:
            # Close every writer (stdin closed): each closes its store cleanly.
            for w in live:
                assert w.proc.stdin is not None
                w.proc.stdin.close()
            pump(lives, lambda: all(w.eof for w in live), "the writers' clean close")
            for w in live:
                if w.proc.returncode != 0 or w.done_counts() is None:
                    problems.append(f"{w.name} exited with status {w.proc.returncode}:\n{w.stderr()[-3000:]}")
        if problems:
            raise RoundFailed("\n".join(problems))
        # The readers read up to the global head (after a crash, a reader stops where it is: one that
        # follows the durable bound may never see what the killed "none" writers published).
        with logstore.open(path, readonly=True, durability="none") as store:
            head = store.global_head
        for proc, _out in readers:
            assert proc.stdin is not None
            proc.stdin.write("\n" if p.crash_end else f"{head}\n")
            proc.stdin.flush()
        for n, (proc, _out) in enumerate(readers):
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                problems.append(f"reader {n} did not read up to global offset {head} in {WAIT} s")
                continue
            if proc.returncode != 0:
                problems.append(
                    f"reader {n} exited with status {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
                )
        if problems:
            raise RoundFailed("\n".join(problems))
        log = final_log(path, problems, clean=not p.crash_end)
        check_round(log, lives, killed, stats, problems)
        for n, (_proc, out) in enumerate(readers):
            check_reader(n, out, log, problems, whole=not p.crash_end)
        victim_pid = None if p.victim is None else lives[p.victim].proc.pid
        for w in lives:
            err = w.stderr()
            stats.takeovers += err.count(TAKEOVER)
            for line in err.splitlines():
                if TAKEOVER in line and f"process {victim_pid} " not in line:
                    problems.append(f"{w.name} took over from a process that is not the victim: {line}")
        if problems:
            raise RoundFailed("\n".join(problems))
        stats.acks += sum(len(w.acks) for w in lives)
        stats.rounds += 1
        stats.durability[p.durability] += 1
        stats.crash_ends += p.crash_end
        counts: dict[str, int] = {}
        if calibrating:
            for w in lives:
                for k, v in (w.done_counts() or {}).items():
                    counts[k] = max(counts.get(k, 0), v)
        return counts
    finally:
        for w in lives:
            stop_process(w.proc)
        for proc, _out in readers:
            stop_process(proc)
        stats.seconds += time.monotonic() - t0


def run_campaign(tmp_path: Path, rounds: int) -> Stats:
    stats = Stats()
    specs: dict[str, list[tuple[str, int]]] = {}
    for durability in ("fsync", "none"):
        p = Plan(f"calibration-{durability}/{SEED}", durability, [2, 1], None)
        path = tmp_path / f"calibration-{durability}" / "store"
        path.parent.mkdir()
        try:
            counts = run_round(path, p, stats)
        except RoundFailed as exc:
            pytest.fail(f"{p.describe()}\n{exc}")
        specs[durability] = kill_specs(counts)
        assert specs[durability], counts
    for r in range(rounds):
        p = draw_plan(f"sigkill-writers/{SEED}/{r}", specs, crash_end=r % 3 == 2)
        path = tmp_path / f"round-{r}" / "store"
        path.parent.mkdir()
        try:
            run_round(path, p, stats)
        except RoundFailed as exc:
            pytest.fail(f"{p.describe()}\n{exc}\n(store kept at {path})")
    return stats


def test_sigkill_of_one_of_several_writers_while_readers_follow(tmp_path: Path) -> None:
    stats = run_campaign(tmp_path, scale(6, 200))
    print("\n" + stats.summary())
    assert stats.kills == scale(6, 200)
    assert stats.acks > 0
    if STRESS:
        assert stats.takeovers > 0 and len(stats.kills_by) > 5
