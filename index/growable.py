"""A numpy array that grows by doubling, published to readers as one reference.

The writer thread alone appends. Readers take ``view()`` (or ``state``) once
and search in it; a concurrent append either is or is not in what they see,
never half of it, because the element is stored before the count that makes
it visible and both travel in one tuple.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


class Growable:
    """An append-only 1-D numpy array with amortised O(1) appends."""

    __slots__ = ("dtype", "state")

    def __init__(self, dtype: npt.DTypeLike, initial: npt.NDArray[Any] | None = None) -> None:
        self.dtype = np.dtype(dtype)
        if initial is None:
            arr = np.zeros(16, dtype=self.dtype)
            n = 0
        else:
            n = len(initial)
            arr = np.zeros(max(16, n * 2), dtype=self.dtype)
            arr[:n] = initial
        # (array, count): the first ``count`` elements are valid.
        self.state: tuple[npt.NDArray[Any], int] = (arr, n)

    def __len__(self) -> int:
        return self.state[1]

    def view(self) -> npt.NDArray[Any]:
        arr, n = self.state
        return arr[:n]

    def extend(self, values: Any) -> None:
        arr, n = self.state
        k = len(values)
        if n + k > len(arr):
            bigger = np.zeros(max(2 * len(arr), n + k), dtype=self.dtype)
            bigger[:n] = arr[:n]
            arr = bigger
        arr[n : n + k] = values
        self.state = (arr, n + k)

    def fill(self, value: int, count: int) -> None:
        """Append ``count`` copies of ``value``."""
        arr, n = self._room(count)
        if count == 1:
            arr[n] = value  # a third of a slice assignment's cost (one-message commits)
        else:
            arr[n : n + count] = value
        self.state = (arr, n + count)

    def extend_range(self, first: int, count: int) -> None:
        """Append ``first``, ``first + 1``, ... (``count`` values)."""
        arr, n = self._room(count)
        if count <= 2:
            for k in range(count):  # cheaper than an arange for the smallest commits
                arr[n + k] = first + k
        else:
            arr[n : n + count] = np.arange(first, first + count, dtype=self.dtype)
        self.state = (arr, n + count)

    def _room(self, k: int) -> tuple[npt.NDArray[Any], int]:
        """The array, grown if it has no room for ``k`` more values (not published yet), and the count."""
        arr, n = self.state
        if n + k > len(arr):
            bigger = np.zeros(max(2 * len(arr), n + k), dtype=self.dtype)
            bigger[:n] = arr[:n]
            arr = bigger
        return arr, n

    def append(self, value: int) -> None:
        arr, n = self.state
        if n == len(arr):
            bigger = np.zeros(2 * len(arr), dtype=self.dtype)
            bigger[:n] = arr
            arr = bigger
        arr[n] = value
        self.state = (arr, n + 1)
