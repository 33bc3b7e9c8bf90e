"""Hostile input: stream names, planted symbolic links, file modes, more writers, a full disk, a file cut short.

Every test here checks what the engine really does with input an attacker, a
careless operator or a full disk could give it: names never become paths, a
link planted in the store is never followed, files are private whatever the
umask, writer processes and forked children share a store without taking each
other's locks, and running out of space or a file cut under a reader gives an
exception, never a signal.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import logstore
from logstore import Envelope
from logstore.embedded.lock import writer_is_live
from logstore.embedded.repair import repair
from logstore.embedded.store import processes_of
from logstore.embedded.verify import verify
from logstore.index.runs import LARGE_RUNS
from tests.helpers import SMALL_SEGMENT, assert_verified, run_python, spawn_python

ROOT = Path(__file__).resolve().parents[2]
FIRST = f"{0:020d}"  # the first segment's stem
OUTSIDE = b"precious bytes outside the store\n" * 64
CHILD_TIMEOUT = 60  # seconds; a guard against a hang, never a wait

# -- helpers -----------------------------------------------------------------------------------


def env(name: str, i: int, pad: int = 0) -> Envelope:
    return Envelope.new("Hostile", {"stream": name, "i": i, "pad": "p" * pad})


Snapshot = dict[str, tuple[int, int, int, int, int, str | None]]


def snapshot_tree(root: Path, skip: Path | None = None) -> Snapshot:
    """Every name under ``root`` (not following links, leaving out ``skip``): inode, times, size, mode, link target."""
    out: Snapshot = {}

    def add(p: str) -> None:
        st = os.lstat(p)
        link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
        out[os.path.relpath(p, root)] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode, link)

    add(str(root))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if skip is None or Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            add(os.path.join(dirpath, name))
    return out


def _but_control(snap: dict[str, Any]) -> dict[str, Any]:
    return {name: facts for name, facts in snap.items() if name != "CONTROL"}


DOCUMENTED = re.compile(
    r"LOCK|CONTROL|CHECKPOINT|catalog\.\d{20}|categories\.\d{20}|names\.\d{20}|msgids\.\d{20}|msgids-\d{20}\.run|segments|streams|lost\+found"
    r"|segments/\d{20}\.(log|pos)"
    r"|streams/\d{10}\.runs"
    r"|lost\+found/\d{8}T\d{6}-(\d{20}\.log|repair-[^/]+)-\d+(\.\d+)?\.(bin|json)"
)
"""Every name docs/FORMAT.md section 2 allows in a closed store (temporaries are gone after a clean close)."""


def store_names(store_path: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(store_path):
        for name in dirnames + filenames:
            names.append(os.path.relpath(os.path.join(dirpath, name), store_path))
    return sorted(names)


def file_contents(store_path: Path) -> dict[str, bytes | str | None]:
    """Each name in the store: a file's bytes, a link's target, None for a directory."""
    out: dict[str, bytes | str | None] = {}
    for rel in store_names(store_path):
        p = store_path / rel
        out[rel] = os.readlink(p) if p.is_symlink() else None if p.is_dir() else p.read_bytes()
    return out


def assert_documented_layout(store_path: Path) -> None:
    """Only names of docs/FORMAT.md's layout, no link, and no stream name as a file name."""
    for rel in store_names(store_path):
        assert DOCUMENTED.fullmatch(rel), f"{rel!r} is not a name docs/FORMAT.md documents"
        assert not os.path.islink(store_path / rel), rel


