"""The library's infrastructure factory test case, and the settings' errors."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from unittest import TestCase

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
from tests.helpers import assert_verified


class TrackingRecorderSubclass(LogstoreTrackingRecorder):
    """A tracking recorder named by class or by ``TRACKING_RECORDER_TOPIC``."""


class TestFactory(InfrastructureFactoryTestCase[LogstoreFactory]):
    def setUp(self) -> None:
        self.path = tempfile.mkdtemp(prefix="logstore-es-")
        self.env = Environment("TestCase")
        self.env[InfrastructureFactory.PERSISTENCE_MODULE] = "logstore.eventsourcing"
        self.env[LogstoreFactory.LOGSTORE_PATH] = self.path
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        try:
            assert_verified(self.path)
        finally:
            shutil.rmtree(self.path, ignore_errors=True)

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

    def test_a_url_is_not_taken_for_a_directory(self) -> None:
        with self.assertRaises(OSError) as cm:
            Factory({"LOGSTORE_PATH": "postgresql://user@localhost/db"})
        self.assertIn("is a URL", str(cm.exception))
        self.assertFalse(os.path.exists("postgresql:"))

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
