"""The backends the eventsourcing tier runs on, and a fresh store per test on each.

Every test class here runs on the embedded store (a fresh directory, checked with the consistency
checker after the test); :func:`add_postgres_variants` adds, for each class of a module, a subclass
``<name>OnPostgres`` that runs the same tests on the PostgreSQL backend, in a fresh schema of the
server at ``$LOGSTORE_TEST_POSTGRES`` dropped after the test (tests/contract/backends.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from typing import Any
from unittest import TestCase

import logstore
from logstore.embedded import layout
from tests.contract.backends import POSTGRES_URL, open_postgres
from tests.helpers import assert_verified


class BackendCase(TestCase):
    """Where a test's store lives: ``location()`` makes a new place, ``settings`` name it for the factory."""

    backend = "logstore"
    """``logstore`` (a store directory) or ``postgres`` (a schema on the test server)."""

    settings: dict[str, str]
    """``LOGSTORE_PATH`` (and ``LOGSTORE_SCHEMA``) of the test's store."""

    def location(self) -> dict[str, str]:
        """Make a new, empty place for the test's store; the cleanup removes it (and checks a directory)."""
        if self.backend == "postgres":
            schema = f"estest_{uuid.uuid4().hex[:16]}"
            self.addCleanup(drop_schema, schema)
            return {"LOGSTORE_PATH": POSTGRES_URL, "LOGSTORE_SCHEMA": schema}
        path = tempfile.mkdtemp(prefix="logstore-es-")
        self.addCleanup(shutil.rmtree, path, True)
        self.addCleanup(verify_if_made, path)
        return {"LOGSTORE_PATH": path}

    def open_store(self, settings: dict[str, str]) -> Any:
        """Open the store that ``settings`` name."""
        if self.backend == "postgres":
            return open_postgres(settings["LOGSTORE_SCHEMA"])
        return logstore.open(settings["LOGSTORE_PATH"])


def verify_if_made(path: str) -> None:
    """Check the store at ``path`` with the consistency checker, if the test made one there."""
    if os.path.isdir(os.path.join(path, layout.SEGMENTS)):
        assert_verified(path)


def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class StoreCase(BackendCase):
    """Opens a new store in ``setUp``, for the recorders under test; it is closed after the test."""

    store: Any

    def setUp(self) -> None:
        super().setUp()
        self.settings = self.location()
        self.store = self.open_store(self.settings)
        self.addCleanup(self.store.close)  # before the location's cleanups: they run last in, first out


def add_postgres_variants(namespace: dict[str, Any]) -> None:
    """Add to a test module's ``namespace`` a PostgreSQL subclass of each of its :class:`BackendCase` classes."""
    for name, cls in list(namespace.items()):
        if isinstance(cls, type) and issubclass(cls, BackendCase) and cls.__module__ == namespace["__name__"]:
            variant = f"{name}OnPostgres"
            namespace[variant] = type(
                variant, (cls,), {"backend": "postgres", "__module__": cls.__module__, "__qualname__": variant}
            )
