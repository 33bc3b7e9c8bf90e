"""The two test tiers: the CI tier (default) and the long campaign tier (``LOGSTORE_STRESS=1``).

Campaign tests size their work with :func:`scale`: a few seconds of
deterministic work in CI, the figures quoted in docs/RELIABILITY.md under
``LOGSTORE_STRESS=1``. ``LOGSTORE_STRESS_SEED`` changes the seeds of a long run.
"""

from __future__ import annotations

import os

STRESS = os.environ.get("LOGSTORE_STRESS", "") not in ("", "0")
SEED = int(os.environ.get("LOGSTORE_STRESS_SEED", "0"))


def scale(ci: int, long: int) -> int:
    """``ci`` in the CI tier, ``long`` under ``LOGSTORE_STRESS=1``."""
    return long if STRESS else ci
