"""The name table (``names.<generation>``): names looked up in the mapped catalog, never decoded whole at open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

import logstore
import logstore.index.names as names_mod
from logstore import Envelope
from logstore.checks import check_stream_name
from logstore.embedded import layout
from logstore.embedded.verify import verify
from logstore.index.catalog import NAMES_AT, Catalog, TableUnusable, shared_reach
from logstore.index.header import CatalogHeader
from logstore.index.names import LazyIds, LazyNames, build_slots, check_table, table_problems
from logstore.index.runs import RunIndex
from tests.helpers import assert_verified

STORE = bytes(range(16))

# Names with unusual code points: combining marks, astral planes, right-to-left text, NUL, long ones.
unusual = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # no lone surrogates: names are UTF-8
    min_size=1,
    max_size=40,
) | st.sampled_from(["é", "é", "😀", "\x00", "a" * 300, "ﬁ", "Ω", "Ω", "שלום", "x" * 70000])


def _valid(name: str) -> bool:
    try:
        check_stream_name(name)
    except ValueError:
        return False
    return True


store_names = unusual.filter(_valid)


def _encoded(names: list[str], generation: int = 1) -> tuple[bytes, bytes]:
    cat = Catalog()
    runs = RunIndex()
    for i, n in enumerate(names):
        sid = cat.add(n)
        runs.add(sid, 0, i)
        cat.head[sid] = 1
        cat.run_diff[sid] = i
        cat.nruns[sid] = 1
    runs.merge()
    raw = cat.encode(runs, generation, STORE)
    table = cat.encode_names(runs, generation, STORE, CatalogHeader.decode(raw).body_checksum)
    return raw, table


def _mapped(raw: bytes, table: bytes, generation: int = 1) -> tuple[Catalog, RunIndex, int]:
    cat, runs, large, reach = Catalog.mapped(bytearray(raw), bytearray(table), STORE, generation)
    assert large == []
    return cat, runs, reach


@given(st.lists(unusual, unique=True, max_size=60), st.lists(unusual, max_size=20))
def test_every_name_is_found_and_no_other(names: list[str], others: list[str]) -> None:
    raw, table = _encoded(names)
    cat, _runs, reach = _mapped(raw, table)
    assert isinstance(cat.ids, LazyIds) and isinstance(cat.names, LazyNames)
    assert reach == len(names)
    assert len(cat) == len(cat.ids) == len(names)
    for sid, name in enumerate(names):
        assert cat.ids.get(name) == sid and cat.ids[name] == sid and name in cat.ids
        assert cat.names[sid] == name
    for other in others:
        if other not in names:
            assert cat.ids.get(other) is None and other not in cat.ids and other not in cat.names
            with pytest.raises(KeyError):
                cat.ids[other]
    assert list(cat.names) == names == cat.names[:] == list(cat.ids)


@given(st.lists(unusual, unique=True, min_size=1, max_size=40), st.data())
def test_names_of_one_hash_never_mix(names: list[str], data: st.DataObject) -> None:
    # Every name gets the same hash: each lookup walks the slots and tells the names apart by their bytes.
    real = xxhash.xxh3_64_intdigest
    try:
        xxhash_all_one = lambda b: 7  # noqa: E731 - a stand-in for the hash function
        names_mod.xxhash.xxh3_64_intdigest = xxhash_all_one  # type: ignore[attr-defined]
        import logstore.index.catalog as catalog_mod

        catalog_mod.xxhash.xxh3_64_intdigest = xxhash_all_one  # type: ignore[attr-defined]
        raw, table = _encoded(names)
        cat, _runs, _reach = _mapped(raw, table)
        order = data.draw(st.permutations(names))
        for name in order:
            assert cat.ids.get(name) == names.index(name)
        assert cat.ids.get(names[0] + "!") is None
    finally:
        names_mod.xxhash.xxh3_64_intdigest = real  # type: ignore[attr-defined]
        catalog_mod.xxhash.xxh3_64_intdigest = real  # type: ignore[attr-defined]


@given(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=300), st.integers(0, 2))
def test_build_slots_puts_each_id_where_a_probe_finds_it(hashes: list[int], extra_doublings: int) -> None:
    slots = names_mod.slots_for(len(hashes)) << extra_doublings
    h = np.asarray(hashes, np.uint64)
    half = len(h) // 2
    table = build_slots(h[:half], slots)
    build_slots(h[half:], slots, table, half)  # the rest added later, as a checkpoint adds new names
    mask = slots - 1
    for sid, value in enumerate(hashes):
        i = value & mask
        while table[i] != sid + 1:
            assert table[i] != 0, f"id {sid} is past an empty slot"
            i = (i + 1) & mask
    assert sorted(int(t) - 1 for t in table if t) == list(range(len(hashes)))


@given(st.lists(unusual, unique=True, max_size=30), st.lists(unusual, unique=True, max_size=30))
def test_names_added_after_a_load_are_found_and_saved(first: list[str], later: list[str]) -> None:
    later = [n for n in later if n not in first]
    raw, table = _encoded(first, 1)
    cat, runs, _reach = _mapped(raw, table, 1)
    for i, name in enumerate(later):
        sid = cat.add(name)
        assert sid == len(first) + i
        runs.add(sid, 0, len(first) + i)
        cat.head[sid] = 1
        cat.run_diff[sid] = len(first) + i
        cat.nruns[sid] = 1
        assert cat.ids.get(name) == sid and cat.names[sid] == name
    runs.merge()
    raw2 = cat.encode(runs, 2, STORE)
    table2 = cat.encode_names(runs, 2, STORE, CatalogHeader.decode(raw2).body_checksum)
    # The files the lazy catalog writes are the ones a catalog of decoded names writes.
    eager, eruns, _large = Catalog.decode(raw2, STORE, 2)
    assert eager.names == first + later
    raw3 = eager.encode(eruns, 2, STORE)
    assert raw3 == raw2
    assert eager.encode_names(eruns, 2, STORE, CatalogHeader.decode(raw3).body_checksum) == table2
    again, _r, _reach = _mapped(raw2, table2, 2)
    for sid, name in enumerate(first + later):
        assert again.ids.get(name) == sid
    lay = check_table(table2, STORE, 2)
    assert (
        table_problems(table2, lay, first + later, eruns.snapshot[3], shared_reach(eager.head, eruns), NAMES_AT) == []
    )


def test_a_table_of_another_catalog_or_damaged_is_refused() -> None:
    raw, table = _encoded(["a", "b", "c"])
    other_raw, _other_table = _encoded(["a", "b", "d"])
    with pytest.raises(TableUnusable, match="another catalog"):
        Catalog.mapped(bytearray(other_raw), bytearray(table), STORE, 1)
    bad = bytearray(table)
    bad[-1] ^= 1
    with pytest.raises(TableUnusable, match="body checksum"):
        Catalog.mapped(bytearray(raw), bad, STORE, 1)


def test_verify_names_a_wrong_entry_of_a_table_whose_checksum_was_made_right() -> None:
    names = ["a", "b", "c"]
    raw, table = _encoded(names)
    lay = check_table(table, STORE, 1)
    buf = bytearray(table)
    buf[lay.len] += 1  # the length of name 0
    eager, eruns, _large = Catalog.decode(raw, STORE, 1)
    found = table_problems(buf, lay, names, eruns.snapshot[3], shared_reach(eager.head, eruns), NAMES_AT)
    assert found == [(lay.len, "the length of stream id 0's name ('a') is wrong")]


def _write(path: Path, streams: list[str]) -> None:
    with logstore.open(path) as store, store.transaction() as tx:
        for name in streams:
            tx.append(name, store.head(name), [Envelope.new("E", {"s": name})])


@given(st.lists(store_names, unique=True, min_size=1, max_size=15), st.lists(store_names, unique=True, max_size=15))
def test_a_store_reopened_finds_old_and_new_names(
    tmp_path_factory: pytest.TempPathFactory, first: list[str], later: list[str]
) -> None:
    path = tmp_path_factory.mktemp("store")
    _write(path, first)
    _write(path, later)  # opened lazily: names of the file and new ones in one transaction
    with logstore.open(path, readonly=True) as store:
        assert isinstance(store._log.catalog.ids, LazyIds)
        everything = list(dict.fromkeys(first + later))
        assert store.stream_names() == everything
        for name in everything:
            assert [e.message["s"] for e in store.read(name)] == [name] * ((name in first) + (name in later))
    assert_verified(path)


def test_a_store_without_a_name_table_opens_and_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _write(path, ["a", "b"])
    (table,) = path.glob(layout.NAMES_PREFIX + "*")
    table.unlink()  # as a store of an earlier version has it
    with logstore.open(path) as store:
        assert store.recovery_report.rebuilt == []
        assert any("decoded whole" in n for n in store.recovery_report.notes)
        assert isinstance(store._log.catalog.names, list) and store.head("b") == 1
    assert_verified(path)
    with logstore.open(path) as store:  # the close wrote the table
        assert isinstance(store._log.catalog.names, LazyNames) and store.head("b") == 1
        assert store.recovery_report.notes == []


def test_a_damaged_name_table_costs_a_whole_decode_and_verify_reports_it(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _write(path, ["a", "b"])
    (table,) = path.glob(layout.NAMES_PREFIX + "*")
    data = bytearray(table.read_bytes())
    data[100] ^= 0x10
    table.write_bytes(bytes(data))
    result = verify(str(path))
    assert [(p.path, p.position) for p in result.problems] == [(str(table), 64)]
    with logstore.open(path) as store:
        assert any("unusable" in n for n in store.recovery_report.notes)
        assert store.recovery_report.rebuilt == [] and store.head("a") == 1
    assert_verified(path)


def test_placing_a_name_in_a_mapped_catalog_decodes_it_first() -> None:
    raw, table = _encoded(["a", "b", "c"])
    cat, _runs, _reach = _mapped(raw, table)
    cat.place(4, "e")  # as a rebuild from a log that does not start at 0 places ids
    assert isinstance(cat.names, list) and type(cat.ids) is dict
    assert cat.names == ["a", "b", "c", "", "e"] and cat.unnamed() == [3]
    assert [cat.ids.get(n) for n in ("a", "b", "c", "e", "d")] == [0, 1, 2, 4, None]


def test_a_read_only_open_without_a_name_table_decodes_the_catalog_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    _write(path, ["a", "b"])
    (table,) = path.glob(layout.NAMES_PREFIX + "*")
    table.unlink()
    with logstore.open(path, readonly=True) as store:
        assert isinstance(store._log.catalog.names, list)
        assert store.stream_names() == ["a", "b"] and store.head("a") == 1
    assert not list(path.glob(layout.NAMES_PREFIX + "*"))
