"""The message-id index: where each message id is in the log, for idempotent appends and ``store.locate``.

A derived index (:mod:`logstore.embedded.derived`) kept by the engine
beside its own: the writer adds each committed message inline (it knows the
id, the stream and the offsets, so nothing is read back), recovery and the
follower of other processes' commits apply the records they walk (the id
is the envelope's first msgpack field, read without decoding the rest),
and each checkpoint saves it. The structure and its files are
:mod:`logstore.index.msgids`: sorted runs of (xxh3-64 of the id, global
offset) in numpy arrays, the recent entries since the last fold or
checkpoint (numpy arrays in log order, and Python lists of the newest), and
a bounded Python set of the hashes of the recent entries and of the runs
checkpoints made from them, which the writer's check tests a transaction's
ids against in one call, and a filter of the other runs' hashes
(:class:`~logstore.index.msgids.HashFilter`) that spares it a search of
each. A hash hit is a candidate only: the record at that global offset is
read and its id compared, so a collision of two ids costs
one read and never a wrong answer.

The writer's check (:meth:`MessageIds.check`, in the group processing
before the offset check and the framing): for each envelope of a
transaction, where the stream it is appended to already holds its id.

- None of them anywhere: the transaction goes on as any other.
- Every one at the very offset the transaction gives it (an append at
  ``ANY``: at consecutive offsets), and their global offsets one range: a
  retry of a commit whose outcome its client did not learn. Nothing is
  written and ``commit()`` returns that range.
- Anything else (an id at another offset of the stream, twice in the
  transaction, or a transaction mixing committed messages with new ones):
  :class:`~logstore.DuplicateMessageError`, nothing written.

Lock rules: the holder of the writer role alone calls ``check``,
``withdraw``, ``added``, ``apply``, ``prepare`` and ``encode``. Readers call
:meth:`locate`; they read ``recent`` (a set: single lookups are atomic), the
pending lists (appended to, or replaced whole once their entries are in the
arrays, which readers look at after them), the recent arrays (each a
:class:`~logstore.index.growable.Growable`), the sorted copy of them and
``runs`` (replaced whole, never changed in place), and bound what they
report by the published ``visible_end``. A reader may see an entry twice
(moving from the lists to the arrays) or a hash in the set before its entry:
candidates are compared with the records, and duplicates dropped.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from itertools import chain
from typing import TYPE_CHECKING, Protocol

import numpy as np
from xxhash import xxh3_64_intdigest

from logstore.embedded import layout
from logstore.embedded.derived import Applied, Deferred, DerivedIndex, IndexHost
from logstore.embedded.record import KIND_LOST, KIND_MESSAGE, KIND_REMOVED, Record
from logstore.embedded.walk import record_at
from logstore.errors import CorruptionError, DuplicateMessageError, as_corruption
from logstore.index.errors import FormatError
from logstore.index.growable import Growable
from logstore.index.msgids import (
    HashFilter,
    Run,
    decode_generation,
    encode_generation,
    merge,
    sorted_run,
    stable_order,
)
from logstore.tx import ANY_OFFSET

if TYPE_CHECKING:
    from logstore.embedded.checkpoint import Checkpoint
    from logstore.embedded.fileio import FileIO
    from logstore.embedded.segment import Segment
    from logstore.index.catalog import Catalog
    from logstore.tx import Append, Tx


class MessageIdHost(IndexHost, Protocol):
    """What the message-id index uses of its log (:class:`logstore.embedded.log.Log`)."""

    generation: int
    next_goff: int

    @property
    def catalog(self) -> Catalog: ...

    def segment_for(self, goff: int) -> Segment: ...


logger = logging.getLogger("logstore")

FILE = "msgids"
RUN_PREFIX = "msgids-"
RUN_EXT = ".run"

# Recent entries beyond this many are folded into an unsaved sorted run (numpy), so that the dict stays
# small; a checkpoint keeps up to this many in the generation file and writes the rest as a run file.
RECENT_MAX = 1 << 18

# Entries added since the last move into the recent arrays beyond this many are moved (one numpy call for
# many transactions' entries).
FLUSH_AT = 1 << 13

# The recent entries a lookup scans past the sorted copy of the arrays before the copy is made again.
SORTED_REST = 1 << 16

# A transaction with at most this many ids tests them against the filter of the runs in Python ints.
_FEW_KEYS = 8

# The entries of records applied before a deferred load beyond this many make the load happen then (a
# follower of other processes' commits that never looks an id up keeps no more of them).
EARLY_MAX = 1 << 16

hash_bytes = xxh3_64_intdigest
"""The key of a message id's UTF-8 bytes (:func:`logstore.index.msgids.id_hash`); one name for every use here."""

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")


def run_name(generation: int) -> str:
    return f"{RUN_PREFIX}{generation:020d}{RUN_EXT}"


def is_run_name(name: str) -> bool:
    stem = name[len(RUN_PREFIX) : -len(RUN_EXT)]
    return name.startswith(RUN_PREFIX) and name.endswith(RUN_EXT) and len(stem) == 20 and stem.isdigit()


def is_index_file(name: str) -> bool:
    """Whether ``name`` (in the store directory) is a file of the message-id index, or its temporary file."""
    bare = name.removesuffix(".tmp")
    return bare.startswith(FILE + ".") or is_run_name(bare)


