"""The workloads, each run in a fresh process: ``python -m bench.workloads '<json spec>'``.

The suite (``python -m bench``) starts one process per measurement so that
peak RSS (``ru_maxrss``) belongs to that measurement alone and no store's
caches or garbage help another. The process prints one JSON object: what it
measured and what it checked. Every workload checks what it reads back
against what was appended, outside the timed part, and fails loudly on a
difference.

Timed: the calls into the store (including encoding and decoding, which are
part of the store's work). Not timed: making the envelopes, the checks,
creating the store directory where said.
"""

from __future__ import annotations

import gc
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from bench.categories import ct_build, ct_read
from bench.envelopes import envelope_at, envelope_bytes, make_pool
from bench.floor import NAME as FLOOR
from bench.floor import FloorPeer
from bench.floor import reserve_for as floor_reserve
from bench.peers import LogstorePeer, Peer, open_peer, open_tail
from bench.subscriptions import sb_consume
from logstore import Envelope, Store

clock = time.perf_counter


def start_clock() -> float:
    """The clock at the start of a timed part, after a full collection (``gc.collect()``).

    A timed part so starts with the garbage collector's counts at zero, on every store alike: a
    collection owed to the untimed work before it (the plan, the writing before a reopen) does not
    fall into it, and the collections that do fall into it are the ones its own allocations set off.
    """
    gc.collect()
    return clock()


def rss_kb() -> int:
    """Peak resident set size of this process so far, in KiB (Linux ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


QUANTILES = (*range(0, 99, 2), 99, 99.5, 99.9, 100)
"""The percentiles a latency summary keeps besides p50, p99 and the maximum: its distribution, for the plots."""


def latency_summary(values: Sequence[float]) -> dict[str, Any]:
    """Nearest-rank p50, p99 and the maximum, in seconds; ``q``: the :data:`QUANTILES` (4 significant digits)."""
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, -(-int(p * n) // 100) - 1)] if n else 0.0

    return {
        "p50": rank(50),
        "p99": rank(99),
        "max": ordered[-1] if n else 0.0,
        "count": n,
        "q": [float(f"{rank(p):.4g}") for p in QUANTILES],
    }


def disk_usage(path: str, unused: int = 0) -> dict[str, int]:
    """Bytes of the store's files: ``bytes`` is their sizes less ``unused`` (reserved, never written);
    ``allocated`` is what the file system has given them (``st_blocks``)."""
    size = allocated = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            size += st.st_size
            allocated += st.st_blocks * 512
    return {"bytes": size - unused, "allocated": allocated}


def unused_preallocation(peer: Peer) -> int:
    """The bytes logstore (or the floor) reserved and has not written yet (0 for the peers)."""
    store = getattr(peer, "store", None)
    if isinstance(store, Store):  # the embedded engine (not its PostgreSQL backend)
        active = store._log.active  # the benchmark may look inside its own engine
        return active.size - active.end
    if isinstance(peer, FloorPeer):
        return peer.size - peer.end
    return 0


def open_writer(spec: dict[str, Any], pool: list[Envelope], messages: int) -> Peer:
    """``open_peer`` for a workload about to write ``messages`` envelopes cycled from ``pool``.

    The floor pre-zeroes room for them all when it opens (``bench/floor.py``), as logstore reserves its
    segment space ahead of its writes; the other stores open as ``open_peer`` opens them.
    """
    if spec["store"] == FLOOR:
        reserve = floor_reserve(envelope_bytes(pool, messages), messages)
        return FloorPeer(spec["dir"], spec.get("mode", "sync"), reserve=reserve)
    return open_peer(spec["store"], spec["dir"], spec.get("mode", "sync"))


def sync_count(peer: Peer) -> int | None:
    """The fsync/fdatasync calls the store made so far: logstore's (its file layer counts them) or the floor's;
    None for the peers, which do not say."""
    store = getattr(peer, "store", None)
    if isinstance(store, Store):
        return store._log.io.syncs  # the benchmark may look inside its own engine
    if isinstance(peer, FloorPeer):
        return peer.syncs
    return None


def store_facts(peer: Peer, commits: int, grouped: bool = False) -> dict[str, Any]:
    """What a floor run did beyond its envelopes (``FloorPeer.facts``), checked; nothing for the stores.

    The floor's promise, checked after the timed part: it never grew past its reservation, and it made
    one ``pwrite`` + ``fdatasync`` per transaction of ``commits``, or (``grouped``: transactions from
    several threads) one per group, at least one and at most one per transaction.
    """
    if not isinstance(peer, FloorPeer):
        return {}
    facts = peer.facts()
    _check("floor: growths past the pre-zeroed reservation", facts["extensions"], 0)
    if grouped:
        if not 1 <= facts["flushes"] <= commits:
            raise RuntimeError(f"floor: {facts['flushes']} flushes for {commits} transactions")
    else:
        _check("floor: pwrite + fdatasync pairs", facts["flushes"], commits)
    return {"floor": facts}


def _check(what: str, got: object, want: object) -> None:
    if got != want:
        raise RuntimeError(f"{what}: read back {got!r:.200}, expected {want!r:.200}")


def _verify_scan(peer: Peer, pool: list[Envelope], messages: int) -> None:
    count = 0
    for i, env in enumerate(peer.scan()):
        if env != envelope_at(pool, i):
            raise RuntimeError(f"{peer.name}: global offset {i} differs from the envelope appended")
        count += 1
    _check(f"{peer.name}: scanned message count", count, messages)


# -- W1, W7: append, one thread ---------------------------------------------------------------


def w1_plan(pool: Any, messages: int, batch: int, streams: int) -> list[tuple[str, int, list[Envelope]]]:
    """W1's transactions: ``(stream, offset, envelopes)``, ``batch`` envelopes each, ``streams`` streams in turn."""
    txs: list[tuple[str, int, list[Envelope]]] = []
    heads: dict[str, int] = {}
    for k, start in enumerate(range(0, messages, batch)):
        name = f"stream-{k % streams}"
        envs = [envelope_at(pool, i) for i in range(start, min(start + batch, messages))]
        txs.append((name, heads.get(name, 0), envs))
        heads[name] = heads.get(name, 0) + len(envs)
    return txs


