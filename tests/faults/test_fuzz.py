"""Every parser fed arbitrary and mutated bytes: only the promised errors, never a crash, hang or blow-up.

The targets live in ``fuzz/targets.py`` (shared with the atheris harness in
``fuzz/harness.py``); each lets through only what its parser promises:

- ``index`` parsers (header, position file, run file, catalog) and the
  checkpoint raise ``index.errors.FormatError`` (``UnsupportedVersionError``
  is one) with a byte position inside the buffer; the engine wraps it into
  ``logstore.errors.CorruptionError(path, position, what)`` (or
  ``FormatVersionError``, a ``CorruptionError``) or rebuilds the index;
- ``parse_record`` raises ``BadRecord`` at the record's position, which the
  engine turns into ``CorruptionError``;
- ``envelope.decode`` raises ``ValueError`` or ``TypeError`` (what ``Segment``
  catches and reports as ``CorruptionError``);
- the segment-file loader and reads, and a whole store (``logstore.open``,
  full reads, ``verify``), raise ``CorruptionError`` naming a file of the
  store and a byte position within it; a read never returns a message other
  than the one written, and never silently leaves one out.

Inputs: ``st.binary``; a valid header followed by arbitrary bytes; and
mutations of valid files (bit flips, byte overwrites, length, count and
offset fields set to interesting values, truncations, extensions, deleted
or duplicated ranges), each also with every checksum recomputed after the
mutation, so that the parser gets past its checksum checks. Whole stores:
one file mutated (or removed), which verify must report unless the change
lies in bytes the format ignores; and one file forged (its checksums, and
those CHECKPOINT or the catalog keep of it, recomputed), where reads may
return the forgery but nothing may crash, hang or blow up.

Lengths and counts are checked before anything is allocated (tracemalloc
measures it), and envelope decoding bounds every length msgpack reads.

``test_random_mutation_loop`` is the plain ``random.Random`` loop: a few
thousand inputs in CI, a million under ``LOGSTORE_STRESS=1``
(``python -m pytest tests/faults/test_fuzz.py -k loop -s`` prints the count).

The ``test_regression_*`` tests are the bugs this fuzzing found, each named
after what broke.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

import logstore
from fuzz import targets as T
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.record import BadRecord, Record, parse_record
from logstore.embedded.verify import verify
from logstore.embedded.walk import walk
from logstore.envelope import decode
from logstore.index.catalog import Catalog
from logstore.index.errors import FormatError
from logstore.index.header import (
    HEADER_SIZE,
    Header,
    encode_header,
)
from logstore.index.position import PositionIndex
from logstore.index.runs import LargeRuns
from tests.stress import SEED, STRESS, scale

HANG_SECONDS = 3600 if STRESS else 300
"""No test here may run longer than this: a parser that loops for ever fails the test instead of hanging CI."""
SLOW_INPUT_SECONDS = 5.0
"""One input of the random loop taking longer than this is a finding (a near-hang); most take microseconds."""


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"a fuzz test ran for more than {HANG_SECONDS} s: a parser hangs")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def seeds() -> T.Seeds:
    return T.seeds()


PARSERS = sorted(T.TARGETS)

# -- strategies ----------------------------------------------------------------------------------

_Op = tuple[Any, ...]

_ops: st.SearchStrategy[_Op] = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 2**20), st.binary(min_size=1, max_size=8)),
    st.tuples(
        st.just("field"),
        st.integers(0, 2**16),
        st.one_of(st.sampled_from(T.INTERESTING_WIDE), st.integers(0, 2**64 - 1)),
    ),
    st.tuples(st.just("truncate"), st.integers(0, 2**20)),
    st.tuples(st.just("extend"), st.one_of(st.binary(min_size=1, max_size=64), st.integers(1, 64).map(bytes))),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 32)),
    st.tuples(st.just("duplicate"), st.integers(0, 2**20), st.integers(1, 32)),
)


def apply_ops(data: bytes, ops: list[_Op], fields: list[tuple[int, int]]) -> bytes:
    """Apply hypothesis-drawn mutations; positions are taken modulo the current length."""
    buf = bytearray(data)
    for op in ops:
        n = len(buf)
        kind = op[0]
        if kind == "flip" and n:
            buf[op[1] % n] ^= 1 << op[2]
        elif kind == "set" and n:
            i = op[1] % n
            buf[i : i + len(op[2])] = op[2]
        elif kind == "field" and fields:
            pos, width = fields[op[1] % len(fields)]
            if pos + width <= n:
                buf[pos : pos + width] = (op[2] % (1 << (8 * width))).to_bytes(width, "little")
        elif kind == "truncate":
            del buf[op[1] % (n + 1) :]
        elif kind == "extend":
            buf += op[1]
        elif kind == "delete" and n:
            i = op[1] % n
            del buf[i : i + op[2]]
        elif kind == "duplicate" and n:
            i = op[1] % n
            buf[i:i] = buf[i : i + op[2]]
    return bytes(buf)


def valid_header(name: str, s: T.Seeds, body_length: int) -> bytes:
    """The header a file of target ``name`` must start with (right magic, store id and field a)."""
    kind = "segment" if name in ("header", "record") else name  # the file those targets' bytes start
    a = {"runs": s.runs_sid, "catalog": s.generation, "checkpoint": s.generation}.get(kind, 0)
    b = 0x10000 if kind == "segment" else body_length
    return encode_header(Header(T.MAGIC_OF[kind], s.store_id, a, b, 0))


# -- arbitrary and mutated bytes, every parser ------------------------------------------------------


@pytest.mark.parametrize("name", PARSERS)
@given(data=st.binary(max_size=4096), fix=st.booleans())
def test_parser_takes_arbitrary_bytes(seeds: T.Seeds, name: str, data: bytes, fix: bool) -> None:
    T.run_target(name, data, seeds, fix)


@pytest.mark.parametrize("name", [n for n in PARSERS if n != "envelope"])
@given(body=st.binary(max_size=4096))
def test_parser_takes_a_valid_header_and_arbitrary_bytes(seeds: T.Seeds, name: str, body: bytes) -> None:
    data = valid_header(name, seeds, len(body)) + body
    T.run_target(name, data, seeds, fix=True)


@pytest.mark.parametrize("name", PARSERS)
@settings(max_examples=scale(200, 5000))
@given(ops=st.lists(_ops, min_size=1, max_size=4), fix=st.booleans(), pick=st.integers(0, 2**16))
def test_parser_takes_mutated_valid_files(seeds: T.Seeds, name: str, ops: list[_Op], fix: bool, pick: int) -> None:
    seed = seeds.envelopes[pick % len(seeds.envelopes)] if name == "envelope" else seeds.file_of(name)
    data = apply_ops(seed, ops, T.field_positions(name, seeds))
    T.run_target(name, data, seeds, fix)


def test_the_seeds_are_valid_so_the_mutations_start_from_real_files(seeds: T.Seeds) -> None:
    """Each parser accepts its seed: the mutated inputs are near-valid files, not noise."""
    s = seeds
    ckpt = Checkpoint.decode(s.checkpoint, s.store_id)[0]
    assert ckpt.generation == s.generation
    count, checksum = s.position_count_and_checksum(s.position)
    assert len(PositionIndex.decode(s.position, s.store_id, 0, count, checksum)) == s.segment_records
    runs_sum = xxhash.xxh3_64_intdigest(s.runs[HEADER_SIZE : HEADER_SIZE + 16 * s.runs_count])
    assert len(LargeRuns.decode(s.runs, s.store_id, s.runs_sid, s.runs_count, runs_sum)) == s.runs_count
    cat, _runs, large = Catalog.decode(s.catalog, s.store_id, s.generation)
    assert len(cat) == len(s.written) and len(large) == 2
    assert all(type(decode(p)).__name__ == "Envelope" for p in s.envelopes)
    assert {parse_record(s.segment, p, len(s.segment)).kind for p in s.record_starts} == {1, 2, 3}
    for name in PARSERS:  # and fixing checksums of an unmutated file changes nothing
        assert T.fix_checksums(name, s.file_of(name)) == s.file_of(name)


# -- the checksum bypass reaches the checks behind the checksums --------------------------------------


def test_fixed_checksums_reach_the_catalog_count_checks(seeds: T.Seeds) -> None:
    raw = bytearray(seeds.catalog)
    struct.pack_into("<Q", raw, 64, 2**40)  # S: a trillion streams
    with pytest.raises(FormatError, match="body checksum mismatch"):
        Catalog.decode(bytes(raw), seeds.store_id, seeds.generation)
    with pytest.raises(FormatError, match=r"counts \(S=1099511627776.*need more bytes"):
        Catalog.decode(T.fix_checksums("catalog", bytes(raw)), seeds.store_id, seeds.generation)


def test_fixed_checksums_reach_the_record_checks_behind_the_checksum(seeds: T.Seeds) -> None:
    raw = bytearray(seeds.segment)
    first = seeds.record_starts[0]  # a NAMED record: its stream name starts at byte 28
    raw[first + 28] = 0xFF  # not UTF-8, which parse_record checks after the checksum
    with pytest.raises(BadRecord, match="checksum mismatch"):
        parse_record(bytes(raw), first, len(raw))
    with pytest.raises(BadRecord, match="not valid UTF-8"):
        parse_record(T.fix_checksums("record", bytes(raw)), first, len(raw))


# -- lengths are checked before anything is allocated ---------------------------------------------

LIMIT = 4 * 2**20
"""Bytes a parser may allocate on the inputs below, which are all smaller than 70 KiB."""


def peak_allocation(fn: Callable[[], object]) -> int:
    """Peak bytes Python and numpy allocated while ``fn`` ran (it may raise)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        with contextlib.suppress(Exception):  # only the allocation matters here
            fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_the_allocation_probe_sees_numpy_and_python_allocations() -> None:
    """The control for the tests below: a 64 MiB allocation is seen, so a huge one would fail them."""
    assert peak_allocation(lambda: np.empty(64 * 2**20, np.uint8)) >= 64 * 2**20
    assert peak_allocation(lambda: bytes(64 * 2**20)) >= 64 * 2**20


