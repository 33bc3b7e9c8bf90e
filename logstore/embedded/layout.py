"""The names and places of a store's files (docs/FORMAT.md, "Directory layout"), in one place.

::

    <store>/
      LOCK                      writer lock (flock); empty (logstore.embedded.lock)
      CONTROL                   who has the store open, shared by its processes (logstore.embedded.controlfile)
      CHECKPOINT                how far the index files are complete (logstore.embedded.checkpoint)
      SUBSCRIPTIONS             durable subscriptions and their positions (logstore.embedded.positions)
      catalog.<generation>      stream catalog and shared run table (index.catalog)
      names.<generation>        the catalog's name table: name -> stream id in place (index.names)
      segments/<first>.log      segment files (logstore.embedded.segment); <first>.log.tmp while being created
      segments/<first>.pos      their position indexes (index.position)
      streams/<id>.runs         run files of large streams (index.runs)
      lost+found/               what recovery and repair take out of the log (logstore.embedded.lostfound)
      <file>.<generation>       generation files of registered indexes (logstore.embedded.derived)

``<first>`` and ``<generation>`` are 20 decimal digits, ``<id>`` 10, zero-padded, so that a
plain listing sorts them in order. A file written whole is first written under its name plus
:data:`TMP`; a segment rewritten by compaction or repair under its name plus :data:`COMPACT` or
:data:`REPAIR` until it is renamed over the original.
"""

from __future__ import annotations

import os

LOCK = "LOCK"
CONTROL = "CONTROL"
CHECKPOINT = "CHECKPOINT"
SUBSCRIPTIONS = "SUBSCRIPTIONS"
MIGRATING = "MIGRATING"  # an unfinished `logstore migrate` copy into this directory (logstore.embedded.importer)
SEGMENTS = "segments"
STREAMS = "streams"
LOST_FOUND = "lost+found"
STORE_DIRS = (SEGMENTS, STREAMS, LOST_FOUND)
"""The subdirectories a store may hold."""

CATALOG_PREFIX = "catalog."
NAMES_PREFIX = "names."
SEGMENT_EXT = ".log"
POSITION_EXT = ".pos"
RUNS_EXT = ".runs"
TMP = ".tmp"
COMPACT = ".compact"
REPAIR = ".repair"

FIRST_DIGITS = 20  # a segment's first global offset and a catalog's generation: any u64
SID_DIGITS = 10  # a stream id: any u32


def segment_name(first: int) -> str:
    return f"{first:0{FIRST_DIGITS}d}{SEGMENT_EXT}"


def position_name(first: int) -> str:
    return f"{first:0{FIRST_DIGITS}d}{POSITION_EXT}"


def runs_name(sid: int) -> str:
    return f"{sid:0{SID_DIGITS}d}{RUNS_EXT}"


def catalog_name(generation: int) -> str:
    return f"{CATALOG_PREFIX}{generation:0{FIRST_DIGITS}d}"


def index_path(store: str, prefix: str, generation: int) -> str:
    """The generation file ``<store>/<prefix>.<generation>`` of a derived index (the catalog's: ``catalog``)."""
    return os.path.join(store, f"{prefix}.{generation:0{FIRST_DIGITS}d}")


def segments_dir(store: str) -> str:
    return os.path.join(store, SEGMENTS)


def streams_dir(store: str) -> str:
    return os.path.join(store, STREAMS)


def checkpoint_path(store: str) -> str:
    return os.path.join(store, CHECKPOINT)


def lock_path(store: str) -> str:
    return os.path.join(store, LOCK)


def control_path(store: str) -> str:
    return os.path.join(store, CONTROL)


def lost_found_dir(store: str) -> str:
    return os.path.join(store, LOST_FOUND)


def catalog_path(store: str, generation: int) -> str:
    return index_path(store, CATALOG_PREFIX.rstrip("."), generation)


def segment_path(store: str, first: int) -> str:
    return os.path.join(store, SEGMENTS, segment_name(first))


def runs_path(store: str, sid: int) -> str:
    return os.path.join(store, STREAMS, runs_name(sid))


def position_path_of(segment: str) -> str:
    """The position file beside the segment file ``segment`` (a path or a name ending in ``.log``)."""
    return segment[: -len(SEGMENT_EXT)] + POSITION_EXT


def segment_path_of(position: str) -> str:
    """The segment file beside the position file ``position`` (a path or a name ending in ``.pos``)."""
    return position[: -len(POSITION_EXT)] + SEGMENT_EXT


def is_segment_name(name: str) -> bool:
    """Whether ``name`` is a segment file's name: 20 decimal digits and ``.log``."""
    stem = name[: -len(SEGMENT_EXT)]
    return name.endswith(SEGMENT_EXT) and len(stem) == FIRST_DIGITS and stem.isdigit()


def is_runs_name(name: str) -> bool:
    """Whether ``name`` is a run file's name: 10 decimal digits and ``.runs``."""
    stem = name[: -len(RUNS_EXT)]
    return name.endswith(RUNS_EXT) and len(stem) == SID_DIGITS and stem.isdigit()


def is_names_name(name: str) -> bool:
    """Whether ``name`` is a name table file's name or its temporary name (any number of digits)."""
    return name.startswith(NAMES_PREFIX) and name[len(NAMES_PREFIX) :].removesuffix(TMP).isdigit()


def is_catalog_name(name: str) -> bool:
    """Whether ``name`` is a catalog file's name or its temporary name (any number of digits)."""
    return name.startswith(CATALOG_PREFIX) and name[len(CATALOG_PREFIX) :].removesuffix(TMP).isdigit()


def segment_first(name: str) -> int:
    """The first global offset that the segment file name ``name`` (:func:`is_segment_name`) says."""
    return int(name[: -len(SEGMENT_EXT)])
