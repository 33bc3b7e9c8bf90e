from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.contract.backends import POSTGRES_URL, open_postgres


def drop_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema name, dropped (with whatever a test made in it) after the test."""
    name = f"pgtest_{uuid.uuid4().hex[:16]}"
    yield name
    drop_schema(name)


@pytest.fixture
def open_pg(schema: str) -> Iterator[Callable[..., Any]]:
    """Opens the test's store (``schema``) with the given options; every store it opened is closed after."""
    opened: list[Any] = []

    def open_pg(**options: Any) -> Any:
        store = open_postgres(options.pop("schema", schema), **options)
        opened.append(store)
        return store

    yield open_pg
    for store in opened:
        store.close()


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own, for what a test does to the server behind the store's back."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        yield conn
