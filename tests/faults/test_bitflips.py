"""Single-bit flips at every byte of a 64 KiB segment and of its index files: each is caught or harmless.

The store is the fuzz seed store (``fuzz/targets.py``: 64 KiB segments, every
record kind the API writes, two large streams with run files), closed
cleanly. Its files are read into memory once; for each flip only the flipped
byte is written, and put back afterwards.

For each flip, ``logstore.embedded.verify.verify`` on the directory is the reference:

- **detected**: verify reports a problem naming the flipped file, the first
  of them at a byte position not after the flipped byte (for a flip inside a
  64-byte header, anywhere in the header: the header checksum at byte 56 is
  what catches it; later problems may be consequences further on), or
  ``logstore.open`` / a read raises ``CorruptionError``;
- **harmless**: the flipped byte lies in a region docs/FORMAT.md defines as
  ignored, verify is clean, and every message reads back equal. The only
  such regions are the stale entries past the valid count of a position
  file (section 7: "64 + 4n ... stale entries from a run that did not reach
  its next checkpoint; ignored") and of a run file (section 8: "64 + 16n
  ... stale runs past the valid count; ignored"). The seed store has none
  (``close()`` checkpoints every entry), so the test appends some, as a
  checkpoint interrupted after its appends would leave them. Every other
  byte of every file is covered by a checksum (headers, records, catalog
  and checkpoint bodies, valid index entries) or must be zero (a segment's
  tail after its last record, section 5), so nothing else can be harmless;
- **undetected**: anything else, and the test fails on the first one.

Independently of the verdict, flips are also opened (``readonly=True``, so
nothing is written) and read in full, stream by stream and in global order:
a read may raise ``CorruptionError`` but never return a message other than
the one written, or silently leave one out. Every flip is read in the long
tier; in CI every third, and every flip that verify does not report.

CI tier: every 61st byte of the segment, every 7th of CHECKPOINT, the catalog
and the position files, every 29th of the run files, and every 3rd of the
stale entries; the flipped bit rotates with the byte. ``LOGSTORE_STRESS=1``: every byte of
every file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import logstore
from fuzz import targets as T
from logstore.embedded.verify import VerifyResult, verify
from logstore.errors import CorruptionError
from logstore.index.header import HEADER_SIZE
from tests.helpers import quiet_logstore
from tests.stress import STRESS

SEGMENT = "segments/00000000000000000000.log"
STALE_POSITION_ENTRIES = 4
STALE_RUNS = 2


def flip_positions(size: int, step: int) -> list[tuple[int, int]]:
    """(byte position, bit) pairs: every ``step``-th byte, the bit rotating so that all 8 are used."""
    return [(pos, (pos // step + pos // 8) % 8) for pos in range(0, size, step)]


@pytest.fixture(scope="module")
def store() -> Iterator[tuple[str, T.Seeds, dict[str, bytes], dict[str, int]]]:
    """A copy of the seed store (with stale index entries appended) in memory-backed storage."""
    s = T.seeds()
    parent = tempfile.mkdtemp(prefix="logstore-bitflips-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    directory = os.path.join(parent, "store")
    shutil.copytree(s.directory, directory)
    pristine: dict[str, bytes] = {}
    ignored: dict[str, int] = {}
    for rel in T.store_files(directory):
        path = os.path.join(directory, rel)
        with open(path, "rb") as f:
            data = f.read()
        start = T.ignored_region(rel, data, s)
        if start is not None:
            assert start == len(data), f"{rel}: the seed store already has stale entries"
            # Stale entries as an interrupted checkpoint leaves them: plausible values past the valid count.
            width = 4 if rel.endswith(".pos") else 16
            stale = data[-width:] * (STALE_POSITION_ENTRIES if width == 4 else STALE_RUNS)
            data += stale
            with open(path, "ab") as f:
                f.write(stale)
            ignored[rel] = start
        pristine[rel] = data
    result = verify(directory, live=False)
    assert result.ok, result.problems  # stale entries are not a problem
    try:
        yield directory, s, pristine, ignored
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def flip_and_check(
    directory: str,
    s: T.Seeds,
    rel: str,
    pos: int,
    bit: int,
    pristine: dict[str, bytes],
    ignored: dict[str, int],
    read: bool = True,
) -> str:
    """Flip one bit, classify it, put the byte back. Returns "detected" or "harmless"; fails otherwise.

    With ``read`` False a flip that verify reports is not also opened and read.
    """
    path = os.path.join(directory, rel)
    original = pristine[rel][pos]
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([original ^ (1 << bit)]), pos)
        try:
            return _classify(directory, s, rel, pos, bit, ignored, read)
        finally:
            os.pwrite(fd, bytes([original]), pos)
    finally:
        os.close(fd)


def _classify(directory: str, s: T.Seeds, rel: str, pos: int, bit: int, ignored: dict[str, int], read: bool) -> str:
    where = f"{rel} byte {pos} bit {bit}"
    path = os.path.join(directory, rel)
    result = verify(directory, live=False)
    named = [p for p in result.problems if p.path == path]
    if named:  # the first problem reported in the file says where: at or before the flipped byte
        in_header = pos < HEADER_SIZE and named[0].position < HEADER_SIZE
        assert named[0].position <= pos or in_header, f"{where}: verify reports it after the flipped byte: {named}"
        if not read:
            return "detected"
    caught = False
    try:
        opened = logstore.open(directory, readonly=True)
    except CorruptionError as exc:
        T.check_corruption_error(exc, directory)
        caught = True
    else:
        try:
            caught = not T.read_everything(opened, s)  # raises WrongAnswer on a wrong or missing message
        finally:
            opened.close()
    if named or caught:
        return "detected"
    start = ignored.get(rel)
    if start is not None and pos >= start and result.ok:
        return "harmless"
    raise AssertionError(f"{where}: undetected (verify found {result.problems}, reads were complete and equal)")


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    """Recovery warnings for every flip would flood the log capture; the verdicts are what matter."""
    with quiet_logstore():
        yield


STEP_SEGMENT = 1 if STRESS else 61
STEP_SMALL = 1 if STRESS else 7  # CHECKPOINT, the catalog and the position files
STEP_RUNS = 1 if STRESS else 29  # the run files (2 KiB each)
READ_EVERY = 1 if STRESS else 3  # flips that verify reports are also opened and read: every one, or every 3rd


def test_every_bit_flip_in_a_segment_and_its_indexes_is_detected_or_harmless(
    store: tuple[str, T.Seeds, dict[str, bytes], dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, s, pristine, ignored = store
    assert len(pristine[SEGMENT]) == T.SEGMENT_SIZE
    plan: list[tuple[str, int, int]] = []
    for rel in sorted(pristine):
        if rel.endswith(".log") and rel != SEGMENT:
            continue  # the second segment: the same format, flipped in the long tier of the fuzz tests
        step = STEP_SEGMENT if rel == SEGMENT else STEP_RUNS if rel.endswith(".runs") else STEP_SMALL
        plan += [(rel, pos, bit) for pos, bit in flip_positions(len(pristine[rel]), step)]
        if rel in ignored and step > 1:  # make sure the sample reaches the ignored region
            plan += [(rel, pos, pos % 8) for pos in range(ignored[rel], len(pristine[rel]), 3)]
    tally = {"detected": 0, "harmless": 0}
    by_file: dict[str, dict[str, int]] = {}
    for i, (rel, pos, bit) in enumerate(plan):
        verdict = flip_and_check(directory, s, rel, pos, bit, pristine, ignored, read=i % READ_EVERY == 0)
        tally[verdict] += 1
        counts = by_file.setdefault(rel, {"detected": 0, "harmless": 0})
        counts[verdict] += 1
    for rel, data in pristine.items():  # every byte was put back, and the read-only opens wrote nothing
        assert Path(directory, rel).read_bytes() == data, rel
    assert verify(directory, live=False).ok
    with capsys.disabled():
        print(f"\nbit flips: {len(plan)}, detected: {tally['detected']}, harmless: {tally['harmless']}, undetected: 0")
        for rel, counts in sorted(by_file.items()):
            print(f"  {rel}: {counts['detected']} detected, {counts['harmless']} harmless")
    # Harmless only where the format says bytes are ignored, and there some flips were tried.
    assert tally["harmless"] == sum(1 for rel, pos, _bit in plan if rel in ignored and pos >= ignored[rel])
    assert tally["harmless"] > 0


def test_a_flip_that_changes_nothing_verify_checks_would_be_reported_undetected(
    store: tuple[str, T.Seeds, dict[str, bytes], dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classifier is able to fail: with a verify that finds nothing and reads that see nothing, a flip
    outside the ignored regions is an undetected flip."""
    directory, s, pristine, ignored = store
    monkeypatch.setitem(globals(), "verify", lambda path, live=None: VerifyResult(path))
    # A flip in the catalog: the open rebuilds the indexes from the log, so reads stay whole and equal.
    catalog = next(rel for rel in pristine if rel.startswith("catalog."))
    with pytest.raises(AssertionError, match="undetected"):
        flip_and_check(directory, s, catalog, 100, 0, pristine, ignored)
    assert Path(directory, catalog).read_bytes() == pristine[catalog]
