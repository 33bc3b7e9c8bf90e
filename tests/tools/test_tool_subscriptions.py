"""The tools and durable subscriptions: ``logstore stats`` shows them, ``verify`` checks ``SUBSCRIPTIONS``,
``repair`` mends it.

- ``stats`` (text and ``--json``, a directory and a PostgreSQL URL) lists every subscription with its
  category and types, and per member its saved position and its lag: the messages at or after the
  position that the member would be given (counted here from the log, independently).
- ``verify`` reports a damaged header, a damaged definition and a member whose two position copies are
  damaged, each naming ``SUBSCRIPTIONS`` and a byte position at or before the damage, within its block;
  one damaged copy leaves the other's position (the old or the new, never a damaged one).
- ``repair`` mends each of those: verify is clean after it, the damaged bytes are in ``lost+found/`` with
  a manifest naming ``SUBSCRIPTIONS`` and the byte position, the log is untouched, the other
  subscriptions keep their positions, and the damaged one is gone or no further on than it was (at
  least once: nothing is skipped); ``--dry-run`` changes nothing.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

import logstore
from logstore import Envelope
from logstore.checks import category_of
from logstore.embedded.verify import verify
from logstore.tools.cli import main
from tests.contract.backends import BACKENDS, POSTGRES_URL, schema_for
from tests.helpers import SMALL_SEGMENT, store_files

STREAMS = ["order-1", "order-2", "order-3", "order-4", "user-1", "user-2", "audit"]
TYPES = ["T0", "T1"]
SLOT = 4096  # docs/FORMAT.md section 12b: block 0 the header, slot i at 4096 * (i + 1)
COPY_A, COPY_B = 4032, 4064  # the two 32-byte position copies in a slot

Row = tuple[int, str, str]  # global offset, stream, type


def _fill(store: Any, rounds: int = 5) -> list[Row]:
    for r in range(rounds):
        for k, name in enumerate(STREAMS):
            with store.transaction() as tx:
                head = store.head(name)
                tx.append(name, head, [Envelope.new(TYPES[(k + r) % 2], {"s": name, "i": head})])
    with store.global_stream() as log:
        return [(log.offset(), log.stream_name(), env.type) for env in log]


def _lag(rows: list[Row], category: str | None, types: Any, member: int, size: int, position: int) -> int:
    """The messages at or after ``position`` that the member is given, counted from the log."""
    return sum(
        1
        for g, name, type_ in rows
        if g >= position
        and (category is None or category_of(name) == category)
        and (types is None or type_ in types)
        and xxhash.xxh64_intdigest(name.encode("utf-8")) % size == member
    )


def _consume(store: Any, name: str, category: str | None, types: Any, group: Any, n: int) -> int:
    """Take ``n`` messages of a subscription's member and acknowledge them; its position."""
    with store.subscribe(name, category, types, group=group) as sub:
        for _ in range(n):
            assert sub.try_next()
        if n:
            sub.ack()
        position: int = sub.position
        return position


def _scenario(store: Any) -> tuple[list[Row], dict[str, dict[str, Any]]]:
    """Three subscriptions, positions moved by acks; the log and what stats must say of each."""
    _fill(store)
    billing = [
        _consume(store, "billing", "order", None, (0, 2), 3),
        _consume(store, "billing", "order", None, (1, 2), 0),
    ]
    audit = [_consume(store, "audit", None, ["T1"], None, 4)]
    idle = [_consume(store, "idle", "user", None, None, 0)]
    rows = _fill(store, rounds=1)  # committed after the acks: the lags grow
    want: dict[str, dict[str, Any]] = {
        "audit": {"category": None, "types": ["T1"], "size": 1, "positions": audit},
        "billing": {"category": "order", "types": None, "size": 2, "positions": billing},
        "idle": {"category": "user", "types": None, "size": 1, "positions": idle},
    }
    for spec in want.values():
        spec["lags"] = [
            _lag(rows, spec["category"], spec["types"], m, spec["size"], p) for m, p in enumerate(spec["positions"])
        ]
    assert want["billing"]["positions"][0] > 0 and want["audit"]["positions"][0] > 0
    assert all(lag > 0 for spec in want.values() for lag in spec["lags"])
    return rows, want


@pytest.fixture(params=sorted(BACKENDS))
def target(request: pytest.FixtureRequest, store_dir: Path) -> Iterator[tuple[Any, list[str]]]:
    """The backend's opener and the ``logstore stats`` arguments naming its store; the schema dropped after."""
    backend = BACKENDS[request.param]
    args = [POSTGRES_URL, "--schema", schema_for(store_dir)] if request.param == "postgres" else [str(store_dir)]
    yield (lambda: backend(store_dir)), args
    drop = getattr(backend, "drop", None)
    if drop is not None:
        drop(store_dir)


