"""The library's application test cases, with ``PERSISTENCE_MODULE=logstore.eventsourcing``.

The library's cases make their applications from the process environment, so ``setUp`` sets
``PERSISTENCE_MODULE`` and a fresh ``LOGSTORE_PATH`` (and ``LOGSTORE_SCHEMA``) there and
``tearDown`` takes them away. Each class runs on both backends (the ``...OnPostgres`` variants).
"""

from __future__ import annotations

import gc
import os

from eventsourcing.tests.application import ApplicationTestCase, ExampleApplicationTestCase

from logstore.eventsourcing import LogstoreFactory
from tests.eventsourcing.base import BackendCase, add_postgres_variants

SETTINGS = ("PERSISTENCE_MODULE", "LOGSTORE_PATH", "LOGSTORE_SCHEMA")


class LogstoreEnvironment(BackendCase):
    """Points the library at a new store (a directory, or a schema) for each test."""

    def setUp(self) -> None:
        self.saved = {key: os.environ.get(key) for key in SETTINGS}
        os.environ.pop("LOGSTORE_SCHEMA", None)
        os.environ["PERSISTENCE_MODULE"] = "logstore.eventsourcing"
        os.environ.update(self.location())
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        # The library's cases leave some applications open: collecting them closes their factories,
        # and so the store, before its directory or schema goes.
        gc.collect()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TestExampleApplication(LogstoreEnvironment, ExampleApplicationTestCase):
    expected_factory_topic = f"{LogstoreFactory.__module__}:{LogstoreFactory.__qualname__}"


class TestApplication(LogstoreEnvironment, ApplicationTestCase):
    pass


add_postgres_variants(globals())

del ApplicationTestCase
del ExampleApplicationTestCase
