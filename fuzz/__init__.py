"""Fuzzing of logstore's parsers: shared targets (``fuzz.targets``) and the atheris harness (``fuzz/harness.py``)."""
