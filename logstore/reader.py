"""Readers: Ax's ``messagestore.Stream`` over one stream or over the global log.

A reader never blocks the writer: it reads the published bounds (a stream's
head, or the log's ``visible_end``), then reads records below them through the
segment's read-only mapping. ``next()`` waits on the store's condition
variable, which the writer notifies after each published group and
``close()`` notifies to wake a waiting reader.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from logstore.envelope import Envelope
from logstore.errors import StreamClosedError
from logstore.segment import SegmentRetired

if TYPE_CHECKING:
    from logstore.segment import Segment
    from logstore.store import Store

PREFETCH = 256
"""Most envelopes a reader decodes ahead in one go (from one segment, all already committed)."""


def _check_timeout(timeout: object) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if not timeout >= 0:  # also refuses NaN
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")


class _Reader:
    """What both kinds of stream share: position, current message, waiting, closing."""

    __slots__ = (
        "__weakref__",
        "_base",
        "_buf",
        "_bufi",
        "_closed",
        "_current",
        "_env",
        "_epoch",
        "_next",
        "_offs",
        "_prefetch",
        "_store",
    )

    def __init__(self, store: Store, offset: int) -> None:
        self._store = store
        self._closed = False
        self._current = -1  # offset of the message get() returns; -1 before the first
        self._env: Envelope | None = None
        self._next = offset  # where reading goes on once the envelopes decoded ahead are used up
        # Envelopes decoded ahead (all committed and visible) and their offsets: _buf[_bufi:] are next.
        self._buf: list[Envelope] = []
        # Their offsets: _offs[i], or _base + i when _offs is None (nothing skipped in between).
        self._offs: list[int] | None = None
        self._base = 0
        self._bufi = 0
        self._prefetch = 4  # doubles up to PREFETCH while a reader keeps reading
        # The store's removal count when _buf was read: a truncation, deletion or retention since then
        # drops what was decoded ahead, so that no removed message is returned after the removal.
        self._epoch = store._removals

    def _take(self) -> bool:
        """Step to the next envelope decoded ahead, if any (and if nothing was removed since)."""
        i = self._bufi
        buf = self._buf
        if i >= len(buf):
            return False
        if self._epoch != self._store._removals:
            self._drop_ahead()
            return False
        self._env = buf[i]
        offs = self._offs
        self._current = self._base + i if offs is None else offs[i]
        self._bufi = i + 1
        return True

    def _drop_ahead(self) -> None:
        if self._bufi < len(self._buf):
            i = self._bufi
            self._next = self._base + i if self._offs is None else self._offs[i]
        self._buf = []
        self._offs = None
        self._bufi = 0

    def _fill(self, buf: list[Envelope], offs: list[int] | None, base: int, resume: int) -> bool:
        """Hand out ``buf``: offsets ``offs``, or ``base``, ``base + 1``, ... when ``offs`` is None."""
        self._buf = buf
        self._offs = offs
        self._base = base
        self._bufi = 0
        self._next = resume
        if self._prefetch < PREFETCH:
            self._prefetch *= 2
        return self._take()

    # Subclasses provide these two.
    def _available(self) -> bool:
        raise NotImplementedError

    def _advance_once(self) -> bool:
        raise NotImplementedError

    def _advance(self) -> bool:
        """Step to the next readable message if one is available now."""
        while True:
            removals = self._store._removals
            if self._advance_once():
                return True
            if self._store._removals == removals:
                return False
            # A removal during the read made _take drop what was read: read again.

    def _segment_for(self, goff: int) -> Segment:
        try:
            return self._store._log.segment_for(goff)
        except (KeyError, IndexError):
            if self._store.closed:  # close() emptied the segment list under this read
                raise StreamClosedError("the store was closed during the read") from None
            raise

    def _retired(self) -> None:
        """The segment being read was closed under the read: by close(), or replaced by compaction."""
        if self._store.closed:
            raise StreamClosedError("the store was closed during the read")

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError("the stream is closed")

    def try_next(self) -> bool:
        """Advance to the next message if one is available now; return whether it did."""
        if self._closed:
            raise StreamClosedError("the stream is closed")
        # Inline _take(): the common case on a scan is an envelope already decoded.
        i = self._bufi
        buf = self._buf
        if i < len(buf) and self._epoch == self._store._removals:
            self._env = buf[i]
            self._bufi = i + 1
            offs = self._offs
            self._current = self._base + i if offs is None else offs[i]
            return True
        return self._advance()

    def next(self, timeout: float | None = None) -> None:
        """Advance to the next message, waiting for one to be committed if need be.

        Raises ``TimeoutError`` after ``timeout`` seconds (``None`` waits for
        ever) and :class:`~logstore.StreamClosedError` if the stream or its
        store is closed, including from another thread while waiting.
        """
        _check_timeout(timeout)
        self._check_open()
        cond = self._store._published
        deadline = None if timeout is None else time.monotonic() + timeout
        # _advance() moves past whatever it skips (removed messages, control records), so
        # when it finds nothing, _available() stays False until something new is published.
        while not self._advance():
            with cond:
                while True:
                    if self._closed:
                        raise StreamClosedError("the stream was closed while waiting")
                    if self._available():
                        break
                    if deadline is None:
                        cond.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError(f"no message within {timeout} s")
                        cond.wait(remaining)

    async def anext(self, timeout: float | None = None) -> Envelope:
        """Await the next message and return it; cancel like any await.

        ``timeout`` raises ``TimeoutError``; closing the stream raises
        :class:`~logstore.StreamClosedError`.
        """
        _check_timeout(timeout)
        self._check_open()
        if self._advance():
            return self.get()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            future: asyncio.Future[None] = loop.create_future()
            waiter = (loop, future)
            self._store._async_waiters.add(waiter)
            try:
                self._check_open()
                if self._advance():
                    return self.get()
                if deadline is None:
                    await future
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError(f"no message within {timeout} s")
                    try:
                        await asyncio.wait_for(future, remaining)
                    except TimeoutError:
                        raise TimeoutError(f"no message within {timeout} s") from None
            finally:
                self._store._async_waiters.discard(waiter)
            self._check_open()
            if self._advance():
                return self.get()

    def __aiter__(self) -> _Reader:
        return self

    async def __anext__(self) -> Envelope:
        """``async for env in stream`` waits for each message and ends when the stream is closed."""
        try:
            return await self.anext()
        except StreamClosedError:
            raise StopAsyncIteration from None

    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> Envelope:
        """``for env in stream`` yields the messages available now, then stops."""
        if not self.try_next():
            raise StopIteration
        return self.get()

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

    def close(self) -> None:
        """Close the stream; a ``next()`` waiting in another thread raises ``StreamClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._store._readers.discard(self)
        self._store._wake_readers()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamReader(_Reader):
    """Reads one named stream in offset order (``store.open_stream``)."""

    __slots__ = ("_run", "_seg", "_sid", "name")

    def __init__(self, store: Store, name: str, offset: int) -> None:
        super().__init__(store, offset)
        self.name = name
        self._sid = store._log.catalog.ids.get(name)
        # Cached run: (first offset, its global offset, offsets below this stay in the run).
        self._run = (0, 0, 0)
        self._seg: Segment | None = None

    def _head(self) -> int:
        sid = self._sid
        cat = self._store._log.catalog
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
        return self._sid is not None and max(self._next, int(self._store._log.catalog.first[self._sid])) < head

    def _advance_once(self) -> bool:
        if self._take():
            return True
        store = self._store
        lg = store._log
        self._epoch = store._removals  # before reading the removal bounds below
        head = self._head()
        sid = self._sid
        if sid is None:
            return False
        want = max(self._next, int(lg.catalog.first[sid]))
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
                        raise
                    want = runs[0][0]
                    continue
                limit = head if nxt < 0 else min(nxt, head)
                self._run = (run_off, run_goff, limit)
            goff = run_goff + (want - run_off)
            start = lg.log_start
            if goff < start:  # dropped by retention: skip to the first retained message of the run
                want += min(start - goff, min(limit, head) - want)
                continue
            seg = self._seg
            if seg is None or not seg.first <= goff < seg.first + seg.count:
                try:
                    seg = self._seg = self._segment_for(goff)
                except KeyError:
                    if goff < lg.log_start:  # retention dropped its segment since log_start was read
                        continue
                    raise
            stop = min(goff + min(limit, head) - want, seg.first + seg.count, goff + self._prefetch)
            buf: list[Envelope] = []
            try:
                offs = seg.read_many(goff, stop, buf, sid, want)
            except SegmentRetired:
                self._retired()
                self._seg = None
                continue
            if buf:
                return self._fill(buf, offs, want, want + len(buf) if offs is None else offs[-1] + 1)
            want += stop - goff  # only records that repair marked lost: skip them
        self._next = want
        return False

    def __repr__(self) -> str:
        return f"<logstore stream {self.name!r} next offset {self._next}{' closed' if self._closed else ''}>"