def message_id_at(buf: object, start: int, end: int) -> bytes | None:
    """The UTF-8 bytes of the message id of the envelope at ``buf[start:end]``, or None if it is not one.

    An envelope is a msgpack array of seven items whose first is the id
    (:mod:`logstore.envelope`): a fixarray byte ``0x97``, then a str header.
    """
    view = memoryview(buf)  # type: ignore[arg-type]
    if end - start < 2 or view[start] != 0x97:
        return None
    b = view[start + 1]
    if 0xA0 <= b <= 0xBF:
        n, s = b & 0x1F, start + 2
    elif b == 0xD9 and end - start >= 3:
        n, s = view[start + 2], start + 3
    elif b == 0xDA and end - start >= 4:
        (n,), s = _BE16.unpack_from(view, start + 2), start + 4
    elif b == 0xDB and end - start >= 6:
        (n,), s = _BE32.unpack_from(view, start + 2), start + 6
    else:
        return None
    if s + n > end:
        return None
    return bytes(view[s : s + n])


def record_message_id(buf: object, rec: Record) -> bytes | None:
    """The message id of message record ``rec`` of ``buf`` (None for other kinds)."""
    if rec.kind != KIND_MESSAGE:
        return None
    return message_id_at(buf, rec.payload_start, rec.position + rec.length - 8)


