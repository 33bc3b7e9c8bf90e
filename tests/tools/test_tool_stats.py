"""`logstore stats DIR`: counts of segments, streams, messages, records and holes, read-only; and tools.progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.inspect import store_stats
from logstore.tools.cli import main
from logstore.tools.progress import progress
from tests.helpers import SMALL_SEGMENT, assert_not_stores_told_apart
from tests.terminal import on_a_terminal


def _write(path: Path, counts: dict[str, int], pad: int = 200) -> None:
    """Append ``counts[stream]`` messages to each stream, round robin, one transaction each."""
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        todo = dict(counts)
        while todo:
            for name in list(todo):
                with store.transaction() as tx:
                    h = store.head(name)
                    store.append_messages(tx, name, h, [Envelope.new("E", {"i": h, "pad": "x" * pad})])
                todo[name] -= 1
                if not todo[name]:
                    del todo[name]


def _stats(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["stats", "--json", str(path)]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


KINDS = ("message", "truncate", "delete", "retain", "removed", "lost")


def test_stats_counts_equal_what_was_written(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts = {"a": 120, "b": 80, "c": 40, "d": 10}
    _write(store_dir, counts)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        store.truncate_stream("a", 50)
        store.delete_stream("c")
    total = sum(counts.values())
    s = _stats(store_dir, capsys)
    assert s["path"] == str(store_dir)
    assert s["global_head"] == total + 2 and s["log_start"] == 0
    assert s["streams"] == {"total": 4, "live": 3, "deleted": 1, "truncated": 1, "with_removed": 2, "large": 0}
    assert s["messages"] == {"readable": total - 50 - 40}
    assert s["records"] == {**dict.fromkeys(KINDS, 0), "message": total, "truncate": 1, "delete": 1, "total": total + 2}
    assert s["holes"]["awaiting_compaction"] == 90
    assert s["holes"]["reclaimable_bytes"] > 90 * 200
    assert (s["holes"]["removed"], s["holes"]["lost"]) == (0, 0)
    segs = s["segments"]
    assert len(segs) == len(list((store_dir / "segments").glob("*.log"))) > 1
    assert sum(seg["records"] for seg in segs) == total + 2
    assert [seg["first"] for seg in segs] == [0] + [sum(x["records"] for x in segs[:i]) for i in range(1, len(segs))]
    assert all(seg["capacity"] == SMALL_SEGMENT and 64 < seg["bytes"] <= SMALL_SEGMENT for seg in segs)
    assert segs[0]["file"] == "00000000000000000000.log"
    assert s["log_bytes"] == sum(seg["bytes"] - 64 for seg in segs)
    assert s["disk_bytes"] == SMALL_SEGMENT * len(segs)
    assert s["checkpoint"]["clean"] is True
    assert s["checkpoint"]["next_global_offset"] == total + 2
    assert s["checkpoint"]["generation"] >= 1
    assert s["recovery"]["checkpoint"] == "clean" and s["recovery"]["cut"] is None
    assert s["recovery"]["summary"].startswith("checkpoint clean")

    # After compaction the removed messages of sealed segments are REMOVED records.
    with logstore.open(store_dir) as store:
        report = store.compact()
    after = _stats(store_dir, capsys)
    assert after["records"]["removed"] == report.messages_removed > 0
    assert after["holes"]["removed"] == report.messages_removed
    assert after["holes"]["awaiting_compaction"] == 90 - report.messages_removed
    assert after["records"]["message"] == total - report.messages_removed
    assert after["messages"] == s["messages"]
    assert after["disk_bytes"] < s["disk_bytes"]


def test_stats_table(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(store_dir, {"a": 100, "b": 100})
    with logstore.open(store_dir) as store:
        store.delete_stream("b")
    assert main(["stats", str(store_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["store", str(store_dir)]
    assert "checkpoint  generation" in out and ", clean" in out
    assert "streams     2 total, 1 live, 1 deleted, 0 truncated, 0 large" in out
    assert "messages    100 readable" in out
    assert "records     201: message 200, truncate 0, delete 1, retain 0, removed 0, lost 0" in out
    assert "holes       100 removed messages awaiting compaction" in out
    assert lines[lines.index("") + 1].split() == ["segment", "first", "records", "bytes", "capacity"]
    assert lines[lines.index("") + 2].startswith("00000000000000000000.log  ")


def test_stats_beside_an_open_writer(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(store_dir, {"a": 10})
    with logstore.open(store_dir) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "b", 0, [Envelope.new("E", 1), Envelope.new("E", 2)])
        s = _stats(store_dir, capsys)
        assert s["global_head"] == 12 and s["messages"]["readable"] == 12
        assert s["checkpoint"]["clean"] is False  # the writer holds the store open
        assert s["streams"]["live"] == 2
        own = store_stats(store)  # on the writer's own store, too
        assert own["messages"] == s["messages"] and own["records"] == s["records"]
        with store.transaction() as tx:
            store.append_messages(tx, "b", 2, [Envelope.new("E", 3)])
    assert _stats(store_dir, capsys)["messages"]["readable"] == 13


def test_empty_store(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logstore.open(store_dir, segment_size=SMALL_SEGMENT).close()
    s = _stats(store_dir, capsys)
    assert s["global_head"] == 0 and s["messages"]["readable"] == 0 and s["records"]["total"] == 0
    assert main(["stats", str(store_dir)]) == 0
    assert "no records" in capsys.readouterr().out


def test_stats_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_not_stores_told_apart("stats", tmp_path, lambda: capsys.readouterr().err)
    assert main(["stats"]) == 2
    assert main(["stats", str(tmp_path), "extra"]) == 2


def test_progress_is_silent_when_stdout_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(10, "walking") as bar:
        assert not bar.enabled
        bar.update(5)
        bar.update(5)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


def test_progress_enabled_draws_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress(10, "walking", enabled=True)
    assert bar.enabled
    bar.update(10)
    bar.close()
    bar.close()  # twice is fine
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "walking" in captured.err and "10" in captured.err


def test_progress_bar_on_a_terminal_but_not_with_json(store_dir: Path) -> None:
    _write(store_dir, {"a": 50, "b": 30})
    code, screen, _err = on_a_terminal(["stats", str(store_dir)])
    assert code == 0 and "reading records" in screen and "messages    80 readable" in screen
    code, screen, _err = on_a_terminal(["stats", "--json", str(store_dir)])
    assert code == 0 and "reading records" not in screen and json.loads(screen)["messages"]["readable"] == 80