class GlobalReader(_Reader):
    """Reads every stream in global (commit) order (``store.open_global``)."""

    __slots__ = ("_seg",)

    def __init__(self, store: Store, offset: int) -> None:
        super().__init__(store, offset)
        self._seg: Segment | None = None

    def _available(self) -> bool:
        lg = self._store._log
        return self._bufi < len(self._buf) or max(self._next, lg.log_start) < lg.visible_end

    def _advance_once(self) -> bool:
        if self._take():
            return True
        store = self._store
        lg = store._log
        self._epoch = store._removals  # before reading the removal bounds below
        end = lg.visible_end
        trimmed = lg.catalog.trimmed
        want = max(self._next, lg.log_start)
        while want < end:
            seg = self._seg
            if seg is None or not seg.first <= want < seg.first + seg.count:
                try:
                    seg = self._seg = self._segment_for(want)
                except KeyError:
                    if want < lg.log_start:  # retention dropped its segment since log_start was read
                        want = lg.log_start
                        continue
                    raise
            buf: list[Envelope] = []
            try:
                nxt, offs = seg.read_global(want, min(end, seg.first + seg.count, want + self._prefetch), buf, trimmed)
            except SegmentRetired:
                self._retired()
                self._seg = None
                continue
            if buf:
                return self._fill(buf, offs, want, nxt)
            want = nxt
            self._prefetch = PREFETCH  # skipping: read ahead in big steps
        self._next = want
        return False

    def __repr__(self) -> str:
        return f"<logstore global stream next offset {self._next}{' closed' if self._closed else ''}>"
