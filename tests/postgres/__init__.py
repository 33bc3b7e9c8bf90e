"""PostgreSQL-only tests: several client processes, lost connections, hostile names, creating the tables.

The backend-neutral contract runs against PostgreSQL in tests/contract; these test what only a server
has. They use the server at ``$LOGSTORE_TEST_POSTGRES`` (tests/contract/backends.py).
"""