def _segment_with_record_length(s: T.Seeds, length: int) -> bytes:
    raw = bytearray(s.segment)
    struct.pack_into("<I", raw, s.record_starts[0], length)
    return T.fix_checksums("record", bytes(raw))


HUGE = [2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1]


@pytest.mark.parametrize("huge", [2**31 - 1, 2**31, 2**32 - 1])  # the record length field is a u32
def test_a_huge_record_length_is_refused_before_allocation(seeds: T.Seeds, huge: int) -> None:
    s = seeds
    data = _segment_with_record_length(s, huge)
    with pytest.raises(BadRecord, match=f"record length {huge} does not fit"):
        parse_record(data, s.record_starts[0], len(data))
    assert peak_allocation(lambda: parse_record(data, s.record_starts[0], len(data))) < LIMIT


@pytest.mark.parametrize("huge", HUGE)
@pytest.mark.parametrize(
    "case", ["position count", "run count", "catalog S", "catalog R", "catalog K", "catalog N", "checkpoint G"]
)
def test_a_huge_count_is_refused_before_allocation(seeds: T.Seeds, case: str, huge: int) -> None:
    s = seeds
    call: Callable[[], object]
    if case == "position count":

        def call() -> object:
            return PositionIndex.decode(s.position, s.store_id, 0, huge, 0)

    elif case == "run count":

        def call() -> object:
            return LargeRuns.decode(s.runs, s.store_id, s.runs_sid, huge, 0)

    elif case.startswith("catalog"):
        raw = bytearray(s.catalog)
        struct.pack_into("<Q", raw, 64 + 8 * "SRKN".index(case[-1]), huge)
        data = T.fix_checksums("catalog", bytes(raw))

        def call() -> object:
            return Catalog.decode(data, s.store_id, s.generation)

    else:
        raw = bytearray(s.checkpoint)
        struct.pack_into("<Q", raw, 80, huge)
        data = T.fix_checksums("checkpoint", bytes(raw))

        def call() -> object:
            return Checkpoint.decode(data, None)

    with pytest.raises(FormatError):
        call()
    assert peak_allocation(call) < LIMIT


