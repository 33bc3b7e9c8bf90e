"""``logstore verify DIR|URL``: check every checksum and invariant of a store, read-only.

Exit 0 clean, 1 problems found (each printed with file and byte position, or for a PostgreSQL
store with its global offset, stream and offset), 2 usage or I/O error. Safe on a live store. On a
terminal (stdout and stderr), and not with ``--json``, a progress bar counts the records walked.
A ``postgresql://`` URL (with ``--schema``) is checked by :func:`logstore.postgres.inspect.verify`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from logstore.embedded.verify import verify
from logstore.tools.progress import progress
from logstore.tools.storedir import add_command, add_schema_option, fail, print_json, url_schema


def add_parser(sub: Any) -> None:
    flags = {"--json": "print one JSON object", "--no-decode": "skip decoding envelopes (checksums are still checked)"}
    p = add_command(
        sub,
        "verify",
        "check every checksum and invariant (read-only)",
        run,
        "store directory or postgresql:// URL",
        store_dir=True,
        flags=flags,
        urls=True,
    )
    add_schema_option(p)


def run(args: argparse.Namespace) -> int:
    schema = url_schema(args)
    if schema is not None:
        return run_url(args, schema)
    try:
        with progress(None, "verifying", enabled=False if args.json else None) as bar:
            result = verify(args.dir, decode_envelopes=not args.no_decode, progress=bar.advance_to)
    except OSError as exc:
        return fail("verify", f"{args.dir}: {exc}")
    if args.json:
        print_json(
            result,
            "path ok live segments records streams transactions messages removed lost control log_start problems notes",
            problems=[{"file": p.path, "position": p.position, "what": p.what} for p in result.problems],
        )
    else:
        state = _print_findings(result.problems, result.notes)
        print(
            f"{args.dir}: {state}: {result.segments:,} segments, {result.records:,} records "
            f"({result.messages:,} readable messages, {result.removed:,} removed, {result.lost:,} lost, "
            f"{result.control:,} control), {result.transactions:,} transactions, {result.streams:,} streams, "
            f"log start {result.log_start:,}"
        )
    return 0 if result.ok else 1


def _print_findings(problems: Sequence[object], notes: Sequence[str]) -> str:
    """Print each problem and note, one per line; return the state the summary line begins with."""
    for p in problems:
        print(f"PROBLEM {p}")
    for note in notes:
        print(f"note    {note}")
    return f"{len(problems):,} problem(s)" if problems else "clean"


def run_url(args: argparse.Namespace, schema: str) -> int:
    from logstore.postgres.inspect import URL_ERRORS  # noqa: PLC0415 - psycopg is an optional extra
    from logstore.postgres.inspect import verify as verify_pg  # noqa: PLC0415

    try:
        with progress(None, "verifying", enabled=False if args.json else None) as bar:
            result = verify_pg(args.dir, schema, decode_envelopes=not args.no_decode, progress=bar.advance_to)
    except URL_ERRORS as exc:
        return fail("verify", exc)
    if args.json:
        print_json(
            result,
            "path ok rows messages removed control streams global_head gaps problems notes",
            problems=[
                {"global_offset": p.goff, "stream": p.stream, "offset": p.offset, "what": p.what}
                for p in result.problems
            ],
        )
    else:
        state = _print_findings(result.problems, result.notes)
        print(
            f"{result.path}: {state}: {result.rows:,} rows ({result.messages:,} readable messages, "
            f"{result.removed:,} removed, {result.control:,} control), {result.gaps:,} compacted global offsets, "
            f"{result.streams:,} streams, global head {result.global_head:,}"
        )
    return 0 if result.ok else 1
