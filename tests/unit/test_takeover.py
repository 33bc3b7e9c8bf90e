"""Taking over from a write-lock holder that left its turn unfinished (``Follower._take_over``).

Two stores opened in one process are two participants of ``CONTROL``, exactly as two processes are, so
these cases build the state a holder leaves when it dies in its turn (bytes past the published tail, a
later segment file, the intent word set) by hand, and check what the next writer does with it.
tests/processes/ and tests/faults/ kill real processes at the same moments.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.embedded import layout
from logstore.embedded.controlfile import INTENT_AT
from logstore.embedded.fileio import FileIO
from tests.helpers import assert_verified, drain, quiet_logstore


def _commit(store: logstore.Store, stream: str, n: int = 1) -> range:
    with store.transaction() as tx:
        store.append_messages(tx, stream, logstore.ANY, [Envelope.new("E", {"n": i}) for i in range(n)])
    return tx.global_offsets


def _active_segment(path: Path) -> Path:
    return sorted((path / layout.SEGMENTS).glob("*" + layout.SEGMENT_EXT))[-1]


def _manifests(path: Path) -> list[dict[str, object]]:
    found = path / layout.LOST_FOUND
    if not found.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(found.glob("*.json"))]


def test_bytes_past_the_tail_of_a_dead_holder_are_saved_zeroed_and_written_over(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=1 << 20) as a:
        _commit(a, "s", 3)
        b = logstore.open(path, segment_size=1 << 20)
        try:
            _commit(b, "s", 1)  # b's turn publishes the tail; a catches up at its next turn
            seg = _active_segment(path)
            end = len(seg.read_bytes().rstrip(b"\0"))
            junk = bytes(range(1, 200))
            with open(seg, "r+b") as f:  # a holder that wrote past the tail and died before publishing
                f.seek(end)
                f.write(junk)
            later = seg.parent / layout.segment_name(10_000)
            later.write_bytes(b"\x07" * 100)  # a roll it began
            control = b._control
            assert control is not None
            control.set_word(INTENT_AT, 424242)
            got = _commit(a, "s", 2)
            assert got == range(4, 6)
            assert control.word(INTENT_AT) == 0
            assert not later.exists()
            data = seg.read_bytes()
            assert junk not in data
            manifests = _manifests(path)
            assert len(manifests) == 2, manifests
            assert all("424242" in str(m["reason"]) for m in manifests)
            saved = sorted(p.stat().st_size for p in (path / layout.LOST_FOUND).glob("*.bin"))
            assert saved == sorted([len(junk), 100])
            _commit(b, "s", 1)
            with b.stream("s") as r:
                assert [env.message["n"] for _o, env in drain(r)] == [0, 1, 2, 0, 0, 1, 0]
        finally:
            b.close()
    assert_verified(path)


def test_a_read_only_first_opener_leaves_the_torn_tail_to_the_first_writer(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = logstore.open(path, segment_size=1 << 20)
    _commit(store, "s", 2)
    store._abandon()  # dies: nobody has the store open
    seg = _active_segment(path)
    end = len(seg.read_bytes().rstrip(b"\0"))
    torn = bytes([60, 0, 0, 0, 1, 0]) + b"\x55" * 50  # the start of a record that was never finished
    with open(seg, "r+b") as f:
        f.seek(end)
        f.write(torn)
    with logstore.open(path, readonly=True) as reader:  # the first opener: it may not cut
        assert reader.head("s") == 2
        assert torn in seg.read_bytes()
        with logstore.open(path, segment_size=1 << 20) as writer:
            assert _commit(writer, "s", 1) == range(2, 3)
        assert torn not in seg.read_bytes()
        (manifest,) = _manifests(path)
        assert "read-only first opener" in str(manifest["reason"])
        with reader.stream("s") as r:
            assert [o for o, _env in drain(r)] == [0, 1, 2]
    assert_verified(path)


def test_a_clean_checkpoint_is_rewritten_unclean_before_another_writer_appends(tmp_path: Path) -> None:
    from logstore.embedded.checkpoint import Checkpoint

    path = tmp_path / "store"

    def clean() -> bool:
        ckpt, _sid = Checkpoint.decode((path / layout.CHECKPOINT).read_bytes(), None)
        return ckpt.clean

    reader = logstore.open(path, segment_size=1 << 20)  # writable, keeps CONTROL live; closes last
    with logstore.open(path, segment_size=1 << 20) as a:
        _commit(a, "s")
    assert not clean()  # another writable store was open when it closed
    reader.close()
    assert clean()
    keep = logstore.open(path, readonly=True)  # keeps CONTROL live: the next writer is not the first opener
    try:
        with logstore.open(path, segment_size=1 << 20) as b:
            _commit(b, "s")
            assert not clean()
        assert clean()
        with logstore.open(path, segment_size=1 << 20) as c:
            assert c.head("s") == 2
            _commit(c, "s")
            assert not clean()
    finally:
        keep.close()
    with logstore.open(path) as d:
        assert d.head("s") == 3
    assert os.path.exists(path / layout.CHECKPOINT)
    assert_verified(path)


class _FailOneWrite(FileIO):
    """Fails the next ``pwrite`` once ``armed`` is set (an EIO of the disk)."""

    armed = False

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        if self.armed:
            self.armed = False
            raise OSError(errno.EIO, "injected EIO")
        super().pwrite(fd, data, position)


def test_a_failed_writer_shows_its_readers_the_next_writer_commits_not_its_own(tmp_path: Path) -> None:
    path = tmp_path / "store"
    io = _FailOneWrite()
    with quiet_logstore():
        b = logstore.open(path, durability="none", io=io)
        c = logstore.open(path)
        try:
            with b.transaction() as tx:
                tx.append("b", 0, [Envelope.new("B0", {})])
            io.armed = True
            # Its write failed: never acknowledged; its framing gave stream "lost" an id in b's catalog.
            with pytest.raises(logstore.StoreFailedError), b.transaction() as tx:
                tx.append("lost", 0, [Envelope.new("LOST", {"x": "x" * 50}) for _ in range(3)])
            with c.transaction() as tx:  # the next holder: its new stream takes the id "lost" had in b
                tx.append("c", 0, [Envelope.new("C0", {"y": "z" * 300}), Envelope.new("C1", {})])
            want = ["B0", "C0", "C1"]
            with c.global_stream() as g:
                assert [e.type for e in g] == want
            with b.global_stream() as g:  # the failed store still reads, and reads what was published
                assert [e.type for e in g] == want
            with b.global_stream(2) as g:
                assert [e.type for e in g] == ["C1"]
            assert (b.head("c"), b.head("b"), b.head("lost")) == (2, 1, 0)
            assert b.stream_names() == ["b", "c"]
            with b.stream("c") as r:
                assert [e.type for _o, e in drain(r)] == ["C0", "C1"]
        finally:
            with contextlib.suppress(logstore.StoreFailedError):
                b.close()
            c.close()
    assert_verified(path)
