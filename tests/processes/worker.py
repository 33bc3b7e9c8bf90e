"""A process that opens a store and does what the test process asks, one JSON line at a time.

Run as ``python -m tests.processes.worker`` from the repository root (with it on ``PYTHONPATH``). Each
line on stdin is a command, ``{"op": NAME, ...}``; the worker answers each with lines on stdout, the last
of which holds ``"ok"`` (``true``, or ``false`` with the exception's type name as ``"error"`` and its
message). Lines before it report steps: ``{"at": "waiting"}`` right before a blocking call, ``{"ack": ...}``
after each ``commit()`` returned, ``{"at": "fdatasync-held"}`` when the gated I/O layer holds an
fdatasync. A line is printed only after what it reports has happened.

The messages a writer commits follow from ``(seed, transaction number)`` alone (:func:`plan`), and each
names its writer, its transaction, its place in it and the transaction's size, so that the test can tell
a whole transaction from a part of one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import resource
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import logstore
from logstore import Envelope

FOLLOWED = ("s0", "s1", "s2")
"""Streams that every planned transaction may use; the first transaction of a plan appends to each."""
TYPE = "T"

# One transaction: (stream, [message, ...]) per append, in the order it appends them.
Plan = list[tuple[str, list[dict[str, Any]]]]

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON line and flush it (from any thread)."""
    line = json.dumps(obj)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def plan(seed: int, writer: int, tx: int, pad: int = 0) -> Plan:
    """The appends of transaction ``tx`` of writer ``writer``: 1-4 streams, 1-3 messages each, some to new streams."""
    rng = random.Random(f"{seed}/{writer}/{tx}")
    if tx == 0:
        streams = list(FOLLOWED)
    else:
        pool = [*FOLLOWED, "t0", "t1", "t2", "t3"]
        streams = rng.sample(pool, rng.randint(1, 4))
        if rng.random() < 0.2:
            streams[-1] = f"new-{writer}-{tx}"  # a stream that no transaction used before
    sizes = [rng.randint(1, 3) for _ in streams]
    of = sum(sizes)
    out: Plan = []
    k = 0
    for stream, n in zip(streams, sizes, strict=True):
        msgs = []
        for _ in range(n):
            msgs.append({"w": writer, "tx": tx, "k": k, "of": of, "n": pad, "pad": "x" * pad})
            k += 1
        out.append((stream, msgs))
    return out


def plain(msg: Any) -> Any:
    """A message as the test compares it: the padding checked and left out."""
    if isinstance(msg, dict) and "pad" in msg:
        if msg["pad"] != "x" * msg["n"]:
            raise AssertionError(f"padding of {msg!r} is wrong")
        msg = {k: v for k, v in msg.items() if k != "pad"}
    return msg


