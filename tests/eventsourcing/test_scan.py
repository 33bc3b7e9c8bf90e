"""A notification scan in pages goes on with the reader of the page before (per thread), and stays exact.

``select_notifications`` keeps, per thread, the reader of the last page when that page was taken
whole, and uses it again when the next call starts where it stopped: commits between pages, a
``stop`` inside a page, another thread's pages, a truncation and a closed store must all give
what a fresh reader gives. Each class runs on both backends.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import InterfaceError, StoredEvent

from logstore.eventsourcing import LogstoreApplicationRecorder
from tests.eventsourcing.base import StoreCase, add_postgres_variants


def _events(n: int, topic: str = "t") -> list[StoredEvent]:
    oid = uuid4()
    return [StoredEvent(oid, v, topic, f"{v}".encode()) for v in range(1, n + 1)]


def _pages(recorder: LogstoreApplicationRecorder, limit: int, start: int | None = None) -> list[list[int]]:
    """The ids of each page of a scan from ``start`` (exclusive) to the end, as an application pulls them."""
    pages = []
    while True:
        got = recorder.select_notifications(start, limit, inclusive_of_start=False)
        if not got:
            return pages
        pages.append([n.id for n in got])
        start = got[-1].id


class TestScanInPages(StoreCase):
    def setUp(self) -> None:
        super().setUp()
        self.recorder = LogstoreApplicationRecorder(self.store, "shop")

    def reader(self) -> Any:
        return self.recorder._scan.reader

    def test_pages_go_on_with_one_reader_and_see_commits_made_between_them(self) -> None:
        for _ in range(5):
            self.recorder.insert_events(_events(1))  # one-event saves: the stream's runs are short
        first = self.recorder.select_notifications(None, 3)
        reader = self.reader()
        self.assertEqual([n.id for n in first], [1, 2, 3])
        self.recorder.insert_events(_events(4))
        second = self.recorder.select_notifications(3, 4, inclusive_of_start=False)
        self.assertEqual([n.id for n in second], [4, 5, 6, 7])
        self.assertIs(self.reader(), reader)  # the same reader, going on
        self.assertEqual(_pages(self.recorder, 2, 7), [[8, 9]])
        self.assertIs(self.reader(), reader)
        self.recorder.insert_events(_events(1))
        self.assertEqual(_pages(self.recorder, 2, 9), [[10]])
        self.assertEqual(
            [(n.originator_version, n.state) for n in second], [(1, b"1"), (1, b"1"), (1, b"1"), (2, b"2")]
        )

    def test_a_call_elsewhere_opens_another_reader_and_gives_the_same(self) -> None:
        self.recorder.insert_events(_events(10))
        self.assertEqual([n.id for n in self.recorder.select_notifications(1, 3)], [1, 2, 3])
        reader = self.reader()
        self.assertEqual([n.id for n in self.recorder.select_notifications(2, 2)], [2, 3])  # back: another
        self.assertIsNot(self.reader(), reader)
        self.assertTrue(reader.closed)
        self.assertEqual([n.id for n in self.recorder.select_notifications(8, 5)], [8, 9, 10])  # ahead: another

    def test_a_page_cut_by_stop_is_followed_exactly(self) -> None:
        self.recorder.insert_events(_events(10))
        self.assertEqual([n.id for n in self.recorder.select_notifications(None, 10, stop=4)], [1, 2, 3, 4])
        self.assertEqual([n.id for n in self.recorder.select_notifications(4, 3, inclusive_of_start=False)], [5, 6, 7])
        self.assertEqual([n.id for n in self.recorder.select_notifications(7, 9, stop=7)], [7])
        self.assertEqual([n.id for n in self.recorder.select_notifications(8, 9)], [8, 9, 10])

    def test_topics_skip_what_they_do_not_want_and_the_next_page_goes_on(self) -> None:
        self.recorder.insert_events(_events(3, "a") + _events(3, "b"))
        self.recorder.insert_events(_events(2, "a"))
        got = self.recorder.select_notifications(None, 4, topics=["a"])
        self.assertEqual([n.id for n in got], [1, 2, 3, 7])
        self.assertEqual([n.id for n in self.recorder.select_notifications(7, 4, inclusive_of_start=False)], [8])

    def test_each_thread_has_its_own_scan(self) -> None:
        self.recorder.insert_events(_events(30))
        here = self.recorder.select_notifications(None, 10)
        got: dict[str, Any] = {}

        def other() -> None:
            try:
                got["pages"] = _pages(self.recorder, 7)
                got["reader"] = self.reader()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                got["error"] = exc

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(60)
        self.assertNotIn("error", got)
        self.assertEqual([i for page in got["pages"] for i in page], list(range(1, 31)))
        self.assertIsNot(got["reader"], self.reader())
        rest = self.recorder.select_notifications(here[-1].id, 100, inclusive_of_start=False)
        self.assertEqual([n.id for n in here + list(rest)], list(range(1, 31)))

    def test_a_truncation_between_pages_is_seen(self) -> None:
        self.recorder.insert_events(_events(10))
        self.assertEqual([n.id for n in self.recorder.select_notifications(None, 2)], [1, 2])
        self.store.truncate_stream("shop_notifications", 6)
        self.assertEqual(
            [n.id for n in self.recorder.select_notifications(2, 10, inclusive_of_start=False)], [7, 8, 9, 10]
        )

    def test_a_closed_store_is_interface_error_after_a_scan_too(self) -> None:
        self.recorder.insert_events(_events(3))
        self.assertEqual(len(self.recorder.select_notifications(None, 2)), 2)
        self.store.close()
        with self.assertRaises(InterfaceError):
            self.recorder.select_notifications(2, 2, inclusive_of_start=False)


add_postgres_variants(globals())
