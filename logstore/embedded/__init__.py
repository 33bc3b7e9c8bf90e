"""The embedded engine: a store in a directory of segment files (``logstore.open("data/")``).

Its public names are re-exported by ``logstore`` (``logstore.Store``, ``logstore.FileIO``, ...); the
modules here are the engine's insides. docs/ARCHITECTURE.md maps them.
"""
