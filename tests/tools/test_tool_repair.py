"""`logstore repair DIR`: each kind of damage is found by verify, repaired, and every undamaged record survives.

Each case damages a copy of one store, then: verify exits 1 naming the file
(and byte position), repair exits 0, verify exits 0, and every record whose
bytes the damage did not touch reads back at its original global and stream
offsets with equal content.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.index.header import HEADER_SIZE
from logstore.tools.cli import main
from tests.helpers import SMALL_SEGMENT, assert_not_stores_told_apart, segment_records, store_files, with_format_version

Rec = tuple[str, int, int, int]  # (segment file name, byte position, length, global offset)
Template = tuple[Path, dict[int, tuple[str, int, Envelope]], list[Rec]]  # the store, its content, its records


def _build(path: Path) -> None:
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for i in range(420):
            with store.transaction() as tx:
                for name in (f"s{i % 7}", "all"):
                    h = store.head(name)
                    store.append_messages(tx, name, h, [Envelope.new("E", {"s": name, "i": h, "pad": "p" * 120})])


def _content(path: Path) -> dict[int, tuple[str, int, Envelope]]:
    """Global offset -> (stream, stream offset, envelope) of every readable message."""
    out = {}
    with logstore.open(path, readonly=True) as store:
        g = store.open_global(store, 0)
        with g:
            while g.try_next():
                env = g.get()
                out[g.offset()] = (env.message["s"], env.message["i"], env)
        for name in [f"s{i}" for i in range(7)] + ["all"]:
            info = store.stream_info(name)
            assert info is not None
            stream, _ = store.open_stream(store, name, 0)
            with stream:
                offs = []
                while stream.try_next():
                    assert stream.get().message == {"s": name, "i": stream.offset(), "pad": "p" * 120}
                    offs.append(stream.offset())
            assert offs == sorted(offs) and len(set(offs)) == len(offs)
    return out


def _records(path: Path) -> list[Rec]:
    out = []
    for seg in sorted((path / "segments").glob("*.log")):
        out += [(seg.name, pos, rec.length, rec.goff) for pos, rec in segment_records(seg.read_bytes())]
    return out


def _copy(template: Template, path: Path) -> tuple[dict[int, tuple[str, int, Envelope]], list[Rec]]:
    """A copy of the template store at ``path``; returns the template's content and records."""
    base, content, recs = template
    shutil.copytree(base, path)
    return content, recs


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("repair") / "store"
    _build(base)
    return base, _content(base), _records(base)


def _seg(path: Path, i: int) -> Path:
    return sorted((path / "segments").glob("*.log"))[i]


def _flip(file: Path, position: int, bit: int = 0) -> None:
    data = bytearray(file.read_bytes())
    data[position] ^= 1 << bit
    file.write_bytes(bytes(data))