def run_child(code: str, *args: str, timeout: float = CHILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this checkout importable; the timeout only guards against a hang."""
    return run_python(code, *args, timeout=timeout)


def last_json(out: str) -> dict[str, object]:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    return json.loads(lines[-1])


# -- stream names ------------------------------------------------------------------------------

MOJIBAKE = "\u00e9".encode().decode("latin-1")  # "é" as UTF-8 bytes read as latin-1: "Ã©"

HOSTILE_NAMES = [
    # path traversal and separators
    "../escape",
    "../../../../../../../../../../etc/passwd",
    "..",
    ".",
    "/",
    "/absolute",
    "a/b",
    "a\\b",
    "..\\..\\escape",
    # path-normalisation look-alikes: all distinct from each other
    "a/../b",
    "b",
    "a/./b",
    "a//b",
    "./b",
    "b/",
    "b/.",
    # names of the store's own files
    "LOCK",
    "CHECKPOINT",
    "CHECKPOINT.tmp",
    "segments",
    "lost+found",
    "catalog.00000000000000000001",
    f"segments/{FIRST}.log",
    f"segments/{FIRST}.log.tmp",
    "streams/0000000000.runs",
    ".compact",
    # names special elsewhere
    "CON",
    "nul",
    "a:b",
    "~",
    "$HOME",
    "*",
    "?",
    # percent-encoding look-alikes
    "a%2Fb",
    "a%2fb",
    "%2e%2e%2fescape",
    "%2E%2E/escape",
    "a%00b",
    "a%5Cb",
    # case: every one distinct (no case folding)
    "order",
    "Order",
    "ORDER",
    "\u00df",  # ß
    "ss",
    "SS",
    "\u1e9e",  # ẞ
    "K",
    "k",
    "\u212a",  # KELVIN SIGN
    "\u0130",  # İ
    "i\u0307",  # i + COMBINING DOT ABOVE: what İ lower-cases to
    "\u0131",  # LATIN SMALL LETTER DOTLESS I
    # NFC and NFD (and NFKC) forms of the same text
    "\u00e9",  # é precomposed
    "e\u0301",  # e + COMBINING ACUTE
    "\u00c5",  # Å
    "A\u030a",  # A + COMBINING RING
    "\u212b",  # ANGSTROM SIGN
    "\ufb01",  # ﬁ ligature
    "fi",
    # UTF-8 bytes read as latin-1
    MOJIBAKE,
    "caf\u00e9",
    "caf" + MOJIBAKE,
    # right to left
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0627\u0644\u0633\u0644\u0627\u0645",
    "\u202eabc",
    "abc\u202e",
    # emoji
    "\U0001f680",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467",  # a ZWJ family
    "\U0001f1fa\U0001f1f8",  # a flag: two regional indicators
    "\U0001f1fa",
    "\U0001f44d",
    "\U0001f44d\U0001f3fd",
    # invisible and control characters
    " ",
    "\t",
    "\n",
    "\r\n",
    "\u200b",
    "a\u200bb",
    "ab",
    "\ufeffab",
    "\x01",
    "\x7f",
    # at the length limit, differing only in the last byte
    "x" * logstore.MAX_STREAM_NAME,
    "x" * (logstore.MAX_STREAM_NAME - 1) + "y",
    "\u00e9" * (logstore.MAX_STREAM_NAME // 2),
]
NEAR_MISSES = ["B", "a/c", "escape", "etc/passwd", "E\u0301", "\u00e9\u00e9", "Ss", "x" * 1023, "order "]
"""Names never written: variants a store that normalised or folded names might take for one of the above."""


class Written:
    """What the store must hold: each stream's envelopes, the order of first commits, the global log."""

    def __init__(self) -> None:
        self.streams: dict[str, list[Envelope]] = {}
        self.order: list[str] = []
        self.log: list[Envelope] = []

    def commit(self, store: logstore.Store, appends: list[tuple[str, int]], pad: int = 0) -> None:
        """One transaction appending ``count`` envelopes to each ``(name, count)``."""
        with store.transaction() as tx:
            for name, count in appends:
                have = self.streams.setdefault(name, [])
                if name not in self.order:
                    self.order.append(name)
                batch = [env(name, len(have) + k, pad) for k in range(count)]
                store.append_messages(tx, name, len(have), batch)
                have.extend(batch)
                self.log.extend(batch)

    def check(self, store: logstore.Store) -> None:
        assert store.stream_names() == self.order
        for name, batch in self.streams.items():
            assert store.head(name) == len(batch), name
            assert store.stream_info(name) == (0, len(batch), False), name
            reader, found = store.open_stream(store, name, 0)
            with reader:
                assert found is True, name
                assert list(reader) == batch, name
        for name in NEAR_MISSES:
            assert store.head(name) == 0, name
            assert store.stream_info(name) is None, name
        with store.open_global(store, 0) as everything:
            assert list(everything) == self.log


def test_hostile_stream_names_are_distinct_streams_that_never_become_paths(store_dir):
    names = HOSTILE_NAMES
    assert len(set(names)) == len(names)
    assert all(1 <= len(n.encode()) <= logstore.MAX_STREAM_NAME for n in names)
    parent = store_dir.parent
    # Files where a name taken as a path would land.
    for rel in ("escape", "b", "etc/passwd", "absolute", "segments/escape"):
        (parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (parent / rel).write_bytes(OUTSIDE)
    names = [*names, str(parent / "absolute")]  # an absolute path that exists
    logstore.open(store_dir, segment_size=SMALL_SEGMENT).close()
    before = snapshot_tree(parent, skip=store_dir)
    written = Written()
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, durability="none") as store:
        written.commit(store, [(n, 1) for n in names])  # every stream created in one transaction
        for k in range(3):  # more messages to most streams, interleaved in transactions of many streams
            written.commit(store, [(n, 1 + (i + k) % 2) for i, n in enumerate(names) if i % 3 > k % 3])
        # Two streams with more than LARGE_RUNS runs, so that they get run files, across segment rolls.
        for _ in range(LARGE_RUNS + 3):
            written.commit(store, [("streams/0000000000.runs", 1), ("../escape", 1)], pad=200)
        assert len(store._log.segments) > 1
        written.check(store)
    assert_documented_layout(store_dir)
    large = sorted(f"{written.order.index(n):010d}.runs" for n in ("streams/0000000000.runs", "../escape"))
    assert sorted(os.listdir(store_dir / "streams")) == large  # run files are named by stream id, never by name
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.checkpoint == "clean"
        written.check(store)
    # Rebuild from the log alone: no checkpoint, catalog, position or run file.
    removed = 0
    for rel in store_names(store_dir):
        if rel == "CHECKPOINT" or rel.startswith("catalog.") or rel.endswith((".pos", ".runs")):
            os.unlink(store_dir / rel)
            removed += 1
    assert removed >= 6
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert "all indexes" in store.recovery_report.rebuilt
        written.check(store)
    assert_documented_layout(store_dir)
    with logstore.open(store_dir, readonly=True) as store:
        written.check(store)
    assert snapshot_tree(parent, skip=store_dir) == before
    for rel in ("escape", "b", "etc/passwd", "absolute", "segments/escape"):
        assert (parent / rel).read_bytes() == OUTSIDE


def test_stream_names_over_1024_utf8_bytes_are_refused_and_leave_no_trace(store_dir):
    limit = logstore.MAX_STREAM_NAME
    assert limit == 1024  # README "Limits" and FORMAT.md section 15
    ten_kb = ("../" + "long name, ") * 800
    assert len(ten_kb.encode()) > 10_000
    at_limit = "x" * (limit - 4) + "\U0001f680"  # the 4-byte character ends exactly at the limit
    over = "x" * (limit - 3) + "\U0001f680"  # the same, one byte further
    written = Written()
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written.commit(store, [("s", 2)])
    parent = store_dir.parent
    before = snapshot_tree(parent, skip=store_dir)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        mid = snapshot_tree(parent)
        for name, size in ((ten_kb, len(ten_kb.encode())), (over, limit + 1), (ten_kb[:limit] + "\u00e9", limit + 2)):
            tx, committer = store.begin_tx()
            with pytest.raises(ValueError, match=rf"stream name is {size} UTF-8 bytes, the limit is {limit}"):
                store.append_messages(tx, name, 0, [env("x", 0)])
            with pytest.raises(ValueError, match="the limit is 1024"):
                store.open_stream(store, name, 0)
            with pytest.raises(ValueError, match="the limit is 1024"):
                store.truncate_stream(name, 0)
            with pytest.raises(ValueError, match="the limit is 1024"):
                store.delete_stream(name)
            assert committer.commit() == range(2, 2)  # nothing was added to the transaction
        for name, what in (("../\x00", "NUL"), ("a\x00", "NUL"), ("../\udc80", "UTF-8"), ("\ud83d", "UTF-8")):
            tx, committer = store.begin_tx()
            with pytest.raises(ValueError, match=what):
                store.append_messages(tx, name, 0, [env("x", 0)])
            committer.rollback()
        assert snapshot_tree(parent) == mid  # the refusals wrote nothing
        written.commit(store, [(at_limit, 1), (at_limit[:-1] + "\U0001f681", 1)])
        written.check(store)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written.check(store)
    assert_documented_layout(store_dir)
    assert snapshot_tree(parent, skip=store_dir) == before


# -- planted symbolic links ------------------------------------------------------------------------


def make_store(path: Path, *, large: bool = False) -> Written:
    """A closed store: stream "s" (3 messages), and with ``large`` a stream "big" with a run file."""
    written = Written()
    with logstore.open(path, segment_size=SMALL_SEGMENT, durability="none") as store:
        written.commit(store, [("s", 3)])
        if large:
            for _ in range(LARGE_RUNS + 2):
                written.commit(store, [("big", 1), ("s", 1)])
    if large:
        assert (path / "streams" / "0000000000.runs").exists()
    return written


def tear_tail(path: Path, written: Written) -> None:
    """Leave a torn record after the last commit, which the next writable open cuts into lost+found."""
    store = logstore.open(path, segment_size=SMALL_SEGMENT)
    end = store._log.active.end
    active = store._log.active.path
    store._abandon()
    with open(active, "r+b") as f:
        f.seek(end)
        f.write(b"\x99" * 40)


def current_catalog(path: Path) -> str:
    (name,) = [n for n in os.listdir(path) if n.startswith("catalog.")]
    return name


# (name planted as a link, "file" or "dir", what the engine does with it)
#  refused: logstore.open raises OSError(ELOOP) naming the link, and changes nothing
#  removed: the engine deletes or replaces the link itself (never its target) and works on
LINK_CASES = {
    "LOCK": ("LOCK", "file", "refused"),
    "CONTROL": ("CONTROL", "file", "refused"),
    "CHECKPOINT": ("CHECKPOINT", "file", "refused"),
    "segment": (f"segments/{FIRST}.log", "file", "refused"),
    "run-file": ("streams/0000000000.runs", "file", "refused"),
    "catalog": ("{catalog}", "file", "removed"),
    "next-catalog": ("catalog.00000000000000000099", "file", "removed"),
    "catalog-tmp": ("{catalog}.tmp", "file", "removed"),
    "CHECKPOINT-tmp": ("CHECKPOINT.tmp", "file", "removed"),
    "segment-tmp": ("segments/00000000000000000099.log.tmp", "file", "removed"),
    "compact": (f"segments/{FIRST}.log.compact", "file", "removed"),
    "repair": (f"segments/{FIRST}.log.repair", "file", "removed"),
    "stale-position-file": ("segments/00000000000000000099.pos", "file", "removed"),
    "segments-dir": ("segments", "dir", "refused"),
    "streams-dir": ("streams", "dir", "refused"),
    "lost+found-dir": ("lost+found", "dir", "refused"),
}


@pytest.fixture(params=["target-exists", "target-missing"])
def outside(request, tmp_path) -> Iterator[tuple[Path, bool]]:
    """Where a planted link points: a directory of precious files, or a name that must never be created."""
    place = tmp_path / "outside"
    place.mkdir()
    exists = request.param == "target-exists"
    yield place, exists


def plant(store_path: Path, rel: str, kind: str, place: Path, exists: bool) -> tuple[Path, Path]:
    """Put a link at ``rel`` pointing into ``place``; move what was there aside. Returns (link, target)."""
    link = store_path / rel
    target = place / ("dir" if kind == "dir" else "file")
    if exists:
        if kind == "dir":
            target.mkdir()
            # Names the engine deletes or creates in its directories.
            for name in ("precious.tmp", "precious.pos", f"{FIRST}.log.compact", "0000000000.runs", "x.json"):
                (target / name).write_bytes(OUTSIDE)
        else:
            target.write_bytes(OUTSIDE)
    if os.path.lexists(link):
        os.rename(link, place / "aside")
    os.symlink(target, link)
    return link, target


def unplant(link: Path, place: Path) -> None:
    os.unlink(link)
    if os.path.lexists(place / "aside"):
        os.rename(place / "aside", link)


@pytest.mark.parametrize("case", LINK_CASES.values(), ids=LINK_CASES.keys())
def test_planted_symlink_is_never_followed(store_dir, outside, case):
    rel, kind, outcome = case
    place, exists = outside
    written = make_store(store_dir, large=True)
    if rel == "lost+found":
        tear_tail(store_dir, written)  # so that the open has something to save in lost+found
    rel = rel.format(catalog=current_catalog(store_dir))
    link, target = plant(store_dir, rel, kind, place, exists)
    parent = store_dir.parent
    before = snapshot_tree(parent, skip=store_dir)
    inside = snapshot_tree(store_dir)
    contents = file_contents(store_dir)
    if outcome == "refused":
        with pytest.raises(OSError) as info:
            logstore.open(store_dir, segment_size=SMALL_SEGMENT)
        assert info.value.errno == errno.ELOOP
        assert info.value.filename == str(link)
        if rel == "streams/0000000000.runs":
            # The run file is unreadable, so the open rebuilds every index and checkpoints: the position
            # file is written afresh (the same bytes) before the run file refuses. Nothing else changes.
            assert _but_control(file_contents(store_dir)) == _but_control(contents)
        else:
            # A refused open changes nothing but CONTROL, the processes' shared state, which every open
            # joins before it reads the log and whose bytes change at every open (docs/FORMAT.md 12a).
            assert _but_control(snapshot_tree(store_dir)) == _but_control(inside)
    else:
        with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
            written.check(store)
            written.commit(store, [("s", 1)])
        assert not os.path.islink(link)
    assert snapshot_tree(parent, skip=store_dir) == before
    if exists and kind == "file":
        assert target.read_bytes() == OUTSIDE
    if not exists:
        assert not os.path.lexists(target)
    if outcome == "refused":
        unplant(link, place)
    # Without the link the store opens with everything it held (and the torn tail goes to the real lost+found).
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written.check(store)
    assert_documented_layout(store_dir)


def test_position_file_link_is_refused_at_the_first_checkpoint_without_losing_the_commit(store_dir, outside):
    """The one link the engine meets late: position files load lazily, so the refusal comes at the checkpoint.

    The open works (the index is rebuilt from the segment in memory) and a
    commit is durable, but the checkpoint at close cannot write the position
    file through the link: close raises StoreFailedError caused by ELOOP, and
    every later open raises OSError(ELOOP) naming the link until it is
    removed. The commit is not lost, and nothing outside is touched.
    """
    place, exists = outside
    written = make_store(store_dir)
    link, target = plant(store_dir, f"segments/{FIRST}.pos", "file", place, exists)
    before = snapshot_tree(store_dir.parent, skip=store_dir)
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    written.check(store)
    written.commit(store, [("s", 1)])
    with pytest.raises(logstore.StoreFailedError) as info:
        store.close()
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ELOOP
    with pytest.raises(OSError) as again:
        logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    assert again.value.errno == errno.ELOOP and again.value.filename == str(link)
    assert snapshot_tree(store_dir.parent, skip=store_dir) == before
    if exists:
        assert target.read_bytes() == OUTSIDE
    else:
        assert not os.path.lexists(target)
    os.unlink(link)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written.check(store)


def test_links_at_the_names_of_lost_found_files_are_left_alone(store_dir, tmp_path):
    """Recovery saves a cut under a name nobody holds: a planted link's name is skipped, its target untouched."""
    written = make_store(store_dir)
    tear_tail(store_dir, written)
    with open(store_dir / "segments" / f"{FIRST}.log", "rb") as f:
        data = f.read()
    end = data.index(b"\x99" * 40)
    place = tmp_path / "outside"
    place.mkdir()
    (place / "file").write_bytes(OUTSIDE)
    lf = store_dir / "lost+found"
    lf.mkdir(mode=0o700)
    now = int(time.time())
    planted = []
    for t in range(now - 2, now + 120):  # every stamp the cut below can get
        base = time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f"-{FIRST}.log-{end}"
        for suffix, target in ((".bin", "file"), (".json", "missing"), (".json.tmp", "file"), (".2.json.tmp", "file")):
            os.symlink(place / target, lf / (base + suffix))
            planted.append(lf / (base + suffix))
    before = snapshot_tree(tmp_path, skip=store_dir)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        saved = store.recovery_report.lost_found
        assert store.recovery_report.cut is not None
        written.check(store)
    assert len(saved) == 2
    assert saved[0].endswith(f"-{FIRST}.log-{end}.2.bin") and saved[1].endswith(f"-{FIRST}.log-{end}.2.json")
    assert Path(saved[0]).read_bytes() == b"\x99" * 40
    assert not os.path.islink(saved[0]) and not os.path.islink(saved[1])
    assert snapshot_tree(tmp_path, skip=store_dir) == before
    assert (place / "file").read_bytes() == OUTSIDE and not os.path.lexists(place / "missing")
    # Only the temporary of the manifest written is gone (unlinked, not followed); every other link is as it was.
    gone = [p for p in planted if not os.path.lexists(p)]
    assert [str(p) for p in gone] == [saved[1] + ".tmp"]


def test_store_root_given_as_a_symlink_is_the_callers_choice_and_is_followed(tmp_path):
    """The root is the one link the engine follows: the caller named it. Every file inside stays O_NOFOLLOW."""
    real = tmp_path / "disk" / "store"
    real.mkdir(parents=True)
    link = tmp_path / "store-link"
    os.symlink(real, link)
    with logstore.open(link, segment_size=SMALL_SEGMENT) as store:  # creates the store in the link's target
        written = Written()
        written.commit(store, [("s", 2)])
    assert os.path.islink(link) and (real / "CHECKPOINT").is_file()
    for path in (str(link), str(link) + "/", str(link) + "/."):
        with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
            written.check(store)
            written.commit(store, [("s", 1)])
        with logstore.open(path, readonly=True) as store:
            written.check(store)
    assert verify(str(link)).ok
    assert_documented_layout(real)
    assert_verified(real)


def test_dangling_symlink_as_store_root_is_refused_and_its_target_not_created(tmp_path):
    link = tmp_path / "store-link"
    os.symlink(tmp_path / "nowhere", link)
    with pytest.raises(FileExistsError) as info:
        logstore.open(link, segment_size=SMALL_SEGMENT)
    assert info.value.filename == str(link)
    assert not os.path.lexists(tmp_path / "nowhere")
    assert os.listdir(tmp_path) == ["store-link"]


def test_regression_symlinked_store_root_half_opened_then_failed(tmp_path):
    """Broke: ``open("link/")`` passed the root link check, rewrote CHECKPOINT, then failed with ENOTDIR.

    ``open("link")`` was refused with "a store is a directory" while verify
    accepted the same path, and ``repair("link")`` failed half way. The root
    is now resolved once, at open and in repair.
    """
    real = tmp_path / "store"
    written = make_store(real)
    link = tmp_path / "link"
    os.symlink(real, link)
    with logstore.open(str(link) + "/", segment_size=SMALL_SEGMENT) as store:
        written.check(store)
        written.commit(store, [("s", 1)])
    (real / "CHECKPOINT").unlink()
    report = repair(str(link))
    assert report.changed
    with logstore.open(link, segment_size=SMALL_SEGMENT) as store:
        written.check(store)
    assert_verified(real)


def test_regression_lost_found_link_made_recovery_write_outside_the_store(store_dir, tmp_path):
    """Broke: a link planted as ``lost+found`` made recovery save the cut bytes in the link's target directory."""
    written = make_store(store_dir)
    tear_tail(store_dir, written)
    out = tmp_path / "outside"
    out.mkdir()
    os.symlink(out, store_dir / "lost+found")
    with pytest.raises(OSError) as info:
        logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    assert os.listdir(out) == []  # before: the cut bytes and their manifest, saved through the link
    assert info.value.errno == errno.ELOOP and "symbolic link" in str(info.value)
    with pytest.raises(OSError) as info:
        repair(str(store_dir))
    assert os.listdir(out) == []
    assert info.value.errno == errno.ELOOP and "symbolic link" in str(info.value)
    os.unlink(store_dir / "lost+found")
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert len(store.recovery_report.lost_found) == 2
        written.check(store)


def test_regression_segments_link_made_open_delete_files_outside_the_store(store_dir, tmp_path):
    """Broke: with ``segments`` a link, a writable open deleted every ``*.tmp`` and orphan ``*.pos`` in its target."""
    written = make_store(store_dir)
    out = tmp_path / "outside"
    shutil.move(store_dir / "segments", out)
    os.symlink(out, store_dir / "segments")
    for name in ("precious.tmp", "precious.pos", "x.log.compact", "x.log.repair"):
        (out / name).write_bytes(OUTSIDE)
    before = snapshot_tree(out)
    for readonly in (False, True):
        with pytest.raises(OSError) as info:
            logstore.open(store_dir, segment_size=SMALL_SEGMENT, readonly=readonly)
        assert snapshot_tree(out) == before  # before: precious.tmp and precious.pos were deleted
        assert info.value.errno == errno.ELOOP and "symbolic link" in str(info.value)
        assert info.value.filename == str(store_dir / "segments")
    os.unlink(store_dir / "segments")
    for name in ("precious.tmp", "precious.pos", "x.log.compact", "x.log.repair"):
        (out / name).unlink()
    shutil.move(out, store_dir / "segments")
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written.check(store)


# -- file modes ------------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def assert_private(store_path: Path) -> list[str]:
    """Every directory 0700 and every file 0600, the store directory itself included; returns the names."""
    assert stat.S_IMODE(os.lstat(store_path).st_mode) == 0o700
    names = store_names(store_path)
    for rel in names:
        st = os.lstat(store_path / rel)
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), rel
        assert stat.S_IMODE(st.st_mode) == want, f"{rel} has mode {stat.S_IMODE(st.st_mode):o}"
    return names


