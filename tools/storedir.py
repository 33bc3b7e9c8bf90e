"""What every command shares: its parser's start, how it fails, what it says about a path that is not a store.

One wording for all of them: a missing path is "no such directory", a file
is "not a directory", and a directory that holds no store (neither
``segments/`` nor ``CHECKPOINT``) is "not a logstore store". Each is exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from logstore.checks import URL_SCHEMES
from logstore.embedded import layout


class ToolError(Exception):
    """A condition the tool reports on stderr with exit code 2."""


def add_command(
    sub: Any,
    name: str,
    summary: str,
    run: Callable[[argparse.Namespace], int],
    dir_help: str = "store directory",
    *,
    store_dir: bool = False,
    flags: Mapping[str, str] | None = None,
    urls: bool = False,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name``, which takes a directory, the on/off options ``flags`` (option: help) and
    calls ``run``; the caller adds any other options.

    A :class:`ToolError` out of ``run`` is reported (exit 2). With ``store_dir``, a directory that is not
    a store is refused (exit 2) before ``run`` is called. A ``postgresql://`` URL is refused (exit 2) unless
    ``urls``: then ``run`` gets it as the directory (:func:`url_schema` tells them apart).
    """
    p: argparse.ArgumentParser = sub.add_parser(name, help=summary)
    p.add_argument("dir", help=dir_help)
    for option, option_help in (flags or {}).items():
        p.add_argument(option, action="store_true", help=option_help)

    def run_command(args: argparse.Namespace) -> int:
        try:
            if is_url(args.dir):
                if not urls:  # the URL is not repeated: it may hold a password
                    raise ToolError(f"{name} works on a store directory, not on a postgresql:// URL")
            elif store_dir and (problem := store_dir_problem(args.dir)) is not None:
                raise ToolError(problem)
            return run(args)
        except ToolError as exc:
            return fail(name, exc)

    p.set_defaults(run=run_command)
    return p


DEFAULT_SCHEMA = "logstore"


def is_url(path: str) -> bool:
    """Whether a command's store argument is a PostgreSQL connection URL rather than a directory."""
    return path.startswith(URL_SCHEMES)


def add_schema_option(p: argparse.ArgumentParser) -> None:
    """``--schema``, for a command that also takes a ``postgresql://`` URL in place of the directory."""
    p.add_argument(
        "--schema", default=None, help=f"with a postgresql:// URL: the store's schema (default {DEFAULT_SCHEMA})"
    )


def url_schema(args: argparse.Namespace) -> str | None:
    """The schema when the command's store is a URL (``None`` for a directory); ``--schema`` with a
    directory raises :class:`ToolError`."""
    if not is_url(args.dir):
        if getattr(args, "schema", None) is not None:
            raise ToolError(f"--schema is an option of a postgresql:// URL, and {args.dir} is a directory")
        return None
    return str(getattr(args, "schema", None) or DEFAULT_SCHEMA)


def print_json(obj: object, names: str, **computed: object) -> None:
    """Print one JSON object: the attributes of ``obj`` named in ``names`` (in that order), or those ``computed``."""
    print(json.dumps({n: computed[n] if n in computed else getattr(obj, n) for n in names.split()}, indent=2))


def fail(command: str, message: object) -> int:
    """Print ``logstore COMMAND: message`` on stderr; return the exit code of a usage or I/O error, 2."""
    print(f"logstore {command}: {message}", file=sys.stderr)
    return 2


def store_dir_problem(path: str) -> str | None:
    """Why ``path`` is not a store directory (a message starting with the path), or ``None`` if it is one."""
    if not os.path.exists(path):
        return f"{path}: no such directory"
    if not os.path.isdir(path):
        return f"{path}: not a directory"
    if not (os.path.isdir(layout.segments_dir(path)) or os.path.exists(layout.checkpoint_path(path))):
        return f"{path}: not a logstore store"
    return None
