"""logstore: an embedded, append-only, segmented message store.

The public names; see README.md for a tour and docs/ for the format and design.
"""

from logstore.checks import MAX_ENVELOPE_SIZE, MAX_STREAM_NAME
from logstore.embedded.fileio import FileIO
from logstore.embedded.reader import GlobalReader, StreamReader
from logstore.embedded.recovery import RecoveryReport
from logstore.embedded.store import DEFAULT_SEGMENT_SIZE, Store
from logstore.envelope import Envelope
from logstore.errors import (
    ConcurrencyError,
    CorruptionError,
    DuplicateMessageError,
    FormatVersionError,
    LogStoreError,
    MessageTooLargeError,
    NetworkFileSystemError,
    OffsetConflictError,
    OutOfSpaceError,
    ReadOnlyError,
    StoreClosedError,
    StoreFailedError,
    StoreForkedError,
    StoreLockedError,
    StreamClosedError,
    SubscriptionBusyError,
)
from logstore.opener import open
from logstore.results import SubscriptionInfo
from logstore.subscriptions import Subscription
from logstore.tx import ANY, AnyOffset, Committer, Tx

__version__ = "0.1.0"
"""The package's version: the single place it is written (``logstore --version`` prints it)."""

__all__ = [
    "ANY",
    "DEFAULT_SEGMENT_SIZE",
    "MAX_ENVELOPE_SIZE",
    "MAX_STREAM_NAME",
    "AnyOffset",
    "Committer",
    "ConcurrencyError",
    "CorruptionError",
    "DuplicateMessageError",
    "Envelope",
    "FileIO",
    "FormatVersionError",
    "GlobalReader",
    "LogStoreError",
    "MessageTooLargeError",
    "NetworkFileSystemError",
    "OffsetConflictError",
    "OutOfSpaceError",
    "ReadOnlyError",
    "RecoveryReport",
    "Store",
    "StoreClosedError",
    "StoreFailedError",
    "StoreForkedError",
    "StoreLockedError",
    "StreamClosedError",
    "StreamReader",
    "Subscription",
    "SubscriptionBusyError",
    "SubscriptionInfo",
    "Tx",
    "open",
]
