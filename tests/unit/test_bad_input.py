"""Bad input to a store directory: options, paths, files; a read-only open changes no file.

Bad input to the API, on every backend, is in tests/contract/test_bad_input.py.
"""

from __future__ import annotations

import os
import threading

import pytest

import logstore
from tests.contract.test_bad_input import assert_unchanged_and_writable, envs, snapshot
from tests.helpers import SMALL_SEGMENT, commit, store_files


def test_read_only_store_alone_refuses_writes_and_changes_no_file(store_dir):
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, envs(2))
        before = snapshot(store)
    files = store_files(store_dir)
    with logstore.open(store_dir, readonly=True) as ro:
        with pytest.raises(logstore.ReadOnlyError):
            ro.begin_tx()
        assert snapshot(ro) == before
    assert store_files(store_dir) == files
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert_unchanged_and_writable(store, before)


# -- logstore.open options -------------------------------------------------------------------

BAD_OPTIONS = [
    ("durability", "FSYNC", ValueError),
    ("durability", "sync", ValueError),
    ("durability", "", ValueError),
    ("durability", None, (TypeError, ValueError)),
    ("durability", 1, (TypeError, ValueError)),
    ("fsync_interval", 0, ValueError),
    ("fsync_interval", -0.01, ValueError),
    ("fsync_interval", float("nan"), ValueError),
    ("fsync_interval", float("inf"), ValueError),
    ("fsync_interval", "0.01", (TypeError, ValueError)),
    ("fsync_interval", None, (TypeError, ValueError)),
    ("fsync_interval", True, (TypeError, ValueError)),
    ("segment_size", 0, ValueError),
    ("segment_size", -1, ValueError),
    ("segment_size", 1024, ValueError),
    ("segment_size", SMALL_SEGMENT - 1, ValueError),
    ("segment_size", 2**32, ValueError),
    ("segment_size", float(SMALL_SEGMENT), TypeError),
    ("segment_size", str(SMALL_SEGMENT), TypeError),
    ("segment_size", True, TypeError),
    ("segment_size", None, TypeError),
    ("checkpoint_bytes", 0, ValueError),
    ("checkpoint_bytes", -1, ValueError),
    ("checkpoint_bytes", 1.5, (TypeError, ValueError)),
    ("checkpoint_bytes", "1", (TypeError, ValueError)),
    ("checkpoint_bytes", True, (TypeError, ValueError)),
    ("checkpoint_bytes", None, (TypeError, ValueError)),
]


@pytest.mark.parametrize(("option", "value", "error"), BAD_OPTIONS, ids=[f"{o}={v!r}" for o, v, _ in BAD_OPTIONS])
def test_open_with_a_bad_option(store_dir, option, value, error):
    try:
        store = logstore.open(store_dir, **{option: value})
    except error as exc:
        assert option in str(exc)
    else:
        store.close()
        pytest.fail(f"logstore.open accepted {option}={value!r}")
    assert not store_dir.exists(), "a refused open must not create the store"


@pytest.mark.parametrize("option", ["durability", "fsync_interval", "segment_size", "checkpoint_bytes"])
def test_open_an_existing_store_with_a_bad_option_changes_nothing(store_dir, option):
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        commit(store, "s", 0, envs(2))
        before = snapshot(store)
    files = store_files(store_dir)
    bad = {"durability": "always", "fsync_interval": -1, "segment_size": 10, "checkpoint_bytes": 0}[option]
    with pytest.raises((TypeError, ValueError), match=option):
        logstore.open(store_dir, **{option: bad})
    assert store_files(store_dir) == files
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert_unchanged_and_writable(store, before)


def test_open_with_an_unknown_option(store_dir):
    with pytest.raises(TypeError, match="durabilty"):
        logstore.open(store_dir, durabilty="none")
    assert not store_dir.exists()


def test_open_with_a_path_of_the_wrong_type():
    with pytest.raises(TypeError):
        logstore.open(12345)


def test_batch_store_with_a_very_long_fsync_interval_is_refused_or_keeps_committing(store_dir):
    # An interval longer than any wait the platform supports: refused up front, or honoured without harm.
    try:
        store = logstore.open(store_dir, durability="batch", fsync_interval=1e10, segment_size=SMALL_SEGMENT)
    except ValueError as exc:
        assert "fsync_interval" in str(exc)
        return
    done = threading.Event()
    ranges = []

    def commits() -> None:
        for i in range(3):
            ranges.append(commit(store, "s", i, envs(1)))
        done.set()

    threading.Thread(target=commits, daemon=True).start()
    try:
        assert done.wait(10), f"commits hung after {ranges}"
        assert ranges == [range(i, i + 1) for i in range(3)]
    finally:
        store.close()
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.global_head == 3


# -- directories -------------------------------------------------------------------


def test_open_a_non_empty_directory_that_is_not_a_store(tmp_path):
    path = tmp_path / "photos"
    path.mkdir()
    (path / "holiday.jpg").write_bytes(b"\xff\xd8 not a store")
    with pytest.raises(ValueError, match="not a logstore directory") as info:
        logstore.open(path)
    assert str(path) in str(info.value)
    assert sorted(os.listdir(path)) == ["holiday.jpg"]
    assert (path / "holiday.jpg").read_bytes() == b"\xff\xd8 not a store"
    with pytest.raises((FileNotFoundError, ValueError)):
        logstore.open(path, readonly=True)
    assert sorted(os.listdir(path)) == ["holiday.jpg"]


def test_open_a_file_as_a_store(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"data")
    with pytest.raises(NotADirectoryError) as info:
        logstore.open(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == b"data"


def test_open_read_only_where_there_is_no_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        logstore.open(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        logstore.open(tmp_path / "empty", readonly=True)
    assert os.listdir(tmp_path / "empty") == []
