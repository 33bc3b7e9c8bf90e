"""What logstore.eventsourcing promises beyond the library's own test cases.

The engine does not import the library; several applications share a store with streams of
their own; events, notifications and tracking are written in one transaction; snapshots stay
out of the notification log; a save that lost a race to the same originator gets
``IntegrityError`` or goes through, as the versions decide; ``select_events`` bounds hold on long
streams; a subscription wakes on a commit made by another process, and ``wait`` on a tracking
record. Each class runs on both backends (the ``...OnPostgres`` variants).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import unittest
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError, Notification, StoredEvent, Tracking, WaitInterruptedError
from eventsourcing.projection import EventSourcedProjection, EventSourcedProjectionRunner

from logstore.envelope import Envelope, encode_many
from logstore.errors import MessageTooLargeError
from logstore.eventsourcing import (
    LogstoreApplicationRecorder,
    LogstoreProcessRecorder,
    LogstoreTrackingRecorder,
    _encode_saved,
    _message_ids,
)
from logstore.tx import Tx
from tests.eventsourcing.base import StoreCase, add_postgres_variants
from tests.helpers import child_env


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class Kennel(Application[UUID]):
    pass


class Shelter(Application[UUID]):
    pass


class Roster(Aggregate):
    """The names of the dogs registered, one aggregate: what the projection below keeps."""

    @staticmethod
    def create_id() -> UUID:
        return UUID(int=1)

    @event("Started")
    def __init__(self) -> None:
        self.names: list[str] = []

    @event("Added")
    def add(self, name: str) -> None:
        self.names.append(name)


class Registrations(EventSourcedProjection[UUID]):
    """Follows an application's Registered events into a Roster, with tracking, in its own streams."""

    topics = (f"{__name__}:Dog.Registered",)

    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        try:
            roster: Roster = self.repository.get(Roster.create_id())
        except AggregateNotFoundError:  # the first registration
            roster = Roster()
        roster.add(domain_event.name)
        processing_event.collect_events(roster)


def given_order(given: Sequence[StoredEvent]) -> Any:
    """A sort key that puts envelopes in the order of the events ``given`` (by topic)."""
    topics = [e.topic for e in given]
    return lambda env: topics.index(env.type)


def _event(originator_id: UUID, version: int, topic: str = "topic") -> StoredEvent:
    return StoredEvent(originator_id=originator_id, originator_version=version, topic=topic, state=b"{}")


def test_importing_logstore_does_not_import_the_library() -> None:
    code = "import sys, logstore; print('eventsourcing' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


class TestApplications(StoreCase):
    def env(self, **more: str) -> dict[str, str]:
        return {"PERSISTENCE_MODULE": "logstore.eventsourcing", **self.settings, **more}

    def test_applications_in_one_store_keep_their_own_streams_and_notification_ids(self) -> None:
        kennel = Kennel(env=self.env())
        shelter = Shelter(env=self.env())
        try:
            rex = Dog("Rex")
            kennel.save(rex)
            fido = Dog("Fido")
            fido.add_trick("sit")
            shelter.save(fido)
            self.assertEqual([n.id for n in kennel.notification_log.select(start=1, limit=10)], [1])
            self.assertEqual([n.id for n in shelter.notification_log.select(start=1, limit=10)], [1, 2])
            self.assertEqual(kennel.repository.get(rex.id).name, "Rex")
            self.assertEqual(shelter.repository.get(fido.id).tricks, ["sit"])
            self.assertNotIn(fido.id, kennel.repository)
            names = set(self.store.stream_names())
            self.assertEqual(
                names,
                {
                    f"kennel_events-{rex.id}",
                    "kennel_notifications",
                    f"shelter_events-{fido.id}",
                    "shelter_notifications",
                },
            )
        finally:
            kennel.close()
            shelter.close()

    def test_snapshots_stay_out_of_the_notification_log(self) -> None:
        kennel = Kennel(env=self.env(IS_SNAPSHOTTING_ENABLED="y"))
        try:
            dog = Dog("Rex")
            dog.add_trick("roll over")
            kennel.save(dog)
            kennel.take_snapshot(dog.id)
            self.assertEqual(self.store.head(f"kennel_snapshots-{dog.id}"), 1)
            self.assertEqual(kennel.recorder.max_notification_id(), 2)
            topics = [n.topic for n in kennel.notification_log.select(start=1, limit=10)]
            self.assertTrue(all("Snapshot" not in t for t in topics), topics)
            self.assertEqual(kennel.repository.get(dog.id).tricks, ["roll over"])
        finally:
            kennel.close()

    def test_a_projection_follows_an_application_in_the_same_store(self) -> None:
        with EventSourcedProjectionRunner(
            application_class=Kennel, projection_class=Registrations, env=self.env()
        ) as runner:
            rex = Dog("Rex")
            rex.add_trick("sit")
            runner.app.save(rex, Dog("Fido"))
            last = runner.app.recorder.max_notification_id()
            runner.wait(last, timeout=30)
            roster: Roster = runner.projection.repository.get(Roster.create_id())
            self.assertEqual(roster.names, ["Rex", "Fido"])
            self.assertEqual(runner.projection.recorder.max_tracking_id("Kennel"), 3)
            self.assertEqual(runner.projection.recorder.max_notification_id(), 3)  # Started, Added, Added
        self.assertIn("registrations_tracking-Kennel", self.store.stream_names())


