"""``logstore compact DIR``: drop what truncation, deletion and retention removed; report bytes reclaimed.

Takes the writer lock (exit 2 if a writer holds it: on an open store, call
``store.compact()`` instead). Retention options given here apply before the
rewrite, as they would at open.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

import logstore
from logstore.store import check_retention
from tools.progress import progress
from tools.storedir import store_dir_problem


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "compact", help="rewrite sealed segments without removed messages (takes the writer lock)"
    )
    p.add_argument("dir", help="store directory")
    p.add_argument("--retention-age", type=float, metavar="SECONDS", help="also drop segments older than this")
    p.add_argument("--retention-bytes", type=int, metavar="BYTES", help="also drop the oldest segments past this size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    problem = store_dir_problem(args.dir)
    if problem is not None:
        print(f"logstore compact: {problem}", file=sys.stderr)
        return 2
    try:
        check_retention(args.retention_age, args.retention_bytes)  # before the open marks the store in use
        store = logstore.open(args.dir)
    except (logstore.LogStoreError, OSError, ValueError, TypeError) as exc:
        print(f"logstore compact: {exc}", file=sys.stderr)
        return 2
    try:
        with progress(max(0, len(store._log.segments) - 1), "compact", enabled=False if args.json else None) as bar:
            done = 0

            def step(n: int, _total: int) -> None:
                nonlocal done
                bar.update(n - done)
                done = n

            report = store.compact(step, retention_age=args.retention_age, retention_bytes=args.retention_bytes)
        store.close()
    except (logstore.LogStoreError, OSError, ValueError, TypeError) as exc:
        print(f"logstore compact: {exc}", file=sys.stderr)
        with contextlib.suppress(logstore.LogStoreError, OSError):
            store.close()
        return 2
    if args.json:
        out = {
            "path": args.dir,
            "segments_rewritten": report.segments_rewritten,
            "segments_dropped": report.segments_dropped,
            "messages_removed": report.messages_removed,
            "bytes_before": report.bytes_before,
            "bytes_after": report.bytes_after,
            "bytes_reclaimed": report.bytes_reclaimed,
        }
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{args.dir}: rewrote {report.segments_rewritten:,} segment(s), dropped {report.segments_dropped:,}, "
            f"removed {report.messages_removed:,} message(s); {report.bytes_before:,} -> {report.bytes_after:,} "
            f"bytes ({report.bytes_reclaimed:,} reclaimed)"
        )
    return 0
