"""The backends the contract tests run against.

A backend is a name and a function that opens (or creates) a store at a directory with the options of
``logstore.open`` (a backend ignores the options it has no use for) and returns an object with the
store's public API, usable as a context manager. The ``open_store`` fixture of the contract tier runs
every test once per backend listed here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import logstore

OpenAt = Callable[..., Any]
"""``open_at(path, **options)``: a store at ``path``, created if missing."""

OpenStore = Callable[..., Any]
"""``open_store(**options)``: the test's store (one directory per test), opened again on each call."""


def _logstore(path: str | os.PathLike[str], **options: Any) -> logstore.Store:
    return logstore.open(path, **options)


BACKENDS: dict[str, OpenAt] = {"logstore": _logstore}
