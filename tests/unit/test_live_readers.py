"""Read-only opens and the read-only tools beside a busy writer process: no false alarm, ever.

A writer subprocess commits continuously (one to four records per stream,
one to three streams per transaction, payloads from empty to larger than a
third of a segment) into 64 KiB segments, so it rolls, checkpoints, applies
retention and now and then truncates, deletes and compacts. Meanwhile this
process opens the store read-only again and again, reads a slice of the
global stream and one stream each time and checks every envelope (each
payload names its stream and offset and is padded with a byte derived from
the offset), and runs ``stats``, ``dump --json`` and ``verify`` in process.
The writer's in-flight tail and its file replacements must never show as
damage: no exception, no error output, no WARNING from the ``logstore``
logger and no ``lost+found/``. ``LOGSTORE_STRESS=1`` runs it far longer.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

import logstore
import logstore.embedded.recovery
import logstore.embedded.segment
import logstore.embedded.verify
import logstore.embedded.walk
from logstore import Envelope
from logstore.embedded import layout
from logstore.embedded.fileio import FileIO
from logstore.embedded.inspect import iter_records
from logstore.embedded.record import Record
from logstore.embedded.walk import last_nonzero
from logstore.index.header import HEADER_SIZE
from logstore.tools.cli import main
from tests.helpers import SMALL_SEGMENT, segment_records
from tests.stress import SEED, scale

ROOT = Path(__file__).resolve().parents[2]

WRITER = r"""
import random, select, sys, time
import logstore
from logstore import Envelope

path, durability, seed, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
store = logstore.open(
    path, durability=durability, segment_size=64 * 1024, checkpoint_bytes=16 * 1024, retention_bytes=384 * 1024
)
names = [f"s{k}" for k in range(24)]

def env(stream, offset, k, of):
    n = rng.choice((0, 10, 100, 700, 3000)) if rng.random() > 0.01 else 24000
    m = {"s": stream, "o": offset, "k": k, "of": of, "n": n, "pad": bytes([offset % 251]) * n}
    return Envelope.new("T", m)

commits = removals = compactions = 0
stop_at = time.monotonic() + limit
ready = False
while time.monotonic() < stop_at:
    r = rng.random()
    stream = rng.choice(names)
    info = store.stream_info(stream)
    if r < 0.01 and info is not None and info.head > info.first:
        store.truncate_stream(stream, rng.randint(info.first, info.head))
        removals += 1
    elif r < 0.013 and info is not None and not info.deleted:
        store.delete_stream(stream)
        removals += 1
    elif r < 0.016:
        store.compact()
        compactions += 1
    else:
        plan = [(s, rng.choice((1, 1, 2, 4))) for s in rng.sample(names, rng.choice((1, 1, 1, 2, 3)))]
        of = sum(n for _s, n in plan)
        k = 0
        with store.transaction() as tx:
            for s, n in plan:
                head = store.head(s)
                store.append_messages(tx, s, head, [env(s, head + j, k + j, of) for j in range(n)])
                k += n
        commits += 1
    if not ready and commits >= 50:
        print("ready", flush=True)
        ready = True
    if commits % 8 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break  # the test closed our stdin: stop
store.close()
print(f"done {commits} {removals} {compactions}", flush=True)
"""


class _Warnings(logging.Handler):
    """Collects what the ``logstore`` logger says at WARNING or above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def _check_envelope(env: logstore.Envelope, where: str) -> tuple[str, int]:
    m = env.message
    assert env.type == "T", f"{where}: type {env.type!r}"
    assert isinstance(m, dict), f"{where}: message {m!r}"
    assert m["pad"] == bytes([m["o"] % 251]) * m["n"], f"{where}: padding of {m['s']}@{m['o']} is wrong"
    return m["s"], m["o"]


