"""`logstore dump DIR`: readable messages one per line (or JSON lines), read-only; exit 2 on bad input or damage."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest

import logstore
from logstore import Envelope
from logstore.embedded.inspect import iter_records, stream_start
from logstore.embedded.record import parse_record
from logstore.index.header import HEADER_SIZE
from logstore.tools.cli import main
from tests.helpers import SMALL_SEGMENT, assert_not_stores_told_apart, store_files, with_format_version

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, plan: list[tuple[str, int]], pad: int = 150) -> list[tuple[str, int, Envelope]]:
    """Commit one transaction per (stream, count); returns (stream, offset, envelope) in global order."""
    out: list[tuple[str, int, Envelope]] = []
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for stream, count in plan:
            head = store.head(stream)
            envs = [Envelope.new("E", {"s": stream, "i": head + k, "pad": "x" * pad}) for k in range(count)]
            with store.transaction() as tx:
                store.append_messages(tx, stream, head, envs)
            out += [(stream, head + k, env) for k, env in enumerate(envs)]
    return out


PLAN = [("a", 3), ("b", 2), ("c", 4), ("a", 2), ("b", 3)] * 40  # 560 messages, several segments


def _lines(capsys: pytest.CaptureFixture[str]) -> list[Any]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _envelope(obj: dict[str, Any]) -> Envelope:
    """The envelope of a JSON line of a message whose ``message`` is plain JSON."""
    return Envelope(
        obj["message_id"],
        obj["causation_id"],
        obj["correlation_id"],
        datetime.fromisoformat(obj["created_at"]),
        datetime.fromisoformat(obj["send_at"]),
        obj["type"],
        obj["message"],
    )


def test_global_dump_prints_every_message_in_commit_order(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = _write(store_dir, PLAN)
    assert len(list((store_dir / "segments").glob("*.log"))) > 1
    assert main(["dump", "--json", str(store_dir)]) == 0
    lines = _lines(capsys)
    assert [o["global_offset"] for o in lines] == list(range(len(written)))
    assert [(o["stream"], o["offset"]) for o in lines] == [(s, off) for s, off, _env in written]
    assert [_envelope(o) for o in lines] == [env for _s, _off, env in written]

    assert main(["dump", str(store_dir)]) == 0
    human = capsys.readouterr().out.splitlines()
    assert len(human) == len(written)
    first = written[0][2]
    assert human[0].startswith(f"0 a@0 {first.created_at.isoformat()} E {{")
    assert '"s": "a", "i": 0' in human[0]
    assert human[-1].startswith(f"{len(written) - 1} b@{written[-1][1]} ")


def test_json_round_trips_every_field(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    message = {
        "raw": b"\x00\x01\xff",
        "when": when,
        "nested": {"deeper": {"list": [1, b"x", {"k": None}, [True, False]], "n": -(2**63)}, "big": 2**64 - 1},
        7: "int key",
        None: "none key",
        b"bk": "bytes key",
        "ext": msgpack.ExtType(5, b"ab"),
        "float": 1.5,
        "inf": float("inf"),
        "text": "naïve ✓ \n tab\t",
    }
    root = Envelope.new("Sample", message, send_at=datetime(2030, 6, 1, tzinfo=UTC))
    child = root.new_child("Child", [b"", {"a": [{}]}])
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store, store.transaction() as tx:
        store.append_messages(tx, "weird stream ✓", 0, [root, child])
    assert main(["dump", "--json", str(store_dir)]) == 0
    first, second = _lines(capsys)
    assert first["global_offset"] == 0 and first["stream"] == "weird stream ✓" and first["offset"] == 0
    assert first["message"] == {
        "raw": {"$bytes": base64.b64encode(b"\x00\x01\xff").decode()},
        "when": "2024-01-02T01:04:05.678901+00:00",
        "nested": {
            "deeper": {"list": [1, {"$bytes": "eA=="}, {"k": None}, [True, False]], "n": -(2**63)},
            "big": 2**64 - 1,
        },
        "7": "int key",
        "null": "none key",
        '{"$bytes":"Yms="}': "bytes key",
        "ext": {"$ext": 5, "data": base64.b64encode(b"ab").decode()},
        "float": 1.5,
        "inf": {"$float": "inf"},
        "text": "naïve ✓ \n tab\t",
    }

    def back(value: Any) -> Any:  # undo the JSON-safe encoding
        if isinstance(value, dict):
            if set(value) == {"$bytes"}:
                return base64.b64decode(value["$bytes"])
            if set(value) == {"$ext", "data"}:
                return msgpack.ExtType(value["$ext"], base64.b64decode(value["data"]))
            if set(value) == {"$float"}:
                return float(value["$float"])
            return {_key(k): back(v) for k, v in value.items()}
        if isinstance(value, list):
            return [back(v) for v in value]
        return value

    def _key(k: str) -> Any:  # a key that is the JSON text of a non-string was not a string
        try:
            value = json.loads(k)
        except ValueError:
            return k
        return k if isinstance(value, str) else back(value)

    restored = back(first["message"])
    restored["when"] = datetime.fromisoformat(restored["when"])
    assert restored == message
    assert _envelope({**first, "message": restored}) == root
    assert second["global_offset"] == 1 and second["offset"] == 1
    assert _envelope({**second, "message": back(second["message"])}) == child
    assert second["causation_id"] == root.message_id and second["correlation_id"] == root.message_id
    assert datetime.fromisoformat(first["send_at"]) == datetime(2030, 6, 1, tzinfo=UTC)

    assert main(["dump", str(store_dir)]) == 0
    human = capsys.readouterr().out.splitlines()
    assert len(human) == 2 and human[0].startswith('0 "weird stream ✓"@0 ')  # a name with a space is quoted


def test_stream_from_and_limit(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = _write(store_dir, PLAN)
    b = [(off, env) for s, off, env in written if s == "b"]
    goff_of = {(s, off): g for g, (s, off, _env) in enumerate(written)}

    assert main(["dump", "--json", "--stream", "b", str(store_dir)]) == 0
    lines = _lines(capsys)
    assert [(o["offset"], _envelope(o)) for o in lines] == b
    assert all(o["stream"] == "b" and o["global_offset"] == goff_of[("b", o["offset"])] for o in lines)

    assert main(["dump", "--json", "--stream", "b", "--from", "57", str(store_dir)]) == 0
    assert [o["offset"] for o in _lines(capsys)] == list(range(57, len(b)))

    assert main(["dump", "--json", "--stream", "b", "--from", "57", "--limit", "3", str(store_dir)]) == 0
    assert [o["offset"] for o in _lines(capsys)] == [57, 58, 59]

    assert main(["dump", "--json", "--stream", "b", "--from", str(len(b)), str(store_dir)]) == 0
    assert _lines(capsys) == []  # at the head: nothing yet
    assert main(["dump", "--json", "--stream", "b", "--from", "10000", str(store_dir)]) == 0
    assert _lines(capsys) == []

    assert main(["dump", "--json", "--from", "500", str(store_dir)]) == 0
    assert [o["global_offset"] for o in _lines(capsys)] == list(range(500, len(written)))
    assert main(["dump", "--json", "--from", "500", "--limit", "2", str(store_dir)]) == 0
    assert [o["global_offset"] for o in _lines(capsys)] == [500, 501]
    assert main(["dump", "--from", "100000", str(store_dir)]) == 0
    assert main(["dump", "--limit", "0", str(store_dir)]) == 0
    assert capsys.readouterr().out == ""


def test_truncated_and_deleted_streams_are_hidden_and_listed_with_all(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = _write(store_dir, PLAN)
    heads = {s: 1 + max(off for t, off, _e in written if t == s) for s in "abc"}
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        store.truncate_stream("a", 30)
        store.delete_stream("c")
    n = len(written)

    assert main(["dump", "--json", str(store_dir)]) == 0
    shown = [(o["stream"], o["offset"]) for o in _lines(capsys)]
    expected = [(s, off) for s, off, _e in written if s == "b" or (s == "a" and off >= 30)]
    assert shown == expected
    assert main(["dump", "--json", "--stream", "c", str(store_dir)]) == 0  # deleted: known, nothing readable
    assert _lines(capsys) == []
    assert main(["dump", "--json", "--stream", "a", str(store_dir)]) == 0
    assert [o["offset"] for o in _lines(capsys)] == list(range(30, heads["a"]))

    assert main(["dump", "--json", "--all", str(store_dir)]) == 0
    lines = _lines(capsys)
    assert [o["global_offset"] for o in lines] == list(range(n + 2))
    records = [o for o in lines if "kind" in o]
    hidden = [(o["stream"], o["offset"]) for o in records if o["kind"] == "message"]
    assert hidden == [(s, off) for s, off, _e in written if s == "c" or (s == "a" and off < 30)]
    assert all(o["readable"] is False for o in records if o["kind"] == "message")
    assert records[-2:] == [
        {"global_offset": n, "kind": "truncate", "stream": "a", "offset": 30},
        {"global_offset": n + 1, "kind": "delete", "stream": "c", "offset": heads["c"]},
    ]
    assert main(["dump", "--all", "--stream", "c", "--from", str(heads["c"]), str(store_dir)]) == 0
    assert capsys.readouterr().out == f"{n + 1} c [delete at head {heads['c']}]\n"
    assert main(["dump", "--all", "--stream", "a", "--limit", "1", str(store_dir)]) == 0
    assert capsys.readouterr().out == "0 a@0 [message, removed]\n"

    with logstore.open(store_dir) as store:
        report = store.compact()
    assert report.messages_removed > 0
    assert main(["dump", "--json", "--all", str(store_dir)]) == 0
    after = _lines(capsys)
    assert [o["global_offset"] for o in after] == list(range(n + 2))
    kinds = {o.get("kind") for o in after}
    assert "removed" in kinds
    removed = [(o["stream"], o["offset"]) for o in after if o.get("kind") in ("removed", "message")]
    assert removed == hidden  # compacted in place (sealed segments) or still awaiting (the active one)
    assert main(["dump", "--json", str(store_dir)]) == 0
    assert [(o["stream"], o["offset"]) for o in _lines(capsys)] == expected


def test_dump_beside_an_open_writer(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = _write(store_dir, PLAN[:20])
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "live", 0, [Envelope.new("Live", {"n": 1})])
        before = store_files(store_dir)
        assert main(["dump", "--json", str(store_dir)]) == 0
        lines = _lines(capsys)
        assert len(lines) == len(written) + 1 and lines[-1]["stream"] == "live"
        assert store_files(store_dir) == before, "dump changed a file"
        with store.transaction() as tx:  # the writer is unaffected
            store.append_messages(tx, "live", 1, [Envelope.new("Live", {"n": 2})])
        result = subprocess.run(
            [sys.executable, "-m", "logstore", "dump", "--json", "--stream", "live", str(store_dir)],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert [json.loads(x)["message"] for x in result.stdout.splitlines()] == [{"n": 1}, {"n": 2}]
        # The tool's helpers also work on the writer's own store, which keeps committing.
        seen = [r.goff for r in iter_records(store, len(written))]
        assert seen == [len(written), len(written) + 1]


def test_a_closed_pipe_ends_the_dump_quietly(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _write(path, PLAN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "logstore", "dump", "--json", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["global_offset"] == 0
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == b""


def test_a_broken_pipe_in_process_returns_0(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(store_dir, PLAN[:5])

    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["dump", str(store_dir)]) == 0
    assert main(["stats", str(store_dir)]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stream", "nope"], "no stream named 'nope'"),
        (["--stream", ""], "stream name must not be empty"),
        (["--from", "-1"], "argument --from: must be 0 or more, got -1"),
        (["--from", "x"], "argument --from: not a whole number: 'x'"),
        (["--limit", "-5"], "argument --limit: must be 0 or more"),
        (["--limit", "1.5"], "argument --limit: not a whole number"),
    ],
)
def test_bad_arguments_exit_2_and_change_nothing(
    store_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    _write(store_dir, PLAN[:5])
    before = store_files(store_dir)
    assert main(["dump", *argv, str(store_dir)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert store_files(store_dir) == before


def test_not_a_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_not_stores_told_apart("dump", tmp_path, lambda: capsys.readouterr().err)


def test_unknown_format_version_exits_2_and_changes_nothing(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(store_dir, PLAN[:5])
    seg = store_dir / "segments" / "00000000000000000000.log"
    original = seg.read_bytes()
    seg.write_bytes(with_format_version(original, 2))  # with a valid header checksum
    before = store_files(store_dir)
    for command in ("dump", "stats"):
        assert main([command, str(store_dir)]) == 2
        err = capsys.readouterr().err
        assert f"logstore {command}: unsupported format: {seg} at byte 8" in err
        assert "format version 2" in err
    assert store_files(store_dir) == before
    seg.write_bytes(original)


def test_damage_exits_2_naming_file_and_position(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = _write(store_dir, PLAN[:5])
    seg = store_dir / "segments" / "00000000000000000000.log"
    original = seg.read_bytes()
    position = HEADER_SIZE
    for _ in range(4):  # the fifth record
        position += parse_record(original, position, len(original)).length
    raw = bytearray(original)
    raw[position + 60] ^= 0xFF
    seg.write_bytes(bytes(raw))
    assert main(["dump", "--json", str(store_dir)]) == 2
    captured = capsys.readouterr()
    assert [json.loads(x)["global_offset"] for x in captured.out.splitlines()] == [0, 1, 2, 3]
    assert f"logstore dump: damaged store: {seg} at byte {position}: global offset 4" in captured.err
    assert "checksum" in captured.err
    assert main(["stats", str(store_dir)]) == 2
    assert f"{seg} at byte {position}" in capsys.readouterr().err
    seg.write_bytes(original)
    assert main(["dump", str(store_dir)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(written)


def test_stream_start_maps_stream_offsets_to_global_offsets(store_dir: Path) -> None:
    written = _write(store_dir, PLAN[:10])
    goff_of = {(s, off): g for g, (s, off, _env) in enumerate(written)}
    with logstore.open(store_dir, readonly=True) as store:
        for (s, off), g in goff_of.items():
            assert stream_start(store, s, off) == g
        head = store.head("c")
        assert stream_start(store, "c", head) == goff_of[("c", head - 1)] + 1
        assert stream_start(store, "c", head + 100) == goff_of[("c", head - 1)] + 1
        with pytest.raises(ValueError, match="no stream named 'zz'"):
            stream_start(store, "zz", 0)
        with pytest.raises(ValueError, match="no stream named 'zz'"):
            next(iter_records(store, 0, "zz"))
        records = list(iter_records(store, 0, "c"))
        assert [(r.stream, r.offset) for r in records] == [(s, off) for s, off, _e in written if s == "c"]
        assert all(r.kind == "message" and r.readable and r.payload_bytes > 0 for r in records)
        assert [r.envelope for r in records] == [e for s, _off, e in written if s == "c"]
        assert all(r.envelope is None for r in iter_records(store, envelopes=False))