class RacingRecorder(LogstoreProcessRecorder):
    """Lets another writer commit ``rival`` after this recorder staged its transaction, the first time."""

    rival: Sequence[StoredEvent] = ()

    def _stage(self, tx: Tx, *args: Any) -> None:
        super()._stage(tx, *args)
        rival, self.rival = self.rival, ()
        if rival:
            LogstoreApplicationRecorder(self.store).insert_events(rival)


class TestTransactions(StoreCase):
    def test_a_tracking_conflict_writes_no_event(self) -> None:
        recorder = LogstoreProcessRecorder(self.store)
        recorder.insert_events([_event(uuid4(), 1)], tracking=Tracking("upstream", 5))
        head = self.store.global_head
        originator = uuid4()
        with self.assertRaises(IntegrityError):
            recorder.insert_events([_event(originator, 1)], tracking=Tracking("upstream", 5))
        self.assertEqual(self.store.global_head, head)
        self.assertEqual(recorder.select_events(originator), [])
        self.assertEqual(recorder.max_notification_id(), 1)
        self.assertEqual(recorder.max_tracking_id("upstream"), 5)

    def test_events_notifications_and_tracking_share_one_transaction(self) -> None:
        recorder = LogstoreProcessRecorder(self.store)
        ids = recorder.insert_events([_event(uuid4(), 1), _event(uuid4(), 1)], tracking=Tracking("upstream", 1))
        self.assertEqual(ids, [1, 2])
        with self.store.global_stream() as log:
            seen = [(log.stream_name(), log.global_offset(), env.type) for env in log]
        self.assertEqual(len(seen), 5)  # two events, their two notifications, one tracking record
        self.assertEqual([g for _s, g, _t in seen], [0, 1, 2, 3, 4])

    def test_a_save_of_interleaved_originators_notifies_in_the_order_given(self) -> None:
        recorder = LogstoreApplicationRecorder(self.store)
        a, b = uuid4(), str(uuid4())
        given = [
            StoredEvent(a, 1, "a1", b"state a1"),
            StoredEvent(b, 1, "b1", b"state b1"),
            StoredEvent(a, 2, "a2", b"state a2"),
            StoredEvent(b, 2, "b2", b"state b2"),
            StoredEvent(a, 3, "a3", b"state a3"),
        ]
        self.assertEqual(recorder.insert_events(given), [1, 2, 3, 4, 5])
        notifications = recorder.select_notifications(start=1, limit=10)
        self.assertEqual(
            [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in notifications],
            [(i + 1, e.originator_id, e.originator_version, e.topic, e.state) for i, e in enumerate(given)],
        )
        self.assertEqual([e.topic for e in recorder.select_events(a)], ["a1", "a2", "a3"])
        self.assertEqual([e.state for e in recorder.select_events(b)], [b"state b1", b"state b2"])
        # Each envelope is the same in its originator's stream and in the notification stream.
        with self.store.global_stream() as log:
            by_stream: dict[str, list[Envelope]] = {}
            for env in log:
                by_stream.setdefault(log.stream_name(), []).append(env)
        ordered = sorted(by_stream[f"stored_events-{a}"] + by_stream[f"stored_events-{b}"], key=given_order(given))
        self.assertEqual(by_stream["stored_notifications"], ordered)

    def test_a_save_that_lost_the_race_with_the_same_version_gets_integrity_error(self) -> None:
        recorder = RacingRecorder(self.store)
        originator = uuid4()
        recorder.insert_events([_event(originator, 1)])
        recorder.rival = [_event(originator, 2, "rival")]
        with self.assertRaises(IntegrityError):
            recorder.insert_events([_event(originator, 2, "mine")])
        self.assertEqual([e.topic for e in recorder.select_events(originator)], ["topic", "rival"])
        self.assertEqual(recorder.max_notification_id(), 2)

    def test_a_save_that_lost_the_race_with_a_lower_version_goes_through_after_it(self) -> None:
        recorder = RacingRecorder(self.store)
        originator = uuid4()
        recorder.insert_events([_event(originator, 1)])
        recorder.rival = [_event(originator, 2, "rival")]
        ids = recorder.insert_events([_event(originator, 3, "mine")])
        self.assertEqual(ids, [3])
        self.assertEqual([e.originator_version for e in recorder.select_events(originator)], [1, 2, 3])

    def test_a_message_of_another_stream_takes_no_notification_id(self) -> None:
        recorder = LogstoreApplicationRecorder(self.store)
        with self.store.transaction() as tx:  # another writer's message elsewhere in the store
            tx.append("elsewhere", 0, [Envelope.new("Other", 1)])
        self.assertEqual(recorder.insert_events([_event(uuid4(), 1)]), [1])


