"""The message-id and category indexes are loaded at their first use, not at the open.

- An open after a clean close opens their files and reads none of them; a store closed without a commit
  keeps its checkpoint (marked clean again), so neither file is ever read.
- The first commit loads the message-id index (a retry of a commit made before the reopen is still told),
  the first category read loads the category index.
- Their files as they were at the open are what loads, even when another checkpoint removed them meanwhile.
- A damaged file found at the first use: the index rebuilds itself from the log, alone, with a warning, and
  the close writes its files afresh.
- Records that recovery (or a follower) applies before the load are in the index once it is loaded.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.embedded import msgids
from logstore.embedded.derived import CategoryIndex
from logstore.embedded.fileio import FileIO
from logstore.embedded.verify import verify
from logstore.results import Location
from tests.crash import simulate_crash
from tests.helpers import SMALL_SEGMENT, assert_verified


class ReadCounting(FileIO):
    """Counts the whole-file reads of each index file (by its name's prefix)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[int, str] = {}
        self.reads: list[str] = []

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = os.path.basename(path)
        return fd

    def read_fd(self, fd: int) -> bytes:
        self.reads.append(self.paths.get(fd, "?"))
        return super().read_fd(fd)

    def index_reads(self) -> list[str]:
        return [n for n in self.reads if n.startswith(("msgids", "categories"))]


def _envs(tag: str, n: int) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": i}) for i in range(n)]


def _commit(store: logstore.Store, stream: str, offset: int, envs: list[Envelope]) -> range:
    tx, committer = store.begin_tx()
    store.append_messages(tx, stream, offset, envs)
    return committer.commit()


def _fill(store: logstore.Store, n: int, tag: str = "k") -> list[tuple[str, int, list[Envelope], range]]:
    out = []
    for k in range(n):
        envs = _envs(f"{tag}{k}", 2)
        stream = f"cat{k % 3}-{k % 5}"
        head = store.head(stream)
        out.append((stream, head, envs, _commit(store, stream, head, envs)))
    return out


def _category(store: logstore.Store, name: str) -> list[int]:
    with store.category(name) as reader:
        return [reader.offset() for _env in reader]


def _by_scan(store: logstore.Store, name: str) -> list[int]:
    with store.global_stream() as log:
        return [log.offset() for _env in log if log.stream_name().partition("-")[0] == name]


def _index(store: logstore.Store) -> CategoryIndex:
    (ix,) = [ix for ix in store._log.extra_indexes if isinstance(ix, CategoryIndex)]  # private: the store's index
    return ix


def test_an_open_reads_neither_file_and_a_close_without_commits_keeps_the_checkpoint(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = _fill(store, 60)
    before = {p.name: p.stat().st_mtime_ns for p in store_dir.iterdir() if p.is_file()}
    io = ReadCounting()
    with logstore.open(store_dir, io=io) as store:
        assert store.recovery_report.checkpoint == "clean"
        assert io.index_reads() == []
        stream, head, envs, _g = written[-1]
        with store.stream(stream) as reader:  # stream reads need neither index
            assert len(list(reader)) == store.head(stream)
    assert io.index_reads() == [], "a close without a commit read an index file"
    after = {p.name: p.stat().st_mtime_ns for p in store_dir.iterdir() if p.is_file()}
    assert sorted(after) == sorted(before)  # the same generation's files: nothing written but CHECKPOINT
    assert sorted(n for n in after if after[n] != before[n]) == ["CHECKPOINT", "CONTROL"]  # CONTROL: shared words
    with logstore.open(store_dir) as store:
        assert store.recovery_report.checkpoint == "clean"
        assert _commit(store, stream, head, envs) == written[-1][3]  # still told: a retry of the last commit
    assert_verified(store_dir)


def test_the_first_commit_loads_the_message_ids_and_the_first_category_read_the_categories(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(msgids, "RECENT_MAX", 8)  # several run files
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = _fill(store, 80)
        want = {c: _by_scan(store, c) for c in ("cat0", "cat1", "cat2")}
    assert len(list(store_dir.glob("msgids-*.run"))) > 1
    io = ReadCounting()
    with logstore.open(store_dir, io=io) as store:
        assert io.index_reads() == []
        stream, head, envs, g = written[3]
        assert _commit(store, stream, head, envs) == g  # a retry: nothing written, the original range
        assert {n.partition(".")[0].partition("-")[0] for n in io.index_reads()} == {"msgids"}
        assert store.locate(envs[1].message_id) == [Location(stream, head + 1, g[1])]
        assert _category(store, "cat1") == want["cat1"]
        assert "categories" in {n.partition(".")[0] for n in io.index_reads()}
        new = _fill(store, 10, tag="new")
        for c in want:
            assert _category(store, c) == _by_scan(store, c)
        for stream, head, envs, g in new:
            assert store.locate(envs[0].message_id) == [Location(stream, head, g[0])]
    assert_verified(store_dir)


def test_the_files_as_they_were_at_the_open_load_after_their_names_are_gone(store_dir: Path) -> None:
    """Another process's checkpoint replaces the generation files and removes the old ones: the open
    descriptors still read what the open's checkpoint names."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = _fill(store, 40)
        want = _by_scan(store, "cat2")
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        gone = [p for p in store_dir.iterdir() if p.name.startswith(("msgids", "categories"))]
        assert len(gone) >= 2
        for p in gone:
            p.unlink()
        assert _category(store, "cat2") == want
        stream, head, envs, g = written[7]
        assert _commit(store, stream, head, envs) == g
        assert not any(ix.stale for ix in store._log.indexes)  # loaded, not rebuilt
    assert_verified(store_dir)  # the close wrote the next generation's files


@pytest.mark.parametrize("which", ["msgids", "categories"])
def test_a_damaged_file_found_at_the_first_use_is_rebuilt_from_the_log(
    store_dir: Path, which: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(msgids, "RECENT_MAX", 8)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = _fill(store, 50)
        want = _by_scan(store, "cat0")
    target = sorted(p for p in store_dir.iterdir() if p.name.startswith(which))[-1]
    data = bytearray(target.read_bytes())
    data[len(data) - 3] ^= 0x40  # in the body: its checksum catches it
    target.write_bytes(bytes(data))
    assert any(p.path == str(target) for p in verify(str(store_dir)).problems)
    with caplog.at_level(logging.WARNING, logger="logstore"), logstore.open(store_dir) as store:
        assert store.recovery_report.rebuilt == []  # the open did not read it
        stream, head, envs, g = written[-5]
        assert _commit(store, stream, head, envs) == g
        assert _category(store, "cat0") == want
        for stream, head, envs, g in written:
            assert store.locate(envs[0].message_id) == [Location(stream, head, g[0])]
        label = "message-id index" if which == "msgids" else "category index"
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and f"{label} unusable" in warnings[0] and "rebuilt from the log" in warnings[0]
    assert_verified(store_dir)  # the close wrote the rebuilt index's files


@pytest.mark.parametrize("early_max", [1 << 16, 4])
def test_records_recovered_before_the_load_are_in_the_index(
    store_dir: Path, early_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash leaves a tail past the checkpoint: a read-only open applies it before either index is loaded
    (and with a small bound, the message-id index loads during the apply)."""
    monkeypatch.setattr(msgids, "EARLY_MAX", early_max)
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=1 << 30)
    _fill(store, 20)
    store._writer.call(lambda: store._log.checkpoint(False))  # private: a checkpoint, in the writer role
    tail = _fill(store, 15, tag="tail")
    simulate_crash(store, random.Random(7))  # durability="fsync": every acknowledged commit survives
    with logstore.open(store_dir, readonly=True) as ro:
        assert ro.recovery_report.records_scanned == 30
        for stream, head, envs, g in tail:
            assert ro.locate(envs[1].message_id) == [Location(stream, head + 1, g[1])]
        for c in ("cat0", "cat1", "cat2"):
            assert _category(ro, c) == _by_scan(ro, c)
    with logstore.open(store_dir) as store:
        for stream, head, envs, g in tail:
            assert _commit(store, stream, head, envs) == g
    assert_verified(store_dir)


def test_a_category_read_loads_the_index_while_the_writer_queues_groups(store_dir: Path) -> None:
    """The writer queues its groups from the first commit on; a category read in another thread loads the
    file and folds the queue in order, whichever comes first."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, 30)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert _index(store)._deferred is not None  # private: the load waits for the first use
        _fill(store, 5, tag="more")
        assert _index(store)._deferred is not None  # queued, not loaded
        assert _category(store, "cat1") == _by_scan(store, "cat1")
        assert _index(store)._deferred is None
    assert_verified(store_dir)
