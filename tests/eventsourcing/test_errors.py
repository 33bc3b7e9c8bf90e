"""The recorders raise the library's errors (``eventsourcing.persistence``), as its own modules do.

A killed PostgreSQL backend during a save is ``OperationalError`` and the next save works; the
server's refusals map by SQLSTATE class; the embedded store's failed, closed and too-large cases
map as the library's SQLite module's would. logstore's error is always the ``__cause__``.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from psycopg import sql

import logstore
from logstore import StoreFailedError
from logstore.errors import (
    CorruptionError,
    MessageTooLargeError,
    OffsetConflictError,
    StoreClosedError,
    StoreLockedError,
    StreamClosedError,
)
from logstore.eventsourcing import LogstoreApplicationRecorder, LogstoreProcessRecorder, translate
from logstore.postgres import CommitOutcomeUnknownError, ConnectionLostError, ServerError
from tests.contract.backends import POSTGRES_URL, open_postgres
from tests.eventsourcing.base import drop_schema
from tests.faultfs import FailingIO

WAIT = 30.0  # seconds: a guard against a hang, never part of the synchronisation


def _event(oid: Any, version: int) -> StoredEvent:
    return StoredEvent(originator_id=oid, originator_version=version, topic="t", state=b"s")


# -- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture
def pg_schema() -> Any:
    schema = f"estest_{uuid4().hex[:16]}"
    yield schema
    drop_schema(schema)


def _backend_waiting(admin: psycopg.Connection[Any], schema: str) -> int:
    """The pid of the store's backend whose commit (``append_batch``) waits for a lock."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND query LIKE '%%append_batch%%'"
            " AND wait_event_type = 'Lock'",
            (f"logstore {schema}",),
        ).fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.01)  # the server's own view is polled: there is no event to wait on
    raise AssertionError("no backend of the store waits in append_batch")


def test_a_backend_killed_during_a_save_is_operational_error_and_the_next_save_works(pg_schema: str) -> None:
    store = open_postgres(pg_schema)
    try:
        recorder = LogstoreProcessRecorder(store, "shop")
        first = uuid4()
        assert recorder.insert_events([_event(first, 1)]) == [1]
        admin = psycopg.connect(POSTGRES_URL, autocommit=True)
        # Hold the head row from outside, so that the save stops inside its commit; then kill that backend.
        blocker = psycopg.connect(POSTGRES_URL)
        blocker.execute(sql.SQL("SELECT * FROM {}.head FOR UPDATE").format(sql.Identifier(pg_schema)))
        result: dict[str, Any] = {}
        lost = uuid4()

        def save() -> None:
            try:
                result["ids"] = recorder.insert_events(
                    [_event(lost, 1), _event(lost, 2)], tracking=Tracking("upstream", 7)
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                result["error"] = exc

        thread = threading.Thread(target=save)
        thread.start()
        try:
            pid = _backend_waiting(admin, pg_schema)
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            thread.join(WAIT)
        finally:
            blocker.rollback()
            blocker.close()
            admin.close()
        assert not thread.is_alive()
        error = result["error"]
        assert type(error) is OperationalError, repr(error)
        assert str(error).startswith("insert_events: ")
        assert isinstance(error.__cause__, CommitOutcomeUnknownError)
        # Stopped before COMMIT: nothing of it landed (the events, their notifications and the tracking record).
        assert store.commit_outcome(error.__cause__) is None
        assert recorder.select_events(lost) == []
        assert recorder.max_tracking_id("upstream") is None
        # The next save works, its notification ids go on from the last one, and the lost one may be saved again.
        assert recorder.insert_events([_event(lost, 1), _event(lost, 2)], tracking=Tracking("upstream", 7)) == [2, 3]
        assert [n.id for n in recorder.select_notifications(None, 10)] == [1, 2, 3]
        assert recorder.max_tracking_id("upstream") == 7
        # An offset conflict stays the library's IntegrityError, as before.
        with pytest.raises(IntegrityError):
            recorder.insert_events([_event(first, 1)])
    finally:
        store.close()


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("57P01", OperationalError),  # admin_shutdown: the backend was terminated
        ("08006", OperationalError),  # connection_failure
        ("53100", OperationalError),  # disk_full
        ("40001", OperationalError),  # serialization_failure
        ("55P03", OperationalError),  # lock_not_available
        ("23505", IntegrityError),  # unique_violation
        ("22001", DataError),  # string_data_right_truncation
        ("42501", ProgrammingError),  # insufficient_privilege
        ("3F000", ProgrammingError),  # invalid_schema_name
        ("0A000", NotSupportedError),  # feature_not_supported
        ("XX000", InternalError),  # internal_error
        ("P0001", InternalError),  # raise_exception
        ("72000", DatabaseError),  # snapshot_too_old: a class with no mapping of its own
        (None, DatabaseError),
    ],
)
def test_a_server_refusal_maps_by_its_sqlstate_class(sqlstate: str | None, expected: type[Exception]) -> None:
    error = translate(ServerError("the server refused: ...", sqlstate), "select_notifications")
    assert type(error) is expected
    assert str(error) == "select_notifications: the server refused: ..."


