"""Every error logstore raises survives ``pickle`` with its message and its attributes: an error raised in
a worker process (multiprocessing, concurrent.futures) reaches the parent whole."""

from __future__ import annotations

import errno
import pickle

import pytest

import logstore
from logstore.errors import UnsupportedPlatformError
from logstore.postgres.errors import CommitOutcomeUnknownError, ConnectionLostError, ServerError

SAMPLES = [
    logstore.LogStoreError("plain"),
    logstore.ConcurrencyError("another writer"),
    logstore.OffsetConflictError("order-1", 4, 2),
    logstore.DuplicateMessageError("order-1", "m-1", 3, 1),
    logstore.CorruptionError("/s/segments/x.log", 120, "record checksum mismatch", "run logstore repair"),
    logstore.FormatVersionError("/s/CHECKPOINT", 8, "format version 9"),
    logstore.StoreLockedError("locked"),
    logstore.StreamClosedError("closed"),
    logstore.SubscriptionBusyError("billing", 2, "member 2 is open already"),
    logstore.MessageTooLargeError("order-1", None, 10, 5),
    logstore.StoreClosedError("closed"),
    logstore.StoreFailedError("failed"),
    logstore.ReadOnlyError("read-only"),
    logstore.StoreForkedError("forked"),
    logstore.OutOfSpaceError("/s/segments/x.log", 4096, errno.ENOSPC, "growing a segment", 0, "segment_size"),
    UnsupportedPlatformError("no OFD locks"),
    logstore.NetworkFileSystemError("/mnt/s", "nfs4", "/mnt"),
    ConnectionLostError("gone"),
    CommitOutcomeUnknownError("commit", ["m-1"], ["order-1"], 4242, None),
    ServerError("permission denied", "42501"),
]


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: type(e).__name__)
def test_an_error_pickles_whole(error: Exception) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert vars(again) == vars(error)
