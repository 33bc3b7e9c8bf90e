"""``logstore stats DIR|URL``: segments, streams, messages, records by kind, holes, processes and subscriptions.

Opens the store with ``readonly=True`` (safe beside a live writer; it counts
the log as it was when it started) and walks every record, checking each
checksum without decoding envelopes. Prints a table, or with ``--json`` one
JSON object (the keys of :func:`logstore.embedded.inspect.store_stats`). Exit 0, or 2
with a message on stderr: not a store, damage (file and byte position) or an
unknown format version. Each durable subscription is listed with each member's position and lag (the
messages it would be given: read from the lowest position). A ``postgresql://`` URL (with
``--schema``) gets the same kind of summary (:func:`logstore.postgres.inspect.store_stats`):
streams, rows by kind, readable messages, holes, subscriptions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import logstore
from logstore.embedded.inspect import store_stats
from logstore.errors import CorruptionError, LogStoreError
from logstore.subscriptions import subscription_stats
from logstore.tools.dump import describe, open_readonly, quiet_broken_pipe
from logstore.tools.progress import progress
from logstore.tools.storedir import add_command, add_schema_option, fail, url_schema


def add_parser(sub: Any) -> None:
    what = "count segments, streams, messages and holes (read-only; safe on a live store)"
    p = add_command(
        sub,
        "stats",
        what,
        run,
        "store directory or postgresql:// URL",
        flags={"--json": "print one JSON object"},
        urls=True,
    )
    add_schema_option(p)


def run(args: argparse.Namespace) -> int:
    schema = url_schema(args)
    if schema is not None:
        return run_url(args, schema)
    store = open_readonly(args.dir)
    try:
        total = store.global_head - store.log_start
        with store, progress(total, "reading records", enabled=False if args.json else None) as bar:
            stats = store_stats(store, bar.update)
            stats["subscriptions"] = subscription_stats(store, store.subscriptions())
    except CorruptionError as exc:
        return fail("stats", describe(exc))
    except LogStoreError as exc:
        return fail("stats", f"{args.dir}: {exc}")
    try:
        if args.json:
            print(json.dumps(stats, indent=2))
        else:
            print(format_stats(stats))
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()
    return 0


def run_url(args: argparse.Namespace, schema: str) -> int:
    from logstore.postgres import inspect as pg  # noqa: PLC0415 - psycopg is an optional extra

    try:
        stats = pg.store_stats(args.dir, schema)
        with logstore.open(args.dir, schema=schema, readonly=True) as store:
            stats["subscriptions"] = subscription_stats(store, store.subscriptions())
    except pg.URL_ERRORS as exc:
        return fail("stats", exc)
    try:
        print(json.dumps(stats, indent=2) if args.json else format_pg_stats(stats))
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()
    return 0


def format_pg_stats(s: dict[str, Any]) -> str:
    """The readable table of a :func:`logstore.postgres.inspect.store_stats` result."""
    st, rec, holes, head = s["streams"], s["records"], s["holes"], s["global_head"]
    marker = s["migration"]
    rows = [
        ("store", s["path"]),
        ("log", f"global offsets 0 to {_n(head - 1)}" if head else "no records"),
        ("table", f"{_n(s['table_bytes'])} bytes (log, with its indexes and TOAST)"),
        (
            "streams",
            f"{_n(st['total'])} total, {_n(st['live'])} live, {_n(st['deleted'])} deleted, "
            f"{_n(st['truncated'])} truncated",
        ),
        ("messages", f"{_n(s['messages']['readable'])} readable"),
        (
            "records",
            f"{_n(rec['total'])} rows: message {_n(rec['message'])}, truncate {_n(rec['truncate'])}, "
            f"delete {_n(rec['delete'])}",
        ),
        (
            "holes",
            f"{_n(holes['awaiting_compaction'])} removed messages awaiting compaction "
            f"({_n(holes['reclaimable_bytes'])} bytes), {_n(holes['compacted'])} compacted global offsets",
        ),
        (
            "migration",
            "none" if marker is None else f"unfinished copy from {marker['where']} (began {marker['started_at']})",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    summary, members = _subscriptions(s["subscriptions"])
    rows.append(("subscriptions", summary))  # longer than the other names: it does not widen their column
    return "\n".join([f"{name:<{width}}  {value}" for name, value in rows] + members)


def _subscriptions(subs: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The subscriptions' summary, and their lines: one per subscription, then one per member (position, lag)."""
    lines: list[str] = []
    for sub in subs:
        reads = "the whole log" if sub["category"] is None else f"category {sub['category']!r}"
        if sub["types"] is not None:
            reads += ", types " + ", ".join(sub["types"])
        members = sub["members"]
        lines.append(f"  {sub['name']!r}: {reads}; {len(members)} member{'s' if len(members) > 1 else ''}")
        for m in members:
            lines.append(f"    member {m['member']}: position {_n(m['position'])}, lag {_n(m['lag'])}")
    return (
        f"{len(subs)}, with each member's position and lag (messages not yet acknowledged)" if subs else "none"
    ), lines