def test_a_record_length_of_2_gib_in_a_segment_file_is_refused_without_allocating_it(seeds: T.Seeds) -> None:
    """The whole-file path too: open the segment, walk its records, read them."""
    data = _segment_with_record_length(seeds, 2**31)
    peak = peak_allocation(lambda: T.target_segment(data, seeds, True))
    assert peak < LIMIT


# -- msgpack limits in envelope decoding ------------------------------------------------------------

_CLAIMS = {
    "bin32": b"\xc6",
    "str32": b"\xdb",
    "array32": b"\xdd",
    "map32": b"\xdf",
    "ext32": b"\xc9",
}


@pytest.mark.parametrize("what", sorted(_CLAIMS))
@pytest.mark.parametrize("claim", [2**31, 2**32 - 1])
def test_envelope_decoding_bounds_every_claimed_length_by_the_payload(seeds: T.Seeds, what: str, claim: int) -> None:
    """msgpack's ``unpackb`` caps max_bin_len, max_str_len, max_array_len, max_map_len and max_ext_len.

    ``logstore.envelope.decode`` passes no explicit limits: msgpack >= 1.0's
    ``unpackb`` sets each of them from the length of the buffer it is given,
    which is one record's payload. So a payload that claims a 2 GiB or 4 GiB
    item is refused with ``ValueError`` and nothing of that size is
    allocated. This test fails if msgpack (or the engine's use of it) ever
    stops bounding them.
    """
    prefix = seeds.envelopes[0][:1]  # the 7-item array header
    assert prefix == b"\x97"
    payload = prefix + _CLAIMS[what] + claim.to_bytes(4, "big") + (b"\x01" if what == "ext32" else b"")
    payload += bytes(64)
    with pytest.raises(ValueError):
        decode(payload)
    assert peak_allocation(lambda: decode(payload)) < LIMIT


def test_envelope_decoding_accepts_the_largest_items_a_payload_can_hold(seeds: T.Seeds) -> None:
    """The bound is the payload's length, not tighter: a 1 MiB bin in a 1 MiB payload decodes."""
    env = decode(seeds.envelopes[0])
    big = env._replace(message=bytes(2**20))
    payload = msgpack.packb(list(big), use_bin_type=True, datetime=True)
    assert decode(payload) == big


def test_the_catalog_names_block_bounds_claimed_lengths_too(seeds: T.Seeds) -> None:
    s = seeds
    cat = bytearray(s.catalog)
    s_count, _r, _k, n = struct.unpack_from("<QQQQ", cat, 64)
    # Replace the names block's array header by an array32 claiming 2**31 items (same length: N grows by 4).
    block = bytes(cat[96 : 96 + n])
    assert block[0] == 0x90 + s_count
    forged = b"\xdd" + (2**31).to_bytes(4, "big") + block[1:]
    body = bytes(cat[64:96]) + forged + bytes(cat[96 + n :])
    body = body[:24] + struct.pack("<Q", n + 4) + body[32:]
    data = T.fix_checksums("catalog", bytes(cat[:64]) + body)
    with pytest.raises(FormatError):
        Catalog.decode(data, s.store_id, s.generation)
    assert peak_allocation(lambda: Catalog.decode(data, s.store_id, s.generation)) < LIMIT


