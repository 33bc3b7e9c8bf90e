"""Smoke test of ``python -m bench --quick``: every workload runs, on every store, and reports.

The PG group runs when its PostgreSQL server (``LOGSTORE_BENCH_PG``, by
default 127.0.0.1:5432, database ``test``) answers; otherwise the report
must say it was skipped and why, and the test checks that the server is
indeed out of reach from here too.

Never asserts speed: how fast logstore is belongs to the benchmark's report,
not to the test run. What it checks is that the suite measured what it says
(each workload's benchmarks, named by their parameters, on all three stores,
and the floor beside them in W1-W4),
that its numbers are well-formed, and that it cleans up after itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STORES = {"logstore", "sqlite", "lmdb"}
PG_STORES = {"pg", "pg-eventsourcing", "pg-plain"}
ES_STORES = {"logstore", "es-sqlite", "es-popo"}


def _pg_reachable() -> bool:
    """Whether the PG group's server answers (the suite's own default URL and variable)."""
    from bench.peers import PG_URL

    try:
        import psycopg
    except ImportError:
        return False
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def test_quick_suite_runs_every_workload_on_every_store(tmp_path: Path) -> None:
    markdown = tmp_path / "results.md"
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--dir", str(work), "--markdown", str(markdown)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard, not a speed limit
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    report = json.loads(proc.stdout)

    assert report["mode"] == "quick"
    results = report["results"]
    by_workload: dict[str, set[str]] = {}
    for r in results:
        by_workload.setdefault(r["workload"], set()).add(r["store"])
        assert r["name"].endswith(f"/store={r['store']}"), r["name"]
        assert any(k in r["name"] for k in ("batch=", "streams=", "messages=", "wait=")), r["name"]
        assert len(r["runs"]) >= 1
        if r["unit"] == "% of a core":  # an idle reader's CPU may be too little to measure
            assert all(v >= 0 for v in r["runs"]), r
        else:
            assert all(v > 0 for v in r["runs"]), r
        assert r["min"] <= r["median"] <= r["max"]
        if "latency_p50" in r:
            assert 0 < r["latency_p50"] <= r["latency_p99"] <= r["latency_max"]
    skipped = report.get("skipped", {})
    assert "ES" not in skipped, skipped  # the eventsourcing library is in the dev extra
    check_es(report)
    if "PG" in skipped:
        assert "PG" not in by_workload and skipped["PG"], skipped
        assert not _pg_reachable(), f"PG was skipped though its server answers: {skipped['PG']}"
        assert set(by_workload) == {*(f"W{i}" for i in range(1, 11)), "ES", "ID", "CT", "SB"}
    else:
        assert set(by_workload) == {*(f"W{i}" for i in range(1, 11)), "PG", "ES", "ID", "CT", "SB"}
        check_pg(report)
    for workload in ("W1", "W2", "W3", "W4"):
        assert by_workload[workload] == {*STORES, "floor"}, workload
    for workload in ("W6", "W7", "W8", "W9", "W10"):  # the floor takes part in W1-W4 only
        assert by_workload[workload] == STORES, workload
    assert by_workload["W5"] == {"logstore"}
    check_id(results)
    assert by_workload["CT"] == by_workload["SB"] == {"logstore", "sqlite"}
    ct = {r["name"]: r for r in results if r["workload"] == "CT"}
    assert len(ct) == 8, sorted(ct)
    for name, r in ct.items():
        if r["store"] == "logstore":  # the records each read examined: the category's alone through the index
            want = 200 if "category/" in name and "read=index" in name else 20_000
            assert r["extra"]["records_read"] == [want], (name, r["extra"])
    w5 = {r["name"] for r in results if r["workload"] == "W5"}
    assert any("/after=close/" in n for n in w5)
    assert any("/after=crash/" in n for n in w5)
    w6 = {r["name"].split("/", 2)[1] for r in results if r["workload"] == "W6"}
    assert w6 == {"append", "es-write", "es-load", "build"}, w6
    for r in results:
        if r["workload"] == "W6":
            extra = r["extra"]
            assert extra["disk_bytes_per_message"][0] > 0
            assert extra["envelope_bytes_per_message"][0] > 250  # envelopes of about 300 B

    w9 = {r["name"].rsplit("/store=", 1)[0]: r for r in results if r["workload"] == "W9"}
    assert set(w9) == {
        f"processes={p}/batch={b}/size=300B/commits={c}-each" for p in (1, 4) for b, c in ((1, 40), (100, 10))
    }, set(w9)
    for r in w9.values():
        assert r["unit"] == "commits/s" and r["higher_is_better"] and "latency_p50" in r

    w10 = {r["name"].rsplit("/store=", 1)[0]: r for r in results if r["workload"] == "W10"}
    assert set(w10) == {
        "wake-up/readers=1/batch=1/size=300B/commits=30",
        "wake-up/readers=8/batch=1/size=300B/commits=30",
        "idle-reader/wait=0.5s",
    }, set(w10)
    for family, r in w10.items():
        if family.startswith("wake-up/"):
            readers = int(family.split("/")[1].removeprefix("readers="))
            assert r["unit"] == "ms" and not r["higher_is_better"]
            assert r["latency_p50"] * 1e3 == r["median"]  # one run: its p50, in ms
            assert r["extra"]["samples"] == [readers * 30]  # every reader, every measured commit
        else:
            assert r["unit"] == "% of a core" and "latency_p50" not in r

    ratios = {(x["benchmark"], x["peer"]) for x in report["ratios"]}
    assert all(x["ratio"] > 0 for x in report["ratios"])
    w1 = next(r["name"] for r in results if r["workload"] == "W1" and r["store"] == "logstore")
    assert {(w1.rsplit("/store=", 1)[0], p) for p in ("sqlite", "lmdb", "floor")} <= ratios
    w2 = next(r for r in results if r["workload"] == "W2" and r["store"] == "floor")
    assert 0 < w2["extra"]["syncs_per_commit"][0] <= 1
    wake = [x for x in report["ratios"] if x["workload"] == "W10" and x["benchmark"].startswith("wake-up/")]
    assert {(x["of"], x["peer"], x["direction"]) for x in wake} == {
        (of, p, "peer / logstore") for of in ("p50", "p99") for p in ("sqlite", "lmdb")
    }
    for key in ("cpus", "python", "logstore", "numpy", "msgpack", "xxhash", "sqlite", "lmdb"):
        assert report["machine"][key], key

    text = markdown.read_text()
    assert "### Ratios: logstore / peer" in text and w1 in text
    assert "### Ratios of the eventsourcing recorders: logstore / peer" in text and "| n/a |" in text
    assert "### W10" in text and "wake-up p99" in text
    assert [p.name for p in work.iterdir()] == [], "the suite left store directories behind"
    if "PG" not in skipped:
        assert "### Ratios on PostgreSQL: pg / peer" in text and "`synchronous_commit`" in text
        from bench.peers import pg_connect

        with pg_connect() as conn:
            # Only this run's schemas: another run of the suite may be using the same server.
            prefix = report["pg_schema_prefix"]
            assert prefix.startswith("bench_logstore_bench_"), prefix
            left = conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,)).fetchall()
        assert left == [], f"the suite left PostgreSQL schemas behind: {left}"


def check_pg(report: dict[str, Any]) -> None:
    """The PG group's rows, ratios and server settings in a quick report that ran it."""
    pg = {r["name"].rsplit("/store=", 1)[0]: r for r in report["results"] if r["workload"] == "PG"}
    stores: dict[str, set[str]] = {}
    for r in report["results"]:
        if r["workload"] == "PG":
            stores.setdefault(r["name"].rsplit("/store=", 1)[0], set()).add(r["store"])
    assert set(stores) == {
        "append/batch=100/size=300B/messages=2k",
        "append/threads=8/batch=1/size=300B/commits=200",
        "append/processes=4/batch=1/size=300B/commits=25-each",
        "es-write/streams=200/per-stream=5/size=300B",
        "es-load/streams=200/per-stream=5/size=300B/loads=100",
        "wake-up/readers=1/batch=1/size=300B/commits=20",
    }, set(stores)
    assert all(s == PG_STORES for s in stores.values()), stores
    wake = pg["wake-up/readers=1/batch=1/size=300B/commits=20"]
    assert wake["unit"] == "ms" and not wake["higher_is_better"] and wake["extra"]["samples"] == [20]
    ratios = {(x["benchmark"], x["of"], x["peer"]): x for x in report["ratios"] if x["workload"] == "PG"}
    for family in stores:
        figures = ("p50", "p99") if family.startswith("wake-up/") else ("median",)
        for of in figures:
            for peer in ("pg-eventsourcing", "pg-plain"):
                x = ratios[(family, of, peer)]
                assert x["ratio"] > 0
                assert x["direction"] == ("peer / pg" if family.startswith("wake-up/") else "pg / peer")
    settings = report["pg_settings"]
    for key in ("synchronous_commit", "fsync", "wal_sync_method", "shared_buffers", "max_wal_size"):
        assert settings[key], key


