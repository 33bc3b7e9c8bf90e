"""The SUBSCRIPTIONS file's slots (docs/FORMAT.md section 12b), byte by byte: what a reader makes of
every state a crash can leave, and of damage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

import logstore
from logstore import Envelope
from logstore.embedded.positions import COPY, COPY_A, COPY_B, SLOT, encode_copy, read_slot, slot_offset
from logstore.embedded.repair import repair
from logstore.embedded.verify import verify


def _store_with(path: Path, acks: int) -> bytes:
    """A store with one subscription acknowledged ``acks`` times (at offsets 0 .. acks - 1); its file's bytes."""
    with logstore.open(path) as store:
        with store.transaction() as tx:
            tx.append("order-1", 0, [Envelope.new("T", i) for i in range(5)])
        with store.subscribe("billing", category="order") as sub:
            for _ in range(acks):
                sub.next(timeout=0)
                sub.ack()
    return (path / "SUBSCRIPTIONS").read_bytes()


def _slot(raw: bytes, index: int = 0) -> bytes:
    return raw[slot_offset(index) : slot_offset(index + 1)]


def test_acknowledgements_alternate_between_the_two_copies(tmp_path: Path) -> None:
    raw = _store_with(tmp_path / "s", 3)
    slot = read_slot(_slot(raw), 0)
    assert (slot.sequence, slot.position, slot.damage) == (3, 3, None)
    data = _slot(raw)
    # Sequence 3 went to copy B (odd), sequence 2 to copy A: the previous position is kept whole.
    assert read_slot(data[:COPY_B] + bytes(COPY.size), 0).position == 2
    assert read_slot(data[:COPY_A] + bytes(COPY.size) + data[COPY_B:], 0).position == 3


@pytest.mark.parametrize("torn", [COPY_A, COPY_B], ids=["copy-A", "copy-B"])
def test_a_copy_cut_short_leaves_the_other_position(tmp_path: Path, torn: int) -> None:
    data = bytearray(_slot(_store_with(tmp_path / "s", 2)))
    data[torn + 20] ^= 0xFF  # the position word of one copy, as a write cut short leaves it
    slot = read_slot(bytes(data), 0)
    assert slot.damage is None
    assert slot.position == (1 if torn == COPY_A else 2)  # sequence 2 is in copy A, 1 in copy B


def test_the_first_acknowledgement_cut_short_reads_as_never_acknowledged(tmp_path: Path) -> None:
    data = bytearray(_slot(_store_with(tmp_path / "s", 1)))
    data[COPY_B + 8] ^= 0x01  # sequence 1 went to copy B; copy A is still all zero
    slot = read_slot(bytes(data), 0)
    assert (slot.damage, slot.position) == (None, 0)


def test_both_copies_damaged_is_damage_with_its_byte_position(tmp_path: Path) -> None:
    path = tmp_path / "s"
    raw = bytearray(_store_with(path, 2))
    base = slot_offset(0)
    raw[base + COPY_A + 20] ^= 1
    raw[base + COPY_B + 20] ^= 1
    (path / "SUBSCRIPTIONS").write_bytes(bytes(raw))
    slot = read_slot(_slot(bytes(raw)), 0)
    assert slot.damage is not None and slot.damage_at == base + COPY_A
    with logstore.open(path) as store, pytest.raises(logstore.CorruptionError, match=f"at byte {base + COPY_A}"):
        store.subscribe("billing", category="order")
    problems = [(p.position, p.what) for p in verify(str(path)).problems]
    assert problems == [(base + COPY_A, "both copies of the position of subscription 'billing' member 0 are damaged")]


def test_a_copy_of_an_earlier_subscription_in_a_reused_slot_is_not_its_position(tmp_path: Path) -> None:
    data = bytearray(_slot(_store_with(tmp_path / "s", 2)))
    data[16:24] = (int.from_bytes(data[16:24], "little") ^ 1).to_bytes(8, "little")  # another generation
    # The definition's checksum covers the generation: fix it up so that only the copies disagree.
    length = int.from_bytes(data[8:12], "little")
    data[0:8] = xxhash.xxh3_64_intdigest(bytes(data[8 : 24 + length])).to_bytes(8, "little")
    slot = read_slot(bytes(data), 0)
    assert slot.damage is not None and "both copies" in slot.damage


def test_a_slot_whose_head_was_never_written_is_free(tmp_path: Path) -> None:
    """Making a slot writes it whole with its first 24 bytes zero, syncs, then writes those 24 bytes:
    a crash between the two leaves a free slot, which the next subscribe reuses."""
    path = tmp_path / "s"
    raw = bytearray(_store_with(path, 2))
    raw[slot_offset(0) : slot_offset(0) + 24] = bytes(24)
    (path / "SUBSCRIPTIONS").write_bytes(bytes(raw))
    assert read_slot(_slot(bytes(raw)), 0).definition is None
    assert verify(str(path)).ok
    with logstore.open(path) as store:
        assert store.subscriptions() == []
        with store.subscribe("other") as sub:
            assert sub.position == 0
    assert os.path.getsize(path / "SUBSCRIPTIONS") == 2 * SLOT  # the free slot was taken again


def test_a_file_of_another_store_is_refused_and_repair_moves_it_away(tmp_path: Path) -> None:
    _store_with(tmp_path / "a", 1)
    _store_with(tmp_path / "b", 3)
    os.replace(tmp_path / "a" / "SUBSCRIPTIONS", tmp_path / "b" / "SUBSCRIPTIONS")
    with logstore.open(tmp_path / "b") as store, pytest.raises(logstore.CorruptionError, match="at byte 16"):
        store.subscriptions()
    report = repair(str(tmp_path / "b"))
    assert any("SUBSCRIPTIONS of another store" in action for action in report.actions)
    assert not (tmp_path / "b" / "SUBSCRIPTIONS").exists()
    assert verify(str(tmp_path / "b")).ok
    with logstore.open(tmp_path / "b") as store:
        assert store.subscriptions() == []


def test_a_position_past_the_log_end_is_reported_and_moved_to_the_end(tmp_path: Path) -> None:
    """What a machine crash with durability="none" can leave: the position survived, the log's tail did not."""
    for mend in ("subscribe", "repair"):
        path = tmp_path / mend
        raw = bytearray(_store_with(path, 2))
        slot = read_slot(_slot(bytes(raw)), 0)
        at = slot_offset(0) + COPY_B  # sequence 3 goes to copy B
        raw[at : at + COPY.size] = encode_copy(slot.generation, 3, 40)
        (path / "SUBSCRIPTIONS").write_bytes(bytes(raw))
        problems = [str(p) for p in verify(str(path)).problems]
        assert problems == [
            f"{path / 'SUBSCRIPTIONS'} at byte {slot_offset(0) + COPY_A}: subscription 'billing' member 0 is at"
            " global offset 40, past the log's end 5"
        ]
        if mend == "repair":
            repair(str(path))
        else:
            with logstore.open(path) as store, store.subscribe("billing", category="order") as sub:
                assert sub.position == 5
        assert verify(str(path)).ok
        with logstore.open(path) as store:
            assert [info.positions for info in store.subscriptions()] == [(5,)]
            with store.transaction() as tx:
                tx.append("order-1", 5, [Envelope.new("T", 5)])
            with store.subscribe("billing", category="order") as sub:
                sub.next(timeout=0)
                assert sub.offset() == 5  # the message committed after the crash is delivered
