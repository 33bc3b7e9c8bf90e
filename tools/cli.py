"""The ``logstore`` command: dispatches to one module per subcommand.

Exit codes: 0 success (or a clean store), 1 problems found, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import logstore
from logstore.tools import compact, demo, dump, migrate, repair, stats, verify

COMMANDS = (compact, demo, dump, migrate, repair, stats, verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logstore", description="Embedded message store: tools.")
    parser.add_argument("--version", action="version", version=f"logstore {logstore.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2
    return code
