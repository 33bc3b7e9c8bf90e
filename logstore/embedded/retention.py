"""Retention: dropping the old sealed segments that the retention options no longer keep.

It runs in the writer role (at open, after a roll, and from compaction),
between two commit groups, and writes its own transaction through the
writer's framing of control records (:meth:`logstore.embedded.writer.Writer.apply_retention`
builds it and calls :meth:`Retention.apply`).

Lock rules: only the holder of the writer role calls :meth:`Retention.apply`;
it writes the log's files and the catalog, then the published log start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from logstore.embedded.record import KIND_DELETE, KIND_RETAIN, KIND_TRUNCATE, NO_STREAM
from logstore.index.catalog import FLAG_DELETED

if TYPE_CHECKING:
    from logstore.embedded.log import Log
    from logstore.embedded.published import Published

logger = logging.getLogger("logstore")

# Rounds of retention in one call (``Retention.apply``): the first drops what the options
# call for; later ones what the first one's own transaction added or sealed.
_RETENTION_ROUNDS = 4


class Retention:
    """The retention of one store's log: ``write`` frames and writes control records, ``sync`` fsyncs them."""

    def __init__(
        self,
        log_: Log,
        published: Published,
        write: Callable[[list[tuple[int, int, int, bytes]]], None],
        sync: Callable[[], None],
    ) -> None:
        self.log = log_
        self.published = published
        self._write = write
        self._sync = sync

    def apply(self, age: float | None, max_bytes: int | None) -> int:
        """Drop the old segments that the retention options no longer keep (writer role).

        Returns the log bytes freed. Steps: (1) write one transaction: a
        RETAIN record naming the new log start, then a TRUNCATE (or DELETE,
        for a deleted stream) at its head for every stream whose last record
        lies below it, so that the log still names the stream and its head
        once its records are gone; (2) fsync it, whatever the durability
        mode, since what follows cannot be undone; (3) publish: readers skip
        everything below the log start from here on; (4) checkpoint without
        the dropped segments and remove them (``Log.drop_segments``).
        Recovery replays (1) and finishes (4). ``age`` and ``max_bytes``
        are the store's retention options (None: no limit of that kind).
        """
        lg = self.log
        freed = lg.drop_segments()
        if age is None and max_bytes is None:
            return freed
        # A round's own transaction can take the log back over ``max_bytes``, or roll the segment
        # and leave one more sealed segment to drop: retention goes round again until the log start
        # stays put. Each round drops at least one segment; the bound only stops a log whose carry
        # records alone outgrow the limit from rolling for ever.
        for _ in range(_RETENTION_ROUNDS):
            start = lg.retention_point(age, max_bytes, time.time_ns())
            if start <= lg.log_start:
                break
            self._retain(start)
            freed += lg.drop_segments()
        return freed

    def _retain(self, start: int) -> None:
        """Steps (1) to (3) of :meth:`apply` for the new log start ``start``."""
        lg = self.log
        cat = lg.catalog
        n = len(cat)
        head = cat.head[:n].astype(np.int64)
        last_msg = cat.run_diff[:n].astype(np.int64) + head - 1
        # A stream whose messages all lie below the start needs a record that names it and its head
        # past the start, unless it has one already: a control record there with first == head.
        named_at_head = (cat.ctrl[:n].astype(np.int64) - 1 >= start) & (cat.first[:n].astype(np.int64) == head)
        carry = np.flatnonzero((last_msg < start) & ~named_at_head).tolist()
        specs = [(KIND_RETAIN, NO_STREAM, start, b"")]
        for sid in carry:
            kind = KIND_DELETE if cat.flags[sid] & FLAG_DELETED else KIND_TRUNCATE
            specs.append((kind, sid, int(cat.head[sid]), cat.names[sid].encode()))
        goff = lg.next_goff
        self._write(specs)
        self._sync()
        for k, sid in enumerate(carry, start=1):
            cat.set_first(sid, int(cat.head[sid]))
            cat.ctrl[sid] = goff + k + 1
        pub = self.published
        pub.log_start = start
        pub.publish(lg.next_goff, lg.active.first, lg.active.end, wake=False)  # removed() below wakes
        logger.info("%s: retention moved the log start to global offset %d", lg.directory, start)
        pub.removed()  # readers drop what they decoded ahead, then are woken
