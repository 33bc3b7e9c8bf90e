"""Readers: Ax's ``messagestore.Stream`` over one stream or over the global log.

A reader never blocks the writer: it reads the published bounds (a stream's
head, or the log's ``visible_end``) from the store's
:class:`~logstore.embedded.published.Published`, then reads records below them through
the segment's read-only mapping (found through the :class:`~logstore.embedded.log.Log`).
``next()`` waits in ``Published.wait``, which the writer wakes after each
published group and ``close()`` wakes to end a waiting reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from logstore.embedded import layout
from logstore.embedded.derived import CategoryIndex
from logstore.embedded.published import REMOVALS_WORD
from logstore.embedded.segment import SegmentRetired
from logstore.embedded.walk import BATCH_MIN, Checked
from logstore.envelope import Envelope, type_key
from logstore.errors import CorruptionError, LogStoreError, StreamClosedError
from logstore.readers import DEFAULT_READ, AsyncWaiter, Reader, check_max_count

if TYPE_CHECKING:
    from logstore.embedded.log import Log
    from logstore.embedded.published import Published
    from logstore.embedded.segment import Segment

# Fields of a record header tuple (record.RECORD_HEADER): stream id and stream offset.
_SID, _SOFF = 4, 5

PREFETCH = 256
"""Most envelopes a reader decodes ahead in one go (from one segment, all already committed)."""
CHECK_AHEAD = 1024
"""Most records a global read checks ahead in one go (:class:`~logstore.embedded.walk.Checked`), once it
reads ahead :data:`PREFETCH` at a time: it decodes them :data:`DECODE_AHEAD` at a time."""
DECODE_AHEAD = 64
"""Envelopes a global read decodes at a time from the records it checked ahead (``read()`` decodes as
many as it returns). Few envelopes alive at once set off few garbage collections: the collector's
youngest generation is collected every 700 new containers (its default threshold), and an envelope
of a few nested containers is a few of them."""
GATHER_GAP = 32
"""Records of other streams a stream read steps over between two of the stream's runs, rather than
reading each run apart (stepping over one costs about a fiftieth of a read)."""


class _Reader(Reader):
    """What both kinds of stream share: position, current message, waiting, closing.

    The Stream surface (``next``, ``anext``, iteration) is :class:`logstore.readers.Reader`'s; this class
    supplies the buffer decoded ahead, how to read more and how to wait (in :class:`Published`).
    """

    _FIRST_PREFETCH = 4

    __slots__ = (
        "_ahead",
        "_base",
        "_buf",
        "_bufi",
        "_env",
        "_epoch",
        "_log",
        "_meta",
        "_next",
        "_offs",
        "_owner",
        "_prefetch",
        "_pub",
        "_sepoch",
    )

    def __init__(self, owner: object, published: Published, log: Log, offset: int) -> None:
        # The store: held (never used) so that it lives as long as its readers do, and the fork
        # hook, which finds stores through a weak set, still closes them in a child.
        self._owner = owner
        self._pub = published  # the bounds, heads and removal count it reads; where it waits
        self._log = log  # segments and run index: where the records below the bounds are
        self._closed = False
        self._env: Envelope | None = None
        self._next = offset  # where reading goes on once the envelopes decoded ahead are used up
        # Envelopes decoded ahead (all committed and visible) and their offsets: _buf[_bufi:] are next.
        self._buf: list[Envelope] = []
        # Their offsets: _offs[i], or _base + i when _offs is None (nothing skipped in between).
        self._offs: list[int] | None = None
        self._base = 0
        self._bufi = 0
        # Where the messages of _buf came from, kept per read for stream_name() and the like
        # (see the subclasses). Invariant: the current message is _buf[_bufi - 1], described by _meta.
        self._meta: Any = None
        # Records after _buf's, read and checked but not decoded yet (a global read's): decoded a few at
        # a time as _buf runs out, from _next on.
        self._ahead: Checked | None = None
        self._prefetch = self._FIRST_PREFETCH  # doubles up to PREFETCH while a reader keeps reading
        # The store's removal count when _buf was read: a truncation, deletion or retention since then
        # drops what was decoded ahead, so that no removed message is returned after the removal.
        # _sepoch: published.counter's count then (any process's removal moves it), which the hot paths
        # compare; when it moved, _take() looks at the removal count (catching up with other processes).
        self._sepoch = published.counter[REMOVALS_WORD]
        self._epoch = published.removals

    @property
    def _current(self) -> int:
        """The offset of the message get() returns; -1 before the first (the current message is
        ``_buf[_bufi - 1]``: its offset ``_offs[_bufi - 1]``, or ``_base + _bufi - 1``)."""
        i = self._bufi - 1
        if i < 0:
            return -1
        offs = self._offs
        return self._base + i if offs is None else offs[i]

    def _take(self) -> bool:
        """Step to the next envelope decoded ahead, if any (and if nothing was removed since)."""
        i = self._bufi
        buf = self._buf
        if i >= len(buf):
            return False
        pub = self._pub
        seen = pub.counter[REMOVALS_WORD]  # before the count: a removal from here on moves it again
        if self._epoch != pub.removals:
            self._drop_ahead()
            return False
        self._sepoch = seen
        self._env = buf[i]
        self._bufi = i + 1
        return True

    def _drop_ahead(self) -> None:
        self._ahead = None
        i = self._bufi
        if i < len(self._buf):
            self._next = self._base + i if self._offs is None else self._offs[i]
            # Cut what was decoded ahead; the current message stays _buf[i - 1], with its _meta.
            del self._buf[i:]

    def _fill(self, buf: list[Envelope], offs: list[int] | None, base: int, resume: int, meta: object) -> bool:
        """Hand out ``buf``: offsets ``offs``, or ``base``, ``base + 1``, ... when ``offs`` is None.

        ``meta`` says where they came from (see the subclasses). A removal since
        the read began (``_epoch``) drops them, and the read starts again at
        their first offset; the current message then stays the one before.
        """
        if self._epoch != self._pub.removals:
            self._next = base if offs is None else offs[0]
            return False
        self._buf = buf
        self._offs = offs
        self._base = base
        self._meta = meta
        self._next = resume
        if self._prefetch < PREFETCH:
            self._prefetch *= 2
        # Take the first one: a removal from here on comes after this read, like one after the return.
        self._env = buf[0]
        self._bufi = 1
        return True

    def _take_checked(self, count: int) -> bool:
        """Decode up to ``count`` of the records checked ahead (``_ahead``, a global read's) and hand them
        out (``_fill``, with their record headers as ``_meta``).

        False, with nothing checked ahead kept, if a removal came since they were read (the read
        starts again at the first of them: ``_next``).
        """
        ahead = self._ahead
        assert ahead is not None
        pub = self._pub
        seen = pub.counter[REMOVALS_WORD]  # before the count: a removal from here on moves it again
        if self._epoch != pub.removals:
            self._ahead = None
            return False
        self._sepoch = seen
        i = ahead.i
        envs = ahead.take(count)
        if ahead.i == ahead.n:
            self._ahead = None
        base = ahead.goff + i
        if self._fill(envs, None, base, base + len(envs), ahead.headers[i : ahead.i]):
            return True
        self._ahead = None  # a removal during the decoding: _fill set _next to the first of them
        return False

    # Subclasses provide these two.
    def _available(self) -> bool:
        raise NotImplementedError

    def _advance_once(self) -> bool:
        raise NotImplementedError

    def _advance(self) -> bool:
        """Step to the next readable message if one is available now."""
        while True:
            pub = self._pub
            removals = pub.removals
            if self._advance_once():
                return True
            if pub.removals == removals:
                follower = pub.follower
                if follower is None or not follower.refresh():
                    return False
                # Another process published more (a read-only store follows it): read on.
            # A removal during the read made _take drop what was read: read again.

    def _segment_for(self, goff: int) -> Segment:
        try:
            return self._log.segment_for(goff)
        except (KeyError, IndexError):
            if self._pub.closed:  # close() emptied the segment list under this read
                raise StreamClosedError("the store was closed during the read") from None
            raise

    def _retired(self) -> None:
        """The segment being read was closed under the read: by close(), or replaced by compaction."""
        if self._pub.closed:
            raise StreamClosedError("the store was closed during the read")

    def _closed_error(self, what: str = "the stream is closed") -> LogStoreError:
        """Why a closed reader refuses: closed, or carried into a forked child (the fork closes every reader)."""
        forked = self._pub.forked_error
        if forked is not None:
            return forked()
        return StreamClosedError(what)

    def try_next(self) -> bool:
        """Advance to the next message if one is available now; return whether it did."""
        if self._closed:
            raise self._closed_error()
        # Inline _take(): the common case on a scan is an envelope already decoded.
        i = self._bufi
        buf = self._buf
        if i < len(buf) and self._sepoch == self._pub.counter[REMOVALS_WORD]:
            self._env = buf[i]
            self._bufi = i + 1
            return True
        if i >= len(buf) and self._ahead is not None and self._take_checked(DECODE_AHEAD):
            return True  # the next few of the records checked ahead, decoded
        return self._advance()

    def _wait(self, ticket: object, deadline: float | None) -> bool:
        # _advance() moves past whatever it skips (removed messages, control records), so
        # when it finds nothing, _available() stays False until something new is published.
        # Published.wait counts this thread as waiting before it calls _ready, which reads
        # _closed: close() sets _closed, then wakes only if some thread (or anext()) waits.
        return self._pub.wait(self._ready, deadline)

    def _ready(self) -> bool:
        """A waiting next() may go on: the reader was closed, or something new is available."""
        return self._closed or self._available()

    def _add_async_waiter(self, waiter: AsyncWaiter) -> None:
        self._pub.add_async_waiter(waiter)

    def _discard_async_waiter(self, waiter: AsyncWaiter) -> None:
        self._pub.discard_async_waiter(waiter)

    def __next__(self) -> Envelope:
        """``for env in stream`` yields the messages available now, then stops."""
        # Inline try_next() and get() for an envelope already decoded (and nothing removed since).
        i = self._bufi
        buf = self._buf
        if i < len(buf) and not self._closed and self._sepoch == self._pub.counter[REMOVALS_WORD]:
            env = buf[i]
            self._env = env
            self._bufi = i + 1
            return env
        self._check_open()
        if i >= len(buf) and self._ahead is not None and self._take_checked(DECODE_AHEAD):
            return self._env  # type: ignore[return-value]  # _fill() set it
        if not self._advance():  # the rest of try_next(): nothing decoded ahead is left to take
            raise StopIteration
        return self.get()

    def read(self, max_count: int = DEFAULT_READ) -> list[Envelope]:
        """Up to ``max_count`` of the messages available now, in order, in one call (empty when none).

        Slices of what was decoded ahead, with no call per message; the last one returned becomes the
        current message. Never waits.
        """
        check_max_count(max_count)
        if self._closed:
            raise self._closed_error()
        return self._read(max_count)

    def _read(self, max_count: int) -> list[Envelope]:
        out: list[Envelope] = []
        counter = self._pub.counter
        while True:
            i = self._bufi
            buf = self._buf
            if i < len(buf) and self._sepoch == counter[REMOVALS_WORD]:
                j = min(len(buf), i + max_count - len(out))
                out += buf[i:j]
                self._bufi = j
                self._env = buf[j - 1]
            elif i >= len(buf) and self._ahead is not None and self._take_checked(max_count - len(out)):
                out.append(self._env)  # type: ignore[arg-type]  # _fill() set it
            elif self._advance():
                out.append(self._env)  # type: ignore[arg-type]  # _advance() set it
            else:
                return out
            if len(out) >= max_count:
                return out

    def get(self) -> Envelope:
        """The envelope at the current position (after a successful ``next``/``try_next``)."""
        env = self._env
        if env is None or self._closed:
            self._check_open()
            raise ValueError("get() before a successful next() or try_next()")
        return env

    def offset(self) -> int:
        """The offset of the envelope ``get()`` returns."""
        self._check_open()
        if self._current < 0:
            raise ValueError("offset() before a successful next() or try_next()")
        return self._current

    def _check_current(self, what: str) -> None:
        """Raise as ``offset()`` does when there is no current message (closed, or not advanced yet)."""
        self._check_open()
        if self._current < 0:
            raise ValueError(f"{what}() before a successful next() or try_next()")

    def close(self) -> None:
        """Close the stream; a ``next()`` waiting in another thread raises ``StreamClosedError``."""
        if self._closed:
            return
        self._closed = True
        pub = self._pub
        pub.readers.discard(self)
        # Only a waiting next() or anext() cares that it closed. Both register with the published
        # state (Published.wait, add_async_waiter) before they read _closed, which is set above.
        if pub.waiting():
            pub.wake()


def read_run(published: Published, log: Log, sid: int, want: int, head: int) -> list[Envelope] | None:
    """Offsets ``want`` .. ``head - 1`` of stream ``sid`` in one read, when they are one run of one segment,
    all readable now: what a :class:`StreamReader` from ``want`` iterates, without the reader.

    ``Store.read`` loads a stream this way (an aggregate's events, written by one transaction or in one
    run): no reader object, no registration, one record loop. ``None`` when anything is out of the
    ordinary (several runs, several segments, retention or the visible end within the range, a removal
    or a close during the read, a skipped record, damage): the caller then reads through a
    :class:`StreamReader`, which handles all of it and reports damage precisely.
    """
    epoch = published.removals  # as _advance_once: the removal count before the read, checked after it
    try:
        run_off, run_goff, nxt = log.runs.find(sid, want)
        if 0 <= nxt < head:
            return None
        goff = run_goff + (want - run_off)
        stop = goff + (head - want)
        if goff < published.log_start or stop > published.visible_end:
            return None
        seg = log.segment_for(goff)
        if stop > seg.first + seg.count:
            return None
        buf: list[Envelope] = []
        end, offs, _headers = seg.read(goff, stop, buf, sid, want)
    except (KeyError, IndexError, SegmentRetired, LogStoreError):
        return None
    if end != stop or offs is not None or len(buf) != stop - goff or published.removals != epoch:
        return None
    return buf


def _no_run(log: Log, name: str, want: int, head: int) -> CorruptionError:
    """The catalog says stream ``name`` holds offset ``want`` (below its head), and the run index has no run
    that holds it: the index files disagree with each other (checksums cannot tell a forgery, or a bug in
    the code that wrote them); ``logstore verify`` names what is wrong, ``logstore repair`` rebuilds them."""
    path = layout.index_path(log.directory, layout.CATALOG_PREFIX.rstrip("."), log.generation)
    return CorruptionError(
        path,
        0,
        f"stream {name!r}: no run holds offset {want}, below its head {head}: the catalog and its run index disagree",
        "run `logstore verify`, then `logstore repair`",
    )


class StreamReader(_Reader):
    """Reads one named stream in offset order (``store.open_stream``, ``store.stream``).

    ``name`` is the stream's name; ``found`` whether it existed (had a
    committed message and was not deleted) when the reader was opened.

    >>> import logstore, tempfile
    >>> with logstore.open(tempfile.mkdtemp(), segment_size=1 << 20) as store:
    ...     with store.transaction() as tx:
    ...         tx.append("order-42", 0, [logstore.Envelope.new("OrderPlaced", {"sku": "A1"})])
    ...     with store.stream("order-42") as stream:
    ...         stream.found, stream.try_next(), stream.stream_offset(), stream.global_offset()
    (True, True, 0, 0)
    """

    __slots__ = ("_held", "_run", "_seg", "_seg_end", "_sid", "found", "name")

    # A stream is mostly read whole from its start (loading an aggregate): the first read
    # decodes up to 16 envelopes at once, so a short stream takes one read.
    _FIRST_PREFETCH = 16

    def __init__(
        self, owner: object, published: Published, log: Log, name: str, offset: int, sid: int | None = None
    ) -> None:
        super().__init__(owner, published, log, offset)
        self.name = name
        # The stream's id: ``sid`` as the caller just looked it up, or None when it has none yet.
        self._sid = published.catalog.ids.get(name) if sid is None else sid
        # Cached run: (first offset, its global offset, offsets below this stay in the run).
        self._run = (0, 0, 0)
        self._seg: Segment | None = None
        self._seg_end = 0  # _seg.first + _seg.count when last read (the active segment grows)
        # The global offset of the next message when the visible end held the read back (-1: not held). The
        # heads may count commits not yet readable: another process's, applied by this process's writer
        # before they are durable (durability="fsync").
        self._held = -1
        self.found = False  # set by the store when it opens the reader

    # _meta: the global offset minus the stream offset of the records of _buf (a read within one
    # run of the stream, whose records have consecutive global offsets), or the list of their
    # global offsets (a read over several runs, _gather).

    def stream_name(self) -> str:
        """The stream's name (``name``), once there is a current message."""
        self._check_current("stream_name")
        return self.name

    def stream_offset(self) -> int:
        """The current message's offset in the stream: ``offset()``."""
        self._check_current("stream_offset")
        return self._current

    def global_offset(self) -> int:
        """The current message's global offset (its position in the whole log)."""
        self._check_current("global_offset")
        meta = self._meta
        if type(meta) is list:  # a read over several runs (_gather): each envelope's global offset
            goff: int = meta[self._bufi - 1]
            return goff
        diff: int = meta
        return self._current + diff

    def _head(self) -> int:
        sid = self._sid
        cat = self._pub.catalog
        if sid is None:
            sid = cat.ids.get(self.name)
            if sid is None:
                return 0
            self._sid = sid
        return int(cat.head[sid])

    def _available(self) -> bool:
        if self._bufi < len(self._buf):
            return True
        head = self._head()
        if self._sid is None or max(self._next, int(self._pub.catalog.first[self._sid])) >= head:
            return False
        held = self._held
        return held < 0 or self._pub.visible_end > held

    # Long on purpose: the global reader's read loop (hot path, bench W3), one pass on purpose.
    def _advance_once(self) -> bool:  # noqa: PLR0912, PLR0915
        if self._bufi < len(self._buf) and self._take():
            return True
        pub = self._pub
        lg = self._log
        self._sepoch = pub.counter[REMOVALS_WORD]
        self._epoch = pub.removals  # before reading the removal bounds below
        cat = pub.catalog
        sid = self._sid
        if sid is None:
            sid = cat.ids.get(self.name)
            if sid is None:
                return False
            self._sid = sid
        head: int = cat.head.item(sid)  # the head before the first offset (as _head(), then first)
        want = max(self._next, cat.first.item(sid))
        self._held = -1
        while want < head:
            run_off, run_goff, limit = self._run
            if not run_off <= want < limit:
                try:
                    run_off, run_goff, nxt = lg.runs.find(sid, want)
                except KeyError:
                    # Below the stream's first run: retention dropped those offsets before the
                    # indexes were rebuilt from the log, which starts the stream at its first run.
                    runs = lg.runs.runs_of(sid)
                    if not runs or runs[0][0] <= want:
                        raise _no_run(lg, self.name, want, head) from None
                    want = runs[0][0]
                    continue
                limit = head if nxt < 0 else min(nxt, head)
                self._run = (run_off, run_goff, limit)
            elif limit > head:
                limit = head
            goff = run_goff + (want - run_off)
            start = pub.log_start
            if goff < start:  # dropped by retention: skip to the first retained message of the run
                want += min(start - goff, limit - want)
                continue
            visible = pub.visible_end
            if goff >= visible:  # counted in the head, not readable yet (see _held)
                self._held = goff
                break
            seg = self._seg
            seg_end = self._seg_end
            if seg is None or not seg.first <= goff < seg_end:
                if seg is not None and seg.first <= goff:
                    seg_end = self._seg_end = seg.first + seg.count  # the active segment may have grown
                if seg is None or not seg.first <= goff < seg_end:
                    try:
                        seg = self._seg = self._segment_for(goff)
                    except KeyError:
                        if goff < pub.log_start:  # retention dropped its segment since log_start was read
                            continue
                        raise
                    seg_end = self._seg_end = seg.first + seg.count
            if limit < head and limit - want < self._prefetch and goff + limit - want < min(seg_end, visible):
                try:
                    gathered = self._gather(seg, want, goff, limit, head, min(seg_end, visible))
                except SegmentRetired:
                    self._retired()
                    self._seg = None
                    continue
                if gathered is not None:
                    return gathered
            stop = min(goff + limit - want, seg_end, goff + self._prefetch, visible)
            buf: list[Envelope] = []
            try:
                offs = seg.read(goff, stop, buf, sid, want)[1]
            except SegmentRetired:
                self._retired()
                self._seg = None
                continue
            if buf:
                diff = goff - want
                if offs is not None:  # a record was skipped: the global offsets of the envelopes, as stream offsets
                    offs = [g - diff for g in offs]
                return self._fill(buf, offs, want, want + len(buf) if offs is None else offs[-1] + 1, diff)
            want += stop - goff  # only records that repair marked lost: skip them
        self._next = want
        return False

    def _gather(self, seg: Segment, want: int, goff: int, limit: int, head: int, end: int) -> bool | None:
        """Read the stream from ``want`` (at global ``goff``; its run ends at offset ``limit``) over this
        run and the next ones in ``seg`` below global ``end``, in one pass; None if it met anything
        unusual (the caller then reads the one run, which reports damage).

        For a stream written in small transactions beside other streams (the notification stream of
        ``logstore.eventsourcing``, say): its runs are short, and one read per run costs more than
        stepping over the few records of other streams between them (at most :data:`GATHER_GAP` in a row).
        """
        sid = self._sid
        assert sid is not None
        count = min(self._prefetch, head - want)
        buf: list[Envelope] = []
        got = seg.gather(goff, end, buf, sid, want, count, GATHER_GAP)
        if got is None or not buf:
            return None
        soffs, goffs, nxt, _after = got
        offs = None if soffs[-1] - want + 1 == len(soffs) else soffs
        return self._fill(buf, offs, want, nxt, goffs)

    def __repr__(self) -> str:
        return f"<logstore stream {self.name!r} next offset {self._next}{' closed' if self._closed else ''}>"


