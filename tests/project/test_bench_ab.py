"""``python -m bench.ab``'s figures (``bench/ab.py``): what it compares for each kind of workload.

The workloads run for real, on small sizes, in this process; the figures are read from what they
return, as ``bench.ab`` reads them from a workload process. Like the other bench tests, these never
assert speed.
"""

from __future__ import annotations

from pathlib import Path

from bench.ab import rates
from bench.workloads import append, es_recorder, event_sourcing, many_streams


def test_an_append_workload_is_compared_by_messages_per_second(tmp_path: Path) -> None:
    result = append({"store": "logstore", "dir": str(tmp_path / "s"), "messages": 200, "batch": 10, "size": 50})
    got = rates(result)
    assert list(got) == ["msg/s"]
    assert got["msg/s"] == result["messages"] / result["seconds"]


def test_w4_is_compared_by_its_write_rate_then_its_loads(tmp_path: Path) -> None:
    spec = {"store": "logstore", "dir": str(tmp_path / "s"), "streams": 20, "per_stream": 5, "loads": 5, "size": 50}
    result = event_sourcing(spec)
    got = rates(result)
    assert list(got) == ["msg/s", "loads/s"]  # the first is the headline
    assert got == {"msg/s": 100 / result["write_seconds"], "loads/s": 5 / result["load_seconds"]}


def test_w8_is_compared_by_its_writes_loads_and_reopens(tmp_path: Path) -> None:
    spec = {"store": "logstore", "dir": str(tmp_path / "s"), "streams": 30, "per_tx": 10, "loads": 6, "size": 50}
    result = many_streams(spec)
    got = rates(result)
    assert list(got) == ["msg/s", "loads/s", "reopens/s"]
    assert got["loads/s"] == 6 / result["load_seconds"]
    assert got["reopens/s"] == 1 / result["reopen_seconds"]  # opens per second: higher is better, as the others


def test_the_es_group_is_compared_figure_by_figure(tmp_path: Path) -> None:
    spec = {
        "store": "logstore",
        "dir": str(tmp_path / "s"),
        "saves1": 20,
        "saves10": 3,
        "aggregates": 4,
        "pages": [10, 100],
        "commits": 0,
        "size": 30,
    }
    result = es_recorder(spec)
    got = rates(result)
    assert list(got) == ["saves1/s", "saves10/s", "scan/page=10, notifications/s", "scan/page=100, notifications/s"]
    assert got["saves1/s"] == 20 / result["saves1"]["seconds"]
    assert got["saves10/s"] == 3 / result["saves10"]["seconds"]
    assert got["scan/page=10, notifications/s"] == 50 / result["scan"]["10"]["seconds"]
