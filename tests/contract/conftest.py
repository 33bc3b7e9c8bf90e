"""The contract tier's fixture: ``open_store``, the store under test, once per backend in ``BACKENDS``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.backends import BACKENDS, OpenAt, OpenStore


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> OpenAt:
    """The function that opens a store of the backend under test."""
    return BACKENDS[request.param]


@pytest.fixture
def open_store(backend: OpenAt, store_dir: Path) -> Iterator[OpenStore]:
    """Opens the test's store (in ``store_dir``, checked by verify after the test) with the given options.

    Every call opens the same store again, so a test can close it and reopen it. A backend that keeps
    its stores elsewhere (a database) drops the test's store after the test.
    """

    def open_store(**options: Any) -> Any:
        return backend(store_dir, **options)

    yield open_store
    drop = getattr(backend, "drop", None)
    if drop is not None:
        drop(store_dir)