def test_files_are_0600_and_directories_0700_whatever_the_umask(tmp_path, open_umask):
    path = tmp_path / "store"
    seen: set[str] = set()
    written = Written()
    with logstore.open(path, segment_size=SMALL_SEGMENT, checkpoint_bytes=16 * 1024, durability="none") as store:
        written.commit(store, [("s", 3)])
        seen.update(assert_private(path))  # the store as created, with the lock held
        for _ in range(LARGE_RUNS + 2):  # a run file and segment rolls
            written.commit(store, [("big", 1), ("s", 1)], pad=300)
        assert len(store._log.segments) > 2
        store.truncate_stream("big", 100)
        report = store.compact()  # rewritten segments
        assert report.segments_rewritten >= 1
        seen.update(assert_private(path))
    seen.update(assert_private(path))
    # Recovery's lost+found.
    tear_tail(path, written)
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.lost_found
    seen.update(assert_private(path))
    # Repair's lost+found and rewritten segment: damage a record in the middle of the first segment.
    seg = path / "segments" / f"{FIRST}.log"
    data = bytearray(seg.read_bytes())
    data[200] ^= 0xFF
    seg.write_bytes(bytes(data))  # (a write of an existing file keeps its mode)
    assert not verify(str(path)).ok
    assert repair(str(path)).changed
    seen.update(assert_private(path))
    assert any(n.startswith("lost+found/") and "-repair-" in n for n in seen)
    for kind in ("LOCK", "CHECKPOINT", "catalog.", "segments/", ".pos", "streams/", ".runs", "lost+found/"):
        assert any(kind in n for n in seen), kind
    assert_verified(path)


