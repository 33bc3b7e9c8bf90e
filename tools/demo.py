"""``logstore demo DIR``: write a realistic workload, read it back, tail it, verify, and report speeds.

The workload is an order-processing saga: each order is a stream
(``order-<n>``) that receives ``OrderPlaced``, then ``PaymentTaken`` and
``OrderShipped`` in later transactions, while an outbox transaction appends
to a shared ``outbox`` stream. A second thread tails the global stream the
whole time, as a projection would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from typing import Any

import logstore
from logstore import Envelope
from logstore.embedded.verify import verify
from logstore.tools.storedir import add_command, fail


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "demo",
        "write a sample workload into DIR and report speeds",
        run,
        "store directory (created; must be new or empty)",
    )
    p.add_argument("--orders", type=int, default=20_000, help="order streams to write (default 20000)")
    p.add_argument("--batch", type=int, default=100, help="orders placed per transaction (default 100)")
    p.add_argument("--durability", choices=("fsync", "batch", "none"), default="fsync")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "n/a"


# Long on purpose: the demo's steps, one after another as it prints them.
def run(args: argparse.Namespace) -> int:  # noqa: PLR0912, PLR0915
    if args.orders <= 0 or args.batch <= 0:
        return fail("demo", "--orders and --batch must be positive")
    if os.path.exists(args.dir) and not os.path.isdir(args.dir):
        return fail("demo", f"{args.dir}: not a directory")
    if os.path.exists(args.dir) and os.listdir(args.dir):
        return fail("demo", f"{args.dir} is not empty; give a new directory")
    rng = random.Random(42)
    skus = [f"SKU-{i:04d}" for i in range(500)]
    try:
        store = logstore.open(args.dir, durability=args.durability, segment_size=64 * 2**20)
    except (OSError, logstore.LogStoreError, ValueError) as exc:
        return fail("demo", exc)
    tail_seen = 0
    tail_done = threading.Event()
    expected_total = [0]

    def tail() -> None:
        nonlocal tail_seen
        stream = store.open_global(store, 0)
        with stream:
            while True:
                try:
                    stream.next(timeout=5)
                except (TimeoutError, logstore.StreamClosedError):
                    break
                tail_seen += 1
                if expected_total[0] and tail_seen >= expected_total[0]:
                    break
        tail_done.set()

    tailer = threading.Thread(target=tail, name="demo-tail")
    tailer.start()
    written = 0
    payload_bytes = 0
    started = time.perf_counter()
    placed: list[Envelope] = []
    for first in range(0, args.orders, args.batch):
        with store.transaction() as tx:
            for n in range(first, min(first + args.batch, args.orders)):
                env = Envelope.new(
                    "OrderPlaced",
                    {
                        "order": n,
                        "customer": f"C-{rng.randrange(100_000):06d}",
                        "lines": [{"sku": rng.choice(skus), "qty": rng.randint(1, 5)} for _ in range(3)],
                        "note": "leave at the door" if n % 7 == 0 else "",
                    },
                )
                placed.append(env)
                store.append_messages(tx, f"order-{n}", 0, [env])
                written += 1
    place_s = time.perf_counter() - started
    t1 = time.perf_counter()
    outbox = 0
    for first in range(0, args.orders, args.batch):
        with store.transaction() as tx:
            for n in range(first, min(first + args.batch, args.orders)):
                root = placed[n]
                paid = root.new_child("PaymentTaken", {"order": n, "amount_cents": rng.randint(500, 50_000)})
                shipped = paid.new_child("OrderShipped", {"order": n, "carrier": rng.choice(["DHL", "UPS", "PostNL"])})
                store.append_messages(tx, f"order-{n}", 1, [paid, shipped])
                written += 2
            batch = [Envelope.new("Notify", {"orders": list(range(first, min(first + args.batch, args.orders)))})]
            store.append_messages(tx, "outbox", outbox, batch)
            outbox += 1
            written += 1
    follow_s = time.perf_counter() - t1
    expected_total[0] = written
    write_s = time.perf_counter() - started
    if not tail_done.wait(timeout=60):
        print("logstore demo: the global tail did not see every message within 60 s", file=sys.stderr)
    # Read back whole order streams, as an event-sourced aggregate load would.
    t2 = time.perf_counter()
    loads = min(5_000, args.orders)
    loaded = 0
    for n in rng.sample(range(args.orders), loads):
        stream, found = store.open_stream(store, f"order-{n}", 0)
        with stream:
            events = [env.type for env in stream]
        if events != ["OrderPlaced", "PaymentTaken", "OrderShipped"] or not found:
            print(f"logstore demo: order-{n} read back as {events}", file=sys.stderr)
            return 1
        loaded += len(events)
    load_s = time.perf_counter() - t2
    # Scan the whole log in global order, decoding every envelope.
    t3 = time.perf_counter()
    scanned = 0
    with store.open_global(store, 0) as everything:
        for env in everything:
            payload_bytes += len(env.type)
            scanned += 1
    scan_s = time.perf_counter() - t3
    store.close()
    tailer.join()
    t4 = time.perf_counter()
    result = verify(args.dir)
    verify_s = time.perf_counter() - t4
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _d, fs in os.walk(args.dir) for f in fs)
    ok = result.ok and tail_seen == written and scanned == written
    followed = written - args.orders
    if args.json:
        out = {
            "path": args.dir,
            "durability": args.durability,
            "ok": ok,
            "orders": args.orders,
            "place_seconds": place_s,
            "followed": followed,
            "follow_seconds": follow_s,
            "tailed": tail_seen,
            "streams_loaded": loads,
            "messages_loaded": loaded,
            "load_seconds": load_s,
            "scanned": scanned,
            "scan_seconds": scan_s,
            "verified_records": result.records,
            "verify_seconds": verify_s,
            "clean": result.ok,
            "problems": [str(p) for p in result.problems],
            "disk_bytes": size,
            "write_seconds": write_s,
        }
        print(json.dumps(out, indent=2))
        return 0 if ok else 1
    print(f"logstore demo in {args.dir} (durability={args.durability})")
    print(f"  placed   {args.orders:>9,} orders in {place_s:6.2f} s  {_rate(args.orders, place_s):>12} msgs")
    print(f"  followed {followed:>9,} msgs   in {follow_s:6.2f} s  {_rate(followed, follow_s):>12} msgs")
    print(f"  tailed   {tail_seen:>9,} msgs   in the global stream, in a second thread, while writing")
    print(
        f"  loaded   {loads:>9,} order streams ({loaded:,} msgs) in {load_s:6.2f} s  {_rate(loaded, load_s):>12} msgs"
    )
    print(f"  scanned  {scanned:>9,} msgs   in {scan_s:6.2f} s  {_rate(scanned, scan_s):>12} msgs")
    print(f"  verified {result.records:>9,} records in {verify_s:6.2f} s: {'clean' if result.ok else 'PROBLEMS'}")
    print(f"  store    {size / 2**20:9.1f} MiB on disk (segment files grow in steps ahead of the writer)")
    print(f"  total write time {write_s:.2f} s")
    for p in result.problems:
        print(f"PROBLEM {p}")
    return 0 if ok else 1