class GlobalReader(_Reader):
    """Reads every stream in global (commit) order (``store.open_global``, ``store.global_stream``).

    ``offset()`` is the global offset; ``stream_name()`` and ``stream_offset()``
    say where the current message belongs.

    >>> import logstore, tempfile
    >>> with logstore.open(tempfile.mkdtemp(), segment_size=1 << 20) as store:
    ...     with store.transaction() as tx:
    ...         tx.append("order-42", 0, [logstore.Envelope.new("OrderPlaced", {"sku": "A1"})])
    ...     with store.global_stream() as log:
    ...         log.try_next(), log.offset(), log.stream_name(), log.stream_offset()
    (True, 0, 'order-42', 0)
    """

    # _meta: the record headers of _buf's messages as the segment read them (Segment.read):
    # a list of header tuples, or a numpy record array with fields "sid" and "soff".

    __slots__ = ("_seg", "_trim_key", "_trimmed")

    def __init__(self, owner: object, published: Published, log: Log, offset: int) -> None:
        super().__init__(owner, published, log, offset)
        self._seg: Segment | None = None
        self._trimmed: dict[int, int] = {}
        self._trim_key: tuple[int, object] | None = None  # (removals, catalog) that _trimmed was taken at

    def _available(self) -> bool:
        pub = self._pub
        return self._bufi < len(self._buf) or max(self._next, pub.log_start) < pub.visible_end

    def _bounds(self) -> tuple[int, dict[int, int]]:
        """Note the removal counts, then read the visible end and the streams' raised first offsets (the
        catalog's ``trimmed``, computed again only after a removal or a new catalog)."""
        pub = self._pub
        self._sepoch = pub.counter[REMOVALS_WORD]
        self._epoch = pub.removals  # before reading the removal bounds below
        end = pub.visible_end
        cat = pub.catalog
        if self._trim_key != (self._epoch, cat):  # a removal raised some stream's first offset
            self._trimmed = cat.trimmed()
            self._trim_key = (self._epoch, cat)
        return end, self._trimmed

    def _advance_once(self) -> bool:
        if self._bufi < len(self._buf) and self._take():
            return True
        if self._ahead is not None and self._take_checked(DECODE_AHEAD):
            return True
        pub = self._pub
        end, trimmed = self._bounds()
        want = max(self._next, pub.log_start)
        while want < end:
            seg = self._seg
            if seg is None or not seg.first <= want < seg.first + seg.count:
                try:
                    seg = self._seg = self._segment_for(want)
                except KeyError:
                    if want < pub.log_start:  # retention dropped its segment since log_start was read
                        want = pub.log_start
                        continue
                    raise
            prefetch = self._prefetch
            stop = min(end, seg.first + seg.count, want + (CHECK_AHEAD if prefetch >= PREFETCH else prefetch))
            if stop - want >= BATCH_MIN and not trimmed:
                # Check the records first, decode them a few at a time (_take_checked).
                self._ahead = seg.check(want, stop)
                if self._ahead is not None:
                    return self._take_checked(DECODE_AHEAD)
            buf: list[Envelope] = []
            try:
                nxt, offs, meta = seg.read(want, min(stop, want + prefetch), buf, trimmed=trimmed)
            except SegmentRetired:
                self._retired()
                self._seg = None
                continue
            if buf:
                return self._fill(buf, offs, want, nxt, meta)
            want = nxt
            self._prefetch = PREFETCH  # skipping: read ahead in big steps
        self._next = want
        return False

    def _header(self) -> tuple[int, int]:
        """(stream id, stream offset) of the current message, from the header its read kept."""
        meta = self._meta
        i = self._bufi - 1
        if type(meta) is list:
            header = meta[i]
            return header[_SID], header[_SOFF]
        return int(meta["sid"][i]), int(meta["soff"][i])

    def stream_name(self) -> str:
        """The name of the stream the current message belongs to."""
        self._check_current("stream_name")
        return self._pub.catalog.names[self._header()[0]]

    def stream_offset(self) -> int:
        """The current message's offset within its stream."""
        self._check_current("stream_offset")
        return self._header()[1]

    def global_offset(self) -> int:
        """The current message's global offset: ``offset()``."""
        self._check_current("global_offset")
        return self._current

    def __repr__(self) -> str:
        return f"<logstore global stream next offset {self._next}{' closed' if self._closed else ''}>"


