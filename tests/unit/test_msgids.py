"""The embedded message-id index: saved at checkpoints, rebuilt from the log, verified and repaired.

- Entries fold into sorted runs, saved as run files; a reopen loads them and retries still return
  the original offsets; a crash's recovered tail is indexed.
- A missing or damaged generation or run file: ``verify`` names it, the next open rebuilds every
  index from the log, ``repair`` leaves a store that verifies clean.
- Two ids with one hash are told apart by reading the record.
- A commit by another process is in this process's index before its next commit is judged.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logstore
from logstore import ANY, DuplicateMessageError, Envelope
from logstore.embedded import msgids
from logstore.embedded.repair import repair
from logstore.embedded.verify import verify
from logstore.embedded.writer import _Pending
from logstore.index.msgids import HashFilter, merge, sorted_run
from logstore.results import Location
from tests.crash import simulate_crash
from tests.helpers import SMALL_SEGMENT

ROOT = Path(__file__).resolve().parents[2]


def _envs(tag: str, n: int) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": i}) for i in range(n)]


def _commit(store: logstore.Store, stream: str, offset: object, envs: list[Envelope]) -> range:
    tx, committer = store.begin_tx()
    store.append_messages(tx, stream, offset, envs)  # type: ignore[arg-type]
    return committer.commit()


def _fill(store: logstore.Store, n: int) -> list[tuple[str, int, list[Envelope], range]]:
    out = []
    for k in range(n):
        envs = _envs(f"k{k}", 3)
        stream = f"s-{k % 5}"
        head = store.head(stream)
        out.append((stream, head, envs, _commit(store, stream, head, envs)))
    return out


def _files(path: Path, prefix: str) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name.startswith(prefix))


@pytest.fixture
def small_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold the recent entries into runs after 8, so that a small store has several run files."""
    monkeypatch.setattr(msgids, "RECENT_MAX", 8)


def test_runs_are_saved_and_loaded(store_dir: Path, small_folds: None) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = _fill(store, 80)
    runs = _files(store_dir, msgids.RUN_PREFIX)
    assert runs, "no run file was written"
    assert len(runs) <= 12  # runs merge while they are no more than twice the size of the newer one
    assert len(_files(store_dir, msgids.FILE + ".")) == 1
    assert verify(str(store_dir)).ok
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.rebuilt == []
        for stream, head, envs, g in written:
            assert store.locate(envs[2].message_id) == [Location(stream, head + 2, g[2])]
            assert _commit(store, stream, head, envs) == g
        stream, head, envs, _g = written[10]
        with pytest.raises(DuplicateMessageError):
            _commit(store, stream, store.head(stream), envs[:1])


def test_one_message_in_two_streams_folds_saves_and_loads(store_dir: Path, small_folds: None) -> None:
    """Entries that share a hash (one message in two streams) through folds, checkpoints and a reopen."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = []
        for k in range(30):
            envs = _envs(f"k{k}", 2)
            tx, committer = store.begin_tx()
            store.append_messages(tx, f"a-{k % 3}", store.head(f"a-{k % 3}"), envs)
            store.append_messages(tx, "all", store.head("all"), envs)
            written.append((envs, committer.commit(), dict(tx.stream_offsets or {})))
    assert verify(str(store_dir)).ok
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.rebuilt == []
        for envs, g, spans in written:
            assert [p.global_offset for p in store.locate(envs[1].message_id)] == [g[1], g[3]]
            tx, committer = store.begin_tx()
            for stream, span in spans.items():
                store.append_messages(tx, stream, span.start, envs)
            assert committer.commit() == g


def test_a_run_file_removed_under_the_store_is_written_again(store_dir: Path, small_folds: None) -> None:
    """Another process's checkpoint removes the run files that neither it nor the checkpoint in force lists,
    which may be this process's: its next checkpoint writes those runs again."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = _fill(store, 40)
        gone = _files(store_dir, msgids.RUN_PREFIX)
        assert gone
        for p in gone:
            p.unlink()
        written += _fill(store, 5)  # checkpoints follow
    assert verify(str(store_dir)).ok
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.rebuilt == []
        for stream, head, envs, g in written:
            assert _commit(store, stream, head, envs) == g


def test_a_crash_keeps_the_index_of_what_survived(store_dir: Path, small_folds: None) -> None:
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096, durability="none")
    written = _fill(store, 40)
    store._writer.call(store._writer.sync)
    written += _fill(store, 10)  # unsynced: the crash may cut some of these
    info = simulate_crash(store, random.Random(7))
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        for stream, head, envs, g in written:
            if g.stop <= info["durable_goff"]:
                assert _commit(store, stream, head, envs) == g
            elif g.start >= store.global_head:
                assert store.locate(envs[0].message_id) == []
    assert verify(str(store_dir)).ok