def _read_once(path: Path, rng: random.Random) -> int:
    """One read-only open with a global and a stream read; returns the envelopes checked."""
    checked = 0
    with logstore.open(path, readonly=True) as store:
        report = store.recovery_report
        assert report.cut is None and not report.lost_found and report.bytes_cut == 0, report.summary()
        # The last record the open sees ends a transaction: a partial one is never visible.
        tail = list(iter_records(store, max(store.log_start, store.global_head - 1)))
        if tail and tail[-1].envelope is not None:
            m = tail[-1].envelope.message
            assert m["k"] == m["of"] - 1, f"global offset {tail[-1].goff}: record {m['k']} of {m['of']}"
        start = rng.randint(store.log_start, max(store.log_start, store.global_head - 1))
        last: dict[str, int] = {}
        with store.open_global(store, start) as g:
            for _ in range(rng.choice((20, 200))):
                if not g.try_next():
                    break
                stream, offset = _check_envelope(g.get(), f"global offset {g.offset()}")
                assert offset > last.get(stream, -1), f"{stream}@{offset} after @{last[stream]}"
                last[stream] = offset
                checked += 1
        names = store.stream_names()
        if names:
            name = rng.choice(names)
            info = store.stream_info(name)
            assert info is not None
            with store.open_stream(store, name, info.first)[0] as s:
                for _ in range(50):
                    if not s.try_next():
                        break
                    stream, offset = _check_envelope(s.get(), f"{name}@{s.offset()}")
                    assert (stream, offset) == (name, s.offset())
                    checked += 1
    return checked


