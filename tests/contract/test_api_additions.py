"""API additions beside Ax's interface: where a read message belongs, appends at ``logstore.ANY``, short forms.

- Readers say where the current message is: ``stream_name()``, ``stream_offset()``,
  ``global_offset()`` on both kinds, with ``offset()``'s errors.
- ``logstore.ANY`` appends at the stream's head as it is at commit, with the offsets the
  writer assigned in ``tx.stream_offsets``; the shared-outbox case commits without a conflict.
- ``store.stream``, ``store.global_stream`` and ``tx.append`` share the long forms' checks;
  a single envelope (or a str, bytes, dict) where a list is expected is named as such.
"""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

import logstore
from logstore import ANY, Envelope, OffsetConflictError, StreamClosedError
from logstore.embedded.repair import repair
from logstore.protocols import GloballyOrderedStore, LocatedStream, ShortFormStore
from tests.contract.backends import BAD_STREAM_ARGUMENTS, OpenAt, OpenStore
from tests.contract.model import ApiModel, run_model
from tests.crash import simulate_crash
from tests.helpers import SMALL_SEGMENT, quiet_logstore
from tests.model.test_model import FsyncModel, NoSyncModel
from tests.strategies import envelope_batches, transaction_plans

WAIT = 30.0  # seconds a barrier waits before the test fails rather than hangs


def _envs(tag: str, n: int, pad: int = 200) -> list[Envelope]:
    return [Envelope.new("Event", {"tag": tag, "i": i, "pad": "x" * pad}) for i in range(n)]


def _located_global(store: logstore.Store, start: int = 0) -> list[tuple[int, str, int, Envelope]]:
    """(global offset, stream, stream offset, envelope) of every message from ``start``, read with try_next."""
    out = []
    with store.global_stream(start) as log:
        while log.try_next():
            assert log.global_offset() == log.offset()
            out.append((log.offset(), log.stream_name(), log.stream_offset(), log.get()))
    return out


def _located_stream(store: logstore.Store, name: str, start: int = 0) -> list[tuple[int, str, int, Envelope]]:
    out = []
    with store.stream(name, start) as stream:
        for env in stream:
            assert stream.stream_offset() == stream.offset()
            out.append((stream.global_offset(), stream.stream_name(), stream.stream_offset(), env))
    return out