class GatedIO(logstore.FileIO):
    """The real file I/O, but while ``armed`` each fdatasync first says so and waits for a line on stdin;
    while ``die_at_unlock``, the process kills itself with SIGKILL right before it drops a byte-range lock
    (at the end of a turn of the writer role: the commit published, the write lock still held)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.die_at_unlock = False

    def unlock_range(self, fd: int, byte: int) -> None:
        if self.die_at_unlock:
            os.kill(os.getpid(), signal.SIGKILL)
        super().unlock_range(fd, byte)

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            emit({"at": "fdatasync-held"})
            line = sys.stdin.readline()
            if json.loads(line).get("op") != "release":
                raise AssertionError(f"expected a release, got {line!r}")
        super().fdatasync(fd)


class Worker:
    def __init__(self) -> None:
        self.store: logstore.Store | None = None
        self.io: GatedIO | None = None
        self.readers: dict[str, Any] = {}

    @property
    def s(self) -> logstore.Store:
        assert self.store is not None, "no store is open"
        return self.store

    # -- the store -------------------------------------------------------------------

    def op_open(self, path: str, options: dict[str, Any], gated: bool = False) -> dict[str, Any]:
        if gated:
            self.io = GatedIO()
            options = {**options, "io": self.io}
        self.store = logstore.open(path, **options)
        return self.op_info()

    def op_info(self, streams: list[str] | None = None) -> dict[str, Any]:
        s = self.s
        names = streams if streams is not None else s.stream_names()
        return {"global_head": s.global_head, "log_start": s.log_start, "heads": {n: s.head(n) for n in names}}

    def op_close(self) -> dict[str, Any]:
        self.s.close()
        return {}

    def op_arm(self, armed: bool, die_at_unlock: bool = False) -> dict[str, Any]:
        assert self.io is not None
        self.io.armed = armed
        self.io.die_at_unlock = die_at_unlock
        return {}

    # -- writing ---------------------------------------------------------------------

    def op_commit(self, appends: list[list[Any]]) -> dict[str, Any]:
        """``appends``: [stream, offset or null for ANY, [message, ...]] each, in one transaction."""
        s = self.s
        tx, committer = s.begin_tx()
        try:
            for stream, offset, msgs in appends:
                s.append_messages(
                    tx, stream, logstore.ANY if offset is None else offset, [Envelope.new(TYPE, m) for m in msgs]
                )
        except BaseException:
            committer.rollback()  # an append that raised leaves no transaction open behind it
            raise
        r = committer.commit()
        return {"range": [r.start, r.stop]}

    def op_commits(
        self, seed: int, writer: int, first: int, count: int, pad: int = 0, end: bool = False
    ) -> dict[str, Any]:
        """Commit planned transactions ``first`` .. ``first + count - 1``; ``end`` marks the last one's messages."""
        s = self.s
        for tx_no in range(first, first + count):
            appends = []
            tx, committer = s.begin_tx()
            for stream, msgs in plan(seed, writer, tx_no, pad):
                if end and tx_no == first + count - 1:
                    msgs = [{**m, "end": True} for m in msgs]
                head = s.head(stream)
                s.append_messages(tx, stream, head, [Envelope.new(TYPE, m) for m in msgs])
                appends.append([stream, head, [plain(m) for m in msgs]])
            r = committer.commit()
            emit({"ack": [r.start, r.stop], "tx": tx_no, "appends": appends})
        return {}

    def op_truncate(self, stream: str, before: int) -> dict[str, Any]:
        self.s.truncate_stream(stream, before)
        return {}

    def op_delete(self, stream: str) -> dict[str, Any]:
        self.s.delete_stream(stream)
        return {}

    def op_compact(self) -> dict[str, Any]:
        self.s.compact()
        return {}

    # -- reading ---------------------------------------------------------------------

    def op_reader(self, rid: str, offset: int, stream: str | None = None) -> dict[str, Any]:
        s = self.s
        if stream is None:
            self.readers[rid] = s.open_global(s, offset)
            return {}
        reader, found = s.open_stream(s, stream, offset)
        self.readers[rid] = reader
        return {"found": found}

    def op_drop(self, rid: str) -> dict[str, Any]:
        """Close reader ``rid`` and forget it."""
        self.readers.pop(rid).close()
        return {}

    def op_snapshot(self, streams: list[str]) -> dict[str, Any]:
        """Everything the store tells: the global log and each of ``streams`` read from 0 with ``try_next()``
        (records as ``[global offset, stream, offset, message]``), heads, ``stream_info`` and names."""
        s = self.s
        log = []
        with s.open_global(s, 0) as everything:
            while everything.try_next():
                log.append(self._record(everything))
        reads: dict[str, Any] = {}
        for name in streams:
            reader, found = s.open_stream(s, name, 0)
            recs = []
            with reader:
                while reader.try_next():
                    recs.append(self._record(reader))
            reads[name] = {"found": found, "recs": recs}
        infos = {name: s.stream_info(name) for name in streams}
        return {
            "log": log,
            "streams": reads,
            "heads": {name: s.head(name) for name in streams},
            "infos": {name: None if i is None else [i.first, i.head, i.deleted] for name, i in infos.items()},
            "names": s.stream_names(),
            "global_head": s.global_head,
            "log_start": s.log_start,
        }

    def _record(self, reader: Any) -> list[Any]:
        return [reader.global_offset(), reader.stream_name(), reader.stream_offset(), plain(reader.get().message)]

    def op_next(self, rid: str, timeout: float) -> dict[str, Any]:
        """Say ``waiting``, then ``next(timeout)``: the record it took (the exception if none), and how long it took."""
        reader = self.readers[rid]
        emit({"at": "waiting"})
        started = time.monotonic()
        try:
            reader.next(timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            return {"raised": type(exc).__name__, "elapsed": time.monotonic() - started}
        return {"rec": self._record(reader), "elapsed": time.monotonic() - started}

    def op_take(self, rid: str, count: int) -> dict[str, Any]:
        """``next()`` ``count`` times without waiting long: the records."""
        reader = self.readers[rid]
        recs = []
        for _ in range(count):
            reader.next(timeout=10)
            recs.append(self._record(reader))
        return {"recs": recs}

    def op_read(
        self, rid: str, until_end: bool = True, count: int | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        """Read with ``next()`` until the last message of the transaction marked ``end`` (or ``count`` records).

        Each record comes with ``log_start`` sampled before its ``next()`` and ``global_head`` after it.
        """
        s = self.s
        reader = self.readers[rid]
        recs: list[list[Any]] = []
        emit({"at": "reading"})
        while count is None or len(recs) < count:
            start = s.log_start
            reader.next(timeout=timeout)
            rec = self._record(reader)
            recs.append([*rec, start, s.global_head])
            msg = rec[3]
            if until_end and isinstance(msg, dict) and msg.get("end") and msg["k"] == msg["of"] - 1:
                break  # the last message of the transaction marked end
        return {"recs": recs}

    def op_read_streams(self, ids: list[str], counts: list[int], timeout: float = 30) -> dict[str, Any]:
        """One thread per stream reader, each reading its count with ``next()`` and sampling ``global_head``."""
        s = self.s
        results: dict[str, Any] = {}

        def run(rid: str, count: int) -> None:
            reader = self.readers[rid]
            recs: list[list[Any]] = []
            try:
                while len(recs) < count:
                    reader.next(timeout=timeout)
                    recs.append([*self._record(reader), s.global_head])
                results[rid] = recs
            except Exception as exc:  # noqa: BLE001 - reported to the test
                results[rid] = f"{type(exc).__name__}: {exc} after {len(recs)} records"

        threads = [threading.Thread(target=run, args=(i, c)) for i, c in zip(ids, counts, strict=True)]
        emit({"at": "reading"})
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"streams": results}

    def op_close_while_waiting(self, rid: str) -> dict[str, Any]:
        """``next(timeout=30)`` in this thread; another thread closes the reader when a line comes on stdin."""
        reader = self.readers[rid]

        def closer() -> None:
            sys.stdin.readline()
            reader.close()

        thread = threading.Thread(target=closer)
        thread.start()
        result = self.op_next(rid, 30)
        thread.join()
        return result

    def op_anext(self, rid: str, timeout: float) -> dict[str, Any]:
        reader = self.readers[rid]

        async def run() -> dict[str, Any]:
            emit({"at": "waiting"})
            started = time.monotonic()
            env = await reader.anext(timeout=timeout)
            assert env is reader.get()
            return {"rec": self._record(reader), "elapsed": time.monotonic() - started}

        return asyncio.run(run())

    def op_idle_cpu(self, rid: str, seconds: float) -> dict[str, Any]:
        """CPU time of this whole process (every thread) across one ``next(timeout=seconds)`` that times out."""
        reader = self.readers[rid]
        emit({"at": "waiting"})
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        try:
            reader.next(timeout=seconds)
            outcome = "returned"
        except TimeoutError:
            outcome = "TimeoutError"
        elapsed = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        return {"outcome": outcome, "cpu": cpu, "elapsed": elapsed}

    def op_fork(self) -> dict[str, Any]:
        """Fork; the child uses the store (and a reader) and reports what each use raised, then leaves."""
        s = self.s
        reader = next(iter(self.readers.values()), None)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                uses: list[tuple[str, Callable[[], object]]] = [
                    ("global_head", lambda: s.global_head),
                    ("open_global", lambda: s.open_global(s, 0)),
                    ("head", lambda: s.head("s0")),
                ]
                if reader is not None:
                    uses.append(("next", lambda: reader.next(timeout=0.1)))
                raised: dict[str, str | None] = {}
                for name, use in uses:
                    try:
                        use()
                        raised[name] = None
                    except BaseException as exc:  # noqa: BLE001 - reported to the parent
                        raised[name] = type(exc).__name__
                data = json.dumps(raised).encode()
                while data:
                    data = data[os.write(w, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        chunks = []
        while True:
            ready, _, _ = select.select([r], [], [], 20)
            if not ready:
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        return {"child": json.loads(b"".join(chunks) or b"null"), "status": os.waitstatus_to_exitcode(status)}


def main() -> None:
    # What the engine logs (a follower's reload, say) goes to stderr, where the test may look for it.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    worker = Worker()
    emit({"at": "started", "pid": os.getpid()})
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "exit":
            break
        try:
            result = getattr(worker, f"op_{op}")(**cmd)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
            emit({"ok": False, "error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()})
            continue
        emit({"ok": True, **result})
    if worker.store is not None:
        worker.store.close()


if __name__ == "__main__":
    main()
