"""Run the ``logstore`` command on a pseudo-terminal, as a person at a terminal would, and read the screen."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time


def on_a_terminal(argv: list[str], stderr_too: bool = True) -> tuple[int, str, str]:
    """Run ``python -m logstore argv`` with stdout (and stderr) on a pseudo-terminal: (exit code, terminal, stderr)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "logstore", *argv],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave if stderr_too else subprocess.PIPE,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _w, _x = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=60)
        err = proc.stderr.read().decode() if proc.stderr is not None else ""
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return code, b"".join(chunks).decode(errors="replace"), err
