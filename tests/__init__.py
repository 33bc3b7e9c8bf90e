"""logstore's test suite.

A package, so that pytest imports every test module and ``conftest.py`` once, by its full name
(``tests.conftest``), with the repository root on ``sys.path``: ``pytest`` and ``python -m pytest``
run the same from the repository root.
"""
