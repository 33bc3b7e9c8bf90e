"""The benchmark suite's floor (``bench/floor.py``) and its charts (``bench/plot.py``).

The floor is what ``python -m bench`` measures logstore against: encoding,
one ``pwrite`` and one ``fdatasync`` per transaction (per group, from
several threads), decoding from bytes in memory. These tests check that it
does that work and no less (the syscalls it makes, the bytes its file
holds), that it gives back what it was given, and that the workloads run it
and check it. Like the smoke test, they never assert speed.

The chart tests need matplotlib, which the test set-up (``dev``, and so CI)
installs; a checkout with only the engine's dependencies skips them, saying
so (``pytest.importorskip``). The test of the message a run with ``--plot``
gives without matplotlib runs everywhere.
"""

from __future__ import annotations

import gc
import json
import os
import random
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.envelopes import envelope_at, envelope_bytes, make_pool, message, root
from bench.floor import FILE, STEP, FloorPeer, reserve_for
from logstore import Envelope
from logstore.envelope import encode

ROOT = Path(__file__).resolve().parents[2]
HEAD = struct.Struct("<IH")  # written out here, not taken from bench.floor: the frame as documented


def run_workload(spec: dict[str, Any], ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m bench.workloads`` with ``spec``, as the suite runs it; must exit 0 unless not ``ok``."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.workloads", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard
        check=False,
    )
    if ok:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"
    return proc


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def pool_of(count: int, size: int = 300) -> list[Envelope]:
    """The workloads' pool, without leaving the garbage collector frozen in the test process."""
    pool = make_pool(count, size)
    gc.unfreeze()
    return pool


def envelopes(n: int) -> list[Envelope]:
    rng = random.Random(3)
    return [root(i, message(i, 40), rng) for i in range(n)]


def frames(path: Path) -> tuple[list[tuple[str, bytes]], bytes]:
    """The (stream, envelope bytes) framed in a floor file, read by the documented layout; and what follows."""
    data = path.read_bytes()
    out = []
    p = 0
    while p + HEAD.size <= len(data):
        length, nlen = HEAD.unpack_from(data, p)
        if length == 0:
            break
        a = p + HEAD.size + nlen
        out.append((data[p + HEAD.size : a].decode(), data[a : a + length]))
        p = a + length
    return out, data[p:]


def test_the_floor_append_workload_leaves_every_transaction_in_its_file(tmp_path: Path) -> None:
    store = tmp_path / "floor"
    spec = {"workload": "append", "store": "floor", "dir": str(store), "messages": 1000, "batch": 100, "size": 300}
    res = result(run_workload({**spec, "verify": True}))  # verify: reopened, scanned, checked
    assert res["commits"] == 10
    assert res["floor"]["flushes"] == 10  # one pwrite + fdatasync per transaction (the workload checks it too)
    assert res["floor"]["extensions"] == 0
    pool = pool_of(1000)
    got, rest = frames(store / FILE)
    want = [(f"stream-{i // 100}", encode(envelope_at(pool, i), "pool")) for i in range(1000)]
    assert got == want  # logstore's encoding of each envelope, in commit order, each with its stream
    assert rest == bytes(len(rest))  # the rest of the reservation: zeros
    assert (store / FILE).stat().st_size == reserve_for(envelope_bytes(pool, 1000), 1000) == res["floor"]["reserved"]