def test_stats_json_lists_each_member_with_its_position_and_lag(
    target: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    opener, args = target
    with opener() as store:
        _rows, want = _scenario(store)
    assert main(["stats", "--json", *args]) == 0
    subs = json.loads(capsys.readouterr().out)["subscriptions"]
    assert [s["name"] for s in subs] == sorted(want)
    for s in subs:
        spec = want[s["name"]]
        assert (s["category"], s["types"], s["size"]) == (spec["category"], spec["types"], spec["size"]), s
        assert s["members"] == [
            {"member": m, "position": p, "lag": lag}
            for m, (p, lag) in enumerate(zip(spec["positions"], spec["lags"], strict=True))
        ], s["name"]


def test_stats_text_shows_each_subscription_and_member(
    target: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    opener, args = target
    with opener() as store:
        _rows, want = _scenario(store)
        # Beside the writer, with a member open: stats reads the saved positions.
        with store.subscribe("billing", "order", group=(1, 2)):
            assert main(["stats", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    (head,) = [i for i, line in enumerate(lines) if line.startswith("subscriptions")]
    assert re.match(r"subscriptions\s+3\b", lines[head]), lines[head]
    i = head + 1
    for name in sorted(want):
        spec = want[name]
        line = lines[i]
        assert f"'{name}'" in line, (name, line)
        assert ("whole log" in line) if spec["category"] is None else (f"'{spec['category']}'" in line), line
        if spec["types"] is not None:
            assert all(t in line for t in spec["types"]), line
        i += 1
        for m, (position, lag) in enumerate(zip(spec["positions"], spec["lags"], strict=True)):
            numbers = [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", lines[i])]
            assert "member" in lines[i] and "position" in lines[i] and "lag" in lines[i], lines[i]
            assert numbers == [m, position, lag], (name, m, lines[i])
            i += 1


def test_stats_of_a_store_without_subscriptions(
    target: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    opener, args = target
    with opener() as store:
        _fill(store, rounds=1)
    assert main(["stats", "--json", *args]) == 0
    assert json.loads(capsys.readouterr().out)["subscriptions"] == []


# -- verify and repair of SUBSCRIPTIONS ----------------------------------------------------


def _build(path: Path) -> dict[str, tuple[int, ...]]:
    """A store with a "keeper" and a "victim" subscription, each acknowledged twice; their positions."""
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        _fill(store)
        for name in ("keeper", "victim"):
            with store.subscribe(name, "order") as sub:
                for _ in range(2):
                    assert sub.try_next()
                    sub.ack()
                    assert sub.try_next()
        return {info.name: info.positions for info in store.subscriptions()}


@pytest.fixture(scope="module")
def damaged_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, ...]]]:
    path = tmp_path_factory.mktemp("subs-verify") / "store"
    return path, _build(path)


def _slot_of(data: bytes, name: str) -> int:
    """The byte position of the slot whose definition names ``name`` (found by its msgpack bytes)."""
    at = data.index(bytes([0xA0 | len(name)]) + name.encode())  # a msgpack fixstr
    slot = at // SLOT * SLOT
    assert slot >= SLOT
    return slot


def _definition_length(data: bytes, slot: int) -> int:
    return int.from_bytes(data[slot + 8 : slot + 12], "little")


def _flip(path: Path, *positions: int) -> None:
    raw = bytearray((path / "SUBSCRIPTIONS").read_bytes())
    for p in positions:
        raw[p] ^= 0xFF
    (path / "SUBSCRIPTIONS").write_bytes(bytes(raw))


def _restore(path: Path, data: bytes) -> None:
    (path / "SUBSCRIPTIONS").write_bytes(data)


def test_verify_reports_every_damaged_byte_of_the_header_and_the_definitions(
    damaged_template: tuple[Path, dict[str, tuple[int, ...]]], tmp_path: Path
) -> None:
    path = tmp_path / "store"
    shutil.copytree(damaged_template[0], path)
    data = (path / "SUBSCRIPTIONS").read_bytes()
    assert verify(str(path)).ok
    spots = list(range(64))  # the header
    for name in ("keeper", "victim"):
        slot = _slot_of(data, name)
        spots += list(range(slot, slot + 24 + _definition_length(data, slot)))  # checksum, L, member, generation, body
    missed = []
    for p in spots:
        _flip(path, p)
        result = verify(str(path))
        mine = [q for q in result.problems if Path(q.path).name == "SUBSCRIPTIONS"]
        if not any(q.position // SLOT == p // SLOT for q in mine):  # in the damaged byte's header or slot
            missed.append((p, [str(q) for q in result.problems]))
        _restore(path, data)
    assert not missed, f"{len(missed)} of {len(spots)} flipped bytes not reported where they are: {missed[:5]}"
    assert verify(str(path)).ok


def test_verify_reports_a_member_whose_two_copies_are_damaged_and_survives_one(
    damaged_template: tuple[Path, dict[str, tuple[int, ...]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    shutil.copytree(damaged_template[0], path)
    before = damaged_template[1]
    data = (path / "SUBSCRIPTIONS").read_bytes()
    slot = _slot_of(data, "victim")
    # Two acks: one copy holds the first position, the other the second.
    first_ack, second_ack = None, before["victim"][0]
    for offset in range(32):
        for copy in (COPY_A, COPY_B):
            _flip(path, slot + copy + offset)
            with logstore.open(path, readonly=True) as ro:
                got = {info.name: info.positions for info in ro.subscriptions()}
            assert got["keeper"] == before["keeper"]
            assert got["victim"][0] <= second_ack and got["victim"][0] > 0, (copy, offset, got)
            first_ack = got["victim"][0] if got["victim"][0] != second_ack else first_ack
            _restore(path, data)
        _flip(path, slot + COPY_A + offset, slot + COPY_B + offset)
        result = verify(str(path))
        mine = [q for q in result.problems if Path(q.path).name == "SUBSCRIPTIONS"]
        assert mine and all(slot <= q.position < slot + SLOT for q in mine), (offset, [str(q) for q in mine])
        _restore(path, data)
    assert first_ack is not None and 0 < first_ack < second_ack  # one of the copies was the older position
    # The command: exit 1, the file and the byte position on the problem's line.
    _flip(path, slot + COPY_A + 30, slot + COPY_B + 30)
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"PROBLEM .*SUBSCRIPTIONS at byte (\d+)", out), out
    _restore(path, data)


def _damage(path: Path, region: str) -> int:
    """Damage the victim's slot (or the header) of ``path``'s SUBSCRIPTIONS; the first damaged byte."""
    data = (path / "SUBSCRIPTIONS").read_bytes()
    slot = _slot_of(data, "victim")
    spots = {
        "header": [9, 40],
        "definition": [slot + 24 + 2],
        "both copies": [slot + COPY_A + 30, slot + COPY_B + 30],
    }[region]
    _flip(path, *spots)
    return spots[0]


@pytest.mark.parametrize("region", ["header", "definition", "both copies"])
def test_repair_dry_run_says_what_it_would_do_and_changes_nothing(
    damaged_template: tuple[Path, dict[str, tuple[int, ...]]],
    tmp_path: Path,
    region: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "store"
    shutil.copytree(damaged_template[0], path)
    _damage(path, region)
    everything = store_files(path, skip={"LOCK"})
    assert main(["repair", "--dry-run", str(path)]) == 0
    out = capsys.readouterr().out
    assert store_files(path, skip={"LOCK"}) == everything
    lines = [line for line in out.splitlines() if "SUBSCRIPTIONS" in line]
    assert lines, out
    assert all(line.startswith("would ") for line in lines), out  # a plan, worded as the log's plan is


@pytest.mark.parametrize("region", ["header", "definition", "both copies"])
def test_repair_mends_subscriptions_and_keeps_the_rest(
    damaged_template: tuple[Path, dict[str, tuple[int, ...]]],
    tmp_path: Path,
    region: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "store"
    shutil.copytree(damaged_template[0], path)
    before = damaged_template[1]
    first = _damage(path, region)
    assert main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "SUBSCRIPTIONS at byte" in out, out
    log_before = store_files(path, skip={"SUBSCRIPTIONS", "LOCK"})

    assert main(["repair", str(path)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert main(["verify", str(path)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    # The log and its indexes are untouched.
    after_repair = store_files(path, skip={"SUBSCRIPTIONS", "LOCK"})
    assert {k: v for k, v in after_repair.items() if not k.startswith("lost+found/")} == log_before
    # The damaged bytes went to lost+found, with a manifest naming the file and the position.
    manifests = [json.loads(m.read_text()) for m in (path / "lost+found").glob("*.json")]
    mine = [m for m in manifests if Path(m["source"]).name == "SUBSCRIPTIONS"]
    assert mine, manifests
    assert any(m["position"] <= first < m["position"] + m["length"] for m in mine), (first, mine)
    for m in mine:
        saved = [p for p in (path / "lost+found").iterdir() if p.suffix != ".json"]
        assert any(p.stat().st_size == m["length"] for p in saved), (m, saved)
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        after = {info.name: info.positions for info in store.subscriptions()}
        assert after["keeper"] == before["keeper"]
        if region == "header":
            assert after == before
        assert "victim" not in after or all(p <= q for p, q in zip(after["victim"], before["victim"], strict=True))
        with store.subscribe("victim", "order") as sub:  # usable again: resumed, or made anew
            assert sub.position == after.get("victim", (0,))[0]
            assert sub.try_next()
            sub.ack()
        with store.subscribe("keeper", "order") as sub:
            assert sub.position == before["keeper"][0]
    assert verify(str(path)).ok