class MessageIds(DerivedIndex):
    """The message-id index of one log; see the module docstring."""

    file = FILE
    label = "message-id index"

    def __init__(self, log: MessageIdHost | None) -> None:
        super().__init__()
        self.log = log
        # The hashes of the recent entries, and of every entry of a run at or past ``_set_from`` (a checkpoint
        # writes the recent entries as a run but keeps their hashes here): a set, for the writer's check
        # (no hash of a transaction in it: one C call, and no search of the runs it covers) and to tell a
        # reader whether to look for a hash among the recent entries at all.
        self.recent: set[int] = set()
        self._set_from = 0
        self._high = 0  # past the highest global offset added
        self._search_runs: list[Run] = []  # the runs the set does not cover, which the check searches
        # A filter of the entries of those runs, made when the check first needs it: a key it does not hold
        # is in none of them, so a transaction of new ids is judged without searching each run.
        self._filter: HashFilter | None = None
        self._filter_to = 0  # it holds every entry below this global offset
        # The recent entries themselves (hash, global offset), in the order they were added (the log's):
        # what a fold or a checkpoint sorts into a run, and where a lookup finds a hash's global offsets.
        self.recent_hashes = Growable(np.uint64)
        self.recent_goffs = Growable(np.uint64)
        # Entries not in the arrays yet: chunks of (hashes, global offset of the first), the hashes at
        # consecutive global offsets; moved into the arrays in one call every FLUSH_AT entries or before
        # the arrays are read (writer role), so that a commit adds no numpy call per transaction.
        self._pending: list[tuple[list[int], int]] = []
        self._pending_count = 0
        # The recent arrays' first entries sorted by hash, for lookups: (the hash Growable it was made
        # from, how many entries it covers, hashes, global offsets); remade when it falls far behind.
        self._sorted: tuple[Growable, int, np.ndarray, np.ndarray] | None = None
        self.runs: list[Run] = []
        self.start = 0  # entries below it belong to records that retention dropped
        # This group's transactions, not written yet: (first global offset, transaction).
        self.unwritten: list[tuple[int, Tx]] = []
        # check() -> added(): the hashes of the transaction's ids, in order, and whether they are new (none of
        # them in the index, none twice in the transaction); new ones are in ``recent`` already
        self._flat: list[int] = []
        self._simple = False
        # A load left to the first use (recovery's defer): the files, and the entries of the records applied
        # meanwhile (hash, global offset), added once the files are loaded. The lock orders the load with
        # those applies; once loaded, nothing takes it.
        self._deferred: Deferred | None = None
        self._early: list[tuple[int, int]] = []
        self._load_lock = threading.Lock()

    # -- the deferred load -------------------------------------------------------------

    lazy = True

    def deferred_files(self, names: list[str], ckpt: Checkpoint) -> list[str]:
        # The generation file and every run file there: which of them it lists is read at the load, and
        # another process's checkpoint may remove the older ones meanwhile.
        gen = os.path.basename(layout.index_path("", FILE, ckpt.generation))
        return [gen, *(n for n in names if is_run_name(n))]

    def defer(self, files: Deferred) -> None:
        self._deferred = files

    def load_now(self) -> None:
        self.ensure()

    def release(self) -> None:
        with self._load_lock:
            files, self._deferred = self._deferred, None
            self._early = []
        if files is not None:
            files.close()

    def ensure(self) -> None:
        """Load the files whose load the open deferred, if it did (any thread; the first use pays it). Files
        found unusable now make it rebuild itself from the log up to their checkpoint, as the open would."""
        if self._deferred is not None:
            with self._load_lock:
                self._load_deferred()

    def _load_deferred(self) -> None:
        """:meth:`ensure`'s load, under the load lock (another thread may have loaded meanwhile)."""
        files = self._deferred
        if files is not None:
            gen = files.generation_file(FILE)
            if files.load_or_rebuild(
                self.label,
                lambda: self.load(files.read(gen), files.ckpt, lambda g: files.read(run_name(g))),
                lambda: self._rebuild(files),
            ):
                self.stale = True
            early, self._early = self._early, []
            for h, goff in early:
                self.add(h, goff)
            self._deferred = None
            files.close()

    def _rebuild(self, files: Deferred) -> None:
        """Every entry of the log below the checkpoint of ``files``, from the records themselves."""
        self._reset_entries()
        for seg, rec in files.walk():
            if rec.kind == KIND_MESSAGE:
                self.apply_record(seg.view, rec)
        self.start = files.ckpt.log_start
        self._high = max(self._high, files.ckpt.next_goff)

    # -- the table -------------------------------------------------------------------

    def add(self, h: int, goff: int) -> None:
        """Add one entry (recovery, a follower, the writer's slow path), in log order."""
        self.recent.add(h)
        self._high = goff + 1
        pending = self._pending
        if pending:
            hashes, first = pending[-1]
            if first + len(hashes) == goff:
                hashes.append(h)
            else:
                pending.append(([h], goff))
        else:
            pending.append(([h], goff))
        self._pending_count += 1
        if self._pending_count >= FLUSH_AT:
            self._flush()
        if len(self.recent) > RECENT_MAX:
            self._fold()

    def _recent_run(self) -> Run:
        """The recent entries as a sorted run: added in log order, so a stable sort by hash keeps each
        hash's global offsets ascending."""
        self._flush()
        keys = self.recent_hashes.view()
        order = stable_order(keys)
        return Run(keys[order], self.recent_goffs.view()[order])

    def _flush(self) -> None:
        """Move the pending entries into the arrays (writer role). The arrays first, then the chunks go: a
        reader that looks at the chunks, then the arrays, finds every entry in one or the other."""
        pending = self._pending
        if not pending:
            return
        n = self._pending_count
        hashes = np.fromiter(chain.from_iterable(c[0] for c in pending), np.uint64, n)
        counts = np.fromiter((len(c[0]) for c in pending), np.int64, len(pending))
        firsts = np.fromiter((c[1] for c in pending), np.int64, len(pending))
        # each chunk's global offsets: its first plus the entry's place in the chunk
        goffs = np.arange(n, dtype=np.int64) + np.repeat(firsts - (np.cumsum(counts) - counts), counts)
        self.recent_hashes.extend(hashes)
        self.recent_goffs.extend(goffs.astype(np.uint64))
        self._pending = []
        self._pending_count = 0

    def _clear_arrays(self) -> None:
        """Forget the recent entries, which are in a run now (their hashes stay in the set)."""
        self._pending = []
        self._pending_count = 0
        self.recent_hashes = Growable(np.uint64)
        self.recent_goffs = Growable(np.uint64)
        self._sorted = None

    def _clear_recent(self) -> None:
        """Forget the recent entries and empty the set: it covers no run from now on."""
        self._clear_arrays()
        self.recent = set()
        self._set_from = self._high
        self._set_runs(self.runs)

    def _drop_filter(self) -> None:
        """Forget the filter (the runs are replaced by others: loaded, taken, or reset)."""
        self._filter = None
        self._filter_to = 0

    def _set_runs(self, runs: list[Run]) -> None:
        """Hold ``runs`` (readers see the old list or the new one, never a list being changed)."""
        self.runs = runs
        self._search_runs = [r for r in runs if len(r) and (r.low() or 0) < self._set_from]

    def _fold(self) -> None:
        """Move the recent entries into a new unsaved sorted run (the next checkpoint merges the unsaved
        runs), and empty the set, which has grown past RECENT_MAX."""
        self._set_runs([*self.runs, self._recent_run()])
        self._clear_recent()

    def _sorted_recent(self) -> tuple[Growable, int, np.ndarray, np.ndarray]:
        """The sorted copy of the recent arrays, remade once the entries past it outnumber those in it and
        SORTED_REST (writer role, after a flush): a lookup searches the copy and scans the rest, and the
        sorts cost O(log n) per entry however often lookups come."""
        arr = self.recent_hashes
        n = len(arr)
        got = self._sorted
        if got is None or got[0] is not arr or n - got[1] > max(SORTED_REST, got[1]):
            keys = arr.view()
            order = stable_order(keys)
            got = self._sorted = (arr, n, keys[order], self.recent_goffs.view()[:n][order])
        return got

    def _recent_candidates(self, h: int) -> list[int]:
        """Global offsets of recent entries whose hash is ``h`` (any thread: the pending chunks first, then
        the arrays; an entry being moved is found in one or both)."""
        out: list[int] = []
        for hashes, first in list(self._pending):
            if h in hashes:
                out.extend(first + k for k, x in enumerate(hashes) if x == h)
        arr, goff_arr = self.recent_hashes, self.recent_goffs
        keys, goffs = arr.view(), goff_arr.view()
        n = min(len(keys), len(goffs))  # the writer extends one, then the other
        key = np.uint64(h)
        done = 0
        got = self._sorted
        if got is not None and got[0] is arr and got[1] <= n:
            _arr, done, sorted_keys, sorted_goffs = got
            lo = int(np.searchsorted(sorted_keys, key, "left"))
            hi = int(np.searchsorted(sorted_keys, key, "right"))
            out.extend(sorted_goffs[lo:hi].tolist())
        if n > done:
            out.extend(goffs[done:n][keys[done:n] == key].tolist())
        return out

    def candidates(self, h: int) -> list[int]:
        """Global offsets whose message id may hash to ``h`` (any thread)."""
        self.ensure()
        out = self._recent_candidates(h) if h in self.recent else []
        key = np.uint64(h)
        for run in self.runs:
            hs = run.hashes
            lo = int(np.searchsorted(hs, key, "left"))
            if lo < len(hs) and hs[lo] == key:
                hi = int(np.searchsorted(hs, key, "right"))
                out.extend(int(g) for g in run.goffs[lo:hi])
        return out

    def _maybe_in_runs(self, flat: list[int]) -> bool:
        """:meth:`_any_in_runs` of the hashes ``flat``; a few of them are first tested against the filter one
        by one in Python (a commit of one envelope spends 1 µs here instead of several in numpy calls)."""
        if len(flat) > _FEW_KEYS:
            return self._any_in_runs(np.array(flat, np.uint64))
        filt = self._run_filter()
        maybe = [h for h in flat if filt.may_hold_one(h)]
        return bool(maybe) and self._any_in_runs(np.array(maybe, np.uint64))

    def _any_in_runs(self, keys: np.ndarray) -> bool:
        """Whether a run that the set does not cover holds any of the hashes ``keys`` (writer role): the
        filter of those runs tests every key at once, and only the keys it may hold are searched for."""
        maybe = self._run_filter().may_hold(keys)
        if not maybe.any():
            return False
        keys = keys[maybe]
        for run in self._search_runs:
            hs = run.hashes
            if (hs.take(np.searchsorted(hs, keys), mode="clip") == keys).any():
                return True
        return False

    def _run_filter(self) -> HashFilter:
        """The filter of the entries that the set does not cover, those below ``_set_from`` (writer role),
        brought up to date: it holds every entry below ``_filter_to``, and those since are added (a fold
        moves ``_set_from``). Merges only regroup entries it holds. It is made afresh, sized for the runs'
        entries and one more fold of recent ones, when they would fill it."""
        filt = self._filter
        to = self._set_from
        if filt is not None and self._filter_to >= to:
            return filt
        runs = self._search_runs
        start = 0 if filt is None else self._filter_to
        parts = [_between(r, start, to) for r in runs if (r.high() or 0) >= start]
        if filt is None or filt.count + sum(map(len, parts)) > filt.capacity:
            filt = self._filter = HashFilter(sum(map(len, runs)) + RECENT_MAX)
            parts = [_between(r, 0, to) for r in runs]
        for part in parts:
            filt.add(part)
        self._filter_to = to
        return filt

    def entries(self) -> Run:
        """Every entry at or past the log's start, as one sorted run (verify, tests)."""
        self.ensure()
        return merge([*self.runs, self._recent_run()], self._log_start())

    def _log_start(self) -> int:
        return self.start if self.log is None else max(self.start, self.log.published.log_start)

    # -- reading records -------------------------------------------------------------------

    def _place(self, goff: int) -> tuple[bytes, int, int, str | None] | None:
        """(id, stream id, stream offset, name if NAMED) of the message record at ``goff``, or None."""
        lg = self.log
        assert lg is not None
        try:
            seg = lg.segment_for(goff)
            pos = seg.positions.position(goff)
            buf = seg.view
            rec = record_at(buf, pos, len(buf))
        except (KeyError, IndexError, ValueError, OSError):
            return None
        if rec is None or rec.goff != goff:
            return None
        mid = record_message_id(buf, rec)
        if mid is None:
            return None
        return mid, rec.sid, rec.soff, rec.name

    def locate(self, message_id: str, visible_end: int) -> Iterator[tuple[int, int, int]]:
        """``(stream id, stream offset, global offset)`` of every readable message ``message_id`` below
        ``visible_end``, in global order (any thread)."""
        lg = self.log
        assert lg is not None
        want = message_id.encode()
        start = self._log_start()
        cat = lg.catalog
        for goff in sorted(set(self.candidates(hash_bytes(want)))):
            if goff < start or goff >= visible_end:
                continue
            place = self._place(goff)
            if place is None or place[0] != want:
                continue
            _mid, sid, soff, _name = place
            if sid < len(cat.first) and soff >= int(cat.first[sid]):  # not removed by truncation or deletion
                yield sid, soff, goff

    # -- the writer's check ------------------------------------------------------------------

    def candidates_many(self, hashes: list[int], covered: list[bool] | None = None) -> list[list[int]]:
        """:meth:`candidates` of each of ``hashes``, with numpy searches for all of them at once (writer
        role); ``covered[k]`` is set if ``hashes[k]`` has an entry that the set covers (one at or past
        ``_set_from``: a recent one, or one in a run a checkpoint made from recent entries, whichever run
        a later merge put it in)."""
        self.ensure()
        out: list[list[int]] = [[] for _ in hashes]
        if not hashes:
            return out
        keys = np.fromiter(hashes, np.uint64, len(hashes))
        if not self.recent.isdisjoint(hashes):
            self._recent_many(hashes, keys, out)
        for run in self.runs:
            _search(run.hashes, run.goffs, keys, out)
        if covered is not None:
            low = self._set_from
            for k, got in enumerate(out):
                covered[k] = any(g >= low for g in got)
        return out

    def _recent_many(self, hashes: list[int], keys: np.ndarray, out: list[list[int]]) -> None:
        """Add to ``out[k]`` the global offsets of the recent entries whose hash is ``hashes[k]`` (writer role)."""
        self._flush()
        arr, done, sorted_keys, sorted_goffs = self._sorted_recent()
        _search(sorted_keys, sorted_goffs, keys, out)
        rest = arr.view()[done:]
        if len(rest):  # the entries past the sorted copy, each looked for among the (sorted) keys
            rest_goffs = self.recent_goffs.view()[done : done + len(rest)]
            where: dict[int, list[int]] = {}
            for k, h in enumerate(hashes):
                where.setdefault(h, []).append(k)
            ordered = np.sort(keys)
            at = np.minimum(np.searchsorted(ordered, rest), len(ordered) - 1)
            for p in np.flatnonzero(ordered[at] == rest).tolist():
                for k in where[int(rest[p])]:
                    out[k].append(int(rest_goffs[p]))

    def _in_stream(self, goffs: list[int], mid: str, name: str, sid: int | None, cat: Catalog) -> list[tuple[int, int]]:
        """(stream offset, global offset) of every place among the candidates ``goffs`` where stream ``name``
        (id ``sid``) holds ``mid`` (writer role)."""
        lg = self.log
        assert lg is not None
        written_end = lg.next_goff
        start = self._log_start()
        want = mid.encode()
        out = []
        for goff in goffs:
            if goff >= written_end:  # this group's, not written yet
                got = self._unwritten(goff)
                if got is not None and got[0] == mid and got[1] == name:
                    out.append((got[2], goff))
                continue
            if sid is None or goff < start:
                continue
            place = self._place(goff)
            if place is None or place[0] != want or place[1] != sid:
                continue
            soff = place[2]
            if soff >= int(cat.first[sid]):
                out.append((soff, goff))
        return out

    def check(self, tx: Tx, ids: dict[str, int], cat: Catalog) -> range | DuplicateMessageError | None:
        """Judge ``tx`` against the index (writer role, before its offsets are checked; see the module
        docstring): None to commit it, a range for a retry (nothing to write), or the error to raise."""
        self.ensure()
        mids = tx.message_ids
        if len(mids) == 1:
            flat = list(map(hash_bytes, map(str.encode, mids[0])))
        else:
            flat = [hash_bytes(m.encode()) for one in mids for m in one]
        self._flat = flat
        # The common case in one C call: the set of recent hashes grows by all of them, so none was among
        # the recent entries and none is twice in the transaction; then none may be in a run. They stay in
        # the set: added() keeps them, withdraw() takes them out if the transaction is not written after all.
        recent = self.recent
        before = len(recent)
        recent.update(flat)
        if len(recent) - before == len(flat):
            if not (self._search_runs and self._maybe_in_runs(flat)):
                self._simple = True
                return None
            recent.difference_update(flat)  # all of them were new to the set
        elif len(recent) - before == len(set(flat)):
            # All of them new to the set, some hash twice in the transaction: one message in several streams
            # (allowed), twice in one stream (not), or two ids that share a hash.
            if not (self._search_runs and self._maybe_in_runs(flat)):
                # In no entry either (as above). Each (stream, id) once: new, and committed as any other.
                placed = {(a[0], m) for a, one in zip(tx.appends, mids, strict=True) for m in one}
                if len(placed) == len(flat):
                    self._simple = True
                    return None
                recent.difference_update(flat)
                # The judge reports the id twice in one stream, with no lookup.
                self._simple = False
                return self._judge(tx, ids, cat, [[] for _ in flat])
            recent.difference_update(flat)
        else:
            # Take out again the hashes that were not in the set before: those of no entry that the set
            # covers (every hash in it but this transaction's belongs to one). The lookup is the judge's.
            covered: list[bool] = [False] * len(flat)
            cands = self.candidates_many(flat, covered)
            recent.difference_update([h for h, known in zip(flat, covered, strict=True) if not known])
            self._simple = False
            return self._judge(tx, ids, cat, cands)
        self._simple = False
        return self._judge(tx, ids, cat, self.candidates_many(flat))

    def withdraw(self) -> None:
        """The transaction that :meth:`check` just passed is not written (its offsets conflict): take its
        hashes out again (writer role)."""
        if self._simple:
            self.recent.difference_update(self._flat)
            self._simple = False

    def _judge(
        self, tx: Tx, ids: dict[str, int], cat: Catalog, cands: list[list[int]]
    ) -> range | DuplicateMessageError | None:
        """The slow path of :meth:`check`: some id may be in the index (or twice in the transaction);
        ``cands``: :meth:`candidates_many` of its hashes."""
        matched: list[int] = []  # global offsets of envelopes committed where the transaction puts them
        first_match: tuple[str, str, int] | None = None  # (stream, id, stream offset) of the first of them
        fresh = False  # some envelope is new to its stream
        placed: dict[tuple[str, str], int | None] = {}  # (stream, id) -> offset the transaction gives it
        assigned: list[Append] = []
        at = 0  # where the append's envelopes start among the transaction's
        for (name, nameb, first, payloads), mids in zip(tx.appends, tx.message_ids, strict=True):
            sid = ids.get(name)
            any_start: int | None = None
            for j, mid in enumerate(mids):
                offset = None if first == ANY_OFFSET else first + j
                if (name, mid) in placed:
                    before = placed[(name, mid)]
                    return DuplicateMessageError(
                        name, mid, offset, -1 if before is None else before, "twice in one transaction"
                    )
                placed[(name, mid)] = offset
                places = self._in_stream(cands[at + j], mid, name, sid, cat)
                if not places:
                    fresh = True
                    continue
                soffs = [s for s, _g in places]
                want = offset
                if offset is None:  # at ANY: a retry's offsets follow on from where its first envelope is
                    if j == 0:
                        any_start = min(soffs)
                    want = None if any_start is None else any_start + j
                if want is None or want not in soffs:
                    return DuplicateMessageError(name, mid, offset, min(soffs))
                matched.append(next(g for s, g in places if s == want))
                if first_match is None:
                    first_match = (name, mid, want)
            start = any_start if first == ANY_OFFSET and any_start is not None else first
            assigned.append((name, nameb, start, payloads))
            at += len(mids)
        if first_match is None:
            return None
        name, mid, soff = first_match
        if fresh:
            return DuplicateMessageError(
                name,
                mid,
                soff,
                soff,
                "committed there already, and the transaction also holds new messages: it is not a retry "
                "of one commit, so nothing of it is written",
            )
        matched.sort()
        span = range(matched[0], matched[-1] + 1)
        if len(span) != len(matched) or len(set(matched)) != len(matched):
            return DuplicateMessageError(
                name,
                mid,
                soff,
                soff,
                "every message of the transaction is committed already, but not at one range of global "
                "offsets: it is not a retry of one commit",
            )
        if tx.has_any:
            tx.assign(assigned)
        return span

    def added(self, tx: Tx, tx_first: int) -> None:
        """``tx`` passed the check and was framed from global offset ``tx_first`` on (writer role)."""
        lg = self.log
        assert lg is not None
        if tx_first == lg.next_goff:
            self.unwritten = []  # the first transaction of a group: earlier groups' messages are written
        self.unwritten.append((tx_first, tx))
        flat = self._flat
        if self._simple:  # in the set already (check): pending entries, a chunk of their own or the last one's
            self._simple = False
            pending = self._pending
            if pending and pending[-1][1] + len(pending[-1][0]) == tx_first:
                pending[-1][0].extend(flat)
            else:
                pending.append((flat, tx_first))
            self._pending_count += len(flat)
            self._high = tx_first + len(flat)
            if self._pending_count >= FLUSH_AT:
                self._flush()
            if len(self.recent) > RECENT_MAX:
                self._fold()
            return
        for k, h in enumerate(flat):
            self.add(h, tx_first + k)

    def _unwritten(self, goff: int) -> tuple[str, str, int] | None:
        """(id, stream, stream offset) of message ``goff`` of the group being framed (not written yet)."""
        for first, tx in self.unwritten:
            k = goff - first
            if k < 0:
                continue
            for (name, _nb, soff, payloads), mids in zip(tx.appends, tx.message_ids, strict=True):
                if k < len(payloads):
                    return mids[k], name, soff + k
                k -= len(payloads)
        return None

    def take(self, other: MessageIds) -> None:
        """Hold what ``other`` (the same log's index, loaded afresh by a follower) holds."""
        other.ensure()  # before its log's segments become this log's
        self.release()
        other._flush()
        self.recent, self.start = other.recent, other.start
        self._set_from, self._high = other._set_from, other._high
        self._drop_filter()
        self._set_runs(other.runs)
        self.recent_hashes, self.recent_goffs = other.recent_hashes, other.recent_goffs
        self._pending, self._pending_count = [], 0
        self._sorted = other._sorted
        self.unwritten = []

    # -- DerivedIndex ----------------------------------------------------------------

    def reset(self) -> None:
        self.release()
        self._reset_entries()

    def _reset_entries(self) -> None:
        self._high = 0
        self._drop_filter()
        self._set_runs([])
        self._clear_recent()
        self.start = 0
        self.unwritten = []

    def apply(self, records: Applied) -> None:
        lg = self.log
        assert lg is not None
        segments = lg.segments
        if self._deferred is not None:
            with self._load_lock:
                if self._deferred is not None:  # not loaded yet: keep the entries for after the load
                    early = self._early
                    for i, rec in records:
                        mid = record_message_id(segments[i].view, rec)
                        if mid is not None:
                            early.append((hash_bytes(mid), rec.goff))
                    if len(early) < EARLY_MAX:
                        return
            if self._deferred is not None:
                self.ensure()  # too many kept: load now (what is kept is added after the files)
                return
        for i, rec in records:
            if rec.kind == KIND_MESSAGE:
                self.apply_record(segments[i].view, rec)

    def apply_record(self, buf: object, rec: Record) -> None:
        """Index one record of ``buf`` (a message record; others are ignored)."""
        mid = record_message_id(buf, rec)
        if mid is not None:
            self.add(hash_bytes(mid), rec.goff)

    def prepare(self) -> bool:
        """Checkpoint step 1: write the unsaved entries as one run file, merged with the runs before it
        while they are no more than twice its size (so a log of n messages has O(log n) runs), fsynced;
        remove run files that neither the checkpoint in force nor the coming one lists."""
        self.ensure()
        lg = self.log
        assert lg is not None
        generation = lg.generation + 1
        start = self._log_start()
        runs = list(self.runs)
        # A run whose file is gone is written again: another process's checkpoint removes the run files
        # that neither its checkpoint nor the one in force lists, which may be this process's older ones.
        unsaved = [r for r in runs if r.generation == 0 or not lg.io.exists(self._run_path(r.generation))]
        saved = [r for r in runs if r not in unsaved]
        folded = len(self.recent_hashes) + self._pending_count > RECENT_MAX // 4
        if folded:
            unsaved.append(self._recent_run())
        created = False
        if unsaved:
            new = merge(unsaved, start)
            while saved and len(saved[-1]) <= 2 * len(new):
                new = merge([saved.pop(), new], start)
            data = new.encode(lg.store_id, generation)
            lg.io.write_file_atomic(self._run_path(generation), data)
            saved.append(new)
            created = True
        self._set_runs(saved)
        if folded:
            # After the runs that hold its entries: a reader finds every entry in one or the other. The set
            # keeps their hashes, so the check need not search the new run (a fold empties it, past RECENT_MAX).
            self._clear_arrays()
        self.start = start
        self._remove_unlisted(lg.io, lg.directory, lg.generation, {r.generation for r in saved})
        return created

    def _remove_unlisted(self, io: FileIO, directory: str, current: int, keep: set[int]) -> None:
        """Remove run files listed by neither the generation in force (``current``) nor ``keep``."""
        try:
            saved = decode_generation(
                io.read_file(layout.index_path(directory, FILE, current)), self._store_id(), current
            )
        except (OSError, FormatError):
            return  # not knowing what the checkpoint in force lists, remove nothing
        keep = keep | {g for g, _c, _s in saved.runs}
        for name in io.listdir(directory):
            if name.endswith(".tmp") and is_run_name(name[:-4]):
                io.unlink(os.path.join(directory, name))  # a run file whose checkpoint did not finish
            elif is_run_name(name) and int(name[len(RUN_PREFIX) : -len(RUN_EXT)]) not in keep:
                io.unlink(os.path.join(directory, name))

    def _run_path(self, generation: int) -> str:
        assert self.log is not None
        return os.path.join(self.log.directory, run_name(generation))

    def _store_id(self) -> bytes:
        assert self.log is not None
        return self.log.store_id

    def encode(self, generation: int) -> bytes:
        self.ensure()
        self.stale = False
        return encode_generation(self._store_id(), generation, self._log_start(), self.runs, self._recent_run())

    def load(self, data: bytes | None, ckpt: Checkpoint, read_run: Callable[[int], bytes] | None = None) -> None:
        """Take it back from the generation file ``data`` and the run files it lists (``read_run(g)``: the
        bytes of generation ``g``'s run file; read by name when not given)."""
        lg = self.log
        assert lg is not None and data is not None
        path = layout.index_path(lg.directory, FILE, ckpt.generation)
        with as_corruption(path):
            saved = decode_generation(data, lg.store_id, ckpt.generation)
        runs = []
        for generation, count, checksum in saved.runs:
            rpath = os.path.join(lg.directory, run_name(generation))
            with as_corruption(rpath):
                raw = lg.io.read_file(rpath) if read_run is None else read_run(generation)
                runs.append(Run.decode(raw, lg.store_id, generation, count, checksum))
        for run in [*runs, saved.recent]:
            if len(run) and int(run.goffs.max()) >= ckpt.next_goff:
                raise CorruptionError(path, 0, f"an entry lies at or past the end of the log ({ckpt.next_goff})")
        self.start = max(saved.start, ckpt.log_start)
        self._high = ckpt.next_goff
        self._drop_filter()
        self.runs = runs
        self._clear_recent()  # the set covers none of the runs loaded
        recent = saved.recent  # sorted by hash, then global offset: its own sorted copy
        if len(recent):
            self.recent = set(recent.hashes.tolist())
            # The set covers the saved recent entries, which follow every entry of the runs: what lies below
            # the first of them is what it does not cover (and what the filter of the runs must hold).
            self._set_from = int(recent.goffs.min())
            self._set_runs(runs)
            self.recent_hashes = Growable(np.uint64, recent.hashes)
            self.recent_goffs = Growable(np.uint64, recent.goffs)
            hs = recent.hashes
            if len(hs) < 2 or bool((hs[1:] >= hs[:-1]).all()):  # as the format has them
                self._sorted = (self.recent_hashes, len(recent), hs, recent.goffs)
        self.unwritten = []


