"""The benchmark suite: ``python -m bench [--quick] [--only W1,W3] [--json] [--markdown FILE] [--plot DIR]``.

Runs the workloads W1-W10 (see ``bench/RESULTS.md`` for what each
does) on logstore, sqlite3 and LMDB in one run, with the floor beside them
in W1-W4 (``bench/floor.py``: the least any store could do with the same
envelopes, encoding, one ``pwrite`` and one ``fdatasync`` per transaction or
per group of transactions from several threads, decoding from bytes in
memory), the group PG, logstore's PostgreSQL backend beside two peers on one
server (skipped, saying why, when the server of ``LOGSTORE_BENCH_PG`` does
not answer), and the group ES, the eventsourcing library's application
recorder on ``logstore.eventsourcing`` beside the library's SQLite and POPO
modules (``bench/esrecorders.py``; events of 300-byte states), on identical
envelopes, each measurement in a fresh process (``bench/workloads.py``;
W10's readers are processes of their own beside the writer's), the stores
taking turns going first. Prints a table of medians with min and max,
commit and wake-up latencies and the ratios logstore / peer (logstore /
floor among them: the share of logstore's time that the least work
accounts for); ``--markdown`` writes the same as a Markdown report
(``bench/RESULTS.md`` is one), ``--json`` prints everything measured (each
run's latency distribution too), ``--plot DIR`` draws each workload's
stores side by side and its latency distributions as PNG files
(``bench/plot.py``; matplotlib, in the ``bench`` extra), which the Markdown
report shows above its tables; ``python -m bench.plot report.json DIR``
draws them from a saved ``--json`` report. ``--quick`` is a smoke run of
about a minute (PG 25 s of it); the full run takes fourteen to fifteen
minutes on two cores (W10 under one, PG about four, ES about three) and
needs about 8 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import plot
from bench.esrecorders import ES_STORES
from bench.floor import NAME as FLOOR
from bench.machine import machine_facts
from bench.peers import PEERS, PG_PEERS, PG_URL, pg_drop_schemas, pg_schema, pg_schema_prefix, pg_settings
from bench.subscriptions import SB_MODES
from bench.workloads import QUANTILES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 300


@dataclass(frozen=True)
class Plan:
    """The sizes of one mode."""

    repeat: int
    w1_messages: int
    w2_threads: int
    w2_per_thread: int
    w4_streams: int
    w4_loads: int
    w5_sizes: tuple[int, ...]
    w5_tails: tuple[int, ...]
    w8_streams: int
    w8_loads: int
    w8_repeat: int
    w9_commits: int
    w9_procs: tuple[int, ...]
    w9_repeat: int
    w10_commits: int
    w10_readers: tuple[int, ...]
    w10_idle_seconds: float
    w10_repeat: int
    pg_repeat: int
    pg_w1_messages: int
    pg_w2_per_thread: int
    pg_w2_commits: int
    pg_w4_streams: int
    pg_w4_loads: int
    pg_tail_commits: int
    es_repeat: int
    es_saves1: int
    es_saves10: int
    es_commits: int


QUICK = Plan(
    repeat=1,
    w1_messages=20_000,
    w2_threads=8,
    w2_per_thread=100,
    w4_streams=1_000,
    w4_loads=250,
    w5_sizes=(20_000, 100_000),
    w5_tails=(1_000, 10_000),
    w8_streams=20_000,
    w8_loads=1_000,
    w8_repeat=1,
    w9_commits=40,
    w9_procs=(1, 4),
    w9_repeat=1,
    w10_commits=30,
    w10_readers=(1, 8),
    w10_idle_seconds=0.5,
    w10_repeat=1,
    pg_repeat=1,
    pg_w1_messages=2_000,
    pg_w2_per_thread=25,
    pg_w2_commits=25,
    pg_w4_streams=200,
    pg_w4_loads=100,
    pg_tail_commits=20,
    es_repeat=1,
    es_saves1=300,
    es_saves10=50,
    es_commits=30,
)
FULL = Plan(
    repeat=5,
    w1_messages=200_000,
    w2_threads=8,
    w2_per_thread=1_000,
    w4_streams=20_000,
    w4_loads=5_000,
    w5_sizes=(1_000_000, 10_000_000),
    w5_tails=(10_000, 100_000, 1_000_000),
    w8_streams=1_000_000,
    w8_loads=10_000,
    w8_repeat=1,
    w9_commits=400,
    w9_procs=(1, 2, 4, 8),
    w9_repeat=3,
    w10_commits=300,
    w10_readers=(1, 8),
    w10_idle_seconds=3.0,
    w10_repeat=2,
    pg_repeat=3,
    pg_w1_messages=50_000,
    pg_w2_per_thread=250,
    pg_w2_commits=500,
    pg_w4_streams=2_000,
    pg_w4_loads=1_000,
    pg_tail_commits=200,
    es_repeat=5,
    es_saves1=5_000,
    es_saves10=1_000,
    es_commits=300,
)
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10", "PG", "ES", "ID", "CT", "SB")
STORES = (*PEERS, FLOOR)
"""The stores of ``--stores``: logstore, its two peers, and the floor (``bench/floor.py``)."""
FLOOR_WORKLOADS = ("W1", "W2", "W3", "W4")
"""The workloads the floor takes part in (W4: its writes and loads); the others run without it."""
ES_PAGES = (10, 100)
"""Page sizes of the ES notification scan: 10 is the library's own (``pull_section_size``, ``section_size``)."""
ES_AGGREGATES = 100
"""Originators the ES saves go round (each save: the next version of the next one)."""
W10_WARMUP = 10
"""Commits of a W10 run that readers take before the measured ones (the first wait starts logstore's watcher)."""


def human(n: int) -> str:
    """1000000 -> "1M", 20000 -> "20k"."""
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


