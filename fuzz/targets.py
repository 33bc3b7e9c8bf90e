"""Fuzz targets of every logstore parser, shared by ``tests/test_fuzz.py`` and ``fuzz/harness.py``.

Each target takes the bytes of one file kind (a mutated seed, or anything at
all) and feeds them to the engine's own parser, exactly as the engine calls
it. A target lets through only the exceptions the parser promises:

============  =============================================  ==========================
target        engine code                                    may raise
============  =============================================  ==========================
header        ``index.header.decode_header`` (every kind)    ``FormatError``
record        ``logstore.embedded.record.parse_record`` over a        ``BadRecord`` (the engine
              segment buffer, resynchronising with           turns it into
              ``find_next_record`` after damage              ``CorruptionError``)
envelope      ``logstore.envelope.decode``                   ``ValueError``, ``TypeError``
position      ``index.position.PositionIndex.decode``        ``FormatError``
runs          ``index.runs.LargeRuns.decode``                ``FormatError``
catalog       ``index.catalog.Catalog.decode``               ``FormatError``
checkpoint    ``logstore.embedded.checkpoint.Checkpoint.decode``      ``FormatError``
segment       a segment *file*: ``open_segment``, then       ``CorruptionError``
              ``Segment.rebuild_positions`` and
              ``Segment.read`` (global and stream), as reads do
============  =============================================  ==========================

``FormatError`` includes ``UnsupportedVersionError``, ``CorruptionError``
includes ``FormatVersionError``. Anything else (``IndexError``,
``struct.error``, ``MemoryError``, ``UnicodeDecodeError``, ...) is a finding:
the target lets it propagate.

:func:`fix_checksums` recomputes every checksum (and the body length fields
the checksums depend on) of a mutated file, so that a parser gets past its
checksum checks and the fuzzer reaches the checks behind them: a checksum
bypass that needs no change to the engine.

:func:`mutate` is a plain ``random.Random`` mutator of valid seeds, and
:func:`build_seeds` writes the small store the seeds come from.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from unittest import mock

import xxhash

import logstore
from logstore import Envelope
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.fileio import FileIO
from logstore.embedded.record import RECORD_OVERHEAD, BadRecord, parse_record
from logstore.embedded.segment import Segment, open_segment, segment_name
from logstore.embedded.walk import find_next_record
from logstore.envelope import decode
from logstore.errors import CorruptionError
from logstore.index.catalog import Catalog
from logstore.index.errors import FormatError
from logstore.index.header import (
    HEADER_SIZE,
    MAGIC_CATALOG,
    MAGIC_CHECKPOINT,
    MAGIC_POSITION,
    MAGIC_RUNS,
    MAGIC_SEGMENT,
    decode_header,
)
from logstore.index.position import PositionIndex
from logstore.index.runs import LargeRuns

SEGMENT_SIZE = 64 * 1024
SEED_STORE_ID = b"logstore-fuzzing"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_xxh = xxhash.xxh3_64_intdigest

# -- the seed store ------------------------------------------------------------------------------


@dataclass
class Seeds:
    """Valid files of one small store, with what their parsers need besides the bytes."""

    directory: str
    store_id: bytes
    segment: bytes  # the first segment file, sealed and full: every record kind the API writes
    segment_records: int
    position: bytes  # its position file
    checkpoint: bytes
    generation: int
    catalog: bytes
    runs: bytes  # the run file of a large stream
    runs_sid: int
    runs_count: int
    envelopes: list[bytes]  # payloads of the first segment's messages
    record_starts: list[int]  # byte positions of the first segment's records
    written: dict[str, list[Envelope]] = field(default_factory=dict)  # what the API wrote, per stream
    global_log: list[tuple[int, Envelope]] = field(default_factory=list)  # (global offset, envelope) readable

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example: keep it short
        return f"Seeds({self.directory!r})"

    def position_count_and_checksum(self, data: bytes) -> tuple[int, int]:
        """The count the checkpoint records for the position file, and the checksum of ``data``'s entries."""
        n = self.segment_records
        return n, _xxh(data[HEADER_SIZE : HEADER_SIZE + 4 * n])

    def file_of(self, kind: str) -> bytes:
        return {
            "header": self.segment[:HEADER_SIZE],
            "record": self.segment,
            "segment": self.segment,
            "envelope": self.envelopes[0],
            "position": self.position,
            "runs": self.runs,
            "catalog": self.catalog,
            "checkpoint": self.checkpoint,
        }[kind]


