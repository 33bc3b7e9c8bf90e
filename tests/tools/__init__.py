"""Tools tier: one test module per command of the ``logstore`` CLI (tools/)."""
