"""The ES group's stores: the eventsourcing library's application recorder on three persistence modules.

Each is the recorder an application of the library gets from its module's
infrastructure factory, made here directly (no ``Application``) so that the
benchmark times the recorder's calls alone:

- ``logstore``: ``logstore.eventsourcing.LogstoreApplicationRecorder`` on
  ``logstore.open(dir, durability="fsync")``, the other defaults (the
  factory's own choice with ``LOGSTORE_PATH=dir``): a save is durable when
  ``insert_events`` returns. Subscriptions are logstore readers woken by the
  commit.
- ``es-sqlite``: the library's ``SQLiteApplicationRecorder`` on its
  ``SQLiteDatastore`` with a database file in ``dir`` (what
  ``PERSISTENCE_MODULE=eventsourcing.sqlite`` with ``SQLITE_DBNAME`` gives):
  WAL, ``synchronous=FULL`` (SQLite's default, which the library keeps), so
  a save is durable when it returns. It has no ``subscribe``.
- ``es-popo``: the library's ``POPOApplicationRecorder``, in memory (nothing
  durable); its subscriptions are woken by a ``threading.Event`` set at each
  insert.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

ES_STORES = ("logstore", "es-sqlite", "es-popo")
SUBSCRIBES = frozenset({"logstore", "es-popo"})
"""The stores whose application recorder can ``subscribe`` (the library's SQLite one raises)."""


def open_es_recorder(name: str, path: str) -> tuple[Any, Callable[[], None], dict[str, str]]:
    """The application recorder ``name`` with its store in the directory ``path`` (made if missing).

    Returns the recorder, the call that closes its store, and the settings measured under (for the report).
    """
    if name == "logstore":
        import logstore
        from logstore.eventsourcing import LogstoreApplicationRecorder

        store = logstore.open(path, durability="fsync")
        return LogstoreApplicationRecorder(store), store.close, {"durability": store.durability}
    if name == "es-sqlite":
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        os.makedirs(path, exist_ok=True)
        datastore = SQLiteDatastore(os.path.join(path, "events.sqlite"))
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA journal_mode")
            journal = str(cursor.fetchone()[0])
            cursor.execute("PRAGMA synchronous")
            sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[int(cursor.fetchone()[0])]
        return recorder, datastore.close, {"journal_mode": journal, "synchronous": sync}
    if name == "es-popo":
        from eventsourcing.popo import POPOApplicationRecorder

        return POPOApplicationRecorder(), lambda: None, {"durability": "none (memory)"}
    raise ValueError(f"unknown ES store {name!r}; expected one of {', '.join(ES_STORES)}")