def test_files_made_by_a_new_store_in_an_existing_directory_are_private(tmp_path, open_umask):
    """A directory the caller made keeps its mode (it is theirs); everything the engine makes in it is private."""
    path = tmp_path / "store"
    path.mkdir(mode=0o777)
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        Written().commit(store, [("s", 1)])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777
    for rel in store_names(path):
        st = os.lstat(path / rel)
        assert stat.S_IMODE(st.st_mode) == (0o700 if stat.S_ISDIR(st.st_mode) else 0o600), rel


# -- the writer lock ---------------------------------------------------------------------------------

WRITER_CHILD = """
import json, sys
import logstore
from logstore import Envelope
path = sys.argv[1]

def read(store):
    reader, found = store.open_stream(store, "s", 0)
    with reader:
        return [e.message["i"] for e in reader]

store = logstore.open(path, segment_size=int(sys.argv[2]))
head = store.head("s")
out = {"head": head, "read": read(store)}
with store.transaction() as tx:  # one more message to "s", where this process sees its head
    store.append_messages(tx, "s", head, [Envelope.new("Hostile", {"stream": "s", "i": head, "pad": ""})])
try:
    with store.transaction() as tx:  # the same offset again: taken now
        store.append_messages(tx, "s", head, [Envelope.new("Hostile", {"stream": "s", "i": -1, "pad": ""})])
    out["again"] = "committed"
except logstore.OffsetConflictError as exc:
    out["again"] = type(exc).__name__
print(json.dumps(out), flush=True)
sys.stdin.readline()  # the other writer committed meanwhile
out = {"head": store.head("s"), "read": read(store)}
with logstore.open(path, readonly=True) as ro:  # a reader beside both writers
    out["reader"] = read(ro)
store.close()
print(json.dumps(out), flush=True)
"""


