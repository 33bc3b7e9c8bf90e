"""``logstore.open``: picks the backend from its argument.

A directory path opens the embedded store (:func:`logstore.embedded.store.open`, :class:`logstore.Store`); a
``postgresql://`` (or ``postgres://``) URL opens the PostgreSQL backend
(:class:`logstore.postgres.PostgresStore`, with the optional extra ``logstore[postgres]``). Both have
the same messagestore API; switching is the argument and, for PostgreSQL, ``schema=``::

    store = logstore.open("data/")
    store = logstore.open("postgresql://app@db.internal:5432/app", schema="logstore")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, overload

from logstore.checks import URL_SCHEMES
from logstore.embedded import store as embedded

if TYPE_CHECKING:
    from logstore.embedded.fileio import FileIO
    from logstore.postgres import PostgresStore


@overload
def open(
    path: str | os.PathLike[str],
    *,
    durability: str = ...,
    fsync_interval: float = ...,
    segment_size: int = ...,
    readonly: bool = ...,
    checkpoint_bytes: int = ...,
    retention_age: float | None = ...,
    retention_bytes: int | None = ...,
    io: FileIO | None = ...,
) -> embedded.Store: ...


@overload
def open(
    path: str,
    *,
    schema: str,
    durability: str = ...,
    readonly: bool = ...,
    max_connections: int = ...,
    timeout: float = ...,
) -> PostgresStore: ...


def open(path: str | os.PathLike[str], **options: Any) -> embedded.Store | PostgresStore:
    """Open (creating if need be) the store at ``path``: a directory, or a ``postgresql://`` URL.

    For a directory, the options and errors are :func:`logstore.embedded.store.open`'s. For a URL they are
    :class:`logstore.postgres.PostgresStore`'s: ``schema`` (default ``"logstore"``), ``durability``,
    ``readonly``, ``max_connections``, ``timeout``; an option that only means something for a
    directory (``segment_size``, say) raises ``ValueError``, and ``schema`` with a directory raises
    ``TypeError``. Without the extra ``logstore[postgres]`` installed, a URL raises ``ImportError``
    saying how to install it.
    """
    if isinstance(path, str) and path.startswith(URL_SCHEMES):
        try:
            from logstore.postgres import open_postgres  # noqa: PLC0415 - psycopg is an optional extra
        except ImportError as exc:
            raise ImportError(
                f'a PostgreSQL store needs psycopg 3 and psycopg_pool: pip install "logstore[postgres]" ({exc})'
            ) from exc
        return open_postgres(path, **options)
    if "schema" in options:
        raise TypeError(f"schema= is an option of a postgresql:// URL, and {os.fspath(path)!r} is a directory path")
    return embedded.open(path, **options)
