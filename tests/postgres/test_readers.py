"""Readers of a PostgreSQL store: removals during a read, reading again from the position."""

from __future__ import annotations

from typing import Any

import pytest

from logstore import Envelope


@pytest.mark.parametrize("kind", ["stream", "global"])
def test_regression_a_removal_counted_during_the_query_made_try_next_return_false(open_pg, kind):
    """A removal's own notification arrived while the reader queried: the batch was dropped, and try_next()
    said there was nothing to read though there was. It must read again instead."""
    store = open_pg()
    with store.transaction() as tx:
        tx.append("a", 0, [Envelope.new("A", i) for i in range(3)])
        tx.append("b", 0, [Envelope.new("B", 0)])
    store.truncate_stream("b", 1)
    reader = store.stream("a") if kind == "stream" else store.global_stream()
    name = "_read_stream" if kind == "stream" else "_read_global"
    read = getattr(store, name)
    bumps = [True]

    def read_with_a_removal_counted(*args: Any) -> Any:
        rows = read(*args)
        if bumps:  # the removal's notification, counted while this query ran
            bumps.pop()
            store._signal.bump(removal=True)
        return rows

    setattr(store, name, read_with_a_removal_counted)
    assert reader.try_next()
    assert (reader.offset(), reader.get().message) == (0, 0)
    assert bumps == []
    offsets = [reader.offset()]
    while reader.try_next():
        offsets.append(reader.offset())
    assert offsets == [0, 1, 2]
