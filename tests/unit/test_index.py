"""Unit tests of the index structures and their byte codecs, including arbitrary and mutated bytes."""

from __future__ import annotations

import bisect
import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.embedded.checkpoint import Checkpoint, SegmentEntry
from logstore.embedded.record import BadRecord, frame, parse_record
from logstore.envelope import decode
from logstore.index.catalog import FLAG_LARGE, Catalog
from logstore.index.errors import FormatError, UnsupportedVersionError
from logstore.index.header import HEADER_SIZE, MAGIC_CATALOG, MAGIC_POSITION, Header, decode_header, encode_header
from logstore.index.position import PositionIndex
from logstore.index.runs import LARGE_RUNS, LargeRuns, RunIndex

STORE = bytes(range(16))


def test_header_round_trip_and_every_single_byte_change_is_detected() -> None:
    raw = encode_header(Header(MAGIC_POSITION, STORE, 1, 2, 3, 0))
    assert len(raw) == HEADER_SIZE
    assert decode_header(raw, MAGIC_POSITION) == Header(MAGIC_POSITION, STORE, 1, 2, 3, 0)
    for i in range(HEADER_SIZE):
        for bit in range(8):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            with pytest.raises(FormatError):
                decode_header(bytes(bad), MAGIC_POSITION)


def test_header_of_another_kind_or_version_or_zero() -> None:
    raw = encode_header(Header(MAGIC_POSITION, STORE, 1, 2, 3))
    with pytest.raises(FormatError, match="magic"):
        decode_header(raw, MAGIC_CATALOG)
    with pytest.raises(FormatError, match="never written"):
        decode_header(bytes(HEADER_SIZE), MAGIC_POSITION)
    with pytest.raises(FormatError, match="shorter"):
        decode_header(raw[:10], MAGIC_POSITION)
    import struct

    import xxhash

    body = bytearray(raw[:56])
    struct.pack_into("<H", body, 8, 99)
    future = bytes(body) + struct.pack("<Q", xxhash.xxh3_64_intdigest(bytes(body)))
    with pytest.raises(UnsupportedVersionError) as info:
        decode_header(future, MAGIC_POSITION)
    assert info.value.version == 99


def test_position_index_round_trip_and_checksum() -> None:
    pos = PositionIndex(100)
    pos.positions.extend([64, 120, 300])
    pos.positions.append(512)
    assert [pos.position(g) for g in range(100, 104)] == [64, 120, 300, 512]
    with pytest.raises(KeyError):
        pos.position(104)
    start, tail = pos.tail_bytes()
    assert start == HEADER_SIZE
    raw = PositionIndex.file_header(STORE, 100) + tail
    back = PositionIndex.decode(raw, STORE, 100, 4, pos.checksum())
    assert back.positions.view().tolist() == [64, 120, 300, 512]
    assert back.persisted == 4
    with pytest.raises(FormatError, match="checksum"):
        PositionIndex.decode(raw, STORE, 100, 4, pos.checksum() ^ 1)
    with pytest.raises(FormatError, match="fewer"):
        PositionIndex.decode(raw, STORE, 100, 5, pos.checksum())
    with pytest.raises(FormatError, match="first global offset"):
        PositionIndex.decode(raw, STORE, 99, 4, pos.checksum())


def _model_find(runs: list[tuple[int, int]], soff: int) -> tuple[int, int, int]:
    i = bisect.bisect_right([r[0] for r in runs], soff) - 1
    if i < 0:
        raise KeyError(soff)
    nxt = runs[i + 1][0] if i + 1 < len(runs) else -1
    return runs[i][0], runs[i][1], nxt


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4)), min_size=1, max_size=400), st.booleans())
def test_run_index_finds_the_run_of_every_offset(appends: list[tuple[int, int]], merge_midway: bool) -> None:
    """Appends of (stream, count) in global order; the index must map every offset back."""
    index = RunIndex()
    model: dict[int, list[tuple[int, int]]] = {}
    heads: dict[int, int] = {}
    goff = 0
    for k, (sid, count) in enumerate(appends):
        soff = heads.get(sid, 0)
        runs = model.setdefault(sid, [])
        if not runs or runs[-1][1] - runs[-1][0] != goff - soff:
            runs.append((soff, goff))
            index.add(sid, soff, goff)
        heads[sid] = soff + count
        goff += count
        if merge_midway and k == len(appends) // 2:
            index.merge()
    promoted = index.merge()
    assert sorted(promoted) == sorted(s for s in promoted if len(model[s]) > LARGE_RUNS)
    for sid, runs in model.items():
        assert index.runs_of(sid) == runs
        for soff in range(heads[sid]):
            assert index.find(sid, soff) == _model_find(runs, soff)
    with pytest.raises(KeyError):
        index.find(99, 0)


def test_streams_with_many_runs_move_to_their_own_file() -> None:
    index = RunIndex()
    for i in range(LARGE_RUNS + 1):
        index.add(0, i, 2 * i)
        index.add(1, i, 2 * i + 1)
    assert sorted(index.merge()) == [0, 1]
    assert set(index.large) == {0, 1}
    big = index.large[0]
    start, raw = big.tail_bytes()
    assert start == HEADER_SIZE and len(raw) == 16 * (LARGE_RUNS + 1)
    back = LargeRuns.decode(LargeRuns.file_header(STORE, 0) + raw, STORE, 0, len(big), big.checksum())
    assert back.soffs.view().tolist() == list(range(LARGE_RUNS + 1))
    index.add(0, LARGE_RUNS + 1, 1000)
    assert index.find(0, LARGE_RUNS + 5) == (LARGE_RUNS + 1, 1000, -1)


