"""``logstore repair DIR``: cut torn tails, salvage what follows damage, rebuild every index.

Takes ``LOCK`` exclusively (exit 2 while any process has the store open). Everything removed goes
to ``lost+found/`` with a manifest. The store is verified afterwards: exit 0
when it is whole (or was already), 1 when problems are left, 2 for usage
errors, a locked store, an unknown format version or an I/O error. ``--dry-run`` prints the plan and changes
nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from logstore.embedded.repair import repair
from logstore.embedded.verify import verify
from logstore.errors import LogStoreError
from logstore.tools.storedir import add_command, fail, print_json


def add_parser(sub: Any) -> None:
    flags = {
        "--dry-run": "say what would be done; change nothing",
        "--json": "print one JSON object (counts as plain integers)",
    }
    add_command(sub, "repair", "salvage a damaged store (needs the store to itself)", run, store_dir=True, flags=flags)


def run(args: argparse.Namespace) -> int:
    try:
        report = repair(args.dir, dry_run=args.dry_run)
        after = None if args.dry_run or not report.changed else verify(args.dir)
    except (LogStoreError, OSError) as exc:
        return fail("repair", exc)
    left = [] if after is None else [str(p) for p in after.problems]
    if args.json:
        print_json(
            report,
            "path dry_run changed actions records_kept records_lost bytes_moved lost_offsets lost_found "
            "derived problems_left",
            problems_left=left,
        )
    else:
        prefix = "would " if report.dry_run and report.changed else ""
        for action in report.actions:
            print(f"{prefix}{action}")
        for name, offs in report.lost_offsets.items():
            print(f"stream {name!r}: offsets {_ranges(offs)} lost (their bytes are in lost+found)")
        if report.changed:
            print(
                f"{args.dir}: {'plan' if report.dry_run else 'repaired'}: {report.records_kept:,} records kept, "
                f"{report.records_lost:,} global offsets marked lost, {report.bytes_moved:,} bytes to lost+found"
            )
        for p in left:
            print(f"PROBLEM left after repair: {p}")
    return 1 if left else 0


def _ranges(offs: list[int]) -> str:
    out: list[str] = []
    start = prev = offs[0]
    for o in [*offs[1:], -1]:
        if o == prev + 1:
            prev = o
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = o
    return ", ".join(out)
