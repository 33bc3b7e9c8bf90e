"""A derived index added by registration alone: kept by the writer, saved at checkpoints, recovered, rebuilt.

``Tally`` is the kind of index docs/ARCHITECTURE.md ("Adding a derived index")
shows: one class, registered in ``logstore.embedded.derived.EXTRA_INDEXES``. These
tests hold the engine to the protocol for it: every committed transaction is
applied once, in order, whether the writer commits it, recovery finds it past
the checkpoint, or the whole log is applied after its file is lost.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import logstore
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.derived import EXTRA_INDEXES, Applied, DerivedIndex
from logstore.embedded.record import KIND_MESSAGE, KIND_RETAIN, NO_STREAM
from logstore.embedded.verify import verify
from logstore.envelope import Envelope
from tests.helpers import SMALL_SEGMENT, assert_verified

ROOT = Path(__file__).resolve().parents[2]


class Tally(DerivedIndex):
    """Messages per stream id, control records, and transactions, in the order applied."""

    file = "tally"
    label = "tally"

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.messages: dict[int, int] = {}
        self.controls = 0
        self.transactions: list[int] = []  # the first global offset of each, in the order applied

    def apply(self, records: Applied) -> None:
        self.transactions.append(records[0][1].goff)
        for _i, rec in records:
            if rec.kind == KIND_MESSAGE:
                self.messages[rec.sid] = self.messages.get(rec.sid, 0) + 1
            elif rec.kind != KIND_RETAIN and rec.sid != NO_STREAM:
                self.controls += 1

    def encode(self, generation: int) -> bytes:
        return msgpack.packb([generation, self.messages, self.controls, self.transactions])

    def load(self, data: bytes | None, ckpt: Checkpoint) -> None:
        assert data is not None
        generation, messages, controls, transactions = msgpack.unpackb(data, strict_map_key=False)
        if generation != ckpt.generation:
            raise ValueError(f"tally file of generation {generation}, the checkpoint's is {ckpt.generation}")
        self.messages, self.controls, self.transactions = messages, controls, transactions

    def state(self) -> tuple[dict[int, int], int, list[int]]:
        """A copy of what the index holds."""
        return dict(self.messages), self.controls, list(self.transactions)

    def differences(self, rebuilt: DerivedIndex) -> list[str]:
        assert isinstance(rebuilt, Tally)
        if self.state() == rebuilt.state():
            return []
        mine, log = self.state(), rebuilt.state()
        return [f"tally of {mine[1]} controls and {len(mine[2])} transactions, the log has {log[1]} and {len(log[2])}"]


@pytest.fixture
def tally() -> Iterator[None]:
    EXTRA_INDEXES.append(Tally)
    try:
        yield
    finally:
        EXTRA_INDEXES.remove(Tally)


def _envs(stream: str, n: int, size: int = 40) -> list[Envelope]:
    return [Envelope.new(f"{stream}-{i}", b"x" * size) for i in range(n)]


def _index(store: logstore.Store) -> Tally:
    (ix,) = [ix for ix in store._log.extra_indexes if isinstance(ix, Tally)]  # private: the registered index
    return ix


def _fill(store: logstore.Store) -> dict[int, int]:
    """Commits that cross several segment rolls, one transaction spanning a roll, and control records."""
    for i in range(40):
        with store.transaction() as tx:
            store.append_messages(tx, "a", i * 5, _envs("a", 5, 300))
            store.append_messages(tx, f"b{i % 3}", logstore.ANY, _envs("b", 2, 300))
    with store.transaction() as tx:  # larger than what is left of the active segment: it rolls inside
        store.append_messages(tx, "big", 0, _envs("big", 150, 600))
    store.truncate_stream("a", 100)
    store.delete_stream("b1")
    cat = store._log.catalog  # private: stream ids, to state what the tally must hold
    return {cat.ids["a"]: 200, cat.ids["b0"]: 28, cat.ids["b1"]: 26, cat.ids["b2"]: 26, cat.ids["big"]: 150}


def test_the_writer_applies_each_commit_once_in_order(tally: None, store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        want = _fill(store)
        ix = _index(store)
        assert len(store._log.segments) > 3  # private: the commits rolled several times
        assert ix.messages == want
        assert ix.controls == 2
        assert ix.transactions == sorted(set(ix.transactions))
        assert len(ix.transactions) == 43


def test_a_clean_reopen_loads_the_index_from_its_file(tally: None, store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        want = _fill(store)
        before = _index(store).state()
    files = sorted(p.name for p in store_dir.glob("tally.*"))
    assert len(files) == 1, files  # the checkpoint's generation only
    with logstore.open(store_dir) as store:
        assert store.recovery_report.records_scanned == 0
        assert _index(store).state() == before
        assert _index(store).messages == want
    assert_verified(store_dir)


def test_recovery_applies_the_transactions_past_the_checkpoint(tally: None, store_dir: Path) -> None:
    # A process commits after the last checkpoint and dies without closing: the reopen finds those
    # transactions in the log and applies each of them to the index, once.
    script = (
        "import os, logstore\n"
        "from tests.unit.test_derived import Tally, _fill, _index\n"
        "from logstore.embedded.derived import EXTRA_INDEXES\n"
        "EXTRA_INDEXES.append(Tally)\n"
        f"store = logstore.open({str(store_dir)!r}, segment_size={SMALL_SEGMENT}, checkpoint_bytes=1 << 40)\n"
        "_fill(store)\n"
        "print(repr(_index(store).state()), flush=True)\n"
        "os._exit(0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    before = ast.literal_eval(out.stdout)  # the child's dict of ints and lists
    with logstore.open(store_dir) as store:
        assert store.recovery_report.checkpoint == "used"
        assert store.recovery_report.transactions_recovered > 0
        assert _index(store).state() == before


def test_a_lost_index_file_is_rebuilt_from_the_whole_log(tally: None, store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store)
        before = _index(store).state()
    (tally_file,) = store_dir.glob("tally.*")
    tally_file.unlink()
    with logstore.open(store_dir) as store:
        assert "all indexes" in store.recovery_report.rebuilt
        assert _index(store).state() == before
    assert len(list(store_dir.glob("tally.*"))) == 1  # written again by the checkpoint after the rebuild


def test_verify_checks_an_added_index_against_the_log(tally: None, store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store)
    assert verify(str(store_dir)).ok
    (tally_file,) = store_dir.glob("tally.*")
    generation, messages, controls, transactions = msgpack.unpackb(tally_file.read_bytes(), strict_map_key=False)
    tally_file.write_bytes(msgpack.packb([generation, messages, controls + 1, transactions]))
    result = verify(str(store_dir))
    assert [(p.path, p.what) for p in result.problems] == [
        (
            str(tally_file),
            "tally of 3 controls and 43 transactions, the log has 2 and 43",
        )
    ]
    tally_file.write_bytes(b"\xc1")  # not msgpack
    result = verify(str(store_dir))
    assert [(p.path, p.what.split(":")[0]) for p in result.problems] == [(str(tally_file), "tally file is unusable")]
    tally_file.unlink()
    result = verify(str(store_dir))
    assert [(p.path, p.what) for p in result.problems] == [
        (str(tally_file), "tally file of the checkpoint's generation is missing")
    ]
    with logstore.open(store_dir) as store:  # the open rebuilds it from the log
        assert "all indexes" in store.recovery_report.rebuilt


def test_without_the_registration_an_index_file_is_a_stray_file(store_dir: Path) -> None:
    with logstore.open(store_dir) as store, store.transaction() as tx:
        store.append_messages(tx, "a", 0, _envs("a", 1))
    (store_dir / "tally.00000000000000000002").write_bytes(b"x")
    problems = verify(str(store_dir)).problems
    assert [p.what for p in problems] == ["stray file in the store directory: not part of a store's layout"]
    (store_dir / "tally.00000000000000000002").unlink()
