"""Small engine-side rules: log levels, repair's dry run, the closed store, missing paths, the version.

- The ``logstore`` logger says WARNING only for what an operator must act on
  or know was lost or damaged; rebuilding derived data is INFO.
- ``repair(dry_run=True)`` lists exactly the derived files the real run deletes.
- Every member of :class:`logstore.Store` that reads the store raises
  ``StoreClosedError`` once it is closed; a few stay readable (the table below).
- ``logstore.open(path, readonly=True)`` tells a missing path, a file and a
  directory without a store apart.
- ``logstore --version`` prints ``logstore.__version__``; the README names
  every run-time dependency.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.repair import repair
from logstore.index.header import HEADER_SIZE
from logstore.tools.cli import main
from tests.contract.test_closed_store import RAISES_WHEN_CLOSED
from tests.helpers import SMALL_SEGMENT, quiet_logstore, segment_records


def _fill(store: logstore.Store, transactions: int, pad: int = 100) -> None:
    for i in range(transactions):
        name = f"s{i % 5}"
        with store.transaction() as tx:
            store.append_messages(tx, name, store.head(name), [Envelope.new("E", {"i": i, "pad": "x" * pad})])


def _compactable(path: Path) -> None:
    """A closed store of several segments whose stream ``s1`` is truncated, so compaction rewrites segments."""
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        _fill(store, 600)
        store.truncate_stream("s1", 100)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "logstore" and r.levelno >= logging.WARNING]


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "logstore" and r.levelno == logging.INFO]


def _read_all(store: logstore.Store) -> int:
    with store.open_global(store, 0) as reader:
        return sum(1 for _ in reader)


# -- log levels ----------------------------------------------------------------------------------


def test_read_only_store_opened_before_compaction_reads_after_it_without_warning(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _compactable(store_dir)
    caplog.set_level(logging.INFO, logger="logstore")
    with logstore.open(store_dir) as writer, logstore.open(store_dir, readonly=True) as reader:
        report = writer.compact()
        assert report.segments_rewritten >= 2
        caplog.clear()
        # The reader mapped the old segments; their new position files no longer match: rebuilt.
        assert _read_all(reader) == 500
    assert _warnings(caplog) == []
    assert any("position index" in m and "read from the segment" in m for m in _infos(caplog))


def test_read_only_open_after_a_compaction_swap_without_its_checkpoint_logs_no_warning(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The state a crash between the swap and its checkpoint leaves: old checkpoint, new segment, no .pos."""
    _compactable(store_dir)
    old = {
        p.name: p.read_bytes()
        for p in store_dir.iterdir()
        if p.name == "CHECKPOINT" or p.name.startswith(("catalog.", "msgids.", "categories."))
    }
    with logstore.open(store_dir) as store:
        # Sealed segments only: a roll would checkpoint, and the state below is the one a crash between
        # a swap and its checkpoint leaves.
        rewritten = [Path(p) for p in store.compact(roll=False).rewritten]
    assert rewritten
    for p in [*store_dir.glob("catalog.*"), *store_dir.glob("msgids.*"), *store_dir.glob("categories.*")]:
        p.unlink()
    for name, data in old.items():
        (store_dir / name).write_bytes(data)
    for seg in rewritten:
        seg.with_suffix(".pos").unlink(missing_ok=True)
    caplog.set_level(logging.INFO, logger="logstore")
    with logstore.open(store_dir, readonly=True) as reader:
        # A read-only open rebuilds nothing on disk: it reads those positions from the segments and notes it.
        assert any("from the segment" in note for note in reader.recovery_report.notes)
        assert _read_all(reader) == 500
    assert _warnings(caplog) == []
    assert any("position index missing or stale" in m for m in _infos(caplog))
    with logstore.open(store_dir):  # the next writable open rewrites the position files
        pass


