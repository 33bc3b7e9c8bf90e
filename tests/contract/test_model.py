"""The contract's model-based test on every backend: commits, conflicts, rollbacks, reads and reopens.

The machine is :class:`tests.contract.model.ApiModel`; the embedded store's own model
(tests/model/test_model.py) runs it again with simulated crashes.
"""

from __future__ import annotations

from tests.contract.backends import OpenAt
from tests.contract.model import ApiModel, RemovalApiModel, run_model


def test_the_store_follows_the_model(backend: OpenAt) -> None:
    run_model(ApiModel, backend)


def test_removals_follow_the_model(backend: OpenAt) -> None:
    run_model(RemovalApiModel, backend)