@dataclass
class Result:
    """One named benchmark: its runs and what they mean."""

    workload: str
    name: str
    store: str
    unit: str
    higher_is_better: bool
    runs: list[float] = field(default_factory=list)
    latency: list[dict[str, float]] = field(default_factory=list)  # per run: p50, p99, max (seconds)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "workload": self.workload,
            "name": self.name,
            "store": self.store,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "runs": self.runs,
            "median": statistics.median(self.runs),
            "min": min(self.runs),
            "max": max(self.runs),
        }
        if self.latency:
            out["latency_p50"] = statistics.median(x["p50"] for x in self.latency)
            out["latency_p99"] = statistics.median(x["p99"] for x in self.latency)
            out["latency_max"] = max(x["max"] for x in self.latency)
            runs = [x["q"] for x in self.latency if "q" in x]
            if runs:  # each run's distribution, at the percentiles QUANTILES (for the plots)
                out["latency_quantiles"] = {"percentiles": list(QUANTILES), "runs": runs}
        if self.extra:
            out["extra"] = self.extra
        return out


class Runner:
    """Runs workload processes and collects named results."""

    def __init__(self, base: str, verbose: bool) -> None:
        self.base = base
        self.verbose = verbose
        self.results: dict[str, Result] = {}
        self.es_settings: dict[str, dict[str, str]] = {}  # the ES group's stores: what each was measured under
        self._dirs = 0

    def fresh_dir(self, label: str) -> str:
        self._dirs += 1
        return os.path.join(self.base, f"{self._dirs:03d}-{label}")

    def run(self, spec: dict[str, Any], expect_kill: bool = False) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "bench.workloads", json.dumps(spec)]
        if self.verbose:
            print(f"  . {spec['workload']} {spec.get('store', 'logstore')} {spec.get('dir', '')}", file=sys.stderr)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if expect_kill:
            if proc.returncode != -signal.SIGKILL:
                raise RuntimeError(
                    f"{spec['workload']}: expected to die by SIGKILL, exit {proc.returncode}\n{proc.stderr}"
                )
        elif proc.returncode != 0:
            raise RuntimeError(f"{spec['workload']} on {spec.get('store')}: exit {proc.returncode}\n{proc.stderr}")
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise RuntimeError(f"{spec['workload']}: printed nothing\n{proc.stderr}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def record(
        self,
        workload: str,
        name: str,
        store: str,
        unit: str,
        value: float,
        higher_is_better: bool = True,
        latency: dict[str, float] | None = None,
        extra: Mapping[str, float] | None = None,
    ) -> None:
        r = self.results.get(name)
        if r is None:
            r = self.results[name] = Result(workload, name, store, unit, higher_is_better)
        r.runs.append(value)
        if latency is not None:
            r.latency.append(latency)
        for key, val in (extra or {}).items():
            r.extra.setdefault(key, []).append(val)