def _message(i: int) -> object:
    """Messages of every storable type, some large enough to fill a 64 KiB segment quickly."""
    when = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC) + timedelta(seconds=i)
    kinds: list[object] = [
        {"i": i, "sku": f"A{i}", "qty": i % 7},
        [i, -i, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, None, True, False],
        f"naïve text {i} €😀",
        bytes(range(i % 256)) * 2,
        {"when": when, "nested": {"list": [when, {"b": b"\x00\xff"}]}, 7: "int key"},
        datetime(1969, 7, 20, 20, 17, tzinfo=UTC),  # a timestamp 96
    ]
    return kinds[i % len(kinds)]


def build_seed_store(path: str) -> Seeds:
    """Write a small store through the API (64 KiB segments), close it, and collect its files.

    It has: two streams that alternate so that both have more than 128 runs (a
    run file of their own), a truncated stream, a deleted stream, messages of
    every storable type, NAMED records with multi-byte names, and enough data
    for the first segment to fill and seal.
    """
    written: dict[str, list[Envelope]] = {}
    order: list[Envelope] = []
    # A fixed store id (it is the only random byte the parsers check), so that a finding's input
    # reproduces in another run: the files of every seed store then differ only in creation times.
    with mock.patch("os.urandom", lambda n: SEED_STORE_ID[:n]):
        store = logstore.open(path, segment_size=SEGMENT_SIZE, durability="none")
    try:

        def commit(stream: str, envs: list[Envelope]) -> None:
            have = written.setdefault(stream, [])
            tx, committer = store.begin_tx()
            store.append_messages(tx, stream, len(have), envs)
            committer.commit()
            have.extend(envs)
            order.extend(envs)

        base = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        n = 0

        def env(kind: str) -> Envelope:
            nonlocal n
            n += 1
            mid = f"00000000-0000-4000-8000-{n:012d}"
            return Envelope(mid, mid, mid, base, base + timedelta(seconds=n), kind, _message(n))

        commit("order-42", [env("OrderPlaced"), env("OrderPaid")])
        commit("gone", [env("Temp")])
        commit("trimmed-ü€😀", [env("T") for _ in range(3)])
        store.truncate_stream("trimmed-ü€😀", 2)
        store.delete_stream("gone")
        for i in range(132):  # "big" and "small" get a new run every time: > LARGE_RUNS runs
            commit("big", [env("Big")])
            commit("small", [env("Small")] if i % 2 else [env("Small"), env("Small")])
        while len(store._log.segments) < 2:
            commit("order-42", [env("Filler")])
        commit("order-42", [env("Last")])
    finally:
        store.close()
    # What a reader returns: the truncated and deleted messages are unreadable.
    removed = {id(e) for e in written["gone"]} | {id(e) for e in written["trimmed-ü€😀"][:2]}
    # Control records take global offsets too: take the global offsets from a read.
    store = logstore.open(path, readonly=True)
    try:
        with store.open_global(store, 0) as reader:
            got = []
            while reader.try_next():
                got.append((reader.offset(), reader.get()))
        assert [e for _, e in got] == [e for e in order if id(e) not in removed]
        global_log = got
        seg = store._log.segments[0]
        records = seg.count
    finally:
        store.close()
    seg_dir = os.path.join(path, "segments")
    segment = _read(os.path.join(seg_dir, segment_name(0)))
    starts, payloads = [], []
    pos = HEADER_SIZE
    while True:
        try:
            rec = parse_record(segment, pos, len(segment))
        except BadRecord:
            break
        starts.append(pos)
        if rec.kind == 1:
            payloads.append(segment[rec.payload_start : pos + rec.length - 8])
        pos += rec.length
    assert len(starts) == records
    ckpt_raw = _read(os.path.join(path, "CHECKPOINT"))
    ckpt, store_id = Checkpoint.decode(ckpt_raw, None)
    run_names = sorted(os.listdir(os.path.join(path, "streams")))
    assert run_names, "the seed store has no run file"
    runs_sid = int(run_names[0][:10])
    catalog_raw = _read(os.path.join(path, f"catalog.{ckpt.generation:020d}"))
    _cat, _runs, large = Catalog.decode(catalog_raw, store_id, ckpt.generation)
    return Seeds(
        directory=path,
        store_id=store_id,
        segment=segment,
        segment_records=records,
        position=_read(os.path.join(seg_dir, segment_name(0)[:-4] + ".pos")),
        checkpoint=ckpt_raw,
        generation=ckpt.generation,
        catalog=catalog_raw,
        runs=_read(os.path.join(path, "streams", run_names[0])),
        runs_sid=runs_sid,
        runs_count=next(count for sid, count, _sum in large if sid == runs_sid),
        envelopes=payloads,
        record_starts=starts,
        written=written,
        global_log=global_log,
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_SEEDS: Seeds | None = None


def seeds() -> Seeds:
    """The seed store of this process, built once in a temporary directory."""
    global _SEEDS  # noqa: PLW0603 - one seed store per process, built on first use
    if _SEEDS is None:
        parent = tempfile.mkdtemp(prefix="logstore-fuzz-seeds-")
        atexit.register(shutil.rmtree, parent, ignore_errors=True)
        _SEEDS = build_seed_store(os.path.join(parent, "store"))
    return _SEEDS


# -- checksum bypass -------------------------------------------------------------------------------


def _fix_header(buf: bytearray) -> None:
    if len(buf) >= HEADER_SIZE:
        _U64.pack_into(buf, 56, _xxh(bytes(buf[:56])))


def _fix_records(buf: bytearray) -> None:
    """Recompute the checksum of every record that the (mutated) length fields frame."""
    pos = HEADER_SIZE
    while pos + 4 <= len(buf):
        (length,) = _U32.unpack_from(buf, pos)
        if length < RECORD_OVERHEAD or pos + length > len(buf):
            break
        _U64.pack_into(buf, pos + length - 8, _xxh(bytes(buf[pos : pos + length - 8])))
        pos += length


def _fix_body(buf: bytearray) -> None:
    """Catalog and CHECKPOINT: header b = body length, c = xxh3-64 of the body."""
    if len(buf) >= HEADER_SIZE:
        _U64.pack_into(buf, 40, len(buf) - HEADER_SIZE)
        _U64.pack_into(buf, 48, _xxh(bytes(buf[HEADER_SIZE:])))


def fix_checksums(kind: str, data: bytes) -> bytes:
    """``data`` with every checksum its file kind carries recomputed (see the module docstring).

    Position and run files keep their checksums in another file (CHECKPOINT,
    the catalog): the targets take those from the mutated bytes when asked
    to (``fixed=True``).
    """
    buf = bytearray(data)
    if kind in ("record", "segment"):
        _fix_records(buf)
    elif kind in ("catalog", "checkpoint"):
        _fix_body(buf)
    if kind != "envelope":
        _fix_header(buf)
    return bytes(buf)


# -- targets -------------------------------------------------------------------------------------

MAGIC_OF = {
    "segment": MAGIC_SEGMENT,
    "position": MAGIC_POSITION,
    "runs": MAGIC_RUNS,
    "catalog": MAGIC_CATALOG,
    "checkpoint": MAGIC_CHECKPOINT,
}
"""The magic of each kind of file."""


def check_format_error(exc: FormatError, data: bytes) -> None:
    """An index error must say where: a byte position inside the buffer it was given."""
    assert isinstance(exc.what, str) and exc.what, exc
    assert 0 <= exc.position <= len(data), (exc, len(data))
    assert str(exc) == f"at byte {exc.position}: {exc.what}", exc


def target_header(data: bytes, s: Seeds, fixed: bool) -> None:
    for magic in MAGIC_OF.values():
        try:
            decode_header(data, magic)
        except FormatError as exc:
            check_format_error(exc, data)


def target_record(data: bytes, s: Seeds, fixed: bool) -> None:
    """Walk the records as the recovery scan does; after damage, resynchronise as ``verify`` does."""
    end = len(data)
    pos = HEADER_SIZE
    steps = 0
    while steps < 10_000:
        steps += 1
        try:
            rec = parse_record(data, pos, end)
        except BadRecord as bad:
            assert bad.position == pos and isinstance(bad.what, str), bad
            if bad.zero:
                return
            nxt = find_next_record(data, pos + 1, end)
            assert nxt < 0 or nxt > pos, (nxt, pos)
            if nxt < 0:
                return
            pos = nxt
            continue
        assert rec.length >= RECORD_OVERHEAD and pos + rec.length <= end, rec
        assert rec.payload_start <= pos + rec.length - 8, rec
        pos += rec.length
    raise AssertionError("record walk did not end")


def target_envelope(data: bytes, s: Seeds, fixed: bool) -> None:
    try:
        env = decode(data)
    except (ValueError, TypeError):
        return
    assert type(env) is Envelope and len(env) == 7


def target_position(data: bytes, s: Seeds, fixed: bool) -> None:
    count, checksum = s.position_count_and_checksum(data if fixed else s.position)
    for n, sum_ in ((count, checksum), (0, _xxh(b"")), (2**62, checksum)):
        try:
            index = PositionIndex.decode(data, s.store_id, 0, n, sum_)
        except FormatError as exc:
            check_format_error(exc, data)
        else:
            assert len(index) == n, (len(index), n)


def target_runs(data: bytes, s: Seeds, fixed: bool) -> None:
    n = s.runs_count
    checksum = _xxh((data if fixed else s.runs)[HEADER_SIZE : HEADER_SIZE + 16 * n])
    for count, sum_ in ((n, checksum), (0, _xxh(b"")), (2**62, checksum)):
        try:
            runs = LargeRuns.decode(data, s.store_id, s.runs_sid, count, sum_)
        except FormatError as exc:
            check_format_error(exc, data)
        else:
            assert len(runs) == count, (len(runs), count)


def target_catalog(data: bytes, s: Seeds, fixed: bool) -> None:
    try:
        cat, runs, large = Catalog.decode(data, s.store_id, s.generation)
    except FormatError as exc:
        check_format_error(exc, data)
    else:
        assert len(cat.ids) == len(cat.names) == len(cat)
        for sid in range(len(cat)):  # every stream's runs can be looked up
            runs.runs_of(sid)
        assert all(sid < len(cat) for sid, _n, _sum in large)


def target_checkpoint(data: bytes, s: Seeds, fixed: bool) -> None:
    for store_id in (None, s.store_id):
        try:
            Checkpoint.decode(data, store_id)
        except FormatError as exc:
            check_format_error(exc, data)


class _ScratchDir:
    """A directory (in /dev/shm when there is one) where the segment target writes its file."""

    def __init__(self) -> None:
        parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.path = tempfile.mkdtemp(prefix="logstore-fuzz-", dir=parent)
        atexit.register(shutil.rmtree, self.path, ignore_errors=True)


_SCRATCH: _ScratchDir | None = None
_IO = FileIO()


def target_segment(data: bytes, s: Seeds, fixed: bool) -> None:
    """A segment file, opened and read the way the engine does at open and on reads."""
    global _SCRATCH  # noqa: PLW0603 - one scratch directory per process
    if _SCRATCH is None:
        _SCRATCH = _ScratchDir()
    path = os.path.join(_SCRATCH.path, segment_name(0))
    with open(path, "wb") as f:
        f.write(data)
    try:
        seg: Segment = open_segment(_IO, path, s.store_id, writable=False)
    except CorruptionError as exc:
        _check_segment_error(exc, path, data)
        return
    try:
        try:
            seg._positions = seg.rebuild_positions(s.segment_records)
        except CorruptionError as exc:
            _check_segment_error(exc, path, data)
            # Fewer (or damaged) records: index those that parse, as a read-only open of a cut log would.
            seg._positions = _walk(seg)
        n = seg.count
        out: list[Envelope] = []
        try:
            if n:
                seg.read(0, n, out, trimmed={})
        except CorruptionError as exc:
            _check_segment_error(exc, path, data)
        for g in range(0, n, 7):
            try:
                rec = parse_record(seg.view, seg.positions.position(g), seg.size)
                seg.read(g, min(n, g + 3), [], rec.sid, rec.soff)
            except BadRecord:
                pass
            except CorruptionError as exc:
                _check_segment_error(exc, path, data)
    finally:
        seg.close()


def _check_segment_error(exc: CorruptionError, path: str, data: bytes) -> None:
    assert exc.path == path, (exc, path)
    assert str(exc).startswith(f"{path} at byte {exc.position}: "), exc
    assert 0 <= exc.position <= len(data), (exc, len(data))


def _walk(seg: Segment) -> PositionIndex:
    index = PositionIndex(seg.first)
    pos = HEADER_SIZE
    g = seg.first
    while True:
        try:
            rec = parse_record(seg.view, pos, seg.size)
        except BadRecord:
            break
        if rec.goff != g:
            break
        index.positions.append(pos)
        pos += rec.length
        g += 1
    return index


Target = Callable[[bytes, Seeds, bool], None]

TARGETS: dict[str, Target] = {
    "header": target_header,
    "record": target_record,
    "envelope": target_envelope,
    "position": target_position,
    "runs": target_runs,
    "catalog": target_catalog,
    "checkpoint": target_checkpoint,
    "segment": target_segment,
}
"""Every target by name; :func:`Seeds.file_of` gives each one's valid seed."""


def run_target(name: str, data: bytes, s: Seeds, fix: bool = False) -> None:
    """Feed ``data`` (with its checksums recomputed if ``fix``) to target ``name``."""
    if fix:
        data = fix_checksums(name, data)
    TARGETS[name](data, s, fix)


# -- the random mutator ----------------------------------------------------------------------------

INTERESTING = (0, 1, 2, 7, 8, 35, 36, 63, 64, 127, 128, 255, 256, 0x7FFF, 0xFFFF, 0x10000)
INTERESTING_WIDE = (*INTERESTING, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1)


def field_positions(kind: str, s: Seeds) -> list[tuple[int, int]]:
    """(byte position, width) of the length, count and offset fields of a seed of ``kind``."""
    out = [(8, 2), (10, 2), (12, 4), (32, 8), (40, 8), (48, 8)]
    if kind in ("record", "segment"):
        for p in s.record_starts:
            out += [(p, 4), (p + 4, 1), (p + 5, 1), (p + 6, 2), (p + 8, 4), (p + 12, 8), (p + 20, 8)]
    elif kind == "catalog":
        out += [(64, 8), (72, 8), (80, 8), (88, 8)]
    elif kind == "checkpoint":
        out += [(64 + 8 * i, 8) for i in range((len(s.checkpoint) - 64) // 8)]
    elif kind == "position":
        out += [(64 + 4 * i, 4) for i in range(s.segment_records)]
    elif kind == "runs":
        out += [(64 + 8 * i, 8) for i in range(2 * s.runs_count)]
    elif kind == "envelope":
        out = [(i, 4) for i in range(0, len(s.envelopes[0]), 3)]
    return out


def mutate(data: bytes, rng: random.Random, kind: str, s: Seeds) -> bytes:
    """One to four random mutations: bit flips, byte overwrites, field changes, cuts, extensions, splices."""
    buf = bytearray(data)
    fields = field_positions(kind, s)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.randrange(10)
        n = len(buf)
        if op <= 2 and n:  # flip one bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 3 and n:  # overwrite a few bytes
            i = rng.randrange(n)
            for j in range(i, min(n, i + rng.choice((1, 1, 2, 4, 8)))):
                buf[j] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op in (4, 5):  # a length, count or offset field set to an interesting value
            pos, width = rng.choice(fields)
            if pos + width <= n:
                limit = 1 << (8 * width)
                value = rng.choice((*INTERESTING_WIDE, rng.randrange(limit), n, n - pos)) % limit
                buf[pos : pos + width] = value.to_bytes(width, "little")
        elif op == 6:  # truncate
            del buf[rng.randrange(n + 1) :]
        elif op == 7:  # extend
            tail = rng.choice((bytes(rng.randrange(1, 64)), rng.randbytes(rng.randrange(1, 64))))
            buf += tail
        elif op == 8 and n:  # delete or duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 32))
            if rng.random() < 0.5:
                del buf[i:j]
            else:
                buf[i:i] = buf[i:j]
        else:  # splice in a piece of another seed (structure from elsewhere)
            other = rng.choice((s.segment[:4096], s.position, s.catalog, s.checkpoint, s.runs[:512], *s.envelopes[:3]))
            if other and n:
                a = rng.randrange(len(other))
                piece = other[a : a + rng.randrange(1, 64)]
                i = rng.randrange(n)
                buf[i : i + len(piece)] = piece
    return bytes(buf)


def seed_for(kind: str, s: Seeds, rng: random.Random) -> bytes:
    """A valid seed of ``kind`` (the envelope target draws among all the segment's envelopes)."""
    if kind == "envelope":
        return rng.choice(s.envelopes)
    return s.file_of(kind)


# -- whole stores --------------------------------------------------------------------------------


def store_files(directory: str) -> list[str]:
    """The files of a store that hold data (every file but ``LOCK`` and ``CONTROL``), relative to its directory."""
    out = []
    for parent, _dirs, names in os.walk(directory):
        for name in names:
            rel = os.path.relpath(os.path.join(parent, name), directory)
            if rel not in ("LOCK", "CONTROL"):
                out.append(rel)
    return sorted(out)


def kind_of_store_file(rel: str) -> str:
    """The target kind of a store file, for :func:`fix_checksums` and :func:`field_positions`.

    (Of a position or run file :func:`fix_checksums` fixes only the header:
    the checksum of its entries lives in CHECKPOINT or the catalog.)
    """
    if rel.endswith(".log"):
        return "segment"
    if rel.endswith(".pos"):
        return "position"
    if rel.endswith(".runs"):
        return "runs"
    if rel == "CHECKPOINT":
        return "checkpoint"
    return "catalog"


def ignored_region(rel: str, data: bytes, s: Seeds) -> int | None:
    """Where the bytes of file ``rel`` that the format says readers ignore start, or ``None``.

    docs/FORMAT.md sections 7 and 8: entries of a position file past the
    count in CHECKPOINT, and runs of a run file past the count in the
    catalog, are stale and ignored. Nothing else in a store is ignored:
    every other byte is covered by a checksum, or must be zero (a segment's
    tail after its last record).
    """
    if rel.endswith(".pos"):
        ckpt, _sid = Checkpoint.decode(s.checkpoint, None)
        first = int(os.path.basename(rel)[:20])
        entry = next(e for e in ckpt.segments if e.first == first)
        return HEADER_SIZE + 4 * entry.records
    if rel.endswith(".runs"):
        _cat, _runs, large = Catalog.decode(s.catalog, s.store_id, s.generation)
        sid = int(os.path.basename(rel)[:10])
        count = next(c for i, c, _sum in large if i == sid)
        return HEADER_SIZE + 16 * count
    return None


class WrongAnswer(AssertionError):
    """A read returned something other than what was written, or silently left something out."""


def read_everything(store: logstore.Store, s: Seeds) -> bool:
    """Read every stream and the global log; raise :class:`WrongAnswer` on any wrong or missing message.

    A read may raise ``CorruptionError`` (damage it met); what it returned
    before must be right. Returns whether every read completed without error.
    """
    complete = True
    expected: dict[str, dict[int, Envelope]] = {}
    readable = {e.message_id for _g, e in s.global_log}
    for name, envs in s.written.items():
        expected[name] = {i: e for i, e in enumerate(envs) if e.message_id in readable}
    for name, want in expected.items():
        got: dict[int, Envelope] = {}
        try:
            reader, _found = store.open_stream(store, name, 0)
            with reader:
                while reader.try_next():
                    off = reader.offset()
                    if off in got or want.get(off) != reader.get():
                        raise WrongAnswer(
                            f"stream {name!r} offset {off}: read {reader.get()!r}, wrote {want.get(off)!r}"
                        )
                    got[off] = reader.get()
        except CorruptionError as exc:
            check_corruption_error(exc, store.path)
            complete = False
            continue
        if got.keys() != want.keys():
            raise WrongAnswer(f"stream {name!r}: read offsets {sorted(got)}, expected {sorted(want)}")
    want_global = dict(s.global_log)
    got_global: list[int] = []
    try:
        with store.open_global(store, 0) as reader:
            while reader.try_next():
                off = reader.offset()
                if want_global.get(off) != reader.get():
                    raise WrongAnswer(f"global offset {off}: read {reader.get()!r}, wrote {want_global.get(off)!r}")
                if got_global and off <= got_global[-1]:
                    raise WrongAnswer(f"global offset {off} after {got_global[-1]}")
                got_global.append(off)
    except CorruptionError as exc:
        check_corruption_error(exc, store.path)
        return False
    if complete and got_global != [g for g, _e in s.global_log]:
        raise WrongAnswer(f"global read returned {len(got_global)} messages, expected {len(s.global_log)}")
    return complete


def check_corruption_error(exc: CorruptionError, directory: str) -> None:
    """A ``CorruptionError`` must name a path in the store and a byte position in that file."""
    assert isinstance(exc.path, str) and isinstance(exc.position, int), exc
    assert f"{exc.path} at byte {exc.position}" in str(exc), exc
    assert os.path.abspath(exc.path).startswith(os.path.abspath(directory)), (exc, directory)
    assert exc.position >= 0, exc
    if os.path.isfile(exc.path):
        assert exc.position <= os.path.getsize(exc.path), (exc, os.path.getsize(exc.path))


def check_store(directory: str, s: Seeds, readonly: bool) -> str:
    """Open the store in ``directory``, read everything and verify it; return what happened.

    ``"refused"`` (open raised ``CorruptionError``), ``"damaged read"`` (a
    read raised it), ``"cut"`` (recovery cut a tail into lost+found) or
    ``"intact"``. Any other exception, or a wrong answer, propagates.
    """
    from logstore.embedded.verify import verify  # noqa: PLC0415 - only the store target needs it

    outcome = "intact"
    try:
        store = logstore.open(directory, readonly=readonly, segment_size=SEGMENT_SIZE, durability="none")
    except CorruptionError as exc:
        check_corruption_error(exc, directory)
        outcome = "refused"
    else:
        try:
            if store.recovery_report.cut is not None:
                outcome = "cut"
            if not read_everything(store, s) and outcome == "intact":
                outcome = "damaged read"
        finally:
            store.close()
    verify(directory)  # must not raise, whatever it finds
    return outcome


def _align8(x: int) -> int:
    return x + (-x % 8)


def forge_store_checksums(directory: str, rel: str) -> None:
    """After file ``rel`` of the store was changed, recompute every checksum that covers it.

    A file's own checksums (:func:`fix_checksums`), and for a position file
    its entry in CHECKPOINT, for a run file its entry in the catalog: the
    store is then a consistent forgery, which only cross-checks can catch.
    """
    path = os.path.join(directory, rel)
    if not os.path.exists(path):
        return
    data = fix_checksums(kind_of_store_file(rel), _read(path))
    with open(path, "wb") as f:
        f.write(data)
    ckpt_path = os.path.join(directory, "CHECKPOINT")
    if rel.endswith(".pos"):
        try:
            ckpt, store_id = Checkpoint.decode(_read(ckpt_path), None)
        except (FormatError, OSError):
            return
        first = int(os.path.basename(rel)[:20])
        entries = [
            e._replace(checksum=_xxh(data[HEADER_SIZE : HEADER_SIZE + 4 * e.records])) if e.first == first else e
            for e in ckpt.segments
        ]
        with open(ckpt_path, "wb") as f:
            f.write(ckpt._replace(segments=entries).encode(store_id))
    elif rel.endswith(".runs"):
        names = [n for n in os.listdir(directory) if n.startswith("catalog.") and not n.endswith(".tmp")]
        if len(names) != 1:
            return
        cat_path = os.path.join(directory, names[0])
        raw = bytearray(_read(cat_path))
        if len(raw) < HEADER_SIZE + 32:
            return
        s, r, k, n = struct.unpack_from("<QQQQ", raw, HEADER_SIZE)
        q = _align8(_align8(_align8(HEADER_SIZE + 32 + n) + 37 * s) + 4 * r)
        large = q + 16 * r
        sid = int(os.path.basename(rel)[:10])
        for i in range(k):
            if large + 24 * k > len(raw) or _U64.unpack_from(raw, large + 8 * i)[0] != sid:
                continue
            (count,) = _U64.unpack_from(raw, large + 8 * k + 8 * i)
            _U64.pack_into(raw, large + 16 * k + 8 * i, _xxh(data[HEADER_SIZE : HEADER_SIZE + 16 * count]))
        with open(cat_path, "wb") as f:
            f.write(fix_checksums("catalog", bytes(raw)))
