"""A writer process for tests/processes/test_writers.py: opens a store writable and does what the test asks.

Run as ``python -m tests.processes.writer_child [GATE_FD]`` from the repository root. Each line on stdin is
a command, ``{"op": NAME, ...}``; the answer is one or more lines on stdout, the last holding ``"ok"``
(``true``, or ``false`` with the exception's type name as ``"error"``, its message and traceback). Lines
before it report steps, each printed only after what it reports has happened: ``{"at": "waiting"}`` right
before a blocking ``next()``, ``{"at": "gated"}`` before waiting at the gate, ``{"ack": ...}`` after each
``commit()`` of a series returned.

The gate: a command carrying ``"gate": true`` first waits until the pipe whose read end is ``GATE_FD`` reaches
its end (the test closes the write end), so that several processes start one command at the same instant.

Messages are ``{"w": writer, "i": number, "pad": "x" * n, "n": n}`` (``tag`` and ``end`` optional); a
message read back is checked for its padding and reported without it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any

import logstore
from logstore import Envelope
from logstore.embedded.fileio import KILL_AT_ENV, kill_point

TYPE = "W"

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """Print one JSON line and flush it (from any thread)."""
    line = json.dumps(obj)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def message(who: Any, i: int, pad: int = 0, **extra: Any) -> dict[str, Any]:
    return {"w": who, "i": i, **extra, "n": pad, "pad": "x" * pad}


def plain(msg: Any) -> Any:
    """A message as the test compares it: the padding checked and left out."""
    if isinstance(msg, dict) and "pad" in msg:
        if msg["pad"] != "x" * msg["n"] and msg["pad"] != "Z" * msg["n"]:
            raise AssertionError(f"padding of {msg!r} is wrong")
        msg = {k: v for k, v in msg.items() if k not in ("pad", "n")}
    return msg


def offset_arg(offset: int | None) -> int | logstore.AnyOffset:
    return logstore.ANY if offset is None else offset


class SignallingIO(logstore.FileIO):
    """The real file I/O, which also says ``lock-open`` when it opens the store's ``LOCK`` file (a writable open
    has looked at the directory and goes for the lock), and, with ``hold``, says ``held`` at the ``mkdir`` of
    ``segments`` (a store being created, ``LOCK`` held exclusively) and waits there for the gate."""

    def __init__(self, child: Child, hold: bool) -> None:
        super().__init__()
        self.child = child
        self.hold = hold

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        if os.path.basename(path) == "LOCK":
            emit({"at": "lock-open"})
        return super().open(path, flags, mode)

    def mkdir(self, path: str) -> None:
        if self.hold and os.path.basename(path) == "segments":
            self.hold = False
            emit({"at": "held"})
            self.child.wait_gate(say=False)
        super().mkdir(path)


class Child:
    def __init__(self, gate_fd: int | None) -> None:
        self.gate_fd = gate_fd
        self.store: logstore.Store | None = None
        self.readers: dict[str, Any] = {}
        self.pending: tuple[logstore.Tx, logstore.Committer] | None = None
        self.threads: dict[str, tuple[threading.Thread, dict[str, Any]]] = {}

    @property
    def s(self) -> logstore.Store:
        assert self.store is not None, "no store is open"
        return self.store

    def wait_gate(self, say: bool = True) -> None:
        assert self.gate_fd is not None, "started without a gate"
        if say:
            emit({"at": "gated"})
        while os.read(self.gate_fd, 1):
            pass

    # -- the store -------------------------------------------------------------------

    def op_open(self, path: str, options: dict[str, Any], signal: bool = False, hold: bool = False) -> dict[str, Any]:
        """Open the store; ``signal``: through :class:`SignallingIO` (``hold``: held in the creation)."""
        if signal:
            options = {**options, "io": SignallingIO(self, hold)}
        self.store = logstore.open(path, **options)
        return self.op_info()

    def op_info(self) -> dict[str, Any]:
        s = self.s
        return {
            "global_head": s.global_head,
            "log_start": s.log_start,
            "heads": {n: s.head(n) for n in s.stream_names()},
        }

    def op_close(self) -> dict[str, Any]:
        self.s.close()
        return {}

    def op_kill_counts(self) -> dict[str, Any]:
        """The calls the kill point counted so far, per site (the store must use a kill-point I/O layer)."""
        return {"sites": dict(kill_point(os.environ[KILL_AT_ENV]).site_calls)}

    # -- writing ---------------------------------------------------------------------

    def op_commit(self, appends: list[list[Any]]) -> dict[str, Any]:
        """``appends``: [stream, offset or null for ANY, [message, ...]] each, in one transaction.

        An ``OffsetConflictError`` is reported (``raised``, and ``where``: ``append`` or ``commit``), not failed.
        """
        prepared = self.op_prepare(appends)
        if "raised" in prepared:
            return prepared
        return self.op_commit_prepared()

    def op_prepare(self, appends: list[list[Any]]) -> dict[str, Any]:
        """Begin a transaction and make its appends; ``commit_prepared`` commits it."""
        s = self.s
        assert self.pending is None, "a transaction is already prepared"
        tx, committer = s.begin_tx()
        try:
            for stream, offset, msgs in appends:
                s.append_messages(tx, stream, offset_arg(offset), [Envelope.new(TYPE, m) for m in msgs])
        except logstore.OffsetConflictError as exc:
            committer.rollback()
            return {"raised": type(exc).__name__, "where": "append", "message": str(exc)}
        except BaseException:
            committer.rollback()
            raise
        self.pending = (tx, committer)
        return {}

    def op_commit_prepared(self) -> dict[str, Any]:
        assert self.pending is not None, "no transaction is prepared"
        _, committer = self.pending
        self.pending = None
        try:
            r = committer.commit()
        except logstore.OffsetConflictError as exc:
            return {"raised": type(exc).__name__, "where": "commit", "message": str(exc)}
        return {"range": [r.start, r.stop]}

    def op_mixed(self, who: int, count: int, pad: int) -> dict[str, Any]:
        """``count`` one-envelope transactions: by turns to stream ``own-<who>`` at its exact offset, to a
        shared stream at ``ANY``, and to ``own-<who>`` at ``ANY``. Returns each commit as
        ``[start, stop, stream, offset asked (null for ANY), i]``."""
        s = self.s
        own = f"own-{who}"
        own_head = s.head(own)
        done = []
        for i in range(count):
            kind = i % 3
            if kind == 0:
                stream, offset = own, own_head
            elif kind == 1:
                stream, offset = f"shared-{i % 2}", None
            else:
                stream, offset = own, None
            tx, committer = s.begin_tx()
            s.append_messages(tx, stream, offset_arg(offset), [Envelope.new(TYPE, message(who, i, pad))])
            r = committer.commit()
            if stream == own:
                own_head += 1
            done.append([r.start, r.stop, stream, offset, i])
        return {"commits": done}

    def op_series(
        self, who: Any, stream: str, first: int, count: int, pad: int = 0, fill: str = "x", end: bool = False
    ) -> dict[str, Any]:
        """Messages ``first`` .. ``first + count - 1`` to ``stream`` at ``ANY``, one transaction each, each
        acknowledged with an ``ack`` line ``[start, stop]`` once its commit returned. ``fill``: the padding's
        character; ``end`` marks the last message."""
        s = self.s
        for i in range(first, first + count):
            msg = {**message(who, i, 0, tag=f"{who}-{i}"), "n": pad, "pad": fill * pad}
            if end and i == first + count - 1:
                msg["end"] = True
            tx, committer = s.begin_tx()
            s.append_messages(tx, stream, logstore.ANY, [Envelope.new(TYPE, msg)])
            r = committer.commit()
            emit({"ack": [r.start, r.stop], "stream": stream, "msg": plain(msg)})
        return {}

    def op_race(self, who: int, stream: str, count: int) -> dict[str, Any]:
        """Try to append to ``stream`` at each offset ``0 .. count - 1`` in turn, one transaction each, as fast
        as possible: the offsets won (with the global offset) and those lost to an ``OffsetConflictError``."""
        s = self.s
        won: list[list[int]] = []
        lost: list[int] = []
        for k in range(count):
            tx, committer = s.begin_tx()
            try:
                s.append_messages(tx, stream, k, [Envelope.new(TYPE, message(who, k))])
                r = committer.commit()
            except logstore.OffsetConflictError:
                committer.rollback()
                lost.append(k)
                continue
            won.append([k, r.start])
        return {"won": won, "lost": lost}

    def op_truncate(self, stream: str, before: int) -> dict[str, Any]:
        self.s.truncate_stream(stream, before)
        return {}

    def op_compact(self) -> dict[str, Any]:
        report = self.s.compact()
        return {"erased": report.erased}

    # -- reading ---------------------------------------------------------------------

    def op_reader(self, rid: str, offset: int, stream: str | None = None) -> dict[str, Any]:
        s = self.s
        if stream is None:
            self.readers[rid] = s.open_global(s, offset)
            return {}
        reader, found = s.open_stream(s, stream, offset)
        self.readers[rid] = reader
        return {"found": found}

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

    def op_drain(self, rid: str) -> dict[str, Any]:
        """Every record reader ``rid`` has now (``try_next()`` until it has none)."""
        reader = self.readers[rid]
        recs = []
        while reader.try_next():
            recs.append(self._record(reader))
        return {"recs": recs}

    def op_read_in_thread(self, name: str, rid: str, timeout: float = 30) -> dict[str, Any]:
        """Start a thread that reads with ``next()`` until a message marked ``end``, each record with the
        ``log_start`` sampled before its ``next()``; ``join`` returns them (or what the reader raised)."""
        s = self.s
        reader = self.readers[rid]
        result: dict[str, Any] = {}

        def run() -> None:
            recs: list[list[Any]] = []
            try:
                while True:
                    start = s.log_start
                    reader.next(timeout=timeout)
                    rec = self._record(reader)
                    recs.append([*rec, start])
                    if isinstance(rec[3], dict) and rec[3].get("end"):
                        break
            except Exception as exc:  # noqa: BLE001 - reported to the test
                result["raised"] = f"{type(exc).__name__}: {exc}"
            result["recs"] = recs

        thread = threading.Thread(target=run, name=f"reader-{name}")
        self.threads[name] = (thread, result)
        thread.start()
        return {}

    def op_join(self, name: str, timeout: float = 60) -> dict[str, Any]:
        thread, result = self.threads.pop(name)
        thread.join(timeout)
        assert not thread.is_alive(), f"reader thread {name} did not finish within {timeout} s"
        return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    child = Child(int(sys.argv[1]) if len(sys.argv) > 1 else None)
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
            if cmd.pop("gate", False):
                child.wait_gate()
            result = getattr(child, f"op_{op}")(**cmd)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
            emit({"ok": False, "error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()})
            continue
        emit({"ok": True, **result})
    if child.store is not None:
        child.store.close()


if __name__ == "__main__":
    main()
