"""The test suite runs from the repository root with plain ``pytest`` and with ``python -m pytest``.

Both import every module of ``tests/`` once, under one name. The two commands differ only in
``sys.path``: ``python -m`` puts the working directory first, the ``pytest`` script does not (``-P``
gives a child the same). ``logstore`` comes from this checkout through a directory that holds only
a link to it, as an installed package would: nothing else of the checkout becomes importable that way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = "tests/faults/test_compact.py"  # small; imports other modules of tests/ by name

# Runs pytest in the child and prints, for every module loaded from tests/, the names it was loaded under.
CHILD = """
import json, os, sys
import pytest
rc = pytest.main(sys.argv[1:])
tests = os.path.join(os.getcwd(), "tests")
names = {}
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith(tests + os.sep):
        names.setdefault(os.path.relpath(path), []).append(name)
print(json.dumps({"rc": int(rc), "names": names}))
"""


@pytest.mark.parametrize("command", ["pytest", "python -m pytest"])
def test_the_suite_collects_from_the_repository_root_and_imports_each_module_once(command: str, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "logstore").symlink_to(REPO / "logstore", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "LOGSTORE"))}
    env["PYTHONPATH"] = str(site)
    flags = ["-P"] if command == "pytest" else []
    argv = [sys.executable, *flags, "-c", CHILD, "--collect-only", "-q", "-p", "no:cacheprovider", PROBE]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, f"{command} could not collect {PROBE}:\n{proc.stdout}"
    names = report["names"]
    assert names.get(os.path.join("tests", "conftest.py")) == ["tests.conftest"], names
    twice = {path: found for path, found in names.items() if len(found) > 1}
    assert not twice, f"{command} imported modules of tests/ under more than one name: {twice}"