def _between(run: Run, start: int, stop: int) -> np.ndarray:
    """The hashes of the entries of ``run`` at global offsets ``start`` to ``stop`` (not included)."""
    low, high = run.low(), run.high()
    if low is None or high is None or (low >= start and high < stop):
        return run.hashes
    g = run.goffs
    return run.hashes[(g >= np.uint64(start)) & (g < np.uint64(stop))]


def _search(hashes: np.ndarray, goffs: np.ndarray, keys: np.ndarray, out: list[list[int]]) -> None:
    """Add to ``out[k]`` the global offsets beside ``keys[k]`` in the sorted ``hashes`` (two numpy searches)."""
    if not len(hashes):
        return
    lo = np.searchsorted(hashes, keys, "left")
    hi = np.searchsorted(hashes, keys, "right")
    for k in np.flatnonzero(hi > lo).tolist():
        out[k].extend(goffs[lo[k] : hi[k]].tolist())


def _pairs(run: Run) -> np.ndarray:
    """The entries of ``run`` as one 16-byte value each (hash, global offset), for set operations."""
    both = np.empty((len(run), 2), dtype="<u8")
    both[:, 0] = run.hashes
    both[:, 1] = run.goffs
    return both.view("V16").ravel()


def _first_goff(pairs: np.ndarray) -> int:
    return int(pairs.view("<u8").reshape(-1, 2)[:, 1].min())


