"""``logstore dump DIR|URL``: print a store's messages, one line each, read-only.

Opens the store with ``readonly=True``, so it works beside a live writer and
sees the log as it was when it started. Without ``--stream`` it prints every
readable message in global order from global offset ``--from``; with
``--stream S``, that stream's from stream offset ``--from``. ``--json`` prints
JSON lines; ``--all`` also lists the records readers skip (control records,
REMOVED and LOST records, and removed messages that compaction has not yet
reclaimed). Exit 0, or 2 with a message on stderr: not a store, unknown
stream, a bad number, damage (file and byte position) or an unknown format
version. A closed pipe (``| head``) ends the dump quietly. A ``postgresql://`` URL (with
``--schema``) is read in one snapshot and printed the same way, with every option.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgpack

import logstore
from logstore.embedded.inspect import iter_records, stream_start
from logstore.errors import CorruptionError, FormatVersionError, LogStoreError
from logstore.results import RecordInfo
from logstore.tools.storedir import ToolError, add_command, add_schema_option, fail, store_dir_problem, url_schema

MESSAGE_WIDTH = 200
"""Longest rendering of a message in a human line; longer ones are cut with an ellipsis."""


def add_parser(sub: Any) -> None:
    p = add_command(
        sub,
        "dump",
        "print messages, one per line (read-only; safe on a live store)",
        run,
        "store directory or postgresql:// URL",
        urls=True,
    )
    add_schema_option(p)
    p.add_argument("--stream", metavar="S", help="only stream S (--from is then a stream offset)")
    p.add_argument(
        "--from",
        dest="start",
        type=whole_number,
        default=0,
        metavar="N",
        help="start at global offset N, or with --stream at stream offset N (default 0)",
    )
    p.add_argument("--limit", type=whole_number, default=None, metavar="K", help="print at most K lines")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.add_argument(
        "--all",
        action="store_true",
        help="also list the records readers skip: control, removed and lost records, removed messages",
    )


def whole_number(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def open_readonly(path: str) -> logstore.Store:
    """Open the store at ``path`` read-only, or raise :class:`ToolError` saying why not."""
    problem = store_dir_problem(path)
    if problem is not None:
        raise ToolError(problem)
    try:
        return logstore.open(path, readonly=True)
    except CorruptionError as exc:
        raise ToolError(describe(exc)) from None
    except (OSError, LogStoreError, ValueError) as exc:
        raise ToolError(f"{path}: {exc}") from None


def describe(exc: CorruptionError) -> str:
    """One line for damage or an unknown format version, with the file and byte position."""
    if isinstance(exc, FormatVersionError):
        return f"unsupported format: {exc.path} at byte {exc.position}: {exc.what}"
    return f"damaged store: {exc}"


def quiet_broken_pipe() -> None:
    """After EPIPE on stdout: point stdout at /dev/null so that the exit flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass


def run(args: argparse.Namespace) -> int:
    schema = url_schema(args)
    if schema is not None:
        return run_url(args, schema)
    store = open_readonly(args.dir)
    try:
        with store:
            _dump(store, args)
    except BrokenPipeError:
        quiet_broken_pipe()
        return 0
    except ToolError as exc:
        _flush()
        return fail("dump", exc)
    except CorruptionError as exc:
        _flush()
        return fail("dump", describe(exc))
    except LogStoreError as exc:
        _flush()
        return fail("dump", f"{args.dir}: {exc}")
    return 0


def _flush() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()


def run_url(args: argparse.Namespace, schema: str) -> int:
    """``dump`` of a PostgreSQL store: the same lines; ``--all`` lists truncation and deletion rows and
    removed messages that ``compact()`` has not deleted yet (compacted ones have no row left)."""
    from logstore.postgres import inspect as pg  # noqa: PLC0415 - psycopg is an optional extra

    try:
        if args.stream is not None:
            start = pg.stream_start(args.dir, schema, args.stream, args.start)
            if start is None:
                raise ToolError(f"{pg.where_of(args.dir, schema)}: no stream named {args.stream!r}")
            _print_records(pg.iter_records(args.dir, schema, start, args.stream), args)
        else:
            _print_records(pg.iter_records(args.dir, schema, args.start), args)
    except BrokenPipeError:
        quiet_broken_pipe()
        return 0
    except ToolError as exc:
        _flush()
        return fail("dump", exc)
    except pg.URL_ERRORS as exc:
        _flush()
        return fail("dump", exc)
    return 0


