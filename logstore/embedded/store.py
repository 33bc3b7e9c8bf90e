"""The store: opening, the writer lock, and the messagestore API.

>>> import logstore, tempfile
>>> with logstore.open(tempfile.mkdtemp(), segment_size=1 << 20) as store:
...     with store.transaction() as tx:
...         store.append_messages(tx, "order-42", 0, [logstore.Envelope.new("OrderPlaced", {"sku": "A1"})])
...     stream, found = store.open_stream(store, "order-42", 0)
...     stream.next(timeout=1)
...     stream.get().type
'OrderPlaced'
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection, Sequence

from logstore.checks import (
    MAX_ENVELOPE_SIZE,
    MAX_STREAM_NAME,
    StoreBase,
    check_category,
    check_expected,
    check_message_id,
    check_offset,
    check_stream_name,
    check_types,
    committed_at,
)
from logstore.embedded import layout
from logstore.embedded.alone import Alone
from logstore.embedded.checkpoint import Checkpoint
from logstore.embedded.compact import compact_store
from logstore.embedded.controlfile import CLEAN_AT, DURABLE_AT, INTENT_AT, UNCHECKED, Control, SlotInfo, slot_flags
from logstore.embedded.fileio import FileIO, default_io
from logstore.embedded.follow import Follower, FollowingPublished
from logstore.embedded.lock import (
    LOCK_PAUSE,
    LOCK_WAIT,
    drop_lock_in_child,
    release_writer_lock,
    share_store_lock,
    take_store_lock,
)
from logstore.embedded.log import Log
from logstore.embedded.mounts import check_local
from logstore.embedded.positions import MemberClaim, SubscriptionFile
from logstore.embedded.published import Published
from logstore.embedded.reader import GlobalReader, SelectReader, StreamReader, close_readers, read_run
from logstore.embedded.record import KIND_DELETE, KIND_TRUNCATE, RECORD_OVERHEAD
from logstore.embedded.recovery import IndexesUnusable, Recovery, RecoveryReport
from logstore.embedded.segment import read_segment_header
from logstore.embedded.writer import Writer
from logstore.envelope import Envelope, encode_many
from logstore.errors import (
    CorruptionError,
    FormatVersionError,
    StoreClosedError,
    StoreForkedError,
    StoreLockedError,
    as_corruption,
)
from logstore.index.catalog import FLAG_DELETED
from logstore.index.errors import FormatError
from logstore.index.header import HEADER_SIZE
from logstore.results import CompactReport, Location, StreamInfo, SubscriptionInfo
from logstore.subscriptions import Subscription, check_subscription_name, definition_of, open_subscription
from logstore.tx import ANY, ANY_OFFSET, AnyOffset, Committer, Tx

logger = logging.getLogger("logstore")

DURABILITY_MODES = ("fsync", "batch", "none")
DEFAULT_SEGMENT_SIZE = 256 * 2**20
"""The most bytes a segment file grows to before the next one begins (256 MiB)."""
MIN_SEGMENT_SIZE = 64 * 2**10
MAX_SEGMENT_SIZE = 2**32 - 1
DEFAULT_FSYNC_INTERVAL = 0.01
"""Seconds between fsyncs with ``durability="batch"``."""
MAX_FSYNC_INTERVAL = 3600.0
"""Longest ``fsync_interval`` accepted (one hour)."""
DEFAULT_CHECKPOINT_BYTES = 64 * 2**20
"""Log bytes written between checkpoints (64 MiB); a segment roll and ``close()`` also checkpoint."""
_CONTROL_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)
"""Why a read-only opener may be unable to join ``CONTROL``; it then reads the store without it."""
READONLY_LOADS = 10
"""How many times a read-only open loads the log when a live writer changes files under it."""
READONLY_LOADS_BUSY = 100
"""The same once a writer checkpointed between two of the tries: its checkpoints replace the index files
the load reads (each checkpoint of the message-id and category indexes too), and a busy writer with frequent
checkpoints may outrun several loads in a row."""


def open(
    path: str | os.PathLike[str],
    *,
    durability: str = "fsync",
    fsync_interval: float = DEFAULT_FSYNC_INTERVAL,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    readonly: bool = False,
    checkpoint_bytes: int = DEFAULT_CHECKPOINT_BYTES,
    retention_age: float | None = None,
    retention_bytes: int | None = None,
    io: FileIO | None = None,
) -> Store:
    """Open (creating if need be) the store in directory ``path``.

    - ``durability``: ``"fsync"`` (commit returns once the group is on disk),
      ``"batch"`` (fsync at most every ``fsync_interval`` seconds, 0.01 by
      default, at most 3600; commit returns after the write) or ``"none"``
      (the OS decides when to write).
    - ``segment_size``: the most bytes a segment file grows to before the
      next segment begins (default 256 MiB, between 64 KiB and 4 GiB - 1);
      applies to segments created from now on. A segment file starts at
      1 MiB (at most ``segment_size``) and grows ahead of the writer in
      steps that double up to 16 MiB, so disk use follows what the store
      holds.
    - ``readonly``: open without writing anything, beside a writer process
      or alone. Live: it follows the process that writes (each transaction
      it publishes, whole and in commit order; with ``"fsync"`` only once
      durable), and a blocked ``next()`` wakes when that process commits.
    - ``checkpoint_bytes``: log bytes between index checkpoints.
    - ``retention_age`` (seconds) and ``retention_bytes``: drop whole sealed
      segments older than that, or the oldest ones while the log is larger
      than that. Checked at open and whenever a segment fills; what they
      drop is unreadable at once and its files are removed. ``None`` (the
      default) keeps everything.
    - ``io``: the file-I/O layer (tests pass a fault-injecting one).

    Raises :class:`OutOfSpaceError` if the file system has no room for a
    new store's first segment or checkpoint (a new store's files are then
    removed again), :class:`StoreLockedError` if another process holds the writer
    lock (or 256 opens already have the store open: the slots of its ``CONTROL``
    file), :class:`CorruptionError` for damage that recovery must not cut
    (``logstore repair`` fixes it; or a ``CONTROL`` file damaged while other
    processes share it), :class:`FormatVersionError` for a file (segment,
    checkpoint, catalog, index or ``CONTROL`` file) of an unknown format version.
    """
    if durability not in DURABILITY_MODES:
        raise ValueError(f"durability must be one of {DURABILITY_MODES}, got {durability!r}")
    if isinstance(fsync_interval, bool) or not isinstance(fsync_interval, int | float):
        raise TypeError(f"fsync_interval must be a number of seconds, got {type(fsync_interval).__name__}")
    if not 0 < fsync_interval <= MAX_FSYNC_INTERVAL:
        raise ValueError(f"fsync_interval must be > 0 and <= {MAX_FSYNC_INTERVAL} seconds, got {fsync_interval!r}")
    if isinstance(segment_size, bool) or not isinstance(segment_size, int):
        raise TypeError(f"segment_size must be an int, got {type(segment_size).__name__}")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(
            f"segment_size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes, got {segment_size}"
        )
    if isinstance(checkpoint_bytes, bool) or not isinstance(checkpoint_bytes, int) or checkpoint_bytes <= 0:
        raise ValueError(f"checkpoint_bytes must be a positive int, got {checkpoint_bytes!r}")
    check_retention(retention_age, retention_bytes)
    if readonly and (retention_age is not None or retention_bytes is not None):
        raise ValueError("retention options need a writable store (readonly=True was given)")
    return Store(
        os.fspath(path),
        durability=durability,
        fsync_interval=float(fsync_interval),
        segment_size=segment_size,
        readonly=bool(readonly),
        checkpoint_bytes=checkpoint_bytes,
        retention_age=None if retention_age is None else float(retention_age),
        retention_bytes=retention_bytes,
        io=io or default_io(),
    )


_live_stores: weakref.WeakSet[Store] = weakref.WeakSet()
"""Every store object of this process (from the start of its open until it is collected): the fork hook's list."""


