"""The embedded store's category index and type filter (``CategoryIndex``, ``SelectReader``).

- A category reader reads only its category's records: tailing one category of 100 reads that
  category's records and no other (``FileIO.records_read`` counts the records read).
- A type filter decodes only the envelopes of the types wanted.
- The index is derived data: loaded from ``categories.<g>`` at a clean reopen (nothing scanned),
  brought up to date from the log after a crash, rebuilt when its file is missing or damaged;
  ``verify`` reports a damaged or wrong file, ``repair`` deletes it and the next open rebuilds it.
- A read-only store beside a writer (the follower) sees the writer's new categories' messages.
- Retention drops the offsets below the log start from the index, as a rebuild would not list them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest

import logstore
import logstore.embedded.walk as walk_module
from logstore import Envelope
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.derived import CategoryIndex
from logstore.embedded.repair import repair
from logstore.embedded.verify import verify
from tests.helpers import SMALL_SEGMENT, assert_verified, run_python


def _index(store: logstore.Store) -> CategoryIndex:
    (ix,) = [ix for ix in store._log.extra_indexes if isinstance(ix, CategoryIndex)]  # private: the store's index
    return ix


def _fill(store: logstore.Store, categories: int = 100, rounds: int = 20, pad: int = 50) -> None:
    """``rounds`` commits to one stream of each of ``categories`` categories, types T0..T9 in turn."""
    for r in range(rounds):
        with store.transaction() as tx:
            for c in range(categories):
                tx.append(f"c{c}-{r % 3}", logstore.ANY, [Envelope.new(f"T{(r + c) % 10}", {"p": "x" * pad})])


def _category(store: logstore.Store, name: str, offset: int = 0, **kw: Any) -> list[tuple[int, str]]:
    with store.category(name, offset, **kw) as reader:
        return [(reader.offset(), reader.stream_name()) for _env in reader]


def _by_scan(store: logstore.Store, name: str) -> list[tuple[int, str]]:
    with store.global_stream() as log:
        return [(log.offset(), log.stream_name()) for _env in log if log.stream_name().partition("-")[0] == name]


def test_a_category_tail_reads_only_its_categorys_records(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store)
        io = store._log.io  # private: the counter of records read
        assert len(store._log.segments) > 3  # the category's records lie in several segments
        io.records_read = 0
        want = _by_scan(store, "c7")
        assert io.records_read == store.global_head == 2000  # the scan read every record
        io.records_read = 0
        assert _category(store, "c7") == want and len(want) == 20
        assert io.records_read == 20
        with store.category("c7", want[-1][0] + 1) as tail:
            io.records_read = 0
            _fill(store, rounds=1)
            assert tail.try_next() and tail.stream_name().startswith("c7-")
            assert not tail.try_next()
            assert io.records_read == 1  # the new commit's one record of c7, none of the 99 others


def test_a_type_filter_decodes_only_the_wanted_envelopes(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, categories=10, rounds=50)
        decoded = 0
        real = walk_module.decode

        def counting(payload: Any) -> Envelope:
            nonlocal decoded
            decoded += 1
            return real(payload)

        monkeypatch.setattr(walk_module, "decode", counting)
        with store.global_stream(types=["T3"]) as log:
            got = [env.type for env in log]
        assert got == ["T3"] * 50 and decoded == 50
        decoded = 0
        assert len(_category(store, "c3", types=["T3", "T4"])) == 10 and decoded == 10


def test_the_index_is_loaded_at_a_clean_reopen_and_recovered_after_a_crash(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, categories=20)
        want = {f"c{c}": _category(store, f"c{c}") for c in range(20)}
    assert sorted(p.name for p in store_dir.glob("categories.*")) != []
    with logstore.open(store_dir) as store:
        assert store.recovery_report.records_scanned == 0
        assert {f"c{c}": _category(store, f"c{c}") for c in range(20)} == want
    # A process commits past the last checkpoint and dies: the reopen applies those commits to the index.
    code = (
        "import os, sys, logstore\n"
        "from tests.unit.test_categories import _fill\n"
        "store = logstore.open(sys.argv[1], segment_size=65536, checkpoint_bytes=1 << 40)\n"
        "_fill(store, categories=20, rounds=5)\n"
        "os._exit(0)\n"
    )
    run_python(code, str(store_dir), timeout=120)
    with logstore.open(store_dir) as store:
        assert store.recovery_report.transactions_recovered == 5
        for c in range(20):
            assert _category(store, f"c{c}") == _by_scan(store, f"c{c}")
            assert len(_category(store, f"c{c}")) == 25
    assert_verified(store_dir)


@pytest.mark.parametrize("damage", ["missing", "flipped", "truncated"])
def test_a_missing_or_damaged_index_file_is_rebuilt(
    store_dir: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing file is found at the open, which rebuilds every index from the log. A damaged one is read
    at the index's first use (the open only opens it): the index then rebuilds itself from the log, alone,
    with a warning that names the damage, and the close writes its files afresh."""
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, categories=10)
        want = _category(store, "c4")
    (path,) = store_dir.glob("categories.*")
    data = bytearray(path.read_bytes())
    if damage == "missing":
        path.unlink()
    elif damage == "flipped":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[:100]))
    if damage != "missing":
        problems = verify(str(store_dir)).problems
        assert any("category index file is unusable" in str(p) for p in problems), problems
    with logstore.open(store_dir) as store:
        if damage == "missing":
            assert "all indexes" in store.recovery_report.rebuilt
        else:
            assert store.recovery_report.rebuilt == [] and not caplog.records
        assert _category(store, "c4") == want
        if damage != "missing":
            (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
            assert "category index unusable" in warning.getMessage()
            assert "rebuilt from the log" in warning.getMessage()
            assert _index(store).stale
    assert_verified(store_dir)  # the close wrote the files afresh
    with logstore.open(store_dir) as store:
        assert _category(store, "c4") == want
        assert not _index(store).stale


def test_verify_finds_an_index_that_differs_from_the_log_and_repair_rebuilds_it(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, categories=10)
        want = _category(store, "c2")
    (path,) = store_dir.glob("categories.*")
    generation = int(path.suffix[1:])  # the checkpoint's
    # A well-formed file (its checksums right) whose last offset of c2 is c1's record just before it.
    ix = CategoryIndex()
    ix.load(path.read_bytes(), Checkpoint(generation, 200, [], True))
    starts, goffs, recent_g, recent_c = ix.snapshot
    goffs = goffs.copy()
    goffs[starts[ix.ids["c2"] + 1] - 1] -= 1
    ix.snapshot = (starts, goffs, recent_g, recent_c)
    path.write_bytes(ix.encode(generation))
    problems = [str(p) for p in verify(str(store_dir)).problems]
    assert len(problems) == 1 and "category 'c2': the index lists 20 records, the log has 20" in problems[0], problems
    report = repair(str(store_dir))
    assert path.name in [os.path.basename(p) for p in report.derived], report.derived
    with logstore.open(store_dir) as store:
        assert _category(store, "c2") == want
    assert_verified(store_dir)


def test_a_read_only_store_beside_a_writer_follows_its_categories(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as writer:
        _fill(writer, categories=5, rounds=2)
        with logstore.open(store_dir, readonly=True) as reader, reader.category("new") as tail:
            assert _category(reader, "c1") == _category(writer, "c1")
            assert not tail.try_next()
            with writer.transaction() as tx:
                tx.append("new-1", 0, [Envelope.new("E", {})])
                tx.append("other-1", 0, [Envelope.new("E", {})])
            tail.next(timeout=30)
            assert (tail.offset(), tail.stream_name()) == (10, "new-1")
            _fill(writer, categories=5, rounds=40)  # rolls segments and checkpoints
            assert _category(reader, "c3") == _category(writer, "c3")


def test_retention_drops_the_dropped_offsets_from_the_index(store_dir: Path) -> None:
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, categories=10, rounds=60, pad=300)
        before = _category(store, "c5")
        store.compact(retention_bytes=4 * SMALL_SEGMENT)
        start = store.log_start
        assert start > 0
        after = _category(store, "c5")
        assert after == [row for row in before if row[0] >= start] and after
        listed = _index(store).offsets("c5", 0, store.global_head, 10**6)
        assert int(listed[0]) >= start
    assert_verified(store_dir)
    with logstore.open(store_dir) as store:
        assert _category(store, "c5") == after


def test_a_store_written_without_the_index_file_gets_it_at_its_next_open(store_dir: Path) -> None:
    # A store made before categories existed has no categories.<g>: the open rebuilds it from the log.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        _fill(store, categories=4)
        want = _category(store, "c0")
    for p in store_dir.glob("categories.*"):
        os.unlink(p)
    with logstore.open(store_dir) as store:
        assert _category(store, "c0") == want
    assert list(store_dir.glob("categories.*"))
    assert_verified(store_dir)


def test_a_type_filter_reads_every_envelope_layout_right(store_dir: Path) -> None:
    # The batch read peeks at the type at a fixed position when the envelope has the common layout
    # (three 36-character ids, two 64-bit timestamps) and one by one otherwise: both must agree.
    from datetime import UTC, datetime

    whole = datetime(2020, 1, 1, tzinfo=UTC)  # no fraction: a 32-bit Timestamp
    early = datetime(1900, 1, 1, 0, 0, 0, 5, tzinfo=UTC)  # before 1970: a 96-bit Timestamp
    kinds = ["T", "T" * 31, "T" * 32, "T" * 300, "\x00T", "TT", "ü"]
    envs = []
    for i in range(400):
        t = kinds[i % len(kinds)]
        base = Envelope.new(t, {"i": i})
        if i % 3 == 1:
            base = base._replace(message_id=f"short-{i}", causation_id="c" * 300, created_at=whole)
        elif i % 3 == 2:
            base = base._replace(correlation_id="", send_at=early)
        envs.append(base)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        for i in range(0, len(envs), 50):
            with store.transaction() as tx:
                tx.append(f"s-{i % 3}", logstore.ANY, envs[i : i + 50])
        for wanted in (["T"], ["T" * 32, "\x00T"], ["TT", "ü", "T" * 300], ["T" * 31]):
            with store.global_stream(types=wanted) as log:
                got = [(log.offset(), env) for env in log]
            assert got == [(g, e) for g, e in enumerate(envs) if e.type in wanted], wanted
            with store.category("s", 7, types=wanted) as cat:
                assert [(cat.offset(), env) for env in cat] == [(g, e) for g, e in got if g >= 7]


def test_two_writers_see_each_others_commits_in_their_category_readers(store_dir: Path) -> None:
    # Each writable open follows the other's commits (docs/PROCESSES.md): its category index gets them too.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as a, logstore.open(store_dir) as b:
        for i in range(30):
            writer = a if i % 2 else b
            with writer.transaction() as tx:
                tx.append(f"order-{i}", 0, [Envelope.new("Placed", {"i": i})])
                tx.append(f"user-{i}", 0, [Envelope.new("Seen", {"i": i})])
        for store in (a, b):
            got = [env.message["i"] for env in store.category("order")]
            assert got == list(range(30))
            assert _category(store, "user") == _by_scan(store, "user")
    assert_verified(store_dir)


def test_a_stream_id_far_past_the_others_round_trips_through_the_file() -> None:
    # Only a damaged log has one (the fuzz tests make them): the index must not allocate up to it.
    from logstore.embedded.record import KIND_MESSAGE, Record

    def rec(sid: int, goff: int, name: str | None) -> tuple[int, Record]:
        return 0, Record(0, 0, 0, sid, 0, goff, name, 0, KIND_MESSAGE)

    ix = CategoryIndex()
    ix.apply([rec(0, 0, "a-1"), rec(2**32 - 2, 1, "b-1"), rec(1, 2, "a-2")])
    ix.apply([rec(2**32 - 2, 3, None), rec(0, 4, None)])
    assert len(ix.sid_category) < 1000 and ix.sid_far == {2**32 - 2: ix.ids["b"]}
    assert ix.listing() == {"a": [0, 2, 4], "b": [1, 3]}
    loaded = CategoryIndex()
    loaded.load(ix.encode(7), Checkpoint(7, 5, [], True))
    assert loaded.listing() == ix.listing() and loaded.differences(ix) == []
    assert [a.tolist() for a in loaded.mapping()] == [[0, 1, 2**32 - 2], [ix.ids["a"], ix.ids["a"], ix.ids["b"]]]
    loaded.apply([rec(2**32 - 2, 5, None)])  # its next message, unnamed: still mapped after the load
    assert loaded.listing()["b"] == [1, 3, 5]


def test_the_writer_keeps_the_index_as_a_walk_of_the_log_builds_it(store_dir: Path) -> None:
    # The writer hands the index each group's appends (stream, first global offset, count), not the
    # records: what it builds must be what recovery builds from the records, across new streams,
    # several appends per transaction, transactions of several streams and segment rolls.
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        for r in range(30):
            with store.transaction() as tx:
                for c in range(r % 4 + 1):
                    envs = [Envelope.new("T", {"p": "y" * 2000}) for _ in range(r % 3 + 1)]
                    tx.append(f"k{c}-{r % 5}", logstore.ANY, envs)
                tx.append(f"solo{r}", 0, [Envelope.new("T", {})])
        kept = _index(store)
        assert len(store._log.segments) > 1, "the test wants rolls"
        listing, mapping = kept.listing(), [a.tolist() for a in kept.mapping()]
    for path in store_dir.glob("categories.*"):
        path.unlink()  # the next open rebuilds the indexes from the log's records
    with logstore.open(store_dir) as store:
        walked = _index(store)
        assert store.recovery_report.rebuilt == ["all indexes"]
        assert walked.listing() == listing
        assert [a.tolist() for a in walked.mapping()] == mapping
        for name in listing:
            assert [g for g, _s in _category(store, name)] == listing[name]
            assert _category(store, name) == _by_scan(store, name)


def test_apply_appends_lists_what_apply_lists_for_the_same_records() -> None:
    from logstore.embedded.record import KIND_MESSAGE, Record

    by_records, by_appends = CategoryIndex(), CategoryIndex()
    # (stream id, name, first global offset, count) per append; a far stream id goes to the dict
    appends = [(0, "a-1", 0, 3), (1, "b-1", 3, 1), (0, "a-1", 4, 2), (2**32 - 2, "c-9", 6, 2), (2, "a-2", 8, 1)]
    records = []
    for sid, name, goff, count in appends:
        for k in range(count):
            records.append((0, Record(0, 0, 0, sid, k, goff + k, name if k == 0 else None, 0, KIND_MESSAGE)))
    by_records.apply(records[:6])
    by_records.apply(records[6:])
    by_appends.apply_appends(*(list(col) for col in zip(*appends[:3], strict=True)))
    by_appends.apply_appends(*(list(col) for col in zip(*appends[3:], strict=True)))
    assert by_appends.listing() == by_records.listing() == {"a": [0, 1, 2, 4, 5, 8], "b": [3], "c": [6, 7]}
    assert [a.tolist() for a in by_appends.mapping()] == [a.tolist() for a in by_records.mapping()]
    assert by_appends.sid_far == {2**32 - 2: by_appends.ids["c"]}
    # Not one range: appends that do not follow each other (as the method allows)
    by_appends.apply_appends([1, 0], ["b-1", "a-1"], [20, 30], [2, 1])
    assert by_appends.listing()["b"] == [3, 20, 21] and by_appends.listing()["a"][-1] == 30


def _rebuilt(data: bytes, edit: Any) -> bytes:
    """The category index file ``data`` with its body changed by ``edit(body: bytearray, counts)`` and its
    checksums made right again: what only the load's checks of the body's content can refuse."""
    head = CategoryIndex._HEADER.unpack_from(data)
    ncat, nsid, count = head[5], head[6], head[7]
    body = bytearray(data[64:])
    edit(body, (ncat, nsid, count))
    return CategoryIndex._header(head[4], ncat, nsid, count, bytes(body)) + bytes(body)


def test_a_checksummed_file_whose_content_breaks_a_rule_is_refused() -> None:
    """The load checks the body's content, not only its checksum: ids ascending, offsets ascending within a
    category (and only there), each id mapped to a category. A file that breaks one is refused with the rule
    it breaks; one where a category's offsets fall back at the next category's start loads."""
    from logstore.embedded.record import KIND_MESSAGE, Record
    from logstore.index.errors import FormatError

    def rec(sid: int, goff: int, name: str | None) -> tuple[int, Record]:
        return 0, Record(0, 0, 0, sid, 0, goff, name, 0, KIND_MESSAGE)

    ix = CategoryIndex()
    ix.apply([rec(0, 0, "a-1"), rec(1, 1, "b-1"), rec(2, 2, "a-2"), rec(0, 3, None), rec(1, 4, None)])
    data = ix.encode(7)
    ckpt = Checkpoint(7, 5, [], True)
    loaded = CategoryIndex()
    loaded.load(data, ckpt)  # a: 0, 2, 3; b: 1, 4 (b's first offset is below a's last: allowed)
    assert loaded.listing() == {"a": [0, 2, 3], "b": [1, 4]} and loaded.sid_far == {}
    assert loaded.sid_category[:3].tolist() == [ix.ids["a"], ix.ids["b"], ix.ids["a"]]

    def offsets_at(counts: tuple[int, int, int]) -> int:
        ncat, nsid, _count = counts
        at = 4 * ncat + 8 * nsid
        return at + -at % 8 + 8 * (ncat + 1)

    def swap_in_category(body: bytearray, counts: tuple[int, int, int]) -> None:
        at = offsets_at(counts)  # a's second and third offsets (2, 3) swapped
        body[at + 8 : at + 24] = body[at + 16 : at + 24] + body[at + 8 : at + 16]

    def ids_not_ascending(body: bytearray, counts: tuple[int, int, int]) -> None:
        at = 4 * counts[0]  # the first two stream ids swapped
        body[at : at + 8] = body[at + 4 : at + 8] + body[at : at + 4]

    def no_category(body: bytearray, counts: tuple[int, int, int]) -> None:
        at = 4 * counts[0] + 4 * counts[1]
        body[at : at + 4] = (counts[0]).to_bytes(4, "little")

    for edit, rule in (
        (swap_in_category, "a category's global offsets are not ascending"),
        (ids_not_ascending, "the stream ids are not ascending"),
        (no_category, "a stream id maps to no category"),
    ):
        with pytest.raises(FormatError, match=rule):
            CategoryIndex().load(_rebuilt(data, edit), ckpt)


@hypothesis.given(
    steps=st.lists(
        st.one_of(
            # a commit group: appends of (stream id, count), written one after the other from the log's end
            st.tuples(
                st.just("group"), st.lists(st.tuples(st.integers(0, 6), st.integers(1, 4)), min_size=1, max_size=5)
            ),
            st.tuples(
                st.just("records"), st.lists(st.tuples(st.integers(0, 6), st.integers(1, 3)), min_size=1, max_size=3)
            ),
            st.tuples(st.just("read"), st.sampled_from(["a", "b", "c", "d"])),
            st.tuples(st.just("merge"), st.none()),
        ),
        max_size=40,
    )
)
@hypothesis.settings(deadline=None)
def test_queued_groups_read_as_if_applied_at_once(steps: list[tuple[str, Any]]) -> None:
    """The writer's groups wait in a queue until someone needs the index: whatever mix of groups, records
    the writer applies itself (which go after the queued groups), category reads and checkpoint merges,
    every read sees what an index given every record at once lists, and so does the end state."""
    from logstore.embedded.record import KIND_MESSAGE, Record

    names = ["a-1", "b-1", "a-2", "c-1", "d-x", "b-2", "c-2"]
    ix, model = CategoryIndex(), CategoryIndex()
    goff = 0
    seen: set[int] = set()
    for op, arg in steps:
        if op in ("group", "records"):
            recs = []
            spans: list[list[Any]] = [[], [], [], []]
            for sid, count in arg:
                for k in range(count):
                    name = names[sid] if (k == 0 and sid not in seen) else None
                    recs.append((0, Record(0, 0, 0, sid, k, goff + k, name, 0, KIND_MESSAGE)))
                seen.add(sid)
                for col, value in zip(spans, (sid, names[sid], goff, count), strict=True):
                    col.append(value)
                goff += count
            model.apply(recs)
            if op == "group":
                ix.apply_appends(*spans)
            else:
                ix.apply(recs)
        elif op == "read":
            c = arg
            assert ix.offsets(c, 0, goff, goff + 1).tolist() == model.offsets(c, 0, goff, goff + 1).tolist()
        else:
            ix.encode(1)  # a checkpoint merges the recent part into the sealed one
    assert ix.listing() == model.listing()
    assert ix.categories() == model.categories()
    assert [a.tolist() for a in ix.mapping()] == [a.tolist() for a in model.mapping()]


def test_the_writer_folds_its_queue_itself_when_nobody_reads() -> None:
    """A store nobody reads by category keeps at most a bounded queue: the writer folds it in itself."""
    from logstore.embedded import derived

    ix = CategoryIndex()
    for g in range(derived._FOLD_AT * 3 + 5):
        ix.apply_appends([g % 3], [f"s{g % 3}-x"], [g], [1])
        assert len(ix._queue) < derived._FOLD_AT  # private: the queue
    assert ix.listing() == {f"s{k}": list(range(k, derived._FOLD_AT * 3 + 5, 3)) for k in range(3)}