def _tool(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _run_tools(path: Path, n: int) -> None:
    kind = ("stats", "dump", "verify")[n % 3]
    if kind == "stats":
        code, out, err = _tool(["stats", "--json", str(path)])
        assert (code, err) == (0, ""), err
        stats = json.loads(out)
        assert stats["recovery"]["cut"] is None and stats["recovery"]["lost_found"] == []
    elif kind == "dump":
        code, out, err = _tool(["dump", "--json", str(path)])
        assert (code, err) == (0, ""), err
        for line in out.splitlines():
            obj = json.loads(line)
            m = obj["message"]
            assert (m["s"], m["o"]) == (obj["stream"], obj["offset"]), line[:200]
    else:
        code, out, err = _tool(["verify", "--json", str(path)])
        result = json.loads(out)
        assert (code, err, result["problems"]) == (0, "", []), out


def _campaign(path: Path, durability: str, opens: int, tool_runs: int, seconds: float) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), durability, str(SEED), str(seconds + 60)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    watch = _Warnings()
    logger = logging.getLogger("logstore")
    logger.addHandler(watch)
    errors: list[str] = []
    kinds: set[str] = set()
    done = tools = checked = 0
    rng = random.Random(SEED)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline() == "ready\n", "the writer did not start"
        deadline = time.monotonic() + seconds
        tool_every = max(1, opens // max(1, tool_runs))
        while done < opens and time.monotonic() < deadline and len(errors) < 20:
            try:
                checked += _read_once(path, rng)
                if done % tool_every == 0:
                    _run_tools(path, tools)
                    tools += 1
            except Exception as exc:  # noqa: BLE001 - every failure is collected and reported below
                errors.append(traceback.format_exc())
                kinds.add(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
            done += 1
    finally:
        logger.removeHandler(watch)
        out, err = proc.communicate("", timeout=120)  # closing its stdin stops the writer
    assert proc.returncode == 0, err
    assert err == "", err
    commits = int(out.split()[1])
    assert not errors, f"{len(errors)} failures in {done} opens: {sorted(kinds)}; the first:\n{errors[0]}"
    assert not watch.records, f"{len(watch.records)} warnings, the first: {watch.records[0]}"
    assert not (path / "lost+found").exists(), "a read-only open wrote lost+found"
    assert done >= min(opens, 100), f"only {done} opens in {seconds} s"
    assert tools >= min(tool_runs, 10) and checked > 0 and commits > 0


@pytest.mark.parametrize("durability", ["fsync", "batch"])
def test_readonly_opens_and_tools_beside_a_busy_writer(store_dir: Path, durability: str) -> None:
    _campaign(
        store_dir,
        durability,
        opens=scale(1500, 50000),
        tool_runs=scale(45, 1500),
        seconds=scale(40, 900),
    )


# -- the cases one by one ----------------------------------------------------------------------------
#
# Each writes three transactions of two records to stream "a" with durability="fsync" (so the first
# record of each transaction is SYNCED) and drops the store as a crash would: no checkpoint covers
# them, and every open scans them.

SEG0 = "segments/00000000000000000000.log"


def _crashed_store(path: Path) -> list[Record]:
    """The store of three two-record transactions, dropped without a checkpoint; returns its records."""
    store = logstore.open(path, segment_size=SMALL_SEGMENT)
    for t in range(3):
        with store.transaction() as tx:
            store.append_messages(tx, "a", 2 * t, [Envelope.new("E", 2 * t), Envelope.new("E", 2 * t + 1)])
    store._abandon()
    return [rec for _, rec in segment_records((path / SEG0).read_bytes())]


def _zero(path: Path, start: int, end: int) -> bytes:
    """Zero bytes ``start`` .. ``end - 1`` of segment 0 (not written yet, or torn); returns what was there."""
    fd = os.open(path / SEG0, os.O_RDWR)
    try:
        old = os.pread(fd, end - start, start)
        os.pwrite(fd, bytes(end - start), start)
    finally:
        os.close(fd)
    return old


def _write_back(path: Path, start: int, data: bytes) -> None:
    """What the writer process does meanwhile: write ``data`` at ``start`` of segment 0."""
    fd = os.open(path / SEG0, os.O_WRONLY)
    try:
        os.pwrite(fd, data, start)
    finally:
        os.close(fd)


def _offsets(store: logstore.Store) -> list[int]:
    with store.open_global(store, 0) as g:
        out = []
        while g.try_next():
            out.append(g.get().message)
        return out


@pytest.mark.parametrize("tail", ["a torn record", "a transaction without its end"])
def test_read_only_open_serves_the_whole_transactions_before_a_torn_tail_and_cuts_nothing(
    store_dir: Path, tail: str, caplog: pytest.LogCaptureFixture
) -> None:
    recs = _crashed_store(store_dir)
    last = recs[-1]
    end = last.position + last.length
    # The crashed writer got only half of its last record out, or none of it.
    torn_from = last.position + last.length // 2 if tail == "a torn record" else last.position
    _zero(store_dir, torn_from, end)
    good = recs[3].position + recs[3].length  # the end of the second transaction
    with caplog.at_level(logging.INFO, logger="logstore"), logstore.open(store_dir, readonly=True) as ro:
        report = ro.recovery_report
        assert _offsets(ro) == [0, 1, 2, 3] and ro.global_head == 4
        assert report.cut is None and report.bytes_cut == 0 and report.lost_found == [] and report.clean
        assert report.tail == f"{store_dir / SEG0}@{good}"
        assert report.tail_bytes == torn_from - good
        what = "record checksum mismatch" if tail == "a torn record" else "transaction without its end record"
        assert report.tail_reason is not None and what in report.tail_reason
        assert "the next writable open cuts" in report.summary() and "lost+found" not in report.summary()
    assert [r.levelname for r in caplog.records if "read-only open reads up to" in r.getMessage()] == ["INFO"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not (store_dir / "lost+found").exists()
    assert main(["stats", "--json", str(store_dir)]) == 0  # the tools say the same, and exit 0
    assert main(["dump", "--json", str(store_dir)]) == 0
    # The next writable open cuts the tail, saving it in lost+found.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as w:
        assert w.recovery_report.cut == f"{store_dir / SEG0}@{good}"
        assert w.recovery_report.tail is None and w.global_head == 4
    assert (store_dir / "lost+found").is_dir()


def test_read_only_open_still_refuses_damage_before_the_tail(store_dir: Path) -> None:
    recs = _crashed_store(store_dir)
    bad = recs[2]  # a whole record of the second transaction, followed by the SYNCED third
    data = bytearray(_zero(store_dir, bad.position, bad.position + bad.length))
    data[-12] ^= 0xFF
    _write_back(store_dir, bad.position, bytes(data))
    with pytest.raises(logstore.CorruptionError) as caught:
        logstore.open(store_dir, readonly=True)
    assert caught.value.path == str(store_dir / SEG0) and caught.value.position == bad.position
    assert "record checksum mismatch" in str(caught.value)
    assert not (store_dir / "lost+found").exists()
    (store_dir / "segments").rename(store_dir / "damaged")  # not a store the fixture must find clean


def test_a_record_the_writer_completes_while_the_scan_looks_past_it_is_read(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan found no record where the second transaction starts (not written yet), then looked
    # for non-zero bytes after it: by then the writer had written it and the SYNCED third
    # transaction. That read as "non-zero bytes after the last record" followed by durable data: a
    # false CorruptionError on a healthy, live store.
    recs = _crashed_store(store_dir)
    start, end = recs[2].position, recs[-1].position + recs[-1].length
    later = bytearray(_zero(store_dir, start, end))
    real = logstore.embedded.walk.last_nonzero_in_file

    def writer_meanwhile(buf: object, fd: int, lo: int, hi: int) -> int:
        if later:
            _write_back(store_dir, start, bytes(later))
            later.clear()
        return real(buf, fd, lo, hi)

    monkeypatch.setattr(logstore.embedded.walk, "last_nonzero_in_file", writer_meanwhile)
    with logstore.open(store_dir, readonly=True) as ro:
        assert not later, "the scan did not look past the last record"
        assert _offsets(ro) == [0, 1, 2, 3, 4, 5]
        assert ro.recovery_report.tail is None and ro.recovery_report.cut is None


def test_a_transaction_the_writer_completes_before_the_scan_looks_for_synced_data_is_read(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan read the first record of the second transaction and stopped (its end not written
    # yet); looking whether durable data followed, it found the writer's next, SYNCED transaction:
    # "transaction without its end record; data after it was durable", a false alarm.
    recs = _crashed_store(store_dir)
    start, end = recs[3].position, recs[-1].position + recs[-1].length
    later = bytearray(_zero(store_dir, start, end))
    real = logstore.embedded.recovery.find_next_record_in_file

    def writer_meanwhile(buf: object, fd: int, lo: int, hi: int) -> int:
        if later:
            _write_back(store_dir, start, bytes(later))
            later.clear()
        return real(buf, fd, lo, hi)

    monkeypatch.setattr(logstore.embedded.recovery, "find_next_record_in_file", writer_meanwhile)
    with logstore.open(store_dir, readonly=True) as ro:
        assert not later, "the scan did not look for durable data"
        assert _offsets(ro) == [0, 1, 2, 3, 4, 5]
        assert ro.recovery_report.tail is None and ro.recovery_report.cut is None


def test_last_nonzero_answers_when_the_bytes_change_during_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    # numpy's flatnonzero counts, then collects, and raises RuntimeError when a live writer changed
    # the count in between; the search then looks at a copy.
    buf = bytearray(4096)
    buf[1000] = 7
    real = np.flatnonzero
    raised = []

    def changing(arr: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        if not arr.flags.owndata and not raised:  # the search on the mapping itself
            raised.append(True)
            raise RuntimeError("number of non-zero array elements changed during function execution")
        return real(arr)

    monkeypatch.setattr(logstore.embedded.walk.np, "flatnonzero", changing)
    assert last_nonzero(memoryview(buf), 0, len(buf)) == 1001
    assert raised


def _checkpoint(w: logstore.Store) -> None:
    w._writer.call(lambda: w._log.checkpoint(clean=False))


class _Hook(FileIO):
    """A file layer that runs ``action`` (the writer process at work) before the first matching call."""

    def __init__(self, method: str, suffix: str, action: object) -> None:
        super().__init__()
        self.method, self.suffix, self.action = method, suffix, action
        self.fired = 0

    def _maybe(self, method: str, path: str) -> None:
        if method == self.method and path.endswith(self.suffix) and not self.fired:
            self.fired += 1
            self.action()  # type: ignore[operator]

    def read_file(self, path: str) -> bytes:
        self._maybe("read_file", os.path.basename(path)[:8])
        return super().read_file(path)

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        self._maybe("open", path)
        return super().open(path, flags, mode)


def test_read_only_open_loads_again_when_the_writer_checkpoints_under_it(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The open read CHECKPOINT generation g; before it read catalog.g, the writer checkpointed and
    # removed catalog.g. That read as unusable index files: a WARNING and all indexes rebuilt.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as w:
        with w.transaction() as tx:
            w.append_messages(tx, "a", 0, [Envelope.new("E", 0)])
        # The open maps the catalog (it opens the file rather than reading it whole).
        io = _Hook("open", layout.catalog_name(w._log.generation), lambda: _checkpoint(w))
        with caplog.at_level(logging.INFO, logger="logstore"), logstore.open(store_dir, readonly=True, io=io) as ro:
            assert io.fired
            assert ro.recovery_report.rebuilt == [] and _offsets(ro) == [0]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_read_only_open_loads_again_when_retention_drops_a_segment_it_is_opening(store_dir: Path) -> None:
    # The open listed segments/, then retention dropped the first segment before the open opened
    # it: a raw FileNotFoundError.
    w = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    try:
        for i in range(600):
            with w.transaction() as tx:
                w.append_messages(tx, "a", i, [Envelope.new("E", {"pad": "x" * 200})])
        io = _Hook("open", SEG0[-24:], lambda: w.compact(retention_bytes=70000))
        with logstore.open(store_dir, readonly=True, io=io) as ro:
            assert io.fired and w.log_start > 0
            assert ro.log_start == w.log_start and ro.global_head == w.global_head
    finally:
        w.close()


def test_index_files_that_stay_unusable_are_rebuilt_and_said_at_warning(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as w, w.transaction() as tx:
        w.append_messages(tx, "a", 0, [Envelope.new("E", 0)])
    for p in store_dir.glob("catalog.*"):
        p.unlink()
    with logstore.open(store_dir, readonly=True) as ro:
        assert ro.recovery_report.rebuilt == ["all indexes"] and _offsets(ro) == [0]
    assert any("index files unusable" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    logstore.open(store_dir).close()  # the writable open rebuilds the files


class _PositionFileMidCheckpoint(FileIO):
    """The first read of one position file finds it rewritten (a compaction's checkpoint between writing
    the position file and renaming CHECKPOINT); later reads find it as the checkpoint says."""

    def __init__(self, suffix: str) -> None:
        super().__init__()
        self.suffix = suffix
        self.changed = 0

    def read_file(self, path: str) -> bytes:
        data = super().read_file(path)
        if path.endswith(self.suffix) and not self.changed:
            self.changed += 1
            raw = bytearray(data)
            raw[HEADER_SIZE] ^= 0x01  # the first position differs
            return bytes(raw)
        return data


def test_verify_on_a_live_store_looks_again_before_reporting_an_index_problem(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as w:
        for i in range(400):  # a few sealed segments with position files
            with w.transaction() as tx:
                w.append_messages(tx, "a", i, [Envelope.new("E", {"pad": "x" * 200})])
    io = _PositionFileMidCheckpoint("00000000000000000000.pos")
    result = logstore.embedded.verify.verify(str(store_dir), io=io, live=True)
    assert io.changed == 1 and result.ok, result.problems
    # A problem that every look finds is still reported, on a live store too.
    pos = store_dir / "segments" / "00000000000000000000.pos"
    raw = bytearray(pos.read_bytes())
    raw[HEADER_SIZE] ^= 0x01
    pos.write_bytes(bytes(raw))
    result = logstore.embedded.verify.verify(str(store_dir), live=True)
    assert [(p.path, p.position) for p in result.problems] == [(str(pos), HEADER_SIZE)]
    pos.unlink()  # a position file is derived data: the next writable open writes it again
    logstore.open(store_dir).close()
