"""Smoke test of ``python -m bench.quick``: it runs and reports a rate for every store.

Never asserts speed: how fast logstore is belongs to the benchmark's report,
not to the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_reports_positive_rates_for_both_stores(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.quick", "--quick", "--json", "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed limit
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(proc.stdout)

    assert report["params"]["messages"] == 20_000
    assert report["params"]["repeat"] == 1
    results = {(r["op"], r["store"]): r for r in report["results"]}
    assert set(results) == {(op, store) for op in ("append", "scan") for store in ("logstore", "sqlite")}
    for (op, store), result in results.items():
        assert f"store={store}" in result["name"]
        assert result["name"].startswith(f"{op}/")
        assert result["unit"] == "messages/s"
        assert result["runs"], (op, store)
        assert all(rate > 0 for rate in result["runs"]), result
        assert result["min"] <= result["median"] <= result["max"]
    for ratio in report["ratios"].values():
        assert ratio > 0
    for latency in report["latency"]:
        assert latency["commits"] == 200  # 20_000 messages in transactions of 100
        assert 0 <= latency["commit_p50"] <= latency["commit_p99"] <= latency["commit_max"]
    for key in ("cpus", "python", "logstore", "numpy", "msgpack", "xxhash", "sqlite"):
        assert report["machine"][key], key
    assert list(tmp_path.iterdir()) == [], "the benchmark left its store directories behind"
