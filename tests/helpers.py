"""Helpers shared by test modules: sizes, the consistency check every store must pass, a quiet logger, filling
stores and reading a segment's records."""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import xxhash

import logstore
from logstore import Envelope
from logstore.embedded.record import BadRecord, Record, parse_record
from logstore.embedded.verify import verify
from logstore.index.header import HEADER_SIZE
from logstore.tools.cli import main

SMALL_SEGMENT = 64 * 1024
ROOT = Path(__file__).resolve().parents[1]
"""The checkout: what a child interpreter imports logstore from."""


@contextlib.contextmanager
def quiet_logstore() -> Iterator[None]:
    """Silence the ``logstore`` logger: campaigns recover thousands of stores, each logging what it cut.

    Their findings are asserted, not logged.
    """
    logger = logging.getLogger("logstore")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def assert_verified(path: str | os.PathLike[str]) -> None:
    """Run the consistency checker on a closed store and fail with its findings."""
    result = verify(os.fspath(path))
    assert result.ok, "verify found problems:\n" + "\n".join(str(p) for p in result.problems)


def child_env() -> dict[str, str]:
    """The environment of a fresh interpreter that imports this checkout's logstore, with no kill point armed."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("LOGSTORE_KILL_AT", None)
    return environ


def spawn_python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter (``child_env``), talking through text pipes on stdin, stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_python(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``child_env``); the timeout only guards against a hang."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def commit(store: logstore.Store, stream: str, offset: int, batch: list[Envelope]) -> range:
    """Append ``batch`` to ``stream`` at ``offset`` in a transaction of its own; returns the commit's global offsets."""
    tx, committer = store.begin_tx()
    store.append_messages(tx, stream, offset, batch)
    return committer.commit()


def drain(reader: Any) -> list[tuple[int, Envelope]]:
    """Every message available now, as (offset, envelope)."""
    out = []
    while reader.try_next():
        out.append((reader.offset(), reader.get()))
    return out


def store_files(path: Path, skip: Collection[str] = ()) -> dict[str, bytes]:
    """The bytes of every file below ``path`` (but those named in ``skip``, and ``CONTROL``), by path relative to it.

    ``CONTROL`` is the shared state of the processes that have the store open: every open, read-only
    ones included, writes its slot there, and a first opener rebuilds it. It holds no data.
    """
    skip = {*skip, "CONTROL"}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name not in skip
    }


def with_format_version(data: bytes, version: int) -> bytes:
    """A file's bytes with the format version in its header set to ``version`` and the header checksum to match."""
    raw = bytearray(data)
    struct.pack_into("<H", raw, 8, version)
    struct.pack_into("<Q", raw, 56, xxhash.xxh3_64_intdigest(bytes(raw[:56])))
    return bytes(raw)


def fill_interleaved(store: logstore.Store, streams: dict[str, int], pad: int) -> None:
    """Append ``n`` messages to each stream, one transaction per message, interleaved."""
    todo = dict(streams)
    while todo:
        for name in list(todo):
            with store.transaction() as tx:
                h = store.head(name)
                store.append_messages(tx, name, h, [Envelope.new("E", {"s": name, "i": h, "pad": "x" * pad})])
            todo[name] -= 1
            if not todo[name]:
                del todo[name]


def readable_offsets(store: logstore.Store, name: str, offset: int = 0) -> list[int]:
    """The offsets of ``name`` readable from ``offset`` (filled by :func:`fill_interleaved`), checking each
    envelope's content."""
    stream, _found = store.open_stream(store, name, offset)
    out = []
    with stream:
        while stream.try_next():
            env = stream.get()
            assert env.message["s"] == name and env.message["i"] == stream.offset()
            out.append(stream.offset())
    return out


def readable_global(store: logstore.Store, offset: int = 0) -> list[tuple[str, int]]:
    """``(stream, offset)`` of each message readable in global order from ``offset`` (filled by
    :func:`fill_interleaved`)."""
    g = store.open_global(store, offset)
    out = []
    with g:
        while g.try_next():
            out.append((g.get().message["s"], g.get().message["i"]))
    return out


def segment_records(data: bytes | bytearray) -> list[tuple[int, Record]]:
    """``(position, record)`` of each record of a segment file's bytes, up to the first that does not parse."""
    out = []
    pos = HEADER_SIZE
    while True:
        try:
            rec = parse_record(data, pos, len(data))
        except BadRecord:
            return out
        out.append((pos, rec))
        pos += rec.length


def assert_not_stores_told_apart(command: str, tmp_path: Path, err: Callable[[], str]) -> None:
    """``logstore COMMAND`` on a missing path, a file and a directory that holds no store: exit 2 and says
    which (``err()`` returns what it printed on stderr); creates nothing and changes nothing."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("keep")
    (tmp_path / "file").write_text("x")
    said = {"missing": "no such directory", "file": "not a directory", "plain": "not a logstore store"}
    for target, message in said.items():
        assert main([command, str(tmp_path / target)]) == 2
        assert err() == f"logstore {command}: {tmp_path / target}: {message}\n"
    assert not (tmp_path / "missing").exists()
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["notes.txt"]
