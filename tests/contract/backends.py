"""The backends the contract tests run against.

A backend is a name and a function that opens (or creates) a store at a directory with the options of
``logstore.open`` (a backend ignores the options it has no use for) and returns an object with the
store's public API, usable as a context manager. The ``open_store`` fixture of the contract tier runs
every test once per backend listed here, and calls the backend's ``drop(path)`` (if it has one) after
the test.

- ``logstore``: the embedded store, in the directory.
- ``postgres``: the PostgreSQL backend, in a schema named after the directory (a fresh one per
  test, dropped after it), on the server at ``$LOGSTORE_TEST_POSTGRES``
  (default ``postgresql://postgres@127.0.0.1:5432/test``; ``.ci/run`` starts the server).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import logstore

OpenAt = Callable[..., Any]
"""``open_at(path, **options)``: a store at ``path``, created if missing."""

OpenStore = Callable[..., Any]
"""``open_store(**options)``: the test's store (one directory per test), opened again on each call."""

POSTGRES_URL = os.environ.get("LOGSTORE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
"""The server the PostgreSQL backend's tests use."""

DISK_ONLY = ("segment_size", "checkpoint_bytes", "fsync_interval", "io", "retention_age", "retention_bytes")
"""Options of a store directory, which ``logstore.open`` refuses with a URL: the test backend leaves them out."""


def _logstore(path: str | os.PathLike[str], **options: Any) -> logstore.Store:
    return logstore.open(path, **options)


def schema_for(path: str | os.PathLike[str]) -> str:
    """The schema a test's store directory stands for: unique per directory, a valid identifier."""
    return "test_" + hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:24]


NO_SERVER_HINT = (
    "the PostgreSQL backend's tests need a server at $LOGSTORE_TEST_POSTGRES"
    f" ({POSTGRES_URL}): start one (.ci/run does: pg_ctlcluster --skip-systemctl-redirect"
    " <version> main start) or point the variable at one"
)


def open_postgres(schema: str, **options: Any) -> Any:
    """``logstore.open`` of the test server's store in ``schema``; an unreachable server says how to get one."""
    from logstore.postgres import ConnectionLostError

    try:
        return logstore.open(POSTGRES_URL, schema=schema, **options)
    except ConnectionLostError as exc:
        raise ConnectionLostError(f"{exc}\n{NO_SERVER_HINT}") from exc


class _Postgres:
    """Opens the store of a test directory in its own schema; ``drop`` removes the schema."""

    def __call__(self, path: str | os.PathLike[str], **options: Any) -> Any:
        for name in DISK_ONLY:
            options.pop(name, None)
        return open_postgres(schema_for(path), **options)

    def drop(self, path: str | os.PathLike[str]) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema_for(path))))


BACKENDS: dict[str, OpenAt] = {"logstore": _logstore, "postgres": _Postgres()}


BAD_STREAM_ARGUMENTS: list[tuple[tuple[object, object], type[Exception], str]] = [
    ((1, 0), TypeError, "stream name must be a str, got int"),
    (("", 0), ValueError, "stream name must not be empty"),
    (("s", -1), ValueError, "offset must be >= 0, got -1"),
    (("s", "0"), TypeError, "offset must be an int"),
]
"""``(stream, offset)`` arguments every call that opens or reads a stream refuses: the error and its message."""