def test_a_missing_generation_file_is_rebuilt_from_the_log(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        written = _fill(store, 20)
    (gen,) = _files(store_dir, msgids.FILE + ".")
    gen.unlink()
    result = verify(str(store_dir))
    assert [p.path for p in result.problems] == [str(gen)]
    assert "file of the checkpoint's generation is missing" in result.problems[0].what
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.rebuilt == ["all indexes"]
        for stream, head, envs, g in written:
            assert _commit(store, stream, head, envs) == g
    assert gen.exists() or _files(store_dir, msgids.FILE + ".")
    assert verify(str(store_dir)).ok


@pytest.mark.parametrize("which", ["generation", "run"])
def test_a_damaged_file_is_found_by_verify_and_repaired(store_dir: Path, small_folds: None, which: str) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        written = _fill(store, 40)
    target = (
        _files(store_dir, msgids.FILE + ".")[0] if which == "generation" else _files(store_dir, msgids.RUN_PREFIX)[-1]
    )
    data = bytearray(target.read_bytes())
    data[80] ^= 0x01  # in the body: past the header, its checksum catches it
    target.write_bytes(bytes(data))
    result = verify(str(store_dir))
    assert not result.ok
    assert any(p.path == str(target) for p in result.problems), result.problems
    report = repair(str(store_dir))
    assert report.changed
    assert verify(str(store_dir)).ok
    kept = list((store_dir / "lost+found").iterdir()) if (store_dir / "lost+found").exists() else []
    assert not [p for p in kept if msgids.FILE in p.name], "derived files are rebuilt, never kept in lost+found"
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        for stream, head, envs, g in written:
            assert _commit(store, stream, head, envs) == g


def test_verify_finds_an_index_that_lacks_a_message(store_dir: Path) -> None:
    """A well-formed file that disagrees with the log: written by an index that missed a commit."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, 5)
        lg = store._log
        ids = lg.msgids
        ids._flush()
        assert len(ids.recent_hashes), "the entries since the last checkpoint are what the close saves"
        # The last entry added goes missing (the checkpoint saves the recent entries from these arrays).
        for arr in (ids.recent_hashes, ids.recent_goffs):
            arr.state = (arr.state[0], arr.state[1] - 1)
    result = verify(str(store_dir))
    assert any("lacks 1 message" in p.what for p in result.problems), result.problems
    for gen in _files(store_dir, msgids.FILE + "."):
        gen.unlink()
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:  # rebuilt: the fixture's verify is clean
        assert store.recovery_report.rebuilt == ["all indexes"]


def test_two_ids_with_one_hash_are_told_apart(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(msgids, "hash_bytes", lambda _mid: 42)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        a, b, c = _envs("a", 3)
        assert _commit(store, "s", 0, [a, b]) == range(2)
        assert _commit(store, "s", 2, [c]) == range(2, 3)
        assert _commit(store, "s", 1, [b]) == range(1, 2)
        assert store.locate(b.message_id) == [Location("s", 1, 1)]
        with pytest.raises(DuplicateMessageError):
            _commit(store, "s", 3, [a])
        assert store.global_head == 3
    monkeypatch.undo()
    for gen in _files(store_dir, msgids.FILE + "."):
        gen.unlink()  # saved with the fake hash: the next open rebuilds it with the real one
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.rebuilt == ["all indexes"]
        assert store.locate(b.message_id) == [Location("s", 1, 1)]


_CHILD = """
import sys, uuid
from datetime import UTC, datetime
import logstore
now = datetime.now(UTC)
mid = sys.argv[2]
env = logstore.Envelope(mid, mid, mid, now, now, "Event", 1)
with logstore.open(sys.argv[1], segment_size=int(sys.argv[3])) as store:
    with store.transaction() as tx:
        tx.append("shared", logstore.ANY, [env])
    print(tx.global_offsets.start)
"""


def test_a_commit_of_another_process_is_judged(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _commit(store, "shared", 0, _envs("mine", 2))
        mid = "from-the-child"
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(store_dir), mid, str(SMALL_SEGMENT)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        goff = int(out.stdout)
        assert store.locate(mid) == [Location("shared", 2, goff)]
        (child_env,) = store.read("shared", 2)
        assert _commit(store, "shared", 2, [child_env]) == range(goff, goff + 1)
        with pytest.raises(DuplicateMessageError):
            _commit(store, "shared", 3, [child_env])
        assert store.global_head == goff + 1


def _group(store: logstore.Store, *txs: tuple[tuple[str, object, list[Envelope]], ...]) -> list[object]:
    """Commit the transactions ``txs`` (each a tuple of appends) as one commit group: each one's range of
    global offsets, or the error it got."""
    writer = store._writer
    pendings = []
    for appends in txs:
        tx, _committer = store.begin_tx()
        for stream, offset, envs in appends:
            store.append_messages(tx, stream, offset, envs)  # type: ignore[arg-type]
        pendings.append(_Pending(tx))
    writer.call(lambda: writer._process(pendings))
    return [p.error if p.error is not None else p.result for p in pendings]


def test_one_id_in_several_transactions_of_one_group(store_dir: Path) -> None:
    """Transactions of one commit group are judged against those before them in the group, which are
    framed but not written yet."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        a, b, c, d, e = _envs("a", 5)
        got = _group(
            store,
            (("s", 0, [a]),),
            (("s", ANY, [a]),),  # at the place the group gave it: a retry at ANY, nothing written
            (("s", 0, [a]),),  # a retry at its offset
            (("t", 0, [a]),),  # the same message in another stream
            (("s", ANY, [b, b]),),  # twice in one transaction
            (("s", ANY, [b, c]),),
            (("s", ANY, [d, c]),),  # c at s:2 already, and d new: not a retry
            (("s", ANY, [e]),),
            (("u", 0, [e]), ("s", ANY, [d, e])),  # e at s:3 already, d new, and e new to u
        )
        assert got[0] == range(1)
        assert got[1] == range(1)
        assert got[2] == range(1)
        assert got[3] == range(1, 2)
        assert isinstance(got[4], DuplicateMessageError)
        assert got[5] == range(2, 4)
        assert isinstance(got[6], DuplicateMessageError)
        assert got[7] == range(4, 5)
        assert isinstance(got[8], DuplicateMessageError)
        assert store.global_head == 5
        assert store.locate(a.message_id) == [Location("s", 0, 0), Location("t", 0, 1)]
        assert store.locate(b.message_id) == [Location("s", 1, 2)]
        assert store.locate(d.message_id) == []
        assert store.locate(e.message_id) == [Location("s", 3, 4)]
        assert _commit(store, "s", 1, [b, c]) == range(2, 4)
        with pytest.raises(DuplicateMessageError):
            _commit(store, "s", 4, [c])
        assert _commit(store, "u", 0, [b, d]) == range(5, 7)


def test_a_transaction_refused_for_its_offsets_leaves_its_ids_free(store_dir: Path) -> None:
    """The check passes a transaction before its offsets are checked: one refused for them must not leave
    its ids behind, in another group nor in its own."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        late = _envs("late", 2)
        tx, committer = store.begin_tx()
        store.append_messages(tx, "s", 0, late)  # staged at the head, 0
        _commit(store, "s", 0, _envs("first", 1))  # the head moves on
        with pytest.raises(logstore.OffsetConflictError):
            committer.commit()
        assert not ({msgids.hash_bytes(e.message_id.encode()) for e in late} & store._log.msgids.recent)
        assert store.locate(late[0].message_id) == []
        assert _commit(store, "s", 1, late) == range(1, 3)
        assert store.locate(late[1].message_id) == [Location("s", 2, 2)]
        again = _envs("again", 1)
        # Staged at the head, 3, all of them: the second is refused for its offset, then the third puts the
        # same ids at the head.
        got = _group(store, (("s", 3, _envs("x", 1)),), (("s", 3, again),), (("s", ANY, again),))
        assert got[0] == range(3, 4)
        assert isinstance(got[1], logstore.OffsetConflictError)
        assert got[2] == range(4, 5)
        assert _commit(store, "s", 4, again) == range(4, 5)
        assert store.locate(again[0].message_id) == [Location("s", 4, 4)]


@pytest.mark.parametrize(("seed", "sorted_rest"), [(1, 5), (2, msgids.SORTED_REST), (3, 5), (4, 5), (5, 5), (6, 5)])
def test_ids_that_share_few_hashes_against_a_model(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch, seed: int, sorted_rest: int
) -> None:
    """Sixteen hashes for every id, entries moved into the arrays every three and folded into runs every
    eight (the sorted copy of the recent entries remade past five more, or rarely): new commits, retries,
    ids at other offsets and in other streams, and lookups, against a model of where each id is."""
    monkeypatch.setattr(msgids, "hash_bytes", lambda mid: msgids.xxh3_64_intdigest(mid) & 0xF)
    monkeypatch.setattr(msgids, "RECENT_MAX", 8)
    monkeypatch.setattr(msgids, "FLUSH_AT", 3)
    monkeypatch.setattr(msgids, "SORTED_REST", sorted_rest)
    rng = random.Random(seed)
    streams = ["s0", "s1", "s2"]
    where: dict[str, list[Location]] = {}  # id -> its places, in global order
    commits: list[tuple[str, int, list[Envelope], range]] = []
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=2048) as store:
        for step in range(150):
            kind = rng.random()
            stream = rng.choice(streams)
            head = store.head(stream)
            if kind < 0.5 or not commits:
                envs = [
                    e._replace(message_id=f"m{rng.getrandbits(64):x}") for e in _envs(f"n{step}", rng.randint(1, 3))
                ]
                if rng.random() < 0.3 and commits:  # one message of an earlier commit, in a stream without it
                    old = rng.choice(commits)[2][0]
                    if all(p.stream != stream for p in where[old.message_id]):
                        envs = [old, *envs[1:]]
                got = _commit(store, stream, head, envs)
                assert got == range(store.global_head - len(envs), store.global_head)
                for k, env in enumerate(envs):
                    where.setdefault(env.message_id, []).append(Location(stream, head + k, got[k]))
                commits.append((stream, head, envs, got))
            elif kind < 0.8:
                s, h, envs, g = rng.choice(commits)
                assert _commit(store, s, h, envs) == g  # a retry
            else:
                s, _h, envs, _g = rng.choice(commits)
                with pytest.raises(DuplicateMessageError):
                    _commit(store, s, store.head(s), envs[-1:])  # committed there already, at another offset
            if step % 10 == 0:
                for mid, places in where.items():
                    assert store.locate(mid) == places
    assert verify(str(store_dir)).ok
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        for mid, places in where.items():
            assert store.locate(mid) == places
        for s, h, envs, g in commits:
            assert _commit(store, s, h, envs) == g
    monkeypatch.undo()
    for gen in _files(store_dir, msgids.FILE + "."):
        gen.unlink()  # saved with the few hashes: the next open rebuilds it with the real ones
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.rebuilt == ["all indexes"]
        for mid, places in where.items():
            assert store.locate(mid) == places


def test_runs_that_the_set_covers_and_runs_it_does_not(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint writes the recent entries as a run and keeps their hashes in the set, which the check
    then trusts for that run; a fold past RECENT_MAX empties the set, and the runs before are searched.
    Either way every committed id is found: retries return their offsets, other offsets raise."""
    monkeypatch.setattr(msgids, "RECENT_MAX", 40)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=2048) as store:
        ids = store._log.msgids
        written = []
        covered = searched = 0
        for k in range(60):
            written += _fill(store, 1)
            covered += len(ids.runs) > len(ids._search_runs)
            searched += bool(ids._search_runs)
            stream, head, envs, g = written[(k * 7) % len(written)]  # the oldest, the newest, others
            assert _commit(store, stream, head, envs) == g
            with pytest.raises(DuplicateMessageError):
                _commit(store, stream, store.head(stream), envs[1:2])
        assert covered and searched, (covered, searched)
        for stream, head, envs, g in written:
            assert _commit(store, stream, head, envs) == g
            assert store.locate(envs[0].message_id) == [Location(stream, head, g[0])]
            with pytest.raises(DuplicateMessageError):
                _commit(store, stream, store.head(stream), envs[2:])