def child_line(child: subprocess.Popen[str]) -> dict[str, Any]:
    """The next JSON line ``child`` prints; the wait only guards against a hang."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], CHILD_TIMEOUT)
    if not ready:
        child.kill()
        pytest.fail(f"process {child.pid}: no answer within {CHILD_TIMEOUT} s")
    line = child.stdout.readline()
    if not line.startswith("{"):
        child.kill()
        _out, err = child.communicate(timeout=CHILD_TIMEOUT)
        pytest.fail(f"process {child.pid}: expected a JSON line, got {line!r}; stderr:\n{err}")
    out: dict[str, Any] = json.loads(line)
    return out


def adopt(written: Written, store: logstore.Store, name: str) -> None:
    """Add to ``written`` what another process appended to ``name`` past what ``written`` holds, read in ``store``."""
    have = written.streams.setdefault(name, [])
    if name not in written.order:
        written.order.append(name)
    reader, _found = store.open_stream(store, name, len(have))
    with reader:
        more = list(reader)
    have.extend(more)
    written.log.extend(more)


def test_a_second_writer_process_commits_beside_the_first_each_sees_the_others_commits_and_readers_work(
    store_dir,
):
    written = make_store(store_dir)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written.commit(store, [("s", 1)])
        child = spawn_python(WRITER_CHILD, str(store_dir), str(SMALL_SEGMENT))
        try:
            first = child_line(child)
            # The second process opened writable, saw the first one's commits, committed after them, and was
            # refused the offset it had just taken.
            assert first == {"head": 4, "read": [0, 1, 2, 3], "again": "OffsetConflictError"}
            assert store.head("s") == 5  # this process sees the other's commit
            # ... and checks its offsets against it.
            with pytest.raises(logstore.OffsetConflictError), store.transaction() as tx:
                store.append_messages(tx, "s", 4, [env("s", 4)])
            adopt(written, store, "s")
            assert [e.message["i"] for e in written.streams["s"]] == [0, 1, 2, 3, 4]
            written.commit(store, [("s", 1), ("t", 2)])
            with logstore.open(store_dir, readonly=True) as ro:  # a reader beside both writer processes
                written.check(ro)
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
            second = child_line(child)
            assert second == {"head": 6, "read": list(range(6)), "reader": list(range(6))}
            _out, err = child.communicate(timeout=CHILD_TIMEOUT)
            assert child.returncode == 0, err
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate(timeout=CHILD_TIMEOUT)
        written.commit(store, [("s", 1)])  # the writer is unaffected by the other's open and close
        written.check(store)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written.check(store)


def test_a_forked_child_opens_the_store_itself_beside_the_parent_and_the_parent_sees_its_commit(store_dir):
    written = make_store(store_dir)
    parent = os.getpid()
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    try:
        written.commit(store, [("s", 1)])
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: use the parent's store, then open its own; report, and leave at once
            code = 0
            try:
                os.close(r)
                out: dict[str, Any] = {}
                try:
                    store.head("s")
                    out["inherited"] = "no error"
                except BaseException as exc:  # noqa: BLE001 - report whatever it is
                    out["inherited"] = type(exc).__name__
                try:
                    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as own:
                        head = own.head("s")
                        with own.transaction() as tx:
                            own.append_messages(tx, "s", head, [env("s", head)])
                        out["own"] = [head, own.head("s")]
                except BaseException as exc:  # noqa: BLE001
                    out["own"] = f"{type(exc).__name__}: {exc}"
                os.write(w, json.dumps(out).encode())
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], CHILD_TIMEOUT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            got = json.loads(os.read(r, 2000)) if ready else "hung"
        finally:
            os.close(r)
            _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert got == {"inherited": "StoreForkedError", "own": [4, 5]}
        # The child's exit (it had inherited the lock's and CONTROL's descriptors) released none of the parent's
        # locks, and its own store left CONTROL when it closed.
        assert writer_is_live(str(store_dir))
        assert [(p.pid, p.mode) for p in processes_of(store)] == [(parent, "writable")]
        assert store.head("s") == 5  # the parent sees the child's commit
        adopt(written, store, "s")
        written.commit(store, [("s", 1)])
        written.check(store)
    finally:
        store.close()
    assert not writer_is_live(str(store_dir))


HOLDER_CHILD = """
import sys
import logstore
from logstore import Envelope
store = logstore.open(sys.argv[1])
with store.transaction() as tx:
    store.append_messages(tx, "held", 0, [Envelope.new("Held", {"i": 0})])
