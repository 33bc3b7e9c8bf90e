"""Quick benchmark: logstore against sqlite3 on identical envelopes, in one run.

Usage::

    python -m bench.quick              # 100_000 messages x 3 repetitions (under a minute on 2 cores)
    python -m bench.quick --quick      # 20_000 messages x 1 repetition (the smoke test runs this)
    python -m bench.quick --json       # the same, machine-readable on stdout

What is measured; benchmark names carry their parameters, as in
``append/batch=100/size=300B/store=logstore``:

- ``append``: one thread commits transactions of ``--batch`` envelopes
  (default 100), each about ``--size`` bytes encoded (default 300 B:
  ``Envelope.new`` with a dict message padded so that logstore's msgpack
  encoding of the whole envelope is that long). Transaction ``k`` appends to
  the stream ``stream-<k>`` at a checked offset.

  - logstore: ``logstore.open(dir)`` with its defaults: ``durability="fsync"``
    (``commit()`` returns once its group is fdatasync'ed), 256 MiB preallocated
    segments. ``begin_tx``, ``append_messages`` (checks the offset, encodes),
    ``commit``.
  - sqlite: WAL with ``synchronous=FULL`` (a commit returns once the WAL is
    fsynced), the event-store table below. ``BEGIN IMMEDIATE``; ``SELECT
    MAX(stream_offset)`` of the stream (the offset check an event store must
    make inside the transaction); one ``executemany`` INSERT with the message
    body msgpack-encoded as ``data`` and the datetimes as ISO 8601 text;
    ``COMMIT``.

  Encoding is inside the timed loop for both. Commit latency is the time of the
  ``commit()`` call (logstore) or of ``COMMIT`` (sqlite); transaction latency
  runs from ``begin`` to the end of the commit. Both are pooled over the
  repetitions.
- ``scan/decode=full``: reopen the store and read every message back in global
  order as ``Envelope`` objects: ``for env in store.open_global(store, 0)``
  (every record's checksum is verified and its envelope decoded), and for sqlite
  ``SELECT ... ORDER BY global_offset`` with each row made into an ``Envelope``
  (msgpack body decoded, datetimes parsed).
- Rates are messages per second: the median of ``--repeat`` repetitions, with
  min and max. The ratio is logstore's median over sqlite's (above 1:
  logstore is faster).
- Not timed: making the envelopes, creating, opening and closing the stores
  (their median times are shown apart), checking that what was read back is
  what was appended.

Every repetition uses a fresh directory per store, inside a temporary
directory made in ``--dir`` (default: the working directory, so that fsync
meets a real disk rather than a tmpfs ``/tmp``). Each store directory is
removed as soon as it has been measured and the temporary directory at the
end, unless ``--keep``. The stores take turns going first, repetition by
repetition. The envelopes are made once, before any timing, and frozen out of
the garbage collector's way (``gc.freeze``) so that collections triggered by
either store do not rescan them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack
import numpy
import xxhash

import logstore
from logstore import Envelope
from logstore.envelope import encode

DEFAULT_MESSAGES = 100_000
QUICK_MESSAGES = 20_000
DEFAULT_REPEAT = 3
DEFAULT_BATCH = 100
DEFAULT_SIZE = 300
STORES = ("logstore", "sqlite")
OPS = ("append", "scan")

SQLITE_SCHEMA = """
CREATE TABLE messages(
    global_offset INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    stream_offset INTEGER NOT NULL,
    message_id TEXT,
    causation_id TEXT,
    correlation_id TEXT,
    created_at TEXT,
    send_at TEXT,
    type TEXT,
    data BLOB,
    UNIQUE(stream, stream_offset)
)
"""
SQLITE_HEAD = "SELECT MAX(stream_offset) FROM messages WHERE stream = ?"
SQLITE_INSERT = (
    "INSERT INTO messages(stream, stream_offset, message_id, causation_id, correlation_id,"
    " created_at, send_at, type, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SQLITE_SCAN = (
    "SELECT global_offset, stream, stream_offset, message_id, causation_id, correlation_id,"
    " created_at, send_at, type, data FROM messages ORDER BY global_offset"
)

# The sqlite side encodes and decodes message bodies exactly as logstore encodes envelopes.
_pack_body = msgpack.Packer(use_bin_type=True, datetime=True, autoreset=True).pack
_unpackb = msgpack.unpackb


# -- the workload ----------------------------------------------------------------------------


def _message(i: int, pad: int) -> dict[str, Any]:
    """An order-like message body; ``pad`` characters of note set its size."""
    return {
        "order_id": f"order-{i:09d}",
        "customer": f"customer-{i % 9973:05d}",
        "lines": [{"sku": f"SKU-{i % 1000:04d}", "qty": 1 + i % 5, "price_cents": 1999}],
        "note": "n" * pad,
    }


def make_envelopes(count: int, size: int) -> list[Envelope]:
    """``count`` root envelopes whose logstore (msgpack) encoding is about ``size`` bytes each."""
    probe = Envelope.new("OrderPlaced", _message(0, 0))
    pad = 0
    for _ in range(4):  # msgpack's string header grows at 32 and 256 bytes: settle in a few steps
        got = len(encode(probe._replace(message=_message(0, pad)), "probe"))
        if got == size:
            break
        pad = max(0, pad + size - got)
    return [Envelope.new("OrderPlaced", _message(i, pad)) for i in range(count)]


def _chunks(envs: Sequence[Envelope], batch: int) -> list[tuple[str, Sequence[Envelope]]]:
    """The transactions: (stream name, envelopes), transaction ``k`` on ``stream-<k>``."""
    return [(f"stream-{k}", envs[i : i + batch]) for k, i in enumerate(range(0, len(envs), batch))]


# -- one measured phase ----------------------------------------------------------------------


@dataclass
class Phase:
    """One store's append or scan in one repetition."""

    seconds: float
    messages: int
    open_seconds: float  # creating or opening the store: not timed
    close_seconds: float  # closing it (logstore checkpoints here): not timed
    commit_latency: list[float] = field(default_factory=list)
    tx_latency: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _check_read(
    store: str, count: int, last: Envelope | None, first: Envelope | None, envs: Sequence[Envelope]
) -> None:
    """Fail loudly if the scan did not return exactly what was appended (ends checked)."""
    if count != len(envs):
        raise RuntimeError(f"{store}: scanned {count} messages, appended {len(envs)}")
    if last != envs[-1] or first != envs[0]:
        raise RuntimeError(f"{store}: a scanned envelope differs from the one appended")


