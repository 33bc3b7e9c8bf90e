"""`logstore verify DIR`: exit 0 clean, 1 problems (with file and byte position), 2 usage or I/O error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from tools.cli import main


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
    assert main(["verify", str(tmp_path / "missing")]) == 2
    (tmp_path / "plain").mkdir()
    assert main(["verify", str(tmp_path / "plain")]) == 2
    assert "not a logstore store" in capsys.readouterr().err


def test_live_store_is_safe_to_verify(store_dir: Path) -> None:
    _store(store_dir)
    with logstore.open(store_dir) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 10, [Envelope.new("E", 99)])
        before = sorted((p.name, p.stat().st_size) for p in (store_dir / "segments").iterdir())
        result = subprocess.run(
            [sys.executable, "-m", "tools", "verify", "--json", str(store_dir)],
            check=False,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["live"] is True
        assert report["records"] == 16
        assert sorted((p.name, p.stat().st_size) for p in (store_dir / "segments").iterdir()) == before
