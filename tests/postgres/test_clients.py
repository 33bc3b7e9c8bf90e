"""Several client processes commit at once while a reader tails the global log.

The trap this guards against: global offsets allocated before commit (a sequence) become visible out
of order, and a tailing reader that has read offset 7 skips offset 6 when that commit lands later.
Here the reader must see 0, 1, 2, ... with no gap and no repeat, each client's every commit whole,
in the order of its global offsets, and each stream's offsets contiguous.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from logstore import Envelope
from tests.contract.backends import POSTGRES_URL
from tests.helpers import spawn_python

CLIENTS = 4
ROUNDS = 150
WAIT = 60.0  # seconds a blocked next() waits before the test fails rather than hangs


@pytest.mark.slow
def test_clients_commit_at_once_and_a_tailing_reader_sees_every_offset_once_in_order(open_pg, schema):
    store = open_pg()
    reader = store.global_stream()
    seen: list[tuple[int, str, int, Envelope]] = []
    done = threading.Event()
    failure: list[BaseException] = []

    def tail() -> None:
        try:
            while not done.is_set() or reader.try_next():
                try:
                    reader.next(timeout=WAIT)
                except TimeoutError:
                    break
                seen.append((reader.offset(), reader.stream_name(), reader.stream_offset(), reader.get()))
                if seen[-1][3].type == "Stop":
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failure.append(exc)

    tailer = threading.Thread(target=tail)
    tailer.start()
    code = "from tests.postgres.client import main; main()"
    clients = [spawn_python(code, POSTGRES_URL, schema, str(c), str(ROUNDS)) for c in range(CLIENTS)]
    try:
        for proc in clients:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in clients:  # every client starts at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports: list[dict[str, Any]] = []
        for proc in clients:
            out, err = proc.communicate(timeout=WAIT * 2)
            assert proc.returncode == 0, err
            reports += [json.loads(line) for line in out.splitlines()]
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with store.transaction() as tx:  # the last commit: the tailing reader stops at it
        tx.append("stop", 0, [Envelope.new("Stop", None)])
    done.set()
    tailer.join(WAIT)
    assert not tailer.is_alive()
    assert failure == []

    total = sum(r["goffs"][1] - r["goffs"][0] for r in reports) + 1
    assert len(reports) == CLIENTS * ROUNDS
    # No gap, no repeat, in order: exactly 0, 1, 2, ...
    assert [goff for goff, *_ in seen] == list(range(total))
    assert store.global_head == total
    # Each commit whole, where its commit() said, its messages in the order they were appended.
    by_goff = {goff: (name, soff, env) for goff, name, soff, env in seen}
    for report in reports:
        start, stop = report["goffs"]
        assert [by_goff[g][2].message_id for g in range(start, stop)] == report["ids"]
        for name, (first, end) in report["streams"].items():
            assert sorted(by_goff[g][1] for g in range(start, stop) if by_goff[g][0] == name) == list(range(first, end))
    # Every stream's offsets are 0, 1, 2, ... in global order (ANY appends to the outbox included).
    streams: dict[str, list[int]] = {}
    for _goff, name, soff, _env in seen:
        streams.setdefault(name, []).append(soff)
    for name, offsets in streams.items():
        assert offsets == list(range(len(offsets))), name
        assert store.head(name) == len(offsets)
    assert len(streams["outbox"]) == CLIENTS * ROUNDS
    reader.close()