def append(spec: dict[str, Any]) -> dict[str, Any]:
    messages, batch, streams = spec["messages"], spec["batch"], spec.get("streams", 1000)
    pool = make_pool(messages, spec["size"])
    base = rss_kb()
    txs = w1_plan(pool, messages, batch, streams)
    t0 = start_clock()
    peer = open_writer(spec, pool, messages)
    opened = clock()
    cpu0 = time.process_time()  # every thread of the process: the caller's and the store's
    lat = []
    do = peer.append
    for name, offset, envs in txs:
        t = clock()
        do(name, offset, envs)
        lat.append(clock() - t)
    seconds = clock() - opened
    cpu_seconds = time.process_time() - cpu0
    unused = unused_preallocation(peer)
    facts = store_facts(peer, len(txs))
    t1 = clock()
    peer.close()
    closed = clock()
    result = {
        **facts,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "messages": messages,
        "commits": len(txs),
        "latency": latency_summary(lat),
        "open_seconds": opened - t0,
        "close_seconds": closed - t1,
        "rss_kb": rss_kb(),
        "base_rss_kb": base,
        "disk": disk_usage(spec["dir"], unused),
        "envelope_bytes": envelope_bytes(pool, messages),
    }
    if spec.get("verify"):
        peer = open_peer(spec["store"], spec["dir"])
        try:
            _verify_scan(peer, pool, messages)
        finally:
            peer.close()
    return result


# -- ID: retries of committed transactions ---------------------------------------------------


def retry(spec: dict[str, Any]) -> dict[str, Any]:
    """W1's transactions, committed (not timed), then each committed again as a client's retry would
    (timed): each must write nothing and return the global offsets of its first commit."""
    messages, batch, streams = spec["messages"], spec["batch"], spec.get("streams", 1000)
    pool = make_pool(messages, spec["size"])
    txs = w1_plan(pool, messages, batch, streams)
    peer = open_peer(spec["store"], spec["dir"], spec.get("mode", "sync"))
    first = [peer.commit(name, offset, envs) for name, offset, envs in txs]
    retries = txs[:: spec.get("every", 1)]
    lat = []
    got = []
    do = peer.commit
    t0 = start_clock()
    for name, offset, envs in retries:
        t = clock()
        got.append(do(name, offset, envs))
        lat.append(clock() - t)
    seconds = clock() - t0
    _check(f"{peer.name}: the retries' global offsets", got, first[:: spec.get("every", 1)])
    peer.close()
    peer = open_peer(spec["store"], spec["dir"])
    try:
        _verify_scan(peer, pool, messages)  # nothing was written twice
    finally:
        peer.close()
    return {"seconds": seconds, "retries": len(retries), "messages": messages, "latency": latency_summary(lat)}


