"""A closed store, on every backend: every member that reads or writes the store raises ``StoreClosedError``.

tests/unit/test_small_fixes.py checks that every public member of the embedded store is in this table
or in its own (the members that stay readable after ``close()``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import logstore
from logstore import Envelope
from tests.contract.backends import OpenStore
from tests.helpers import SMALL_SEGMENT

RAISES_WHEN_CLOSED: dict[str, Callable[[logstore.Store], Any]] = {
    "stream_names": lambda s: s.stream_names(),
    "global_head": lambda s: s.global_head,
    "log_start": lambda s: s.log_start,
    "head": lambda s: s.head("s"),
    "stream_info": lambda s: s.stream_info("s"),
    "begin_tx": lambda s: s.begin_tx(),
    "transaction": lambda s: s.transaction().__enter__(),
    "append_messages": lambda s: s.append_messages(None, "s", 1, [Envelope.new("E", 1)]),  # type: ignore[arg-type]
    "truncate_stream": lambda s: s.truncate_stream("s", 1),
    "delete_stream": lambda s: s.delete_stream("s"),
    "compact": lambda s: s.compact(),
    "open_stream": lambda s: s.open_stream(s, "s", 0),
    "open_global": lambda s: s.open_global(s, 0),
    "open_category": lambda s: s.open_category(s, "s", 0),
    "category": lambda s: s.category("s"),
    "stream": lambda s: s.stream("s"),
    "global_stream": lambda s: s.global_stream(),
    "read": lambda s: s.read("s"),
    "locate": lambda s: s.locate("m"),
    "subscribe": lambda s: s.subscribe("sub"),
    "subscriptions": lambda s: s.subscriptions(),
    "delete_subscription": lambda s: s.delete_subscription("sub"),
}


def _closed_store(open_store: OpenStore, readonly: bool) -> Any:
    with open_store(segment_size=SMALL_SEGMENT) as writer, writer.transaction() as tx:
        tx.append("s", 0, [Envelope.new("E", 0)])
    store = open_store(readonly=readonly, segment_size=SMALL_SEGMENT)
    store.close()
    return store


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
@pytest.mark.parametrize("member", sorted(RAISES_WHEN_CLOSED))
def test_members_that_read_the_store_raise_once_it_is_closed(
    open_store: OpenStore, member: str, readonly: bool
) -> None:
    store = _closed_store(open_store, readonly)
    with pytest.raises(logstore.StoreClosedError, match=r"store\b.*is closed"):
        RAISES_WHEN_CLOSED[member](store)


def test_a_closed_store_is_not_entered_again(open_store: OpenStore) -> None:
    store = _closed_store(open_store, False)
    with pytest.raises(logstore.StoreClosedError), store:
        pass