def test_deeply_nested_envelopes_are_refused_with_a_value_error() -> None:
    """msgpack's unpacker stack is bounded: a payload of 100,000 nested arrays is a ``ValueError``, not a crash."""
    payload = b"\x97" + b"\x91" * 100_000
    with pytest.raises(ValueError):
        decode(payload)
    assert sys.getrecursionlimit() < 100_000  # so it was not Python recursion that stopped it


# -- whole stores -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the store copies go: memory (/dev/shm) when there is one, since every example copies a store."""
    if not os.path.isdir("/dev/shm"):
        yield tmp_path_factory.mktemp("stores")
        return
    path = Path(tempfile.mkdtemp(prefix="logstore-test-fuzz-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def copy_seeds(s: T.Seeds, path: str | Path) -> str:
    """A fresh copy of the seed store at ``path`` (replacing what is there); returns its directory."""
    directory = str(path)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    shutil.copytree(s.directory, directory)
    return directory


def mutate_store_file(
    directory: str, s: T.Seeds, rel: str, mutate: Callable[[bytes, list[tuple[int, int]]], bytes | None]
) -> tuple[bytes, bytes | None]:
    """Replace file ``rel`` of the store in ``directory`` by ``mutate(bytes, fields)``; ``None`` removes it."""
    path = os.path.join(directory, rel)
    with open(path, "rb") as f:
        before = f.read()
    after = mutate(before, T.field_positions(T.kind_of_store_file(rel), s))
    if after is None:
        os.unlink(path)
    else:
        with open(path, "wb") as f:
            f.write(after)
    return before, after


def _records_end(segment: bytes) -> int:
    """Where the records of a segment file's bytes end."""
    end = HEADER_SIZE
    for item in walk(memoryview(segment), HEADER_SIZE, len(segment)):
        if not isinstance(item, Record):
            break
        end = item.position + item.length
    return end


def assert_detected(directory: str, s: T.Seeds, rel: str, before: bytes, after: bytes | None) -> None:
    """verify names the damaged file, unless the damage lies wholly in a region the format ignores."""
    result = verify(directory)
    if after is None:  # removed: a problem (named after the file, or after what lists it)
        assert not result.ok, f"verify did not notice that {rel} is gone"
        return
    if after == before:
        assert result.ok, result.problems
        return
    if rel.endswith(".log") and _records_end(before) <= len(after) < len(before) and after == before[: len(after)]:
        # Only the zero tail after the last record got shorter: a segment file may end anywhere from
        # its last record to its capacity (FORMAT.md section 4), so there is nothing to report.
        assert not any(before[len(after) :])
        assert result.ok, result.problems
        return
    ignored = T.ignored_region(rel, before, s)
    if ignored is not None and len(after) >= ignored and after[:ignored] == before[:ignored]:
        return  # stale entries past the valid count: readers ignore them (FORMAT.md sections 7 and 8)
    path = os.path.join(directory, rel)
    named = [p for p in result.problems if p.path == path]
    assert named, f"verify did not report the damage to {rel}: {result.problems}"
    assert all(0 <= p.position <= max(len(after), HEADER_SIZE) for p in named), named


@settings(max_examples=scale(150, 3000))
@given(
    file=st.integers(0, 2**16),
    ops=st.lists(_ops, min_size=1, max_size=3),
    readonly=st.booleans(),
    remove=st.integers(0, 15).map(lambda x: x == 0),
)
def test_a_store_with_one_mutated_file_opens_reads_and_verifies_without_a_wrong_answer(
    seeds: T.Seeds, scratch: Path, file: int, ops: list[_Op], readonly: bool, remove: bool
) -> None:
    files = T.store_files(seeds.directory)
    rel = files[file % len(files)]
    directory = str(scratch / "store")
    if os.path.exists(directory):
        shutil.rmtree(directory)
    shutil.copytree(seeds.directory, directory)
    before, after = mutate_store_file(
        directory, seeds, rel, lambda data, fields: None if remove else apply_ops(data, ops, fields)
    )
    assert_detected(directory, seeds, rel, before, after)
    assert T.check_store(directory, seeds, readonly) in ("intact", "damaged read", "refused", "cut")


@settings(max_examples=scale(100, 3000))
@given(file=st.integers(0, 2**16), ops=st.lists(_ops, min_size=1, max_size=3), readonly=st.booleans())
def test_a_store_with_one_forged_file_opens_reads_and_verifies_without_crashing(
    seeds: T.Seeds, scratch: Path, file: int, ops: list[_Op], readonly: bool
) -> None:
    """The same with every checksum of the mutated file recomputed: a consistent forgery (or a writer
    bug) rather than damage. Reads may then return the forged content, which no checksum can tell
    from the real one; but open, reads and verify still raise nothing but ``CorruptionError``, and do
    not hang or run out of memory."""
    files = T.store_files(seeds.directory)
    rel = files[file % len(files)]
    directory = copy_seeds(seeds, scratch / "forged-store")
    mutate_store_file(directory, seeds, rel, lambda data, fields: apply_ops(data, ops, fields))
    T.forge_store_checksums(directory, rel)
    with contextlib.suppress(T.WrongAnswer):
        T.check_store(directory, seeds, readonly)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_forged_name_table_reads_as_damage_not_as_a_crash(seeds: T.Seeds, scratch: Path, readonly: bool) -> None:
    """Found by the forged-file fuzzing above: one bit of the name table's shared-run starts changed, the
    checksums made right again. A read of a stream whose runs the starts no longer lead to raised
    ``KeyError`` or ``IndexError``; it is damage, reported as ``CorruptionError`` (or a forged answer)."""
    (rel,) = [f for f in T.store_files(seeds.directory) if f.startswith("names.")]
    directory = copy_seeds(seeds, scratch / "forged-names")
    mutate_store_file(directory, seeds, rel, lambda data, fields: apply_ops(data, [("flip", 288, 1)], fields))
    T.forge_store_checksums(directory, rel)
    with contextlib.suppress(T.WrongAnswer):
        T.check_store(directory, seeds, readonly)


def test_a_store_untouched_reads_back_everything(seeds: T.Seeds, scratch: Path) -> None:
    """The control for the test above: the unmutated copy reads back whole and verifies clean."""
    directory = copy_seeds(seeds, scratch / "pristine")
    assert verify(directory).ok
    assert T.check_store(directory, seeds, readonly=True) == "intact"
    assert T.check_store(directory, seeds, readonly=False) == "intact"
    assert verify(directory).ok


def test_a_wrong_answer_is_caught_by_the_whole_store_check(seeds: T.Seeds, scratch: Path) -> None:
    """The check is able to fail: a store whose reads differ from what was written is a WrongAnswer."""
    other = T.Seeds(**{**seeds.__dict__, "written": {k: list(v) for k, v in seeds.written.items()}})
    first = other.written["order-42"][0]
    other.written["order-42"][0] = first._replace(type="Tampered")
    directory = copy_seeds(seeds, scratch / "tampered")
    with pytest.raises(T.WrongAnswer):
        T.check_store(directory, other, readonly=True)


# -- the plain random loop ------------------------------------------------------------------------

LOOP_INPUTS = scale(4000, 1_000_000)
STORE_EVERY = 1000
"""Every this many inputs the loop also mutates a whole store and opens, reads and verifies it."""


def run_loop(s: T.Seeds, inputs: int, seed: int, scratch_dir: str) -> tuple[int, list[str]]:
    """Mutate valid seeds with ``random.Random(seed)`` and feed every target; returns (count, findings)."""
    rng = random.Random(seed)
    names = PARSERS
    files = T.store_files(s.directory)
    findings: list[str] = []
    done = 0
    for i in range(inputs):
        name = names[i % len(names)]
        data = T.mutate(T.seed_for(name, s, rng), rng, name, s)
        fix = rng.random() < 0.5
        started = time.perf_counter()
        try:
            T.run_target(name, data, s, fix)
        except Exception as exc:  # noqa: BLE001 - every other exception is a finding, recorded with its input
            findings.append(f"input {i} (seed {seed}), target {name}, fix={fix}: {type(exc).__name__}: {exc}")
        if time.perf_counter() - started > SLOW_INPUT_SECONDS:
            findings.append(f"input {i} (seed {seed}), target {name}, fix={fix}: took over {SLOW_INPUT_SECONDS} s")
        done += 1
        if i % STORE_EVERY == STORE_EVERY - 1:
            directory = copy_seeds(s, os.path.join(scratch_dir, "loop-store"))
            rel = rng.choice(files)
            kind = T.kind_of_store_file(rel)
            try:
                mutate_store_file(directory, s, rel, lambda data, _f, kind=kind: T.mutate(data, rng, kind, s))
                T.check_store(directory, s, readonly=rng.random() < 0.5)
            except Exception as exc:  # noqa: BLE001 - a finding
                findings.append(f"input {i} (seed {seed}), store file {rel}: {type(exc).__name__}: {exc}")
            done += 1
    return done, findings


def test_random_mutation_loop(seeds: T.Seeds, scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    done, findings = run_loop(seeds, LOOP_INPUTS, SEED, str(scratch))
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\nfuzz inputs: {done}, unexpected exceptions: {len(findings)} "
            f"({seconds:.1f} s, {done / seconds:,.0f} inputs/s)"
        )
    assert not findings, "\n".join(findings[:20])


def test_the_random_loop_reports_a_parser_that_raises_something_else(
    seeds: T.Seeds, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop is able to fail: a parser that raises an unpromised exception is a finding."""

    def broken(data: bytes, s: T.Seeds, fixed: bool) -> None:
        raise IndexError("index out of range")

    monkeypatch.setitem(T.TARGETS, "catalog", broken)
    done, findings = run_loop(seeds, 16, 0, str(scratch))
    assert done == 16 and len(findings) == 2 and "IndexError" in findings[0]


# -- regressions -----------------------------------------------------------------------------------


def _forge_catalog(s: T.Seeds, directory: str, change: Callable[[bytearray, int, int, int, int], None]) -> str:
    """Change the catalog of the store copy in ``directory`` and recompute its checksums (a consistent forgery)."""
    path = os.path.join(directory, f"catalog.{s.generation:020d}")
    raw = bytearray(Path(path).read_bytes())
    count_s, count_r, _k, n = struct.unpack_from("<QQQQ", raw, 64)
    h = -(-(96 + n) // 8) * 8
    j = -(-(h + 37 * count_s) // 8) * 8
    q = -(-(j + 4 * count_r) // 8) * 8
    change(raw, count_s, count_r, h, q)
    Path(path).write_bytes(T.fix_checksums("catalog", bytes(raw)))
    return path


@pytest.mark.parametrize(
    "forgery",
    ["a shared run past the log", "a small stream's head past the log", "a large stream's head past the log"],
)
@pytest.mark.parametrize("readonly", [True, False])
def test_regression_a_catalog_whose_runs_reach_past_the_log_made_reads_raise_key_error(
    seeds: T.Seeds, scratch: Path, forgery: str, readonly: bool
) -> None:
    """A catalog that passes its checksum but maps stream offsets past the end of the log (a writer
    bug, or damage before the checksum was computed) made ``try_next`` raise ``KeyError`` from the
    position index. Found by the whole-store fuzz with recomputed checksums. The open now checks the
    runs and heads against the checkpoint's next global offset and rebuilds the indexes from the log."""
    s = seeds
    names = list(s.written)
    order = names.index("order-42")
    big = names.index("big")

    def change(raw: bytearray, count_s: int, count_r: int, h: int, q: int) -> None:
        if forgery == "a shared run past the log":
            struct.pack_into("<Q", raw, q + 8 * count_r, 2**40)  # the global offset of shared run 0
        elif forgery == "a small stream's head past the log":
            struct.pack_into("<Q", raw, h + 8 * order, 2**40)
        else:
            struct.pack_into("<Q", raw, h + 8 * big, 2**40)

    directory = copy_seeds(s, scratch / "forged")
    cat_path = _forge_catalog(s, directory, change)
    assert any(p.path == cat_path for p in verify(directory).problems)  # verify sees the catalog disagree
    store = logstore.open(directory, readonly=readonly)
    try:
        assert T.read_everything(store, s)  # complete, and every message equal to what was written
        assert "all indexes" in store.recovery_report.rebuilt
    finally:
        store.close()


def test_the_catalog_check_at_open_accepts_every_store_the_api_writes(tmp_path: Path) -> None:
    """The check that regression adds must not reject real catalogs: truncations, deletions, large
    streams, compaction and retention, each followed by a clean reopen that uses the checkpoint."""
    directory = tmp_path / "store"
    store = logstore.open(directory, segment_size=T.SEGMENT_SIZE, durability="none")
    heads: dict[str, int] = {}

    def commit(stream: str, n: int) -> None:
        tx, committer = store.begin_tx()
        store.append_messages(
            tx, stream, heads.get(stream, 0), [T.Envelope.new("E", {"pad": "x" * 300}) for _ in range(n)]
        )
        committer.commit()
        heads[stream] = heads.get(stream, 0) + n

    def reopen(**options: Any) -> logstore.Store:
        store.close()
        again = logstore.open(directory, segment_size=T.SEGMENT_SIZE, durability="none", **options)
        assert again.recovery_report.rebuilt == [], again.recovery_report
        return again

    for i in range(140):  # two large streams
        commit("a", 1)
        commit("b", 1 + i % 2)
    commit("c", 3)
    store = reopen()
    store.truncate_stream("a", 50)
    store.delete_stream("c")
    commit("d", 2)
    store = reopen()
    store.compact()
    store = reopen()
    commit("a", 5)
    store = reopen(retention_bytes=T.SEGMENT_SIZE)
    assert store.log_start > 0
    commit("b", 2)
    store = reopen()
    with store.open_global(store, 0) as reader:
        everything = list(reader)
    assert len(everything) > 50  # what retention kept
    store.close()
    assert verify(str(directory)).ok
    # And the checks of a rebuild from the log (a log that retention shortened: ids and offsets out of order).
    os.unlink(directory / "CHECKPOINT")
    store = logstore.open(directory, segment_size=T.SEGMENT_SIZE, durability="none")
    try:
        assert store.recovery_report.rebuilt == ["all indexes"]
        with store.open_global(store, 0) as reader:
            assert list(reader) == everything
    finally:
        store.close()
    assert verify(str(directory)).ok


def _forge_stream_id(s: T.Seeds, directory: str, sid: int) -> int:
    """Give the record of stream "gone" (global offset 2: the only record of its stream's first
    transaction, NAMED) stream id ``sid``, with its checksum recomputed; returns its byte position."""
    path = os.path.join(directory, "segments", "00000000000000000000.log")
    raw = bytearray(Path(path).read_bytes())
    position = s.record_starts[2]
    assert parse_record(bytes(raw), position, len(raw)).name == "gone"
    struct.pack_into("<I", raw, position + 8, sid)
    Path(path).write_bytes(T.fix_checksums("segment", bytes(raw)))
    return position


_LIMITED = """
import logging, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
logging.disable(logging.CRITICAL)
import logstore
from logstore.embedded.verify import verify
directory, what = sys.argv[1], sys.argv[2]
try:
    if what == "open":
        logstore.open(directory, readonly=True).close()
        print("opened")
    elif what == "repair":
        from logstore.embedded.repair import repair
        print(f"repaired: {repair(directory, dry_run=True).records_kept} records kept")
    else:
        result = verify(directory)
        print(f"problems {len(result.problems)}: {result.problems[:3]}")
except logstore.CorruptionError as exc:
    print(f"CorruptionError {exc}")
"""


def _run_limited(directory: str, what: str, timeout: float = 300) -> str:
    """Run an open, a verify or a repair in a child limited to 2 GiB of address space; its output."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _LIMITED, directory, what], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize("sid", [2**32 - 2, 2**31, 10**6])
def test_regression_a_rebuilding_open_of_a_record_with_stream_id_near_2_to_the_32_allocated_tens_of_gib(
    seeds: T.Seeds, scratch: Path, sid: int
) -> None:
    """A record (checksum intact) naming a new stream id in the billions, met while the indexes are
    rebuilt from the log (no usable CHECKPOINT), made the catalog grow its arrays and name list to
    that id: tens of GiB, and the process was killed. Found by the whole-store fuzz with recomputed
    checksums (the OOM killer stopped it at 22 GiB). Every id up to the highest must be named by a
    record of its own, so an id beyond what the log's bytes can hold is damage: open refuses it."""
    directory = copy_seeds(seeds, scratch / "sid")
    position = _forge_stream_id(seeds, directory, sid)
    os.unlink(os.path.join(directory, "CHECKPOINT"))  # rebuild from the log, where ids may come in any order
    out = _run_limited(directory, "open")
    assert out.startswith("CorruptionError ") and f"00000000000000000000.log at byte {position}:" in out, out
    assert f"stream id {sid}" in out, out


@pytest.mark.parametrize("checkpoint", [True, False])
def test_regression_verify_of_a_record_with_stream_id_near_2_to_the_32_reported_every_id_below_it(
    seeds: T.Seeds, scratch: Path, checkpoint: bool
) -> None:
    """verify reported "stream id N is named nowhere in the log" once for every id below a record's
    stream id: four billion problems for one damaged record, which ran out of memory. It now reports
    each run of unnamed ids as one problem."""
    directory = copy_seeds(seeds, scratch / "sid-verify")
    _forge_stream_id(seeds, directory, 2**32 - 2)
    if not checkpoint:
        os.unlink(os.path.join(directory, "CHECKPOINT"))
    out = _run_limited(directory, "verify")
    count = int(out.split()[1].rstrip(":"))
    assert 0 < count < 100, out
    assert "named nowhere" in out or "out of sequence" in out, out


def test_regression_repair_of_a_record_with_stream_id_near_2_to_the_32_counted_up_to_it(
    seeds: T.Seeds, scratch: Path
) -> None:
    """``logstore repair`` looked for unnamed stream ids by counting from 0 to the highest id in the
    log, one Python iteration each, even after it had nothing left to name: for one damaged record
    with a stream id near 2**32, hours. It now stops when nothing is left to name."""
    directory = copy_seeds(seeds, scratch / "sid-repair")
    _forge_stream_id(seeds, directory, 2**32 - 2)
    started = time.perf_counter()
    out = _run_limited(directory, "repair", timeout=120)  # a hang raises TimeoutExpired
    assert out.startswith("repaired: "), out
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("entry", ["past the mapping", "within 28 bytes of its end"])
def test_regression_a_position_entry_past_the_segment_made_reads_raise_struct_error(
    seeds: T.Seeds, scratch: Path, entry: str
) -> None:
    """A position file whose last entry points past the end of its segment, with the checksum in
    CHECKPOINT recomputed to match (a consistent forgery of two files, or a writer bug), made
    ``Segment.read_many`` and ``read_global`` (now the one ``Segment.read``) raise ``struct.error``
    from unpacking a record header outside the mapping. Reads now raise ``CorruptionError`` naming the
    segment and the position."""
    s = seeds
    directory = copy_seeds(s, scratch / "pos-forged")
    pos_path = os.path.join(directory, "segments", "00000000000000000000.pos")
    raw = bytearray(Path(pos_path).read_bytes())
    n = s.segment_records
    bad = 0xFFFFFF00 if entry == "past the mapping" else T.SEGMENT_SIZE - 20
    struct.pack_into("<I", raw, HEADER_SIZE + 4 * (n - 1), bad)
    Path(pos_path).write_bytes(bytes(raw))
    T.forge_store_checksums(directory, "segments/00000000000000000000.pos")  # and its checksum in CHECKPOINT
    store = logstore.open(directory, readonly=True)
    try:
        segment = store._log.segments[0]
        for read in ("stream", "global"):
            with pytest.raises(logstore.CorruptionError) as caught:
                if read == "global":
                    segment.read(n - 1, n, [], trimmed={})
                else:
                    rec = parse_record(s.segment, s.record_starts[n - 1], len(s.segment))
                    segment.read(n - 1, n, [], rec.sid, rec.soff)
            assert caught.value.path == segment.path and caught.value.position == min(bad, T.SEGMENT_SIZE)
            assert f"index points past it: {bad}" in str(caught.value)
        assert not T.read_everything(store, s)  # the public reads: CorruptionError, nothing wrong before it
    finally:
        store.close()


def test_forged_index_checksums_get_past_the_engines_checks(seeds: T.Seeds, scratch: Path) -> None:
    """The control for the forged-store test: after ``forge_store_checksums`` the engine takes a changed
    position file and run file as they are (no rebuild), so the forged test reaches what lies behind."""
    s = seeds
    directory = copy_seeds(s, scratch / "forged-control")
    pos_rel = "segments/00000000000000000000.pos"
    runs_rel = f"streams/{s.runs_sid:010d}.runs"
    pos = bytearray(Path(directory, pos_rel).read_bytes())
    last = HEADER_SIZE + 4 * (s.segment_records - 1)
    struct.pack_into("<I", pos, last, struct.unpack_from("<I", pos, last)[0] + 1)
    Path(directory, pos_rel).write_bytes(bytes(pos))
    runs = bytearray(Path(directory, runs_rel).read_bytes())
    last = HEADER_SIZE + 16 * (s.runs_count - 1)
    struct.pack_into("<Q", runs, last + 8, struct.unpack_from("<Q", runs, last + 8)[0] - 1)  # a global offset
    Path(directory, runs_rel).write_bytes(bytes(runs))
    for rel in (pos_rel, runs_rel):
        T.forge_store_checksums(directory, rel)
    store = logstore.open(directory, readonly=True)
    try:
        assert store.recovery_report.rebuilt == []
        got = store._log.segments[0].positions.positions.view().tolist()
        assert got == list(struct.unpack_from(f"<{s.segment_records}I", pos, HEADER_SIZE))
        big = store._log.runs.large[s.runs_sid]
        assert int(big.goffs.view()[-1]) == struct.unpack_from("<Q", runs, last + 8)[0]
    finally:
        store.close()


@pytest.mark.parametrize("soff", [3, 256, 2**63])
@pytest.mark.parametrize("readonly", [True, False])
def test_regression_a_rebuilding_open_of_a_record_with_stream_offset_past_its_global_offset_raised_overflow_error(
    seeds: T.Seeds, scratch: Path, soff: int, readonly: bool
) -> None:
    """A message record (checksum intact) whose stream offset is larger than its global offset, met
    while the indexes are rebuilt from the log (where a stream's first record may have any offset),
    made ``open`` raise ``OverflowError`` storing the negative ``goff - soff`` into the catalog's
    uint64 ``run_diff``. Found by the forged-store test in the long tier. Every message of a stream
    takes a global offset of its own, so a stream offset past the global offset is damage."""
    s = seeds
    directory = copy_seeds(s, scratch / "soff")
    path = os.path.join(directory, "segments", "00000000000000000000.log")
    raw = bytearray(Path(path).read_bytes())
    position = s.record_starts[2]  # stream "gone", global offset 2, the only record of its transaction
    struct.pack_into("<Q", raw, position + 12, soff)
    Path(path).write_bytes(T.fix_checksums("segment", bytes(raw)))
    os.unlink(os.path.join(directory, "CHECKPOINT"))
    with pytest.raises(logstore.CorruptionError) as caught:
        logstore.open(directory, readonly=readonly).close()
    assert caught.value.path == path and caught.value.position == position, caught.value
    assert f"stream offset {soff} is past its global offset 2" in str(caught.value)


def test_regression_a_catalog_ending_inside_alignment_padding_reported_a_position_past_its_end(
    seeds: T.Seeds,
) -> None:
    """A catalog (checksums intact) whose file ends inside the padding before a table made
    ``Catalog.decode`` report "file ends inside an array" at the aligned start of that table, a byte
    position past the end of the file (344 of 343 bytes). Found by the atheris harness
    (``catalog --fix-checksums``). It now reports the end of the file."""
    s = seeds
    raw = bytearray(s.catalog)
    count_s, _r, _k, n = struct.unpack_from("<QQQQ", raw, 64)
    h = -(-(96 + n) // 8) * 8
    assert (h + 37 * count_s) % 8 <= 5  # at least 3 bytes of padding follow the flags
    struct.pack_into("<QQ", raw, 72, 0, 0)  # R = K = 0: the counts fit what is left
    data = T.fix_checksums("catalog", bytes(raw[: h + 37 * count_s + 2]))
    with pytest.raises(FormatError, match="file ends inside an array") as caught:
        Catalog.decode(data, s.store_id, s.generation)
    assert caught.value.position == len(data)