# -- W2: one-envelope transactions from many threads -----------------------------------------


def threads(spec: dict[str, Any]) -> dict[str, Any]:
    nthreads, per_thread = spec["threads"], spec["per_thread"]
    pool = make_pool(nthreads * per_thread, spec["size"])
    peer = open_writer(spec, pool, nthreads * per_thread)
    start = threading.Barrier(nthreads + 1)
    lats: list[list[float]] = [[] for _ in range(nthreads)]
    errors: list[BaseException] = []

    def work(t: int) -> None:
        lat = lats[t]
        name = f"thread-{t}"
        do = peer.append
        try:
            start.wait()
            for i in range(per_thread):
                env = envelope_at(pool, t * per_thread + i)
                c = clock()
                do(name, i, [env])
                lat.append(clock() - c)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
    for w in workers:
        w.start()
    syncs = sync_count(peer)
    start.wait()
    t0 = start_clock()
    for w in workers:
        w.join()
    seconds = clock() - t0
    if errors:
        raise errors[0]
    if syncs is not None:
        syncs = cast(int, sync_count(peer)) - syncs
    facts = store_facts(peer, nthreads * per_thread, grouped=True)
    for t in range(nthreads):
        got = peer.load(f"thread-{t}")
        _check(f"{peer.name}: thread-{t} length", len(got), per_thread)
        _check(
            f"{peer.name}: thread-{t} envelopes",
            got,
            [envelope_at(pool, t * per_thread + i) for i in range(per_thread)],
        )
    peer.close()
    if syncs is not None:
        facts["syncs"] = syncs
    return {
        **facts,
        "seconds": seconds,
        "messages": nthreads * per_thread,
        "commits": nthreads * per_thread,
        "latency": latency_summary([x for lat in lats for x in lat]),
        "rss_kb": rss_kb(),
    }


# -- W3: global scan decoding every envelope --------------------------------------------------


def scan(spec: dict[str, Any]) -> dict[str, Any]:
    messages = spec["messages"]
    pool = make_pool(messages, spec["size"])
    t0 = start_clock()
    peer = open_peer(spec["store"], spec["dir"])
    opened = clock()
    count = 0
    last = None
    if spec.get("api") == "read":  # logstore's batch read: a list per call
        assert isinstance(peer, LogstorePeer)
        for batch in peer.scan_batches():
            last = batch[-1]
            count += len(batch)
    else:
        for env in peer.scan():
            last = env
            count += 1
    seconds = clock() - opened
    _check(f"{peer.name}: scanned message count", count, messages)
    _check(f"{peer.name}: last envelope", last, envelope_at(pool, messages - 1))
    _verify_scan(peer, pool, messages)
    peer.close()
    return {"seconds": seconds, "messages": count, "open_seconds": opened - t0, "rss_kb": rss_kb()}


# -- W4: event sourcing ------------------------------------------------------------------------


