"""Coverage-guided fuzzing of logstore's parsers with atheris (libFuzzer for Python), for long runs.

Usage (from the repository root; see fuzz/README.md)::

    pip install atheris            # or: pip install -e ".[fuzz]"
    python fuzz/harness.py TARGET [--fix-checksums] [--corpus DIR] [libFuzzer options...]
    python fuzz/harness.py --list

TARGET is one of the parser targets of ``fuzz/targets.py`` (``header``,
``record``, ``envelope``, ``position``, ``runs``, ``catalog``,
``checkpoint``, ``segment``) or ``store``: a whole store in which the input
replaces one file (its first byte picks which), then opened, read in full
and verified. ``--fix-checksums`` recomputes every checksum of the input
after libFuzzer's mutation, so that coverage reaches the checks behind the
checksums (the engine is not changed). The corpus starts from the valid
files of a small store written through the API.

A finding is any exception a target does not allow (see ``fuzz/targets.py``),
a failed assertion (an error without its byte position, a wrong answer from
a read), a timeout (``-timeout``) or running out of memory (``-rss_limit_mb``).
libFuzzer then writes the input to ``crash-<sha1>`` (or ``timeout-``,
``oom-``); ``python fuzz/harness.py TARGET [--fix-checksums] crash-<sha1>``
runs it again.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import types
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

STORE_TARGET = "store"


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="atheris harness for logstore's parsers; other options go to libFuzzer (-runs=N, "
        "-max_total_time=S, -timeout=S, -rss_limit_mb=MB, -jobs=N, ...).",
    )
    parser.add_argument("target", nargs="?", help="parser to fuzz (--list shows them)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument(
        "--fix-checksums",
        action="store_true",
        help="recompute the checksums of every input after mutation, to get past the checksum checks",
    )
    parser.add_argument(
        "--corpus",
        help="corpus directory (created and seeded with valid files if empty); default: a temporary one",
    )
    return parser.parse_known_args(argv)


def _seed_corpus(directory: str, target: str, s: Any, targets: Any) -> None:
    """Write the valid files of ``target`` into ``directory``: where libFuzzer's mutations start."""
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        return
    if target == STORE_TARGET:
        seeds = [bytes([i]) + data for i, data in enumerate(_store_files(s))]
    elif target == "envelope":
        seeds = list(s.envelopes)
    else:
        seeds = [s.file_of(target)]
    for i, data in enumerate(seeds):
        with open(os.path.join(directory, f"seed-{i:04d}"), "wb") as f:
            f.write(data)


def _store_files(s: Any) -> list[bytes]:
    from fuzz.targets import store_files  # noqa: PLC0415 - imported under atheris instrumentation

    out = []
    for rel in store_files(s.directory):
        with open(os.path.join(s.directory, rel), "rb") as f:
            out.append(f.read())
    return out


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _functions(module: types.ModuleType) -> list[types.FunctionType]:
    """The functions and methods defined in ``module``."""
    out: list[types.FunctionType] = []
    for obj in vars(module).values():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if isinstance(obj, types.FunctionType):
            out.append(obj)
        elif isinstance(obj, type):
            for member in vars(obj).values():
                fn = member.__func__ if isinstance(member, classmethod | staticmethod) else member
                if isinstance(fn, property):
                    fn = fn.fget
                if isinstance(fn, types.FunctionType):
                    out.append(fn)
    return out


def _instrument_engine() -> int:
    """Add atheris coverage instrumentation to every function of ``logstore`` and ``index``.

    Comparisons are traced too (libFuzzer then learns magic numbers and
    kinds), except in functions that use numpy: atheris 2/3 leaks the result
    of every traced comparison that yields an array (an ``ndarray >= 1``
    keeps a whole buffer alive), which runs a long campaign out of memory.
    Those functions get coverage without comparison tracing.
    """
    from atheris.instrument_bytecode import patch_code  # noqa: PLC0415

    count = 0
    for name, module in sorted(sys.modules.items()):
        if name.split(".")[0] not in ("logstore", "index") or module is None:
            continue
        for fn in _functions(module):
            fn.__code__ = patch_code(fn.__code__, trace_dataflow="np" not in _code_names(fn.__code__))
            count += 1
    return count


def main(argv: list[str]) -> int:
    args, rest = _parse(argv[1:])
    import atheris  # noqa: PLC0415 - an optional dependency: only the harness needs it

    from fuzz import targets  # noqa: PLC0415

    instrumented = _instrument_engine()

    if args.list:
        print("\n".join([*targets.TARGETS, STORE_TARGET]))
        return 0
    names = [*targets.TARGETS, STORE_TARGET]
    if args.target not in names:
        print(f"unknown target {args.target!r}; one of: {', '.join(names)}", file=sys.stderr)
        return 2
    logging.getLogger("logstore").setLevel(logging.CRITICAL)  # recovery warnings on every input
    print(
        f"harness: target {args.target}, fix checksums: {args.fix_checksums}, {instrumented} functions instrumented",
        flush=True,
    )
    s = targets.seeds()
    fix = args.fix_checksums
    target = args.target
    scratch = tempfile.mkdtemp(prefix="logstore-atheris-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)

    if target == STORE_TARGET:
        files = targets.store_files(s.directory)
        directory = os.path.join(scratch, "store")

        def test_one_input(data: bytes) -> None:
            if not data:
                return
            rel = files[data[0] % len(files)]
            if os.path.exists(directory):
                shutil.rmtree(directory)
            shutil.copytree(s.directory, directory)
            with open(os.path.join(directory, rel), "wb") as f:
                f.write(data[1:])
            if fix:  # the file's own checksums, and those CHECKPOINT or the catalog keep of it
                targets.forge_store_checksums(directory, rel)
            try:
                targets.check_store(directory, s, readonly=bool(data[0] & 0x80))
            except targets.WrongAnswer:
                if not fix:
                    raise  # with forged checksums a different log is a valid log: only crashes count

    else:
        run = targets.TARGETS[target]

        def test_one_input(data: bytes) -> None:
            run(targets.fix_checksums(target, data) if fix else data, s, fix)

    corpus = args.corpus or os.path.join(scratch, "corpus")
    _seed_corpus(corpus, target, s, targets)
    inputs = [a for a in rest if not a.startswith("-")]
    # Mutate whole files: libFuzzer's default length control would cut the 64 KiB seeds to a few bytes.
    largest = max(os.path.getsize(os.path.join(corpus, n)) for n in os.listdir(corpus))
    defaults = [f"-max_len={largest + 4096}", "-len_control=0"]
    given = {a.split("=")[0] for a in rest}
    flags = [d for d in defaults if d.split("=")[0] not in given]
    libfuzzer_args = [argv[0], *flags, *rest] if inputs else [argv[0], *flags, *rest, corpus]
    try:
        atheris.Setup(libfuzzer_args, test_one_input)
        atheris.Fuzz()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
