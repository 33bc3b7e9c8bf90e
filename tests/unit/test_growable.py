"""``index.growable.Growable``: appends of every size land in order, across the doublings that grow it."""

from __future__ import annotations

import numpy as np

from logstore.index.growable import Growable


def test_fill_and_extend_range_of_every_small_size_and_across_growth() -> None:
    g = Growable(np.int64)
    want: list[int] = []
    for k in range(200):
        count = k % 5  # 0, 1, 2 (the one-by-one paths), 3 and 4 (numpy's)
        g.fill(k, count)
        want += [k] * count
        g.extend_range(1000 * k, count)
        want += list(range(1000 * k, 1000 * k + count))
        g.extend([7] * (k % 3))
        want += [7] * (k % 3)
        assert len(g) == len(want)
    assert g.view().tolist() == want