def _dump(store: logstore.Store, args: argparse.Namespace) -> None:
    if args.stream is not None:
        try:
            info = store.stream_info(args.stream)
        except (TypeError, ValueError) as exc:
            raise ToolError(f"--stream: {exc}") from None
        if info is None:
            raise ToolError(f"{args.dir}: no stream named {args.stream!r}")
        records = iter_records(store, stream_start(store, args.stream, args.start), args.stream)
    else:
        records = iter_records(store, args.start)
    _print_records(records, args)


def _print_records(records: Iterator[RecordInfo], args: argparse.Namespace) -> None:
    limit = args.limit
    if limit == 0:
        return
    write = sys.stdout.write
    printed = 0
    for rec in records:
        if rec.readable and rec.envelope is not None:
            line = envelope_json(rec) if args.json else envelope_line(rec)
        elif args.all:
            line = record_json(rec) if args.json else record_line(rec)
        else:
            continue
        write(line + "\n")
        printed += 1
        if printed == limit:
            break
    sys.stdout.flush()


# -- rendering ---------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """``value`` with everything JSON cannot hold made into JSON values.

    ``bytes`` become ``{"$bytes": base64}``, datetimes ISO 8601 strings,
    ``msgpack.ExtType`` ``{"$ext": code, "data": base64}``, non-finite floats
    ``{"$float": "nan" | "inf" | "-inf"}``, and map keys that are not
    strings their JSON text (``1`` -> ``"1"``, ``None`` -> ``"null"``).
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, msgpack.ExtType):
        return {"$ext": value.code, "data": base64.b64encode(value.data).decode("ascii")}
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else json.dumps(json_safe(k), separators=(",", ":")): json_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return repr(value)  # nothing else decodes from msgpack; shown rather than refused


def envelope_json(rec: RecordInfo) -> str:
    env = rec.envelope
    assert env is not None
    obj = {
        "global_offset": rec.goff,
        "stream": rec.stream,
        "offset": rec.offset,
        "message_id": json_safe(env.message_id),
        "causation_id": json_safe(env.causation_id),
        "correlation_id": json_safe(env.correlation_id),
        "created_at": json_safe(env.created_at),
        "send_at": json_safe(env.send_at),
        "type": json_safe(env.type),
        "message": json_safe(env.message),
    }
    return json.dumps(obj)


def record_json(rec: RecordInfo) -> str:
    obj: dict[str, Any] = {"global_offset": rec.goff, "kind": rec.kind, "stream": rec.stream, "offset": rec.offset}
    if rec.kind == "message":
        obj["readable"] = False
    return json.dumps(obj)


def _plain(text: Any) -> str:
    """A name as is when it is one printable word, else as a JSON string."""
    if isinstance(text, str) and text and text.isprintable() and " " not in text:
        return text
    return json.dumps(json_safe(text), ensure_ascii=False)


def envelope_line(rec: RecordInfo) -> str:
    env = rec.envelope
    assert env is not None
    created = env.created_at.isoformat() if isinstance(env.created_at, datetime) else _plain(env.created_at)
    message = json.dumps(json_safe(env.message), ensure_ascii=False)
    if len(message) > MESSAGE_WIDTH:
        message = message[: MESSAGE_WIDTH - 1] + "…"
    return f"{rec.goff} {_plain(rec.stream)}@{rec.offset} {created} {_plain(env.type)} {message}"


def record_line(rec: RecordInfo) -> str:
    where = "-" if rec.stream is None else _plain(rec.stream)
    if rec.kind == "truncate":
        return f"{rec.goff} {where} [truncate: offsets before {rec.offset} removed]"
    if rec.kind == "delete":
        return f"{rec.goff} {where} [delete at head {rec.offset}]"
    if rec.kind == "retain":
        return f"{rec.goff} - [retain: the log starts at global offset {rec.offset}]"
    if rec.kind == "message":
        return f"{rec.goff} {where}@{rec.offset} [message, removed]"
    if rec.offset is None:
        return f"{rec.goff} {where} [{rec.kind}]"
    return f"{rec.goff} {where}@{rec.offset} [{rec.kind}]"