def event_sourcing(spec: dict[str, Any]) -> dict[str, Any]:
    streams, per_stream, loads = spec["streams"], spec["per_stream"], spec["loads"]
    messages = streams * per_stream
    pool = make_pool(messages, spec["size"])
    base = rss_kb()

    def expected(s: int) -> list[Envelope]:
        return [envelope_at(pool, s * per_stream + j) for j in range(per_stream)]

    batches = [(f"order-{s:07d}", expected(s)) for s in range(streams)]
    peer = open_writer(spec, pool, messages)
    lat = []
    do = peer.append
    t0 = start_clock()
    for name, envs in batches:
        c = clock()
        do(name, 0, envs)
        lat.append(clock() - c)
    write_seconds = clock() - t0
    unused = unused_preallocation(peer)
    facts = store_facts(peer, streams)
    peer.close()
    write_rss = rss_kb()
    disk = disk_usage(spec["dir"], unused)

    picks = random.Random(spec.get("seed", 5)).choices(range(streams), k=loads)
    peer = open_peer(spec["store"], spec["dir"], spec.get("mode", "sync"))
    load = peer.load
    got: list[list[Envelope]] = []
    t0 = start_clock()
    for s in picks:
        got.append(load(f"order-{s:07d}"))
    load_seconds = clock() - t0
    for s, envs in zip(picks, got, strict=True):
        _check(f"{peer.name}: stream order-{s:07d}", envs, expected(s))
    peer.close()
    return {
        **facts,
        "write_seconds": write_seconds,
        "messages": messages,
        "commits": streams,
        "latency": latency_summary(lat),
        "load_seconds": load_seconds,
        "loads": loads,
        "rss_kb": rss_kb(),
        "write_rss_kb": write_rss,
        "base_rss_kb": base,
        "disk": disk,
        "envelope_bytes": envelope_bytes(pool, messages),
    }


