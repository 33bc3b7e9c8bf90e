"""The modules that give each shared fact of the engine one home.

- :func:`logstore.errors.as_corruption` turns the index layer's decoding
  errors into the engine's: an unknown format version into
  ``FormatVersionError``, other damage into ``CorruptionError`` with the
  file's path, the decoder's position and the caller's prefix and hint.
- :mod:`logstore.embedded.lock` takes, probes and releases the writer lock; a copy of
  the lock's descriptor (as a forked child holds) is dropped without
  releasing the lock, and a release unlocks whatever copies remain.
- :class:`logstore.embedded.lostfound.LostFound` writes what recovery and repair take
  out of the log: a ``.bin`` and a manifest with the same fields for both
  producers, under names that are never reused.
- :mod:`logstore.embedded.layout` names the store's files as docs/FORMAT.md draws
  them, and tells a segment's or run file's name from anything else.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from logstore.embedded import layout
from logstore.embedded.fileio import default_io
from logstore.embedded.lock import drop_lock_in_child, release_writer_lock, take_writer_lock, writer_is_live
from logstore.embedded.lostfound import RECOVERY, REPAIR, LostFound
from logstore.errors import CorruptionError, FormatVersionError, StoreLockedError, as_corruption
from logstore.index.errors import FormatError, UnsupportedVersionError


def test_as_corruption_names_the_file_the_position_and_the_hint() -> None:
    with pytest.raises(CorruptionError) as info, as_corruption("/s/CHECKPOINT", "header: ", "run logstore repair"):
        raise FormatError(24, "checksum mismatch")
    assert type(info.value) is CorruptionError
    assert str(info.value) == "/s/CHECKPOINT at byte 24: header: checksum mismatch (run logstore repair)"
    assert (info.value.path, info.value.position, info.value.what) == ("/s/CHECKPOINT", 24, "header: checksum mismatch")
    assert info.value.__suppress_context__


def test_as_corruption_reports_an_unknown_version_without_the_repair_hint() -> None:
    with pytest.raises(FormatVersionError) as info, as_corruption("/s/a.pos", "x: ", "run logstore repair"):
        raise UnsupportedVersionError(4, "format version 9 is not supported", 9)
    assert str(info.value) == "/s/a.pos at byte 4: x: format version 9 is not supported"


def test_as_corruption_with_versions_only_lets_other_damage_through() -> None:
    with pytest.raises(FormatError) as info, as_corruption("/s/a.pos", versions_only=True):
        raise FormatError(7, "short")
    assert not isinstance(info.value, CorruptionError)
    assert (info.value.position, info.value.what) == (7, "short")
    with pytest.raises(FormatVersionError), as_corruption("/s/a.pos", versions_only=True):
        raise UnsupportedVersionError(4, "format version 9 is not supported", 9)


def test_as_corruption_leaves_other_errors_and_success_alone() -> None:
    with as_corruption("/s/x"):
        value = 1
    assert value == 1
    with pytest.raises(OSError), as_corruption("/s/x"):
        raise FileNotFoundError("/s/x")


def test_the_writer_lock_is_taken_once_probed_and_released(tmp_path: Path) -> None:
    io = default_io()
    path = str(tmp_path)
    assert not writer_is_live(path)
    assert not (tmp_path / "LOCK").exists()  # the probe creates nothing
    fd = take_writer_lock(io, path, "somebody has it")
    assert (tmp_path / "LOCK").is_file()
    assert writer_is_live(path)
    with pytest.raises(StoreLockedError) as info:
        take_writer_lock(io, path, "somebody has it")
    assert str(info.value) == f"{path}: somebody has it"
    assert writer_is_live(path)  # the failed attempt changed nothing
    release_writer_lock(io, fd)
    assert not writer_is_live(path)
    release_writer_lock(io, take_writer_lock(io, path, "x"))


def test_a_copy_of_the_lock_descriptor_is_dropped_without_unlocking(tmp_path: Path) -> None:
    io = default_io()
    path = str(tmp_path)
    fd = take_writer_lock(io, path, "busy")
    copy = os.dup(fd)  # shares the open file description, as a forked child's descriptor does
    drop_lock_in_child(io, copy)
    assert writer_is_live(path)
    copy = os.dup(fd)
    release_writer_lock(io, fd)  # the holder's release unlocks, though a copy stays open
    assert not writer_is_live(path)
    os.close(copy)


MANIFEST_KEYS = ["source", "position", "length", "reason", "by", "time"]


@pytest.mark.parametrize("by", [RECOVERY, REPAIR])
def test_lost_found_saves_bytes_with_one_manifest_format(tmp_path: Path, by: str) -> None:
    (tmp_path / "segments").mkdir()
    source = str(tmp_path / "segments" / "00000000000000000007.log")
    lf = LostFound(default_io(), str(tmp_path), by)
    first = lf.save(b"torn", source, 99, "record checksum mismatch")
    again = lf.save(b"torn!", source, 99, "record checksum mismatch")
    assert [Path(p).suffix for p in first + again] == [".bin", ".json", ".bin", ".json"]
    label = "00000000000000000007.log" if by == RECOVERY else "repair-segments_00000000000000000007.log"
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}-{re.escape(label)}-99\.bin", Path(first[0]).name)
    assert Path(again[0]).name == Path(first[0]).name[: -len(".bin")] + ".2.bin"  # never overwritten
    assert Path(first[0]).read_bytes() == b"torn" and Path(again[0]).read_bytes() == b"torn!"
    manifest = json.loads(Path(again[1]).read_text())
    assert list(manifest) == MANIFEST_KEYS
    assert manifest["source"] == os.path.join("segments", "00000000000000000007.log")
    assert (manifest["position"], manifest["length"], manifest["by"]) == (99, 5, by)
    assert manifest["reason"] == "record checksum mismatch"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["time"])
    assert (tmp_path / "lost+found").stat().st_mode & 0o777 == 0o700


def test_lost_found_writes_only_a_manifest_when_no_bytes_are_left_and_moves_files_whole(tmp_path: Path) -> None:
    lf = LostFound(default_io(), str(tmp_path), REPAIR)
    only = lf.save(b"", str(tmp_path / "segments" / "00000000000000000005.log"), 0, "segment missing")
    assert len(only) == 1 and only[0].endswith(".json")
    assert json.loads(Path(only[0]).read_text())["length"] == 0
    stray = tmp_path / "stray.txt"
    stray.write_bytes(b"12345")
    moved = lf.move(str(stray), "stray file")
    assert not stray.exists() and Path(moved[0]).read_bytes() == b"12345"
    manifest = json.loads(Path(moved[1]).read_text())
    assert (manifest["source"], manifest["position"], manifest["length"]) == ("stray.txt", 0, 5)
    with pytest.raises(ValueError, match="not a lost\\+found producer"):
        LostFound(default_io(), str(tmp_path), "me")


def test_layout_names_the_files_as_the_format_draws_them() -> None:
    assert layout.segment_name(38) == "00000000000000000038.log"
    assert layout.position_name(38) == "00000000000000000038.pos"
    assert layout.runs_name(0) == "0000000000.runs"
    assert layout.catalog_name(2) == "catalog.00000000000000000002"
    assert layout.segment_path("/s", 2**64 - 1) == "/s/segments/18446744073709551615.log"
    assert layout.runs_path("/s", 2**32 - 1) == "/s/streams/4294967295.runs"
    assert layout.catalog_path("/s", 7) == "/s/catalog.00000000000000000007"
    assert (layout.checkpoint_path("/s"), layout.lock_path("/s")) == ("/s/CHECKPOINT", "/s/LOCK")
    assert (layout.segments_dir("/s"), layout.streams_dir("/s"), layout.lost_found_dir("/s")) == (
        "/s/segments",
        "/s/streams",
        "/s/lost+found",
    )
    assert layout.position_path_of("/s/segments/00000000000000000038.log") == "/s/segments/00000000000000000038.pos"
    assert layout.segment_path_of("00000000000000000038.pos") == "00000000000000000038.log"
    assert layout.segment_first("00000000000000000038.log") == 38
    assert layout.STORE_DIRS == ("segments", "streams", "lost+found")


@pytest.mark.parametrize(
    ("name", "segment", "runs", "catalog"),
    [
        ("00000000000000000038.log", True, False, False),
        ("0000000000000000038.log", False, False, False),  # 19 digits
        ("0000000000000000003x.log", False, False, False),
        ("00000000000000000038.log.tmp", False, False, False),
        ("00000000000000000038.pos", False, False, False),
        ("0000000004.runs", False, True, False),
        ("000000004.runs", False, False, False),
        ("catalog.00000000000000000002", False, False, True),
        ("catalog.00000000000000000002.tmp", False, False, True),
        ("catalog.x", False, False, False),
        ("CHECKPOINT", False, False, False),
    ],
)
def test_layout_tells_the_store_s_file_names_apart(name: str, segment: bool, runs: bool, catalog: bool) -> None:
    assert (layout.is_segment_name(name), layout.is_runs_name(name), layout.is_catalog_name(name)) == (
        segment,
        runs,
        catalog,
    )