def test_the_floor_makes_one_pwrite_and_one_fdatasync_per_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "floor")
    peer = FloorPeer(path, reserve=1 << 16)
    assert (tmp_path / "floor" / FILE).read_bytes() == bytes(1 << 16)  # pre-zeroed when it opened
    calls: list[tuple[Any, ...]] = []
    pwrite, fdatasync = os.pwrite, os.fdatasync

    def counted_pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append(("pwrite", offset, len(data)))
        return pwrite(fd, data, offset)

    def counted_fdatasync(fd: int) -> None:
        calls.append(("fdatasync",))
        fdatasync(fd)

    monkeypatch.setattr(os, "pwrite", counted_pwrite)
    monkeypatch.setattr(os, "fdatasync", counted_fdatasync)
    envs = envelopes(5)
    peer.append("a", 0, envs[:2])
    peer.append("bb", 0, envs[2:])
    sizes = [
        sum(HEAD.size + len(name) + len(encode(e, "e")) for e in part)
        for name, part in (("a", envs[:2]), ("bb", envs[2:]))
    ]
    assert calls == [("pwrite", 0, sizes[0]), ("fdatasync",), ("pwrite", sizes[0], sizes[1]), ("fdatasync",)]
    calls.clear()
    assert peer.load("a") == envs[:2] and peer.load("bb") == envs[2:] and peer.load("c") == []
    assert list(peer.scan()) == envs
    peer.close()
    assert calls == []  # reading writes nothing

    peer = FloorPeer(path)  # reopened: read from the file
    try:
        assert list(peer.scan()) == envs
        assert peer.load("bb") == envs[2:]
        assert peer.end == sum(sizes) and peer.size == 1 << 16
    finally:
        peer.close()


def test_the_floor_grows_past_its_reservation_with_zeros_and_counts_it(tmp_path: Path) -> None:
    path = tmp_path / "floor"
    peer = FloorPeer(str(path), reserve=100)
    envs = envelopes(3)  # more than 100 bytes
    peer.append("s", 0, envs)
    assert peer.extensions == 1 and peer.size == 100 + STEP
    peer.close()
    got, rest = frames(path / FILE)
    assert got == [("s", encode(e, "e")) for e in envs]
    assert len(rest) == 100 + STEP - sum(HEAD.size + 1 + len(p) for _s, p in got) and not rest.strip(b"\0")


