"""`logstore verify DIR`: exit 0 clean, 1 problems (with file and byte position), 2 usage or I/O error."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import xxhash

import logstore
from logstore import Envelope
from logstore.embedded.record import FLAG_NAMED, KIND_LOST, KIND_MESSAGE, KIND_REMOVED, Record, frame
from logstore.embedded.verify import verify
from logstore.envelope import encode
from logstore.index.header import HEADER_SIZE
from logstore.tools.cli import main
from tests.helpers import assert_not_stores_told_apart, fill_interleaved, segment_records
from tests.terminal import on_a_terminal


def _store(path: Path, transactions: int = 5) -> None:
    with logstore.open(path, segment_size=64 * 1024) as store:
        for i in range(transactions):
            with store.transaction() as tx:
                store.append_messages(tx, "a", 2 * i, [Envelope.new("E", i), Envelope.new("E", -i)])
                store.append_messages(tx, f"b{i}", 0, [Envelope.new("F", {"i": i})])


def test_clean_store_exits_0_and_reports_counts(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(store_dir)
    assert main(["verify", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "15 records" in out and "5 transactions" in out and "6 streams" in out


def test_json_output(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(store_dir)
    assert main(["verify", "--json", str(store_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert (report["records"], report["transactions"], report["streams"]) == (15, 5, 6)
    assert report["problems"] == []


def test_damage_exits_1_naming_file_and_position(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(store_dir)
    seg = store_dir / "segments" / "00000000000000000000.log"
    data = bytearray(seg.read_bytes())
    data[64 + 40] ^= 0xFF  # inside the first record
    seg.write_bytes(bytes(data))
    assert main(["verify", "--json", str(store_dir)]) == 1
    report = json.loads(capsys.readouterr().out)
    first = report["problems"][0]
    assert first["file"] == str(seg)
    assert first["position"] == 64
    assert "checksum" in first["what"]
    data[64 + 40] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert main(["verify", str(store_dir)]) == 0


def test_index_that_disagrees_with_the_log_is_a_problem(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(store_dir)
    catalog = next(store_dir.glob("catalog.*"))
    original = catalog.read_bytes()
    catalog.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert main(["verify", str(store_dir)]) == 1
    assert str(catalog) in capsys.readouterr().out
    catalog.write_bytes(original)


@pytest.mark.parametrize("argv", [[], ["verify"], ["verify", "a", "b"], ["nosuchcommand"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert main(argv) == 2


def test_not_a_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_not_stores_told_apart("verify", tmp_path, lambda: capsys.readouterr().err)


def test_live_store_is_safe_to_verify(store_dir: Path) -> None:
    _store(store_dir)
    with logstore.open(store_dir) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 10, [Envelope.new("E", 99)])
        before = sorted((p.name, p.stat().st_size) for p in (store_dir / "segments").iterdir())
        result = subprocess.run(
            [sys.executable, "-m", "logstore", "verify", "--json", str(store_dir)],
            check=False,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["live"] is True
        assert report["records"] == 16
        assert sorted((p.name, p.stat().st_size) for p in (store_dir / "segments").iterdir()) == before


# -- the record kinds and catalog fields of truncation, deletion, compaction and retention --------------------------

MID = "11111111-1111-4111-8111-111111111111"
WHEN = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _fill(store: logstore.Store, streams: dict[str, int], pad: int = 300) -> None:
    fill_interleaved(store, streams, pad)


def _json(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["verify", "--json", str(path)])
    return code, json.loads(capsys.readouterr().out)


def _refix(path: Path, data: bytearray) -> None:
    """Write a catalog or CHECKPOINT file after an edit, with its body and header checksums made right again."""
    struct.pack_into("<Q", data, 48, xxhash.xxh3_64_intdigest(bytes(data[HEADER_SIZE:])))
    struct.pack_into("<Q", data, 56, xxhash.xxh3_64_intdigest(bytes(data[:56])))
    path.write_bytes(bytes(data))


def _catalog_field(data: bytes, column: str, sid: int) -> int:
    """Byte position of a u64 per-stream column of a catalog file (docs/FORMAT.md, section 9)."""
    s, _r, _k, n = struct.unpack_from("<QQQQ", data, HEADER_SIZE)
    h = HEADER_SIZE + 32 + n
    h += -h % 8
    return h + {"head": 0, "first": 8, "run_diff": 16, "ctrl": 24}[column] * s + 8 * sid


def _records_of(seg: Path) -> list[Record]:
    return [rec for _, rec in segment_records(seg.read_bytes())]


def test_truncated_deleted_and_compacted_store_is_clean(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store:
        _fill(store, {"a": 120, "b": 120, "c": 10}, pad=500)
        store.truncate_stream("a", 100)
        store.delete_stream("b")
        _fill(store, {"b": 3})  # an append ends the deletion
        store.truncate_stream("c", 4)
        report = store.compact()
        assert report.segments_rewritten >= 2 and report.messages_removed > 0
    code, out = _json(store_dir, capsys)
    assert code == 0, out["problems"]
    assert (out["control"], out["removed"], out["lost"], out["log_start"]) == (3, report.messages_removed, 0, 0)
    assert out["messages"] == 20 + 3 + 6
    assert out["records"] == 120 + 123 + 10 + 3
    # Compacted segments are exactly as large as their records, with no zero tail.
    compacted = Path(report.rewritten[0])
    header = compacted.read_bytes()[:HEADER_SIZE]
    assert struct.unpack_from("<Q", header, 40)[0] == compacted.stat().st_size < 64 * 1024
    # The indexes rebuilt from the log alone verify clean too.
    (store_dir / "CHECKPOINT").unlink()
    logstore.open(store_dir).close()
    code, again = _json(store_dir, capsys)
    assert code == 0, again["problems"]
    assert again["messages"] == out["messages"]


def test_deleted_stream_and_later_append_are_clean(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store:
        _fill(store, {"a": 5, "b": 2})
        store.delete_stream("a")
        store.truncate_stream("b", 1)
    result = verify(str(store_dir))
    assert result.ok, result.problems
    assert (result.messages, result.control) == (1, 2)
    with logstore.open(store_dir) as store:
        _fill(store, {"a": 2})
        assert store.stream_info("a") == (5, 7, False)
    result = verify(str(store_dir))
    assert result.ok, result.problems
    assert result.messages == 3


def test_retained_store_is_clean(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with logstore.open(store_dir, segment_size=64 * 1024) as store:
        _fill(store, {"idle": 1, "gone": 2})
        store.delete_stream("gone")
    with logstore.open(store_dir, segment_size=64 * 1024, retention_bytes=2 * 64 * 1024) as store:
        for _ in range(6):
            _fill(store, {"a": 30, "b": 30}, pad=400)
        start = store.log_start
        assert store.stream_info("gone") == (2, 2, True)
    assert start > 0
    assert not (store_dir / "segments" / "00000000000000000000.log").exists()
    code, out = _json(store_dir, capsys)
    assert code == 0, out["problems"]
    assert out["log_start"] == start
    assert out["control"] >= 3  # a RETAIN record, and "idle" and "gone" carried past the log start
    # Rebuilt from the shortened log alone (streams then appear out of id order), it verifies clean too.
    (store_dir / "CHECKPOINT").unlink()
    with logstore.open(store_dir) as store:
        assert store.log_start == start
        assert store.stream_info("gone") == (2, 2, True)
    code, again = _json(store_dir, capsys)
    assert code == 0, again["problems"]
    assert (again["log_start"], again["messages"]) == (start, out["messages"])


def test_segment_left_below_the_checkpoint_is_a_problem_until_the_next_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=64 * 1024) as store:
        _fill(store, {"a": 400}, pad=400)
    seg0 = path / "segments" / "00000000000000000000.log"
    saved = seg0.read_bytes()
    with logstore.open(path, retention_bytes=2 * 64 * 1024) as store:
        _fill(store, {"a": 1})  # retention runs in the writer
    assert not seg0.exists()
    seg0.write_bytes(saved)  # as if the drop stopped before its unlink
    code, out = _json(path, capsys)
    assert code == 1
    assert [(p["file"], p["position"]) for p in out["problems"]] == [(str(seg0), 0)]
    assert "next writable open removes" in out["problems"][0]["what"]
    logstore.open(path).close()
    assert not seg0.exists()
    assert _json(path, capsys)[0] == 0


@pytest.mark.parametrize(
    ("kind", "soff", "problem"),
    [(KIND_REMOVED, 3, False), (KIND_REMOVED, 7, True), (KIND_LOST, 7, False)],
    ids=["removed-below-first", "removed-above-first", "lost"],
)
def test_removed_and_lost_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: int, soff: int, problem: bool
) -> None:
    # A stream name as long as the envelope: a NAMED record without payload is as long as an unnamed message,
    # so that a message can be replaced in place without moving anything else.
    env = Envelope(MID, MID, MID, WHEN, WHEN, "E", {"k": 1})
    name = "r" * len(encode(env, "test"))
    path = tmp_path / "store"
    with logstore.open(path, segment_size=64 * 1024) as store:
        for i in range(10):
            mid = f"{MID[:24]}{i:012d}"  # an id of its own, of the same length: one envelope size
            with store.transaction() as tx:
                store.append_messages(tx, name, i, [env._replace(message_id=mid)])
        store.truncate_stream(name, 5)
    seg = path / "segments" / "00000000000000000000.log"
    rec = next(r for r in _records_of(seg) if r.soff == soff and r.kind == KIND_MESSAGE)
    new = frame(rec.sid, rec.soff, rec.goff, rec.flags | FLAG_NAMED, name.encode(), b"", kind)
    assert rec.name is None and len(new) == rec.length
    data = bytearray(seg.read_bytes())
    data[rec.position : rec.position + rec.length] = new
    seg.write_bytes(bytes(data))
    code, out = _json(path, capsys)
    if problem:
        assert code == 1
        assert [(p["file"], p["position"]) for p in out["problems"]] == [(str(seg), rec.position)]
        assert "not below the stream's first retained offset 5" in out["problems"][0]["what"]
    else:
        assert code == 0, out["problems"]
        assert (out["removed"], out["lost"]) == ((1, 0) if kind == KIND_REMOVED else (0, 1))
        assert out["messages"] == 5 - (soff >= 5)


@pytest.mark.parametrize(
    ("column", "value", "what"),
    [
        ("first", 4, "first retained offset 4, log says 5"),
        ("first", 0, "first retained offset 0, log says 5"),
        ("ctrl", 0, "last control record none, the log says global offset 12"),
        ("head", 9, "head 9, the log says 10"),
    ],
)
def test_catalog_field_that_disagrees_with_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: int, what: str
) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=64 * 1024) as store:
        _fill(store, {"a": 10, "b": 2}, pad=10)
        store.truncate_stream("a", 5)  # global offset 12
    (catalog,) = path.glob("catalog.*")
    data = bytearray(catalog.read_bytes())
    at = _catalog_field(data, column, 0)
    struct.pack_into("<Q", data, at, value)
    _refix(catalog, data)
    code, out = _json(path, capsys)
    assert code == 1
    assert [(p["file"], p["position"]) for p in out["problems"]] == [(str(catalog), at)]
    assert what in out["problems"][0]["what"]


def test_checkpoint_log_start_that_disagrees_with_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=64 * 1024) as store:
        _fill(store, {"a": 3}, pad=10)
    ckpt = path / "CHECKPOINT"
    data = bytearray(ckpt.read_bytes())
    struct.pack_into("<Q", data, HEADER_SIZE + 8, 1)
    _refix(ckpt, data)
    code, out = _json(path, capsys)
    assert code == 1
    assert [(p["file"], p["position"]) for p in out["problems"]] == [(str(ckpt), HEADER_SIZE + 8)]


@pytest.mark.parametrize(
    "stray", ["streams/notes.txt", "streams/12.runs", "segments/notes.txt", "segments/0.log.repair", "junk"]
)
def test_stray_file_is_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str], stray: str) -> None:
    path = tmp_path / "store"
    _store(path)
    (path / stray).write_text("not part of a store")
    code, out = _json(path, capsys)
    assert code == 1
    assert [(p["file"], p["position"]) for p in out["problems"]] == [(str(path / stray), 0)]
    assert "stray" in out["problems"][0]["what"]


def test_compaction_leftover_is_a_problem_without_a_writer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    _store(path)
    seg = path / "segments" / "00000000000000000000.log"
    leftover = path / "segments" / "00000000000000000000.log.compact"
    with logstore.open(path):
        leftover.write_bytes(seg.read_bytes()[:HEADER_SIZE])
        code, out = _json(path, capsys)  # a writer is active: a compaction in flight
        assert code == 0 and out["live"] is True
        assert any(str(leftover) in n for n in out["notes"])
    leftover.write_bytes(seg.read_bytes()[:HEADER_SIZE])  # the open above removed it; the close left none
    code, out = _json(path, capsys)
    assert code == 1
    assert [(p["file"], p["position"]) for p in out["problems"]] == [(str(leftover), 0)]
    assert "interrupted compaction" in out["problems"][0]["what"]


def test_live_false_reports_what_a_live_writer_would_excuse(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _store(path)
    leftover = path / "segments" / "00000000000000000000.log.compact"
    with logstore.open(path):
        leftover.write_bytes(b"partial copy")
        assert verify(str(path)).ok
        found = verify(str(path), live=False).problems
        assert [(p.path, p.position) for p in found] == [(str(leftover), 0)]


# -- regressions: index rebuilds from a log that retention shortened or compaction rewrote ----------------------


def _segments(path: Path) -> int:
    return len(list((path / "segments").glob("*.log")))


def _append(store: logstore.Store, name: str, n: int = 1) -> None:
    for _ in range(n):
        with store.transaction() as tx:
            store.append_messages(tx, name, store.head(name), [Envelope.new("E", {"pad": "x" * 400})])


def _truncated_then_dropped(path: Path, append_after: bool) -> None:
    """Stream "x": 0..9 in segment 0, truncate(x, 5) in segment 1, (x 10 in segment 2); retention drops segment 0."""
    with logstore.open(path, segment_size=64 * 1024) as store:
        _append(store, "x", 10)
        while _segments(path) < 2:
            _append(store, "y")
        store.truncate_stream("x", 5)
        while _segments(path) < 3:
            _append(store, "y")
        if append_after:
            _append(store, "x")
    with logstore.open(path, retention_bytes=100 * 1024) as store:
        _append(store, "y")
    assert not (path / "segments" / "00000000000000000000.log").exists()
    assert verify(str(path)).ok
    (path / "CHECKPOINT").unlink()


def test_engine_rebuilds_a_shortened_log_whose_stream_starts_with_a_truncation(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _truncated_then_dropped(path, append_after=True)
    with logstore.open(path) as store:  # raised CorruptionError "stream id 0 offset 10, expected 5"
        # Retention dropped offsets 5..9 with segment 0: the first readable offset is 10.
        assert store.stream_info("x") == (10, 11, False)


def test_engine_keeps_the_head_of_a_stream_truncated_below_it_after_a_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _truncated_then_dropped(path, append_after=False)
    with logstore.open(path) as store:
        assert store.head("x") == 10  # the rebuild said 5, and appends would have reused offsets


def test_engine_rebuild_keeps_the_deleted_flag_after_compaction(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with logstore.open(path, segment_size=64 * 1024) as store:
        _append(store, "x")
        store.delete_stream("x")
        _append(store, "x")  # ends the deletion
        store.truncate_stream("x", 2)
        while _segments(path) < 2:
            _append(store, "y")
        assert store.compact().messages_removed == 2
        assert store.stream_info("x") == (2, 2, False)
    assert verify(str(path)).ok
    (path / "CHECKPOINT").unlink()
    with logstore.open(path) as store:
        assert store.stream_info("x") == (2, 2, False)  # the rebuild says deleted


def test_counts_have_thousands_separators_in_text_and_plain_ints_in_json(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _store(store_dir, transactions=400)
    assert main(["verify", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "1,200 records (1,200 readable messages," in out and "400 transactions, 401 streams" in out
    assert main(["verify", "--json", str(store_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["records"], report["messages"], report["streams"]) == (1200, 1200, 401)


def test_progress_bar_on_a_terminal_only(store_dir: Path) -> None:
    _store(store_dir, transactions=1500)
    code, screen, _err = on_a_terminal(["verify", str(store_dir)])
    assert code == 0 and ": clean: " in screen and "4,500 records" in screen
    assert "verifying:" in screen and "/4.50k" in screen  # the bar, with the checkpoint's count as its total
    # Not for --json, and not when stderr is not a terminal (a log file, a pipe).
    code, screen, _err = on_a_terminal(["verify", "--json", str(store_dir)])
    assert code == 0 and json.loads(screen)["records"] == 4500 and "verifying" not in screen
    code, screen, err = on_a_terminal(["verify", str(store_dir)], stderr_too=False)
    assert code == 0 and "verifying" not in screen + err and err == ""
    # Nor when stdout is captured (every other test here).
    done = subprocess.run(
        [sys.executable, "-m", "logstore", "verify", str(store_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == ""
