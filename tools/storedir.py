"""What every command says about a path that is not a store directory.

One wording for all of them: a missing path is "no such directory", a file
is "not a directory", and a directory that holds no store (neither
``segments/`` nor ``CHECKPOINT``) is "not a logstore store". Each is exit 2.
"""

from __future__ import annotations

import os

from logstore import layout


def store_dir_problem(path: str) -> str | None:
    """Why ``path`` is not a store directory (a message starting with the path), or ``None`` if it is one."""
    if not os.path.exists(path):
        return f"{path}: no such directory"
    if not os.path.isdir(path):
        return f"{path}: not a directory"
    if not (os.path.isdir(layout.segments_dir(path)) or os.path.exists(layout.checkpoint_path(path))):
        return f"{path}: not a logstore store"
    return None