def test_the_floor_hands_the_transactions_that_waited_to_one_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that comes while a flush is under way waits for it, then the oldest waiting writes them all:
    four transactions from four threads, the first one's sync held until the other three queued, are two
    pwrites and two fdatasyncs."""
    peer = FloorPeer(str(tmp_path / "floor"), reserve=1 << 16)
    envs = envelopes(4)
    entered, release, queued = threading.Event(), threading.Event(), threading.Event()

    class Queue(list[Any]):
        def append(self, item: Any) -> None:
            super().append(item)
            if len(self) == 3:
                queued.set()

    writes: list[int] = []
    syncs: list[int] = []
    pwrite, fdatasync = os.pwrite, os.fdatasync

    def counted_pwrite(fd: int, data: bytes, offset: int) -> int:
        writes.append(len(data))
        return pwrite(fd, data, offset)

    def held_fdatasync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 1:  # the first flush: its queue is taken; watch the next one fill
            with peer._lock:
                peer._queue = Queue()
            entered.set()
            assert release.wait(60)
        fdatasync(fd)

    monkeypatch.setattr(os, "pwrite", counted_pwrite)
    monkeypatch.setattr(os, "fdatasync", held_fdatasync)
    errors: list[BaseException] = []

    def commit(k: int) -> None:
        try:
            peer.append(f"s{k}", 0, [envs[k]])
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    first = threading.Thread(target=commit, args=(0,))
    first.start()
    assert entered.wait(60)
    others = [threading.Thread(target=commit, args=(k,)) for k in (1, 2, 3)]
    for t in others:
        t.start()
    assert queued.wait(60)  # all three handed in while the first flush syncs
    release.set()
    for t in (first, *others):
        t.join(60)
        assert not t.is_alive()
    assert errors == []
    one = HEAD.size + 2 + len(encode(envs[0], "e"))
    assert syncs == [peer.fd, peer.fd] and peer.flushes == 2
    assert writes[0] == one and len(writes) == 2
    assert writes[1] == sum(HEAD.size + 2 + len(encode(e, "e")) for e in envs[1:])
    scanned = list(peer.scan())
    assert scanned[0] == envs[0] and sorted(scanned[1:]) == sorted(envs[1:])
    assert all(peer.load(f"s{k}") == [envs[k]] for k in range(4))
    peer.close()


def test_the_floor_scan_workload_decodes_what_the_append_wrote_and_fails_on_a_difference(tmp_path: Path) -> None:
    store = tmp_path / "floor"
    base = {"store": "floor", "dir": str(store), "messages": 2000, "size": 300}
    run_workload({**base, "workload": "append", "batch": 100})
    res = result(run_workload({**base, "workload": "scan"}))  # every envelope checked against the pool
    assert res["messages"] == 2000 and res["seconds"] > 0
    # One byte of one envelope's message changed ("n" of its note to "m"): the same length, still msgpack.
    path = store / FILE
    data = bytearray(path.read_bytes())
    got, _rest = frames(path)
    end = sum(HEAD.size + len(name) + len(payload) for name, payload in got[:1501])
    assert data[end - 1 : end] == b"n"
    data[end - 1] = ord("m")
    path.write_bytes(bytes(data))
    proc = run_workload({**base, "workload": "scan"}, ok=False)
    assert proc.returncode != 0 and "global offset 1500 differs" in proc.stderr


def test_the_floor_runs_the_group_commit_and_event_sourcing_workloads(tmp_path: Path) -> None:
    res = result(
        run_workload(
            {"workload": "threads", "store": "floor", "dir": str(tmp_path / "w2"), "threads": 4, "per_thread": 50}
            | {"size": 300}
        )
    )  # each thread's stream loaded and checked
    assert res["commits"] == 200 and 1 <= res["floor"]["flushes"] <= 200 and res["floor"]["extensions"] == 0
    assert res["syncs"] == res["floor"]["flushes"]  # one fdatasync per group, nothing else in the timed part
    assert res["latency"]["count"] == 200 and len(res["latency"]["q"]) == 54
    spec = {"workload": "event_sourcing", "store": "floor", "dir": str(tmp_path / "w4"), "size": 300}
    res = result(run_workload(spec | {"streams": 100, "per_stream": 5, "loads": 50}))  # loads checked
    assert res["commits"] == 100 and res["floor"]["flushes"] == 100 and res["loads"] == 50


def test_plot_without_matplotlib_names_the_extra_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # an import of it now fails, installed or not
        "from bench.__main__ import main\n"
        f"main(['--quick', '--only', 'W2', '--plot', {str(tmp_path / 'plots')!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr  # refused before anything runs
    assert "pip install 'logstore[bench]'" in proc.stderr
    assert not (tmp_path / "plots").exists()


def test_plot_writes_the_charts_and_the_report_shows_them_above_its_tables(tmp_path: Path) -> None:
    """Skips where matplotlib is missing: it is the bench extra's, which the test set-up does not install."""
    pytest.importorskip("matplotlib")
    plots, markdown = tmp_path / "plots", tmp_path / "results.md"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick", "--only", "W2", "--stores", "logstore,floor", "--json"),
            *("--dir", str(tmp_path / "work"), "--plot", str(plots), "--markdown", str(markdown)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {r["store"] for r in report["results"]} == {"logstore", "floor"}
    for r in report["results"]:
        dist = r["latency_quantiles"]
        assert len(dist["percentiles"]) == len(dist["runs"][0]) == 54
        assert dist["runs"][0] == sorted(dist["runs"][0])
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["W2-latency.png", "W2.png"]
    for name in names:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = markdown.read_text()
    assert text.index("![W2](plots/W2.png)") < text.index("![W2-latency](plots/W2-latency.png)")
    assert text.index("![W2-latency]") < text.index("### Ratios: logstore / peer") < text.index("### W2")
    assert "| vs floor |" in text
    ratio = next(x for x in report["ratios"] if x["peer"] == "floor")
    assert ratio["workload"] == "W2" and ratio["ratio"] > 0

    # The same charts again, from the saved report.
    saved = tmp_path / "report.json"
    saved.write_text(proc.stdout)
    again = tmp_path / "again"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.plot", str(saved), str(again)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in again.iterdir()) == names
    assert proc.stdout.split() == [str(again / "W2.png"), str(again / "W2-latency.png")]