def test_locate_in_another_thread_while_entries_move(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader looks up committed ids while the writer moves entries from the pending lists into the
    arrays (every 5), remakes the sorted copy, folds them into runs (past 40 hashes) and checkpoints:
    an id committed before the lookup began is always found, at its one place."""
    monkeypatch.setattr(msgids, "RECENT_MAX", 40)
    monkeypatch.setattr(msgids, "FLUSH_AT", 5)
    monkeypatch.setattr(msgids, "SORTED_REST", 7)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=4096) as store:
        committed: list[tuple[str, Location]] = []  # appended after each commit returns
        done = threading.Event()
        failures: list[str] = []

        def look() -> None:
            k = 0
            while not done.is_set() or k < len(committed):
                mid, place = committed[k % len(committed)]
                got = store.locate(mid)
                if got != [place]:
                    failures.append(f"{mid}: {got} != {[place]}")
                    return
                k += 1

        first = _envs("first", 1)
        committed.append((first[0].message_id, Location("s-0", 0, _commit(store, "s-0", 0, first)[0])))
        reader = threading.Thread(target=look)
        reader.start()
        try:
            for n in range(120):
                stream = f"s-{n % 3}"
                head = store.head(stream)
                envs = _envs(f"t{n}", 2)
                got = _commit(store, stream, head, envs)
                if n % 7 == 0:  # a retry now and then: the writer's slow path remakes the sorted copy
                    assert _commit(store, stream, head, envs) == got
                for j, env in enumerate(envs):
                    committed.append((env.message_id, Location(stream, head + j, got[j])))
        finally:
            done.set()
            reader.join(60)
        assert not reader.is_alive()
        assert not failures, failures


U64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(held=st.lists(U64, max_size=300), others=st.lists(U64, max_size=300), capacity=st.integers(0, 400))
def test_the_filter_holds_every_key_added(held: list[int], others: list[int], capacity: int) -> None:
    """No false negative, whatever its size (past its capacity too) and however keys share words."""
    filt = HashFilter(capacity)
    filt.add(np.array(held, np.uint64))
    assert filt.count == len(held)
    assert filt.may_hold(np.array(held, np.uint64)).all()
    got = filt.may_hold(np.array(others, np.uint64))
    assert got.shape == (len(others),)


@given(held=st.lists(U64, max_size=300), others=st.lists(U64, max_size=100), capacity=st.integers(0, 400))
def test_the_filter_tests_one_key_as_it_tests_many(held: list[int], others: list[int], capacity: int) -> None:
    """``may_hold_one`` (Python ints, for transactions of a few ids) answers as ``may_hold`` (numpy)."""
    filt = HashFilter(capacity)
    filt.add(np.array(held, np.uint64))
    keys = held + others
    assert [filt.may_hold_one(k) for k in keys] == filt.may_hold(np.array(keys, np.uint64)).tolist()


def test_the_filter_reports_few_keys_it_does_not_hold() -> None:
    """At its capacity, about one key in a thousand not added is reported as maybe held (the check then
    searches the runs for that key alone)."""
    rng = np.random.default_rng(5)
    filt = HashFilter(100_000)
    assert filt.capacity >= 100_000
    filt.add(rng.integers(0, 2**64, 100_000, dtype=np.uint64))
    rate = float(filt.may_hold(rng.integers(0, 2**64, 200_000, dtype=np.uint64)).mean())
    assert rate < 0.005, rate


def test_the_filter_of_the_searched_runs_follows_folds_and_merges(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folds past RECENT_MAX add runs the set does not cover; checkpoints merge them into new runs; the
    filter of those entries grows (made afresh past its capacity) and holds every hash it must, so a
    committed id is never judged new: its retry returns its offsets, another offset raises."""
    monkeypatch.setattr(msgids, "RECENT_MAX", 16)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT, checkpoint_bytes=2048) as store:
        ids = store._log.msgids
        written = []
        filters = set()
        for _k in range(80):
            written += _fill(store, 1)
            stream, head, envs, g = written[0]
            assert _commit(store, stream, head, envs) == g  # the oldest, in a searched run
            if ids._search_runs:
                filt = ids._run_filter()
                filters.add(id(filt))
                for run in ids._search_runs:  # every entry the set does not cover
                    assert filt.may_hold(run.hashes[run.goffs < ids._set_from]).all()
        assert len(filters) > 1  # made afresh as the runs grew
        for stream, head, envs, g in written:
            assert _commit(store, stream, head, envs) == g
            with pytest.raises(DuplicateMessageError):
                _commit(store, stream, store.head(stream), envs[1:2])


@pytest.mark.parametrize("runs", [1, 2])
def test_a_merge_drops_what_lies_below_the_log_start(runs: int) -> None:
    """Retention moves the log start: a checkpoint's merge keeps no entry below it, whether it merges one
    run (returned as it is when nothing is dropped) or several, and whatever the lowest offset is (0 too)."""
    parts = [sorted_run([5, 3, 9], [0, 1, 2]), sorted_run([4, 8], [3, 4])][:runs]
    for start, want in ((0, {0, 1, 2, 3, 4}), (1, {1, 2, 3, 4}), (3, {3, 4}), (7, set())):
        merged = merge(parts, start)
        expected = {g for g in want if g < 3 * runs}
        assert set(merged.goffs.tolist()) == expected, (runs, start)
        assert list(merged.hashes) == sorted(merged.hashes.tolist())


def test_retention_leaves_no_entry_below_the_log_start(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with logstore.open(path, segment_size=SMALL_SEGMENT, retention_bytes=3 * SMALL_SEGMENT) as store:
        for i in range(310):
            with store.transaction() as tx:
                tx.append(f"order-{i % 3}", ANY, [Envelope.new("T0", {"i": i, "pad": "p" * 1000})])
        assert store.log_start > 0
    assert verify(str(path)).ok
