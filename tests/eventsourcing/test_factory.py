"""The library's infrastructure factory test case, and the settings' errors."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import uuid
from unittest import TestCase

import psycopg
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    OperationalError,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests.persistence import InfrastructureFactoryTestCase
from eventsourcing.utils import Environment

import logstore
from logstore.eventsourcing import (
    Factory,
    LogstoreAggregateRecorder,
    LogstoreApplicationRecorder,
    LogstoreFactory,
    LogstoreProcessRecorder,
    LogstoreTrackingRecorder,
)
from logstore.postgres import ConnectionLostError, PostgresStore
from tests.contract.backends import POSTGRES_URL, open_postgres
from tests.eventsourcing.base import BackendCase, add_postgres_variants, drop_schema


class TrackingRecorderSubclass(LogstoreTrackingRecorder):
    """A tracking recorder named by class or by ``TRACKING_RECORDER_TOPIC``."""


class TestFactory(BackendCase, InfrastructureFactoryTestCase[LogstoreFactory]):
    def setUp(self) -> None:
        self.env = Environment("TestCase")
        self.env[InfrastructureFactory.PERSISTENCE_MODULE] = "logstore.eventsourcing"
        self.env.update(self.location())
        super().setUp()

    def expected_factory_class(self) -> type[LogstoreFactory]:
        return LogstoreFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return LogstoreAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return LogstoreApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return LogstoreTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return LogstoreProcessRecorder


del InfrastructureFactoryTestCase


class TestSettings(TestCase):
    """What a bad ``LOGSTORE_PATH`` or ``CREATE_TABLE`` gives, and how factories share a store."""

    def setUp(self) -> None:
        self.path = tempfile.mkdtemp(prefix="logstore-es-")
        self.addCleanup(shutil.rmtree, self.path, True)

    def test_module_has_one_factory(self) -> None:
        factory = InfrastructureFactory.construct(
            {"PERSISTENCE_MODULE": "logstore.eventsourcing", "LOGSTORE_PATH": self.path}
        )
        self.addCleanup(factory.close)
        self.assertIs(type(factory), Factory)

    def test_missing_path_names_the_setting(self) -> None:
        with self.assertRaises(OSError) as cm:
            Factory(Environment("Shop", {}))
        self.assertIn("SHOP_LOGSTORE_PATH", str(cm.exception))
        self.assertIn("LOGSTORE_PATH", str(cm.exception))

    def test_path_that_is_a_file(self) -> None:
        file = os.path.join(self.path, "a-file")
        with open(file, "w"):
            pass
        with self.assertRaises(NotADirectoryError) as cm:
            Factory({"LOGSTORE_PATH": file})
        self.assertIn(file, str(cm.exception))
        self.assertIn("is a file", str(cm.exception))

    def test_store_held_exclusively(self) -> None:
        logstore.open(self.path).close()
        fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR)  # as `logstore repair` holds it
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with self.assertRaises(OperationalError) as cm:
            Factory({"LOGSTORE_PATH": self.path})
        self.assertIn("in use exclusively", str(cm.exception))
        self.assertIsInstance(cm.exception.__cause__, logstore.StoreLockedError)

    def test_create_table_off_needs_a_store(self) -> None:
        missing = os.path.join(self.path, "nothing-here")
        with self.assertRaises(FileNotFoundError) as cm:
            Factory({"LOGSTORE_PATH": missing, "CREATE_TABLE": "no"})
        self.assertIn("CREATE_TABLE", str(cm.exception))
        self.assertFalse(os.path.exists(missing))
        logstore.open(missing).close()
        factory = Factory({"LOGSTORE_PATH": missing, "CREATE_TABLE": "no"})
        factory.close()

    def test_a_url_of_another_database_is_refused(self) -> None:
        with self.assertRaises(OSError) as cm:
            Factory({"LOGSTORE_PATH": "mysql://user:secret@localhost/db"})
        self.assertIn("postgresql://", str(cm.exception))
        self.assertNotIn("secret", str(cm.exception))
        self.assertFalse(os.path.exists("mysql:"))

    def test_settings_of_a_url_with_a_directory_are_refused(self) -> None:
        for key in ("LOGSTORE_SCHEMA", "LOGSTORE_MAX_CONNECTIONS", "LOGSTORE_TIMEOUT"):
            with self.subTest(key=key), self.assertRaises(OSError) as cm:
                Factory({"LOGSTORE_PATH": self.path, key: "2"})
            self.assertIn(key, str(cm.exception))
            self.assertIn("is a store directory", str(cm.exception))

    def test_bad_durability(self) -> None:
        with self.assertRaises(OSError) as cm:
            Factory({"LOGSTORE_PATH": self.path, "LOGSTORE_DURABILITY": "sometimes"})
        self.assertIn("LOGSTORE_DURABILITY", str(cm.exception))

    def test_factories_share_one_open_store_until_the_last_closes(self) -> None:
        first = Factory(Environment("One", {"LOGSTORE_PATH": self.path}))
        second = Factory(Environment("Two", {"LOGSTORE_PATH": self.path}))
        self.assertIs(first.store, second.store)
        store = first.store
        assert store is not None
        first.close()
        self.assertFalse(store.closed)
        second.close()
        self.assertTrue(store.closed)
        with self.assertRaises(OperationalError):
            second.application_recorder()


class TestPostgresSettings(TestCase):
    """A ``postgresql://`` ``LOGSTORE_PATH``: its settings, its errors, and how factories share its store."""

    def setUp(self) -> None:
        self.schema = f"estest_{uuid.uuid4().hex[:16]}"
        self.addCleanup(drop_schema, self.schema)
        self.env = {"LOGSTORE_PATH": POSTGRES_URL, "LOGSTORE_SCHEMA": self.schema}

    def schema_exists(self) -> bool:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
        return row is not None and row[0] == 1

    def test_the_store_is_in_the_schema_with_the_options(self) -> None:
        factory = Factory({**self.env, "LOGSTORE_DURABILITY": "batch", "LOGSTORE_MAX_CONNECTIONS": "3"})
        self.addCleanup(factory.close)
        store = factory.store
        assert isinstance(store, PostgresStore)
        self.assertEqual(store.schema, self.schema)
        self.assertEqual(store.durability, "batch")
        self.assertEqual(store._max_connections, 3)
        recorder = factory.application_recorder()
        self.assertEqual(recorder.max_notification_id(), None)
        self.assertTrue(self.schema_exists())

    def test_an_unreachable_server(self) -> None:
        url = "postgresql://postgres:secret@127.0.0.1:1/test"  # nothing listens on port 1
        with self.assertRaises(OperationalError) as cm:
            Factory({"LOGSTORE_PATH": url, "LOGSTORE_TIMEOUT": "2"})
        message = str(cm.exception)
        self.assertIn("cannot open the PostgreSQL store at postgresql://postgres:***@127.0.0.1:1/test", message)
        self.assertIn("Connection refused", message)
        self.assertNotIn("secret", message)
        self.assertIsInstance(cm.exception.__cause__, ConnectionLostError)

    def test_a_bad_url(self) -> None:
        with self.assertRaises(OperationalError) as cm:
            Factory({"LOGSTORE_PATH": "postgresql://postgres@127.0.0.1:notaport/test"})
        self.assertIn("notaport", str(cm.exception))
        self.assertIn('"port"', str(cm.exception))

    def test_bad_settings_of_a_url(self) -> None:
        for key, value in (
            ("LOGSTORE_MAX_CONNECTIONS", "0"),
            ("LOGSTORE_MAX_CONNECTIONS", "many"),
            ("LOGSTORE_TIMEOUT", "-1"),
            ("LOGSTORE_TIMEOUT", "inf"),
        ):
            with self.subTest(key=key, value=value), self.assertRaises(OSError) as cm:
                Factory({**self.env, key: value})
            self.assertIn(key, str(cm.exception))
        with self.assertRaises(OSError) as cm:
            Factory({**self.env, "LOGSTORE_SCHEMA": "s" * 64})
        self.assertIn("63", str(cm.exception))
        self.assertFalse(self.schema_exists())

    def test_create_table_off_needs_a_store_in_the_schema(self) -> None:
        with self.assertRaises(FileNotFoundError) as cm:
            Factory({**self.env, "CREATE_TABLE": "no"})
        self.assertIn("CREATE_TABLE", str(cm.exception))
        self.assertIn(repr(self.schema), str(cm.exception))
        self.assertFalse(self.schema_exists())
        open_postgres(self.schema).close()
        factory = Factory({**self.env, "CREATE_TABLE": "no"})
        factory.close()

    def test_factories_share_one_open_store_per_url_schema_and_options(self) -> None:
        first = Factory(Environment("One", self.env))
        second = Factory(Environment("Two", self.env))
        other = Factory(Environment("Three", {**self.env, "LOGSTORE_DURABILITY": "none"}))
        self.addCleanup(other.close)
        self.assertIs(first.store, second.store)
        self.assertIsNot(first.store, other.store)
        store = first.store
        assert store is not None
        first.close()
        self.assertFalse(store.closed)
        second.close()
        self.assertTrue(store.closed)


add_postgres_variants(globals())
