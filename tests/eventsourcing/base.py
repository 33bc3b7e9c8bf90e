"""A fresh store directory per test case, opened once for the recorders under test."""

from __future__ import annotations

import shutil
import tempfile
from unittest import TestCase

import logstore
from logstore.store import Store
from tests.helpers import assert_verified


class StoreCase(TestCase):
    """Opens a new store in ``setUp``; ``tearDown`` closes it and checks it with the consistency checker."""

    store: Store
    store_path: str

    def setUp(self) -> None:
        super().setUp()
        self.store_path = tempfile.mkdtemp(prefix="logstore-es-")
        self.store = logstore.open(self.store_path)

    def tearDown(self) -> None:
        self.store.close()
        try:
            assert_verified(self.store_path)
        finally:
            shutil.rmtree(self.store_path, ignore_errors=True)
        super().tearDown()
