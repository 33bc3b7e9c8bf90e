"""Helpers shared by test modules: sizes, the consistency check every store must pass, a quiet logger."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from logstore.verify import verify

SMALL_SEGMENT = 64 * 1024


@contextlib.contextmanager
def quiet_logstore() -> Iterator[None]:
    """Silence the ``logstore`` logger: campaigns recover thousands of stores, each logging what it cut.

    Their findings are asserted, not logged.
    """
    logger = logging.getLogger("logstore")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def assert_verified(path: str | os.PathLike[str]) -> None:
    """Run the consistency checker on a closed store and fail with its findings."""
    result = verify(os.fspath(path))
    assert result.ok, "verify found problems:\n" + "\n".join(str(p) for p in result.problems)
