"""The benchmark suite: logstore beside sqlite3 and LMDB, in one run, on identical envelopes.

``python -m bench`` runs workloads W1-W10 and the PG group (logstore's
PostgreSQL backend beside two peers on one server, skipped with the reason
when the server does not answer; ``--quick`` for a smoke run of about a
minute) and reports medians with min and max, commit latencies and
the ratios logstore / peer, with the machine described; ``bench/RESULTS.md``
holds the latest full run. The suite lives outside the test run and never
gates it: ``tests/project/test_bench_smoke.py`` only checks that ``--quick`` runs and
reports, never how fast anything is.

- ``peers.py``: the stores behind one interface (three embedded, three on PostgreSQL).
- ``envelopes.py``: the envelopes every store is given.
- ``workloads.py``: each measurement, run in a process of its own.
- ``machine.py``: the machine's description.
- ``__main__.py``: the plan, the runs and the reports.
"""
