"""The library's recorder test cases, run against the logstore recorders.

Each class subclasses a test case of ``eventsourcing.tests.persistence`` and only says how to
make the recorder; the library's assertions are the judge. The base classes are deleted at the
end so that pytest does not collect them on their own. Each class runs on both backends (the
``...OnPostgres`` variants).
"""

from __future__ import annotations

from uuid import uuid4

from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)

from logstore.eventsourcing import (
    LogstoreAggregateRecorder,
    LogstoreApplicationRecorder,
    LogstoreProcessRecorder,
    LogstoreTrackingRecorder,
)
from tests.eventsourcing.base import StoreCase, add_postgres_variants


class TestAggregateRecorder(StoreCase, AggregateRecorderTestCase):
    def create_recorder(self) -> LogstoreAggregateRecorder:
        return LogstoreAggregateRecorder(self.store)


class TestSnapshotRecorder(StoreCase, AggregateRecorderTestCase):
    """The recorder an application makes for snapshots: its own streams, apart from the events'."""

    def create_recorder(self) -> LogstoreAggregateRecorder:
        return LogstoreAggregateRecorder(self.store, "stored", "snapshots")


class TestApplicationRecorder(StoreCase, ApplicationRecorderTestCase[LogstoreApplicationRecorder]):
    def create_recorder(self) -> LogstoreApplicationRecorder:
        return LogstoreApplicationRecorder(self.store)

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestApplicationRecorderWithTextIds(TestApplicationRecorder):
    """Originator ids that are text, not UUIDs, read back as text."""

    def new_originator_id(self) -> str:
        return f"account-{uuid4()}"


class TestNonInterleavingNotificationIDs(StoreCase, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> LogstoreApplicationRecorder:
        return LogstoreApplicationRecorder(self.store)


class TestAggregateRecorderWithTextIds(TestAggregateRecorder):
    def new_originator_id(self) -> str:
        return f"account-{uuid4()}"


class TestTrackingRecorder(StoreCase, TrackingRecorderTestCase):
    def create_recorder(self) -> LogstoreTrackingRecorder:
        return LogstoreTrackingRecorder(self.store)


class TestProcessRecorder(StoreCase, ProcessRecorderTestCase):
    def create_recorder(self) -> LogstoreProcessRecorder:
        return LogstoreProcessRecorder(self.store)


del AggregateRecorderTestCase
del ApplicationRecorderTestCase
del NonInterleavingNotificationIDsBaseCase
del ProcessRecorderTestCase
del TrackingRecorderTestCase

add_postgres_variants(globals())
