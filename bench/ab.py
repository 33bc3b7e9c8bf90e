"""One workload on two checkouts of logstore, taking turns: ``python -m bench.ab BASE [--runs 5] [--spec JSON]``.

Measures what a change costs: the workload process (:mod:`bench.workloads`, of this checkout) imports
logstore from ``BASE`` (a checkout of the code before the change, e.g. ``git worktree add`` or
``git archive REV | tar -x -C BASE``) or from this checkout, alternately, so that both see the same
machine load. Prints each run and the medians with their ratio (this checkout / base), as JSON with
``--json``. The default spec is W1: 200,000 envelopes of 300 B in transactions of 100, fsync. A W3 spec
(``"workload": "scan"``) reads a store that W1's workload writes first, untimed, with the same checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W1 = {"workload": "append", "store": "logstore", "messages": 200_000, "batch": 100, "size": 300}


def rates(result: dict[str, Any]) -> dict[str, float]:
    """The figures of one run by name, each a rate per second, the first the headline: the workload's
    messages over its ``seconds`` (a W4 or W8 spec, ``event_sourcing`` or ``many_streams``: over
    ``write_seconds``, its writes, then its loads per second, and W8's reopens per second); an
    ES spec, ``es_recorder``: its saves of one and of ten events and its notification scan in each page
    size, each compared on its own; a W9 spec, ``procs``: the commits of all its writer processes."""
    if "saves1" in result:
        got = {f"saves{k}/s": result[f"saves{k}"]["saves"] / result[f"saves{k}"]["seconds"] for k in (1, 10)}
        for page, scan in result["scan"].items():
            got[f"scan/page={page}, notifications/s"] = scan["notifications"] / scan["seconds"]
        return got
    seconds = result["seconds"] if "seconds" in result else result["write_seconds"]
    if "messages" not in result:  # a W9 spec (``procs``): every writer process's commits
        return {"commits/s": float(result["commits"]) / float(seconds)}
    got = {"msg/s": float(result["messages"]) / float(seconds)}
    if "load_seconds" in result:  # W4 and W8 load streams after writing them
        got["loads/s"] = float(result["loads"]) / float(result["load_seconds"])
    if "reopen_seconds" in result:  # W8 reopens the store: opens per second, so that higher is better
        got["reopens/s"] = 1.0 / float(result["reopen_seconds"])
    return got


def run_once(tree: str, spec: dict[str, Any], work: str) -> tuple[dict[str, float], float]:
    """The figures of one run of ``spec`` with logstore imported from ``tree`` (:func:`rates`), and the
    process's CPU microseconds per message (the workload's ``cpu_seconds``; 0 where it has none)."""
    path = tempfile.mkdtemp(dir=work)
    shutil.rmtree(path)
    env = {**os.environ, "PYTHONPATH": tree}
    if spec["workload"] == "scan":  # W3 reads a store W1 wrote: write it first (not timed)
        write = {**W1, "store": spec["store"], "messages": spec["messages"], "size": spec["size"], "dir": path}
        subprocess.run(
            [sys.executable, "-m", "bench.workloads", json.dumps(write)],
            cwd=tree,
            env=env,
            capture_output=True,
            check=True,
        )
    proc = subprocess.run(
        [sys.executable, "-m", "bench.workloads", json.dumps({**spec, "dir": path})],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(path, ignore_errors=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = float(result.get("cpu_seconds", 0.0))
    return rates(result), cpu / float(result["messages"]) * 1e6 if cpu else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("base", help="a checkout of logstore before the change (its bench/ is replaced by this one)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", default=json.dumps(W1), help="the workload spec (JSON), without dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    base_bench = os.path.join(args.base, "bench")
    shutil.rmtree(base_bench, ignore_errors=True)
    shutil.copytree(os.path.join(HERE, "bench"), base_bench)  # the same workload code on both sides
    work = tempfile.mkdtemp(prefix="logstore-ab-")
    figures: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    cpu: dict[str, list[float]] = {"base": [], "this": []}
    try:
        for k in range(args.runs):
            order = (("base", args.base), ("this", HERE)) if k % 2 == 0 else (("this", HERE), ("base", args.base))
            for label, tree in order:
                got, us = run_once(tree, spec, work)
                for name, rate in got.items():
                    figures[label].setdefault(name, []).append(rate)
                cpu[label].append(us)
                if not args.json:
                    shown = ", ".join(f"{rate:,.0f} {name}" for name, rate in got.items())
                    print(f"run {k + 1} {label}: {shown}, {us:.2f} us of CPU per message", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = list(figures["this"])
    head = names[0]  # the headline figure: "runs", "median" and "ratio" are its
    medians = {k: statistics.median(v[head]) for k, v in figures.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    report = {
        "spec": spec,
        "runs": {k: v[head] for k, v in figures.items()},
        "median": medians,
        "ratio": medians["this"] / medians["base"],
        "figures": {
            name: {
                "runs": {k: v[name] for k, v in figures.items()},
                "ratio": statistics.median(figures["this"][name]) / statistics.median(figures["base"][name]),
            }
            for name in names
        },
        "cpu_us_per_message": cpu,
        "cpu_median": cpu_medians,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name in names:
            base, this = (statistics.median(figures[k][name]) for k in ("base", "this"))
            print(f"median base {base:,.0f}, this {this:,.0f} {name}: this / base = {this / base:.3f}")
        cb, ct = cpu_medians["base"], cpu_medians["this"]
        print(f"median CPU per message: base {cb:.2f} us, this {ct:.2f} us ({ct / cb:.3f}x)" if cb else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
