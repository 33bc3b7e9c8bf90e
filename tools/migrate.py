"""``logstore migrate SRC DST``: copy a store between a directory and PostgreSQL, record for record.

SRC and DST are each a store directory or a ``postgresql://`` URL (``--schema``, or
``--src-schema``/``--dst-schema`` when both are URLs). Every global offset, stream offset,
truncation, deletion and envelope byte is kept (:mod:`logstore.migration`), and the durable
subscriptions with their positions; the copy is compared with the source at the end and the first
difference, if any, is named with its global offset.

Exit 0: copied and checked. 1: the copy differs from the source (it stays marked as unfinished).
2: usage, a destination that is not empty (and not an unfinished copy of SRC), a source the
destination cannot hold, or an I/O or connection error. Run again after an interruption: the copy
goes on where the destination ends. On a terminal a progress bar counts global offsets; ``--json``
prints one JSON object instead of the summary.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from logstore.errors import CorruptionError, LogStoreError
from logstore.migration import BATCH_RECORDS, Destination, MigrateReport, MigrationError, Source, migrate
from logstore.tools.dump import describe, whole_number
from logstore.tools.progress import progress
from logstore.tools.storedir import DEFAULT_SCHEMA, ToolError, fail, is_url, print_json, store_dir_problem

REPORT_FIELDS = (
    "source destination resumed_at global_head records messages control removed payload_bytes batches streams"
    " subscriptions copy_seconds verify_seconds verified difference"
)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "migrate",
        help="copy a store between a directory and PostgreSQL, offsets and envelope bytes kept; resumable",
    )
    p.add_argument("src", metavar="SRC", help="the source: a store directory or a postgresql:// URL")
    p.add_argument("dst", metavar="DST", help="the destination: a new or empty store directory, or a postgresql:// URL")
    p.add_argument("--schema", default=None, help=f"the schema of a URL (default {DEFAULT_SCHEMA})")
    p.add_argument("--src-schema", default=None, help="the source URL's schema (default --schema)")
    p.add_argument("--dst-schema", default=None, help="the destination URL's schema (default --schema)")
    p.add_argument(
        "--segment-size", type=whole_number, default=None, metavar="BYTES", help="segment size of a new store directory"
    )
    p.add_argument(
        "--batch",
        type=whole_number,
        default=BATCH_RECORDS,
        metavar="N",
        help=f"records per destination transaction, rounded up to whole transactions (default {BATCH_RECORDS})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def _schema(args: argparse.Namespace, path: str, own: str | None, option: str) -> str | None:
    schema = own if own is not None else args.schema
    if not is_url(path):
        if own is not None:
            raise ToolError(f"{option} is an option of a postgresql:// URL, and {path} is a directory")
        return None
    return schema or DEFAULT_SCHEMA


def open_source(path: str, schema: str | None) -> tuple[Source, Any]:
    """The source and what to close after the copy."""
    if schema is not None:
        from logstore.postgres.migration import PgSource  # noqa: PLC0415 - psycopg is an optional extra

        try:
            pg = PgSource(path, schema)
        except FileNotFoundError as exc:
            raise ToolError(str(exc)) from None
        return pg, pg
    problem = store_dir_problem(path)
    if problem is not None:
        raise ToolError(problem)
    import logstore  # noqa: PLC0415
    from logstore.embedded.export import EmbeddedSource  # noqa: PLC0415

    store = logstore.open(path, readonly=True)
    return EmbeddedSource(store), store


def open_destination(path: str, schema: str | None, segment_size: int | None) -> Destination:
    if schema is not None:
        if segment_size is not None:
            raise ToolError("--segment-size is an option of a store directory, and the destination is a URL")
        from logstore.postgres.migration import PgDestination  # noqa: PLC0415

        return PgDestination(path, schema)
    from logstore.embedded.importer import EmbeddedDestination  # noqa: PLC0415

    return EmbeddedDestination(path, segment_size)


def run(args: argparse.Namespace) -> int:
    try:
        src_schema = _schema(args, args.src, args.src_schema, "--src-schema")
        dst_schema = _schema(args, args.dst, args.dst_schema, "--dst-schema")
        if args.schema is not None and src_schema is None and dst_schema is None:
            raise ToolError("--schema is an option of a postgresql:// URL, and neither SRC nor DST is one")
        if src_schema is None and dst_schema is None and os.path.realpath(args.src) == os.path.realpath(args.dst):
            raise ToolError(f"{args.dst}: the destination is the source")
        return _run(args, src_schema, dst_schema)
    except ToolError as exc:
        return fail("migrate", exc)
    except CorruptionError as exc:
        return fail("migrate", describe(exc))
    except (MigrationError, LogStoreError, OSError, ValueError) as exc:
        return fail("migrate", exc)
    except Exception as exc:  # psycopg's own errors (an optional extra, so not imported here)
        if type(exc).__module__.startswith("psycopg"):
            return fail("migrate", f"the server refused: {exc}")
        raise


def _run(args: argparse.Namespace, src_schema: str | None, dst_schema: str | None) -> int:
    source, closing = open_source(args.src, src_schema)
    try:
        destination = open_destination(args.dst, dst_schema, args.segment_size)
        try:
            with progress(None, "copying", enabled=False if args.json else None, unit="offsets") as bar:
                report = migrate(source, destination, progress=bar.advance_to, max_records=max(1, args.batch))
        finally:
            destination.close()
    finally:
        closing.close()
    print_report(report, args.json)
    return 0 if report.verified else 1


def print_report(report: MigrateReport, as_json: bool) -> None:
    diff = report.difference
    if as_json:
        print_json(
            report,
            REPORT_FIELDS,
            copy_seconds=round(report.copy_seconds, 3),
            verify_seconds=round(report.verify_seconds, 3),
            difference=None if diff is None else {"global_offset": diff.goff, "what": diff.what},
        )
        return
    resumed = f", resumed at global offset {report.resumed_at:,}" if report.resumed_at else ""
    print(
        f"copied {report.source} -> {report.destination}{resumed}: {report.records:,} records "
        f"({report.messages:,} messages, {report.control:,} truncations and deletions, {report.removed:,} removed), "
        f"{report.payload_bytes:,} envelope bytes in {report.batches:,} batches, {report.copy_seconds:.2f} s"
    )
    if diff is None:
        subs = f", {report.subscriptions:,} subscriptions" if report.subscriptions else ""
        print(
            f"verified: global head {report.global_head:,}, {report.streams:,} streams{subs}, every record and"
            f" envelope byte equal ({report.verify_seconds:.2f} s)"
        )
    else:
        print(f"DIFFERENCE {diff}")
        print("the copy differs from the source; it stays marked as an unfinished copy")
