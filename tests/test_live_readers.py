"""Read-only opens and the read-only tools beside a busy writer process: no false alarm, ever.

A writer subprocess commits continuously (one to four records per stream,
one to three streams per transaction, payloads from empty to larger than a
third of a segment) into 64 KiB segments, so it rolls, checkpoints, applies
retention and now and then truncates, deletes and compacts. Meanwhile this
process opens the store read-only again and again, reads a slice of the
global stream and one stream each time and checks every envelope (each
payload names its stream and offset and is padded with a byte derived from
the offset), and runs ``stats``, ``dump --json`` and ``verify`` in process.
The writer's in-flight tail and its file replacements must never show as
damage: no exception, no error output, no WARNING from the ``logstore``
logger and no ``lost+found/``. ``LOGSTORE_STRESS=1`` runs it far longer.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

import logstore
from tests.stress import SEED, scale
from tools.cli import main

ROOT = Path(__file__).resolve().parent.parent

WRITER = r"""
import random, select, sys, time
import logstore
from logstore import Envelope

path, durability, seed, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(seed)
store = logstore.open(
    path, durability=durability, segment_size=64 * 1024, checkpoint_bytes=16 * 1024, retention_bytes=384 * 1024
)
names = [f"s{k}" for k in range(24)]

def env(stream, offset):
    n = rng.choice((0, 10, 100, 700, 3000)) if rng.random() > 0.01 else 24000
    return Envelope.new("T", {"s": stream, "o": offset, "n": n, "pad": bytes([offset % 251]) * n})

commits = removals = compactions = 0
stop_at = time.monotonic() + limit
ready = False
while time.monotonic() < stop_at:
    r = rng.random()
    stream = rng.choice(names)
    info = store.stream_info(stream)
    if r < 0.01 and info is not None and info.head > info.first:
        store.truncate_stream(stream, rng.randint(info.first, info.head))
        removals += 1
    elif r < 0.013 and info is not None and not info.deleted:
        store.delete_stream(stream)
        removals += 1
    elif r < 0.016:
        store.compact()
        compactions += 1
    else:
        with store.transaction() as tx:
            for s in rng.sample(names, rng.choice((1, 1, 1, 2, 3))):
                head = store.head(s)
                k = rng.choice((1, 1, 2, 4))
                store.append_messages(tx, s, head, [env(s, head + j) for j in range(k)])
        commits += 1
    if not ready and commits >= 50:
        print("ready", flush=True)
        ready = True
    if commits % 8 == 0 and select.select([sys.stdin], [], [], 0)[0]:
        break  # the test closed our stdin: stop
store.close()
print(f"done {commits} {removals} {compactions}", flush=True)
"""


class _Warnings(logging.Handler):
    """Collects what the ``logstore`` logger says at WARNING or above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def _check_envelope(env: logstore.Envelope, where: str) -> tuple[str, int]:
    m = env.message
    assert env.type == "T", f"{where}: type {env.type!r}"
    assert isinstance(m, dict), f"{where}: message {m!r}"
    assert m["pad"] == bytes([m["o"] % 251]) * m["n"], f"{where}: padding of {m['s']}@{m['o']} is wrong"
    return m["s"], m["o"]


def _read_once(path: Path, rng: random.Random) -> int:
    """One read-only open with a global and a stream read; returns the envelopes checked."""
    checked = 0
    with logstore.open(path, readonly=True) as store:
        report = store.recovery_report
        assert report.cut is None and not report.lost_found and report.bytes_cut == 0, report.summary()
        start = rng.randint(store.log_start, max(store.log_start, store.global_head - 1))
        last: dict[str, int] = {}
        with store.open_global(store, start) as g:
            for _ in range(rng.choice((20, 200))):
                if not g.try_next():
                    break
                stream, offset = _check_envelope(g.get(), f"global offset {g.offset()}")
                assert offset > last.get(stream, -1), f"{stream}@{offset} after @{last[stream]}"
                last[stream] = offset
                checked += 1
        names = store.stream_names()
        if names:
            name = rng.choice(names)
            info = store.stream_info(name)
            assert info is not None
            with store.open_stream(store, name, info.first)[0] as s:
                for _ in range(50):
                    if not s.try_next():
                        break
                    stream, offset = _check_envelope(s.get(), f"{name}@{s.offset()}")
                    assert (stream, offset) == (name, s.offset())
                    checked += 1
    return checked


def _tool(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _run_tools(path: Path, n: int) -> None:
    kind = ("stats", "dump", "verify")[n % 3]
    if kind == "stats":
        code, out, err = _tool(["stats", "--json", str(path)])
        assert (code, err) == (0, ""), err
        stats = json.loads(out)
        assert stats["recovery"]["cut"] is None and stats["recovery"]["lost_found"] == []
    elif kind == "dump":
        code, out, err = _tool(["dump", "--json", str(path)])
        assert (code, err) == (0, ""), err
        for line in out.splitlines():
            obj = json.loads(line)
            m = obj["message"]
            assert (m["s"], m["o"]) == (obj["stream"], obj["offset"]), line[:200]
    else:
        code, out, err = _tool(["verify", "--json", str(path)])
        result = json.loads(out)
        assert (code, err, result["problems"]) == (0, "", []), out


def _campaign(path: Path, durability: str, opens: int, tool_runs: int, seconds: float) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), durability, str(SEED), str(seconds + 60)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    watch = _Warnings()
    logger = logging.getLogger("logstore")
    logger.addHandler(watch)
    errors: list[str] = []
    done = tools = checked = 0
    rng = random.Random(SEED)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline() == "ready\n", "the writer did not start"
        deadline = time.monotonic() + seconds
        tool_every = max(1, opens // max(1, tool_runs))
        while done < opens and time.monotonic() < deadline and len(errors) < 20:
            try:
                checked += _read_once(path, rng)
                if done % tool_every == 0:
                    _run_tools(path, tools)
                    tools += 1
            except Exception:  # noqa: BLE001 - every failure is collected and reported below
                errors.append(traceback.format_exc())
            done += 1
    finally:
        logger.removeHandler(watch)
        out, err = proc.communicate("", timeout=120)  # closing its stdin stops the writer
    assert proc.returncode == 0, err
    assert err == "", err
    commits = int(out.split()[1])
    kinds = sorted({e.strip().splitlines()[-1][:160] for e in errors})
    assert not errors, f"{len(errors)} failures in {done} opens: {kinds}; the first:\n{errors[0]}"
    assert not watch.records, f"{len(watch.records)} warnings, the first: {watch.records[0]}"
    assert not (path / "lost+found").exists(), "a read-only open wrote lost+found"
    print(f"{durability}: {done} opens, {tools} tool runs, {checked} envelopes checked, {commits} commits")
    assert done >= min(opens, 100), f"only {done} opens in {seconds} s"
    assert tools >= min(tool_runs, 10) and checked > 0 and commits > 0


@pytest.mark.parametrize("durability", ["fsync", "batch"])
def test_readonly_opens_and_tools_beside_a_busy_writer(store_dir: Path, durability: str) -> None:
    _campaign(
        store_dir,
        durability,
        opens=scale(1500, 50000),
        tool_runs=scale(45, 1500),
        seconds=scale(40, 900),
    )
