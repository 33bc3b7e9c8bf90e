"""``logstore compact DIR``: erase what truncation, deletion and retention removed; report bytes reclaimed.

Opens the store for writing, beside any other writer processes (exit 2 while
``logstore repair`` holds it); one compaction runs at a time across processes.
Retention options given here apply before the
rewrite, as they would at open. The active segment is rolled first when it
holds a removed message (``--no-roll`` leaves it). The report ends with every
segment file that still holds removed envelopes, with the count and why, and
the files of ``lost+found/``, which compaction does not touch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

import logstore
from logstore.embedded import layout
from logstore.embedded.store import MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, check_retention
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE, SegmentHeader
from logstore.tools.progress import progress
from logstore.tools.storedir import add_command, fail, print_json


def add_parser(sub: Any) -> None:
    p = add_command(
        sub, "compact", "erase removed messages from the segment files (beside live writers)", run, store_dir=True
    )
    p.add_argument("--retention-age", type=float, metavar="SECONDS", help="also drop segments older than this")
    p.add_argument("--retention-bytes", type=int, metavar="BYTES", help="also drop the oldest segments past this size")
    p.add_argument(
        "--no-roll",
        dest="roll",
        action="store_false",
        help="leave the active segment as it is, even if it holds removed messages (reported as not reached)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _segment_size(directory: str) -> int | None:
    """The capacity of the store's newest segment, or ``None`` if it cannot be read (the open then says why).

    The store is opened with it, so that the segment a roll creates is like the store's others, not
    of the default size.
    """
    seg_dir = layout.segments_dir(directory)
    try:
        names = sorted(n for n in os.listdir(seg_dir) if n.endswith(layout.SEGMENT_EXT))
        if not names:
            return None
        with open(os.path.join(seg_dir, names[-1]), "rb") as f:
            header = SegmentHeader.decode(f.read(HEADER_SIZE))
    except (OSError, FormatError):
        return None
    return header.capacity if MIN_SEGMENT_SIZE <= header.capacity <= MAX_SEGMENT_SIZE else None


def run(args: argparse.Namespace) -> int:
    try:
        check_retention(args.retention_age, args.retention_bytes)  # before the open marks the store in use
        size = _segment_size(args.dir)
        store = logstore.open(args.dir) if size is None else logstore.open(args.dir, segment_size=size)
    except (logstore.LogStoreError, OSError, ValueError, TypeError) as exc:
        return fail("compact", exc)
    try:
        with progress(max(0, len(store._log.segments) - 1), "compact", enabled=False if args.json else None) as bar:
            done = 0

            def step(n: int, _total: int) -> None:
                nonlocal done
                bar.update(n - done)
                done = n

            report = store.compact(
                step, retention_age=args.retention_age, retention_bytes=args.retention_bytes, roll=args.roll
            )
        store.close()
    except (logstore.LogStoreError, OSError, ValueError, TypeError) as exc:
        code = fail("compact", exc)
        with contextlib.suppress(logstore.LogStoreError, OSError):
            store.close()
        return code
    unreached = [
        {"segment": os.path.relpath(u.path, args.dir), "messages": u.messages, "reason": u.reason}
        for u in report.unreached
    ]
    lost_found = [os.path.relpath(p, args.dir) for p in report.lost_found]
    if args.json:
        print_json(
            report,
            "path segments_rewritten segments_dropped messages_removed bytes_before bytes_after "
            "bytes_reclaimed rolled erased unreached lost_found",
            path=args.dir,
            rolled=None if report.rolled is None else os.path.relpath(report.rolled, args.dir),
            unreached=unreached,
            lost_found=lost_found,
        )
    else:
        rolled = "" if report.rolled is None else f" (rolled the active segment {os.path.basename(report.rolled)})"
        print(
            f"{args.dir}: rewrote {report.segments_rewritten:,} segment(s){rolled}, "
            f"dropped {report.segments_dropped:,}, removed {report.messages_removed:,} message(s); "
            f"{report.bytes_before:,} -> {report.bytes_after:,} bytes ({report.bytes_reclaimed:,} reclaimed)"
        )
        for u in unreached:
            print(f"not reached: {u['segment']}: {u['messages']:,} removed message(s) still there: {u['reason']}")
        if lost_found:
            print(
                f"not reached: lost+found/ holds {len(lost_found)} file(s) cut from the log by recovery or repair; "
                "compaction does not touch them (inspect, then delete them yourself)"
            )
    return 0
