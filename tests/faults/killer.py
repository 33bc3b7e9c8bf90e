"""A writer process for SIGKILL tests (tests/faults/test_sigkill.py): group-commit load, acknowledged on stdout.

Run as ``python tests/faults/killer.py DIR --run R [--threads T] [--txs N] ...`` with
the repository root on ``PYTHONPATH``. It opens the store in ``DIR``
(``durability="fsync"``, 64 KiB segments and a small ``checkpoint_bytes``, so
that segment rolls and checkpoints happen often), then ``T`` threads each
commit ``N`` multi-stream transactions whose streams and contents follow
from ``(run, thread, seq)`` alone (:func:`plan`), so that the parent can check
every byte. Thread 0 also writes single-stream transactions to the
``scratch`` stream and, every few of them, truncates it at its head and
sometimes compacts the store.

Lines on stdout (each flushed at once; a line is printed only after the
call it reports has returned):

- ``start <pid>``: imports done, about to open the store;
- ``open <records scanned> <transactions recovered> <bytes cut>``: the store is open (recovery done);
- ``ack <run> <thread> <seq> <first global offset> <stream>:<offset>:<count> ...``: ``commit()`` returned;
- ``trunc <run> <before>``: ``truncate_stream("scratch", before)`` returned;
- ``compact <bytes>``: ``store.compact()`` returned;
- ``steps <step>=<calls> ...``: before ``done``, the calls of each protocol step (with
  ``LOGSTORE_KILL_AT`` set; see ``KILL_STEPS`` in logstore/embedded/fileio.py);
- ``done <site>=<calls> ...``: the store closed cleanly (with ``LOGSTORE_KILL_AT`` set,
  the kill point's counts of calls per I/O site; see ``logstore.embedded.fileio``).

Any error is printed to stderr and the process exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import traceback
from typing import Any

import logstore
from logstore import Envelope, OffsetConflictError
from logstore.embedded.fileio import KillPointIO

STREAMS = tuple(f"s{i}" for i in range(6))
"""The streams the threads share (transactions race for them and retry on conflicts)."""
SCRATCH = "scratch"
"""Written by thread 0 alone, in single-stream transactions, and truncated at its head now and then."""
PROBE = "probe"
"""Written by the test process itself after each check (never by this script)."""
SCRATCH_THREAD = -1
"""The thread number in the keys of scratch transactions (which thread 0 commits)."""
SEGMENT_SIZE = 64 * 1024
CHECKPOINT_BYTES = 48 * 1024
TYPE = "Killer"

# (stream, [message, ...]) per append, in the order the transaction appends them.
Plan = list[tuple[str, list[dict[str, Any]]]]


def plan(run: int, thread: int, seq: int) -> Plan:
    """The appends of transaction ``(run, thread, seq)``: everything but the offsets is fixed by the key."""
    rng = random.Random(f"{run}/{thread}/{seq}")
    streams = [SCRATCH] if thread == SCRATCH_THREAD else rng.sample(STREAMS, rng.randint(1, 3))
    out: Plan = []
    k = 0
    for stream in streams:
        messages = []
        for _ in range(rng.randint(1, 3)):
            # Sizes up to 1.5 KiB: a 64 KiB segment holds a few dozen transactions, so rolls are frequent.
            pad = rng.randbytes(rng.choice((8, 100, 400, 1500)))
            messages.append({"r": run, "t": thread, "s": seq, "k": k, "pad": pad})
            k += 1
        out.append((stream, messages))
    return out


def tx_size(run: int, thread: int, seq: int) -> int:
    """The number of messages of transaction ``(run, thread, seq)``."""
    return sum(len(m) for _, m in plan(run, thread, seq))


class Worker:
    def __init__(self, store: logstore.Store, run: int) -> None:
        self.store = store
        self.run = run
        self._out = threading.Lock()

    def say(self, line: str) -> None:
        with self._out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def commit(self, thread: int, seq: int) -> None:
        """Commit transaction ``(run, thread, seq)``, retrying on offset conflicts, then acknowledge it."""
        store = self.store
        appends = plan(self.run, thread, seq)
        while True:
            tx, committer = store.begin_tx()
            placed = []
            try:
                for stream, messages in appends:
                    offset = store.head(stream)
                    store.append_messages(tx, stream, offset, [Envelope.new(TYPE, m) for m in messages])
                    placed.append(f"{stream}:{offset}:{len(messages)}")
                goffs = committer.commit()
            except OffsetConflictError:
                committer.rollback()
                continue
            self.say(f"ack {self.run} {thread} {seq} {goffs.start} {' '.join(placed)}")
            return

    def thread(self, thread: int, txs: int, truncate_every: int, compact_every: int) -> None:
        scratch = 0
        for seq in range(txs):
            self.commit(thread, seq)
            if thread != 0 or truncate_every == 0:
                continue
            # Thread 0: a scratch transaction after each of its own, and now and then a truncation at a
            # transaction boundary (nobody else writes to scratch) or a compaction.
            self.commit(SCRATCH_THREAD, scratch)
            scratch += 1
            if scratch % truncate_every == 0:
                before = self.store.head(SCRATCH)
                self.store.truncate_stream(SCRATCH, before)
                self.say(f"trunc {self.run} {before}")
                if compact_every and scratch % (truncate_every * compact_every) == 0:
                    report = self.store.compact()
                    self.say(f"compact {report.bytes_reclaimed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--run", type=int, required=True, help="this run's number: part of every transaction key")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--txs", type=int, default=1000, help="transactions per thread")
    parser.add_argument("--truncate-every", type=int, default=4, help="scratch transactions per truncation (0: none)")
    parser.add_argument("--compact-every", type=int, default=3, help="truncations per compaction (0: none)")
    args = parser.parse_args(argv)
    worker_threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    print(f"start {os.getpid()}", flush=True)
    try:
        store = logstore.open(
            args.directory, durability="fsync", segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES
        )
        report = store.recovery_report
        worker = Worker(store, args.run)
        worker.say(f"open {report.records_scanned} {report.transactions_recovered} {report.bytes_cut}")

        def body(t: int) -> None:
            try:
                worker.thread(t, args.txs, args.truncate_every, args.compact_every)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                traceback.print_exc()
                errors.append(exc)

        for t in range(args.threads):
            th = threading.Thread(target=body, args=(t,), name=f"killer-{t}")
            th.start()
            worker_threads.append(th)
        for th in worker_threads:
            th.join()
        io = store._io
        store.close()
    except BaseException:  # noqa: BLE001 - any failure is the test's finding
        traceback.print_exc()
        return 1
    if errors:
        return 1
    counts = io.point.site_calls if isinstance(io, KillPointIO) else {}
    steps = io.point.step_calls if isinstance(io, KillPointIO) else {}
    worker.say("steps " + " ".join(f"{step}={n}" for step, n in steps.items()))
    worker.say("done " + " ".join(f"{site}={n}" for site, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
