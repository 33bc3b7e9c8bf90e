"""The maintenance commands behind the ``logstore`` console script, one module per command."""
