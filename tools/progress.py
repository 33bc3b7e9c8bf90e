"""Progress bars for the tools, on stderr, only when someone is watching.

A thin wrapper over tqdm: well kept, small, pure Python with no dependencies
of its own, and it already handles what a hand-written bar gets wrong
(terminal width, rate and time estimates, redrawing at most a few times a
second so that a tight loop is not slowed by its bar). The tools call
:func:`progress` and nothing else, so tqdm stays replaceable.

Bars are on by default only when standard output and standard error are both
terminals: a tool whose output is piped or captured (``logstore stats DIR |
less``, a test) or whose stderr goes to a file prints no bar, and every
command turns its bar off for ``--json``. They are drawn on stderr, so they
never mix into the output.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]


class Progress:
    """A progress bar (or nothing, when disabled): ``update(n)``, ``close()``, or use it in ``with``."""

    def __init__(self, total: int | None, desc: str, enabled: bool, unit: str = "records") -> None:
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(
                total=total,
                desc=desc,
                file=sys.stderr,
                unit=" " + unit,
                unit_scale=True,
                leave=False,
                dynamic_ncols=True,
                disable=False,
            )

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def advance_to(self, done: int, total: int | None) -> None:
        """Show ``done`` of ``total``: a callback for work that reports where it is (``done`` may start over)."""
        bar = self._bar
        if bar is None:
            return
        total = None if total is None else max(total, done)
        if done < bar.n:
            bar.reset()
        if total != bar.total:
            bar.total = total
            bar.refresh()  # show the new total now, not at the next timed redraw
        bar.update(done - bar.n)

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress(total: int | None, desc: str, enabled: bool | None = None, unit: str = "records") -> Progress:
    """A bar counting ``unit`` to ``total`` (``None``: unknown), labelled ``desc``.

    ``enabled`` defaults to whether standard output and standard error are
    both terminals; a disabled bar does nothing at all.
    """
    if enabled is None:
        try:
            enabled = sys.stdout.isatty() and sys.stderr.isatty()
        except (AttributeError, ValueError):  # no stdout or stderr, or a closed one
            enabled = False
    return Progress(total, desc, enabled, unit)