def _write_mixed(store: logstore.Store, rounds: int, seed: int = 1) -> list[tuple[int, str, int, Envelope]]:
    """Transactions over several streams (some two appends to one stream); returns what was written."""
    rng = random.Random(seed)
    names = ["order-1", "order-2", "customer-9", "outbox"]
    written: list[tuple[int, str, int, Envelope]] = []
    for _ in range(rounds):
        plan = [(rng.choice(names), _envs("m", rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        with store.transaction() as tx:
            messages = []
            for k, (name, envs) in enumerate(plan):
                offset = store.head(name) + sum(len(e) for n, e in plan[:k] if n == name)
                tx.append(name, offset, envs)
                messages += [(name, offset + i, env) for i, env in enumerate(envs)]
        assert tx.global_offsets is not None
        written += [(g, n, o, e) for g, (n, o, e) in zip(tx.global_offsets, messages, strict=True)]
    return written


# -- 6: where the current message belongs ------------------------------------------------------


def test_readers_locate_messages_across_streams_and_segment_rolls(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        written = _write_mixed(store, 150)
        if isinstance(store, logstore.Store):  # the embedded store's reads cross segment rolls
            assert len(store._log.segments) >= 3
        # Long scans (numpy header batches) and short ones (record by record) alike.
        assert _located_global(store) == written
        assert _located_global(store, 37) == written[37:]
        for name in {n for _, n, _, _ in written}:
            mine = [w for w in written if w[1] == name]
            assert _located_stream(store, name) == mine
            assert _located_stream(store, name, 3) == [w for w in mine if w[2] >= 3]
    with open_store(readonly=True) as store:
        assert _located_global(store) == written


def test_readers_locate_messages_after_removals_and_compaction(open_store: OpenStore) -> None:
    with open_store(segment_size=SMALL_SEGMENT) as store:
        written = _write_mixed(store, 150, seed=2)
        store.truncate_stream("order-1", 5)
        store.delete_stream("customer-9")
        # Control records now sit among the messages, and the global reader skips removed ones.
        kept = [w for w in written if not (w[1] == "order-1" and w[2] < 5) and w[1] != "customer-9"]
        kept += _write_mixed(store, 20, seed=3)  # "customer-9" comes back from its old head
        assert _located_global(store) == kept
        assert _located_stream(store, "order-1") == [w for w in kept if w[1] == "order-1"]
        store.compact()
        assert _located_global(store) == kept
    with open_store(segment_size=SMALL_SEGMENT) as store:
        assert _located_global(store) == kept
        assert _located_stream(store, "outbox") == [w for w in kept if w[1] == "outbox"]


def test_current_message_keeps_its_place_when_a_removal_drops_what_was_read_ahead(open_store: OpenStore) -> None:
    with open_store() as store:
        for i in range(6):
            with store.transaction() as tx:
                tx.append("a", i, _envs("a", 1))
                tx.append("b", i, _envs("b", 1))
        log = store.global_stream()
        stream = store.stream("a")
        assert log.try_next() and log.try_next() and stream.try_next()  # both decoded more ahead
        store.truncate_stream("b", 6)  # drops what they decoded ahead
        # The current messages stay where they were read, though "b" 0 is now removed.
        assert (log.offset(), log.stream_name(), log.stream_offset()) == (1, "b", 0)
        assert (stream.global_offset(), stream.stream_name(), stream.stream_offset()) == (0, "a", 0)
        assert log.try_next() and stream.try_next()  # these find the removal and read again
        assert (log.offset(), log.stream_name(), log.stream_offset()) == (2, "a", 1)
        assert (stream.global_offset(), stream.stream_offset()) == (2, 1)
        rest = []
        while log.try_next():
            rest.append((log.offset(), log.stream_name(), log.stream_offset()))
        assert rest == [(2 * i, "a", i) for i in range(2, 6)]
        store.delete_stream("a")  # nothing more to read: the current message stays the last one
        assert not log.try_next()
        assert (log.offset(), log.stream_name(), log.stream_offset()) == (10, "a", 5)
        log.close()
        stream.close()


def test_current_message_keeps_its_place_when_everything_read_ahead_is_removed(open_store: OpenStore) -> None:
    with open_store() as store:
        with store.transaction() as tx:
            tx.append("a", 0, _envs("a", 1))
        with store.transaction() as tx:
            tx.append("b", 0, _envs("b", 3))
        with store.global_stream() as log:
            assert log.try_next()  # decodes the three messages of "b" ahead
            store.delete_stream("b")
            assert not log.try_next()  # drops them: nothing left to read
            assert (log.offset(), log.stream_name(), log.stream_offset()) == (0, "a", 0)
            assert log.get().message["tag"] == "a"


@pytest.mark.parametrize("method", ["stream_name", "stream_offset", "global_offset"])
def test_location_methods_raise_like_offset(open_store: OpenStore, method: str) -> None:
    with open_store() as store:
        with store.transaction() as tx:
            tx.append("a", 0, _envs("a", 2))
        for reader in (store.stream("a"), store.global_stream(), store.stream("nothing")):
            with pytest.raises(ValueError, match=rf"{method}\(\) before a successful next\(\) or try_next\(\)"):
                getattr(reader, method)()
            if reader.try_next():
                getattr(reader, method)()
            reader.close()
            with pytest.raises(StreamClosedError, match="closed"):
                getattr(reader, method)()
        reader = store.global_stream()
        reader.next(timeout=5)
    # Closing the store closes its readers.
    with pytest.raises(StreamClosedError):
        getattr(reader, method)()


def test_readers_satisfy_the_located_stream_protocol(open_store: OpenStore) -> None:
    with open_store() as store:
        assert isinstance(store, ShortFormStore) and isinstance(store, GloballyOrderedStore)
        with store.stream("a") as s, store.global_stream() as g:
            assert isinstance(s, LocatedStream) and isinstance(g, LocatedStream)


# -- 7: appends at logstore.ANY ---------------------------------------------------------------


def test_any_is_a_sentinel_not_an_offset(open_store: OpenStore) -> None:
    assert logstore.ANY is ANY and repr(ANY) == "logstore.ANY"
    assert isinstance(ANY, logstore.AnyOffset) and list(logstore.AnyOffset) == [ANY]
    assert not isinstance(ANY, int) and ANY not in (-1, 0)
    with open_store() as store:
        tx, committer = store.begin_tx()
        with pytest.raises(ValueError, match="offset must be >= 0, got -1"):  # no int stands for ANY
            tx.append("s", -1, _envs("s", 1))
        committer.rollback()


@pytest.mark.parametrize("bad", ["ANY", None, 1.0, True])
def test_offsets_that_are_not_any_are_refused(open_store: OpenStore, bad: object) -> None:
    with open_store() as store:
        tx, committer = store.begin_tx()
        for append in (tx.append, lambda *a: store.append_messages(tx, *a)):
            with pytest.raises(TypeError, match=rf"offset must be an int or logstore\.ANY, got {type(bad).__name__}"):
                append("s", bad, _envs("s", 1))
        assert committer.commit() == range(0)


def test_any_appends_at_the_head_at_commit_without_conflict(open_store: OpenStore) -> None:
    with open_store() as store:
        tx_a, commit_a = store.begin_tx()
        tx_a.append("outbox", ANY, _envs("a", 2))
        tx_a.append("order-1", 0, _envs("o", 1))
        with store.transaction() as tx_b:  # commits to the outbox first
            tx_b.append("outbox", 0, _envs("b", 3))
        assert commit_a.commit() == range(3, 6)
        assert tx_a.stream_offsets == {"outbox": range(3, 5), "order-1": range(1)}
        assert tx_b.stream_offsets == {"outbox": range(3)}
        # An exact append made before the other commit still conflicts.
        tx_c, commit_c = store.begin_tx()
        tx_c.append("outbox", 5, _envs("c", 1))
        with store.transaction() as tx_d:
            tx_d.append("outbox", ANY, _envs("d", 1))
        assert tx_d.stream_offsets == {"outbox": range(5, 6)}
        with pytest.raises(OffsetConflictError, match="offset 5 is not the next unused offset, expected 6"):
            commit_c.commit()
        assert tx_c.stream_offsets is None
        got = _located_stream(store, "outbox")
        assert [(g, o, e.message["tag"]) for g, _, o, e in got] == [
            (0, 0, "b"),
            (1, 1, "b"),
            (2, 2, "b"),
            (3, 3, "a"),
            (4, 4, "a"),
            (6, 5, "d"),
        ]


def test_any_rules_within_one_transaction(open_store: OpenStore) -> None:
    with open_store() as store:
        with store.transaction() as tx:
            tx.append("s", 0, _envs("exact", 2))  # exact, then ANY: fine
            tx.append("s", ANY, _envs("any1", 1))
            tx.append("t", ANY, _envs("t", 1))
            tx.append("s", ANY, _envs("any2", 2))  # ANY again: follows on
            tx.append("t", ANY, _envs("t", 1))
            with pytest.raises(ValueError, match=r"stream 's': offset 5 after an append at logstore\.ANY"):
                tx.append("s", 5, _envs("refused", 1))  # exact after ANY: the head is not known yet
            with pytest.raises(ValueError, match=r"logstore\.ANY"):
                store.append_messages(tx, "t", 2, _envs("refused", 1))
            assert tx.stream_offsets is None  # not committed yet
        assert tx.global_offsets == range(7)
        assert tx.stream_offsets == {"s": range(5), "t": range(2)}
        assert [(o, e.message["tag"]) for _, _, o, e in _located_stream(store, "s")] == [
            (0, "exact"),
            (1, "exact"),
            (2, "any1"),
            (3, "any2"),
            (4, "any2"),
        ]
        assert "refused" not in {e.message["tag"] for *_, e in _located_global(store)}
        # Appending nothing commits nothing; rollback leaves no offsets.
        tx2, c2 = store.begin_tx()
        assert c2.commit() == range(0) and tx2.stream_offsets == {}
        tx3, c3 = store.begin_tx()
        tx3.append("s", ANY, _envs("rolled", 1))
        c3.rollback()
        assert tx3.stream_offsets is None and store.head("s") == 5


def test_any_on_a_deleted_stream_continues_at_its_old_head(open_store: OpenStore) -> None:
    with open_store() as store:
        with store.transaction() as tx:
            tx.append("s", 0, _envs("old", 3))
        store.delete_stream("s")
        assert not store.stream("s").found
        with store.transaction() as tx:
            tx.append("s", ANY, _envs("new", 2))
        assert tx.stream_offsets == {"s": range(3, 5)}
        assert store.stream("s").found
        assert [(o, e.message["tag"]) for _, _, o, e in _located_stream(store, "s")] == [(3, "new"), (4, "new")]


def test_any_to_a_new_stream_starts_at_zero_and_errors_name_any(open_store: OpenStore) -> None:
    with open_store() as store:
        tx, committer = store.begin_tx()
        with pytest.raises(TypeError, match=r"stream 'n' at logstore\.ANY, envs\[1\]: must be an Envelope, got int"):
            tx.append("n", ANY, [*_envs("n", 1), 7])  # type: ignore[list-item]
        big = Envelope.new("Big", b"x" * (store.max_envelope_size + 1))
        with pytest.raises(logstore.MessageTooLargeError, match=r"stream 'n' at logstore\.ANY: encoded envelope is"):
            tx.append("n", ANY, [big])
        tx.append("n", ANY, _envs("n", 1))
        assert committer.commit() == range(1)
        assert tx.stream_offsets == {"n": range(1)}


def test_outbox_shared_by_concurrent_writers_commits_without_conflicts(open_store: OpenStore) -> None:
    """Four threads each commit ``order-<thread>-<n>`` (exact) plus the shared ``outbox`` (ANY).

    Each round every thread builds its transaction, then all meet at a barrier and commit at
    once, so every transaction is built against the same outbox head.
    """
    threads, rounds = 4, 40
    barrier = threading.Barrier(threads, timeout=WAIT)
    results: dict[int, list[tuple[str, range, dict[str, range] | None]]] = {t: [] for t in range(threads)}
    errors: list[BaseException] = []

    with open_store(durability="batch") as store:

        def work(t: int) -> None:
            try:
                for n in range(rounds):
                    tx, committer = store.begin_tx()
                    order = f"order-{t}-{n}"
                    tx.append(order, 0, [Envelope.new("OrderPlaced", {"t": t, "n": n})])
                    tx.append("outbox", ANY, [Envelope.new("SendMail", {"t": t, "n": n})])
                    barrier.wait()
                    committed = committer.commit()
                    results[t].append((order, committed, tx.stream_offsets))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                barrier.abort()

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(WAIT * 2)
        assert not any(w.is_alive() for w in workers)
        assert errors == []  # no OffsetConflictError, nothing else either

        outbox = _located_stream(store, "outbox")
        # Every outbox message exactly once; its stream offsets follow its global order.
        assert sorted((e.message["t"], e.message["n"]) for *_, e in outbox) == [
            (t, n) for t in range(threads) for n in range(rounds)
        ]
        assert [o for _, _, o, _ in outbox] == list(range(threads * rounds))
        assert [g for g, _, _, _ in outbox] == sorted(g for g, _, _, _ in outbox)
        # What each commit said is what reading gives.
        by_goff = {g: (o, e) for g, _, o, e in outbox}
        for t, done in results.items():
            assert len(done) == rounds
            for n, (order, committed, spans) in enumerate(done):
                assert spans is not None and spans[order] == range(1)
                (soff,) = spans["outbox"]
                (goff_order, goff_outbox) = committed
                assert by_goff[goff_outbox][0] == soff
                assert by_goff[goff_outbox][1].message == {"t": t, "n": n}
                assert [(g, o) for g, _, o, _ in _located_stream(store, order)] == [(goff_order, 0)]
    with open_store() as store:  # reopened: the same records
        assert _located_stream(store, "outbox") == outbox


def test_any_offsets_survive_reopen_and_crash(store_dir: Path) -> None:
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    expected: list[tuple[int, str, int]] = []
    for i in range(120):
        tx, committer = store.begin_tx()
        tx.append("s", ANY, _envs("s", 1 + i % 3))
        if i % 4 == 0:
            tx.append(f"x-{i}", ANY, _envs("x", 1))
        goffs = committer.commit()
        assert tx.stream_offsets is not None
        pairs = [(n, o) for n, r in tx.stream_offsets.items() for o in r]
        expected += [(g, n, o) for g, (n, o) in zip(goffs, pairs, strict=True)]
    assert [(g, n, o) for g, n, o, _ in _located_global(store)] == expected
    store.close()
    store = logstore.open(store_dir, segment_size=SMALL_SEGMENT)
    assert [(g, n, o) for g, n, o, _ in _located_global(store)] == expected
    with store.transaction() as tx:
        tx.append("s", ANY, _envs("s", 2))
    assert tx.stream_offsets == {"s": range(store.head("s") - 2, store.head("s"))}
    expected += [(g, "s", o) for g, o in zip(tx.global_offsets or (), tx.stream_offsets["s"], strict=True)]
    done = simulate_crash(store, random.Random(7))  # fsync durability: nothing acknowledged is lost
    assert done["durable_goff"] == len(expected)
    with logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert [(g, n, o) for g, n, o, _ in _located_global(store)] == expected
        for name in {n for _, n, _ in expected}:
            assert [(g, o) for g, _, o, _ in _located_stream(store, name)] == [
                (g, o) for g, n, o in expected if n == name
            ]
    # The records are ordinary ones: repair finds nothing to do, and indexes rebuilt from the log alone
    # (no CHECKPOINT) give the same offsets.
    assert not repair(str(store_dir)).changed
    (store_dir / "CHECKPOINT").unlink()
    with quiet_logstore(), logstore.open(store_dir, segment_size=SMALL_SEGMENT) as store:
        assert store.recovery_report.checkpoint != "used"
        assert [(g, n, o) for g, n, o, _ in _located_global(store)] == expected
        assert _located_stream(store, "s")[-1][2] == store.head("s") - 1


# -- 7, model-based: ANY appends among everything else ------------------------------------------


class _AnyRules:
    """Rules for the model machine of tests/model/test_model.py: transactions with ANY appends, some
    interleaved with another transaction's commit; reads also check where each message belongs."""

    def _commit_any(self: Any, data: st.DataObject) -> None:
        plan = data.draw(transaction_plans(list(self.streams)), label="plan")
        tx, committer = self.s.begin_tx()
        any_streams: set[str] = set()
        exact_streams: set[str] = set()  # those with an exact append (before any ANY one)
        for k, (name, envs) in enumerate(plan):
            if name in any_streams or data.draw(st.booleans(), label=f"ANY for {name!r}"):
                any_streams.add(name)
                tx.append(name, ANY, envs)
            else:
                offset = self._head(name) + sum(len(e) for n, e in plan[:k] if n == name)
                tx.append(name, offset, envs)
                exact_streams.add(name)
        other = None
        contested = False
        if any_streams and data.draw(st.booleans(), label="another commit first"):
            name = data.draw(st.sampled_from(sorted(any_streams)), label="contested stream")
            with self.s.transaction() as other:
                envs = data.draw(envelope_batches, label="other's envelopes")
                other.append(name, self._head(name), envs)
            self._record([(name, self._head(name) + i, e) for i, e in enumerate(envs)], other.global_offsets)
            contested = name in exact_streams
        if contested:  # the other commit hit one of this transaction's exact streams
            with pytest.raises(OffsetConflictError):
                committer.commit()
            return
        result = committer.commit()
        # The model assigns the same offsets: each stream's appends follow on from its head.
        heads: dict[str, int] = {}
        messages = []
        for name, envs in plan:
            offset = heads.get(name, self._head(name))
            messages += [(name, offset + i, e) for i, e in enumerate(envs)]
            heads[name] = offset + len(envs)
        assert tx.stream_offsets == {n: range(self._head(n), h) for n, h in heads.items()}
        self._record(messages, result)

    def _read_located(self: Any, data: st.DataObject) -> None:
        """A stream reader says each message's global offset as the model's log has it."""
        if not self.streams:
            return
        name = data.draw(st.sampled_from(list(self.streams)), label="stream")
        start = data.draw(st.integers(0, len(self.streams[name])), label="from offset")
        expected = [(g, n, o, e) for g, (n, o, e) in enumerate(self.log) if n == name and o >= start]
        assert _located_stream(self.s, name, start) == expected

    def _check_global(self: Any, start: int) -> None:
        got = _located_global(self.s, start)
        assert got == [(start + i, n, o, e) for i, (n, o, e) in enumerate(self.log[start:])]

    @rule(data=st.data())
    def commit_any(self, data: st.DataObject) -> None:
        self._commit_any(data)

    @rule(data=st.data())
    def read_located(self, data: st.DataObject) -> None:
        self._read_located(data)


class AnyFsyncModel(_AnyRules, FsyncModel):
    pass


class AnyNoSyncModel(_AnyRules, NoSyncModel):
    pass


class AnyApiModel(_AnyRules, ApiModel):
    pass


def test_any_appends_follow_the_model_on_every_backend(backend: OpenAt) -> None:
    """The ANY rules beside the contract's (no crashes): on every backend."""
    run_model(AnyApiModel, backend)


TestAnyFsyncModel = AnyFsyncModel.TestCase
TestAnyFsyncModel.settings = settings(stateful_step_count=30)
TestAnyNoSyncModel = AnyNoSyncModel.TestCase
TestAnyNoSyncModel.settings = settings(stateful_step_count=30, max_examples=20)


# -- 8: short forms and what a wrong envs says ------------------------------------------------------


def test_short_forms_are_the_long_forms(open_store: OpenStore) -> None:
    with open_store() as store:
        with store.transaction() as tx:
            tx.append("order-42", 0, _envs("o", 2))
            tx.append("gone", 0, _envs("g", 1))
        store.delete_stream("gone")
        for name, offset in (("order-42", 0), ("order-42", 1), ("order-42", 9), ("none", 0), ("gone", 0)):
            long_form, found = store.open_stream(store, name, offset)
            short = store.stream(name, offset=offset)
            assert type(short) is type(long_form) and isinstance(short, LocatedStream)
            assert short.found is found is long_form.found
            assert list(short) == list(long_form)
            short.close()
            long_form.close()
        assert store.stream("order-42").found and not store.stream("none").found
        assert not store.stream("gone").found
        with store.global_stream(1) as g, store.open_global(store, 1) as h:
            assert type(g) is type(h) and isinstance(g, LocatedStream)
            assert [(g.offset(), e) for e in g] == [(h.offset(), e) for e in h]


@pytest.mark.parametrize(("args", "error", "match"), BAD_STREAM_ARGUMENTS)
def test_short_forms_check_like_the_long_forms(
    open_store: OpenStore, args: tuple[Any, Any], error: type[Exception], match: str
) -> None:
    with open_store() as store:
        name, offset = args
        with pytest.raises(error, match=match):
            store.stream(name, offset)
        if name == "s":
            with pytest.raises(error, match=match):
                store.global_stream(offset)
        tx, committer = store.begin_tx()
        with pytest.raises(error, match=match):
            tx.append(name, offset, _envs("s", 1))
        with pytest.raises(error, match=match):
            store.append_messages(tx, name, offset, _envs("s", 1))
        committer.rollback()
        with pytest.raises(ValueError, match="rolled back"):
            tx.append("s", 0, _envs("s", 1))
    with pytest.raises(logstore.StoreClosedError):
        store.stream("s")
    with pytest.raises(logstore.StoreClosedError):
        store.global_stream()


@pytest.mark.parametrize("short", [True, False])
@pytest.mark.parametrize(
    ("envs", "match"),
    [
        (Envelope.new("T", 1), r"envs must be a sequence of Envelope \(a list\), got one Envelope: wrap it in a list"),
        ("abc", r"envs must be a sequence of Envelope \(a list\), got str"),
        (b"abc", r"envs must be a sequence of Envelope \(a list\), got bytes"),
        ({"type": "T"}, r"envs must be a sequence of Envelope \(a list\), got dict"),
        (None, r"envs must be a sequence of Envelope \(a list\), got NoneType"),
        ([Envelope.new("T", 1), "x"], r"stream 's' offset 1, envs\[1\]: must be an Envelope, got str"),
        ([{"type": "T"}], r"stream 's' offset 0, envs\[0\]: must be an Envelope, got dict"),
    ],
)
def test_wrong_envs_say_a_list_of_envelopes_is_needed(
    open_store: OpenStore, envs: object, match: str, short: bool
) -> None:
    with open_store() as store:
        tx, committer = store.begin_tx()
        for offset in (0, ANY):
            # With ANY the stream offset is not known: the message says "at logstore.ANY" instead.
            expected = match if offset == 0 else re.sub(r"offset \d", r"at logstore\\.ANY", match)
            with pytest.raises(TypeError, match=expected):
                if short:
                    tx.append("s", offset, envs)  # type: ignore[arg-type]
                else:
                    store.append_messages(tx, "s", offset, envs)  # type: ignore[arg-type]
        assert committer.commit() == range(0)  # nothing was added


def test_a_tuple_of_envelopes_is_still_accepted(open_store: OpenStore) -> None:
    with open_store() as store:
        with store.transaction() as tx:
            tx.append("s", 0, tuple(_envs("s", 2)))
        assert tx.global_offsets == range(2)