def test_a_lost_connection_and_an_unknown_outcome_are_operational_errors() -> None:
    assert type(translate(ConnectionLostError("gone"), "max_notification_id")) is OperationalError
    unknown = CommitOutcomeUnknownError("commit", ["m"], ["s"])
    assert type(translate(unknown, "insert_tracking")) is OperationalError


# -- the embedded store --------------------------------------------------------------------------


def test_a_failed_store_is_operational_error_until_it_is_reopened(store_dir: Path) -> None:
    io = FailingIO("fdatasync", errno.EIO)
    store = logstore.open(store_dir, io=io)
    recorder = LogstoreApplicationRecorder(store, "shop")
    oid = uuid4()
    assert recorder.insert_events([_event(oid, 1)]) == [1]
    io.armed.set()
    with pytest.raises(OperationalError, match=r"^insert_events: .*reopen") as failed:
        recorder.insert_events([_event(oid, 2)])
    assert isinstance(failed.value.__cause__, StoreFailedError)
    with pytest.raises(OperationalError) as again:  # refused until reopened, also on the first try of another
        recorder.insert_events([_event(uuid4(), 1)])
    assert isinstance(again.value.__cause__, StoreFailedError)
    assert [n.id for n in recorder.select_notifications(None, 10)] == [1]  # reads go on
    with pytest.raises(StoreFailedError):
        store.close()  # close reports that the store had failed
    with logstore.open(store_dir) as reopened:
        recorder = LogstoreApplicationRecorder(reopened, "shop")
        last = recorder.max_notification_id()
        assert last in (1, 2)  # the failed save landed only if it reached the disk whole
        assert recorder.insert_events([_event(uuid4(), 1)]) == [last + 1]


def test_a_closed_store_is_interface_error(store_dir: Path) -> None:
    store = logstore.open(store_dir)
    recorder = LogstoreProcessRecorder(store, "shop")
    recorder.insert_events([_event(uuid4(), 1)])
    store.close()
    for call, what in (
        (lambda: recorder.insert_events([_event(uuid4(), 1)]), "insert_events"),
        (lambda: recorder.select_notifications(None, 10), "select_notifications"),
        (lambda: recorder.select_events(uuid4()), "select_events"),
        (recorder.max_notification_id, "max_notification_id"),
        (lambda: recorder.max_tracking_id("upstream"), "max_tracking_id"),
        (recorder.subscribe, "subscribe"),
    ):
        with pytest.raises(InterfaceError, match=f"^{what}: .*closed") as info:
            call()
        assert isinstance(info.value.__cause__, StoreClosedError)


def test_a_store_closed_under_a_subscription_is_operational_error(store_dir: Path) -> None:
    store = logstore.open(store_dir)
    recorder = LogstoreApplicationRecorder(store, "shop")
    recorder.insert_events([_event(uuid4(), 1)])
    subscription = recorder.subscribe()
    assert next(subscription).id == 1
    got: dict[str, BaseException] = {}

    def follow() -> None:
        try:
            next(subscription)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            got["error"] = exc

    thread = threading.Thread(target=follow)
    thread.start()
    store.close()  # wakes the waiting reader
    thread.join(WAIT)
    assert not thread.is_alive()
    assert type(got["error"]) is OperationalError
    assert str(got["error"]).startswith("subscription to shop_notifications: ")
    assert isinstance(got["error"].__cause__, StreamClosedError)


def test_an_event_too_large_for_the_store_is_data_error(store_dir: Path) -> None:
    with logstore.open(store_dir) as store:
        recorder = LogstoreApplicationRecorder(store, "shop")
        big = StoredEvent(uuid4(), 1, "t", bytes(store.max_envelope_size))
        with pytest.raises(DataError, match=r"^insert_events: ") as info:
            recorder.insert_events([big])
        assert isinstance(info.value.__cause__, MessageTooLargeError)
        assert recorder.max_notification_id() is None


def test_the_other_store_errors_map_as_the_library_s_sqlite_module_would() -> None:
    assert type(translate(StoreLockedError("held"), "insert_events")) is OperationalError
    assert type(translate(CorruptionError("/s/segments/0.log", 64, "bad"), "select_events")) is DatabaseError
    assert translate(OffsetConflictError("s", 1, 0), "insert_events") is None  # the recorders retry it
    assert type(translate(logstore.LogStoreError("other"), "wait")) is PersistenceError
