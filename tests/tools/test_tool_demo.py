"""`logstore demo DIR`: writes a workload, reads it back, verifies, and reports what it did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from logstore.tools.cli import main


def test_demo_writes_reads_and_verifies(store_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "logstore", "demo", str(store_dir), "--orders", "300", "--batch", "50"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "placed         300 orders" in out
    assert "tailed         906 msgs" in out  # 300 placed + 600 followed + 6 outbox notifications
    assert "scanned        906 msgs" in out
    assert "verified       906 records" in out and "clean" in out


def test_demo_refuses_a_directory_with_files(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", str(tmp_path)]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_refuses_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("keep me")
    assert main(["demo", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"logstore demo: {tmp_path / 'file'}: not a directory\n"
    assert (tmp_path / "file").read_text() == "keep me"


def test_demo_rejects_bad_counts(tmp_path: Path) -> None:
    assert main(["demo", str(tmp_path / "s"), "--orders", "0"]) == 2


def test_demo_json_output(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", str(store_dir), "--orders", "100", "--batch", "25", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["clean"] is True and report["problems"] == []
    assert report["orders"] == 100 and report["tailed"] == report["scanned"] == report["verified_records"]
    assert report["disk_bytes"] > 0 and report["write_seconds"] > 0