print("ready", flush=True)
sys.stdin.readline()
with store.transaction() as tx:
    store.append_messages(tx, "held", 1, [Envelope.new("Held", {"i": 1})])
print("again", flush=True)
sys.stdin.read()  # hold the store open until killed
"""


def test_a_writer_process_killed_by_sigkill_releases_its_locks_and_leaves_everything_acknowledged(store_dir):
    written = make_store(store_dir)
    holder = spawn_python(HOLDER_CHILD, str(store_dir))
    try:
        assert holder.stdin is not None and holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], CHILD_TIMEOUT)
        assert ready, "the holder did not start"
        assert holder.stdout.readline() == "ready\n"
        with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:  # a writer beside the live holder
            assert store.head("held") == 1
            written.commit(store, [("s", 1)])
            with logstore.open(store_dir, readonly=True) as ro:  # a reader beside both writer processes
                assert ro.stream_names() == ["s", "held"]
                assert ro.head("held") == 1 and ro.head("s") == len(written.streams["s"])
        assert writer_is_live(str(store_dir))  # the holder's LOCK, alone now
        with pytest.raises(logstore.StoreLockedError):
            repair(str(store_dir))
        holder.stdin.write("go\n")  # one more commit by the holder, then it waits to be killed
        holder.stdin.flush()
        ready, _, _ = select.select([holder.stdout], [], [], CHILD_TIMEOUT)
        assert ready and holder.stdout.readline() == "again\n"
    finally:
        holder.kill()
        holder.communicate(timeout=CHILD_TIMEOUT)
    assert holder.returncode == -signal.SIGKILL
    # The kernel dropped the killed process's hold of LOCK and of its CONTROL slot: repair may take the store.
    assert not writer_is_live(str(store_dir))
    assert repair(str(store_dir)).changed is False
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.head("held") == 2
        assert store.head("s") == 4
        reader, _found = store.open_stream(store, "held", 0)
        with reader:
            assert [e.message for e in reader] == [{"i": 0}, {"i": 1}]


# -- a full disk ---------------------------------------------------------------------------------------

FILL_CHILD = """
import json, os, resource, signal, sys
import logstore
from logstore import Envelope
path, limit, segment_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = logstore.open(path, segment_size=segment_size)
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
acked, error, cause = 0, None, None
try:
    for i in range(100_000):
        with store.transaction() as tx:
            store.append_messages(tx, "fill", i, [Envelope.new("Fill", {"i": i, "pad": "f" * 500})])
        acked = i + 1
