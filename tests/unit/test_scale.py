"""Scale: a hundred thousand small streams stay a handful of files, and reopening reads no log record."""

from __future__ import annotations

import os
import random
from pathlib import Path

import logstore
from logstore import Envelope, FileIO

STREAMS = 100_000
PER_TX = 1_000


def _files(path: Path) -> list[str]:
    return [os.path.join(r, f) for r, _d, fs in os.walk(path) for f in fs]


def test_hundred_thousand_streams_of_two_messages(store_dir: Path) -> None:
    rng = random.Random(7)
    envelope = Envelope.new("Created", {"n": 0})
    with logstore.open(store_dir, segment_size=16 * 2**20) as store:
        for first in range(0, STREAMS, PER_TX):
            with store.transaction() as tx:
                for n in range(first, first + PER_TX):
                    store.append_messages(
                        tx,
                        f"entity-{n}",
                        0,
                        # A message id is at one offset of a stream only: each envelope gets its own.
                        [
                            envelope._replace(message_id=f"{n}-a", message={"n": n}),
                            envelope._replace(message_id=f"{n}-b", message=-n),
                        ],
                    )
        assert store.global_head == 2 * STREAMS
    files = _files(store_dir)
    assert len(files) < 50, sorted(files)

    io = FileIO()
    with logstore.open(store_dir, io=io) as store:
        assert io.records_read == 0, "a reopen after a clean close read log records"
        assert store.recovery_report.checkpoint == "clean"
        assert store.global_head == 2 * STREAMS
        for n in rng.sample(range(STREAMS), 300):
            stream, found = store.open_stream(store, f"entity-{n}", 0)
            assert found
            with stream:
                assert [env.message for env in stream] == [{"n": n}, -n]
        # The reads above are the only records read.
        assert io.records_read == 600


def test_reopen_of_a_large_single_stream_reads_no_record(store_dir: Path) -> None:
    envelopes = [Envelope.new("Tick", {"i": i}) for i in range(100)]
    with logstore.open(store_dir, segment_size=256 * 1024, checkpoint_bytes=128 * 1024) as store:
        for k in range(200):
            mine = [e._replace(message_id=f"{e.message_id}-{k}") for e in envelopes]  # ids of their own
            with store.transaction() as tx:
                store.append_messages(tx, "ticks", 100 * k, mine)
                store.append_messages(tx, f"side-{k % 3}", k // 3, mine[:1])
    # 200 runs (one per transaction) make "ticks" a large stream with a run file of its own.
    assert os.listdir(store_dir / "streams") == ["0000000000.runs"]
    io = FileIO()
    with logstore.open(store_dir, io=io) as store:
        assert io.records_read == 0
        assert store.head("ticks") == 20_000
        stream, _ = store.open_stream(store, "ticks", 19_950)
        with stream:
            got = [(stream.offset(), env.message["i"]) for env in stream]
        assert got == [(19_950 + i, 50 + i) for i in range(50)]