def _middle_record(recs: list[Rec], seg_name: str) -> Rec:
    mine = [r for r in recs if r[0] == seg_name]
    return mine[len(mine) // 2]


# Each case: damage(path, records) -> (file verify must name, byte range of the damage: global offsets touched).
Damage = Callable[[Path, list[Rec]], tuple[str, set[int]]]


def _record_header_flip(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    seg = _seg(path, 0)
    _name, pos, _length, goff = _middle_record(recs, seg.name)
    _flip(seg, pos + 9)  # the stream id field
    return seg.name, {goff}


def _payload_flip(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    seg = _seg(path, 1)
    _name, pos, length, goff = _middle_record(recs, seg.name)
    _flip(seg, pos + length - 20)
    return seg.name, {goff}


def _length_flip(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    seg = _seg(path, 0)
    _name, pos, _length, goff = _middle_record(recs, seg.name)
    _flip(seg, pos + 1, 3)  # the record seems longer (or shorter): resynchronise on the next one
    return seg.name, {goff}


def _segment_header_flip(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    seg = _seg(path, 1)
    _flip(seg, 40)  # capacity field: the header checksum no longer matches
    return seg.name, set()


def _zeroed_block(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    seg = _seg(path, 0)
    data = bytearray(seg.read_bytes())
    lo, hi = 8192, 8192 + 4096
    data[lo:hi] = bytes(hi - lo)
    seg.write_bytes(bytes(data))
    return seg.name, {g for (n, p, ln, g) in recs if n == seg.name and p < hi and p + ln > lo}


def _truncated_segment(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    seg = _seg(path, 1)
    cut = 30000
    with open(seg, "r+b") as f:
        f.truncate(cut)
    return seg.name, {g for (n, p, ln, g) in recs if n == seg.name and p + ln > cut}


def _segment_past_its_capacity(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    """A segment file longer than the capacity its header gives (a file shorter than it is normal)."""
    seg = _seg(path, 0)
    (capacity,) = struct.unpack_from("<Q", seg.read_bytes()[:HEADER_SIZE], 40)
    with open(seg, "r+b") as f:
        f.truncate(capacity + 4096)
    return seg.name, set()


def _missing_pos(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    pos = sorted((path / "segments").glob("*.pos"))[0]
    pos.unlink()
    return pos.name, set()


def _damaged_pos(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    pos = sorted((path / "segments").glob("*.pos"))[1]
    _flip(pos, HEADER_SIZE + 13)
    return pos.name, set()


def _missing_catalog(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    (cat,) = path.glob("catalog.*")
    cat.unlink()
    return cat.name, set()


def _missing_checkpoint(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    (path / "CHECKPOINT").unlink()
    return "CHECKPOINT", set()


def _damaged_checkpoint(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    _flip(path / "CHECKPOINT", HEADER_SIZE + 2)
    return "CHECKPOINT", set()


def _stray_file(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    (path / "segments" / "notes.txt").write_text("not part of a store")
    return "notes.txt", set()


def _missing_middle_segment(path: Path, recs: list[Rec]) -> tuple[str, set[int]]:
    seg = _seg(path, 1)
    seg.unlink()
    return "segments", {g for (n, _p, _ln, g) in recs if n == seg.name}


CASES: dict[str, Damage] = {
    "record-header-bit-flip": _record_header_flip,
    "payload-bit-flip": _payload_flip,
    "length-field-bit-flip": _length_flip,
    "segment-header-bit-flip": _segment_header_flip,
    "zeroed-4k-block": _zeroed_block,
    "truncated-segment": _truncated_segment,
    "segment-past-its-capacity": _segment_past_its_capacity,
    "missing-position-file": _missing_pos,
    "damaged-position-file": _damaged_pos,
    "missing-catalog": _missing_catalog,
    "missing-checkpoint": _missing_checkpoint,
    "damaged-checkpoint": _damaged_checkpoint,
    "stray-file": _stray_file,
    "missing-middle-segment": _missing_middle_segment,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damage_is_found_repaired_and_the_rest_survives(
    case: str,
    template: Template,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "store"
    content, recs = _copy(template, path)
    names, touched = CASES[case](path, recs)
    capsys.readouterr()
    assert main(["verify", "--json", str(path)]) == 1
    found = json.loads(capsys.readouterr().out)["problems"]
    assert any(names in p["file"] for p in found), found
    code = main(["repair", str(path)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["verify", str(path)])
    assert code == 0, capsys.readouterr().out
    capsys.readouterr()
    after = _content(path)
    for goff, value in content.items():
        if goff not in touched:
            assert after.get(goff) == value, f"global offset {goff} changed or is missing"
    assert set(after) <= set(content)
    # Repairing again changes nothing.
    listing = sorted((p.name, p.stat().st_size) for p in path.rglob("*") if p.is_file())
    assert main(["repair", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert sorted((p.name, p.stat().st_size) for p in path.rglob("*") if p.is_file()) == listing
    # Whatever was removed is in lost+found, with a manifest saying where it came from.
    if touched:
        manifests = [json.loads(m.read_text()) for m in (path / "lost+found").glob("*.json")]
        assert manifests and all({"source", "position", "length", "reason"} <= set(m) for m in manifests)


def test_dry_run_changes_nothing(template: Template, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    _payload_flip(path, _copy(template, path)[1])
    before = store_files(path)
    assert main(["repair", "--dry-run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "would " in out and "lost+found" in out
    assert store_files(path) == before


def test_repair_refuses_while_a_writer_has_the_store_open(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with logstore.open(store_dir) as store:
        with store.transaction() as tx:
            store.append_messages(tx, "a", 0, [Envelope.new("E", 1)])
        with logstore.open(store_dir) as other:  # two writers, as two processes would be
            with other.transaction() as tx:
                other.append_messages(tx, "a", 1, [Envelope.new("E", 2)])
            before = store_files(store_dir)
            assert main(["repair", str(store_dir)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"logstore repair: {store_dir}: a writer holds the store"), err
            assert store_files(store_dir) == before
        # One writer left: still refused, and the writer goes on.
        assert main(["repair", str(store_dir)]) == 2
        assert "writer holds" in capsys.readouterr().err
        with store.transaction() as tx:
            store.append_messages(tx, "a", 2, [Envelope.new("E", 3)])
    assert main(["repair", str(store_dir)]) == 0
    with logstore.open(store_dir, readonly=True) as ro:
        assert ro.head("a") == 3


def test_repair_and_compact_refuse_a_directory_that_is_not_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.txt").write_text("hello")
    for cmd in ("repair", "compact", "verify"):
        assert main([cmd, str(tmp_path)]) == 2
        assert "not a logstore store" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["x.txt"]


def test_repair_tells_a_missing_path_and_a_file_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_not_stores_told_apart("repair", tmp_path, lambda: capsys.readouterr().err)


def test_repair_refuses_an_unknown_format_version(
    template: Template, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store"
    _copy(template, path)
    seg = _seg(path, 0)
    seg.write_bytes(with_format_version(seg.read_bytes(), 2))
    before = store_files(path)
    assert main(["repair", str(path)]) == 2
    assert "version" in capsys.readouterr().err
    assert store_files(path) == before


def test_dry_run_prints_the_real_runs_lines_with_thousands_separators(
    template: Template, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("text", "json"):
        _zeroed_block(tmp_path / name, _copy(template, tmp_path / name)[1])
    assert main(["repair", "--dry-run", "--json", str(tmp_path / "json")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert type(plan["bytes_moved"]) is int and plan["bytes_moved"] >= 1000
    assert main(["repair", "--dry-run", str(tmp_path / "text")]) == 0
    planned = capsys.readouterr().out.splitlines()
    assert f"{plan['bytes_moved']:,} bytes to lost+found" in planned[-1]
    assert main(["repair", str(tmp_path / "text")]) == 0
    done = capsys.readouterr().out.splitlines()
    assert [line.removeprefix("would ") for line in planned[:-1]] == [
        line for line in done[:-1] if not line.startswith("rebuilt the indexes from the log")
    ]
    assert any(f"save {plan['bytes_moved']:,} bytes" in line for line in done)
    assert main(["repair", "--json", str(tmp_path / "json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["derived"] == plan["derived"] and report["derived"]
