"""Packaging: what an installation puts where, and that an application's own names cannot shadow it.

The repository keeps ``index/`` and ``tools/`` at its top level; they are
installed (and imported, through the ``logstore/index`` and ``logstore/tools``
links) as ``logstore.index`` and ``logstore.tools``. An application folder with
an ``index.py`` (a common handler name) or a ``tools/`` package of its own must
not break ``import logstore`` or the ``logstore`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

USE_STORE = """
import logstore, sys
with logstore.open(sys.argv[1], segment_size=1 << 20) as store:
    with store.transaction() as tx:
        store.append_messages(tx, "order-1", 0, [logstore.Envelope.new("OrderPlaced", {"n": 1})])
    print(store.head("order-1"))
"""


def _application_folder(tmp_path: Path) -> Path:
    """A folder shaped like an application's: an index.py and a tools package that fail on import."""
    app = tmp_path / "app"
    (app / "tools").mkdir(parents=True)
    (app / "index.py").write_text("raise ImportError('the application index.py was imported')\n")
    (app / "tools" / "__init__.py").write_text("raise ImportError('the application tools package was imported')\n")
    return app


def _env() -> dict[str, str]:
    # The installed logstore (or this checkout, when run from it uninstalled), never the application's names.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(REPO)) if p)
    return env


def _run_in_application_folder(tmp_path: Path, *args: str) -> str:
    """Run Python with ``args`` in an application's folder (``_application_folder``); returns what it printed."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=_application_folder(tmp_path),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_application_index_py_and_tools_package_do_not_shadow_logstore(tmp_path: Path) -> None:
    assert _run_in_application_folder(tmp_path, "-c", USE_STORE, str(tmp_path / "store")) == "1"


def test_the_logstore_command_runs_beside_an_application_tools_package(tmp_path: Path) -> None:
    assert _run_in_application_folder(tmp_path, "-m", "logstore", "--version").startswith("logstore ")


def test_the_engine_does_not_import_top_level_index_or_tools() -> None:
    """Every import of the index structures and the tools goes through the logstore namespace."""
    offenders = []
    engine = [*REPO.glob("logstore/*.py"), *REPO.glob("logstore/embedded/*.py"), *REPO.glob("logstore/postgres/*.py")]
    for path in sorted([*engine, *REPO.glob("index/*.py"), *REPO.glob("tools/*.py")]):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("from index", "import index", "from tools", "import tools")):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {stripped}")
    assert offenders == []


def test_index_imports_nothing_from_the_engine() -> None:
    """index/ is a leaf: its modules import each other relatively and nothing of logstore's."""
    offenders = []
    for path in sorted(REPO.glob("index/*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("from logstore", "import logstore")):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {stripped}")
    assert offenders == []


def test_project_metadata() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table
    assert all((REPO / name).is_file() for name in project["license-files"])
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # the SPDX string replaces these
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    assert project["scripts"]["logstore"] == "logstore.tools.cli:main"
    assert sorted(meta["tool"]["setuptools"]["packages"]) == [
        "logstore",
        "logstore.embedded",
        "logstore.index",
        "logstore.postgres",
        "logstore.tools",
    ]
    # The PostgreSQL backend's driver is an optional extra, and the tests' set-up installs it.
    assert {"psycopg>=3.2", "psycopg-pool>=3.2"} <= set(project["optional-dependencies"]["postgres"])
    assert {"psycopg[binary]>=3.2", "psycopg-pool>=3.2"} <= set(project["optional-dependencies"]["dev"])
    assert not any(d.startswith("psycopg") for d in project["dependencies"])


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    """Build the wheel as pip would and look inside: logstore/ only, with index and tools in it."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("logstore-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"logstore"}
    for module in (
        "logstore/index/catalog.py",
        "logstore/tools/cli.py",
        "logstore/__main__.py",
        "logstore/py.typed",
        "logstore/postgres/store.py",
        "logstore/embedded/store.py",
    ):
        assert module in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
