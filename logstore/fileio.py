"""The I/O seam: every file operation of the engine goes through :class:`FileIO`.

Tests substitute a subclass to count operations, fail one, or drop what was
not synced. The engine never calls ``os`` file functions directly.
Files are created ``0600`` and directories ``0700``; paths are opened with
``O_NOFOLLOW`` so a planted symlink is refused, not followed.
"""

from __future__ import annotations

import mmap
import os


class FileIO:
    """Plain POSIX file operations, with counters for tests and tools.

    ``records_read`` counts log records decoded (by recovery scans and reads);
    ``syncs`` counts fsync/fdatasync calls.
    """

    def __init__(self) -> None:
        self.records_read = 0
        self.syncs = 0

    # -- descriptors -------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, position: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, position)
            view = view[n:]
            position += n

    def pread(self, fd: int, size: int, position: int) -> bytes:
        return os.pread(fd, size, position)

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self.syncs += 1
        os.fsync(fd)

    def fallocate(self, fd: int, offset: int, length: int) -> None:
        os.posix_fallocate(fd, offset, length)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def mmap_read(self, fd: int, length: int) -> mmap.mmap:
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ)

    # -- names -----------------------------------------------------------------

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.syncs += 1
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    # -- whole files -------------------------------------------------------------

    def read_file(self, path: str) -> bytes:
        fd = self.open(path, os.O_RDONLY)
        try:
            size = self.size(fd)
            chunks = []
            position = 0
            while position < size:
                chunk = self.pread(fd, size - position, position)
                if not chunk:
                    break
                chunks.append(chunk)
                position += len(chunk)
            return b"".join(chunks)
        finally:
            self.close(fd)

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync directory."""
        tmp = path + ".tmp"
        if self.exists(tmp):
            self.unlink(tmp)
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            self.pwrite(fd, data, 0)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.rename(tmp, path)
        self.fsync_dir(os.path.dirname(path) or ".")
