"""``lost+found/``: where recovery and ``logstore repair`` put the bytes they take out of the log.

Every saved range or moved file is a ``.bin`` with a JSON manifest ``.json`` of the same base
name (docs/FORMAT.md, "lost+found files"); a range with no bytes left gets the manifest alone.
Nothing in ``lost+found/`` is overwritten: a base name that is taken gets ``.2``, ``.3``, ...
Nothing in logstore reads these files back.

Durability: the ``.bin`` is fsynced before its manifest is written (through a ``.tmp`` file and
a rename), and the directory is fsynced before the caller removes the originals, so a crash
never loses bytes that are in neither place.
"""

from __future__ import annotations

import json
import os
import time

from logstore.embedded import layout
from logstore.embedded.fileio import FileIO

RECOVERY = "recovery"
"""The ``by`` of what recovery cuts at open; its files are named ``<stamp>-<segment file>-<position>``."""

REPAIR = "logstore repair"
"""The ``by`` of what ``logstore repair`` saves or moves; its files are named
``<stamp>-repair-<path relative to the store, / as _>-<position>``."""


class LostFound:
    """The ``lost+found/`` directory of the store in ``store_path``, written to by one producer (``by``)."""

    def __init__(self, io: FileIO, store_path: str, by: str) -> None:
        if by not in (RECOVERY, REPAIR):
            raise ValueError(f"by: {by!r} is not a lost+found producer ({RECOVERY!r} or {REPAIR!r})")
        self.io = io
        self.store_path = store_path
        self.by = by
        self.dir = layout.lost_found_dir(store_path)
        self.stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())  # one per cut or repair: its files sort together

    def ready(self) -> None:
        """Create the directory (mode 0700) if it is missing, durably."""
        if not self.io.exists(self.dir):
            self.io.mkdir(self.dir)
            self.io.fsync_dir(self.store_path)

    def sync(self) -> None:
        """Make the names of the files written so far durable."""
        self.io.fsync_dir(self.dir)

    def base(self, source: str, position: int) -> str:
        """The path, without extension, that the next file saved from ``source`` at ``position`` gets."""
        if self.by == REPAIR:
            label = "repair-" + os.path.relpath(source, self.store_path).replace(os.sep, "_")
        else:
            label = os.path.basename(source)
        base = os.path.join(self.dir, f"{self.stamp}-{label}-{position}")
        cand = base
        n = 1
        while self.io.exists(cand + ".bin") or self.io.exists(cand + ".json"):  # the same bytes saved before
            n += 1
            cand = f"{base}.{n}"
        return cand

    def save(self, data: bytes, source: str, position: int, reason: str, *, sync: bool = True) -> list[str]:
        """Copy ``data``, which starts at byte ``position`` of ``source``, with its manifest; return the paths written.

        With no bytes only the manifest is written. ``sync=False`` leaves the directory's fsync to a
        later :meth:`sync`, for a caller that saves several ranges before it removes anything.
        """
        self.ready()
        base = self.base(source, position)
        written = []
        if data:
            fd = self.io.open(base + ".bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                self.io.pwrite(fd, data, 0)
                self.io.fsync(fd)
            finally:
                self.io.close(fd)
            written.append(base + ".bin")
        written.append(self._manifest(base, source, position, len(data), reason))
        if sync:
            self.sync()
        return written

    def move(self, source: str, reason: str) -> list[str]:
        """Move the file ``source`` whole (its position is 0), with its manifest; return the paths written."""
        self.ready()
        base = self.base(source, 0)
        length = os.path.getsize(source) if os.path.isfile(source) else 0
        self.io.rename(source, base + ".bin")
        written = [base + ".bin", self._manifest(base, source, 0, length, reason)]
        self.sync()
        self.io.fsync_dir(os.path.dirname(source))
        return written

    def _manifest(self, base: str, source: str, position: int, length: int, reason: str) -> str:
        manifest = {
            "source": os.path.relpath(source, self.store_path),
            "position": position,
            "length": length,
            "reason": reason,
            "by": self.by,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.io.write_file_atomic(base + ".json", json.dumps(manifest, indent=2).encode())
        return base + ".json"
