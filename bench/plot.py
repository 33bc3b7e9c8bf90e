"""Charts of a benchmark report: ``python -m bench --plot DIR``, or ``python -m bench.plot report.json DIR``.

For each workload group of the report, ``DIR/<workload>.png`` draws every
benchmark of the group (one panel each) with its stores side by side: a bar
at the median of the runs, a whisker from the smallest to the largest run,
the median written above the bar, the floor in grey. Where the group's
benchmarks recorded latencies (commit latencies of writes, W10's and the
PG and ES groups' wake-ups), ``DIR/<workload>-latency.png`` draws their
distributions: for each store, one line per run through the percentiles the
run kept (``QUANTILES`` in ``bench/workloads.py``: every second percentile,
then 99, 99.5, 99.9 and the maximum), latency on a logarithmic axis.

The report is what ``python -m bench --json`` prints. matplotlib draws the
charts: it comes with the ``bench`` extra (``pip install 'logstore[bench]'``),
and nothing else in the suite needs it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

INSTALL = "pip install 'logstore[bench]'"
STORE_ORDER = (
    "logstore",
    "floor",
    "sqlite",
    "sqlite-unique",
    "lmdb",
    "pg",
    "pg-eventsourcing",
    "pg-plain",
    "es-sqlite",
    "es-popo",
)
COLORS = {
    "logstore": "#1f77b4",
    "floor": "#8c8c8c",
    "sqlite": "#ff7f0e",
    "sqlite-unique": "#d62728",
    "lmdb": "#2ca02c",
    "pg": "#1f77b4",
    "pg-eventsourcing": "#9467bd",
    "pg-plain": "#8c564b",
    "es-sqlite": "#ff7f0e",
    "es-popo": "#17becf",
}
PANEL = (4.6, 3.3)
"""Inches of one panel."""
DPI = 96
COLUMNS = 3
"""Panels side by side at most."""


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display); PlotUnavailable when it is missing."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise PlotUnavailable(f"the charts need matplotlib, which is not installed ({INSTALL}): {exc}") from None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def family(name: str) -> str:
    """A benchmark's name without its ``/store=`` part: what its stores share."""
    return name.rsplit("/store=", 1)[0]


def _store_key(store: str) -> tuple[int, str]:
    return (STORE_ORDER.index(store) if store in STORE_ORDER else len(STORE_ORDER), store)


def _wrap(text: str, width: int = 44) -> str:
    """``text`` in lines of at most ``width`` characters, broken after its slashes."""
    lines = [""]
    for part in text.split("/"):
        piece = part if not lines[-1] else "/" + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append(part)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def _compact(value: float, unit: str) -> str:
    """A bar's label: 1.23M, 45.6k, 3.2 ms."""
    if unit == "s":
        return f"{value * 1e3:.3g} ms" if value < 10 else f"{value:.3g} s"
    for suffix, div in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def _grid(plt: Any, panels: int) -> tuple[Any, list[Any]]:
    cols = min(COLUMNS, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL[0] * cols, PANEL[1] * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def _groups(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """workload -> benchmark family -> its results, stores in :data:`STORE_ORDER`, in the report's order."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for s in results:
        out.setdefault(s["workload"], {}).setdefault(family(s["name"]), []).append(s)
    for families in out.values():
        for rows in families.values():
            rows.sort(key=lambda s: _store_key(s["store"]))
    return out


def bars(plt: Any, workload: str, families: dict[str, list[dict[str, Any]]], path: str) -> None:
    """One panel per benchmark: each store's median, whiskers from its min to its max."""
    fig, axes = _grid(plt, len(families))
    for ax, (name, rows) in zip(axes, families.items(), strict=True):
        stores = [s["store"] for s in rows]
        medians = [s["median"] for s in rows]
        below = [s["median"] - s["min"] for s in rows]
        above = [s["max"] - s["median"] for s in rows]
        x = range(len(rows))
        ax.bar(
            x,
            medians,
            yerr=[below, above],
            color=[COLORS.get(st, "#bbbbbb") for st in stores],
            capsize=4,
            error_kw={"elinewidth": 1, "ecolor": "#333333"},
        )
        for i, s in enumerate(rows):
            ax.annotate(
                _compact(s["median"], s["unit"]),
                (i, s["max"]),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(list(x), stores, fontsize=8)
        unit = rows[0]["unit"]
        better = "higher is better" if rows[0]["higher_is_better"] else "lower is better"
        ax.set_ylabel(f"{unit} ({better})", fontsize=8)
        ax.set_title(_wrap(name), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.12)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"{workload}: median of the runs, min-max whiskers", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def latencies(plt: Any, workload: str, families: dict[str, list[dict[str, Any]]], path: str) -> None:
    """One panel per benchmark with latencies: each run's distribution, store by store."""
    fig, axes = _grid(plt, len(families))
    for ax, (name, rows) in zip(axes, families.items(), strict=True):
        values = []
        for s in rows:
            dist = s["latency_quantiles"]
            fractions = [p / 100 for p in dist["percentiles"]]
            color = COLORS.get(s["store"], "#bbbbbb")
            for k, run in enumerate(dist["runs"]):
                ms = [v * 1e3 for v in run]
                values += ms
                ax.step(
                    ms,
                    fractions,
                    where="post",
                    color=color,
                    alpha=0.85 if len(dist["runs"]) == 1 else 0.6,
                    linewidth=1.2,
                    label=s["store"] if k == 0 else None,
                )
        if values and min(values) > 0:
            ax.set_xscale("log")
        else:  # a wake-up may come before commit() returned: a latency of 0 or below
            ax.set_xscale("symlog", linthresh=0.01)
        what = "wake-up" if name.startswith("wake-up/") else "commit"
        ax.set_xlabel(f"{what} latency, ms", fontsize=8)
        ax.set_ylabel(f"fraction of {what}s at or below", fontsize=8)
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
        ax.set_title(_wrap(name), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{workload}: latency distributions, one line per run", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def draw(report: dict[str, Any], directory: str) -> list[str]:
    """Write the charts of ``report`` to ``directory`` (made if missing); the paths written, in workload order."""
    plt = pyplot()
    os.makedirs(directory, exist_ok=True)
    written = []
    for workload, families in _groups(report["results"]).items():
        path = os.path.join(directory, f"{workload}.png")
        bars(plt, workload, families, path)
        written.append(path)
        timed = {name: rows for name, rows in families.items() if all("latency_quantiles" in s for s in rows)}
        if timed:
            path = os.path.join(directory, f"{workload}-latency.png")
            latencies(plt, workload, timed, path)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print("usage: python -m bench.plot REPORT.json DIR  (REPORT.json: what python -m bench --json printed)")
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    with open(args[0], encoding="utf-8") as f:
        report = json.load(f)
    try:
        paths = draw(report, args[1])
    except PlotUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