def rotations(stores: Sequence[str], repeat: int) -> Iterator[tuple[int, str]]:
    """(repetition, store) with the stores taking turns going first."""
    for rep in range(repeat if stores else 0):
        k = rep % len(stores)
        for store in (*stores[k:], *stores[:k]):
            yield rep, store


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def runs_per_store(
    r: Runner, stores: Sequence[str], repeat: int, label: str, workload: str, **params: Any
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``workload`` with ``params`` on each store in turn, ``repeat`` times: (store, result) of each run.

    Each run writes a fresh directory, removed once the caller has recorded the run's result.
    """
    for _rep, store in rotations(stores, repeat):
        path = r.fresh_dir(f"{label}-{store}")
        yield store, r.run({"workload": workload, "store": store, "dir": path, **params, "size": SIZE})
        remove(path)


def record_loads(r: Runner, workload: str, name: str, store: str, loads: int, result: dict[str, Any]) -> None:
    """The loads per second of a run that loaded ``loads`` streams after writing them."""
    r.record(workload, f"{name}/loads={human(loads)}/store={store}", store, "loads/s", loads / result["load_seconds"])


def record_event_sourcing(r: Runner, workload: str, base: str, store: str, loads: int, result: dict[str, Any]) -> None:
    """The write rate (and commit latency) and the loads per second of an event-sourcing run."""
    r.record(
        workload,
        f"es-write/{base}/store={store}",
        store,
        "msg/s",
        result["messages"] / result["write_seconds"],
        latency=result["latency"],
    )
    record_loads(r, workload, f"es-load/{base}", store, loads, result)


def per_message(result: dict[str, Any], rss: str = "rss_kb") -> dict[str, float]:
    """Disk bytes per message and the peak RSS ``result[rss]`` (KiB), for the footprint tables."""
    disk = result["disk"]
    n = result["messages"]
    return {
        "disk_bytes_per_message": disk["bytes"] / n,
        "allocated_bytes_per_message": disk["allocated"] / n,
        "envelope_bytes_per_message": result["envelope_bytes"] / n,
        "rss_mib": result[rss] / 1024,
        "base_rss_mib": result.get("base_rss_kb", 0) / 1024,
    }


# -- the workloads -----------------------------------------------------------------------------


def w1_w3_w6(r: Runner, plan: Plan, stores: Sequence[str], want: set[str]) -> None:
    """W1 append, then W3 scans of the store the last repetition wrote; W6's figures for W1."""
    n = plan.w1_messages
    kept: dict[str, str] = {}
    for rep, store in rotations(stores, plan.repeat):
        path = r.fresh_dir(f"w1-{store}")
        res = r.run(
            {
                "workload": "append",
                "store": store,
                "dir": path,
                "messages": n,
                "batch": 100,
                "size": SIZE,
                "verify": rep == 0,
            }
        )
        name = f"append/batch=100/size={SIZE}B/messages={human(n)}/store={store}"
        if "W1" in want:
            r.record("W1", name, store, "msg/s", n / res["seconds"], latency=res["latency"])
        if "W6" in want and store != FLOOR:
            r.record(
                "W6", f"footprint/{name}", store, "MiB peak RSS", res["rss_kb"] / 1024, False, extra=per_message(res)
            )
        if "W3" in want and rep == plan.repeat - 1:
            kept[store] = path
        else:
            remove(path)
    for _rep, store in rotations(list(kept), plan.repeat):
        spec = {"workload": "scan", "store": store, "dir": kept[store], "messages": n, "size": SIZE}
        res = r.run(spec)
        name = f"scan/decode=full/messages={human(n)}/size={SIZE}B/store={store}"
        r.record("W3", name, store, "msg/s", n / res["seconds"])
        if store in ("logstore", FLOOR):
            # logstore's batch read (reader.read(1000)) against the same floor: the floor has one way to read.
            if store == "logstore":
                res = r.run(
                    {"workload": "scan", "store": store, "dir": kept[store], "messages": n, "size": SIZE, "api": "read"}
                )
            r.record("W3", name.replace("decode=full/", "decode=full/api=read/"), store, "msg/s", n / res["seconds"])
    for path in kept.values():
        remove(path)


def w2(r: Runner, plan: Plan, stores: Sequence[str]) -> None:
    t, per = plan.w2_threads, plan.w2_per_thread
    for store, res in runs_per_store(r, stores, plan.repeat, "w2", "threads", threads=t, per_thread=per):
        name = f"append/threads={t}/batch=1/size={SIZE}B/commits={human(t * per)}/store={store}"
        extra = {"syncs_per_commit": res["syncs"] / res["commits"]} if "syncs" in res else None
        r.record("W2", name, store, "commits/s", res["commits"] / res["seconds"], latency=res["latency"], extra=extra)


def w4_w6(r: Runner, plan: Plan, stores: Sequence[str], want: set[str]) -> None:
    s, loads = plan.w4_streams, plan.w4_loads
    runs = runs_per_store(r, stores, plan.repeat, "w4", "event_sourcing", streams=s, per_stream=5, loads=loads)
    for store, res in runs:
        base = f"streams={human(s)}/per-stream=5/size={SIZE}B"
        if "W4" in want:
            record_event_sourcing(r, "W4", base, store, loads, res)
        if "W6" in want and store != FLOOR:
            # The peak while writing (the store closed before the loads), then the peak over
            # the whole workload: the loads keep 25,000 decoded envelopes, and a store that
            # maps its files (logstore, LMDB) counts the pages the loads touched.
            r.record(
                "W6",
                f"footprint/es-write/{base}/store={store}",
                store,
                "MiB peak RSS",
                res["write_rss_kb"] / 1024,
                False,
                extra=per_message(res, "write_rss_kb"),
            )
            r.record(
                "W6",
                f"footprint/es-load/{base}/loads={human(loads)}/store={store}",
                store,
                "MiB peak RSS",
                res["rss_kb"] / 1024,
                False,
                extra=per_message(res),
            )


def w5(r: Runner, plan: Plan, want: set[str]) -> None:
    """Open time of logstore after a clean close and after a crash with an unsynced tail; W6 RSS by log size."""
    for size in plan.w5_sizes:
        path = r.fresh_dir(f"w5-{human(size)}")
        built = r.run({"workload": "build", "dir": path, "messages": size, "batch": 1000, "size": SIZE})
        if "W6" in want:
            r.record(
                "W6",
                f"footprint/build/batch=1000/size={SIZE}B/messages={human(size)}/store=logstore",
                "logstore",
                "MiB peak RSS",
                built["rss_kb"] / 1024,
                False,
                extra=per_message(built),
            )
        if "W5" in want:
            for _ in range(plan.repeat):
                res = r.run({"workload": "open_time", "dir": path})
                r.record(
                    "W5",
                    f"open/after=close/messages={human(size)}/store=logstore",
                    "logstore",
                    "s",
                    res["open_seconds"],
                    False,
                    extra={
                        "first_read_seconds": res["first_read_seconds"],
                        "records_scanned": res["recovery"]["records_scanned"],
                    },
                )
            for tail in plan.w5_tails:
                for _ in range(plan.repeat):
                    r.run(
                        {"workload": "crash_tail", "dir": path, "tail": tail, "batch": 1000, "size": SIZE},
                        expect_kill=True,
                    )
                    res = r.run({"workload": "open_time", "dir": path})
                    if res["recovery"]["checkpoint"] == "clean":
                        raise RuntimeError(f"{path}: the open after a crash found a clean checkpoint")
                    r.record(
                        "W5",
                        f"open/after=crash/messages={human(size)}/tail={human(tail)}/store=logstore",
                        "logstore",
                        "s",
                        res["open_seconds"],
                        False,
                        extra={"records_scanned": res["recovery"]["records_scanned"]},
                    )
        remove(path)


def idem(r: Runner, plan: Plan) -> None:
    """ID: W1 with idempotent appends (logstore's duplicate check is always on) beside sqlite with a UNIQUE
    (stream, message_id) index and plain sqlite (W1's peer); then retries of W1's committed transactions,
    each answered with its first commit's global offsets and nothing written."""
    n = plan.w1_messages
    stores = ("logstore", "sqlite-unique", "sqlite")
    for store, res in runs_per_store(r, stores, plan.repeat, "id", "append", messages=n, batch=100):
        name = f"append/ids=checked/batch=100/size={SIZE}B/messages={human(n)}/store={store}"
        r.record("ID", name, store, "msg/s", n / res["seconds"], latency=res["latency"])
    for store, res in runs_per_store(r, stores[:2], plan.repeat, "idr", "retry", messages=n, batch=100):
        name = f"retry/batch=100/size={SIZE}B/commits={human(res['retries'])}/store={store}"
        r.record("ID", name, store, "retries/s", res["retries"] / res["seconds"], latency=res["latency"])


def w7(r: Runner, plan: Plan, stores: Sequence[str]) -> None:
    n = plan.w1_messages
    for batch in (100, 1):
        count = n if batch == 100 else n // 10
        runs = runs_per_store(r, stores, plan.repeat, "w7", "append", messages=count, batch=batch, mode="batch")
        for store, res in runs:
            name = f"append/durability=batch/batch={batch}/size={SIZE}B/messages={human(count)}/store={store}"
            r.record("W7", name, store, "msg/s", count / res["seconds"], latency=res["latency"])


def w8(r: Runner, plan: Plan, stores: Sequence[str]) -> None:
    s, loads = plan.w8_streams, plan.w8_loads
    runs = runs_per_store(r, stores, plan.w8_repeat, "w8", "many_streams", streams=s, per_tx=1000, loads=loads)
    for store, res in runs:
        base = f"streams={human(s)}/per-tx=1000/size={SIZE}B"
        r.record(
            "W8",
            f"streams-write/{base}/store={store}",
            store,
            "streams/s",
            s / res["write_seconds"],
            extra=per_message(res),
        )
        record_loads(r, "W8", f"streams-load/{base}", store, loads, res)
        r.record(
            "W8",
            f"streams-reopen/{base}/store={store}",
            store,
            "s",
            res["reopen_seconds"],
            False,
            extra={"close_seconds": res["close_seconds"], "first_load_seconds": res["first_load_seconds"]},
        )


def w9(r: Runner, plan: Plan, stores: Sequence[str]) -> None:
    """Several writer processes on one store: aggregate commits per second and commit latency, for 1- and
    100-envelope transactions (``durability="fsync"``; sqlite3 ``synchronous=FULL``; LMDB ``sync=True``)."""
    for batch in (1, 100):
        commits = plan.w9_commits if batch == 1 else max(plan.w9_commits // 10, 10)
        for procs in plan.w9_procs:
            runs = runs_per_store(
                r, stores, plan.w9_repeat, f"w9-{procs}", "procs", procs=procs, commits=commits, batch=batch
            )
            for store, res in runs:
                name = f"processes={procs}/batch={batch}/size={SIZE}B/commits={human(commits)}-each/store={store}"
                r.record("W9", name, store, "commits/s", res["commits"] / res["seconds"], latency=res["latency"])


def w10(r: Runner, plan: Plan, stores: Sequence[str]) -> None:
    """Tailing from other processes: wake-up latency for each reader count, and the CPU of an idle reader.

    One writer process per store and repetition runs the reader counts in turn on one store.
    """
    commits, idle = plan.w10_commits, plan.w10_idle_seconds
    for _rep, store in rotations(stores, plan.w10_repeat):
        path = r.fresh_dir(f"w10-{store}")
        spec = {
            "workload": "tail",
            "store": store,
            "dir": path,
            "readers": list(plan.w10_readers),
            "commits": commits,
            "warmup": W10_WARMUP,
            "size": SIZE,
            "idle_seconds": idle,
        }
        res = r.run(spec)
        remove(path)
        for phase in res["phases"]:
            lat = phase["latency"]
            r.record(
                "W10",
                f"wake-up/readers={phase['readers']}/batch=1/size={SIZE}B/commits={human(commits)}/store={store}",
                store,
                "ms",
                lat["p50"] * 1e3,
                False,
                latency=lat,
                extra={"samples": lat["count"], "before_commit_returned": phase["before_commit_returned"]},
            )
            if "idle_cpu_fraction" in phase:
                r.record(
                    "W10",
                    f"idle-reader/wait={idle:g}s/store={store}",
                    store,
                    "% of a core",
                    phase["idle_cpu_fraction"] * 100,
                    False,
                )


def pg(r: Runner, plan: Plan) -> None:
    """The PG group: logstore's PostgreSQL backend and two peers on one server, each run in a fresh schema.

    W1-like append (100 envelopes per transaction), W2-like one-envelope
    transactions from 8 threads of one process and from 4 processes (W9's
    driver), W4-like event sourcing (write, then loads), and the wake-up
    latency of one tailing reader in another process (W10's driver).
    """
    stores, repeat = PG_PEERS, plan.pg_repeat

    def runs(label: str, workload: str, **params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        for _rep, store in rotations(stores, repeat):
            path = r.fresh_dir(f"pg{label}-{store}")
            try:
                yield store, r.run({"workload": workload, "store": store, "dir": path, **params, "size": SIZE})
            finally:
                pg_drop_schemas(pg_schema(path))

    n = plan.pg_w1_messages
    for store, res in runs("w1", "append", messages=n, batch=100, verify=True):
        name = f"append/batch=100/size={SIZE}B/messages={human(n)}/store={store}"
        r.record("PG", name, store, "msg/s", n / res["seconds"], latency=res["latency"])
    t, per = 8, plan.pg_w2_per_thread
    for store, res in runs("w2", "threads", threads=t, per_thread=per):
        name = f"append/threads={t}/batch=1/size={SIZE}B/commits={human(t * per)}/store={store}"
        r.record("PG", name, store, "commits/s", res["commits"] / res["seconds"], latency=res["latency"])
    c = plan.pg_w2_commits
    for store, res in runs("w9", "procs", procs=4, commits=c, batch=1):
        name = f"append/processes=4/batch=1/size={SIZE}B/commits={human(c)}-each/store={store}"
        r.record("PG", name, store, "commits/s", res["commits"] / res["seconds"], latency=res["latency"])
    s, loads = plan.pg_w4_streams, plan.pg_w4_loads
    for store, res in runs("w4", "event_sourcing", streams=s, per_stream=5, loads=loads):
        base = f"streams={human(s)}/per-stream=5/size={SIZE}B"
        record_event_sourcing(r, "PG", base, store, loads, res)
    commits = plan.pg_tail_commits
    spec = {"readers": [1], "commits": commits, "warmup": W10_WARMUP}
    for store, res in runs("tail", "tail", **spec):
        lat = res["phases"][0]["latency"]
        r.record(
            "PG",
            f"wake-up/readers=1/batch=1/size={SIZE}B/commits={human(commits)}/store={store}",
            store,
            "ms",
            lat["p50"] * 1e3,
            False,
            latency=lat,
            extra={"samples": lat["count"], "before_commit_returned": res["phases"][0]["before_commit_returned"]},
        )


def es(r: Runner, plan: Plan) -> None:
    """The ES group: the eventsourcing library's application recorder on logstore, its SQLite module and POPO.

    One process per store and repetition (``es_recorder`` in ``bench/workloads.py``): 1-event and
    10-event saves, the notification scan in pages, and a subscriber thread's wake-up latency
    (logstore and POPO; the library's SQLite recorder has no ``subscribe``).
    """
    s1, s10, commits = plan.es_saves1, plan.es_saves10, plan.es_commits
    total = s1 + 10 * s10
    spec = {
        "workload": "es_recorder",
        "saves1": s1,
        "saves10": s10,
        "aggregates": ES_AGGREGATES,
        "pages": list(ES_PAGES),
        "commits": commits,
        "warmup": W10_WARMUP,
        "size": SIZE,
    }
    for _rep, store in rotations(ES_STORES, plan.es_repeat):
        path = r.fresh_dir(f"es-{store}")
        res = r.run({**spec, "store": store, "dir": path})
        remove(path)
        r.es_settings[store] = res["settings"]
        for events, key, saves in ((1, "saves1", s1), (10, "saves10", s10)):
            got = res[key]
            r.record(
                "ES",
                f"insert/batch={events}/size={SIZE}B/saves={human(saves)}/store={store}",
                store,
                "inserts/s",
                got["saves"] / got["seconds"],
                latency=got["latency"],
            )
        for page, got in res["scan"].items():
            r.record(
                "ES",
                f"scan/page={page}/size={SIZE}B/messages={human(total)}/store={store}",
                store,
                "notifications/s",
                got["notifications"] / got["seconds"],
            )
        wake = res.get("wake")
        if wake is not None:
            lat = wake["latency"]
            r.record(
                "ES",
                f"wake-up/subscribers=1/batch=1/size={SIZE}B/commits={human(commits)}/store={store}",
                store,
                "ms",
                lat["p50"] * 1e3,
                False,
                latency=lat,
                extra={"samples": lat["count"], "before_commit_returned": wake["before_insert_returned"]},
            )


CT_STORES = ("logstore", "sqlite")
CT_MODES = ("category/read=index", "category/read=scan", "types/read=filter", "types/read=scan")


def ct(r: Runner, plan: Plan) -> None:
    """The CT group: a category read among 100 categories through the index against a full scan that
    filters in Python, and a type-filtered scan (1 type in 10) against an unfiltered one; logstore beside
    sqlite3 (a category column and a type column, each with an index). ``bench/categories.py`` says more.

    One store per store kind and run, built once (W1's message count), read in a fresh process per mode
    and repetition.
    """
    n = plan.w1_messages
    for store, path in _ct_stores(r, n, "ct"):
        for _rep in range(plan.repeat):
            for mode in CT_MODES:
                res = r.run(
                    {"workload": "ct_read", "store": store, "dir": path, "messages": n, "size": SIZE, "mode": mode}
                )
                kind, read = mode.split("/")
                what = "1-of-100-categories" if kind == "category" else "1-of-10-types"
                name = f"{kind}/{what}/{read}/messages={human(n)}/size={SIZE}B/store={store}"
                extra = {"records_read": res["records_read"]} if res["records_read"] >= 0 else None
                r.record("CT", name, store, "msg/s", res["messages"] / res["seconds"], extra=extra)


def _ct_stores(r: Runner, n: int, label: str) -> Iterator[tuple[str, str]]:
    """Each store kind of the CT and SB groups with the CT build of ``n`` messages in a fresh directory
    (removed once the caller moves on): ``(store, path)``."""
    for store in CT_STORES:
        path = r.fresh_dir(f"{label}-{store}")
        r.run({"workload": "ct_build", "store": store, "dir": path, "messages": n, "size": SIZE})
        try:
            yield store, path
        finally:
            remove(path)


def sb(r: Runner, plan: Plan) -> None:
    """The SB group: a durable subscription consuming one category of 100 and acknowledging each message,
    or every hundredth, its position saved durably; logstore beside sqlite3 (a category index and a
    positions table). ``bench/subscriptions.py`` says more.

    One store per store kind and run (the CT group's build, W1's message count), consumed in a fresh
    process per mode and repetition.
    """
    n = plan.w1_messages
    for store, path in _ct_stores(r, n, "sb"):
        for _rep in range(plan.repeat):
            for mode in SB_MODES:
                res = r.run(
                    {"workload": "sb_consume", "store": store, "dir": path, "messages": n, "size": SIZE, "mode": mode}
                )
                name = f"consume/1-of-100-categories/{mode}/messages={human(n)}/size={SIZE}B/store={store}"
                r.record("SB", name, store, "msg/s", res["messages"] / res["seconds"], extra={"acks": res["acks"]})


def es_available() -> str | None:
    """None when the ES group can run (the eventsourcing library imports); else why not."""
    try:
        import eventsourcing.persistence  # noqa: F401
    except ImportError as exc:
        return f"the eventsourcing library is not installed (pip install 'logstore[eventsourcing]'): {exc}"
    return None


def pg_reachable() -> str | None:
    """None when the PostgreSQL server of the PG group answers; else why not."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc})"
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"cannot connect to {PG_URL} (set LOGSTORE_BENCH_PG to another server): {' '.join(str(exc).split())}"
    return None


# -- reporting ---------------------------------------------------------------------------------


def ratios(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """logstore against each peer, per benchmark family: how many times better logstore's median is.

    In the PG group logstore is ``pg``, its PostgreSQL backend, and the peers are the other PG stores.

    Where higher is better the ratio is logstore / peer, where lower is better (times, latencies, CPU)
    peer / logstore: above 1, logstore is better either way. ``of`` names the figure compared: the
    median of the runs; for W10's wake-up latencies, whose runs are each one p50, also the p99.
    """
    by_family: dict[str, dict[str, dict[str, Any]]] = {}
    for s in summaries:
        by_family.setdefault(s["name"].rsplit("/store=", 1)[0], {})[s["store"]] = s
    out = []
    for family, stores in by_family.items():
        us = "pg" if "pg" in stores else "logstore"
        ours = stores.get(us)
        if ours is None or ours["workload"] == "W6":
            continue
        wake = family.startswith("wake-up/") and "latency_p99" in ours
        for peer, theirs in stores.items():
            if peer == us:
                continue
            figures = [("p50" if wake else "median", ours["median"], theirs["median"])]
            if wake and "latency_p99" in theirs:
                figures.append(("p99", ours["latency_p99"], theirs["latency_p99"]))
            for of, a, b in figures:
                if min(a, b) <= 0:
                    continue  # nothing measurable (an idle reader's CPU can round to 0): no ratio
                ratio = a / b if ours["higher_is_better"] else b / a
                out.append(
                    {
                        "workload": ours["workload"],
                        "benchmark": family,
                        "of": of,
                        "peer": peer,
                        "ratio": ratio,
                        "direction": f"{us} / peer" if ours["higher_is_better"] else f"peer / {us}",
                    }
                )
    return out


def _label(x: dict[str, Any]) -> str:
    """A ratio's benchmark, with the figure it compares when that is not simply the median."""
    return x["benchmark"] if x["of"] == "median" else f"{x['benchmark']} [{x['of']}]"


def _fmt(value: float, unit: str) -> str:
    if unit in ("ms", "% of a core"):
        return f"{value:,.3g}" if value < 100 else f"{value:,.0f}"
    if unit == "s":
        return f"{value * 1e3:,.1f} ms" if value < 10 else f"{value:,.1f} s"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def text_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"logstore benchmark suite ({report['mode']}): logstore, sqlite3, LMDB and the floor on identical envelopes",
        f"machine  {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, {m['memory']}, {m['platform']}",
        f"storage  {m['filesystem']}, {m['disk']}",
        f"versions Python {m['python']}, logstore {m['logstore']}, numpy {m['numpy']}, msgpack {m['msgpack']}, "
        f"xxhash {m['xxhash']}, SQLite {m['sqlite']}, {m['lmdb']}",
        "",
    ]
    width = max((len(s["name"]) for s in report["results"]), default=len("benchmark"))
    head = f"{'benchmark':<{width}}  {'median':>12}  {'min':>12}  {'max':>12}  unit        p50 ms   p99 ms"
    workload = None
    for s in report["results"]:
        if s["workload"] != workload:
            workload = s["workload"]
            lines += ["", f"{workload}", head]
        lat = f"  {_ms(s['latency_p50']):>7}  {_ms(s['latency_p99']):>7}" if "latency_p50" in s else ""
        lines.append(
            f"{s['name']:<{width}}  {_fmt(s['median'], s['unit']):>12}  {_fmt(s['min'], s['unit']):>12}  "
            f"{_fmt(s['max'], s['unit']):>12}  {s['unit']:<10}{lat}"
        )
        extra = s.get("extra", {})
        if "samples" in extra:
            early = sum(extra["before_commit_returned"])
            lines.append(
                f"{'':<{width}}  wake-up max {_ms(s['latency_max'])} ms; {sum(extra['samples']):,} wake-ups "
                f"(readers x commits, over {len(s['runs'])} run(s)), {early:,} before commit() returned in the writer"
            )
        if "disk_bytes_per_message" in extra:
            d = statistics.median(extra["disk_bytes_per_message"])
            e = statistics.median(extra["envelope_bytes_per_message"])
            a = statistics.median(extra["allocated_bytes_per_message"])
            lines.append(f"{'':<{width}}  disk {d:,.1f} B/msg ({d / e:.2f}x envelope bytes), allocated {a:,.1f} B/msg")
        if "syncs_per_commit" in extra:
            syncs = statistics.median(extra["syncs_per_commit"])
            lines.append(f"{'':<{width}}  {syncs:.2f} fdatasync per commit (the median of the runs)")
    if "pg_settings" in report:
        settings = ", ".join(f"{k} {v}" for k, v in report["pg_settings"].items())
        lines += ["", f"PG server {report['pg_url']}: {settings}"]
    for store, values in report.get("es_settings", {}).items():
        lines.append(f"ES {store}: {', '.join(f'{k} {v}' for k, v in values.items())}")
    if "es_settings" in report and "es-sqlite" in report["es_settings"]:
        lines.append("ES wake-up vs es-sqlite: n/a (the library's SQLite recorder has no subscribe)")
    for workload, why in report.get("skipped", {}).items():
        lines += ["", f"{workload} skipped: {why}"]
    lines += [
        "",
        "ratios logstore / peer (of the medians; above 1: logstore is better; where lower is better,",
        "open times, W10 wake-up latencies and idle CPU, the ratio is peer / logstore; PG: pg / peer)",
    ]
    for x in report["ratios"]:
        lines.append(f"{x['workload']:<3}  {_label(x):<{width + 6}}  vs {x['peer']:<7} {_ratio(x['ratio']):>7}")
    return "\n".join(lines)


def pg_markdown(report: dict[str, Any], rows: dict[tuple[str, str, str], dict[str, float]]) -> list[str]:
    """The PG group's ratio table, its server's settings, and what was skipped, as Markdown lines."""
    out: list[str] = []
    pg_rows = {k: v for k, v in rows.items() if k[0] == "PG"}
    if pg_rows:
        out += [
            "",
            "### Ratios on PostgreSQL: pg / peer",
            "",
            "`pg` is logstore's PostgreSQL backend; above 1 means it is better (for the wake-up, peer / pg).",
            "",
            "| benchmark | vs pg-eventsourcing | vs pg-plain |",
            "|---|---:|---:|",
        ]
        for (_w, bench, of), peers in pg_rows.items():
            cells = [_ratio(peers[p]) if p in peers else "" for p in ("pg-eventsourcing", "pg-plain")]
            figure = "" if of == "median" else f" {of}"
            out.append(f"| `{bench}`{figure} | {cells[0]} | {cells[1]} |")
        if "pg_settings" in report:
            out += ["", "PostgreSQL server settings:", "", "| setting | value |", "|---|---|"]
            out += [f"| `{k}` | {v} |" for k, v in report["pg_settings"].items()]
    for workload, why in report.get("skipped", {}).items():
        out += ["", f"{workload} skipped: {why}"]
    return out


def es_markdown(report: dict[str, Any], rows: dict[tuple[str, str, str], dict[str, float]]) -> list[str]:
    """The ES group's ratio table and its stores' settings, as Markdown lines."""
    es_rows = {k: v for k, v in rows.items() if k[0] == "ES"}
    if not es_rows:
        return []
    out = [
        "",
        "### Ratios of the eventsourcing recorders: logstore / peer",
        "",
        "The library's application recorder on `logstore.eventsourcing` beside its SQLite module (`es-sqlite`, a",
        "database file) and its POPO module (`es-popo`, memory); above 1 means logstore is better (for the",
        "wake-up, peer / logstore). The SQLite recorder has no `subscribe`: n/a.",
        "",
        "| benchmark | vs es-sqlite | vs es-popo |",
        "|---|---:|---:|",
    ]
    for (_w, bench, of), peers in es_rows.items():
        cells = [
            _ratio(peers[p]) if p in peers else ("n/a" if bench.startswith("wake-up/") else "")
            for p in ("es-sqlite", "es-popo")
        ]
        figure = "" if of == "median" else f" {of}"
        out.append(f"| `{bench}`{figure} | {cells[0]} | {cells[1]} |")
    settings = report.get("es_settings", {})
    if settings:
        out += ["", "| store | measured under |", "|---|---|"]
        for store, values in settings.items():
            out.append(f"| {store} | {', '.join(f'{k} {v}' for k, v in values.items())} |")
    return out


def charts_markdown(images: Sequence[str]) -> list[str]:
    """The charts section of the Markdown report (``bench/plot.py`` draws them), or nothing without charts."""
    if not images:
        return []
    out = [
        "",
        "### Charts",
        "",
        "Each workload's benchmarks, the stores side by side: the bar is the median of the runs, the whisker",
        "spans the smallest to the largest run, the floor is grey. The latency charts draw each run's",
        "distribution (every second percentile, then p99, p99.9 and the maximum).",
        "",
    ]
    for path in images:
        name = os.path.splitext(os.path.basename(path))[0]
        out += [f"![{name}]({path.replace(os.sep, '/')})", ""]
    return out[:-1]


def _latency_head(workload: str) -> str:
    """The latency columns of a workload's Markdown table (PG, ES: commit latency of writes, wake-up of the
    wake-ups)."""
    if workload in ("PG", "ES"):
        return " p50 latency | p99 latency | max latency |"
    if workload == "W10":
        return " wake-up p50 | wake-up p99 | wake-up max |"
    return " commit p50 | commit p99 |"


def markdown_report(report: dict[str, Any], images: Sequence[str] = ()) -> str:
    """The report as Markdown: the machine, the charts at ``images`` (paths relative to the file), the ratios
    and every table."""
    m = report["machine"]
    out = [
        "| | |",
        "|---|---|",
        f"| CPU | {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']} |",
        f"| memory | {m['memory']} |",
        f"| system | {m['platform']} |",
        f"| storage | {m['filesystem']}; {m['disk']} |",
        f"| Python | {m['python']} |",
        f"| libraries | logstore {m['logstore']}, numpy {m['numpy']}, msgpack {m['msgpack']}, xxhash {m['xxhash']} |",
        f"| peers | SQLite {m['sqlite']} (Python's sqlite3), {m['lmdb']} |",
        f"| run | `{report.get('command', 'python -m bench')}`, {report['started']}, "
        f"{report['seconds'] / 60:.1f} min |",
        *charts_markdown(images),
        "",
        "### Ratios: logstore / peer",
        "",
        "Of the medians; above 1 means logstore is better (faster, quicker to open, quicker to wake, or using",
        "less CPU): where lower is better (times, latencies, CPU), the ratio is peer / logstore. W10's wake-up",
        "rows compare the p50 (the median of the runs' p50) and the p99. The floor (`bench/floor.py`: encode,",
        "one `pwrite` and one `fdatasync` per transaction or group; decoding from bytes in memory) is the least",
        "any store could do: logstore / floor is the share of logstore's time that this least work accounts for.",
        "",
        "| workload | benchmark | vs sqlite3 | vs LMDB | vs floor |",
        "|---|---|---:|---:|---:|",
    ]
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for x in report["ratios"]:
        rows.setdefault((x["workload"], x["benchmark"], x["of"]), {})[x["peer"]] = x["ratio"]
    for (w, bench, of), peers in rows.items():
        if w in ("PG", "ES"):
            continue
        cells = [_ratio(peers[p]) if p in peers else "" for p in ("sqlite", "lmdb", FLOOR)]
        figure = "" if of == "median" else f" {of}"
        out.append(f"| {w} | `{bench}`{figure} | {cells[0]} | {cells[1]} | {cells[2]} |")
    out += pg_markdown(report, rows)
    out += es_markdown(report, rows)
    workload = None
    for s in report["results"]:
        scanned = s.get("extra", {}).get("records_scanned")
        if s["workload"] != workload:
            workload = s["workload"]
            same = [x for x in report["results"] if x["workload"] == workload]
            latency = any("latency_p50" in x for x in same)
            last = " records scanned at open (median) |" if scanned is not None else ""
            wake = workload in ("W10", "PG", "ES")
            if latency:
                last += _latency_head(workload)
            out += [
                "",
                f"### {workload}",
                "",
                f"| benchmark | median | min | max | unit |{last}",
                "|---|---:|---:|---:|---|" + "---:|" * last.count("|"),
            ]
        tail = ""
        if scanned is not None:
            tail += f" {statistics.median(scanned):,.0f} |"
        if latency:
            p50 = f"{_ms(s['latency_p50'])} ms" if "latency_p50" in s else ""
            p99 = f"{_ms(s['latency_p99'])} ms" if "latency_p99" in s else ""
            tail += f" {p50} | {p99} |"
            if wake:
                tail += f" {_ms(s['latency_max'])} ms |" if "latency_max" in s else " |"
        out.append(
            f"| `{s['name']}` | {_fmt(s['median'], s['unit'])} | {_fmt(s['min'], s['unit'])} | "
            f"{_fmt(s['max'], s['unit'])} | {s['unit']} |{tail}"
        )
    footprints = [s for s in report["results"] if "disk_bytes_per_message" in s.get("extra", {})]
    if footprints:
        out += [
            "",
            "### Disk and memory",
            "",
            "| benchmark | peak RSS | RSS before the store opened | disk B/msg | / envelope bytes | allocated B/msg |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in footprints:
            e = s["extra"]
            d = statistics.median(e["disk_bytes_per_message"])
            env = statistics.median(e["envelope_bytes_per_message"])
            base = statistics.median(e["base_rss_mib"]) if "base_rss_mib" in e else 0.0
            rss = statistics.median(e["rss_mib"]) if "rss_mib" in e else statistics.median(e["peak_rss_mib"])
            out.append(
                f"| `{s['name']}` | {rss:,.0f} MiB | {base:,.0f} MiB | {d:,.1f} | {d / env:.2f}x | "
                f"{statistics.median(e['allocated_bytes_per_message']):,.1f} |"
            )
    return "\n".join(out) + "\n"


BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_markdown(path: str, tables: str) -> None:
    """Write ``tables`` to ``path``; into an existing file, between its ``BEGIN`` and ``END`` markers."""
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{BEGIN}\n{tables}{END}{tail}"
    else:
        text = tables
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-run sizes, one repetition (about a minute)")
    parser.add_argument("--only", help="comma-separated workloads to run, e.g. W1,W3 (default: all)")
    parser.add_argument(
        "--stores",
        default=",".join(STORES),
        help=f"comma-separated stores of {', '.join(STORES)} (default: all; the floor runs in "
        f"{', '.join(FLOOR_WORKLOADS)} only)",
    )
    parser.add_argument("--repeat", type=int, help="repetitions per measurement (default 1 quick, 5 full)")
    parser.add_argument("--dir", default=".", help="where to make the store directories (default: here, a real disk)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    parser.add_argument(
        "--markdown",
        help="also write the tables as Markdown to this file (between its results markers if it has them, "
        "as bench/RESULTS.md does)",
    )
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="also draw the charts as PNG files in DIR (matplotlib: pip install 'logstore[bench]'); with "
        "--markdown, the report shows them above its tables",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="name each process as it starts (stderr)")
    args = parser.parse_args(argv)
    want = set(WORKLOADS) if args.only is None else {w.strip().upper() for w in args.only.split(",")}
    unknown = want - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; expected some of {', '.join(WORKLOADS)}")
    stores = [s.strip() for s in args.stores.split(",")]
    if "logstore" not in stores or set(stores) - set(STORES):
        parser.error(f"--stores must include logstore and name only {', '.join(STORES)}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.plot:
        try:
            plot.pyplot()  # before the run, not after it
        except plot.PlotUnavailable as exc:
            parser.error(str(exc))
    args.want, args.store_list = want, stores
    return args


def run_command(args: argparse.Namespace) -> str:
    """The command line of this run, the options that choose what it measures only (not where or how it reports)."""
    words = ["python -m bench"]
    if args.quick:
        words.append("--quick")
    if args.only is not None:
        words.append(f"--only {args.only}")
    if args.store_list != list(STORES):
        words.append(f"--stores {','.join(args.store_list)}")
    if args.repeat is not None:
        words.append(f"--repeat {args.repeat}")
    return " ".join(words)


def run_workloads(
    r: Runner, plan: Plan, want: set[str], stores: Sequence[str], skipped: dict[str, str]
) -> dict[str, str]:
    """Run the workloads in ``want``; the PG server's settings if the PG group ran, else {}.

    A group that cannot run (PG without its server, ES without the eventsourcing library) is named in
    ``skipped`` with the reason, and said on stderr.
    """
    floor = FLOOR in stores
    peers = [s for s in stores if s != FLOOR]
    if want & {"W1", "W3", "W6"}:
        # The floor runs for W1 and W3 only, not for W6's footprint alone.
        w1_w3_w6(r, plan, stores if floor and want & {"W1", "W3"} else peers, want)
    if "W2" in want:
        w2(r, plan, stores)
    if want & {"W4", "W6"}:
        w4_w6(r, plan, stores if floor and "W4" in want else peers, want)
    if want & {"W5", "W6"}:
        w5(r, plan, want)
    if "W7" in want:
        w7(r, plan, peers)
    if "W8" in want:
        w8(r, plan, peers)
    if "W9" in want:
        w9(r, plan, peers)
    if "W10" in want:
        w10(r, plan, peers)
    if "ID" in want:
        idem(r, plan)
    if "CT" in want:
        ct(r, plan)
    if "SB" in want:
        sb(r, plan)
    return run_groups(r, plan, want, skipped)


def run_groups(r: Runner, plan: Plan, want: set[str], skipped: dict[str, str]) -> dict[str, str]:
    """The groups PG and ES of ``want`` that can run; each that cannot is named in ``skipped``, saying why.

    Returns the PG server's settings if the PG group ran, else {}.
    """
    settings: dict[str, str] = {}
    for group, why in (("PG", pg_reachable), ("ES", es_available)):
        if group not in want:
            continue
        reason = why()
        if reason is not None:
            skipped[group] = reason
            print(f"{group} skipped: {reason}", file=sys.stderr)
        elif group == "PG":
            settings = pg_settings()
            pg(r, plan)
        else:
            es(r, plan)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.repeat is not None:
        plan = Plan(**{**plan.__dict__, "repeat": args.repeat, "pg_repeat": args.repeat, "es_repeat": args.repeat})
    os.makedirs(args.dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="logstore-bench-", dir=args.dir)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    r = Runner(base, args.verbose)
    want, stores = args.want, args.store_list
    skipped: dict[str, str] = {}
    try:
        settings = run_workloads(r, plan, want, stores, skipped)
        machine = machine_facts(base)
    finally:
        if "PG" in want and "PG" not in skipped and pg_reachable() is None:
            pg_drop_schemas(pg_schema_prefix(base))  # what a failed run left
        shutil.rmtree(base, ignore_errors=True)
    summaries = sorted((res.summary() for res in r.results.values()), key=lambda s: WORKLOADS.index(s["workload"]))
    report = {
        "mode": "quick" if args.quick else "full",
        "command": run_command(args),
        "plan": plan.__dict__,
        "started": started,
        "seconds": time.perf_counter() - t0,
        "machine": machine,
        "results": summaries,
        "ratios": ratios(summaries),
    }
    if settings:
        # The prefix of this run's schemas, all dropped by now (the smoke test checks it).
        report.update(pg_url=PG_URL, pg_settings=settings, pg_schema_prefix=pg_schema_prefix(base))
    if r.es_settings:
        report["es_settings"] = r.es_settings
    if skipped:
        report["skipped"] = skipped
    charts = plot.draw(report, args.plot) if args.plot else []
    for path in charts:
        print(f"wrote {path}", file=sys.stderr)
    if args.markdown:
        here = os.path.dirname(os.path.abspath(args.markdown))
        images = [os.path.relpath(os.path.abspath(path), here) for path in charts]
        write_markdown(args.markdown, markdown_report(report, images))
    print(json.dumps(report, indent=1) if args.json else text_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