def _n(value: int) -> str:
    return f"{value:,}"


def _processes(procs: list[dict[str, Any]]) -> str:
    """The processes that have the store open, one phrase each (this command's own read-only open last)."""
    if not procs:
        return "unknown (the control file could not be joined)"
    parts = []
    for p in sorted(procs, key=lambda p: (p["this"], p["opened_ns"])):
        mode = p["mode"] + (f" ({p['durability']})" if p["durability"] else "")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["opened_ns"] / 1e9))
        parts.append(f"pid {p['pid']} {mode} since {since}" + (" (this command)" if p["this"] else ""))
    return f"{len(procs)}: " + "; ".join(parts)


def format_stats(s: dict[str, Any]) -> str:
    """The readable table of a :func:`store_stats` result."""
    ck = s["checkpoint"]
    st = s["streams"]
    rec = s["records"]
    holes = s["holes"]
    segs = s["segments"]
    start, head = s["log_start"], s["global_head"]
    offsets = f"global offsets {_n(start)} to {_n(head - 1)}" if head > start else "no records"
    kinds = ", ".join(f"{kind} {_n(count)}" for kind, count in rec.items() if kind != "total")
    rows = [
        ("store", s["path"]),
        (
            "checkpoint",
            f"generation {ck['generation']}, next global offset {_n(ck['next_global_offset'])}, "
            + ("clean" if ck["clean"] else "not clean (the store was open or did not close)"),
        ),
        ("recovery", s["recovery"]["summary"]),
        (
            "log",
            f"{offsets}, {_n(s['log_bytes'])} record bytes in {len(segs)} segment(s), "
            f"{_n(s['disk_bytes'])} bytes on disk",
        ),
        (
            "streams",
            f"{_n(st['total'])} total, {_n(st['live'])} live, {_n(st['deleted'])} deleted, "
            f"{_n(st['truncated'])} truncated, {_n(st['large'])} large",
        ),
        ("messages", f"{_n(s['messages']['readable'])} readable"),
        ("records", f"{_n(rec['total'])}: {kinds}"),
        ("processes", _processes(s.get("processes", []))),
        (
            "holes",
            f"{_n(holes['awaiting_compaction'])} removed messages awaiting compaction "
            f"({_n(holes['reclaimable_bytes'])} bytes), {_n(holes['removed'])} removed records, "
            f"{_n(holes['lost'])} lost records",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    summary, members = _subscriptions(s["subscriptions"])
    rows.append(("subscriptions", summary))  # longer than the other names: it does not widen their column
    lines = [f"{name:<{width}}  {value}" for name, value in rows] + members
    lines.append("")
    header = ("segment", "first", "records", "bytes", "capacity")
    table = [header] + [
        (seg["file"], _n(seg["first"]), _n(seg["records"]), _n(seg["bytes"]), _n(seg["capacity"])) for seg in segs
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