def logstore_append(path: str, envs: Sequence[Envelope], batch: int) -> Phase:
    t0 = time.perf_counter()
    store = logstore.open(path)
    try:
        txs = _chunks(envs, batch)
        heads: dict[str, int] = {}
        commit_lat: list[float] = []
        tx_lat: list[float] = []
        clock = time.perf_counter
        start = clock()
        for stream, chunk in txs:
            offset = heads.get(stream, 0)
            t_begin = clock()
            tx, committer = store.begin_tx()
            store.append_messages(tx, stream, offset, chunk)  # checks the offset (OffsetConflictError)
            t_commit = clock()
            committer.commit()
            t_end = clock()
            commit_lat.append(t_end - t_commit)
            tx_lat.append(t_end - t_begin)
            heads[stream] = offset + len(chunk)
        seconds = clock() - start
    finally:
        t1 = time.perf_counter()
        store.close()
    t2 = time.perf_counter()
    return Phase(seconds, len(envs), start - t0, t2 - t1, commit_lat, tx_lat)


def logstore_scan(path: str, envs: Sequence[Envelope]) -> Phase:
    t0 = time.perf_counter()
    store = logstore.open(path)
    try:
        reader = store.open_global(store, 0)
        count = 0
        last = None
        start = time.perf_counter()
        for env in reader:
            last = env
            count += 1
        seconds = time.perf_counter() - start
        reader.close()
        with store.open_global(store, 0) as again:
            first = next(again, None)
        _check_read("logstore", count, last, first, envs)
    finally:
        t1 = time.perf_counter()
        store.close()
    t2 = time.perf_counter()
    return Phase(seconds, count, start - t0, t2 - t1)