def entry_differences(loaded: Run, rebuilt: Run, removed: set[int]) -> list[str]:
    """How the entries ``loaded`` from the files differ from those ``rebuilt`` from the log.

    An entry of a message that compaction has since replaced by a REMOVED
    record (its global offset in ``removed``) is in the files but not in the
    log's rebuild: harmless, since a lookup reads the record and finds no id.
    """
    if removed:
        keep = ~np.isin(loaded.goffs, np.fromiter(removed, np.uint64, len(removed)))
        loaded = Run(loaded.hashes[keep], loaded.goffs[keep])
    loaded = sorted_run(loaded.hashes, loaded.goffs)  # one order for both (by hash, then global offset)
    rebuilt = sorted_run(rebuilt.hashes, rebuilt.goffs)
    same = len(loaded) == len(rebuilt) and np.array_equal(loaded.hashes, rebuilt.hashes)
    if same and np.array_equal(loaded.goffs, rebuilt.goffs):
        return []
    a, b = _pairs(loaded), _pairs(rebuilt)
    out = []
    missing = np.setdiff1d(b, a)
    if len(missing):
        out.append(
            f"message-id index lacks {len(missing)} message(s) of the log, "
            f"the first at global offset {_first_goff(missing)}"
        )
    extra = np.setdiff1d(a, b)
    if len(extra):
        out.append(
            f"message-id index holds {len(extra)} entr(ies) that no message of the log has, "
            f"the first at global offset {_first_goff(extra)}"
        )
    if not out:
        out.append("message-id index holds an entry more than once")
    return out


