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


# A second backend, registered by a plugin before the contract tier's conftest is loaded: logstore again,
# behind a wrapper that records each open, so that the run shows the tests opened their stores through it.
SECOND_BACKEND = """
import os
import logstore
from tests.contract.backends import BACKENDS

def _second(path, **options):
    with open(os.environ["SECOND_BACKEND_LOG"], "a") as log:
        log.write(os.fspath(path) + "\\n")
    return logstore.open(path, **options)

BACKENDS["second"] = _second
"""


def test_a_second_backend_runs_the_contract_tests_unchanged(tmp_path: Path) -> None:
    (tmp_path / "second_backend.py").write_text(SECOND_BACKEND)
    log = tmp_path / "opens.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "LOGSTORE"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    env["SECOND_BACKEND_LOG"] = str(log)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "second_backend", "-p", "no:cacheprovider"]
    target = "tests/contract/test_contract.py"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
        )

    collected = run("--collect-only", target)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    first = {i.replace("[logstore", "[") for i in ids if "[logstore" in i}
    second = {i.replace("[second", "[") for i in ids if "[second" in i}
    assert first, collected.stdout
    assert second == first, "every test of the first backend runs for the second one"

    ran = run("-k", "second", target)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"{len(second)} passed" in ran.stdout, ran.stdout
    assert len(log.read_text().splitlines()) >= len(second)