def _sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def sqlite_append(path: str, envs: Sequence[Envelope], batch: int) -> Phase:
    t0 = time.perf_counter()
    os.mkdir(path)
    conn = _sqlite_connect(os.path.join(path, "messages.db"))
    try:
        conn.execute(SQLITE_SCHEMA)
        txs = _chunks(envs, batch)
        heads: dict[str, int] = {}
        commit_lat: list[float] = []
        tx_lat: list[float] = []
        execute = conn.execute
        executemany = conn.executemany
        pack = _pack_body
        clock = time.perf_counter
        start = clock()
        for stream, chunk in txs:
            offset = heads.get(stream, 0)
            t_begin = clock()
            execute("BEGIN IMMEDIATE")
            (top,) = execute(SQLITE_HEAD, (stream,)).fetchone()
            head = 0 if top is None else top + 1
            if head != offset:
                execute("ROLLBACK")
                raise logstore.OffsetConflictError(stream, head, offset)
            executemany(
                SQLITE_INSERT,
                [
                    (
                        stream,
                        offset + i,
                        e.message_id,
                        e.causation_id,
                        e.correlation_id,
                        e.created_at.isoformat(),
                        e.send_at.isoformat(),
                        e.type,
                        pack(e.message),
                    )
                    for i, e in enumerate(chunk)
                ],
            )
            t_commit = clock()
            execute("COMMIT")
            t_end = clock()
            commit_lat.append(t_end - t_commit)
            tx_lat.append(t_end - t_begin)
            heads[stream] = offset + len(chunk)
        seconds = clock() - start
    finally:
        t1 = time.perf_counter()
        conn.close()
    t2 = time.perf_counter()
    return Phase(seconds, len(envs), start - t0, t2 - t1, commit_lat, tx_lat)


def _row_envelope(row: tuple[Any, ...]) -> Envelope:
    """The envelope of one ``SQLITE_SCAN`` row (the timed loop inlines this)."""
    _goff, _stream, _soff, mid, cid, corr, created, send_at, typ, data = row
    fromiso = datetime.fromisoformat
    body = _unpackb(data, raw=False, timestamp=3, strict_map_key=False)
    return Envelope(mid, cid, corr, fromiso(created), fromiso(send_at), typ, body)


def sqlite_scan(path: str, envs: Sequence[Envelope]) -> Phase:
    t0 = time.perf_counter()
    conn = _sqlite_connect(os.path.join(path, "messages.db"))
    try:
        fromiso = datetime.fromisoformat
        unpackb = _unpackb
        count = 0
        last = None
        start = time.perf_counter()
        for _goff, _stream, _soff, mid, cid, corr, created, send_at, typ, data in conn.execute(SQLITE_SCAN):
            last = Envelope(
                mid,
                cid,
                corr,
                fromiso(created),
                fromiso(send_at),
                typ,
                unpackb(data, raw=False, timestamp=3, strict_map_key=False),
            )
            count += 1
        seconds = time.perf_counter() - start
        row = conn.execute(SQLITE_SCAN + " LIMIT 1").fetchone()
        first = None if row is None else _row_envelope(row)
        _check_read("sqlite", count, last, first, envs)
    finally:
        t1 = time.perf_counter()
        conn.close()
    t2 = time.perf_counter()
    return Phase(seconds, count, start - t0, t2 - t1)


BENCHES: dict[str, tuple[Callable[[str, Sequence[Envelope], int], Phase], Callable[[str, Sequence[Envelope]], Phase]]]
BENCHES = {
    "logstore": (logstore_append, logstore_scan),
    "sqlite": (sqlite_append, sqlite_scan),
}


