"""Shared fixtures: every store a test writes is checked by the consistency checker afterwards."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from logstore.verify import verify
from tests.stress import STRESS

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "long",
    deadline=None,
    max_examples=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("LOGSTORE_HYPOTHESIS_PROFILE", "long" if STRESS else "ci"))

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


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh store directory; after the test, every store left in it must verify clean."""
    path = tmp_path / "store"
    yield path
    if (path / "segments").is_dir():
        assert_verified(path)
