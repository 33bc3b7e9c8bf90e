"""Compaction is crash-safe: stopped at any I/O step, the store opens, verifies clean and reads the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from tests.faultfs import Crash, CrashIO
from tests.helpers import SMALL_SEGMENT, assert_verified


def _build(path: Path) -> None:
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for i in range(300):
            with store.transaction() as tx:
                for name in ("a", "b", f"c{i % 5}"):
                    h = store.head(name)
                    store.append_messages(tx, name, h, [Envelope.new("E", {"s": name, "i": h, "pad": "x" * 150})])
        store.truncate_stream("a", 100)
        store.delete_stream("c3")


def _state(store: logstore.Store) -> tuple[list[tuple[int, str, int]], dict[str, object]]:
    g = store.open_global(store, 0)
    seen = []
    with g:
        while g.try_next():
            seen.append((g.offset(), g.get().message["s"], g.get().message["i"]))
    names = ["a", "b", *(f"c{i}" for i in range(5))]
    return seen, {n: store.stream_info(n) for n in names}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, object]:
    base = tmp_path_factory.mktemp("compact") / "store"
    _build(base)
    with logstore.open(base, readonly=True) as ro:
        expected = _state(ro)
    # Count the I/O steps of one whole compaction.
    probe = base.parent / "probe"
    shutil.copytree(base, probe)
    io = CrashIO()
    with logstore.open(probe, io=io) as store:
        io.armed = True
        report = store.compact()
        assert report.segments_rewritten >= 2
        io.armed = False
        assert _state(store) == expected
    return base, io.count, expected


def _compact_and_drop(base: Path, path: Path, io: CrashIO, raises: tuple[type[Exception], ...]) -> None:
    """Compact a copy of ``base`` at ``path`` through ``io``, which stops it with one of ``raises``; drop the store."""
    shutil.copytree(base, path)
    store = logstore.open(path, io=io)
    io.armed = True
    with pytest.raises(raises):
        store.compact()
    io.armed = False
    store._abandon()


def test_compaction_steps_are_counted(template: tuple[Path, int, object]) -> None:
    _base, steps, _expected = template
    assert steps > 10


def test_a_crash_at_every_step_of_compaction_leaves_a_sound_store(
    template: tuple[Path, int, object], tmp_path: Path
) -> None:
    base, steps, expected = template
    for at in range(1, steps + 1):
        path = tmp_path / f"crash-{at}"
        io = CrashIO(at)
        _compact_and_drop(base, path, io, (Crash, logstore.StoreFailedError))
        with logstore.open(path) as reopened:
            assert _state(reopened) == expected, f"crash at step {at} ({io.ops[-1]})"
        assert not list((path / "segments").glob("*.compact")), f"crash at step {at}"
        assert_verified(path)
        # Compaction finishes after the crash, and a second run has nothing left to do.
        with logstore.open(path) as again:
            again.compact()
            assert _state(again) == expected
            assert again.compact().segments_rewritten == 0
        assert_verified(path)
        shutil.rmtree(path)


def test_a_failed_io_during_compaction_fails_cleanly(template: tuple[Path, int, object], tmp_path: Path) -> None:
    base, steps, expected = template
    for at in (1, steps // 2, steps):
        path = tmp_path / f"eio-{at}"

        class EIO(CrashIO):
            def _step(self, what: str) -> None:
                try:
                    super()._step(what)
                except Crash:
                    raise OSError(5, f"injected EIO at {what}") from None

        _compact_and_drop(base, path, EIO(at), (OSError, logstore.StoreFailedError))
        with logstore.open(path) as reopened:
            assert _state(reopened) == expected
        assert_verified(path)