except Exception as exc:
    error, cause = exc, exc.__cause__
again = None
try:
    with store.transaction() as tx:
        store.append_messages(tx, "other", 0, [Envelope.new("Late", {})])
except Exception as exc:
    again = type(exc).__name__
closed = None
try:
    store.close()
except Exception as exc:
    closed = type(exc).__name__
print(json.dumps({
    "acked": acked,
    "error": type(error).__name__,
    "message": str(error),
    "cause_errno": getattr(cause, "errno", None),
    "again": again,
    "close": closed,
}))
"""


def check_filled(path: Path, out: dict[str, object], errnos: tuple[int, ...]) -> None:
    """The writer got StoreFailedError from the failed write, refused the next, and lost nothing acknowledged."""
    assert out["error"] == "StoreFailedError", out
    assert out["cause_errno"] in errnos, out
    assert out["again"] == "StoreFailedError", out
    acked = out["acked"]
    assert isinstance(acked, int) and acked > 0
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        assert store.head("fill") == acked  # every acknowledged commit, and nothing unacknowledged
        assert store.head("other") == 0
        reader, _ = store.open_stream(store, "fill", 0)
        with reader:
            assert [e.message["i"] for e in reader] == list(range(acked))
    assert_verified(path)


@pytest.mark.parametrize(
    ("limit", "segment_size"),
    [(40_000, SMALL_SEGMENT), (SMALL_SEGMENT + 4096, 2 * SMALL_SEGMENT)],
    ids=["write-past-the-limit", "preallocate-past-the-limit"],
)
def test_file_size_limit_gives_an_exception_not_a_signal(tmp_path, limit, segment_size):
    """RLIMIT_FSIZE makes a write (or the preallocation of the next segment) fail with EFBIG."""
    path = tmp_path / "store"
    make_store(path)  # 64 KiB segments; the second case rolls into 128 KiB ones, past the limit
    child = run_child(FILL_CHILD, str(path), str(limit), str(segment_size))
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    check_filled(path, last_json(child.stdout), (errno.EFBIG,))


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs mount rights: root outside a locked-down container); skipped where mount is refused."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False, timeout=CHILD_TIMEOUT)


def test_full_disk_gives_an_exception_not_a_signal(small_tmpfs):
    path = small_tmpfs / "store"
    make_store(path)
    child = run_child(FILL_CHILD, str(path), "0", str(256 * 1024))
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    out = last_json(child.stdout)
    remount = ["mount", "-o", "remount,size=16m", str(small_tmpfs)]
    subprocess.run(remount, check=True, capture_output=True, timeout=CHILD_TIMEOUT)
    check_filled(path, out, (errno.ENOSPC,))


# -- a segment file cut short ------------------------------------------------------------------------------

CUT_CHILD = """
import json, os, sys
import logstore
path, readonly = sys.argv[1], sys.argv[2] == "ro"
segment = os.path.join(path, "segments", "00000000000000000000.log")
out = {}
with logstore.open(path, readonly=readonly) as store:
    os.truncate(segment, 4096)  # cut under the open store: its mapping now reaches past the end of the file
    for what, read in (
        ("stream", lambda: list(store.open_stream(store, "s", 0)[0])),
        ("global", lambda: list(store.open_global(store, 0))),
    ):
        try:
            out[what] = len(read())
        except Exception as exc:
            out[what] = type(exc).__name__
            out[what + "_message"] = str(exc)
