"""The code samples in the README run as written, and the module docstrings' examples hold."""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

import logstore.checks
import logstore.embedded.reader
import logstore.embedded.store
import logstore.envelope
import logstore.tx

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_readme_api_tour_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _python_blocks(ROOT / "README.md")
    assert blocks, "the README has no python sample"
    monkeypatch.chdir(tmp_path)  # the sample opens "data/" relative to the working directory
    for block in blocks:
        namespace: dict[str, object] = {}
        exec(compile(block, "README.md", "exec"), namespace)
    assert os.path.isdir(tmp_path / "data" / "segments")
    with logstore.open(tmp_path / "data") as store:
        assert store.head("order-42") == 2
        assert store.head("outbox") == 1
        assert store.global_head == 3


@pytest.mark.parametrize(
    "module", [logstore.envelope, logstore.checks, logstore.embedded.store, logstore.embedded.reader, logstore.tx]
)
def test_docstring_examples(module: object) -> None:
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert tried > 0
    assert failures == 0
