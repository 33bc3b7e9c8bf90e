"""The floor: the least any store could do with the benchmark's envelopes, measured beside the stores.

``floor`` is a store name of the suite (``python -m bench --stores``) in the
workloads where its work is plain: W1 and W4's writes (appends), W2 (group
commit), W3 and W4's loads (decoding). It keeps what a store must keep and
does nothing else:

- **Appending** encodes each envelope exactly as logstore does (msgpack of
  its seven fields, with the packer settings of ``logstore.envelope``; the
  same bytes), frames it with a 6-byte header (:data:`RECORD`: the payload's
  length and the stream name's length) followed by the stream name, and
  writes a transaction with one ``os.pwrite`` at the end of one file, then
  one ``os.fdatasync``. The file is pre-zeroed (written with zeros and
  synced when the store opens, before the timed part; ``reserve`` bytes),
  as logstore's segment reservation is, so each sync writes into blocks
  already allocated and written. Past the reservation it grows by
  :data:`STEP` bytes of zeros, synced (counted in ``extensions``: the
  workloads size the reservation so that it never does).
- **Group commit** (several threads), with logstore's policy: the first
  thread to find no flush under way is the flusher; it takes every
  transaction handed in so far, its own included, writes them with one
  ``pwrite`` and syncs once, while the others wait (each on a lock of its
  own); then it releases the threads it wrote for and hands the role to
  the oldest transaction that came in meanwhile, whose thread writes
  everything handed in by then. With one thread this is one ``pwrite`` and
  one ``fdatasync`` per transaction, and no lock but the queue's.
- **Reading**: opening an existing file reads it into memory (one bytes
  buffer) and notes where each envelope's bytes are and which stream they
  belong to (not timed: a store finds its records through an index it
  keeps). A scan or a load then only decodes: per envelope, what
  ``logstore.envelope.decode`` does, ``msgpack.unpackb`` with logstore's
  options on a ``memoryview`` slice, then the ``Envelope`` made from the
  list without a copy.

It checks no offset, keeps no index while writing, computes no checksum,
and cannot retry, tail or recover: it is a measure of what is left once
encoding, one write, one sync and decoding are paid, not a store. The
ratio logstore / floor is the share of that least cost in logstore's own:
1 would mean logstore spends nothing beyond it.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack

from bench.peers import Peer
from logstore import Envelope

NAME = "floor"
FILE = "floor.log"
RECORD = struct.Struct("<IH")
"""An envelope's frame header: the length of its msgpack bytes, the length of its stream's name (UTF-8)."""
STEP = 16 << 20
"""Bytes of zeros the file grows by when a write would pass its reservation."""
NAME_BYTES = 16
"""The longest stream name of the workloads (``order-0019999``), rounded up: :func:`reserve_for` counts it per
envelope."""

_ZEROS = bytes(1 << 20)
# logstore.envelope's packer settings: the same bytes for the same envelope.
_pack = msgpack.Packer(use_bin_type=True, datetime=True, strict_types=True, autoreset=True).pack
_unpackb = msgpack.unpackb
_tuple_new = tuple.__new__


_WAITING, _DONE, _LEAD, _FAILED = range(4)


class _Item:
    """One transaction handed to the flusher: its bytes, and for a thread that waits, the lock it waits on."""

    __slots__ = ("data", "gate", "state")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gate: threading.Lock | None = None
        self.state = _WAITING


def _release(items: Sequence[_Item], state: int) -> None:
    """Tell the threads waiting on ``items`` what became of them."""
    for x in items:
        x.state = state
        assert x.gate is not None
        x.gate.release()


def reserve_for(payload_bytes: int, envelopes: int) -> int:
    """Bytes to pre-zero for ``envelopes`` envelopes of ``payload_bytes`` msgpack bytes in all."""
    return payload_bytes + envelopes * (RECORD.size + NAME_BYTES)


class FloorPeer(Peer):
    """The floor (see the module's docstring): ``path/floor.log``, pre-zeroed to ``reserve`` bytes."""

    name = NAME

    def __init__(self, path: str, mode: str = "sync", reserve: int = 0) -> None:
        if mode != "sync":
            raise ValueError("floor: only sync mode (a sync per transaction or group) is measured")
        os.makedirs(path, exist_ok=True)
        self.path = os.path.join(path, FILE)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.extensions = 0  # growths past the reservation (inside the timed part when they happen)
        self.flushes = 0  # pwrite + fdatasync pairs since the store opened
        self.syncs = 0  # fdatasync calls: the flushes', and the reservation's (at open, and any growth)
        # What a read decodes: the file's bytes, each envelope's span, and each stream's spans.
        self._data = b""
        self._spans: list[tuple[int, int]] = []
        self._streams: dict[str, list[tuple[int, int]]] = {}
        self._read_end = 0
        self.end = self._read_image() if self.size else 0
        if reserve > self.size:
            self._zero(reserve)
            os.fsync(self.fd)  # the new size too; each transaction's fdatasync then has no metadata to write
            dirfd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        # Group commit: the transactions handed in and not taken by a flusher yet; whether a thread holds
        # the flusher's role; the error of a failed flush, which fails every later commit.
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._busy = False
        self._failed: BaseException | None = None

    # -- writing ------------------------------------------------------------------------------------

    def append_many(self, appends: Sequence[tuple[str, int, Sequence[Envelope]]]) -> None:
        """One transaction: encode and frame every envelope, then hand the bytes to the flusher (no offset check)."""
        parts: list[bytes] = []
        add = parts.extend
        pack, head = _pack, RECORD.pack
        for stream, _offset, envs in appends:
            name = stream.encode()
            n = len(name)
            for env in envs:
                payload = pack(list(env))
                add((head(len(payload), n), name, payload))
        self._commit(b"".join(parts))

    def _commit(self, data: bytes) -> None:
        """Durable when it returns: written and synced by this thread, or by the flusher of its group."""
        item = _Item(data)
        with self._lock:
            if self._failed is not None:
                raise RuntimeError("floor: an earlier write or sync failed") from self._failed
            self._queue.append(item)
            lead = not self._busy
            if lead:
                self._busy = True
            else:
                gate = item.gate = threading.Lock()
                gate.acquire()
        if not lead:
            gate.acquire()  # released when a flush wrote this transaction, or handed this thread the role
            if item.state == _DONE:
                return
            if item.state == _FAILED:
                raise RuntimeError("floor: a write or sync failed") from self._failed
        self._flush(item)

    def _flush(self, item: _Item) -> None:
        """The flusher's turn: write and sync every transaction queued (``item``'s among them), release their
        threads, hand the role to the oldest transaction queued meanwhile."""
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._write(batch[0].data if len(batch) == 1 else b"".join(x.data for x in batch))
        except BaseException as exc:
            with self._lock:
                self._failed = exc
                self._busy = False
                waiting, self._queue = self._queue, []
            _release([x for x in (*batch, *waiting) if x is not item], _FAILED)
            raise
        with self._lock:
            self.flushes += 1
            handed = self._queue[0] if self._queue else None
            if handed is None:
                self._busy = False
        _release([x for x in batch if x is not item], _DONE)
        if handed is not None:
            _release([handed], _LEAD)

    def _write(self, data: bytes) -> None:
        """One ``pwrite`` of ``data`` at the end, one ``fdatasync``."""
        end = self.end
        stop = end + len(data)
        if stop > self.size:
            self._zero(max(stop, self.size + STEP))
            self.extensions += 1
        written = os.pwrite(self.fd, data, end)
        if written != len(data):
            raise OSError(f"{self.path}: short write of {written} of {len(data)} bytes at {end}")
        os.fdatasync(self.fd)
        self.syncs += 1
        self.end = stop

    def _zero(self, size: int) -> None:
        """Write zeros from the file's size to ``size`` and sync them."""
        p = self.size
        while p < size:
            n = min(len(_ZEROS), size - p)
            p += os.pwrite(self.fd, _ZEROS if n == len(_ZEROS) else _ZEROS[:n], p)
        os.fdatasync(self.fd)
        self.syncs += 1
        self.size = size

    # -- reading ------------------------------------------------------------------------------------

    def _read_image(self) -> int:
        """Read the file into memory and find its envelopes (up to the first zero length); where they end."""
        data = os.pread(self.fd, self.size, 0)
        spans: list[tuple[int, int]] = []
        streams: dict[str, list[tuple[int, int]]] = {}
        unpack_from, size = RECORD.unpack_from, RECORD.size
        p = 0
        while p + size <= len(data):
            length, nlen = unpack_from(data, p)
            if length == 0:
                break  # the pre-zeroed rest
            a = p + size + nlen
            e = a + length
            if e > len(data):
                raise ValueError(f"{self.path}: the envelope framed at byte {p} runs past the end of the file")
            span = (a, e)
            spans.append(span)
            streams.setdefault(data[p + size : a].decode(), []).append(span)
            p = e
        self._data, self._spans, self._streams, self._read_end = data, spans, streams, p
        return p

    def _current(self) -> memoryview:
        """The file's bytes as read, read again first if this store wrote since (not timed where it matters:
        a workload's reads come after a reopen, or after its timed part)."""
        if self._read_end != self.end:
            self._read_image()
        return memoryview(self._data)

    def scan(self) -> Iterator[Envelope]:
        view = self._current()
        unpackb, new = _unpackb, _tuple_new
        for a, e in self._spans:
            yield new(Envelope, unpackb(view[a:e], raw=False, timestamp=3, strict_map_key=False))

    def load(self, stream: str) -> list[Envelope]:
        view = self._current()
        unpackb, new = _unpackb, _tuple_new
        return [
            new(Envelope, unpackb(view[a:e], raw=False, timestamp=3, strict_map_key=False))
            for a, e in self._streams.get(stream, ())
        ]

    def facts(self) -> dict[str, Any]:
        """What the run did beyond the envelopes: flushes (pwrite + fdatasync pairs) and growths past the reserve."""
        return {"flushes": self.flushes, "extensions": self.extensions, "reserved": self.size, "end": self.end}

    def close(self) -> None:
        os.close(self.fd)
