"""Contract tier: the public contract (DESIGN.md, the Go interface's doc comments).

The tests take their store from the ``open_store`` fixture (tests/contract/conftest.py), so that another
backend runs them unchanged by adding itself to :data:`tests.contract.backends.BACKENDS`.
"""