def _flip_middle_record(path: Path) -> None:
    seg = sorted((path / "segments").glob("*.log"))[1]
    data = bytearray(seg.read_bytes())
    positions = [(pos, rec.length) for pos, rec in segment_records(data)]
    at, length = positions[len(positions) // 2]
    data[at + length - 20] ^= 1
    seg.write_bytes(bytes(data))


def test_successful_repair_logs_no_warning(store_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, 600)
    _flip_middle_record(store_dir)
    caplog.set_level(logging.INFO, logger="logstore")
    report = repair(str(store_dir))
    assert report.changed and report.records_lost == 1
    assert _warnings(caplog) == []
    assert any("CHECKPOINT is missing" in m for m in _infos(caplog))


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_a_catalog_missing_or_damaged_for_good_is_rebuilt_with_a_warning(
    store_dir: Path, caplog: pytest.LogCaptureFixture, readonly: bool
) -> None:
    """A catalog a live writer replaced meanwhile is loaded again quietly (tests/unit/test_live_readers.py);
    one that stays missing or damaged is rebuilt from the log, and that is worth a warning."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, 20)
    (catalog,) = store_dir.glob("catalog.*")
    saved = catalog.read_bytes()
    catalog.unlink()
    caplog.set_level(logging.INFO, logger="logstore")
    with logstore.open(store_dir, readonly=readonly) as store:
        assert store.global_head == 20 and "all indexes" in store.recovery_report.rebuilt
    assert any("index files unusable" in m for m in _warnings(caplog))
    caplog.clear()
    if readonly:  # put back a damaged copy of the catalog the checkpoint names
        catalog.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    else:  # the writable open above wrote a new one
        (catalog,) = store_dir.glob("catalog.*")
        data = bytearray(catalog.read_bytes())
        data[-1] ^= 1
        catalog.write_bytes(bytes(data))
    with logstore.open(store_dir, readonly=readonly) as store:
        assert store.global_head == 20
    assert any("index files unusable" in m for m in _warnings(caplog))
    if readonly:
        with logstore.open(store_dir):  # the next writable open rewrites the catalog
            pass


def test_what_was_lost_or_damaged_is_still_a_warning(store_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged CHECKPOINT, and a torn tail cut into lost+found, stay warnings."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, 10)
    ckpt = store_dir / "CHECKPOINT"
    data = bytearray(ckpt.read_bytes())
    data[HEADER_SIZE + 2] ^= 1
    ckpt.write_bytes(bytes(data))
    caplog.set_level(logging.INFO, logger="logstore")
    with logstore.open(store_dir) as store:
        assert store.global_head == 10
    assert any("CHECKPOINT is damaged" in m for m in _warnings(caplog))
    caplog.clear()
    # A torn tail: a writer dies, leaving garbage after its last record.
    seg = sorted((store_dir / "segments").glob("*.log"))[-1]
    store = logstore.open(store_dir)
    _fill(store, 3)
    end = store._log.segments[-1].end
    store._abandon()
    with open(seg, "r+b") as f:
        f.seek(end)
        f.write(b"\x07" * 40)
    with logstore.open(store_dir) as store:
        assert store.recovery_report.cut is not None
        assert store.global_head == 13
    warned = _warnings(caplog)
    assert any("recovery cut the log" in m for m in warned)
    assert any("opened after recovery" in m for m in warned)


# -- repair --dry-run names what the real run does ------------------------------------------------


def _stray_files(path: Path) -> None:
    (path / "notes.txt").write_text("not part of a store")
    (path / "catalog.junk").write_text("a name like a catalog's, not one")
    (path / "segments" / "x.pos").write_text("a name like a position file's, not one")
    (path / "streams" / "abc.runs").write_text("a name like a run file's, not one")


def _damaged_checkpoint(path: Path) -> None:
    ckpt = path / "CHECKPOINT"
    data = bytearray(ckpt.read_bytes())
    data[HEADER_SIZE + 2] ^= 1
    ckpt.write_bytes(bytes(data))


def _missing_middle_segment(path: Path) -> None:
    sorted((path / "segments").glob("*.log"))[1].unlink()


STATES: dict[str, Callable[[Path], None]] = {
    "damaged-record": _flip_middle_record,
    "damaged-record-and-stray-files": lambda p: (_flip_middle_record(p), _stray_files(p)),
    "stray-files": _stray_files,
    "missing-checkpoint": lambda p: (p / "CHECKPOINT").unlink(),
    "damaged-checkpoint": _damaged_checkpoint,
    "missing-middle-segment": _missing_middle_segment,
    "missing-position-file": lambda p: sorted((p / "segments").glob("*.pos"))[0].unlink(),
}


@pytest.fixture(scope="module")
def repair_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed store of several segments whose streams are large enough for run files of their own."""
    path = tmp_path_factory.mktemp("dry-run") / "store"
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        _fill(store, 700, pad=20)
    assert list((path / "streams").glob("*.runs"))
    return path


@pytest.mark.parametrize("state", sorted(STATES))
def test_dry_run_names_exactly_what_the_real_run_does(repair_template: Path, tmp_path: Path, state: str) -> None:
    path = tmp_path / "store"
    shutil.copytree(repair_template, path)
    STATES[state](path)
    before = {str(p) for p in path.rglob("*")}
    with quiet_logstore():
        plan = repair(str(path), dry_run=True)
        assert {str(p) for p in path.rglob("*")} == before, "a dry run changes nothing"
        done = repair(str(path))
    assert plan.changed and done.changed
    # The same plan line by line; the real run adds the rebuild's report at the end.
    assert done.actions[-1].startswith("rebuilt the indexes from the log")
    assert plan.actions == done.actions[:-1]
    assert plan.derived == done.derived
    assert set(done.derived) <= before, "only files that were there are deleted"
    assert any(p.endswith("CHECKPOINT") for p in done.derived) == (str(path / "CHECKPOINT") in before)
    assert f"delete {len(done.derived):,} derived index files (rebuilt from the log)" in done.actions


# -- a closed store ------------------------------------------------------------------------------

# Every public member of Store, and what it does once the store is closed (the members that raise, on every
# backend, are in tests/contract/test_closed_store.py). A member missing from both tables fails the last test,
# so a new one must be classified there or here.
STAYS_READABLE = ("path", "durability", "readonly", "closed", "max_envelope_size", "recovery_report")
OTHER = ("close",)  # idempotent: closing a closed store does nothing


def _closed_store(path: Path, readonly: bool) -> logstore.Store:
    if not readonly:
        store = logstore.open(path, segment_size=SMALL_SEGMENT)
        _fill(store, 1)
    else:
        with logstore.open(path, segment_size=SMALL_SEGMENT) as writer:
            _fill(writer, 1)
        store = logstore.open(path, readonly=True)
    store.close()
    return store


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "read-only"])
def test_settings_and_the_recovery_report_stay_readable_after_close(store_dir: Path, readonly: bool) -> None:
    store = _closed_store(store_dir, readonly)
    assert store.closed is True
    assert store.path == str(store_dir)
    assert store.readonly is readonly
    assert store.durability == "fsync"
    assert store.max_envelope_size > 0
    assert store.recovery_report.summary()
    store.close()  # again: nothing happens
    assert "closed" in repr(store)


