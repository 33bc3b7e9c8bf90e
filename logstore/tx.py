"""Transactions: Ax's ``persistence.Tx`` and ``persistence.Committer``.

Callers build a :class:`Tx` in their own thread: ``append_messages`` (in
:mod:`logstore.embedded.store`) checks the offset and encodes the envelopes, and the
transaction keeps them (``stage``). ``Committer.commit()`` hands the
transaction to the writer (:mod:`logstore.embedded.writer`), which checks its offsets,
assigns the offsets of appends at :data:`ANY` and writes it with its group.

Lock rules: a transaction belongs to the thread that builds it; once
``commit()`` hands it over, only the holder of the writer role reads its
appends and assigns their offsets, until the commit returns.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from logstore.envelope import Envelope
    from logstore.errors import LogStoreError

_ACTIVE, _COMMITTING, _COMMITTED, _ROLLED_BACK, _FAILED = range(5)
_STATE_NAMES = {_COMMITTING: "being committed", _COMMITTED: "committed", _ROLLED_BACK: "rolled back", _FAILED: "failed"}

# One append: (stream name, encoded name, first offset, encoded envelopes). The first offset is
# ANY_OFFSET for an append at logstore.ANY until the writer assigns it at commit.
Append = tuple[str, bytes, int, list[bytes]]
ANY_OFFSET = -1


class AnyOffset(enum.Enum):
    """The type of :data:`ANY`: one member, so that no int can be mistaken for it."""

    ANY = "ANY"

    def __repr__(self) -> str:
        return "logstore.ANY"


ANY = AnyOffset.ANY
"""Pass as the offset of ``append_messages``/``tx.append`` to append at the stream's head as it is at commit.