def _after_fork_in_child() -> None:
    """Mark every store the parent held as forked, in the child, before ``os.fork()`` returns there.

    Runs with only the forking thread alive: it takes no lock (another parent
    thread may have held any of them at the fork, and would hold it for ever
    here) and writes nothing.
    """
    for store in list(_live_stores):
        store._leave_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Store(StoreBase):
    """An open store: Ax's ``DataStore``, ``Store`` and ``GloballyOrderedStore`` in one.

    Thread-safe: any number of threads may append, commit and read at once.
    Use :func:`logstore.open` to get one. A store belongs to the process that
    opened it: in a child made by ``fork()`` it raises
    :class:`~logstore.StoreForkedError` (open the store in the child instead).
    """

    # Long on purpose: the open's steps in order, with the cleanup each failure needs.
    def __init__(  # noqa: PLR0912, PLR0915
        self,
        path: str,
        *,
        durability: str,
        fsync_interval: float,
        segment_size: int,
        readonly: bool,
        checkpoint_bytes: int,
        io: FileIO,
        retention_age: float | None = None,
        retention_bytes: int | None = None,
    ) -> None:
        self.path = path = resolve_store_path(path)
        self.durability = durability
        self._fsync_interval = fsync_interval
        self.readonly = readonly
        self._io = io
        self._subs: SubscriptionFile | None = None  # the SUBSCRIPTIONS file, once a subscription is used
        # _closed is also set in a forked child (with _forked), so that the one closed test of the
        # hot paths covers both; _check_open tells them apart.
        self._closed = False
        self._forked = False
        self._pid = os.getpid()  # the process that opened the store, for StoreForkedError
        self._lock_fd: int | None = None
        self._lock_exclusive = False  # LOCK is held exclusively (while this open creates the store)
        self._loaded_clean = False  # the checkpoint the load used says the store was closed cleanly
        self._control: Control | None = None  # this opener's slot in CONTROL (None: a read-only file system)
        self._made_dir = False  # this open made the store's directory
        self._found: set[tuple[str, str]] = set()  # (".", name) and (subdirectory, name) there before the open
        # What readers may see (limits, heads, removals), its waiting readers, and the open readers.
        self._pub: Published = FollowingPublished()
        self._follower: Follower | None = None  # follows what other processes write (None without CONTROL)
        # A writable first opener keeps the store to itself until another opener asks to join (alone.py):
        # the thread that waits for the ask, None once the others are let in (or never kept alone).
        self._alone: Alone | None = None
        self._keep_alone = False
        self._writer: Writer
        self._close_lock = threading.Lock()
        self._compact_lock = threading.Lock()  # one compaction at a time: they share the .compact names
        self._max_payload = min(MAX_ENVELOPE_SIZE, segment_size - HEADER_SIZE - RECORD_OVERHEAD - MAX_STREAM_NAME)
        # Listed before the lock is taken: a fork from another thread during this open still
        # leaves the child without the LOCK descriptor.
        _live_stores.add(self)
        created = self._prepare_directory()
        try:
            ckpt, ckpt_problem, store_id = self._read_checkpoint(created)
        except BaseException:
            self._release_lock()
            raise
        self._log = Log(io, path, store_id, readonly, segment_size, self._pub)
        self._report = RecoveryReport()  # what recovery found and did (a new store: nothing)
        try:
            try:
                # Joined before the load: a first opener holds the dead-man switch exclusively until
                # it has recovered the log and published its tail, and later openers wait for that.
                self._control = self._join_control(store_id)
            except BaseException:
                if created:
                    self._remove_created()
                raise
            if created:
                try:
                    self._log.create()
                except Exception:
                    self._log.close()
                    self._release_control(clear_slot=True)
                    self._remove_created()
                    raise
            else:
                self._after_load(self._load(ckpt, ckpt_problem, store_id, self._bound()))
            if not readonly and self._first():
                self._log.drop_segments()  # finish a retention that a crash interrupted
            self._open_to_others()
            if not readonly:
                self._writer = Writer(
                    self._log,
                    durability,
                    fsync_interval,
                    checkpoint_bytes,
                    retention_age,
                    retention_bytes,
                    None if self._keep_alone else self._follower,
                    self._follower.lock if self._keep_alone and self._follower is not None else None,
                )
                if retention_age is not None or retention_bytes is not None:
                    try:
                        self._writer.call(self._writer.apply_retention)
                    except BaseException:
                        self._writer.abandon()
                        raise
                if self._keep_alone:
                    self._start_alone()
        except BaseException:
            self._release_files(clear_slot=True)
            raise
        report = self._report
        if not report.clean:
            # A cut moved bytes out of the log: the operator should know. Rebuilt indexes are derived
            # data (after repair, compaction or a lost checkpoint) and lose nothing.
            level = logging.WARNING if report.cut else logging.INFO
            logger.log(level, "%s: opened after recovery: %s", path, report.summary())

    # -- opening -------------------------------------------------------------------

    def _first(self) -> bool:
        """Whether no other process had the store open when this one joined (or it has no ``CONTROL``)."""
        return self._control is None or self._control.first

    def _recover(
        self, ckpt: Checkpoint | None, ckpt_problem: str | None, retry_changes: bool, bound: int | None = None
    ) -> Checkpoint | None:
        """Run recovery (:class:`~logstore.embedded.recovery.Recovery`) on the log, up to ``bound``; keep its report.

        Beside other processes it changes no file (they may be writing)."""
        recovery = Recovery(self._log, retry_changes, bound, shared=not self._first())
        self._report = recovery.report
        return recovery.run(ckpt, ckpt_problem)

    def _after_load(self, used: Checkpoint | None) -> None:
        """Make what the load found durable before anyone relies on it (``used``: the checkpoint it used)."""
        lg = self._log
        report = self._report
        self._loaded_clean = used is not None and used.clean
        if not self._first():
            return  # other processes have the store open: the write lock's holders change its files
        if not self.readonly:
            if report.records_scanned or used is None or report.cut or report.rebuilt:
                # The scanned tail may still be only in the page cache: make it durable
                # before a checkpoint says it is there.
                lg.sync_scanned()
                lg.checkpoint(clean=False)
            elif used.clean:
                lg.mark_unclean(used)
            lg.remove_stale_generations()
        elif self._control is not None and report.records_scanned:
            # No process writes (this one found no other): what it read past the checkpoint was
            # written by one that died, perhaps not synced. Other processes' readers may read it
            # once it is published, so it is made durable first (no byte changes).
            lg.sync_scanned()

    def _bound(self) -> int | None:
        """Where an open beside other processes stops reading: the tail they published (with
        ``durability="fsync"``, only what is durable; a writer catches up with the rest in its first turn).

        ``None`` (read what the log holds) for a first opener (no other process writes) and a read-only
        open without ``CONTROL``.
        """
        control = self._control
        if control is None or control.first:
            return None
        tail = control.tail()
        if tail is None:
            return None
        if self.durability == "fsync":  # only what is durable (see Follower.durable_only)
            return min(tail.goff, control.word(DURABLE_AT))
        return tail.goff

    def _open_to_others(self) -> None:
        """After the load: publish the tail if this is the first opener, let later openers in, and set up how
        this store tells (writable) and follows (every opener) the other processes."""
        if self._lock_exclusive and self._lock_fd is not None:
            share_store_lock(self._lock_fd)  # the store exists now: other writable openers may come in
            self._lock_exclusive = False
        control = self._control
        if control is None:
            return
        lg = self._log
        pub = self._pub
        if control.first:
            active = lg.active
            control.publish_tail(pub.visible_end, active.first, active.end)
            control.publish_durable(pub.visible_end)
            control.publish_generation(lg.generation)
            if self.readonly:  # it cut nothing: the first writer's turn cuts what lies past the tail
                control.set_word(INTENT_AT, UNCHECKED)
                # and marks a clean checkpoint unclean before it appends
                control.set_word(CLEAN_AT, 1 if self._loaded_clean else 0)
            control.wake()
        # A writer that found no other process keeps the store to itself until one asks to join
        # (alone.py): its turns then take no lock. Every other opener lets the others in now.
        self._keep_alone = not self.readonly and control.can_keep_alone()
        if not self._keep_alone:
            control.open_to_others()
        follower = Follower(lg, control, self._fresh_log, self.durability == "fsync")
        self._follower = follower
        pub.follower = follower
        pub.counter = follower.words  # removals of every process move the shared count
        if not self.readonly:
            pub.shared = control

    def _start_alone(self) -> None:
        control = self._control
        assert control is not None and control.join_asks is not None
        self._alone = Alone(control.join_asks, self._let_others_in, "logstore-alone")
        self._alone.start()

    def _let_others_in(self) -> None:
        """Another opener asks to join a store kept alone (the ``logstore-alone`` thread): from the end of the
        writer role's turn that runs this call on, the writer takes turns under the write lock like any writer
        of a shared store, and the dead-man switch goes shared, which lets the opener in.

        A failed writer (it writes no more) lets the opener in with the intent word set, so that the first
        write-lock holder cuts whatever the failure left past the published tail, as after a writer that
        failed in its turn; this store's readers load afresh at their next catch-up. A closing store lets
        nobody in here: its close releases the switch.
        """
        writer = self._writer
        control = self._control
        follower = self._follower
        assert control is not None and follower is not None
        try:
            writer.call(lambda: writer.share(follower, control.open_to_others))
        except StoreClosedError:
            return
        except Exception:  # the writer failed (StoreFailedError), before or during the call
            if writer.failed is None:
                raise
        if writer.sharing is not None:
            return  # let in at the end of the call's turn
        assert writer.failed is not None  # the turn failed after the call: it did not switch
        with contextlib.suppress(ValueError):  # closed meanwhile
            follower.writer_failed()
            control.set_word(INTENT_AT, os.getpid())
            control.open_to_others()

    def _fresh_log(self, bound: int) -> Log:
        """A new log of this store loaded up to global offset ``bound`` (the follower's reload)."""
        lg = self._log
        for attempt in range(READONLY_LOADS):
            ckpt, problem, _sid = self._read_checkpoint(False)
            fresh = Log(self._io, self.path, lg.store_id, self.readonly, lg.segment_size, FollowingPublished())
            try:
                Recovery(fresh, attempt < READONLY_LOADS - 1, bound, shared=True).run(ckpt, problem)
            except (CorruptionError, FileNotFoundError, IndexesUnusable):
                fresh.close()
                if attempt == READONLY_LOADS - 1:
                    raise
                continue
            return fresh
        raise AssertionError("unreachable")

    def _follow(self) -> None:
        """Catch up with what other processes published."""
        follower = self._follower
        if follower is not None:
            follower.refresh()

    def _load(
        self, ckpt: Checkpoint | None, ckpt_problem: str | None, store_id: bytes, bound: int | None = None
    ) -> Checkpoint | None:
        """Load the log; a read-only open loads again when a live writer changed the files under it.

        A writer process replaces ``CHECKPOINT`` and the catalog by rename and
        then removes the old catalog, drops segments (retention), renames a
        compacted copy over a segment and appends to position and run files,
        all without regard to read-only openers. A read-only open that meets
        a file gone (``FileNotFoundError``), an index file that does not match
        the checkpoint it read (:class:`IndexesUnusable`) or damage
        (``CorruptionError``) reads ``CHECKPOINT`` again and loads anew, up
        to :data:`READONLY_LOADS` times in all (:data:`READONLY_LOADS_BUSY`
        once a writer checkpointed between two tries). It gives up at once on
        damage that persists: the same error twice from the same checkpoint.
        Index files that stay unusable are then rebuilt in memory from the
        log, as a writable open would (and said at WARNING). ``bound`` (beside
        live processes: the tail they published) is where the read stops.
        """
        if not self.readonly and self._first():
            return self._recover(ckpt, ckpt_problem, False)
        previous: str | None = None
        rebuild = False
        limit = READONLY_LOADS
        attempt = 0
        while True:
            final = attempt >= limit - 1
            try:
                return self._recover(ckpt, ckpt_problem, not (rebuild or final), bound)
            except FormatVersionError:
                raise
            except (CorruptionError, FileNotFoundError, IndexesUnusable) as exc:
                if final:
                    raise
                failure = f"{type(exc).__name__}: {exc}"
                again, problem, _sid = self._read_checkpoint(False)
                if again is not None and ckpt is not None and again.generation != ckpt.generation:
                    limit = READONLY_LOADS_BUSY  # a writer checkpointed meanwhile: it is at work, not damage
                attempt += 1
                if again == ckpt and problem == ckpt_problem and failure == previous:
                    if not isinstance(exc, IndexesUnusable):
                        raise
                    rebuild = True  # the same files are unusable again: not a writer at work
                previous = failure
                self._log.close()
                self._log = Log(self._io, self.path, store_id, self.readonly, self._log.segment_size, self._pub)
                ckpt, ckpt_problem = again, problem

    def _prepare_directory(self) -> bool:
        """Create or check the directory and take the store lock; returns whether the store is new.

        A writable open holds ``LOCK`` shared (other writable processes may have the store open), or
        exclusively while it creates the store: two processes that open a new directory at once
        create it once. The directory is looked at again under the lock.
        """
        io, path = self._io, self.path
        check_local(path)  # several processes coordinate through shared memory and locks of one machine
        if not os.path.exists(path):
            self._make_directory()
        if not os.path.isdir(path) or os.path.islink(path):
            raise NotADirectoryError(f"{path}: not a directory")
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            entries = self._look(io, path)
            is_store = bool(entries & {layout.CHECKPOINT, layout.SEGMENTS})
            if self.readonly:
                if not is_store:
                    raise FileNotFoundError(f"{path}: not a logstore store")
                return False
            creating = not is_store or (layout.CHECKPOINT not in entries and self._creation_unfinished(entries))
            try:
                # To create, one try: another process holding LOCK is creating the store (look again: once
                # it exists, the shared lock serves) or has it open already.
                fd = take_store_lock(
                    io,
                    path,
                    creating,
                    "the store is held exclusively (by `logstore repair`, or by an older"
                    " logstore version that allows one writer process)",
                    0.0 if creating else max(0.0, deadline - time.monotonic()),
                )
            except StoreLockedError:
                if creating and time.monotonic() < deadline:
                    time.sleep(LOCK_PAUSE)
                    continue
                raise
            except Exception:
                self._remove_created()
                raise
            self._lock_fd = fd
            self._lock_exclusive = creating
            try:
                again = self._look(io, path)  # under the lock: what another opener did before it is done
            except BaseException:
                self._release_lock()
                raise
            is_store = bool(again & {layout.CHECKPOINT, layout.SEGMENTS})
            still = not is_store or (layout.CHECKPOINT not in again and self._creation_unfinished(again))
            if still == creating:
                break
            self._release_lock()  # another process created the store meanwhile: take the shared lock
        if creating and is_store:
            logger.info("%s: the store's creation did not finish (a crash); creating it again", path)
        return creating

    def _make_directory(self) -> None:
        io, path = self._io, self.path
        if self.readonly:
            raise FileNotFoundError(f"{path}: no such directory")
        try:
            io.mkdir(path)
        except FileExistsError:
            if os.path.isdir(path) and not os.path.islink(path):
                return  # another process made it meanwhile
            raise
        self._made_dir = True
        try:
            io.fsync_dir(os.path.dirname(os.path.abspath(path)))
        except Exception:
            self._remove_created()
            raise

    def _look(self, io: FileIO, path: str) -> set[str]:
        """The directory's entries, noted as there before the open (a failed creation removes only the rest);
        raises if the directory holds other files and is no store."""
        entries = set(io.listdir(path))
        self._found = {(".", n) for n in entries}
        for sub in (layout.SEGMENTS, layout.STREAMS):
            if sub in entries and os.path.isdir(os.path.join(path, sub)):
                self._found |= {(sub, n) for n in io.listdir(os.path.join(path, sub))}
        is_store = bool(entries & {layout.CHECKPOINT, layout.SEGMENTS})
        if not is_store and not self.readonly and entries - {layout.LOCK, layout.CONTROL, layout.LOST_FOUND}:
            raise ValueError(f"{path}: not a logstore directory (it holds other files); use an empty or new directory")
        return entries

    def _remove_created(self) -> None:
        """Remove what this open created of a store whose creation failed (a full disk, say).

        Only files and directories that were not there before the open go:
        a directory the user made, and whatever it held, stay. The ``LOCK``
        (and ``CONTROL``) file of such a directory stays too, so that no other
        opener ever locks a file that is about to disappear; a directory this
        open made goes whole, its ``LOCK`` while still locked. Failures to remove are
        logged: the error that failed the creation is the one raised.
        """
        io, path = self._io, self.path
        found = self._found
        try:
            for sub in (layout.SEGMENTS, layout.STREAMS):
                d = os.path.join(path, sub)
                if not os.path.isdir(d):
                    continue
                for n in io.listdir(d):
                    if (sub, n) not in found:
                        io.unlink(os.path.join(d, n))
                if (".", sub) not in found:
                    io.rmdir(d)
            for n in io.listdir(path):
                if (".", n) not in found and n not in (layout.LOCK, layout.CONTROL, layout.SEGMENTS, layout.STREAMS):
                    io.unlink(os.path.join(path, n))
            if self._made_dir:
                for name in (layout.CONTROL, layout.LOCK):
                    if io.exists(os.path.join(path, name)):
                        io.unlink(os.path.join(path, name))
                io.rmdir(path)
        except OSError as exc:
            logger.error("%s: could not remove what the failed creation of the store left: %r", path, exc)

    def _creation_unfinished(self, entries: set[str]) -> bool:
        """Whether the directory holds only what a crash while creating the store can leave.

        ``Log.create`` makes ``segments/`` and ``streams/``, then the first
        segment as ``.log.tmp`` renamed into place, then the first checkpoint.
        Before that rename nothing has been written; after it, the segment
        names the store and the indexes are rebuilt from it.
        """
        if entries - {layout.LOCK, layout.CONTROL, *layout.STORE_DIRS}:
            return False
        for sub, allowed in ((layout.SEGMENTS, layout.SEGMENT_EXT + layout.TMP), (layout.STREAMS, None)):
            if sub in entries:
                names = self._io.listdir(os.path.join(self.path, sub))
                if any(allowed is None or not n.endswith(allowed) for n in names):
                    return False
        return True

    def _read_checkpoint(self, created: bool) -> tuple[Checkpoint | None, str | None, bytes]:
        if created:
            return None, None, os.urandom(16)
        path = layout.checkpoint_path(self.path)
        try:
            raw = self._io.read_file(path)
            with as_corruption(path, versions_only=True):
                ckpt, store_id = Checkpoint.decode(raw, None)
            return ckpt, None, store_id
        except FileNotFoundError:
            # Derived data, as after `logstore repair`: rebuilt from the log, nothing lost.
            problem = "CHECKPOINT is missing; indexes rebuilt from the log"
            logger.info("%s: %s", self.path, problem)
        except FormatError as exc:
            problem = f"CHECKPOINT is damaged at byte {exc.position} ({exc.what}); indexes rebuilt from the log"
            logger.warning("%s: %s", self.path, problem)
        return None, problem, self._store_id_from_segments()

    def _store_id_from_segments(self) -> bytes:
        seg_dir = layout.segments_dir(self.path)
        names = (
            [n for n in self._io.listdir(seg_dir) if n.endswith(layout.SEGMENT_EXT)] if os.path.isdir(seg_dir) else []
        )
        if not names:
            raise CorruptionError(seg_dir, 0, "no CHECKPOINT and no segment files", "run `logstore repair`")
        first = os.path.join(seg_dir, names[0])
        fd = self._io.open(first, os.O_RDONLY)
        try:
            return read_segment_header(self._io, first, fd).store_id
        finally:
            self._io.close(fd)

    def _join_control(self, store_id: bytes) -> Control | None:
        """Join ``CONTROL`` (logstore/embedded/controlfile.py): hold the dead-man switch and a slot while open.

        A read-only opener that may not create or write the file (a read-only file system, a directory or
        file it may not write, no room for the file's bytes) reads the store without it, as every opener
        did before ``CONTROL``: it is then not listed among the processes that have the store open.
        """
        flags = slot_flags(self.readonly, None if self.readonly else self.durability)
        try:
            return Control.join(self._io, self.path, store_id, flags, hold=True)
        except OSError as exc:
            if not self.readonly or exc.errno not in _CONTROL_UNWRITABLE:
                raise
            logger.info("%s: opened read-only without joining its control file: %s", self.path, exc)
            return None

    def _release_files(self, clear_slot: bool) -> None:
        """Stop following, close the log, leave ``CONTROL`` (clearing this opener's slot, or not: as a death
        leaves it) and release the writer lock, each even if the one before fails."""
        follower, self._follower = self._follower, None
        try:
            if follower is not None:
                follower.close()
            self._log.close()
        finally:
            try:
                self._release_control(clear_slot)
            finally:
                self._release_lock()

    def _release_control(self, clear_slot: bool) -> None:
        control, self._control = self._control, None
        if control is not None:
            control.close(clear_slot)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            release_writer_lock(self._io, fd)

    # -- fork ------------------------------------------------------------------------

    def _leave_in_child(self) -> None:
        """In a forked child (``_after_fork_in_child``): make this store refuse all use, and drop the
        child's copies of its descriptors and mappings.

        Never ``flock(LOCK_UN)`` (``logstore/embedded/lock.py``) nor an OFD unlock of ``CONTROL``'s bytes
        (``logstore/embedded/controlfile.py``): the descriptors' open file descriptions are shared with the
        parent, and an unlock through them releases the parent's locks (its writer lock, its
        dead-man switch and its slot). The ``CONTROL`` mapping holds a duplicate descriptor: it is
        closed too. Closing the child's descriptor leaves the lock with the parent, and
        closing it here (rather than at the child's ``close()``, which may never
        come) means the child no longer keeps the lock alive once the parent
        closes the store, nor keeps removed segment files on disk. No lock is
        taken, nothing is written, synced or removed.
        """
        self._forked = True
        self._closed = True
        pub = self._pub
        pub.forked_error = self._forked_error  # a Committer made before the fork, and every reader, refuse
        pub.closed = True
        close_readers(pub.readers)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            drop_lock_in_child(self._io, fd)
        follower, self._follower = getattr(self, "_follower", None), None
        if follower is not None:
            follower.drop_in_child()
        control, self._control = self._control, None
        if control is not None:
            control.drop_in_child()
        subs = getattr(self, "_subs", None)
        if subs is not None:
            subs.drop_claims(self._forked_error)
        lg = getattr(self, "_log", None)  # None if the fork came early in another thread's open
        if lg is not None:
            segments, lg.segments = lg.segments, []
            for seg in segments:
                with contextlib.suppress(Exception):  # one segment's trouble must not keep the others open
                    seg.close()

    def _forked_error(self) -> StoreForkedError:
        return StoreForkedError(
            f"{self.path}: this store was opened by process {self._pid} and is used in process {os.getpid()}, "
            "a child made by fork(); a store does not cross fork() (the child's copy of its state goes stale "
            "and its writer stays in the parent). Open the store in the child after the fork instead: with "
            "gunicorn --preload or multiprocessing's fork start method, open it in each worker, not before the fork"
        )

    # -- public state --------------------------------------------------------------

    @property
    def recovery_report(self) -> RecoveryReport:
        """What the last open found and did (see :class:`RecoveryReport`); still readable after ``close()``."""
        return self._report

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def max_envelope_size(self) -> int:
        """The largest encoded envelope this store accepts, in bytes."""
        return self._max_payload

    def stream_names(self) -> list[str]:
        """Every stream with a committed message that is not deleted, in order of first commit."""
        self._check_open()
        self._follow()
        cat = self._pub.catalog
        names = cat.names[: len(cat)]
        return [n for i, n in enumerate(names) if cat.head[i] > 0 and not cat.flags[i] & FLAG_DELETED]

    def head(self, stream: str) -> int:
        """The next unused offset of ``stream`` (0 if it has no committed message).

        A deleted or truncated stream keeps its head: the next append goes there.
        """
        self._check_open()
        self._follow()
        return self._pub.catalog.head_of(stream)

    def locate(self, message_id: str) -> list[Location]:
        """Every place the message ``message_id`` is: ``(stream, stream_offset, global_offset)``, in global order.

        Empty when no readable message has that id (removed messages are not
        places). One message may be in several streams; within one stream an
        id is at one offset only (``commit()`` raises
        :class:`~logstore.DuplicateMessageError` otherwise).

        >>> import logstore, tempfile
        >>> with logstore.open(tempfile.mkdtemp(), segment_size=1 << 20) as store:
        ...     env = logstore.Envelope.new("OrderPlaced", {"sku": "A1"})
        ...     with store.transaction() as tx:
        ...         tx.append("order-7", 0, [env])
        ...         tx.append("audit", 0, [env])
        ...     [tuple(place) for place in store.locate(env.message_id)]
        [('order-7', 0, 0), ('audit', 0, 1)]
        """
        self._check_open()
        check_message_id(message_id)
        self._follow()
        pub = self._pub
        names = pub.catalog.names
        return [
            Location(names[sid], soff, goff) for sid, soff, goff in self._log.msgids.locate(message_id, pub.visible_end)
        ]

    def stream_info(self, stream: str) -> StreamInfo | None:
        """``(first, head, deleted)`` of ``stream``, or ``None`` if it has never been written.

        ``first`` is its first readable offset: offsets below it were removed
        by truncation, deletion or retention (``first == head`` when none is
        left).
        """
        self._check_open()
        self._follow()
        pub = self._pub
        cat = pub.catalog
        # A name of the catalog is a valid one: only a name it lacks is checked (and may raise).
        sid = cat.ids.get(stream) if type(stream) is str else None
        if sid is None:
            check_stream_name(stream)
            return None
        head = int(cat.head[sid])
        first = int(cat.first[sid])
        start = pub.log_start
        if start and first < head:  # retention may have dropped more than truncation did
            runs = self._log.runs.runs_of(sid)
            found = head
            for k, (soff, goff) in enumerate(runs):
                end = runs[k + 1][0] if k + 1 < len(runs) else head
                lo = max(first, soff)
                if lo >= end:
                    continue
                lo = max(lo, soff + (start - goff))  # the first offset of this run at or past the start
                if lo < end:
                    found = lo
                    break
            first = found
        return StreamInfo(first, head, bool(cat.flags[sid] & FLAG_DELETED))

    @property
    def log_start(self) -> int:
        """The first global offset retention keeps (0 until retention drops a segment)."""
        self._check_open()
        self._follow()
        return self._pub.log_start

    @property
    def global_head(self) -> int:
        """The next unused global offset (the number of messages committed)."""
        self._check_open()
        self._follow()
        return self._pub.visible_end

    # -- DataStore ---------------------------------------------------------------------

    def begin_tx(self) -> tuple[Tx, Committer]:
        """Begin a transaction: Ax's ``DataStore.BeginTx``.

        >>> tx, committer = store.begin_tx()  # doctest: +SKIP
        >>> store.append_messages(tx, "s", 0, [Envelope.new("T", 1)])  # doctest: +SKIP
        >>> committer.commit()  # doctest: +SKIP
        range(0, 1)
        """
        self._check_writable()
        tx = Tx(self, self._writer, self._pub)
        return tx, Committer(tx)

    # -- Store -----------------------------------------------------------------------------

    def append_messages(self, tx: Tx, stream: str, offset: int | AnyOffset, envs: Sequence[Envelope]) -> None:
        """Append ``envs`` to ``stream`` at ``offset`` within ``tx`` (short form: ``tx.append(stream, offset, envs)``).

        ``offset`` must be the stream's next unused offset (0 for a new stream),
        counting this transaction's earlier appends; otherwise
        :class:`OffsetConflictError` names the stream, the expected and the
        given offset. The envelopes are checked and encoded here, in the
        caller's thread; on any error nothing is added to the transaction.

        ``offset=logstore.ANY`` appends at the stream's head as it is at
        commit, after whatever other transactions committed to it first (no
        :class:`OffsetConflictError` for that stream); the writer assigns the
        offsets and ``tx.stream_offsets`` has them after the commit. More
        ``ANY`` appends to the stream in the transaction follow on; an exact
        offset after an ``ANY`` one raises ``ValueError``.

        ``envs`` is a sequence (a list) of :class:`Envelope`: a single
        envelope, a ``str``, ``bytes`` or ``dict`` raises ``TypeError``.
        """
        nameb, offset = self._check_append(tx, stream, offset, envs)
        if offset is ANY:
            tx.stage(
                stream,
                nameb,
                ANY_OFFSET,
                encode_many(envs, stream, None, self._max_payload),
                [e.message_id for e in envs],
            )
            return
        expected = tx.staged_head(stream)
        if expected is None:
            expected = self._pub.catalog.head_of(stream)
            if offset > expected:
                expected = self._head_beside_others(stream, offset)
            elif offset < expected and committed_at(self, stream, offset, envs):
                expected = offset  # a retry of a commit: the commit judges it (DuplicateMessageError)
        check_expected(stream, expected, offset)
        tx.stage(
            stream, nameb, offset, encode_many(envs, stream, offset, self._max_payload), [e.message_id for e in envs]
        )

    def _head_beside_others(self, stream: str, offset: int) -> int:
        """The head of ``stream`` for an append at ``offset``, past the head this process knew: another process
        may have committed since. Catch up and look again; if commits of other processes are still not
        readable here (not durable yet, with ``durability="fsync"``), take ``offset``: the commit checks
        it against the latest commit of every process (a head only grows, so a lower offset is a conflict
        at once)."""
        self._follow()
        head = self._pub.catalog.head_of(stream)
        if offset > head and self._control is not None:
            tail = self._control.tail()
            if tail is not None and tail.goff > self._pub.visible_end:
                return offset
        return head

    # -- removal -------------------------------------------------------------------------------

    def truncate_stream(self, stream: str, before: int) -> None:
        """Make the offsets of ``stream`` below ``before`` unreadable, for good.

        Recorded in the log (a TRUNCATE record), so it survives a crash and
        every reopen; durable on return as ``durability`` says. Readers skip
        the removed messages at once, whether or not ``compact()`` has
        reclaimed their space. Offsets are never renumbered: the next append
        still goes at the head. A ``before`` at or below what is already
        removed does nothing. Raises ``ValueError`` if the stream has never
        been written or ``before`` is past its head.
        """
        self._check_writable()
        nameb = check_stream_name(stream)
        check_offset(before)
        self._writer.control(KIND_TRUNCATE, stream, nameb, before)

    def delete_stream(self, stream: str) -> None:
        """Make every message of ``stream`` unreadable (a soft delete), for good.

        Like ``truncate_stream(stream, head)``, and the stream also reads as
        deleted: ``open_stream`` returns ``found=False`` and ``stream_names``
        leaves it out, until a later append, which continues at the old head
        (``append_messages(tx, stream, store.head(stream), ...)``). Deleting a
        deleted stream does nothing. Raises ``ValueError`` if the stream has
        never been written.
        """
        self._check_writable()
        nameb = check_stream_name(stream)
        self._writer.control(KIND_DELETE, stream, nameb, 0)

    def compact(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        retention_age: float | None = None,
        retention_bytes: int | None = None,
        roll: bool = True,
    ) -> CompactReport:
        """Apply retention, then erase the envelopes of removed messages from every segment file.

        Each segment that holds a message removed by ``truncate_stream`` or
        ``delete_stream`` is rewritten without its envelope. When the active
        segment holds one, it is first sealed (rolled, as when it fills up)
        so that it can be rewritten like any sealed segment; ``roll=False``
        leaves the active segment as it is (and the report says so). Readers
        and writers keep working meanwhile; see :mod:`logstore.embedded.compact` for
        the crash-safe steps. ``progress(done, total)`` is called after each
        sealed segment. ``retention_age`` and ``retention_bytes``, when
        given, apply for this call in place of the store's options.

        Returns a :class:`~logstore.results.CompactReport`: what was done,
        the bytes reclaimed (dropped segments included), and in
        ``unreached`` every segment file that still holds removed envelopes
        (removed after the pass began, or ``roll=False``), with the count and
        why; ``lost_found`` names the files of ``lost+found/``, which
        compaction never touches. A read-only store raises ``ReadOnlyError``
        and a closed one ``StoreClosedError``: neither can roll or rewrite
        anything, so neither reports a partial pass.

        >>> report = store.compact()  # doctest: +SKIP
        >>> report.erased, report.bytes_reclaimed  # doctest: +SKIP
        (True, 61530)
        """
        self._check_writable()
        check_retention(retention_age, retention_bytes)
        if not isinstance(roll, bool):
            raise TypeError(f"roll must be True or False, not {roll!r}")
        failed = self._writer.failed
        if failed is not None:
            raise failed  # before any lock: the store refuses writes until reopened, and says why
        control = self._control
        with self._compact_lock, control.compacting() if control is not None else contextlib.nullcontext():
            return compact_store(self._log, self._writer, progress, retention_age, retention_bytes, roll)

    def open_stream(self, ds: Store, stream: str, offset: int) -> tuple[StreamReader, bool]:
        """Open ``stream`` for reading from ``offset`` (which may be beyond its end).

        Returns ``(stream, found)``; ``found`` is False if the stream has no
        committed message yet, or is deleted. The stream works either way:
        ``next()`` waits for its messages. Removed offsets are skipped.
        """
        self._check_open()
        self._follow()
        self._check_ds(ds)
        check_stream_name(stream)
        check_offset(offset)
        pub = self._pub
        cat = pub.catalog
        sid = cat.ids.get(stream)
        reader = StreamReader(self, pub, self._log, stream, offset, sid)
        pub.readers.add(reader)
        found = sid is not None and cat.head.item(sid) > 0 and not cat.flags.item(sid) & FLAG_DELETED
        reader.found = found
        return reader, found

    def open_global(self, ds: Store, offset: int, types: Collection[str] | None = None) -> GlobalReader:
        """Open the whole store as one stream in commit order, from global ``offset`` (may be beyond the end).

        ``types``: read only the messages of these types (a collection of type names); the others are
        skipped without decoding their envelopes.
        """
        self._check_open()
        self._check_ds(ds)
        check_offset(offset)
        wanted = check_types(types)
        if wanted is None:
            reader: GlobalReader = GlobalReader(self, self._pub, self._log, offset)
        else:
            reader = SelectReader(self, self._pub, self._log, offset, None, wanted)
        self._pub.readers.add(reader)
        return reader

    def open_category(
        self, ds: Store, category: str, offset: int, types: Collection[str] | None = None
    ) -> SelectReader:
        """Open every stream of ``category`` as one stream in commit order, from global ``offset``.

        A stream's category is its name up to the first ``-`` (``order-42`` is in ``order``; a name
        without ``-`` is its own category). ``offset()`` is the global offset; ``next()`` waits for the
        category's next message. The category's records are found through an index: no other
        category's record is read. ``types`` filters as in :meth:`open_global`.
        """
        self._check_open()
        self._check_ds(ds)
        check_category(category)
        check_offset(offset)
        wanted = check_types(types)
        self._follow()
        reader = SelectReader(self, self._pub, self._log, offset, category, wanted)
        self._pub.readers.add(reader)
        return reader

    def category(self, category: str, offset: int = 0, types: Collection[str] | None = None) -> SelectReader:
        """``open_category(store, category, offset, types)`` in short.

        >>> with store.category("order") as orders:  # doctest: +SKIP
        ...     for env in orders:
        ...         print(orders.offset(), orders.stream_name(), env.type)
        0 order-42 OrderPlaced
        """
        return self.open_category(self, category, offset, types)

    def stream(self, stream: str, offset: int = 0) -> StreamReader:
        """``open_stream(store, stream, offset)`` in short: the reader, whose ``found`` says whether it exists.

        >>> reader = store.stream("order-42")  # doctest: +SKIP
        >>> reader.found, [env.type for env in reader]  # doctest: +SKIP
        (True, ['OrderPlaced'])
        """
        return self.open_stream(self, stream, offset)[0]

    def read(self, stream: str, offset: int = 0) -> list[Envelope]:
        """Every message of ``stream`` from ``offset`` on that is committed now, in offset order.

        What a reader opened at ``offset`` iterates (``list(store.stream(stream, offset))``), in one call:
        the way to load a whole stream (an event-sourced entity, say). Empty for a stream that does not
        exist, is deleted, or ends before ``offset``; removed offsets are skipped.

        >>> [env.type for env in store.read("order-42")]  # doctest: +SKIP
        ['OrderPlaced']
        """
        self._check_open()
        self._follow()
        check_stream_name(stream)
        check_offset(offset)
        pub = self._pub
        cat = pub.catalog
        sid = cat.ids.get(stream)
        if sid is None:
            return []
        head: int = cat.head.item(sid)
        want = max(offset, cat.first.item(sid))
        if want >= head:
            return []
        # The common load: the stream's envelopes from ``want`` are one run of one segment (see read_run).
        envs = read_run(pub, self._log, sid, want, head)
        if envs is not None:
            return envs
        reader, _found = self.open_stream(self, stream, offset)
        with reader:
            return list(reader)

    def global_stream(self, offset: int = 0, types: Collection[str] | None = None) -> GlobalReader:
        """``open_global(store, offset, types)`` in short: every stream in commit order, from global ``offset``.

        >>> with store.global_stream() as log:  # doctest: +SKIP
        ...     for env in log:
        ...         print(log.offset(), log.stream_name(), log.stream_offset(), env.type)
        0 order-42 0 OrderPlaced
        """
        return self.open_global(self, offset, types)

    # -- durable subscriptions ---------------------------------------------------------------

    def subscribe(
        self,
        name: str,
        category: str | None = None,
        types: Collection[str] | None = None,
        group: tuple[int, int] | None = None,
    ) -> Subscription[MemberClaim]:
        """A durable subscription: a stream that begins where the subscription ``name`` last acknowledged.

        It reads ``category`` (the whole log when None) in global order, of ``types`` (every type when
        None); ``group=(member, size)`` gives it the streams that hash to ``member`` of ``size``
        (:func:`logstore.subscriptions.member_of`). The first subscribe of a name creates it,
        positioned at the start of the log; later ones must give the same category, types and group
        size. :meth:`Subscription.ack` saves the position in the store's ``SUBSCRIPTIONS`` file. One
        open subscription consumes a member at a time, across processes
        (:class:`~logstore.SubscriptionBusyError`). Delivery is at least once: what was not
        acknowledged is delivered again.

        >>> with store.subscribe("billing", category="order") as sub:  # doctest: +SKIP
        ...     for env in sub:
        ...         bill(env)
        ...         sub.ack()
        """
        self._check_writable()
        definition, member = definition_of(name, category, types, group)
        return open_subscription(self, self._subscription_file(), definition, member)

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Every durable subscription of the store, sorted by name, with each member's saved position."""
        self._check_open()
        return self._subscription_file().list()

    def delete_subscription(self, name: str) -> bool:
        """Delete a durable subscription and its positions; whether it existed.

        Raises :class:`~logstore.SubscriptionBusyError` (and deletes nothing) while one of its
        members is open.
        """
        self._check_writable()
        return self._subscription_file().delete(check_subscription_name(name))

    def _subscription_file(self) -> SubscriptionFile:
        subs = self._subs
        if subs is None:
            with self._close_lock:
                subs = self._subs
                if subs is None:
                    subs = self._subs = SubscriptionFile(
                        self._io, self.path, self._log.store_id, self.durability, self._fsync_interval, self._durable_to
                    )
        return subs

    def _durable_to(self, position: int) -> None:
        """Before a position is saved with durability="batch": make the log durable up to it."""
        if self.durability != "batch":
            return  # "fsync": readers only see what is durable; "none": nothing is ever synced
        self._check_open()
        control = self._control
        durable = control.word(DURABLE_AT) if control is not None else self._writer.synced[2]
        if durable < position:
            self._writer.call(self._writer.sync)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish queued commits, checkpoint, close every open stream and release the lock.

        Idempotent. A ``next()`` waiting in another thread raises ``StreamClosedError``.
        In a child made by ``fork()`` it does nothing (the fork already dropped the
        child's descriptors): the lock, the files and the writer are the parent's.
        """
        if not self._mark_closed():
            return
        try:
            alone, self._alone = self._alone, None
            if alone is not None:
                alone.stop()  # the close releases the dead-man switch: a waiting opener becomes the first
            if self._subs is not None:
                self._subs.close()  # open subscriptions' members are released (and with "batch" synced)
            if not self.readonly:
                self._writer.stop()
        finally:
            self._close_readers()
            self._release_files(clear_slot=True)
        failed = None if self.readonly else self._writer.failed
        if failed is not None:
            raise failed

    def _mark_closed(self) -> bool:
        """Mark the store closed; returns whether this call did (not closed before, and not a forked child)."""
        if self._forked:  # before _close_lock: another parent thread may have held it at the fork
            return False
        with self._close_lock:
            if self._closed:
                return False
            self._closed = True
            self._pub.closed = True  # readers that lose a segment under a read from here on say so
        return True

    def _abandon(self) -> None:
        """Drop the store as if its process died: no final fsync, no checkpoint (crash tests).

        Writes already handed to the OS stay in the files; the test then
        removes what a crash could lose (past ``_writer.synced``).
        """
        if not self._mark_closed():
            return
        alone, self._alone = self._alone, None
        if alone is not None:
            alone.stop()
        if self._subs is not None:
            self._subs.drop_claims()  # as a death drops them: no sync
        if not self.readonly:
            self._writer.abandon()
        self._close_readers()
        self._release_files(clear_slot=False)  # the slot stays filled, as a death leaves it

    def _close_readers(self) -> None:
        """Close every open reader and wake the waiting ones (``close()``, ``_abandon()``)."""
        pub = self._pub
        close_readers(pub.readers)
        pub.wake()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else self.durability)
        return f"<logstore.Store {self.path!r} {state}>"


def check_retention(retention_age: object, retention_bytes: object) -> None:
    if retention_age is not None:
        if isinstance(retention_age, bool) or not isinstance(retention_age, int | float):
            raise TypeError(f"retention_age must be a number of seconds or None, got {type(retention_age).__name__}")
        if not 0 < retention_age < float("inf"):
            raise ValueError(f"retention_age must be > 0 seconds and finite, got {retention_age!r}")
    if retention_bytes is not None:
        if isinstance(retention_bytes, bool) or not isinstance(retention_bytes, int):
            raise TypeError(f"retention_bytes must be an int or None, got {type(retention_bytes).__name__}")
        if retention_bytes <= 0:
            raise ValueError(f"retention_bytes must be > 0, got {retention_bytes}")


def resolve_store_path(path: str) -> str:
    """``path`` with a symbolic link that names the store directory itself resolved, once.

    The caller chose that path, so a link there is theirs (every link on the way
    to it is followed too). Nothing inside the store is followed: files are
    opened with ``O_NOFOLLOW``, and a link in place of one of :data:`logstore.embedded.layout.STORE_DIRS`
    or of ``CONTROL`` (which every open joins only after its recovery) raises ``OSError``
    (``ELOOP``) here, before anything is read or written.
    """
    if os.path.islink(os.path.normpath(path)) and os.path.isdir(path):
        path = os.path.realpath(path)
    for name in layout.STORE_DIRS:  # a symbolic link in place of one is refused
        sub = os.path.join(path, name)
        if os.path.islink(sub):
            raise OSError(errno.ELOOP, "a symbolic link in place of a store directory (logstore follows none)", sub)
    control = os.path.join(path, layout.CONTROL)
    if os.path.islink(control):
        raise OSError(errno.ELOOP, "a symbolic link in place of a store file (logstore follows none)", control)
    return path


def processes_of(store: Store) -> list[SlotInfo]:
    """The processes that have ``store`` open now (this one included), from ``CONTROL``'s slot table.

    For the engine's own tools (``logstore stats``). Empty if this read-only opener could not join the
    file (``Store._join_control``).
    """
    store._check_open()
    control = store._control
    return [] if control is None else control.live_slots()


def own_slot_of(store: Store) -> int:
    """The slot of ``CONTROL`` that ``store`` holds (-1 if it could not join the file), for ``logstore stats``."""
    control = store._control
    return -1 if control is None else control.slot


def log_of(store: Store) -> Log:
    """The log of ``store`` (:class:`logstore.embedded.log.Log`), for its tools (``logstore.embedded.inspect``).

    Not part of the messagestore API: its segments and indexes change under
    the writer's rules (docs/ARCHITECTURE.md).
    """
    return store._log