print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("mode", ["writer", "ro"])
def test_regression_segment_cut_under_an_open_store_killed_the_reader_with_sigbus(tmp_path, mode):
    """Broke: reading a mapped page past the end of a file cut under the store raised SIGBUS (returncode -7).

    Readers now check the file still reaches the end of its mapping before a
    read, and raise CorruptionError. (A cut racing a read in progress can still
    fault: only a cut made before the read is caught.)
    """
    path = tmp_path / "store"
    written = Written()
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for _ in range(40):
            written.commit(store, [("s", 1)], pad=200)
        assert store._log.active.end > 8192
    child = run_child(CUT_CHILD, str(path), mode)
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    out = last_json(child.stdout)
    for what in ("stream", "global"):
        assert out[what] == "CorruptionError", out
        assert "4096 bytes" in str(out[what + "_message"]) and "cut under the store" in str(out[what + "_message"])


def test_segment_cut_into_its_records_before_open_is_refused_with_corruption_error(tmp_path):
    path = tmp_path / "store"
    written = Written()
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for _ in range(40):
            written.commit(store, [("s", 1)], pad=200)
    os.truncate(path / "segments" / f"{FIRST}.log", 4096)
    for readonly in (True, False):
        with pytest.raises(logstore.CorruptionError, match=r"shorter than the \d+ bytes checkpointed") as info:
            logstore.open(path, segment_size=SMALL_SEGMENT, readonly=readonly)
        assert f"{FIRST}.log" in str(info.value)
    assert os.path.getsize(path / "segments" / f"{FIRST}.log") == 4096  # the refused opens changed nothing


def test_regression_writer_appended_past_the_end_of_a_segment_cut_short(tmp_path):
    """Broke: the writer appended past the mapped end of a segment cut short, and reads failed with struct.error.

    The segment's zero tail was cut before the open (the file ended after its
    last record), so the open mapped only that much; the writer still filled
    up to the header's capacity, and reading those acknowledged commits raised
    ``struct.error``. The writer now extends the file and its mapping before it
    writes past the mapped end (as for any segment's reservation).
    """
    path = tmp_path / "store"
    written = Written()
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        for _ in range(10):
            written.commit(store, [("s", 1)], pad=200)
        end = store._log.active.end
    os.truncate(path / "segments" / f"{FIRST}.log", end)
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        written.check(store)
        for _ in range(200):
            written.commit(store, [("s", 1)], pad=200)
        written.check(store)
        assert len(store._log.segments) > 1
    # A file shorter than its capacity is a segment whose reservation has not grown yet: the writer
    # extended it (mapping the new bytes) before writing there.
    assert end < os.path.getsize(path / "segments" / f"{FIRST}.log") <= SMALL_SEGMENT
    with logstore.open(path, segment_size=SMALL_SEGMENT) as store:
        written.check(store)
    assert verify(str(path)).problems == []