No :class:`~logstore.OffsetConflictError` for that stream: whatever other
transactions committed to it first, the messages go after them. The writer
assigns their stream offsets at commit (``tx.stream_offsets`` has them).
Within one transaction, more ``ANY`` appends to the stream follow on
consecutively and an exact offset may come before them, but not after
(``ValueError``: the head is not known until commit).
"""


class _Owner(Protocol):
    """The store a transaction belongs to, as ``Tx.append`` sees it."""

    def append_messages(self, tx: Tx, stream: str, offset: int | AnyOffset, envs: Sequence[Envelope]) -> None: ...


class _ForkState(Protocol):
    """Where a store carried into a forked child says so (the embedded store's published state)."""

    @property
    def forked_error(self) -> Callable[[], LogStoreError] | None: ...


class _Writer(Protocol):
    """The writer a transaction is committed through (the embedded :class:`~logstore.embedded.writer.Writer`)."""

    def commit(self, tx: Tx) -> range: ...


class Tx:
    """A transaction: Ax's ``persistence.Tx``. Get one from ``store.begin_tx()``.

    After a successful commit, ``global_offsets`` is the ``range`` of global
    offsets its messages occupy (empty if it appended nothing), and
    ``stream_offsets`` maps each stream it appended to to the ``range`` of
    stream offsets its messages occupy there: the way to learn the offsets
    that the writer assigned to appends at :data:`logstore.ANY`.

    >>> import logstore, tempfile
    >>> with logstore.open(tempfile.mkdtemp(), segment_size=1 << 20) as store:
    ...     with store.transaction() as tx:
    ...         tx.append("order-7", 0, [logstore.Envelope.new("OrderPlaced", {"sku": "A1"})])
    ...         tx.append("outbox", logstore.ANY, [logstore.Envelope.new("SendMail", "a@example.com")])
    ...     tx.global_offsets, tx.stream_offsets
    (range(0, 2), {'order-7': range(0, 1), 'outbox': range(0, 1)})
    """

    __slots__ = ("_any", "_appends", "_heads", "_mids", "_published", "_state", "_store", "_writer", "global_offsets")

    def __init__(self, store: _Owner, writer: _Writer, published: _ForkState | None) -> None:
        self._store = store
        self._writer = writer  # the committer hands the transaction to it
        self._published = published  # for the forked-child refusal (None: the store checks at commit)
        self._appends: list[Append] = []
        self._mids: list[list[str]] = []  # each append's message ids, in the order of its envelopes
        # stream -> next offset counting this transaction's appends; ANY_OFFSET once it has an ANY append
        self._heads: dict[str, int] = {}
        self._any = False  # some append is at ANY: the writer assigns offsets at commit
        self._state = _ACTIVE
        self.global_offsets: range | None = None

    def append(self, stream: str, offset: int | AnyOffset, envs: Sequence[Envelope]) -> None:
        """``store.append_messages(tx, stream, offset, envs)`` in short: the same checks and errors."""
        self._store.append_messages(self, stream, offset, envs)

    @property
    def stream_offsets(self) -> dict[str, range] | None:
        """After a successful commit: stream -> ``range`` of the stream offsets written there; else None.

        The ranges hold the offsets that the writer assigned at commit to
        appends at :data:`logstore.ANY`, and the given ones of exact appends.
        """
        if self._state != _COMMITTED:
            return None
        spans: dict[str, range] = {}
        for name, _nameb, first, payloads in self._appends:
            done = spans.get(name)
            # A transaction's appends to one stream are consecutive: exact ones by the offset check,
            # ANY ones as the writer assigns them.
            spans[name] = range(first if done is None else done.start, first + len(payloads))
        return spans

    @property
    def active(self) -> bool:
        return self._state == _ACTIVE

    # The store's side of ``append_messages``: it checks and encodes, the transaction keeps the appends.

    def check_appendable(self, store: object) -> None:
        """Raise ``ValueError`` unless the transaction belongs to ``store`` and is still active."""
        if self._store is not store:
            raise ValueError("the transaction belongs to another store")
        if self._state != _ACTIVE:
            raise ValueError(f"the transaction is already {_STATE_NAMES[self._state]}")

    def staged_head(self, stream: str) -> int | None:
        """The next offset of ``stream`` counting this transaction's appends (``ANY_OFFSET`` after an
        append at ``logstore.ANY``); None if the transaction has not appended to it."""
        return self._heads.get(stream)

    def stage(self, stream: str, nameb: bytes, first: int, payloads: list[bytes], mids: list[str]) -> None:
        """Add checked, encoded envelopes at stream offset ``first`` (``ANY_OFFSET``: assigned at commit),
        with their message ids ``mids`` (for the duplicate check at commit)."""
        self._appends.append((stream, nameb, first, payloads))
        self._mids.append(mids)
        if first == ANY_OFFSET:
            self._heads[stream] = ANY_OFFSET
            self._any = True
        else:
            self._heads[stream] = first + len(payloads)

    # The writer's side of commit: only the holder of the writer role calls these, while the commit runs.

    @property
    def appends(self) -> list[Append]:
        """The staged appends, in order (an ANY append's first offset is ``ANY_OFFSET`` until :meth:`assign`)."""
        return self._appends

    @property
    def message_ids(self) -> list[list[str]]:
        """Each staged append's message ids, in the order of :attr:`appends`."""
        return self._mids

    @property
    def has_any(self) -> bool:
        """Some append is at ``logstore.ANY``: the writer assigns its offsets at commit."""
        return self._any

    def assign(self, appends: list[Append]) -> None:
        """Replace the appends by ``appends``: the same, with the offsets the writer assigned to ANY appends."""
        self._appends = appends

    def _check_active(self) -> None:
        if self._state != _ACTIVE:
            raise ValueError(f"the transaction is already {_STATE_NAMES[self._state]}")

    def __repr__(self) -> str:
        state = "active" if self._state == _ACTIVE else _STATE_NAMES[self._state]
        return f"<logstore.Tx {state}, {sum(len(a[3]) for a in self._appends)} messages>"


class Committer:
    """Ax's ``persistence.Committer``: commits or rolls back its transaction."""

    __slots__ = ("_tx",)

    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    def commit(self) -> range:
        """Make the transaction's messages durable and visible, all together.

        Returns the ``range`` of global offsets they occupy. Raises
        :class:`~logstore.OffsetConflictError` (nothing is written) if another
        transaction appended to one of its streams first, and
        :class:`~logstore.StoreFailedError` if the write or fsync failed.
        """
        tx = self._tx
        published = tx._published
        forked = None if published is None else published.forked_error
        if forked is not None:  # the writer, its queue and its locks stayed in the parent
            raise forked()
        tx._check_active()
        if not tx._appends:
            tx._state = _COMMITTED
            tx.global_offsets = range(0)
            return tx.global_offsets
        tx._state = _COMMITTING
        try:
            result = tx._writer.commit(tx)
        except BaseException:
            tx._state = _FAILED
            raise
        tx._state = _COMMITTED
        tx.global_offsets = result
        return result

    def rollback(self) -> None:
        """Discard the transaction. Rolling back a committed transaction does nothing."""
        tx = self._tx
        published = tx._published
        forked = None if published is None else published.forked_error
        if forked is not None:
            raise forked()
        if tx._state == _ACTIVE:
            tx._state = _ROLLED_BACK
            tx._appends = []
            tx._mids = []
            tx._heads = {}
            tx._any = False
