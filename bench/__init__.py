"""Benchmarks of logstore, each run side by side with its baselines in one process.

They live outside the test run and never gate it: ``python -m bench.quick``
compares appends and a full global scan against sqlite3 (WAL,
``synchronous=FULL``) on identical envelopes and prints medians, ranges,
commit latency percentiles and the logstore/sqlite ratios, with the machine
described at the top. ``tests/test_bench_smoke.py`` only checks that the quick
run works (``--quick --json``), never how fast it is.
"""