# -- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _filesystem(path: str) -> str | None:
    """The file system type and device that hold ``path`` (Linux ``/proc/mounts``), as ``ext4 (/dev/vda on /)``."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                device, mount, fstype = parts[0], parts[1], parts[2]
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and (best is None or len(mount) >= len(best[1])):
                    best = (device, mount, fstype)
    except OSError:
        return None
    return None if best is None else f"{best[2]} ({best[0]} on {best[1]})"


def machine_facts(bench_dir: str) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "logstore": logstore.__version__,
        "numpy": numpy.__version__,
        "msgpack": ".".join(str(v) for v in msgpack.version),
        "xxhash": xxhash.VERSION,
        "sqlite": sqlite3.sqlite_version,
        "filesystem": _filesystem(bench_dir),
    }


# -- running and reporting -------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def bench_name(op: str, store: str, batch: int, size: int) -> str:
    if op == "append":
        return f"append/batch={batch}/size={size}B/store={store}"
    return f"scan/decode=full/store={store}"


def run(messages: int, repeat: int, batch: int, size: int, base_dir: str, keep: bool) -> dict[str, Any]:
    """Run every benchmark ``repeat`` times and return the report (what ``--json`` prints)."""
    envs = make_envelopes(messages, size)
    encoded = [len(encode(e, "bench")) for e in envs]
    bodies = [len(_pack_body(e.message)) for e in envs]
    gc.collect()
    gc.freeze()  # the envelopes stay alive throughout: keep them out of every collection
    os.makedirs(base_dir, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="logstore-bench-", dir=base_dir)
    phases: dict[tuple[str, str], list[Phase]] = {(op, s): [] for op in OPS for s in STORES}
    try:
        for rep in range(repeat):
            order = STORES if rep % 2 == 0 else STORES[::-1]
            for store in order:
                append, scan = BENCHES[store]
                path = os.path.join(run_dir, f"rep{rep + 1}-{store}")
                gc.collect()
                phases["append", store].append(append(path, envs, batch))
                gc.collect()
                phases["scan", store].append(scan(path, envs))
                if not keep:
                    shutil.rmtree(path)
    finally:
        gc.unfreeze()
        if not keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    results = []
    for op in OPS:
        for store in STORES:
            runs = [p.rate for p in phases[op, store]]
            results.append(
                {
                    "name": bench_name(op, store, batch, size),
                    "op": op,
                    "store": store,
                    "unit": "messages/s",
                    "median": statistics.median(runs),
                    "min": min(runs),
                    "max": max(runs),
                    "runs": runs,
                    "open_seconds_median": statistics.median(p.open_seconds for p in phases[op, store]),
                    "close_seconds_median": statistics.median(p.close_seconds for p in phases[op, store]),
                }
            )
    by_key = {(r["op"], r["store"]): r for r in results}
    ratios = {
        bench_name(op, "", batch, size).removesuffix("/store="): by_key[op, "logstore"]["median"]
        / by_key[op, "sqlite"]["median"]
        for op in OPS
    }
    latency = []
    for store in STORES:
        commits = [x for p in phases["append", store] for x in p.commit_latency]
        txs = [x for p in phases["append", store] for x in p.tx_latency]
        latency.append(
            {
                "name": bench_name("append", store, batch, size),
                "store": store,
                "unit": "ms",
                "commits": len(commits),
                "commit_p50": percentile(commits, 50) * 1e3,
                "commit_p99": percentile(commits, 99) * 1e3,
                "commit_max": max(commits) * 1e3,
                "tx_p50": percentile(txs, 50) * 1e3,
                "tx_p99": percentile(txs, 99) * 1e3,
            }
        )
    return {
        "machine": machine_facts(run_dir if keep else base_dir),
        "params": {
            "messages": messages,
            "repeat": repeat,
            "batch": batch,
            "size": size,
            "encoded_bytes_mean": statistics.fmean(encoded),
            "body_bytes_mean": statistics.fmean(bodies),
            "dir": run_dir,
            "kept": keep,
            "logstore": {"durability": "fsync", "segment_size": logstore.DEFAULT_SEGMENT_SIZE},
            "sqlite": {"journal_mode": "WAL", "synchronous": "FULL"},
        },
        "results": results,
        "ratios": ratios,
        "latency": latency,
    }


def format_report(report: dict[str, Any]) -> str:
    m, p = report["machine"], report["params"]
    lines = [
        "logstore quick benchmark: logstore against sqlite3 on identical envelopes",
        f"machine   {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu_model'] or 'unknown CPU'}, {m['platform']}",
        f"python    {m['python']}",
        f"versions  logstore {m['logstore']}, numpy {m['numpy']}, msgpack {m['msgpack']}, "
        f"xxhash {m['xxhash']}, sqlite {m['sqlite']}",
        f"storage   {p['dir']}{'' if p['kept'] else ' (removed)'} on {m['filesystem'] or 'an unknown file system'}",
        f"workload  {p['messages']:,} messages x {p['repeat']} repetition{'s' if p['repeat'] > 1 else ''}, "
        f"one thread, transactions of {p['batch']} envelopes on a new stream each;",
        f"          envelopes of {p['encoded_bytes_mean']:.1f} B encoded on average "
        f"(message body {p['body_bytes_mean']:.1f} B)",
        f"          logstore durability=fsync, segment_size={p['logstore']['segment_size'] // 2**20} MiB; "
        "sqlite WAL, synchronous=FULL",
        "",
    ]
    width = max(len(r["name"]) for r in report["results"])
    lines.append(f"{'benchmark':<{width}}  {'median msg/s':>13}  {'min':>11}  {'max':>11}")
    for r in report["results"]:
        lines.append(f"{r['name']:<{width}}  {r['median']:>13,.0f}  {r['min']:>11,.0f}  {r['max']:>11,.0f}")
    lines += ["", "ratio logstore/sqlite (of the medians; above 1: logstore is faster)"]
    for name, ratio in report["ratios"].items():
        lines.append(f"{name:<{width}}  {ratio:>12.2f}x")
    lat = report["latency"]
    lines += [
        "",
        f"latency in ms, {lat[0]['commits']:,} transactions per store"
        " (commit: the commit call; tx: begin to committed)",
        f"{'benchmark':<{width}}  {'commit p50':>10}  {'commit p99':>10}  {'commit max':>10}"
        f"  {'tx p50':>8}  {'tx p99':>8}",
    ]
    for r in lat:
        lines.append(
            f"{r['name']:<{width}}  {r['commit_p50']:>10.3f}  {r['commit_p99']:>10.3f}  {r['commit_max']:>10.3f}"
            f"  {r['tx_p50']:>8.3f}  {r['tx_p99']:>8.3f}"
        )
    lines += ["", "not timed, median seconds: open (create for append) / close"]
    for r in report["results"]:
        lines.append(f"{r['name']:<{width}}  {r['open_seconds_median']:>8.4f} / {r['close_seconds_median']:.4f}")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quick",
        description="Append and full-scan throughput of logstore against sqlite3 (WAL, synchronous=FULL).",
    )
    parser.add_argument(
        "--messages", type=_positive_int, help=f"messages per repetition (default {DEFAULT_MESSAGES:_})"
    )
    parser.add_argument("--repeat", type=_positive_int, help=f"repetitions (default {DEFAULT_REPEAT})")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke-test size: {QUICK_MESSAGES:_} messages, 1 repetition"
    )
    parser.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH, help="envelopes per transaction")
    parser.add_argument(
        "--size", type=_positive_int, default=DEFAULT_SIZE, help="encoded envelope size in bytes (about)"
    )
    parser.add_argument(
        "--dir",
        help="where to make the temporary store directories (default: the working directory); removed afterwards",
    )
    parser.add_argument("--keep", action="store_true", help="keep the store directories")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    messages = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    repeat = args.repeat or (1 if args.quick else DEFAULT_REPEAT)
    report = run(messages, repeat, args.batch, args.size, args.dir or os.getcwd(), args.keep)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