class VerifyMessageIds:
    """What ``logstore verify`` checks of the message-id index: its files of the checkpoint's generation
    against an index rebuilt from the log's records below the checkpoint."""

    def __init__(self) -> None:
        self.rebuilt = MessageIds(None)
        self.removed: set[int] = set()  # global offsets of REMOVED and LOST records
        self.generations: list[str] = []
        self.run_files: list[str] = []

    def owns(self, name: str) -> bool:
        """Whether ``name`` (in the store directory) is one of the index's files."""
        if name.startswith(FILE + "."):
            self.generations.append(name)
            return True
        if is_run_name(name) or (name.endswith(".tmp") and is_run_name(name[:-4])):
            self.run_files.append(name)
            return True
        return False

    def record(self, buf: object, rec: Record, ckpt_goff: int) -> None:
        if rec.goff >= ckpt_goff:
            return
        if rec.kind == KIND_MESSAGE:
            self.rebuilt.apply_record(buf, rec)
        elif rec.kind in (KIND_REMOVED, KIND_LOST):
            self.removed.add(rec.goff)

    def against_log(
        self, io: FileIO, directory: str, store_id: bytes, ckpt: Checkpoint, live: bool
    ) -> tuple[list[tuple[str, int, str]], list[str]]:
        """(problems as (path, byte position, what), notes)."""
        problems: list[tuple[str, int, str]] = []
        notes: list[str] = []
        path = layout.index_path(directory, FILE, ckpt.generation)
        for name in self.generations:
            if name != os.path.basename(path) and not live:
                notes.append(
                    f"{os.path.join(directory, name)}: stale {MessageIds.label} generation (removed at next open)"
                )
        try:
            data = io.read_file(path)
        except FileNotFoundError:
            problems.append(
                (
                    path,
                    0,
                    f"{MessageIds.label} file of the checkpoint's generation is missing (a store written before "
                    "the index, or a lost file): the next writable open rebuilds the indexes from the log",
                )
            )
            return problems, notes
        try:
            saved = decode_generation(data, store_id, ckpt.generation)
        except FormatError as exc:
            problems.append((path, exc.position, f"{MessageIds.label}: {exc.what}"))
            return problems, notes
        runs = []
        listed = set()
        for generation, count, checksum in saved.runs:
            rpath = os.path.join(directory, run_name(generation))
            listed.add(run_name(generation))
            try:
                runs.append(Run.decode(io.read_file(rpath), store_id, generation, count, checksum))
            except FileNotFoundError:
                problems.append((rpath, 0, f"{MessageIds.label} run file that {path} lists is missing"))
            except FormatError as exc:
                problems.append((rpath, exc.position, f"{MessageIds.label} run file: {exc.what}"))
        if not live:
            for name in self.run_files:
                if name not in listed:
                    notes.append(
                        f"{os.path.join(directory, name)}: not listed by the checkpoint (removed at next checkpoint)"
                    )
        if problems:
            return problems, notes
        start = max(saved.start, ckpt.log_start)
        loaded = merge([*runs, saved.recent], start)
        self.rebuilt.start = start
        for what in entry_differences(loaded, self.rebuilt.entries(), self.removed):
            problems.append((path, 0, what))
        return problems, notes
