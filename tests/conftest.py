"""Fixtures and hypothesis profiles: every store a test writes is checked by the consistency checker afterwards.

Helpers that test modules import live in :mod:`tests.helpers`; this module holds fixtures and settings only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import assert_verified
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


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh store directory; after the test, every store left in it must verify clean."""
    path = tmp_path / "store"
    yield path
    if (path / "segments").is_dir():
        assert_verified(path)
