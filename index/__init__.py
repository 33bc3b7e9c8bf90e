"""Index structures of logstore: derived data rebuilt from the log.

This package is a leaf: it imports nothing from :mod:`logstore`. It holds the
in-memory structures and their byte encodings; the engine does the file I/O.

- :mod:`logstore.index.header`: the 64-byte header every logstore file starts with.
- :mod:`logstore.index.position`: per-segment position index (global offset -> byte position).
- :mod:`logstore.index.catalog`: the stream catalog (name -> id, head, first retained offset, flags).
- :mod:`logstore.index.names`: the catalog's name table, which lets an open look names up in place.
- :mod:`logstore.index.runs`: the per-stream sparse run index (stream offset -> global offset).
"""

from .errors import FormatError, UnsupportedVersionError

__all__ = ["FormatError", "UnsupportedVersionError"]
