"""`logstore compact DIR`: reclaims removed messages, exit 0, beside writers too; a store repair holds, a foreign or
unknown-version store: exit 2."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.tools.cli import main
from tests.helpers import (
    SMALL_SEGMENT,
    assert_not_stores_told_apart,
    assert_verified,
    store_files,
    with_format_version,
)


def _store(path: Path) -> None:
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for i in range(300):
            with store.transaction() as tx:
                store.append_messages(tx, "a", i, [Envelope.new("E", {"i": i, "pad": "x" * 300})])
                store.append_messages(tx, f"b{i}", 0, [Envelope.new("F", i)])
        store.truncate_stream("a", 250)


def test_compact_reports_bytes_reclaimed(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(store_dir)
    assert main(["compact", "--json", str(store_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["segments_rewritten"] >= 2 and report["bytes_reclaimed"] > 0
    assert report["bytes_before"] - report["bytes_after"] == report["bytes_reclaimed"]
    with logstore.open(store_dir, readonly=True) as store:
        stream, _ = store.open_stream(store, "a", 0)
        with stream:
            assert stream.try_next() and stream.offset() == 250
    assert main(["compact", str(store_dir)]) == 0
    assert "rewrote 0 segment(s)" in capsys.readouterr().out


def _read(store: logstore.Store, stream: str) -> list[tuple[int, object]]:
    reader, _found = store.open_stream(store, stream, 0)
    with reader:
        out = []
        while reader.try_next():
            out.append((reader.offset(), reader.get().message))
        return out


def _compact_beside_a_writer(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Compact ``path`` with the tool while another writable store has it open; that writer checks what it sees."""
    _store(path)
    with logstore.open(path, segment_size=SMALL_SEGMENT) as writer:
        expected_a = [(i, {"i": i, "pad": "x" * 300}) for i in range(250, 300)]
        assert _read(writer, "a") == expected_a
        size = sum(f.stat().st_size for f in (path / "segments").glob("*.log"))
        assert main(["compact", "--json", str(path)]) == 0  # just another writer: no lock refuses it
        report = json.loads(capsys.readouterr().out)
        assert report["messages_removed"] == 250 and report["bytes_reclaimed"] > 0
        assert sum(f.stat().st_size for f in (path / "segments").glob("*.log")) < size
        # The writer reads the rewritten segments and goes on committing after the compaction.
        assert writer.global_head == 601  # 600 messages and the truncation
        assert writer.stream_info("a") == (250, 300, False)
        assert _read(writer, "a") == expected_a
        assert [_read(writer, f"b{i}") for i in (0, 150, 299)] == [[(0, 0)], [(0, 150)], [(0, 299)]]
        with writer.transaction() as tx:
            writer.append_messages(tx, "a", 300, [Envelope.new("E", {"i": 300})])
        assert writer.global_head == 602
        assert _read(writer, "a") == [*expected_a, (300, {"i": 300})]
        with logstore.open(path, readonly=True) as reader:  # a fresh opener beside the writer sees both
            assert reader.stream_info("a") == (250, 301, False)
            assert _read(reader, "a") == _read(writer, "a")
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        assert store.global_head == 602
        assert _read(store, "a") == [*expected_a, (300, {"i": 300})]
        assert all(store.head(f"b{i}") == 1 for i in range(300))


def test_compact_works_beside_a_live_writer_which_sees_the_result_and_goes_on_committing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # tmp_path, not store_dir: whether the store verifies clean afterwards is the next test's.
    _compact_beside_a_writer(tmp_path / "store", capsys)


def test_a_store_compacted_beside_a_live_writer_verifies_clean_once_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    _compact_beside_a_writer(path, capsys)
    assert_verified(path)