class TestMessageIds(StoreCase):
    def test_every_event_gets_a_distinct_version_4_uuid_as_its_message_id(self) -> None:
        recorder = LogstoreApplicationRecorder(self.store)
        a, b = uuid4(), uuid4()
        recorder.insert_events([_event(a, 1)])
        recorder.insert_events([_event(a, 2), _event(b, 1), _event(b, 2)])
        recorder.insert_events([_event(b, 3)])
        with self.store.global_stream() as log:
            envs = [(log.stream_name(), env) for env in log]
        events = [env for name, env in envs if name != "stored_notifications"]
        self.assertEqual(len(events), 5)
        ids = [env.message_id for env in events]
        self.assertEqual(len(set(ids)), 5)
        for mid in ids:
            self.assertEqual(str(UUID(mid)), mid)
            self.assertEqual(UUID(mid).version, 4)
        # Each notification is its event's envelope, message id and all.
        self.assertEqual(sorted(env.message_id for name, env in envs if name == "stored_notifications"), sorted(ids))

    @unittest.skipUnless(hasattr(os, "fork"), "needs os.fork")
    def test_a_forked_child_draws_message_ids_of_its_own(self) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next ids, to the parent
            try:
                os.write(write, json.dumps(_message_ids(3)).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
        mine = _message_ids(3)
        self.assertEqual(len(child), 3)
        self.assertEqual(set(child) & set(mine), set())
        # A process's ids share their first 74 bits, counted up in the last 48: the child's start is its own.
        self.assertNotEqual(child[0][:23], mine[0][:23])


class TestEncoding(unittest.TestCase):
    """A save's envelopes, encoded by the recorder piece by piece, are the bytes ``encode_many`` makes."""

    def _envs(self, topics: Sequence[object], when: datetime, message: object = None) -> list[Envelope]:
        ids = _message_ids(len(topics))
        key = uuid4().bytes
        return [
            Envelope(m, m, m, when, when, t, [key, v, b"state"] if message is None else message)  # type: ignore[arg-type]
            for v, (m, t) in enumerate(zip(ids, topics, strict=True))
        ]

    def test_the_bytes_are_encode_many_s(self) -> None:
        for when in (datetime.now(UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2600, 1, 1, tzinfo=UTC)):
            envs = self._envs(["a", "a", "b", "a"], when)
            self.assertEqual(_encode_saved(envs, "s-1", 7, 1 << 20), encode_many(envs, "s-1", 7, 1 << 20))
        text = [Envelope(e[0], e[0], e[0], e[3], e[3], e[5], ["text id", 1, b""]) for e in self._envs(["t"], when)]
        self.assertEqual(_encode_saved(text, "s-2", 0, 1 << 20), encode_many(text, "s-2", 0, 1 << 20))
        odd = [Envelope("short id", "short id", "short id", when, when, "t", [b"k", 1, b""])]
        self.assertEqual(_encode_saved(odd, "s-3", 0, 1 << 20), encode_many(odd, "s-3", 0, 1 << 20))

    def test_what_encode_many_refuses_it_refuses_alike(self) -> None:
        now = datetime.now(UTC)
        for envs, error in (
            (self._envs([5], now), TypeError),  # a topic that is not a str
            (self._envs(["t"], now, message=[b"k", 1, (1, 2)]), TypeError),  # a tuple would read back as a list
            (self._envs(["t"], now), MessageTooLargeError),  # over the limit below
        ):
            with self.assertRaises(error) as mine:
                _encode_saved(envs, "s-1", 3, 40)
            with self.assertRaises(error) as theirs:
                encode_many(envs, "s-1", 3, 40)
            self.assertEqual(str(mine.exception), str(theirs.exception))


class TestSubscription(StoreCase):
    def test_a_commit_in_another_process_wakes_a_subscription(self) -> None:
        recorder = LogstoreApplicationRecorder(self.store)
        originator = uuid4()
        got: list[Notification] = []
        waiting = threading.Event()

        subscription = recorder.subscribe(gt=None, topics=["wanted"])

        def follow() -> None:
            with subscription:
                waiting.set()
                for notification in subscription:
                    got.append(notification)
                    break

        follower = threading.Thread(target=follow)
        follower.start()
        self.assertTrue(waiting.wait(30))
        writer = textwrap.dedent(
            f"""
            import json, sys, uuid
            import logstore
            from eventsourcing.persistence import StoredEvent
            from logstore.eventsourcing import LogstoreApplicationRecorder
            settings = json.loads(sys.argv[1])
            options = {{"schema": settings["LOGSTORE_SCHEMA"]}} if "LOGSTORE_SCHEMA" in settings else {{}}
            with logstore.open(settings["LOGSTORE_PATH"], **options) as store:
                recorder = LogstoreApplicationRecorder(store)
                oid = uuid.UUID({str(originator)!r})
                recorder.insert_events([StoredEvent(oid, 1, "other", b"1")])
                recorder.insert_events([StoredEvent(oid, 2, "wanted", b"2")])
            """
        )
        command = [sys.executable, "-c", writer, json.dumps(self.settings)]
        subprocess.run(command, env=child_env(), timeout=60, check=True)
        follower.join(30)
        if follower.is_alive():
            subscription.stop()
            follower.join()
            self.fail("the subscription did not wake for another process's commit")
        self.assertEqual([(n.id, n.topic, n.originator_id, n.state) for n in got], [(2, "wanted", originator, b"2")])

    def test_stop_from_another_thread_ends_a_waiting_subscription(self) -> None:
        recorder = LogstoreApplicationRecorder(self.store)
        subscription = recorder.subscribe()
        ended = threading.Event()

        def follow() -> None:
            with subscription:
                for _notification in subscription:
                    pass
            ended.set()

        follower = threading.Thread(target=follow)
        follower.start()
        subscription.stop()
        follower.join(30)
        self.assertTrue(ended.is_set())


class TestSelectEvents(StoreCase):
    def test_bounds_over_a_long_stream_with_gaps_in_its_versions(self) -> None:
        recorder = LogstoreApplicationRecorder(self.store)
        originator = uuid4()
        versions = [3 * n + n % 2 for n in range(200)]  # ascending, uneven gaps, far above SCAN_LIMIT
        for chunk in range(0, 200, 50):
            recorder.insert_events([_event(originator, v) for v in versions[chunk : chunk + 50]])
        for gt in [None, -1, 0, 2, 3, 4, 150, 301, 302, versions[-2], versions[-1], 10_000]:
            for lte in [None, 0, 3, 151, versions[-1]]:
                for desc in (False, True):
                    for limit in (None, 1, 7):
                        expected = [v for v in versions if (gt is None or v > gt) and (lte is None or v <= lte)]
                        if desc:
                            expected.reverse()
                        expected = expected[:limit]
                        got = recorder.select_events(originator, gt=gt, lte=lte, desc=desc, limit=limit)
                        self.assertEqual([e.originator_version for e in got], expected, (gt, lte, desc, limit))
                        self.assertTrue(all(e.originator_id == originator for e in got))

    def test_a_truncated_stream_is_read_from_its_first_kept_offset(self) -> None:
        recorder = LogstoreApplicationRecorder(self.store)
        originator = uuid4()
        recorder.insert_events([_event(originator, v) for v in range(1, 101)])
        self.store.truncate_stream(recorder.originator_stream(originator), 30)
        self.assertEqual([e.originator_version for e in recorder.select_events(originator, gt=10, limit=2)], [31, 32])
        self.assertEqual([e.originator_version for e in recorder.select_events(originator, gt=80, limit=2)], [81, 82])
        self.assertEqual(len(recorder.select_events(originator)), 70)


class TestWait(StoreCase):
    def test_wait_returns_when_another_thread_tracks_the_id(self) -> None:
        recorder = LogstoreTrackingRecorder(self.store)
        recorder.insert_tracking(Tracking("upstream", 1))
        writer = threading.Thread(target=lambda: [recorder.insert_tracking(Tracking("upstream", n)) for n in (2, 4, 7)])
        writer.start()
        recorder.wait("upstream", 5, timeout=60)
        writer.join()
        self.assertEqual(recorder.max_tracking_id("upstream"), 7)

    def test_an_interrupt_set_by_another_thread_ends_a_wait(self) -> None:
        recorder = LogstoreTrackingRecorder(self.store)
        interrupt = threading.Event()
        setter = threading.Thread(target=interrupt.set)
        setter.start()
        with self.assertRaises(WaitInterruptedError):
            recorder.wait("upstream", 1, timeout=60, interrupt=interrupt)
        setter.join()

    def test_a_timeout_names_the_application_and_the_last_id(self) -> None:
        recorder = LogstoreTrackingRecorder(self.store)
        recorder.insert_tracking(Tracking("upstream", 3))
        with self.assertRaises(TimeoutError) as cm:
            recorder.wait("upstream", 4, timeout=0.01)
        self.assertIn("'upstream'", str(cm.exception))
        self.assertIn("last processed: 3", str(cm.exception))


add_postgres_variants(globals())
