"""The PostgreSQL backend: ``logstore.open("postgresql://...", schema=...)`` returns a :class:`PostgresStore`.

Needs the optional extra ``logstore[postgres]`` (psycopg 3 and psycopg_pool). docs/POSTGRES.md has the
tables, the locking, why global offsets are gap-free and in commit order, and how to run it.
"""

from logstore.postgres.errors import CommitOutcomeUnknownError, ConnectionLostError, ServerError
from logstore.postgres.reader import PgGlobalReader, PgStreamReader
from logstore.postgres.schema import SCHEMA_VERSION
from logstore.postgres.store import DEFAULT_SCHEMA, PostgresStore, is_url, open_postgres
from logstore.results import Location

__all__ = [
    "DEFAULT_SCHEMA",
    "SCHEMA_VERSION",
    "CommitOutcomeUnknownError",
    "ConnectionLostError",
    "Location",
    "PgGlobalReader",
    "PgStreamReader",
    "PostgresStore",
    "ServerError",
    "is_url",
    "open_postgres",
]