def check_es(report: dict[str, Any]) -> None:
    """The ES group's rows, ratios and settings in a quick report."""
    stores: dict[str, set[str]] = {}
    for r in report["results"]:
        if r["workload"] == "ES":
            stores.setdefault(r["name"].rsplit("/store=", 1)[0], set()).add(r["store"])
    wake = "wake-up/subscribers=1/batch=1/size=300B/commits=30"
    assert stores == {
        "insert/batch=1/size=300B/saves=300": ES_STORES,
        "insert/batch=10/size=300B/saves=50": ES_STORES,
        "scan/page=10/size=300B/messages=800": ES_STORES,
        "scan/page=100/size=300B/messages=800": ES_STORES,
        wake: {"logstore", "es-popo"},  # the library's SQLite recorder cannot subscribe
    }, stores
    for r in report["results"]:
        if r["workload"] == "ES" and r["name"].startswith("insert/"):
            assert r["unit"] == "inserts/s" and r["higher_is_better"] and "latency_p50" in r
        elif r["workload"] == "ES" and r["name"].startswith("wake-up/"):
            assert r["unit"] == "ms" and not r["higher_is_better"] and r["extra"]["samples"] == [30]
    ratios = {(x["benchmark"], x["of"], x["peer"]) for x in report["ratios"] if x["workload"] == "ES"}
    for family in stores:
        figures = ("p50", "p99") if family == wake else ("median",)
        peers = ("es-popo",) if family == wake else ("es-sqlite", "es-popo")
        assert {(family, of, p) for of in figures for p in peers} <= ratios, family
    settings = report["es_settings"]
    assert settings["logstore"] == {"durability": "fsync"}
    assert settings["es-sqlite"] == {"journal_mode": "wal", "synchronous": "FULL"}


def check_id(results: list[dict[str, Any]]) -> None:
    """The ID group: W1 with message ids checked on logstore, sqlite with a UNIQUE (stream, message_id)
    and plain sqlite; retries on the first two."""
    ids = {(r["name"].rsplit("/store=", 1)[0], r["store"]): r for r in results if r["workload"] == "ID"}
    assert set(ids) == {
        *(("append/ids=checked/batch=100/size=300B/messages=20k", s) for s in ("logstore", "sqlite-unique", "sqlite")),
        *(("retry/batch=100/size=300B/commits=200", s) for s in ("logstore", "sqlite-unique")),
    }, set(ids)
    for (family, _store), r in ids.items():
        assert r["unit"] == ("retries/s" if family.startswith("retry/") else "msg/s") and r["higher_is_better"]
