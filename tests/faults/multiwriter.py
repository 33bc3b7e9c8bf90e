"""Writer and reader processes for the SIGKILL campaign with several writers (tests/faults/test_sigkill_writers.py).

Run as ``python -m tests.faults.multiwriter writer DIR --writer W --life L --threads T --durability D``
or ``python -m tests.faults.multiwriter reader DIR OUT --durability D`` from the repository root (with it
on ``PYTHONPATH``).

A writer opens the store in ``DIR`` (64 KiB segments, a small ``checkpoint_bytes``, so that rolls and
checkpoints happen often, in every writer process) and each of its ``T`` threads commits transactions
``(W, L, t, 0)``, ``(W, L, t, 1)``, ... one after the other until stdin is closed; then it closes the store.
Writer ``W``'s ``L``-th life (its first start is life 0, each restart after a kill one more) continues
the streams of its earlier lives. A transaction (:func:`plan`) appends to shared streams at
``logstore.ANY`` (every writer races for them), to its thread's own stream ``w<W>t<t>`` at the exact
offset that follows the thread's last commit there (nobody else writes it), and now and then to a
stream that no transaction used before, at offset 0. Lines on stdout, each flushed at once and printed
only after what it reports returned:

- ``open <pid>``: the store is open;
- ``ack <W> <L> <t> <seq> <first global offset> <end global offset> <stream>:<first>:<count> ...``:
  ``commit()`` returned (the stream offsets from ``tx.stream_offsets``, in the order of the plan);
- ``done <site>=<calls> ...``: the store closed cleanly (with ``LOGSTORE_KILL_AT`` set, the kill
  point's calls per I/O site, then ``step:<step>=<calls>`` per protocol step; see logstore/embedded/fileio.py).

A reader opens the store ``readonly=True`` and follows the global log from offset 0 with ``next()``,
writing ``<global offset> <stream> <stream offset> <message id>`` per message to ``OUT``; it prints
``ready`` once open, and, when a line with a global offset ``N`` arrives on stdin, goes on until it has
read the message at ``N - 1``, then prints ``done <messages>`` and exits.

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
from logstore import ANY, Envelope
from logstore.embedded.fileio import KillPointIO

SHARED = ("a0", "a1", "a2")
"""Streams every writer appends to at ``logstore.ANY``."""
SEGMENT_SIZE = 64 * 1024
CHECKPOINT_BYTES = 48 * 1024
TYPE = "W"
FIELDS = frozenset({"w", "l", "t", "s", "k", "of", "pad"})
"""The keys of every message a writer commits."""

Key = tuple[int, int, int, int]  # (writer, life, thread, seq)
# (stream, exact: whether at an exact offset, [message, ...]) per append, in the order the transaction appends them.
Plan = list[tuple[str, bool, list[dict[str, Any]]]]


def own_stream(writer: int, thread: int) -> str:
    """The stream only thread ``thread`` of writer ``writer`` appends to (in every life), at exact offsets."""
    return f"w{writer}t{thread}"


def plan(key: Key) -> Plan:
    """The appends of transaction ``key``: everything but the offsets follows from the key."""
    w, life, t, seq = key
    rng = random.Random("multiwriter/{}/{}/{}/{}".format(*key))
    appends: list[tuple[str, bool]] = []
    if rng.random() < 0.7:
        appends.append((own_stream(w, t), True))
    for stream in rng.sample(SHARED, rng.randint(0 if appends else 1, 2)):
        appends.append((stream, False))
    if rng.random() < 0.1:
        appends.append((f"n{w}.{life}.{t}.{seq}", True))  # a new stream: its id is assigned under the write lock
    rng.shuffle(appends)
    sizes = [rng.randint(1, 3) for _ in appends]
    of = sum(sizes)
    out: Plan = []
    k = 0
    for (stream, exact), n in zip(appends, sizes, strict=True):
        msgs = []
        for _ in range(n):
            # Up to 1.5 KiB: a 64 KiB segment holds a few dozen transactions, so rolls are frequent.
            pad = rng.randbytes(rng.choice((8, 100, 400, 1500))).hex()
            msgs.append({"w": w, "l": life, "t": t, "s": seq, "k": k, "of": of, "pad": pad})
            k += 1
        out.append((stream, exact, msgs))
    return out


class Writer:
    def __init__(self, store: logstore.Store, writer: int, life: int) -> None:
        self.store = store
        self.writer = writer
        self.life = life
        self.stop = threading.Event()
        self._out = threading.Lock()

    def say(self, line: str) -> None:
        with self._out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def thread(self, t: int) -> None:
        store = self.store
        own = own_stream(self.writer, t)
        head = store.head(own)  # every earlier life's commits there are below the tail this open loaded
        seq = 0
        while not self.stop.is_set():
            key = (self.writer, self.life, t, seq)
            tx, committer = store.begin_tx()
            try:
                for stream, exact, msgs in plan(key):
                    offset = (head if stream == own else 0) if exact else ANY
                    store.append_messages(tx, stream, offset, [Envelope.new(TYPE, m) for m in msgs])
                goffs = committer.commit()
            except BaseException:
                committer.rollback()
                raise
            offsets = tx.stream_offsets
            assert offsets is not None
            placed = " ".join(f"{s}:{offsets[s].start}:{len(offsets[s])}" for s, _, _ in plan(key))
            self.say(f"ack {self.writer} {self.life} {t} {seq} {goffs.start} {goffs.stop} {placed}")
            if own in offsets:
                head = offsets[own].stop
            seq += 1


def _stdin_closed(event: threading.Event) -> None:
    for _line in sys.stdin:
        pass
    event.set()


def writer_main(args: argparse.Namespace) -> int:
    store = logstore.open(
        args.directory, durability=args.durability, segment_size=SEGMENT_SIZE, checkpoint_bytes=CHECKPOINT_BYTES
    )
    worker = Writer(store, args.writer, args.life)
    worker.say(f"open {os.getpid()}")
    threading.Thread(target=_stdin_closed, args=(worker.stop,), daemon=True).start()
    errors: list[BaseException] = []

    def body(t: int) -> None:
        try:
            worker.thread(t)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            traceback.print_exc()
            errors.append(exc)
            worker.stop.set()

    threads = [threading.Thread(target=body, args=(t,), name=f"writer-{t}") for t in range(args.threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    io = store._io
    store.close()
    if errors:
        return 1
    sites = io.point.site_calls if isinstance(io, KillPointIO) else {}
    steps = io.point.step_calls if isinstance(io, KillPointIO) else {}
    counts = [f"{site}={n}" for site, n in sites.items()] + [f"step:{step}={n}" for step, n in steps.items()]
    worker.say("done " + " ".join(counts))
    return 0


def reader_main(args: argparse.Namespace) -> int:
    target: list[int] = []
    asked = threading.Event()

    def listen() -> None:
        line = sys.stdin.readline()
        if line.strip():
            target.append(int(line))
        asked.set()

    n = 0
    with (
        logstore.open(args.directory, readonly=True, durability=args.durability) as store,
        open(args.out, "w") as out,
        store.open_global(store, 0) as log,
    ):
        print("ready", flush=True)
        threading.Thread(target=listen, daemon=True).start()
        next_goff = 0
        while not (asked.is_set() and (not target or next_goff >= target[0])):
            try:
                log.next(timeout=0.1)
            except TimeoutError:
                continue
            env = log.get()
            out.write(f"{log.offset()} {log.stream_name()} {log.stream_offset()} {env.message_id}\n")
            next_goff = log.offset() + 1
            n += 1
    print(f"done {n}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    w = sub.add_parser("writer")
    w.add_argument("directory")
    w.add_argument("--writer", type=int, required=True)
    w.add_argument("--life", type=int, required=True)
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--durability", default="fsync")
    r = sub.add_parser("reader")
    r.add_argument("directory")
    r.add_argument("out")
    r.add_argument("--durability", default="fsync")
    args = parser.parse_args(argv)
    try:
        return writer_main(args) if args.role == "writer" else reader_main(args)
    except BaseException:  # noqa: BLE001 - any failure is the test's finding
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