def test_every_public_member_is_classified() -> None:
    store_members = {n for n in dir(logstore.Store) if not n.startswith("_")}
    instance = {"path", "durability", "readonly"}  # set in __init__
    classified = set(STAYS_READABLE) | set(RAISES_WHEN_CLOSED) | set(OTHER)
    assert store_members | instance == classified


# -- a path that is not a store ------------------------------------------------------------------


def _missing(tmp: Path) -> Path:
    return tmp / "missing"


def _file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file"


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _other_files(tmp: Path) -> Path:
    (tmp / "photos").mkdir()
    (tmp / "photos" / "holiday.jpg").write_bytes(b"\xff\xd8")
    return tmp / "photos"


@pytest.mark.parametrize(
    ("make", "error", "said"),
    [
        (_missing, FileNotFoundError, "no such directory"),
        (_file, NotADirectoryError, "not a directory"),
        (_empty, FileNotFoundError, "not a logstore store"),
        (_other_files, FileNotFoundError, "not a logstore store"),
    ],
    ids=["missing", "file", "empty-directory", "directory-of-other-files"],
)
def test_read_only_open_says_what_the_path_is(
    tmp_path: Path, make: Callable[[Path], Path], error: type[Exception], said: str
) -> None:
    path = make(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(error) as info:
        logstore.open(path, readonly=True)
    assert str(info.value) == f"{path}: {said}"
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_writable_open_of_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    path = _file(tmp_path)
    with pytest.raises(NotADirectoryError, match=r": not a directory"):
        logstore.open(path)


# -- the version -----------------------------------------------------------------------------------


def test_version_is_printed_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", logstore.__version__)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"logstore {logstore.__version__}\n"
    done = subprocess.run(
        [sys.executable, "-m", "logstore", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"logstore {logstore.__version__}\n", "")


# -- the README names every run-time dependency ----------------------------------------------------


def test_readme_dependency_sentence_names_every_runtime_dependency() -> None:
    root = Path(__file__).resolve().parents[2]
    with open(root / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    names = [re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] for d in deps]
    readme = (root / "README.md").read_text()
    sentence = re.search(r"It depends on (.*?)runs on Linux", readme, flags=re.DOTALL)
    assert sentence is not None, "the README's dependency sentence is gone"
    missing = [n for n in names if n not in sentence.group(1)]
    assert missing == [], f"the README's dependency sentence leaves out {missing}"
