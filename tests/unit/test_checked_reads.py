"""Global reads check records ahead in one go and decode them a few at a time (logstore.embedded.walk.Checked):
what they hand out, where, after a removal, at an envelope that does not decode, and the collector's switch
left as the application set it."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import xxhash

import logstore
from logstore import CorruptionError, Envelope
from logstore.embedded.reader import CHECK_AHEAD, DECODE_AHEAD
from tests.helpers import segment_records

SEGMENT = 1 << 20
STREAMS = ("a", "b", "c")


def _envs(tag: str, first: int, n: int) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": first + i, "lines": [{"q": i}]}) for i in range(n)]


def _fill(store: logstore.Store, rounds: int, per: int = 7) -> list[tuple[str, int]]:
    """``rounds`` transactions, each appending ``per`` messages to every stream in turn: the (stream, stream
    offset) of each message in global order."""
    order = []
    for r in range(rounds):
        with store.transaction() as tx:
            for name in STREAMS:
                store.append_messages(tx, name, r * per, _envs(name, r * per, per))
                order += [(name, r * per + k) for k in range(per)]
    return order


def test_iteration_and_reads_of_every_size_say_where_each_message_is(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        order = _fill(store, 120)
        assert len(order) > 2 * CHECK_AHEAD
        with store.open_global(store, 0) as reader:
            seen = []
            for env in reader:
                where = (reader.stream_name(), reader.stream_offset())
                assert (env.message["tag"], env.message["i"]) == where
                seen.append((reader.offset(), *where))
            assert seen == [(g, *w) for g, w in enumerate(order)]
        for size in (1, DECODE_AHEAD - 1, DECODE_AHEAD + 1, 1000, CHECK_AHEAD + 3):
            with store.open_global(store, 0) as reader:
                got = []
                while batch := reader.read(size):
                    assert len(batch) <= size
                    got += [(e.message["tag"], e.message["i"]) for e in batch]
                    # The last message returned is the current one.
                    assert (reader.stream_name(), reader.stream_offset()) == got[-1]
                    assert reader.offset() == len(got) - 1
                assert got == order, size
        with store.open_global(store, 0) as reader:
            got = []
            while reader.try_next():
                env = reader.get()
                got.append((env.message["tag"], env.message["i"]))
            assert got == order


def test_a_removal_drops_what_was_checked_ahead(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        order = _fill(store, 100)
        with store.open_global(store, 0) as reader:
            got = [reader.read(1)[0] for _ in range(500)]  # well into a batch checked ahead
            assert reader._ahead is not None
            store.truncate_stream("b", 600)  # "b" keeps its offsets from 600 on
            while batch := reader.read(100):
                got += batch
        kept = order[:500] + [(s, o) for s, o in order[500:] if s != "b" or o >= 600]
        assert [(e.message["tag"], e.message["i"]) for e in got] == kept


def _record_of(seg: str, goff: int) -> tuple[int, int]:
    """(position, length) of the record of global offset ``goff`` in the segment file ``seg``."""
    for pos, rec in segment_records(Path(seg).read_bytes()):
        if rec.goff == goff:
            return pos, rec.length
    raise AssertionError(f"no record of global offset {goff}")


@pytest.mark.parametrize("how", ["iterate", "read"])
def test_an_envelope_that_does_not_decode_is_named_after_those_before_it(store_dir: Path, how: str) -> None:
    """A record whole and with a good checksum whose envelope is not msgpack (no writer makes one): the
    envelopes before it are handed out, then CorruptionError names its byte and global offset."""
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        order = _fill(store, 40)
        seg = store._log.active.path
    victim = 700
    pos, length = _record_of(seg, victim)
    with open(seg, "r+b") as f:
        f.seek(pos)
        record = bytearray(f.read(length))
        original = bytes(record)
        nlen = int.from_bytes(record[6:8], "little")
        record[28 + nlen + 1] = 0xC1  # after the 7-item array's first byte: a byte msgpack never uses
        record[-8:] = xxhash.xxh3_64_intdigest(bytes(record[:-8])).to_bytes(8, "little")
        f.seek(pos)
        f.write(record)
    try:
        with logstore.open(store_dir) as store, store.open_global(store, 0) as reader:
            got: list[Envelope] = []
            with pytest.raises(CorruptionError) as info:
                if how == "iterate":
                    got += reader
                else:
                    while batch := reader.read(300):
                        got += batch
            assert (info.value.path, info.value.position) == (seg, pos)
            assert f"global offset {victim}: envelope does not decode" in str(info.value)
            # Iteration hands out every envelope before it; a read() that meets it raises, and the ones it
            # took before are the reader's past (as for any damage).
            assert reader.offset() == victim - 1
            taken = [(e.message["tag"], e.message["i"]) for e in got]
            assert taken == order[: victim if how == "iterate" else len(taken)]
            with pytest.raises(CorruptionError):  # and again: it is never handed out
                reader.read(10)
    finally:
        with open(seg, "r+b") as f:
            f.seek(pos)
            f.write(original)


@pytest.mark.parametrize("enabled", [True, False])
def test_read_leaves_the_collector_as_it_found_it(store_dir: Path, enabled: bool) -> None:
    with logstore.open(store_dir, segment_size=SEGMENT) as store:
        _fill(store, 20)
        seg = store._log.active.path
    pos, _length = _record_of(seg, 300)
    with open(seg, "r+b") as f:  # damage one record: a read that raises
        f.seek(pos + 40)
        byte = f.read(1)[0]
        f.seek(pos + 40)
        f.write(bytes([byte ^ 0x40]))
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with logstore.open(store_dir) as store, store.open_global(store, 0) as reader:
            assert len(reader.read(250)) == 250
            assert gc.isenabled() is enabled
            with pytest.raises(CorruptionError):
                reader.read(100)
            assert gc.isenabled() is enabled
            assert reader.offset() == 299
    finally:
        (gc.enable if was else gc.disable)()
        with open(seg, "r+b") as f:
            f.seek(pos + 40)
            f.write(bytes([byte]))