class SelectReader(GlobalReader):
    """Reads some of the log in global order: one category's streams (``store.open_category``), and/or the
    messages of some types (``types=``). ``offset()`` is the global offset.

    A category's records are found through the store's category index
    (:class:`~logstore.embedded.derived.CategoryIndex`): the read goes from one of them to the next and
    reads no other record. A type filter reads each record's header and type field (checksum checked) and
    decodes only the envelopes of the types wanted.

    >>> import logstore, tempfile
    >>> with logstore.open(tempfile.mkdtemp(), segment_size=1 << 20) as store:
    ...     with store.transaction() as tx:
    ...         tx.append("order-42", 0, [logstore.Envelope.new("OrderPlaced", {"sku": "A1"})])
    ...         tx.append("user-7", 0, [logstore.Envelope.new("UserSeen", {})])
    ...     with store.category("order") as orders:
    ...         [(orders.offset(), orders.stream_name(), env.type) for env in orders]
    [(0, 'order-42', 'OrderPlaced')]
    """

    __slots__ = ("_keys", "category", "types")

    # Records a type-filtered read of the whole log examines in one go (most of them are skipped).
    _WINDOW = 4 * PREFETCH

    def __init__(
        self,
        owner: object,
        published: Published,
        log: Log,
        offset: int,
        category: str | None,
        types: frozenset[str] | None,
    ) -> None:
        super().__init__(owner, published, log, offset)
        self.category = category
        self.types = types
        self._keys = None if types is None else frozenset(type_key(t) for t in types)

    def _index(self) -> CategoryIndex:
        # Looked up at each read: a follower that reloads the log puts a new index in place of the old.
        for ix in self._log.extra_indexes:
            if type(ix) is CategoryIndex:
                return ix
        raise LogStoreError("the store keeps no category index")

    def _advance_once(self) -> bool:
        if self._bufi < len(self._buf) and self._take():
            return True
        pub = self._pub
        end, trimmed = self._bounds()
        category = self.category
        want = max(self._next, pub.log_start)
        while want < end:
            if category is not None:
                listed = self._index().offsets(category, want, end, self._prefetch)
                if not len(listed):
                    want = end
                    break
                first = int(listed[0])
            else:
                first = want
            seg = self._seg
            if seg is None or not seg.first <= first < seg.first + seg.count:
                try:
                    seg = self._seg = self._segment_for(first)
                except KeyError:
                    if first < pub.log_start:  # retention dropped its segment since log_start was read
                        want = max(want, pub.log_start)
                        continue
                    raise
            seg_end = min(seg.first + seg.count, end)
            if category is not None:
                chosen: Any = listed[: int(np.searchsorted(listed, seg_end))].tolist()
            else:
                chosen = range(want, min(seg_end, want + self._WINDOW))
            buf: list[Envelope] = []
            try:
                offs, headers, done = seg.select(chosen, buf, trimmed, self._keys, self.types)
            except SegmentRetired:
                self._retired()
                self._seg = None
                continue
            nxt = chosen[done] if done < len(chosen) else chosen[-1] + 1
            if buf:
                return self._fill(buf, offs, offs[0], nxt, headers)
            want = nxt
            self._prefetch = PREFETCH  # skipping: read ahead in big steps
        self._next = want
        return False

    def __repr__(self) -> str:
        what = "global stream" if self.category is None else f"category {self.category!r}"
        return f"<logstore {what} next offset {self._next}{' closed' if self._closed else ''}>"


def close_readers(readers: Iterable[_Reader]) -> None:
    """Mark ``readers`` closed without waking anyone (the store's close, which wakes them next, and the
    fork hook in a child, which takes no lock)."""
    for reader in list(readers):
        reader._closed = True