def test_compact_refuses_a_store_that_repair_holds(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(store_dir)
    before = store_files(store_dir)
    fd = os.open(store_dir / "LOCK", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what `logstore repair` holds while it works
        assert main(["compact", str(store_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"logstore compact: {store_dir}: the store is held exclusively"), err
        assert "logstore repair" in err
        assert store_files(store_dir) == before
    finally:
        os.close(fd)
    assert main(["compact", str(store_dir)]) == 0
    assert "removed 250 message(s)" in capsys.readouterr().out


def test_compact_refuses_an_unknown_format_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    _store(path)
    seg = sorted((path / "segments").glob("*.log"))[0]
    seg.write_bytes(with_format_version(seg.read_bytes(), 2))
    before = store_files(path)
    assert main(["compact", str(path)]) == 2
    assert "version" in capsys.readouterr().err
    assert store_files(path) == before


def test_compact_with_retention_drops_old_segments(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _store(store_dir)
    nseg = len(list((store_dir / "segments").glob("*.log")))
    assert main(["compact", "--json", "--retention-bytes", str(SMALL_SEGMENT), str(store_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["segments_dropped"] >= 1
    assert len(list((store_dir / "segments").glob("*.log"))) == nseg - report["segments_dropped"]
    assert report["bytes_reclaimed"] >= (nseg - 1) * SMALL_SEGMENT // 2
    with logstore.open(store_dir, readonly=True) as store:
        assert store.log_start > 0
        assert store.head("a") == 300


@pytest.mark.parametrize("option", [["--retention-bytes", "0"], ["--retention-age", "-1"], ["--retention-age", "x"]])
def test_compact_refuses_bad_retention_values(
    store_dir: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    _store(store_dir)
    before = store_files(store_dir, skip={"LOCK"})
    assert main(["compact", *option, str(store_dir)]) == 2
    assert "retention" in capsys.readouterr().err
    assert store_files(store_dir, skip={"LOCK"}) == before


def _active_only(path: Path) -> None:
    """A store whose messages, the removed ones included, all lie in the active segment."""
    with logstore.open(path, segment_size=1 << 20) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "user-9", 0, [Envelope.new("P", {"secret": "S3CRET"}) for _ in range(20)])
            store.append_messages(tx, "keep", 0, [Envelope.new("K", i) for i in range(5)])
        store.delete_stream("user-9")


def _holds_secret(path: Path) -> bool:
    return any(b"S3CRET" in p.read_bytes() for p in path.rglob("*") if p.is_file())


def test_compact_rolls_the_active_segment_and_erases_it(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _active_only(store_dir)
    assert _holds_secret(store_dir)
    assert main(["compact", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "rewrote 1 segment(s) (rolled the active segment 00000000000000000000.log)" in out
    assert "removed 20 message(s)" in out and "not reached" not in out
    assert not _holds_secret(store_dir)
    # The new active segment has the store's segment size, not the default of an open without options.
    assert [p.stat().st_size for p in sorted((store_dir / "segments").glob("*.log"))][1] == 1 << 20
    assert main(["compact", "--json", str(store_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rolled"] is None and report["erased"] is True
    assert report["unreached"] == [] and report["lost_found"] == []


def test_compact_no_roll_names_the_segment_it_did_not_reach(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _active_only(store_dir)
    assert main(["compact", "--no-roll", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "rewrote 0 segment(s), dropped 0" in out
    assert (
        "not reached: segments/00000000000000000000.log: 20 removed message(s) still there: "
        "the active segment, which compact(roll=False) does not rewrite"
    ) in out
    assert _holds_secret(store_dir)
    assert main(["compact", "--no-roll", "--json", str(store_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["erased"] is False and report["rolled"] is None
    assert report["unreached"] == [
        {
            "segment": "segments/00000000000000000000.log",
            "messages": 20,
            "reason": "the active segment, which compact(roll=False) does not rewrite",
        }
    ]


def test_compact_says_lost_and_found_is_not_touched(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _active_only(store_dir)
    (store_dir / "lost+found").mkdir()
    (store_dir / "lost+found" / "cut.bin").write_bytes(b"S3CRET")
    assert main(["compact", str(store_dir)]) == 0
    out = capsys.readouterr().out
    assert "not reached: lost+found/ holds 1 file(s) cut from the log by recovery or repair" in out
    assert (store_dir / "lost+found" / "cut.bin").read_bytes() == b"S3CRET"
    assert main(["compact", "--json", str(store_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["lost_found"] == ["lost+found/cut.bin"]


def test_compact_tells_a_missing_path_a_file_and_a_non_store_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_not_stores_told_apart("compact", tmp_path, lambda: capsys.readouterr().err)


def test_compact_text_has_thousands_separators_json_plain_ints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("text", "json"):
        _store(tmp_path / name)
    assert main(["compact", "--json", str(tmp_path / "json")]) == 0
    report = json.loads(capsys.readouterr().out)
    counts = ("segments_rewritten", "segments_dropped", "messages_removed", "bytes_before", "bytes_after")
    assert all(type(report[k]) is int for k in (*counts, "bytes_reclaimed"))
    assert main(["compact", str(tmp_path / "text")]) == 0
    out = capsys.readouterr().out
    before, after, reclaimed = report["bytes_before"], report["bytes_after"], report["bytes_reclaimed"]
    assert reclaimed >= 1000
    assert f"; {before:,} -> {after:,} bytes ({reclaimed:,} reclaimed)" in out
