"""The errors of the PostgreSQL backend, beside logstore's own (:mod:`logstore.errors`).

Both derive from :class:`~logstore.LogStoreError` and neither from the other: code that retries after a
:class:`ConnectionLostError` must not retry a commit whose outcome is unknown without looking first.
"""

from __future__ import annotations

from datetime import datetime

from logstore.errors import LogStoreError


class ConnectionLostError(LogStoreError):
    """The PostgreSQL server could not be reached, or the connection broke, and the operation took no effect.

    Raised when no connection could be made or borrowed (at ``open``, or when the server is down), and
    when a read, or a commit that certainly was not committed, lost its connection. Nothing of the
    operation happened: a read may be retried as it is (a reader's position did not move), and so may
    a commit. The ``__cause__`` is psycopg's error.
    """


class CommitOutcomeUnknownError(LogStoreError):
    """The connection broke while the server may have been committing: the commit may or may not have landed.

    Either the whole transaction committed or none of it did (PostgreSQL commits atomically); the
    client cannot tell which. ``message_ids`` lists the message ids of the transaction's envelopes
    (empty for a ``truncate_stream``/``delete_stream``), ``streams`` the streams it appended to, and
    ``backend_pid``/``backend_start`` the server process of the broken connection (None if unknown).

    ``store.commit_outcome(error)`` finds out once the server is reachable: it ends that server process
    if it is still there (so that the transaction can no longer commit), then looks the messages up
    and returns their global offsets, or None if the transaction did not commit. A bare
    ``store.locate(message_id)`` says where a message is, but only once the old server process has
    ended is an empty answer final. The ``__cause__`` is psycopg's error.
    """

    def __init__(
        self,
        what: str,
        message_ids: list[str],
        streams: list[str],
        backend_pid: int | None = None,
        backend_start: datetime | None = None,
    ) -> None:
        hint = "; store.commit_outcome(error) finds out whether it did" if message_ids else ""
        super().__init__(
            f"{what}: the connection to PostgreSQL broke during the commit, which may or may not have "
            f"committed (all of it or none of it){hint}"
        )
        self.what = what
        self.message_ids = message_ids
        self.streams = streams
        self.backend_pid = backend_pid
        self.backend_start = backend_start

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.what, self.message_ids, self.streams, self.backend_pid, self.backend_start))


class ServerError(LogStoreError):
    """The server refused an operation with an error of its own, and the operation took no effect.

    For example a permission the role lacks, a ``statement_timeout`` or ``lock_timeout`` that ran
    out, or a full disk on the server. ``sqlstate`` is PostgreSQL's error code (``"42501"``, say);
    the message has the server's; the ``__cause__`` is psycopg's error.
    """

    def __init__(self, what: str, sqlstate: str | None) -> None:
        super().__init__(what)
        self.sqlstate = sqlstate

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.sqlstate))