def test_catalog_round_trip_with_shared_and_large_runs() -> None:
    cat = Catalog()
    runs = RunIndex()
    for n in range(200):
        sid = cat.add(f"stream-{n}-\u00e9")
        cat.head[sid] = n + 1
        cat.nruns[sid] = 1
        cat.run_diff[sid] = 7
        runs.add(sid, 0, 7 + n)
    for i in range(LARGE_RUNS + 1):
        runs.add(5, 10 + i, 1000 + 2 * i)
    for sid in runs.merge():
        cat.flags[sid] |= FLAG_LARGE
        runs.large[sid].persisted = len(runs.large[sid])
    raw = cat.encode(runs, 3, STORE)
    back, back_runs, large = Catalog.decode(raw, STORE, 3)
    assert back.names == cat.names
    assert back.ids["stream-7-\u00e9"] == 7
    assert np.array_equal(back.head[:200], cat.head[:200])
    assert back.flags[5] == FLAG_LARGE
    assert large == [(5, LARGE_RUNS + 2, runs.large[5].checksum())]  # its shared run plus the added ones
    assert back_runs.runs_of(9) == [(0, 16)]
    with pytest.raises(FormatError, match="generation"):
        Catalog.decode(raw, STORE, 4)
    with pytest.raises(FormatError, match="store id"):
        Catalog.decode(raw, bytes(16), 3)


def test_checkpoint_round_trip_and_consistency_checks() -> None:
    ckpt = Checkpoint(4, 30, [SegmentEntry(0, 10, 900, 1), SegmentEntry(10, 20, 1800, 2)], clean=True)
    raw = ckpt.encode(STORE)
    assert Checkpoint.decode(raw, STORE) == (ckpt, STORE)
    gap = Checkpoint(4, 30, [SegmentEntry(0, 10, 900, 1), SegmentEntry(11, 19, 1800, 2)], clean=False)
    with pytest.raises(FormatError, match="expected 10"):
        Checkpoint.decode(gap.encode(STORE), STORE)
    with pytest.raises(FormatError, match="disagrees"):
        Checkpoint.decode(Checkpoint(4, 31, ckpt.segments, False).encode(STORE), STORE)


def test_record_round_trip_and_every_bit_flip_is_detected() -> None:
    rec = frame(3, 5, 9, 1 | 2, b"name", b"\x93\x01\x02\x03")
    parsed = parse_record(rec, 0, len(rec))
    assert (parsed.sid, parsed.soff, parsed.goff, parsed.name, parsed.flags) == (3, 5, 9, "name", 3)
    for i in range(len(rec)):
        for bit in range(8):
            bad = bytearray(rec)
            bad[i] ^= 1 << bit
            with pytest.raises(BadRecord):
                parse_record(bytes(bad), 0, len(bad))


# -- arbitrary bytes: only the format's own error may come out ------------------------------


def _valid_files() -> list[tuple[str, bytes]]:
    pos = PositionIndex(0)
    pos.positions.extend([64, 100])
    cat = Catalog()
    runs = RunIndex()
    cat.add("a")
    runs.add(0, 0, 0)
    runs.merge()
    return [
        ("position", PositionIndex.file_header(STORE, 0) + pos.tail_bytes()[1]),
        ("catalog", cat.encode(runs, 1, STORE)),
        ("checkpoint", Checkpoint(1, 2, [SegmentEntry(0, 2, 200, pos.checksum())], False).encode(STORE)),
        ("record", frame(0, 0, 0, 3, b"a", b"\x97\xa1a\xa1a\xa1a\x00\x00\xa1T\xc0")),
    ]


def _decode_any(kind: str, data: bytes) -> None:
    if kind == "position":
        PositionIndex.decode(data, STORE, 0, 2, 0)
    elif kind == "catalog":
        Catalog.decode(data, STORE, 1)
    elif kind == "checkpoint":
        Checkpoint.decode(data, STORE)
    elif kind == "record":
        parse_record(data, 0, len(data))
    else:
        decode(data)


@given(st.sampled_from(["position", "catalog", "checkpoint", "record", "envelope"]), st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_format_errors(kind: str, data: bytes) -> None:
    try:
        _decode_any(kind, data)
    except (FormatError, BadRecord):
        pass
    except (ValueError, TypeError):
        assert kind == "envelope", "only envelope decoding reports damage as ValueError/TypeError"


@given(st.data())
def test_mutated_valid_files_raise_only_format_errors(data: st.DataObject) -> None:
    kind, raw = data.draw(st.sampled_from(_valid_files()))
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    with contextlib.suppress(FormatError, BadRecord):
        _decode_any(kind, bytes(buf))


def test_checksums_are_not_fooled_by_random_bytes() -> None:
    rng = np.random.default_rng(1)
    for _ in range(2000):
        junk = rng.integers(0, 256, size=int(rng.integers(36, 300)), dtype=np.uint8).tobytes()
        with pytest.raises(BadRecord):
            parse_record(junk, 0, len(junk))
