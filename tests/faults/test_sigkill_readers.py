"""SIGKILL campaign with tailing reader processes: the writer dies again and again while others follow it.

Reader processes open the store ``readonly=True`` once, before the first
writer, and follow the global log with ``next()`` for the whole campaign,
writing each message they get (global offset, stream, stream offset,
message id) to a file. Writer processes (tests/faults/killer.py, several
threads of multi-stream transactions, truncations and compactions) are
killed with SIGKILL after a random number of acknowledgements, and the next
writer recovers the store while the readers stay open (it is not the first
opener: they hold the store). At the end every reader's sequence is checked
against the log and against what the writers acknowledged:

- its global offsets increase, with no repeat;
- each message it got is the message the log holds at that global offset
  (or one of the scratch stream that a truncation removed since): a reader
  never saw a transaction that a later recovery cut, nor a partial one (a
  partial one would be followed by a different transaction at the same
  offsets after the cut);
- it got every message of the log up to the last one it got, except scratch
  messages removed before it came to them;
- every acknowledged transaction is in the log, whole (the checks of
  tests/faults/test_sigkill.py) and, below a reader's last offset, in the
  reader's sequence;
- ``logstore verify`` is clean.

CI tier: 8 kills, 2 readers. ``LOGSTORE_STRESS=1``: 200 kills, 3 readers.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import logstore
from logstore import Envelope
from tests.faults.killer import CHECKPOINT_BYTES, PROBE, SCRATCH, SEGMENT_SIZE
from tests.faults.test_sigkill import Model, Stats, _report, check_store, run_worker
from tests.helpers import assert_verified
from tests.stress import SEED, scale

REPO = Path(__file__).resolve().parents[2]

READER = """
import os, sys
import logstore
path, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
with logstore.open(path, readonly=True) as store, open(out, "w") as f:
    print("ready", flush=True)
    with store.open_global(store, 0) as log:
        while True:
            try:
                log.next(timeout=0.2)
            except TimeoutError:
                if os.path.exists(stop):
                    break
                continue
            env = log.get()
            f.write(f"{log.offset()} {log.stream_name()} {log.stream_offset()} {env.message_id}\\n")
"""


def _start_reader(path: Path, n: int, stop: Path) -> tuple[subprocess.Popen[str], Path]:
    out = path.parent / f"reader-{n}.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(out), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
    return proc, out


def _log_of(path: Path) -> dict[int, tuple[str, int, str]]:
    """Every readable message of the store: global offset -> (stream, stream offset, message id)."""
    out: dict[int, tuple[str, int, str]] = {}
    with logstore.open(path, readonly=True) as store, store.open_global(store, 0) as log:
        while log.try_next():
            out[log.offset()] = (log.stream_name(), log.stream_offset(), log.get().message_id)
    return out


def test_sigkill_of_the_writer_while_reader_processes_follow(tmp_path: Path) -> None:
    rng = random.Random(f"sigkill-readers/{SEED}")
    kills = scale(8, 200)
    readers = scale(2, 3)
    path = tmp_path / "store"
    with (
        logstore.open(path, segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES) as store,
        store.transaction() as tx,  # the store exists before the readers open it
    ):
        store.append_messages(tx, PROBE, 0, [Envelope.new("Probe", {"probe": 0})])
    stop = tmp_path / "stop"
    procs = [_start_reader(path, n, stop) for n in range(readers)]
    stats = Stats()
    model = Model(probes=1)
    outcome = None
    try:
        for run in range(kills):
            threads = rng.randint(2, 4)
            outcome = run_worker(path, run, kill_after_acks=rng.randint(0, 80), threads=threads)
            if outcome.killed:
                stats.kills += 1
            else:
                stats.problems.append(f"run {run}: exit status {outcome.returncode}, not SIGKILL")
            stats.acks += model.absorb(run, threads, outcome)
            if stats.problems:
                break
        # A last writer recovers the last kill and closes cleanly; the readers then catch up with it.
        logstore.open(path, segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES).close()
    finally:
        stop.touch()
        for proc, _out in procs:
            try:
                proc.wait(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
    for proc, _out in procs:
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    log = _log_of(path)  # before the check, which appends a probe
    check_store(path, model, stats, "after the campaign")
    _report(stats, outcome, "writer killed beside tailing readers")
    assert stats.kills == kills and stats.lost == 0 and stats.partial == 0
    for n, (_proc, out) in enumerate(procs):
        seen = [line.split() for line in out.read_text().splitlines()]
        assert seen, f"reader {n} got nothing"
        last = -1
        got = set()
        for goff_s, stream, soff_s, mid in seen:
            goff, soff = int(goff_s), int(soff_s)
            assert goff > last, f"reader {n}: global offset {goff} after {last}"
            last = goff
            got.add(goff)
            held = log.get(goff)
            if held is None:  # removed since the reader got it: only the scratch stream is truncated
                assert stream == SCRATCH, f"reader {n}: {stream}@{soff} (global {goff}) is not in the log"
            else:
                assert held == (stream, soff, mid), f"reader {n}: got {stream}@{soff} {mid} at {goff}, log has {held}"
        assert last >= max(log), f"reader {n} stopped at global offset {last}, the log's last message is {max(log)}"
        missed = [g for g in log if g <= last and g not in got and log[g][0] != SCRATCH]
        assert not missed, f"reader {n} missed global offsets {missed[:10]}"
    assert_verified(path)