# -- W5: open time -----------------------------------------------------------------------------


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """Append ``messages`` to a new logstore store (transactions of ``batch``) and close it cleanly."""
    messages, batch = spec["messages"], spec["batch"]
    pool = make_pool(messages, spec["size"])
    base = rss_kb()
    peer = open_peer("logstore", spec["dir"])
    t0 = start_clock()
    k = 0
    for k, start in enumerate(range(0, messages, batch)):
        peer.append(
            f"stream-{k % 1000}", (k // 1000) * batch, [envelope_at(pool, i) for i in range(start, start + batch)]
        )
    seconds = clock() - t0
    unused = unused_preallocation(peer)
    peer.close()
    return {
        "seconds": seconds,
        "messages": messages,
        "commits": k + 1,
        "rss_kb": rss_kb(),
        "base_rss_kb": base,
        "disk": disk_usage(spec["dir"], unused),
        "envelope_bytes": envelope_bytes(pool, messages),
    }


def crash_tail(spec: dict[str, Any]) -> dict[str, Any]:
    """Reopen a built store, append ``tail`` messages past its last checkpoint, print, then SIGKILL itself.

    Checkpoints are pushed out of the way (``checkpoint_bytes`` of 1 TiB) so
    that everything appended here is the tail a recovery must read.
    """
    tail, batch = spec["tail"], spec["batch"]
    pool = make_pool(tail, spec["size"])
    peer = LogstorePeer(spec["dir"], checkpoint_bytes=1 << 40)
    store = peer.store
    base = store.global_head  # the tail's ids follow the global offsets: never one the store holds
    for k, start in enumerate(range(0, tail, batch)):
        name = f"tail-{k % 1000}"
        store_head = store.head(name)
        envs = [
            envelope_at(pool, i)._replace(message_id=f"tail-{base + i}") for i in range(start, min(start + batch, tail))
        ]
        peer.append(name, store_head, envs)
    head = store.global_head
    _emit({"tail": tail, "global_head": head})
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("still alive after SIGKILL")


def open_time(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``logstore.open`` of an existing store, and one read from it."""
    t0 = start_clock()
    peer = LogstorePeer(spec["dir"])
    opened = clock()
    store = peer.store
    report = store.recovery_report
    with store.open_global(store, max(0, store.global_head - 1)) as reader:
        last = next(reader, None)
    first_read = clock() - opened
    if last is None and store.global_head:
        raise RuntimeError("the last message of the reopened store is not readable")
    head = store.global_head
    peer.close()
    return {
        "open_seconds": opened - t0,
        "first_read_seconds": first_read,
        "global_head": head,
        "recovery": {
            "checkpoint": report.checkpoint,
            "records_scanned": report.records_scanned,
            "transactions_recovered": report.transactions_recovered,
            "seconds": report.seconds,
        },
        "rss_kb": rss_kb(),
    }


# -- W8: a million streams ---------------------------------------------------------------------


def many_streams(spec: dict[str, Any]) -> dict[str, Any]:
    streams, per_tx, loads = spec["streams"], spec["per_tx"], spec["loads"]
    pool = make_pool(streams, spec["size"])
    base = rss_kb()
    peer = open_peer(spec["store"], spec["dir"])
    append_many = peer.append_many
    t0 = start_clock()
    for start in range(0, streams, per_tx):
        append_many(
            [(f"entity-{s:07d}", 0, [envelope_at(pool, s)]) for s in range(start, min(start + per_tx, streams))]
        )
    write_seconds = clock() - t0
    write_rss = rss_kb()
    unused = unused_preallocation(peer)
    picks = random.Random(spec.get("seed", 8)).choices(range(streams), k=loads)
    load = peer.load
    got = []
    t0 = start_clock()
    for s in picks:
        got.append(load(f"entity-{s:07d}"))
    load_seconds = clock() - t0
    for s, envs in zip(picks, got, strict=True):
        _check(f"{peer.name}: stream entity-{s:07d}", envs, [envelope_at(pool, s)])
    t0 = start_clock()
    peer.close()
    close_seconds = clock() - t0
    disk = disk_usage(spec["dir"], unused)
    t0 = start_clock()
    peer = open_peer(spec["store"], spec["dir"])
    reopen_seconds = clock() - t0
    s = picks[0]
    t0 = start_clock()
    envs = peer.load(f"entity-{s:07d}")
    first_load_seconds = clock() - t0
    _check(f"{peer.name}: stream entity-{s:07d} after reopen", envs, [envelope_at(pool, s)])
    peer.close()
    return {
        "write_seconds": write_seconds,
        "messages": streams,
        "commits": -(-streams // per_tx),
        "load_seconds": load_seconds,
        "loads": loads,
        "close_seconds": close_seconds,
        "reopen_seconds": reopen_seconds,
        "first_load_seconds": first_load_seconds,
        "rss_kb": rss_kb(),
        "write_rss_kb": write_rss,
        "base_rss_kb": base,
        "disk": disk,
        "envelope_bytes": envelope_bytes(pool, streams),
    }


# -- W9: several writer processes ------------------------------------------------------------------


def procs(spec: dict[str, Any]) -> dict[str, Any]:
    """W9's driver: ``procs`` writer processes commit to one store at once (:func:`procs_writer`).

    The store is made first (one open and close), then every writer
    process opens it, prints ``ready`` and waits; once all are ready, each
    is sent ``go`` and commits ``commits`` transactions of ``batch``
    envelopes to a stream of its own (exact offsets), one at a time. The
    aggregate rate is every commit over the time from the first writer's
    start to the last writer's end (``time.monotonic_ns()``: one clock for
    every process of the machine); the latency of each commit is the time
    ``commit()`` (sqlite3: ``COMMIT``, LMDB: the write transaction) took.
    Afterwards the driver counts the envelopes in the store.
    """
    writers, commits, batch = spec["procs"], spec["commits"], spec["batch"]
    open_peer(spec["store"], spec["dir"]).close()
    cmd = [sys.executable, "-m", "bench.workloads"]
    children = []
    try:
        for w in range(writers):
            child = {**spec, "workload": "procs_writer", "writer": w}
            children.append(
                subprocess.Popen(
                    [*cmd, json.dumps(child)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in children:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                _, err = proc.communicate()
                raise RuntimeError(f"{spec['store']} writer process did not start: {line!r}\n{err}")
        for proc in children:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outs = []
        for proc in children:
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"{spec['store']} writer process: exit {proc.returncode}\n{err}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = min(o["start_ns"] for o in outs)
    last = max(o["end_ns"] for o in outs)
    latencies = [x for o in outs for x in o["latencies"]]
    peer = open_peer(spec["store"], spec["dir"])
    try:
        found = sum(1 for _ in peer.scan())
    finally:
        peer.close()
    _check(f"{spec['store']}: envelopes in the store after W9", found, writers * commits * batch)
    return {"seconds": (last - first) / 1e9, "commits": writers * commits, "latency": latency_summary(latencies)}


def procs_writer(spec: dict[str, Any]) -> dict[str, Any]:
    """One writer process of :func:`procs`: open, say ``ready``, wait for ``go``, commit, report."""
    commits, batch, w = spec["commits"], spec["batch"], spec["writer"]
    pool = make_pool(commits * batch, spec["size"])
    peer = open_peer(spec["store"], spec["dir"])
    stream = f"writer-{w}"
    txs = [[envelope_at(pool, k * batch + j) for j in range(batch)] for k in range(commits)]
    _emit_line("ready")
    if sys.stdin.readline().strip() != "go":
        raise RuntimeError("procs_writer: expected go")
    latencies = []
    now = time.monotonic_ns
    append = peer.append
    start = now()
    for k, envs in enumerate(txs):
        t0 = now()
        append(stream, k * batch, envs)
        latencies.append((now() - t0) / 1e9)
    end = now()
    peer.close()
    return {"start_ns": start, "end_ns": end, "latencies": latencies}


# -- W10: tailing from other processes ------------------------------------------------------------


def tail(spec: dict[str, Any]) -> dict[str, Any]:
    """The writer: for each count in ``readers``, start that many tailing processes and commit to them.

    The commits are one-envelope transactions, each alone in flight: after
    it the writer sleeps 2-5 ms (drawn at random), so every reader has taken
    it and waits again before the next one. The first ``warmup`` commits of
    each phase are not measured. The wake-up latency is the time from
    ``commit()`` returning here to ``next()`` returning in a reader: both
    sides read ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every
    process of the machine) and the readers send their times once, at the
    end. A reader can take a message before ``commit()`` has returned in the
    writer (a commit is visible before the call returns): that latency is
    negative, kept as it is and counted.

    The readers of a phase start at the end of the log as it is then. With
    ``idle_seconds``, the reader of a one-reader phase then waits that long
    for a message that never comes and reports the CPU it used meanwhile.
    """
    commits, warmup = spec["commits"], spec["warmup"]
    total = warmup + commits
    pool = make_pool(total * len(spec["readers"]), spec["size"])
    peer = open_peer(spec["store"], spec["dir"])
    rng = random.Random(spec.get("seed", 10))
    phases = []
    start = 0
    for readers in spec["readers"]:
        reader_spec = {
            "workload": "tail_reader",
            "store": spec["store"],
            "dir": spec["dir"],
            "start": start,
            "messages": total,
            "size": spec["size"],
            "idle_seconds": spec.get("idle_seconds", 0) if readers == 1 else 0,
        }
        pace = [rng.uniform(0.002, 0.005) for _ in range(total)]
        stamps = [0] * total
        cmd = [sys.executable, "-m", "bench.workloads", json.dumps(reader_spec)]
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(readers)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if line.strip() != "ready":
                    _, err = proc.communicate()
                    raise RuntimeError(f"{spec['store']} tailing reader did not start: {line!r}\n{err}")
            do, now, sleep = peer.append, time.monotonic_ns, time.sleep
            for i in range(total):
                do("tail", start + i, [envelope_at(pool, start + i)])
                stamps[i] = now()
                sleep(pace[i])
            outs = []
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    raise RuntimeError(f"{spec['store']} tailing reader: exit {proc.returncode}\n{err}")
                outs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        lat = []
        for got in outs:
            _check(f"{spec['store']}: messages a tailing reader took", len(got["stamps"]), total)
            lat += [(got["stamps"][i] - stamps[i]) / 1e9 for i in range(warmup, total)]
        phase: dict[str, Any] = {
            "readers": readers,
            "commits": commits,
            "latency": latency_summary(lat),
            "before_commit_returned": sum(1 for x in lat if x < 0),
        }
        idle = [got["idle_cpu_seconds"] / got["idle_seconds"] for got in outs if "idle_seconds" in got]
        if idle:
            phase["idle_cpu_fraction"] = max(idle)
        phases.append(phase)
        start += total
    peer.close()
    return {"phases": phases, "rss_kb": rss_kb()}


def tail_reader(spec: dict[str, Any]) -> dict[str, Any]:
    """A tailing reader (started by :func:`tail`): take every message as it is committed, noting when.

    Opens the store, then a reader at global offset ``start``, prints
    ``ready``, then takes ``messages`` envelopes with nothing in the loop but
    the store's wait, the clock and two list stores; checks them against the
    pool afterwards. With ``idle_seconds``, then waits that long for a
    message that never comes and measures the CPU the process used meanwhile
    (``getrusage``: user and system time of every thread).
    """
    start, total, idle_seconds = spec["start"], spec["messages"], spec["idle_seconds"]
    pool = make_pool(start + total, spec["size"])
    reader = open_tail(spec["store"], spec["dir"], start)
    stamps = [0] * total
    got: list[Envelope | None] = [None] * total
    now, nxt = time.monotonic_ns, reader.next
    _emit_line("ready")
    for i in range(total):
        env = nxt(60.0)
        stamps[i] = now()
        got[i] = env
    result: dict[str, Any] = {"stamps": stamps}
    if idle_seconds:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        reader.idle(idle_seconds)
        seconds = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        result.update(idle_seconds=seconds, idle_cpu_seconds=cpu)
    reader.close()
    for i, taken in enumerate(got):
        if taken != envelope_at(pool, start + i):
            raise RuntimeError(f"{spec['store']} tailing reader: global offset {start + i} differs from the envelope")
    return result


# -- ES: the eventsourcing library's application recorder ------------------------------------------


ES_TOPIC = "bench.orders:Order.LineAdded"


def es_recorder(spec: dict[str, Any]) -> dict[str, Any]:
    """The ES group on one store (``bench/esrecorders.py``): saves, a notification scan, subscription wake-ups.

    One recorder, one thread writing, the calls timed one by one:

    1. ``saves1`` saves of one event (``insert_events`` with one stored
       event), round robin over ``aggregates`` originators (UUIDs), each
       event the originator's next version;
    2. ``saves10`` saves of ten events of one originator, the same way;
    3. the notification scan: ``select_notifications`` in pages of each size
       in ``pages`` from the start of the log written above to its end, as
       an application's processing pulls them (each page from the id after
       the last one taken, ``inclusive_of_start=False``), the calls alone
       timed;
    4. with ``commits`` and a store that subscribes: a subscription from the
       end of the log (``subscribe(gt=max_notification_id())``) iterated in
       a thread of this process; the writer makes ``warmup`` unmeasured and
       ``commits`` measured one-event saves, each alone in flight (then a
       sleep of 2-5 ms drawn at random), and the wake-up latency is the time
       from ``insert_events`` returning to the subscriber holding the
       notification (``time.monotonic_ns()`` on both sides; a subscriber
       may get it before ``insert_events`` returned: a negative latency,
       kept and counted).

    Every event's state is ``size`` bytes (random, the same in every
    store). Checked (not timed): the pages' ids ascend with no gap from 1 to
    the last, each notification's originator, version, topic and state are
    the ones saved, and the subscriber got each wake-up save's notification,
    in order.
    """
    import uuid

    from eventsourcing.persistence import StoredEvent

    from bench.esrecorders import SUBSCRIBES, open_es_recorder

    saves1, saves10, aggs = spec["saves1"], spec["saves10"], spec["aggregates"]
    rng = random.Random(spec.get("seed", 16))
    state = rng.randbytes(spec["size"])
    originators = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(aggs)]
    versions = dict.fromkeys(originators, 0)
    saved: list[tuple[uuid.UUID, int]] = []  # (originator, version) of notification id i + 1

    def save(k: int, events: int) -> list[StoredEvent]:
        oid = originators[k % aggs]
        batch = []
        for _ in range(events):
            versions[oid] += 1
            batch.append(StoredEvent(oid, versions[oid], ES_TOPIC, state))
            saved.append((oid, versions[oid]))
        return batch

    ones = [save(k, 1) for k in range(saves1)]
    tens = [save(k, 10) for k in range(saves10)]
    recorder, close, settings = open_es_recorder(spec["store"], spec["dir"])
    result: dict[str, Any] = {"settings": settings}
    try:
        insert = recorder.insert_events
        for label, batches in (("saves1", ones), ("saves10", tens)):
            lat = []
            t0 = start_clock()
            for batch in batches:
                c = clock()
                insert(batch)
                lat.append(clock() - c)
            result[label] = {"seconds": clock() - t0, "saves": len(batches), "latency": latency_summary(lat)}
        total = len(saved)
        _check(f"{spec['store']}: max notification id after the saves", recorder.max_notification_id(), total)
        scans = {str(page): _es_scan(recorder, spec["store"], page, saved, state) for page in spec["pages"]}
        result["scan"] = scans
        if spec.get("commits") and spec["store"] in SUBSCRIBES:
            result["wake"] = _es_wake(recorder, spec, save, total)
    finally:
        close()
    result["rss_kb"] = rss_kb()
    return result


def _es_scan(recorder: Any, store: str, page: int, saved: list[tuple[Any, int]], state: bytes) -> dict[str, Any]:
    """Step 3 of :func:`es_recorder`: the whole notification log in pages of ``page``.

    Only the ``select_notifications`` calls are timed. Each page is checked between two calls and
    then dropped, as an application's processing drops what it processed (keeping every page
    would time the garbage collector's passes over them too).
    """
    total = len(saved)
    select = recorder.select_notifications
    start = None
    seconds = 0.0
    pages = taken = 0
    gc.collect()  # as start_clock() does before a timed part
    while True:
        t0 = clock()
        got = select(start, page, inclusive_of_start=False)
        seconds += clock() - t0
        if not got:
            break
        for n in got:
            taken += 1
            if n.id != taken:
                raise RuntimeError(f"{store}: notification id {n.id} where {taken} was next, in pages of {page}")
            if (n.originator_id, n.originator_version, n.topic, n.state) != (*saved[n.id - 1], ES_TOPIC, state):
                raise RuntimeError(f"{store}: notification {n.id} is not the event saved")
        pages += 1
        start = got[-1].id
    _check(f"{store}: notifications of a scan in pages of {page}", taken, total)
    return {"seconds": seconds, "notifications": total, "pages": pages}


def _es_wake(recorder: Any, spec: dict[str, Any], save: Callable[[int, int], list[Any]], gt: int) -> dict[str, Any]:
    """Step 4 of :func:`es_recorder`: the subscriber thread and the paced one-event saves."""
    warmup, commits = spec["warmup"], spec["commits"]
    total = warmup + commits
    batches = [save(k, 1) for k in range(total)]
    rng = random.Random(spec.get("seed", 16) + 1)
    pace = [rng.uniform(0.002, 0.005) for _ in range(total)]
    got: list[Any] = []
    stamps = [0] * total
    ready = threading.Event()
    errors: list[BaseException] = []
    subscription = recorder.subscribe(gt=gt)

    def follow() -> None:
        now = time.monotonic_ns
        try:
            with subscription:
                ready.set()
                for i, notification in enumerate(subscription):
                    stamps[i] = now()
                    got.append(notification)
                    if i + 1 == total:
                        break
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    ready.wait()
    sent = [0] * total
    insert, now, sleep = recorder.insert_events, time.monotonic_ns, time.sleep
    for i, batch in enumerate(batches):
        insert(batch)
        sent[i] = now()
        sleep(pace[i])
    thread.join(60)
    if thread.is_alive():
        subscription.stop()
        raise RuntimeError(f"{spec['store']}: the subscriber took {len(got)} of {total} notifications in 60 s")
    if errors:
        raise errors[0]
    _check(
        f"{spec['store']}: notification ids the subscriber took",
        [n.id for n in got],
        list(range(gt + 1, gt + total + 1)),
    )
    lat = [(stamps[i] - sent[i]) / 1e9 for i in range(warmup, total)]
    return {"commits": commits, "latency": latency_summary(lat), "before_insert_returned": sum(1 for x in lat if x < 0)}


WORKLOADS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "append": append,
    "retry": retry,
    "threads": threads,
    "scan": scan,
    "event_sourcing": event_sourcing,
    "build": build,
    "crash_tail": crash_tail,
    "open_time": open_time,
    "many_streams": many_streams,
    "procs": procs,
    "procs_writer": procs_writer,
    "tail": tail,
    "tail_reader": tail_reader,
    "es_recorder": es_recorder,
    "ct_build": ct_build,
    "ct_read": ct_read,
    "sb_consume": sb_consume,
}


def _emit_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _emit(result: dict[str, Any]) -> None:
    _emit_line(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m bench.workloads '<json spec>'")
    spec = json.loads(args[0])
    _emit(WORKLOADS[spec["workload"]](spec))


if __name__ == "__main__":
    main()
