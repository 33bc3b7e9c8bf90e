"""The library's application test cases, with ``PERSISTENCE_MODULE=logstore.eventsourcing``.

The library's cases make their applications from the process environment, so ``setUp`` sets
``PERSISTENCE_MODULE`` and a fresh ``LOGSTORE_PATH`` there and ``tearDown`` takes them away.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from unittest import TestCase

from eventsourcing.tests.application import ApplicationTestCase, ExampleApplicationTestCase

from logstore.eventsourcing import LogstoreFactory

SETTINGS = ("PERSISTENCE_MODULE", "LOGSTORE_PATH")


class LogstoreEnvironment(TestCase):
    """Points the library at a new store directory for each test."""

    def setUp(self) -> None:
        self.path = tempfile.mkdtemp(prefix="logstore-es-")
        self.saved = {key: os.environ.get(key) for key in SETTINGS}
        os.environ["PERSISTENCE_MODULE"] = "logstore.eventsourcing"
        os.environ["LOGSTORE_PATH"] = self.path
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        # The library's cases leave some applications open: collecting them closes their factories,
        # and so the store, before its directory goes.
        gc.collect()
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.path, ignore_errors=True)


class TestExampleApplication(LogstoreEnvironment, ExampleApplicationTestCase):
    expected_factory_topic = f"{LogstoreFactory.__module__}:{LogstoreFactory.__qualname__}"


class TestApplication(LogstoreEnvironment, ApplicationTestCase):
    pass


del ApplicationTestCase
del ExampleApplicationTestCase
